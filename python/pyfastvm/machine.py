"""MicroVM: a Linux guest built by the init chain, its vCPU threads and its
console, started, watched and always torn down."""

from __future__ import annotations

import functools
import io
import select
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

from ._core import EmulationFailureError, Exit, Vcpu, VmmError
from .boot_steps import MachineContext, default_init_chain
from .config import VMConfig
from .errors import GuestTimeoutError, VcpuExitError
from .guest.console_protocol import INIT_MILESTONE, PANIC_TEXT
from .init_chain import InitChain

ConsoleSink = Callable[[bytes], object] | IO[bytes] | IO[str] | None

# How often the console pump looks at its stop flag while the guest is silent.
CONSOLE_POLL_SECONDS = 0.1

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
KVM_INTERNAL_ERROR_EMULATION = 1


def console_writer(console: ConsoleSink) -> Callable[[bytes], object] | None:
    """A callable for the user's console choice: a callable, a file, or None."""
    if console is None or callable(console):
        return console
    sink = console

    def write(data: bytes) -> None:
        if isinstance(sink, io.TextIOBase):
            sink.write(data.decode(errors="replace"))
        else:
            sink.write(data)  # type: ignore[arg-type]
        sink.flush()

    return write


class MicroVM:
    """A micro-VM booting a Linux kernel.

    ``with MicroVM(VMConfig(kernel=...)) as vm: vm.wait_for("login:")``.
    The guest's serial console accumulates in ``console``; it is also passed
    to ``console=`` (a callable taking bytes, or a file) as it arrives.
    Leaving the block, ``close()``, or an error stops the vCPUs, joins every
    thread and releases the VM.
    """

    def __init__(
        self,
        config: VMConfig,
        *,
        console: ConsoleSink = None,
        init_chain: InitChain[MachineContext] | None = None,
        initrd_overlay: bytes = b"",
    ) -> None:
        self.config = config
        self.chain = init_chain if init_chain is not None else default_init_chain()
        self.context = MachineContext(config, initrd_overlay=initrd_overlay)
        self._console_writer = console_writer(console)
        self._console = bytearray()
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.stop_reason: str | None = None
        # The device that ended the guest ("PowerControl", "I8042", ...), if one did.
        self.stopped_by: str | None = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.milestones: dict[str, float] = {}

    # -- life cycle -----------------------------------------------------------

    def start(self) -> MicroVM:
        """Runs the init chain, then starts the vCPUs and the console pump."""
        self.chain.run(self.context)
        self.started_at = time.monotonic()
        self._spawn("console", self._pump_console)
        for vcpu in self.context.vcpus:
            self._spawn(f"vcpu{vcpu.index}", functools.partial(self._run_vcpu, vcpu))
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"pyfastvm-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, reason: str = "stopped", *, device: str | None = None) -> None:
        """Ends the guest: every vCPU leaves KVM_RUN and its thread ends."""
        with self._changed:
            if self.stop_reason is None:
                self.stop_reason, self.stopped_by = reason, device
            self._changed.notify_all()
        self._stopping.set()
        if self.context.vm is not None:
            self.context.vm.stop()

    def close(self) -> None:
        """Stops the guest, joins its threads and releases the VM (idempotent)."""
        self.stop()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.chain.teardown(self.context)

    def __enter__(self) -> MicroVM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the guest's threads --------------------------------------------------

    def _run_vcpu(self, vcpu: Vcpu) -> None:
        """One vCPU's thread. The first vCPU to end the machine stops them all."""
        try:
            exit = vcpu.run()
            reason = ending_reason(vcpu, exit)
        except BaseException as error:  # reported by wait(), never lost
            with self._changed:
                self.error = self.error or error
            self.stop("error")
            return
        self.stop(reason, device=exit.device)

    def _pump_console(self) -> None:
        serial = self.context.serial
        assert serial is not None
        while not self._stopping.is_set():
            ready, _, _ = select.select([serial.output_fd], [], [], CONSOLE_POLL_SECONDS)
            if ready:
                self._receive(serial.read_output())
        self._receive(serial.read_output())

    def _receive(self, data: bytes) -> None:
        if not data:
            return
        if self._console_writer is not None:
            self._console_writer(data)
        with self._changed:
            self._console += data
            self._note_milestones()
            self._changed.notify_all()

    def _note_milestones(self) -> None:
        assert self.started_at is not None
        for text in (INIT_MILESTONE, PANIC_TEXT):
            if text not in self.milestones and text.encode() in self._console:
                self.milestones[text] = time.monotonic() - self.started_at

    # -- watching ---------------------------------------------------------------

    @property
    def console(self) -> str:
        """Everything the guest printed on its serial console so far."""
        with self._changed:
            return self._console.decode(errors="replace")

    @property
    def panic(self) -> str | None:
        """The kernel's panic line, if it panicked."""
        text = self.console
        start = text.find(PANIC_TEXT)
        return None if start < 0 else text[start:].splitlines()[0]

    def write_console(self, data: bytes) -> None:
        """Types `data` into the guest's serial console."""
        serial = self.context.serial
        assert serial is not None
        while data:
            taken = serial.write_input(data)
            data = data[taken:]
            if data:
                time.sleep(0.01)

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Waits, re-checking whenever console output arrives, until
        `predicate()` holds (True) or the guest stops (False). Past `timeout`
        the guest is stopped and GuestTimeoutError raised."""
        with self._changed:
            settled = self._changed.wait_for(
                lambda: predicate() or self.stop_reason is not None, timeout
            )
            if settled:
                return predicate()
        self.stop("timeout")
        raise GuestTimeoutError(
            f"the guest was still running after {timeout} s; stopped it. "
            f"{self._progress_hint()}Last console lines:\n{self.console_tail()}"
        )

    def exit_assist_counts(self) -> dict[str, int]:
        """What the run loop's exit assists completed so far (empty on hardware
        KVM); until the VM is closed."""
        return self.context.machine.exit_assist_counts()

    def console_tail(self, lines: int = 5) -> str:
        """The last `lines` lines of the console: where the guest was."""
        return "\n".join(self.console.splitlines()[-lines:]) or "(nothing)"

    def _progress_hint(self) -> str:
        if INIT_MILESTONE in self.milestones or not self.context.profile.is_pvm:
            return ""
        return (
            "It had not started its init: on a KVM-on-PVM host a kernel boots through "
            "KVM's instruction emulator (Debian's takes 3 to 15 minutes, pyfastvm's "
            "minimal kernel under a minute), so give it a longer timeout. "
        )

    def wait_for(self, text: str, timeout: float | None = None) -> float:
        """Waits until the console shows `text`; returns the seconds since start."""
        needle = text.encode()
        if not self.wait_until(lambda: needle in self._console, timeout):
            self._raise_if_failed()
            raise VmmError(f"the guest stopped ({self.stop_reason}) before printing {text!r}")
        assert self.started_at is not None
        return time.monotonic() - self.started_at

    def wait(self, timeout: float | None = None) -> str:
        """Waits for the guest to stop; returns why ("reset", "shutdown", ...).
        Past `timeout` the guest is stopped and GuestTimeoutError raised."""
        self.wait_until(lambda: False, timeout)
        self._raise_if_failed()
        assert self.stop_reason is not None
        return self.stop_reason

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def ending_reason(vcpu: Vcpu, exit: Exit) -> str:
    """Why `exit` ends the machine; raises for one it cannot continue from."""
    reason = MACHINE_ENDING.get(exit.reason)
    if reason is not None:
        return reason
    if exit.reason == "internal_error" and exit.suberror == KVM_INTERNAL_ERROR_EMULATION:
        rip, insn = vcpu.get_regs().rip, exit.instruction or b""
        raise EmulationFailureError(
            f"KVM could not emulate the guest instruction at RIP {rip:#x} "
            f"(bytes {insn.hex(' ')}). On a KVM-on-PVM host guest kernel code runs "
            "through KVM's instruction emulator, which lacks some instructions: switch "
            "the CPU feature that uses it off on the kernel command line (clearcpuid=...,"
            " noxsave), or use a host with hardware virtualization (VMX/SVM)."
        )
    raise VcpuExitError(f"vCPU {vcpu.index} stopped with {exit!r}")
