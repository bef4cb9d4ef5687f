"""VMConfig: sizes, and every check made before a VM is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyfastvm.config import ConfigError, DeviceSpec, VMConfig, parse_size
from pyfastvm.devices import Sink


@pytest.mark.parametrize(
    "size, expected",
    [(4096, 4096), ("256M", 256 << 20), ("1G", 1 << 30), ("512MiB", 512 << 20), ("2g", 2 << 30),
     ("1024K", 1 << 20), ("65536", 65536), (" 64 MB ", 64 << 20)],
)  # fmt: skip
def test_sizes(size: int | str, expected: int) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["lots", "-1M", "1.5G", "", 0, -4096, "12Q"])
def test_bad_sizes_say_which_forms_work(size: int | str) -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_size(size)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return path


def test_a_good_config(kernel: Path) -> None:
    config = VMConfig(kernel=kernel, memory="512M", vcpus=4, cmdline="quiet")
    assert config.memory_bytes == 512 << 20


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kernel": Path("/nonexistent/vmlinux")}, "kernel /nonexistent/vmlinux does not exist"),
        ({"initrd": Path("/nonexistent/initrd")}, "initrd /nonexistent/initrd does not exist"),
        ({"initrd": Path("/")}, "not a regular file"),
        ({"memory": "1M"}, "at least 4 MiB"),
        ({"memory": 5 * 1024 * 1024 + 1}, "whole 4 KiB pages"),
        ({"vcpus": 0}, "1 to 255"),
        ({"vcpus": 256}, "1 to 255"),
        ({"cmdline": "a\0b"}, "NUL"),
        ({"cmdline": "x" * 2048}, "limit is 2047"),
        ({"timeout": 0}, "positive"),
    ],
)
def test_bad_values_are_refused_with_the_fix(
    kernel: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        VMConfig(**{"kernel": kernel, **changes})  # type: ignore[arg-type]


def test_overlapping_devices_are_named(kernel: Path) -> None:
    devices = [
        DeviceSpec("pio", 0x3F8, 8, Sink(), name="uart"),
        DeviceSpec("pio", 0x3FC, 4, Sink(), name="probe"),
    ]
    with pytest.raises(ConfigError, match="uart.*probe.*overlap"):
        VMConfig(kernel=kernel, devices=devices)
    VMConfig(kernel=kernel, devices=[devices[0], DeviceSpec("mmio", 0x3FC, 4, Sink())])


def test_pio_devices_stay_below_port_0x10000(kernel: Path) -> None:
    with pytest.raises(ConfigError, match="0xffff"):
        VMConfig(kernel=kernel, devices=[DeviceSpec("pio", 0xFFFF, 2, Sink())])
