//! exit-floor: the userspace floor for pyfastvm's exit-latency benchmarks.
//!
//! A bare loop over kvm-ioctls (no Python, no device bus): exactly one ioctl,
//! KVM_RUN, per guest exit.
//!
//! Usage: `exit-floor --mode {real,cpl0,cpl3} --code HEX [--count-addr HEX]`
//!
//! Guest contract:
//! - 16 MiB of RAM at GPA 0. HEX (the guest's machine code) is copied to GPA
//!   0x10000, where the vCPU starts.
//!   - real: CS=0x1000 (base 0x10000), IP=0, SS:SP=0:0x8000, DS/ES/FS/GS
//!     selector 0 base 0 with a 4 GiB limit ("unreal" mode), so 16-bit code can
//!     reach [0x9000] and, with an addr32 prefix, the MMIO address 0xD000_0000.
//!   - cpl0/cpl3: 64-bit long mode, 4 GiB identity map (2 MiB pages, all U/S),
//!     RIP=0x10000, RSP=0x80000, RFLAGS.IOPL=3. cpl0: CS=0x08, SS/DS/ES=0x10;
//!     cpl3: CS=0x1b, SS/DS/ES=0x23.
//! - Before each batch the host stores N, a little-endian u32, at GPA 0x9000
//!   (or `--count-addr`, at least 0x8000: GDT, page tables and TSS live in
//!   0x500..0x7fff), a plain memory write, no ioctl. The guest reads it, makes
//!   N exits, then writes port 0xf4 ("done") and jumps back to its start; the
//!   next KVM_RUN completes that OUT and the guest reads the next N.
//! - OUT to port 0xf4 ends a batch. Any other OUT, IN, MMIO write or MMIO read
//!   is one counted exit and is sunk (reads return zeros). HLT, shutdown,
//!   internal error, failed entry or any other exit: error with RIP, exit 1.
//!
//! Protocol: prints `ready`; then for each stdin line `N` prints
//! `done <exits> <elapsed_ns>`, where `exits` counts the sunk exits (not the
//! final 0xf4) and `elapsed_ns` spans all exits + 1 KVM_RUN calls of the
//! batch. EOF on stdin: exit 0.

use std::fmt::Display;
use std::io::{self, BufRead, Write};
use std::process::exit;
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

const MEM_SIZE: usize = 16 << 20;
const CODE_GPA: u64 = 0x10000;
const DEFAULT_COUNT_GPA: u64 = 0x9000;
const FIRST_FREE_GPA: u64 = 0x8000; // below it: GDT, page tables, TSS
const DONE_PORT: u16 = 0xf4;
const GDT_GPA: u64 = 0x500;
const PML4_GPA: u64 = 0x1000;
const PDPT_GPA: u64 = 0x2000;
const PD_GPA: u64 = 0x3000; // four page directories, 0x3000..0x6fff
const TSS_GPA: u64 = 0x7000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Real,
    Cpl0,
    Cpl3,
}

fn die(msg: impl Display) -> ! {
    eprintln!("exit-floor: {msg}");
    exit(1)
}

fn usage() -> ! {
    eprintln!("usage: exit-floor --mode {{real,cpl0,cpl3}} --code HEX [--count-addr HEX]");
    exit(2)
}

trait OrDie<T> {
    fn or_die(self, what: &str) -> T;
}

impl<T, E: Display> OrDie<T> for Result<T, E> {
    fn or_die(self, what: &str) -> T {
        self.unwrap_or_else(|e| die(format!("{what}: {e}")))
    }
}

/// Anonymous mapping backing guest RAM; never unmapped (lives as long as the process).
struct GuestRam(*mut u8);

impl GuestRam {
    fn new() -> Self {
        // SAFETY: a fresh anonymous private mapping touches no existing memory; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            die(format!("mmap: {}", io::Error::last_os_error()));
        }
        Self(ptr.cast())
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        let off = usize::try_from(gpa).unwrap_or(usize::MAX);
        if off
            .checked_add(bytes.len())
            .is_none_or(|end| end > MEM_SIZE)
        {
            die(format!(
                "write of {} bytes at GPA {gpa:#x} is outside RAM",
                bytes.len()
            ));
        }
        // SAFETY: the range lies inside the MEM_SIZE mapping (checked above); the vCPU
        // only runs inside KVM_RUN on this same thread, so nothing accesses it meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0.add(off), bytes.len()) }
    }

    fn write_u64(&self, gpa: u64, val: u64) {
        self.write(gpa, &val.to_le_bytes());
    }
}

