"""MicroVM: a Linux guest built by the init chain, its vCPU threads and its
console, started, watched and always torn down."""

from __future__ import annotations

import functools
import io
import select
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from ._core import EmulationFailureError, Exit, ExitReason, Vcpu, VmmError
from .builder import BuildContext, default_init_chain
from .config import VMConfig
from .errors import GuestTimeoutError, VcpuExitError
from .guest.console_protocol import INIT_MILESTONE, PANIC_TEXT
from .init_chain import InitChain
from .snapshot import Snapshot, capture, restore_chain, restored_config, save
from .vm_threads import VmThread

ConsoleSink = Callable[[bytes], object] | IO[bytes] | IO[str] | None

# How often the console pump looks at its stop flag while the guest is silent.
CONSOLE_POLL_SECONDS = 0.1
# How long typed input waits for the guest to drain the UART's 64-byte FIFO.
CONSOLE_INPUT_WAIT = 0.002

# Exits that end the machine; MicroVM.stop_reason is the exit's reason.
MACHINE_ENDING = frozenset({
    ExitReason.RESET,  # the ACPI reset register or the i8042 reset line
    ExitReason.POWEROFF,  # ACPI S5
    ExitReason.SHUTDOWN,  # a triple fault
    ExitReason.HALTED,  # only without an in-kernel irqchip
    ExitReason.SYSTEM_EVENT,
    ExitReason.DEBUG_EXIT,
    ExitReason.STOPPED,
})  # fmt: skip
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
    thread and releases the VM. ``pause()`` parks every vCPU at a clean point
    and ``resume()`` lets them go on.
    """

    def __init__(
        self,
        config: VMConfig,
        *,
        console: ConsoleSink = None,
        init_chain: InitChain[BuildContext] | None = None,
        initrd_overlay: bytes = b"",
    ) -> None:
        self.config = config
        self.chain = init_chain if init_chain is not None else default_init_chain()
        self.context = BuildContext(config, initrd_overlay=initrd_overlay)
        self._console_writer = console_writer(console)
        self._console = bytearray()
        self._changed = threading.Condition()
        self._threads: list[VmThread] = []
        self._stopping = threading.Event()
        self._pause_wanted = False
        self._parked = 0
        # An ExitReason's word ("poweroff", "reset", ...), "timeout" or "error".
        self.stop_reason: str | None = None
        # The id of the device that ended the guest ("power-control", ...), if one did.
        self.stopped_by: str | None = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.milestones: dict[str, float] = {}
        # Started from a snapshot (MicroVM.restore) rather than booted.
        self.restored = False

    # -- life cycle -----------------------------------------------------------

    def start(self, *, paused: bool = False) -> MicroVM:
        """Runs the init chain, then starts the vCPUs (parked at once with
        `paused`, until `resume()`) and the console pump."""
        self.chain.run(self.context)
        self.started_at = time.monotonic()
        if paused:
            self._pause_wanted = True
            self.context.vm.pause()
        self._spawn("console", self._pump_console)
        for vcpu in self.context.vcpus:
            self._spawn(f"vcpu{vcpu.index}", functools.partial(self._run_vcpu, vcpu))
        return self

    @classmethod
    def restore(
        cls,
        source: Snapshot | Path | str,
        *,
        console: ConsoleSink = None,
        paused: bool = False,
        devices: Mapping[str, object] | None = None,
    ) -> MicroVM:
        """A MicroVM started (or `paused`) from a snapshot directory or a
        `Snapshot` (a template from `freeze()`), its RAM the snapshot's,
        copy-on-write. A device written in Python comes from `devices`, by
        its id; built-in ones are rebuilt."""
        if not isinstance(source, Snapshot):
            with Snapshot.load(source) as snapshot:
                return cls.restore(snapshot, console=console, paused=paused, devices=devices)
        machine = cls(
            restored_config(source),
            console=console,
            init_chain=restore_chain(source, devices or {}),
        )
        machine.restored = True
        return machine.start(paused=paused)

    def snapshot(self, path: Path | str, *, resume: bool = True) -> None:
        """Writes the whole guest to directory `path` (see pyfastvm.snapshot),
        paused meanwhile; it runs on afterwards unless `resume` is False or it
        was paused already. If the snapshot cannot be written, the guest is
        left as it was and SnapshotError says why."""
        was_paused = self.paused
        self.pause()
        try:
            save(self.context.vm, self.context.vcpus, path, config=self._booted())
        finally:
            if resume and not was_paused:
                self.resume()

    def freeze(self) -> Snapshot:
        """Turns the guest into a template: its state is kept in memory, its
        RAM becomes the template's, and the MicroVM is closed. Each
        `template.clone()` starts a new MicroVM from it in milliseconds; the
        clones share every page of RAM none of them wrote."""
        self.pause()
        try:
            template = capture(self.context.vm, self.context.vcpus, config=self._booted())
        except BaseException:
            self.resume()
            raise
        self.close()
        return template

    def _booted(self) -> dict[str, object]:
        """What was booted, as a snapshot's metadata records it."""
        config = self.config
        return {
            "kernel": str(config.kernel) if config.kernel else None,
            "initrd": str(config.initrd) if config.initrd else None,
            "cmdline": self.context.cmdline or config.cmdline,
            "memory": config.memory_bytes,
            "vcpus": config.vcpus,
        }

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self._threads.append(VmThread(f"pyfastvm-{name}", target))

    def stop(self, reason: str = "stopped", *, device: str | None = None) -> None:
        """Ends the guest: every vCPU leaves KVM_RUN and its thread ends."""
        with self._changed:
            if self.stop_reason is None:
                self.stop_reason, self.stopped_by = reason, device
            self._stopping.set()
            self._changed.notify_all()
        if self.context.created_vm is not None:
            self.context.created_vm.stop()

    @property
    def paused(self) -> bool:
        with self._changed:
            return self._pause_wanted

    def pause(self) -> None:
        """Parks every vCPU at a clean point (any I/O of its last exit done)
        and every device worker; returns once they all are. The guest's
        memory and state then hold still until `resume()`."""
        with self._changed:
            if self.stop_reason is not None or not self._threads:
                raise VmmError(f"the guest is not running (stopped: {self.stop_reason})")
            self._pause_wanted = True
        self.context.vm.pause()
        with self._changed:
            self._changed.wait_for(
                lambda: self._parked == len(self.context.vcpus) or self.stop_reason is not None
            )

    def resume(self) -> None:
        """Lets the paused vCPUs and device workers go on, telling each
        vCPU's kvmclock that it was paused (KVM_KVMCLOCK_CTRL), so the
        guest's watchdogs do not take the gap for a lockup. Does nothing
        when the guest is not paused."""
        if not self.paused or self.stop_reason is not None:
            return
        for vcpu in self.context.vcpus:
            vcpu.kvmclock_ctrl()
        self.context.vm.resume()
        with self._changed:
            self._pause_wanted = False
            self._changed.notify_all()

    def close(self) -> None:
        """Stops the guest, joins its threads and releases the VM (idempotent)."""
        self.stop()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.chain.teardown(self.context)

    def __enter__(self) -> MicroVM:
        """Starts the guest, unless it runs already (a restored one)."""
        return self if self.started_at is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the guest's threads --------------------------------------------------

    def _run_vcpu(self, vcpu: Vcpu) -> None:
        """One vCPU's thread: it runs until the machine ends (the first vCPU to
        end it stops them all), parked while the machine is paused."""
        try:
            exit = vcpu.run()
            while exit.reason == ExitReason.PAUSED:
                if not self._park():
                    return  # stopped while paused: the stopper gave the reason
                exit = vcpu.run()
            reason = ending_reason(vcpu, exit)
        except BaseException as error:  # reported by wait(), never lost
            with self._changed:
                self.error = self.error or error
            self.stop("error")
            return
        self.stop(reason, device=exit.device)

    def _park(self) -> bool:
        """Waits while the machine is paused; False if it stops meanwhile."""
        with self._changed:
            self._parked += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._pause_wanted or self._stopping.is_set())
            self._parked -= 1
            return not self._stopping.is_set()

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
                time.sleep(CONSOLE_INPUT_WAIT)

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
        return self.context.vm.exit_assist_counts()

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
    if exit.reason in MACHINE_ENDING:
        return exit.reason.value
    if exit.reason == ExitReason.INTERNAL_ERROR and exit.suberror == KVM_INTERNAL_ERROR_EMULATION:
        rip, insn = vcpu.get_regs().rip, exit.instruction or b""
        raise EmulationFailureError(
            f"KVM could not emulate the guest instruction at RIP {rip:#x} "
            f"(bytes {insn.hex(' ')}). On a KVM-on-PVM host guest kernel code runs "
            "through KVM's instruction emulator, which lacks some instructions: switch "
            "the CPU feature that uses it off on the kernel command line (clearcpuid=...,"
            " noxsave), or use a host with hardware virtualization (VMX/SVM)."
        )
    raise VcpuExitError(f"vCPU {vcpu.index} stopped with {exit!r}")
