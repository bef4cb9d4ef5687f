//! `pyfastvm.VcpuState` and `pyfastvm.VmState`: saved states as Python sees
//! them, read-only, with the JSON form a snapshot writes.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zerocopy::IntoBytes;

use super::pyjson::{from_python, to_python};
use super::vcpu::VcpuState;
use super::vm::VmState;
use super::{from_document, from_json, to_document, to_json, FORMAT_VERSION};
use crate::error::Result;
use crate::regs::{CpuidEntry, Fpu, Regs, Sregs};

const VCPU_FORMAT: &str = "pyfastvm.VcpuState";
const VM_FORMAT: &str = "pyfastvm.VmState";

fn bytes<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, data)
}

/// A vCPU's whole state, from `vcpu.save_state()`, for `vcpu.restore_state()`.
/// Kernel structs without a pyfastvm class are their bytes in the kernel's
/// x86-64 layout (<asm/kvm.h>).
#[pyclass(frozen, module = "pyfastvm", name = "VcpuState")]
pub struct PyVcpuState(pub VcpuState);

#[pymethods]
impl PyVcpuState {
    /// The format version `to_json` writes and `from_json` reads.
    #[classattr]
    const VERSION: u32 = FORMAT_VERSION;

    /// The JSON form a snapshot writes: {"format", "version", "state"}.
    fn to_json(&self) -> Result<String> {
        to_json(VCPU_FORMAT, &self.0)
    }

    /// Reads what `to_json` wrote; another format version or damaged
    /// JSON raises InvalidArgumentError (a ValueError).
    #[staticmethod]
    fn from_json(json: &str) -> Result<Self> {
        from_json(VCPU_FORMAT, json).map(PyVcpuState)
    }

    /// The document `to_json` writes, as Python objects (dicts, lists, ints).
    fn to_document<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        Ok(to_python(py, &to_document(VCPU_FORMAT, &self.0)?)?)
    }

    /// Reads what `to_document` gave (or `json.loads` of what `to_json`
    /// wrote) without a JSON text in between; refuses what `from_json` does.
    #[staticmethod]
    fn from_document(document: &Bound<'_, PyAny>) -> Result<Self> {
        from_document(VCPU_FORMAT, from_python(document, "a VcpuState document")?).map(PyVcpuState)
    }

    #[getter]
    fn regs(&self) -> Regs {
        Regs::from(&self.0.regs)
    }

    #[getter]
    fn sregs(&self, py: Python<'_>) -> PyResult<Sregs> {
        Sregs::from_kvm(py, &self.0.sregs)
    }

    /// The XSAVE area (struct kvm_xsave and what KVM_CAP_XSAVE2 adds);
    /// None on a host without KVM_CAP_XSAVE.
    #[getter]
    fn xsave<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0
            .xsave
            .as_ref()
            .map(|words| bytes(py, words.as_bytes()))
    }

    /// x87 and SSE state, saved only where the XSAVE area is not.
    #[getter]
    fn fpu(&self) -> Option<Fpu> {
        self.0.fpu.clone()
    }

    /// {XCR index: value}; None on a host without KVM_CAP_XCRS.
    #[getter]
    fn xcrs(&self) -> Option<BTreeMap<u32, u64>> {
        self.0.xcrs.as_ref().map(|xcrs| {
            let count = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
            xcrs.xcrs[..count]
                .iter()
                .map(|x| (x.xcr, x.value))
                .collect()
        })
    }

    /// struct kvm_debugregs: DR0-DR3, DR6, DR7, flags.
    #[getter]
    fn debugregs<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, self.0.debugregs.as_bytes())
    }

    /// The local APIC's 1024-byte register page; None without the in-kernel irqchip.
    #[getter]
    fn lapic<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0
            .lapic
            .as_ref()
            .map(|lapic| bytes(py, lapic.regs.as_bytes()))
    }

    /// KVM_MP_STATE_* (0 runnable, 1 uninitialized, 2 INIT received, 3 halted, 4 SIPI received).
    #[getter]
    fn mp_state(&self) -> u32 {
        self.0.mp_state
    }

    /// struct kvm_vcpu_events: pending exception, interrupt, NMI, SIPI vector.
    #[getter]
    fn vcpu_events<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, self.0.vcpu_events.as_bytes())
    }

    /// {index: value} of every MSR KVM lists for saving and would read.
    #[getter]
    fn msrs(&self) -> BTreeMap<u32, u64> {
        self.0.msrs.clone()
    }

    /// MSRs KVM lists for saving but refused to read on this vCPU.
    #[getter]
    fn unreadable_msrs(&self) -> Vec<u32> {
        self.0.unreadable_msrs.clone()
    }

    /// The guest TSC rate in kHz; None on a host without KVM_CAP_GET_TSC_KHZ.
    #[getter]
    fn tsc_khz(&self) -> Option<u32> {
        self.0.tsc_khz
    }

    /// The CPUID the vCPU was given.
    #[getter]
    fn cpuid(&self) -> Vec<CpuidEntry> {
        self.0.cpuid.iter().map(CpuidEntry::from).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "VcpuState(rip={:#x}, mp_state={}, {} MSRs)",
            self.0.regs.rip,
            self.0.mp_state,
            self.0.msrs.len()
        )
    }
}

/// A VM's in-kernel devices and clock, from `vm.save_state()`, for
/// `vm.restore_state()`. Kernel structs are their bytes, as in VcpuState.
#[pyclass(frozen, module = "pyfastvm", name = "VmState")]
pub struct PyVmState(pub VmState);

#[pymethods]
impl PyVmState {
    #[classattr]
    const VERSION: u32 = FORMAT_VERSION;

    fn to_json(&self) -> Result<String> {
        to_json(VM_FORMAT, &self.0)
    }

    #[staticmethod]
    fn from_json(json: &str) -> Result<Self> {
        from_json(VM_FORMAT, json).map(PyVmState)
    }

    fn to_document<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        Ok(to_python(py, &to_document(VM_FORMAT, &self.0)?)?)
    }

    #[staticmethod]
    fn from_document(document: &Bound<'_, PyAny>) -> Result<Self> {
        from_document(VM_FORMAT, from_python(document, "a VmState document")?).map(PyVmState)
    }

    /// The kvmclock in nanoseconds when saved (KVM_GET_CLOCK).
    #[getter]
    fn clock(&self) -> u64 {
        self.0.clock.clock
    }

    /// struct kvm_irqchip of the master PIC; None without the in-kernel irqchip.
    #[getter]
    fn pic_master<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.irqchip(py, 0)
    }

    #[getter]
    fn pic_slave<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.irqchip(py, 1)
    }

    #[getter]
    fn ioapic<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.irqchip(py, 2)
    }

    /// struct kvm_pit_state2; None without the in-kernel PIT.
    #[getter]
    fn pit<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.pit.as_ref().map(|pit| bytes(py, pit.as_bytes()))
    }

    fn __repr__(&self) -> String {
        format!(
            "VmState(clock={}, irqchip={}, pit={})",
            self.0.clock.clock,
            self.0.irqchips.is_some(),
            self.0.pit.is_some()
        )
    }
}

impl PyVmState {
    fn irqchip<'py>(&self, py: Python<'py>, index: usize) -> Option<Bound<'py, PyBytes>> {
        self.0
            .irqchips
            .as_ref()
            .map(|chips| bytes(py, chips[index].as_bytes()))
    }
}
