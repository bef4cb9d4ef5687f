"""The hardware-KVM lane itself: a command run in a QEMU TCG guest with
nested SVM, where the host's files, working directory and environment are
the command's, and the ways the lane fails say why."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pyfastvm.testing.hwkvm import (
    GuestKvmMissingError,
    LaneStalledError,
    LaneTimeoutError,
    QemuMissingError,
    qemu,
    run_in_lane,
)

needs_qemu = pytest.mark.skipif(
    shutil.which(qemu.QEMU) is None, reason="qemu-system-x86 is not installed"
)
LANE_TIMEOUT = 300.0


@needs_qemu
def test_the_command_runs_on_svm_kvm_in_the_hosts_directory_with_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANE_PROBE", "from the host")
    console: list[bytes] = []
    probe = 'test -c /dev/kvm && grep -qw svm /proc/cpuinfo && pwd && echo "$LANE_PROBE"; exit 7'
    status = run_in_lane(
        ["sh", "-c", probe], timeout=LANE_TIMEOUT, prefetch=False, sink=console.append
    )
    assert status == 7
    assert f"{tmp_path}\nfrom the host\n".encode() in b"".join(console)


@needs_qemu
def test_a_cpu_without_svm_fails_with_what_the_kernel_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(qemu, "CPU", "qemu64,-svm")
    with pytest.raises(GuestKvmMissingError, match="no /dev/kvm") as caught:
        run_in_lane(["true"], timeout=LANE_TIMEOUT, prefetch=False, sink=lambda data: None)
    assert "kvm" in caught.value.kernel_lines.lower()


@needs_qemu
def test_past_its_timeout_qemu_is_killed_with_the_console_tail() -> None:
    console: list[bytes] = []
    with pytest.raises(LaneTimeoutError, match="still running after 2 s") as caught:
        run_in_lane(["sleep", "600"], timeout=2, prefetch=False, sink=console.append)
    assert "Last console lines" in str(caught.value)


@needs_qemu
def test_a_silent_guest_is_stopped_with_its_cpu_state_and_its_kernels_backtrace() -> None:
    with pytest.raises(LaneStalledError, match="printed nothing for 30 s") as caught:
        run_in_lane(
            ["sleep", "600"], timeout=LANE_TIMEOUT, silence=30, prefetch=False, sink=lambda _: None
        )
    report = str(caught.value)
    assert "RIP=" in report  # QEMU's monitor: info registers
    assert "NMI: Not continuing" in report  # the guest kernel's panic, with its backtrace


def test_without_qemu_it_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QemuMissingError, match=re.escape(qemu.INSTALL_QEMU)):
        run_in_lane(["true"])
