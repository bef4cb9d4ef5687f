//! x86 architecture facts the exit assists work with: page tables, IDT gates,
//! instruction operands, and a few registers (Intel SDM).

pub mod decode;
pub mod idt;
pub mod paging;

/// IA32_STAR: SYSCALL's and SYSRET's CS/SS selectors (SDM 3A, 5.8.8).
pub const MSR_STAR: u32 = 0xC000_0081;
/// IA32_LSTAR: the RIP SYSCALL jumps to in 64-bit mode.
pub const MSR_LSTAR: u32 = 0xC000_0082;

/// RFLAGS bits (SDM vol. 1, 3.4.3).
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_RF: u64 = 1 << 16;
