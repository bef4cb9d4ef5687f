"""One vCPU's run loop on its own thread: run, complete what KVM's emulator
could not, and stop at the first exit that ends the machine."""

from __future__ import annotations

from dataclasses import dataclass

from ._core import Exit, GuestMemory, Vcpu, VmmError
from .x86.emulation_assist import EmulationAssist, is_emulation_failure

# Exits that end the machine, by the reason MicroVM reports.
MACHINE_ENDING = {
    "reset": "reset",  # the ACPI reset register or the i8042 reset line
    "poweroff": "poweroff",  # ACPI S5
    "shutdown": "shutdown",  # a triple fault
    "hlt": "halted",  # only without an in-kernel irqchip
    "system_event": "system_event",
    "debug_exit": "debug_exit",
    "stop": "stopped",
}


class VcpuExitError(VmmError):
    """An exit the machine cannot continue from (failed entry, unhandled)."""


@dataclass
class VcpuRunner:
    vcpu: Vcpu
    assist: EmulationAssist

    @classmethod
    def for_vcpu(cls, vcpu: Vcpu, memory: GuestMemory) -> VcpuRunner:
        return cls(vcpu, EmulationAssist(vcpu, memory))

    def run_until_stop(self) -> Exit:
        """Runs until an exit that ends the machine, and returns it."""
        while True:
            exit = self.vcpu.run()
            if is_emulation_failure(exit):
                self.assist.complete(exit)
                continue
            if exit.reason not in MACHINE_ENDING:
                raise VcpuExitError(f"vCPU {self.vcpu.index} stopped with {exit!r}")
            return exit
