"""The init chain: levels, order, undo on failure, interrupts, and user steps."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pyfastvm
from pyfastvm.init_chain import InitChain, InitChainError, InitStepError, InitTeardownError

Log = list[str]
BUILT_IN_LEVELS = {"vm": "core", "irq": "base", "serial": "dev", "kernel": "late"}


def recording_step(name: str, fail: bool = False) -> Callable[[Log], None]:
    def init(ctx: Log) -> None:
        if fail:
            raise RuntimeError(f"{name} broke")
        ctx.append(f"+{name}")

    return init


def undo_of(name: str) -> Callable[[Log], None]:
    return lambda ctx: ctx.append(f"-{name}")


def recording_chain(fail: str | None = None) -> InitChain[Log]:
    """Four built-in-like steps, registered out of level order on purpose."""
    chain: InitChain[Log] = InitChain()
    for name in ("kernel", "serial", "vm", "irq"):
        chain.add(name, BUILT_IN_LEVELS[name], recording_step(name, name == fail), undo_of(name))
    return chain


def test_steps_run_level_by_level() -> None:
    log: Log = []
    chain = recording_chain()
    assert chain.steps() == [("core", "vm"), ("base", "irq"), ("dev", "serial"), ("late", "kernel")]
    chain.run(log)
    assert log == ["+vm", "+irq", "+serial", "+kernel"]


def test_within_a_level_registration_order_holds() -> None:
    log: Log = []
    chain: InitChain[Log] = InitChain()
    for name in ("c", "a", "b"):
        chain.add(name, "dev", recording_step(name))
    chain.run(log)
    assert log == ["+c", "+a", "+b"]


def test_a_failing_step_is_named_and_the_done_steps_undone_in_reverse() -> None:
    log: Log = []
    with pytest.raises(
        InitStepError, match=r"^init step 'serial' \(level dev\) failed: serial broke$"
    ) as caught:
        recording_chain(fail="serial").run(log)
    assert log == ["+vm", "+irq", "-irq", "-vm"]  # the failed step itself is not undone
    assert (caught.value.step, caught.value.level) == ("serial", "dev")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert isinstance(caught.value, pyfastvm.VmmError)
    assert not hasattr(caught.value, "__notes__")


def test_a_failed_chain_can_run_again() -> None:
    log: Log = []
    chain = recording_chain(fail="kernel")
    for _ in range(2):
        with pytest.raises(InitStepError):
            chain.run(log)
    assert log == ["+vm", "+irq", "+serial", "-serial", "-irq", "-vm"] * 2


def test_teardown_undoes_once() -> None:
    log: Log = []
    chain = recording_chain()
    chain.run(log)
    chain.teardown(log)
    chain.teardown(log)
    assert log[4:] == ["-kernel", "-serial", "-irq", "-vm"]


def test_teardown_before_run_does_nothing() -> None:
    log: Log = []
    recording_chain().teardown(log)
    assert log == []


def test_running_twice_without_teardown_is_refused() -> None:
    log: Log = []
    chain = recording_chain()
    chain.run(log)
    with pytest.raises(InitChainError, match=r"already run: call teardown\(\)"):
        chain.run(log)
    chain.teardown(log)
    chain.run(log)
    assert log.count("+vm") == 2


def test_ctrl_c_in_a_step_undoes_and_propagates_unwrapped() -> None:
    log: Log = []
    chain = recording_chain()

    def interrupted(ctx: Log) -> None:
        raise KeyboardInterrupt

    chain.add("plugin", "dev", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        chain.run(log)
    assert type(caught.value) is KeyboardInterrupt
    assert log == ["+vm", "+irq", "+serial", "-serial", "-irq", "-vm"]


def test_an_undo_failing_during_ctrl_c_is_a_note_on_the_interrupt() -> None:
    log: Log = []
    chain: InitChain[Log] = InitChain()
    chain.add("vm", "core", recording_step("vm"), bad_undo)

    def interrupted(ctx: Log) -> None:
        raise KeyboardInterrupt

    chain.add("wait", "late", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        chain.run(log)
    assert caught.value.__notes__ == ["undoing init step 'vm' failed: OSError: undo failed"]


def bad_undo(ctx: Log) -> None:
    raise OSError("undo failed")


def test_an_undo_that_fails_is_noted_and_the_rest_still_undone() -> None:
    log: Log = []
    chain = recording_chain(fail="kernel")
    chain.add("plugin", "dev", recording_step("plugin"), bad_undo)
    with pytest.raises(InitStepError, match="'kernel'") as caught:
        chain.run(log)
    assert caught.value.__notes__ == ["undoing init step 'plugin' failed: OSError: undo failed"]
    assert log[-3:] == ["-serial", "-irq", "-vm"]


def test_teardown_reports_every_failed_undo_after_undoing_the_rest() -> None:
    log: Log = []
    chain = recording_chain()
    chain.add("first", "core", recording_step("first"), bad_undo, before="vm")
    chain.add("plugin", "dev", recording_step("plugin"), bad_undo)
    chain.run(log)
    with pytest.raises(InitTeardownError, match="'plugin' failed.*'first' failed") as caught:
        chain.teardown(log)
    assert [step for step, _ in caught.value.failures] == ["plugin", "first"]
    assert isinstance(caught.value.__cause__, OSError)
    assert log[-4:] == ["-kernel", "-serial", "-irq", "-vm"]
    chain.teardown(log)  # nothing left to undo, nothing raised


def test_a_user_step_runs_among_the_built_in_ones_by_level() -> None:
    log: Log = []
    chain = recording_chain()
    chain.add("my-device", "dev", recording_step("my-device"))
    chain.run(log)
    assert log == ["+vm", "+irq", "+serial", "+my-device", "+kernel"]


def test_before_and_after_place_a_step_next_to_another() -> None:
    chain = recording_chain()
    chain.add("console", "dev", recording_step("console"))
    chain.add("early-uart", "dev", recording_step("early-uart"), before="serial")
    chain.add("acpi", "late", recording_step("acpi"), before="kernel")
    chain.add("uart-quirk", "dev", recording_step("uart-quirk"), after="serial")
    assert [name for _, name in chain.steps()] == [
        "vm", "irq", "early-uart", "serial", "uart-quirk", "console", "acpi", "kernel",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name, level, where, message",
    [
        ("vm", "base", {}, "'vm' is already registered"),
        (
            "x",
            "early",
            {},
            "unknown init level 'early'.*use one of core, base, dev, firmware, late",
        ),
        ("x", "dev", {"before": "nope"}, "'nope', which is not registered.*vm, irq, serial"),
        ("x", "dev", {"after": "vm"}, r"'vm' \(level core\).*use level='core'"),
        ("x", "dev", {"before": "serial", "after": "serial"}, "not both"),
    ],
)
def test_bad_registrations_are_refused(
    name: str, level: str, where: dict[str, str], message: str
) -> None:
    chain = recording_chain()
    with pytest.raises(InitChainError, match=message) as caught:
        chain.add(name, level, recording_step(name), **where)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, pyfastvm.VmmError)
    assert len(chain.steps()) == 4


def test_a_chain_over_a_real_vm_undoes_it() -> None:
    """core creates a Vm, dev adds a Python device, late fails on the bus."""
    ctx: dict[str, object] = {}
    log: Log = []

    class Probe:
        def read(self, offset: int, size: int) -> bytes:
            return bytes(size)

        def write(self, offset: int, data: bytes) -> None:
            pass

    def vm(c: dict[str, object]) -> pyfastvm.Vm:
        machine = c["vm"]
        assert isinstance(machine, pyfastvm.Vm)
        return machine

    def drop_vm(c: dict[str, object]) -> None:
        log.append("-vm")
        del c["vm"]

    chain: InitChain[dict[str, object]] = InitChain()
    chain.add("vm", "core", lambda c: c.update(vm=pyfastvm.Vm(16 << 20)), drop_vm)
    chain.add(
        "probe",
        "dev",
        lambda c: vm(c).add_pio_device(0x3F8, 8, Probe()),
        lambda c: log.append("-probe"),
    )
    chain.add("clash", "late", lambda c: vm(c).add_pio_device(0x3FC, 1, pyfastvm.devices.Sink()))
    with pytest.raises(
        InitStepError, match=r"init step 'clash' \(level late\).*overlaps"
    ) as caught:
        chain.run(ctx)
    assert isinstance(caught.value.__cause__, pyfastvm.BusConflictError)
    assert log == ["-probe", "-vm"]
    assert "vm" not in ctx