fn parse_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        die("--code needs an even, non-zero number of hex digits");
    }
    let pair = |p: &[u8]| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("?"), 16);
    digits.chunks(2).map(|p| pair(p).or_die("--code")).collect()
}

struct Args {
    mode: Mode,
    code: Vec<u8>,
    count_gpa: u64,
}

fn parse_args() -> Args {
    let (mut mode, mut code, mut count_gpa) = (None, None, DEFAULT_COUNT_GPA);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let val = args.next().unwrap_or_else(|| usage());
        match (flag.as_str(), val.as_str()) {
            ("--mode", "real") => mode = Some(Mode::Real),
            ("--mode", "cpl0") => mode = Some(Mode::Cpl0),
            ("--mode", "cpl3") => mode = Some(Mode::Cpl3),
            ("--code", hex) => code = Some(parse_hex(hex)),
            ("--count-addr", hex) => {
                let hex = hex.trim_start_matches("0x");
                count_gpa = u64::from_str_radix(hex, 16).or_die("--count-addr");
            }
            _ => usage(),
        }
    }
    if count_gpa < FIRST_FREE_GPA {
        die(format!("--count-addr must be at least {FIRST_FREE_GPA:#x}"));
    }
    Args {
        mode: mode.unwrap_or_else(|| usage()),
        code: code.unwrap_or_else(|| usage()),
        count_gpa,
    }
}

fn create_vm(ram: &GuestRam) -> VmFd {
    let vm = Kvm::new()
        .or_die("/dev/kvm")
        .create_vm()
        .or_die("KVM_CREATE_VM");
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: ram.0 as u64,
    };
    // SAFETY: the region is exactly the MEM_SIZE mapping of `ram`, which is never unmapped.
    unsafe { vm.set_user_memory_region(region) }.or_die("KVM_SET_USER_MEMORY_REGION");
    vm
}

/// Flat 4 GiB segment for long mode; RPL = DPL. SDM Vol. 3A §3.4.5 "Segment Descriptors",
/// "Code-Segment Descriptors in 64-bit Mode" (L bit; §5.2.1 in pre-2024 editions).
fn flat_segment(index: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        limit: 0xffff_ffff,
        selector: index << 3 | u16::from(dpl),
        type_: if code { 0xb } else { 0x3 }, // execute/read, or read/write; accessed
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// 8-byte descriptor, or the low half of a 16-byte system one. SDM Vol. 3A §3.4.5, Fig. 3-8.
fn gdt_entry(s: &kvm_segment) -> u64 {
    let limit = u64::from(if s.g != 0 { s.limit >> 12 } else { s.limit });
    let (base, bit) = (s.base & 0xffff_ffff, |v: u8, at: u32| u64::from(v) << at);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | bit(s.type_, 40)
        | bit(s.s, 44)
        | bit(s.dpl, 45)
        | bit(s.present, 47)
        | (limit >> 16 & 0xf) << 48
        | bit(s.avl, 52)
        | bit(s.l, 53)
        | bit(s.db, 54)
        | bit(s.g, 55)
        | (base >> 24) << 56
}

/// Identity map of 4 GiB with 2 MiB pages. SDM Vol. 3A §4.5 "4-Level Paging", tables of
/// PML4E, PDPTE and 2-MByte PDE formats. All entries Present | R/W | U/S: CPL3 reaches all.
fn write_page_tables(ram: &GuestRam) {
    const PRW_US: u64 = 0b111;
    const PS: u64 = 1 << 7;
    ram.write_u64(PML4_GPA, PDPT_GPA | PRW_US);
    for i in 0..4u64 {
        let pd = PD_GPA + i * 0x1000;
        ram.write_u64(PDPT_GPA + i * 8, pd | PRW_US);
        for j in 0..512u64 {
            ram.write_u64(pd + j * 8, (i * 512 + j) << 21 | PRW_US | PS);
        }
    }
}

/// GDT [null, code0, data0, code3, data3, TSS (16 bytes)] at GDT_GPA, paging, and the
/// long-mode control registers. SDM Vol. 3A "Initializing IA-32e Mode" (§9.8.5, §10.8.5 in
/// 2024+ editions) and "TSS Descriptor in 64-bit mode" (§7.2.3, §8.2.3 in 2024+).
fn long_mode_sregs(ram: &GuestRam, s: &mut kvm_sregs, mode: Mode) {
    let (code0, data0) = (flat_segment(1, true, 0), flat_segment(2, false, 0));
    let (code3, data3) = (flat_segment(3, true, 3), flat_segment(4, false, 3));
    let tss = kvm_segment {
        base: TSS_GPA,
        limit: 0x67,
        selector: 5 << 3,
        type_: 11, // 64-bit TSS, busy (as after LTR; required for TR by KVM/VMX)
        present: 1,
        ..Default::default()
    };
    let gdt = [0, gdt_entry(&code0), gdt_entry(&data0), gdt_entry(&code3)];
    let gdt = gdt
        .into_iter()
        .chain([gdt_entry(&data3), gdt_entry(&tss), 0]);
    for (i, entry) in gdt.enumerate() {
        ram.write_u64(GDT_GPA + i as u64 * 8, entry);
    }
    write_page_tables(ram);
    let (code, data) = if mode == Mode::Cpl3 {
        (code3, data3)
    } else {
        (code0, data0)
    };
    (s.cs, s.ss, s.ds, s.es, s.fs, s.gs, s.tr) = (code, data, data, data, data, data, tss);
    s.gdt.base = GDT_GPA;
    s.gdt.limit = 7 * 8 - 1;
    s.cr3 = PML4_GPA;
    s.cr4 = 1 << 5 | 1 << 9 | 1 << 10; // PAE | OSFXSR | OSXMMEXCPT
    s.cr0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
    s.efer = 1 << 8 | 1 << 10; // LME | LMA
}

/// Real mode with CS:IP = 0x1000:0 (linear 0x10000) and 4 GiB data-segment limits.
fn real_mode_sregs(s: &mut kvm_sregs) {
    s.cs.selector = (CODE_GPA >> 4) as u16;
    s.cs.base = CODE_GPA;
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs] {
        (seg.selector, seg.base, seg.limit, seg.g) = (0, 0, 0xffff_ffff, 1);
    }
}

