"""The init chain: levels, order, undo on failure, and user steps."""

from __future__ import annotations

import pytest

import pyfastvm
from pyfastvm.init_chain import InitChain, InitStepError

Log = list[str]


def recording_chain(log: Log, fail: str | None = None) -> InitChain[Log]:
    chain: InitChain[Log] = InitChain()

    def step(name: str) -> None:
        def init(ctx: Log) -> None:
            if name == fail:
                raise RuntimeError(f"{name} broke")
            ctx.append(f"+{name}")

        chain_level = {"vm": "core", "irq": "base", "serial": "dev", "kernel": "late"}[name]
        chain.add(name, chain_level, init, lambda ctx: ctx.append(f"-{name}"))

    for name in ("kernel", "serial", "vm", "irq"):  # registered out of level order
        step(name)
    return chain


def test_steps_run_level_by_level() -> None:
    log: Log = []
    chain = recording_chain(log)
    assert chain.steps() == [("core", "vm"), ("base", "irq"), ("dev", "serial"), ("late", "kernel")]
    chain.run(log)
    assert log == ["+vm", "+irq", "+serial", "+kernel"]


def test_a_failing_step_is_named_and_the_done_steps_undone_in_reverse() -> None:
    log: Log = []
    with pytest.raises(
        InitStepError, match="init step 'serial' \\(level dev\\) failed: serial broke"
    ) as caught:
        recording_chain(log, fail="serial").run(log)
    assert log == ["+vm", "+irq", "-irq", "-vm"]
    assert caught.value.step == "serial" and isinstance(caught.value.__cause__, RuntimeError)
    assert isinstance(caught.value, pyfastvm.VmmError)


def test_teardown_undoes_once() -> None:
    log: Log = []
    chain = recording_chain(log)
    chain.run(log)
    chain.teardown(log)
    chain.teardown(log)
    assert log[4:] == ["-kernel", "-serial", "-irq", "-vm"]


def test_ctrl_c_in_a_step_undoes_and_propagates() -> None:
    log: Log = []
    chain = recording_chain(log)

    def interrupted(ctx: Log) -> None:
        raise KeyboardInterrupt

    chain.add("plugin", "dev", interrupted)
    with pytest.raises(KeyboardInterrupt):
        chain.run(log)
    assert log == ["+vm", "+irq", "+serial", "-serial", "-irq", "-vm"]


def test_an_undo_that_fails_is_noted_not_lost() -> None:
    log: Log = []
    chain = recording_chain(log, fail="kernel")

    def bad_undo(ctx: Log) -> None:
        raise OSError("undo failed")

    chain.add("plugin", "dev", lambda ctx: None, bad_undo)
    with pytest.raises(InitStepError) as caught:
        chain.run(log)
    assert any("'plugin' failed too: undo failed" in note for note in caught.value.__notes__)
    assert log[-3:] == ["-serial", "-irq", "-vm"]


def test_a_user_step_runs_among_the_built_in_ones_by_level() -> None:
    log: Log = []
    chain = recording_chain(log)
    chain.add("my-device", "dev", lambda ctx: ctx.append("+my-device"))
    chain.run(log)
    assert log.index("+serial") < log.index("+my-device") < log.index("+kernel")


def test_bad_registrations_are_refused() -> None:
    chain: InitChain[Log] = InitChain()
    chain.add("vm", "core", lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        chain.add("vm", "base", lambda ctx: None)
    with pytest.raises(ValueError, match="use one of"):
        chain.add("x", "early", lambda ctx: None)


def test_a_chain_over_a_real_vm_undoes_it() -> None:
    ctx: dict[str, object] = {}
    chain: InitChain[dict[str, object]] = InitChain()
    chain.add("vm", "core", lambda c: c.update(vm=pyfastvm.Vm(16 << 20)), lambda c: c.pop("vm"))
    chain.add(
        "device",
        "dev",
        lambda c: c["vm"].add_pio_device(0x3F8, 8, pyfastvm.devices.Sink()),  # type: ignore[attr-defined]
    )
    chain.add(
        "clash",
        "late",
        lambda c: c["vm"].add_pio_device(0x3FC, 1, pyfastvm.devices.Sink()),  # type: ignore[attr-defined]
    )
    with pytest.raises(InitStepError, match="'clash'.*overlaps") as caught:
        chain.run(ctx)
    assert isinstance(caught.value.__cause__, pyfastvm.BusConflictError)
    assert "vm" not in ctx
