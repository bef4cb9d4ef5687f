//! Python views of the kernel's x86 vCPU state structs; field names follow <asm/kvm.h>.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, kvm_xsave,
};
use pyo3::prelude::*;

/// Declares a flat pyclass mirroring a kernel struct of integer fields, with
/// keyword construction, `repr`, and conversions both ways.
macro_rules! kernel_struct {
    ($(#[$doc:meta])* $name:ident mirrors $kvm:ident { $($field:ident: $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[pyclass(get_all, set_all, module = "pyfastvm", from_py_object)]
        #[derive(Clone, Debug, Default)]
        pub struct $name { $(pub $field: $ty),+ }

        impl From<&$kvm> for $name {
            fn from(k: &$kvm) -> Self {
                Self { $($field: k.$field),+ }
            }
        }

        impl From<&$name> for $kvm {
            #[allow(clippy::needless_update)]
            fn from(v: &$name) -> Self {
                $kvm { $($field: v.$field,)+ ..Default::default() }
            }
        }

        #[pymethods]
        impl $name {
            #[new]
            #[pyo3(signature = ($($field = 0),+))]
            #[allow(clippy::too_many_arguments)]
            fn py_new($($field: $ty),+) -> Self {
                Self { $($field),+ }
            }

            fn __repr__(&self) -> String {
                let fields: Vec<String> = vec![$(format!(concat!(stringify!($field), "={:#x}"), self.$field)),+];
                format!(concat!(stringify!($name), "({})"), fields.join(", "))
            }
        }
    };
}

kernel_struct!(
    /// General-purpose registers (struct kvm_regs).
    Regs mirrors kvm_regs {
        rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64, rdi: u64, rsp: u64, rbp: u64,
        r8: u64, r9: u64, r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64,
        rip: u64, rflags: u64,
    }
);

kernel_struct!(
    /// A descriptor-table register, GDTR or IDTR (struct kvm_dtable).
    DTable mirrors kvm_dtable { base: u64, limit: u16 }
);

kernel_struct!(
    /// One CPUID leaf as KVM reports and accepts it (struct kvm_cpuid_entry2).
    CpuidEntry mirrors kvm_cpuid_entry2 {
        function: u32, index: u32, flags: u32, eax: u32, ebx: u32, ecx: u32, edx: u32,
    }
);

/// A segment register with its hidden descriptor part (struct kvm_segment).
#[pyclass(get_all, set_all, module = "pyfastvm", from_py_object)]
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    #[pyo3(name = "type")]
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

impl From<&kvm_segment> for Segment {
    fn from(k: &kvm_segment) -> Self {
        Segment {
            base: k.base,
            limit: k.limit,
            selector: k.selector,
            type_: k.type_,
            present: k.present,
            dpl: k.dpl,
            db: k.db,
            s: k.s,
            l: k.l,
            g: k.g,
            avl: k.avl,
            unusable: k.unusable,
        }
    }
}

impl From<&Segment> for kvm_segment {
    fn from(v: &Segment) -> Self {
        kvm_segment {
            base: v.base,
            limit: v.limit,
            selector: v.selector,
            type_: v.type_,
            present: v.present,
            dpl: v.dpl,
            db: v.db,
            s: v.s,
            l: v.l,
            g: v.g,
            avl: v.avl,
            unusable: v.unusable,
            padding: 0,
        }
    }
}

#[pymethods]
impl Segment {
    #[new]
    #[pyo3(signature = (base=0, limit=0, selector=0, r#type=0, present=0, dpl=0, db=0, s=0, l=0, g=0, avl=0, unusable=0))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        base: u64,
        limit: u32,
        selector: u16,
        r#type: u8,
        present: u8,
        dpl: u8,
        db: u8,
        s: u8,
        l: u8,
        g: u8,
        avl: u8,
        unusable: u8,
    ) -> Self {
        Segment {
            base,
            limit,
            selector,
            type_: r#type,
            present,
            dpl,
            db,
            s,
            l,
            g,
            avl,
            unusable,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Segment(base={:#x}, limit={:#x}, selector={:#x}, type={}, present={}, dpl={}, db={}, s={}, l={}, g={})",
            self.base, self.limit, self.selector, self.type_, self.present, self.dpl, self.db,
            self.s, self.l, self.g
        )
    }
}

/// Segment, control and system registers (struct kvm_sregs). The segment and
/// table fields are shared objects, so `sregs.cs.base = 0` edits `sregs`.
#[pyclass(get_all, set_all, module = "pyfastvm")]
pub struct Sregs {
    pub cs: Py<Segment>,
    pub ds: Py<Segment>,
    pub es: Py<Segment>,
    pub fs: Py<Segment>,
    pub gs: Py<Segment>,
    pub ss: Py<Segment>,
    pub tr: Py<Segment>,
    pub ldt: Py<Segment>,
    pub gdt: Py<DTable>,
    pub idt: Py<DTable>,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    pub interrupt_bitmap: [u64; 4],
}

impl Sregs {
    pub fn from_kvm(py: Python<'_>, k: &kvm_sregs) -> PyResult<Self> {
        let seg = |s: &kvm_segment| Py::new(py, Segment::from(s));
        let table = |t: &kvm_dtable| Py::new(py, DTable::from(t));
        Ok(Sregs {
            cs: seg(&k.cs)?,
            ds: seg(&k.ds)?,
            es: seg(&k.es)?,
            fs: seg(&k.fs)?,
            gs: seg(&k.gs)?,
            ss: seg(&k.ss)?,
            tr: seg(&k.tr)?,
            ldt: seg(&k.ldt)?,
            gdt: table(&k.gdt)?,
            idt: table(&k.idt)?,
            cr0: k.cr0,
            cr2: k.cr2,
            cr3: k.cr3,
            cr4: k.cr4,
            cr8: k.cr8,
            efer: k.efer,
            apic_base: k.apic_base,
            interrupt_bitmap: k.interrupt_bitmap,
        })
    }

    pub fn to_kvm(&self, py: Python<'_>) -> kvm_sregs {
        let seg = |s: &Py<Segment>| kvm_segment::from(&*s.borrow(py));
        let table = |t: &Py<DTable>| kvm_dtable::from(&*t.borrow(py));
        kvm_sregs {
            cs: seg(&self.cs),
            ds: seg(&self.ds),
            es: seg(&self.es),
            fs: seg(&self.fs),
            gs: seg(&self.gs),
            ss: seg(&self.ss),
            tr: seg(&self.tr),
            ldt: seg(&self.ldt),
            gdt: table(&self.gdt),
            idt: table(&self.idt),
            cr0: self.cr0,
            cr2: self.cr2,
            cr3: self.cr3,
            cr4: self.cr4,
            cr8: self.cr8,
            efer: self.efer,
            apic_base: self.apic_base,
            interrupt_bitmap: self.interrupt_bitmap,
        }
    }
}

#[pymethods]
impl Sregs {
    fn __repr__(&self) -> String {
        format!(
            "Sregs(cr0={:#x}, cr3={:#x}, cr4={:#x}, efer={:#x}, ...)",
            self.cr0, self.cr3, self.cr4, self.efer
        )
    }
}

/// x87 and SSE state (struct kvm_fpu); `fpr` and `xmm` are lists of 16-byte registers.
#[pyclass(get_all, set_all, module = "pyfastvm", from_py_object)]
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Fpu {
    pub fpr: Vec<[u8; 16]>,
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
}

/// KVM_GET_FPU and KVM_SET_FPU leave MXCSR out (its field reads 0 and is
/// ignored on every KVM), so it travels in the XSAVE area: at byte 24 of the
/// legacy region, applied when XSTATE_BV (byte 512) has the SSE bit (Intel
/// SDM vol. 1, 13.4 "XSAVE Area").
const XSAVE_MXCSR_WORD: usize = 24 / 4;
const XSAVE_XSTATE_BV_WORD: usize = 512 / 4;
const XFEATURE_FP_AND_SSE: u32 = 0b11;

/// Puts `mxcsr` into `xsave` for KVM_SET_XSAVE, marking the legacy area as
/// loaded (see the constants above).
pub fn put_mxcsr(xsave: &mut kvm_xsave, mxcsr: u32) {
    xsave.region[XSAVE_MXCSR_WORD] = mxcsr;
    xsave.region[XSAVE_XSTATE_BV_WORD] |= XFEATURE_FP_AND_SSE;
}

/// The FPU state as KVM_GET_FPU reports it, MXCSR included as 0.
impl From<&kvm_fpu> for Fpu {
    fn from(k: &kvm_fpu) -> Self {
        Fpu {
            fpr: k.fpr.to_vec(),
            fcw: k.fcw,
            fsw: k.fsw,
            ftwx: k.ftwx,
            last_opcode: k.last_opcode,
            last_ip: k.last_ip,
            last_dp: k.last_dp,
            xmm: k.xmm.to_vec(),
            mxcsr: k.mxcsr,
        }
    }
}

impl Fpu {
    /// The FPU state from KVM_GET_FPU, with MXCSR from KVM_GET_XSAVE.
    pub fn from_kvm(k: &kvm_fpu, xsave: &kvm_xsave) -> Self {
        Fpu {
            mxcsr: xsave.region[XSAVE_MXCSR_WORD],
            ..Fpu::from(k)
        }
    }

    pub fn to_kvm(&self) -> PyResult<kvm_fpu> {
        let mut k = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            ..Default::default()
        };
        copy_registers("fpr", &self.fpr, &mut k.fpr)?;
        copy_registers("xmm", &self.xmm, &mut k.xmm)?;
        Ok(k)
    }
}

fn copy_registers(name: &str, from: &[[u8; 16]], to: &mut [[u8; 16]]) -> PyResult<()> {
    if from.len() != to.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "Fpu.{name} must hold {} registers of 16 bytes, not {}",
            to.len(),
            from.len()
        )));
    }
    to.copy_from_slice(from);
    Ok(())
}

#[pymethods]
impl Fpu {
    fn __repr__(&self) -> String {
        format!(
            "Fpu(fcw={:#x}, fsw={:#x}, ftwx={:#x}, mxcsr={:#x}, ...)",
            self.fcw, self.fsw, self.ftwx, self.mxcsr
        )
    }
}