fn setup_vcpu(vm: &VmFd, ram: &GuestRam, mode: Mode) -> VcpuFd {
    let vcpu = vm.create_vcpu(0).or_die("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().or_die("KVM_GET_SREGS");
    let mut regs = kvm_regs {
        rflags: 0x2 | 3 << 12, // reserved bit 1, IOPL = 3
        ..Default::default()
    };
    if mode == Mode::Real {
        real_mode_sregs(&mut sregs);
        regs.rsp = 0x8000;
    } else {
        long_mode_sregs(ram, &mut sregs, mode);
        (regs.rip, regs.rsp) = (CODE_GPA, 0x80000);
    }
    vcpu.set_sregs(&sregs).or_die("KVM_SET_SREGS");
    vcpu.set_regs(&regs).or_die("KVM_SET_REGS");
    vcpu
}

/// Reports an unexpected stop with the guest RIP (one KVM_GET_REGS) and exits with code 1.
fn fault(vcpu: &VcpuFd, what: &str) -> ! {
    match vcpu.get_regs() {
        Ok(regs) => die(format!("{what} at RIP {:#x}", regs.rip)),
        Err(e) => die(format!("{what} (KVM_GET_REGS failed: {e})")),
    }
}

/// Runs one batch of `n`; returns (counted exits, elapsed ns). One KVM_RUN per exit.
fn run_batch(vcpu: &mut VcpuFd, ram: &GuestRam, count_gpa: u64, n: u32) -> (u64, u128) {
    ram.write(count_gpa, &n.to_le_bytes());
    let mut exits = 0u64;
    let start = Instant::now();
    let failure = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => break None,
            Ok(VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..)) => exits += 1,
            Ok(VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data)) => {
                data.fill(0);
                exits += 1;
            }
            Ok(other) => break Some(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => break Some(format!("KVM_RUN: {e}")),
        }
    };
    let elapsed = start.elapsed().as_nanos();
    if let Some(what) = failure {
        fault(vcpu, &what);
    }
    (exits, elapsed)
}

fn emit(out: &mut impl Write, line: &str) {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .or_die("stdout");
}

fn main() {
    let args = parse_args();
    let ram = GuestRam::new();
    ram.write(CODE_GPA, &args.code);
    let vm = create_vm(&ram);
    let mut vcpu = setup_vcpu(&vm, &ram, args.mode);
    let mut out = io::stdout().lock();
    emit(&mut out, "ready");
    for line in io::stdin().lock().lines() {
        let line = line.or_die("stdin");
        if line.trim().is_empty() {
            continue;
        }
        let n: u32 = line.trim().parse().or_die("batch size");
        let (exits, ns) = run_batch(&mut vcpu, &ram, args.count_gpa, n);
        emit(&mut out, &format!("done {exits} {ns}"));
    }
}
