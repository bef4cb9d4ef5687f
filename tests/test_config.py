"""VMConfig: sizes, and every check made before a VM is created."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import pyfastvm
from pyfastvm.config import ConfigError, DeviceSpec, VMConfig, parse_size
from pyfastvm.devices import Sink

GIB = 1 << 30


@pytest.mark.parametrize(
    "size, expected",
    [(4096, 4096), ("256M", 256 << 20), ("1G", 1 << 30), ("512MiB", 512 << 20), ("2g", 2 << 30),
     ("1024K", 1 << 20), ("1024kb", 1 << 20), ("65536", 65536), ("4096B", 4096),
     (" 64 MB ", 64 << 20), ("1T", 1 << 40)],
)  # fmt: skip
def test_sizes(size: int | str, expected: int) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize(
    "size",
    ["lots", "-1M", "1.5G", "", "0", "0M", 0, -4096, "12Q", "512iB", "M", "1 G B", True, 1.5],
)
def test_bad_sizes_say_which_forms_work(size: int | str) -> None:
    with pytest.raises(ConfigError, match=r"memory size .* give bytes .* \(256M, 1G, 512MiB\)"):
        parse_size(size)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return path


def test_a_good_config(kernel: Path) -> None:
    config = VMConfig(kernel=kernel, memory="512M", vcpus=4, cmdline="quiet", timeout=5)
    assert config.memory_bytes == 512 << 20
    assert VMConfig().memory_bytes == 256 << 20  # no kernel yet is fine: run() picks one


def test_str_paths_become_paths(kernel: Path) -> None:
    config = VMConfig(kernel=str(kernel), initrd=str(kernel))  # type: ignore[arg-type]
    assert config.kernel == kernel and config.initrd == kernel


def test_config_errors_are_vmm_errors_and_value_errors() -> None:
    assert issubclass(ConfigError, pyfastvm.VmmError) and issubclass(ConfigError, ValueError)
    assert pyfastvm.ConfigError is ConfigError


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kernel": Path("/nonexistent/vmlinux")},
         "kernel /nonexistent/vmlinux does not exist: pass kernel=PATH"),
        ({"kernel": Path("/")}, "kernel / is not a regular file: pass kernel=PATH"),
        ({"initrd": Path("/nonexistent/initrd")},
         "initrd /nonexistent/initrd does not exist: pass initrd=PATH"),
        ({"initrd": Path("/")}, "initrd / is not a regular file"),
        ({"memory": "lots"}, "give bytes"),
        ({"memory": 256}, "is 256 bytes: give at least 4 MiB"),
        ({"memory": "1M"}, "at least 4 MiB"),
        ({"memory": 5 * 1024 * 1024 + 1}, "whole 4 KiB pages"),
        ({"vcpus": 0}, "1 to 255"),
        ({"vcpus": 256}, "1 to 255"),
        ({"vcpus": 2.0}, "whole number from 1 to 255"),
        ({"cmdline": "a\0b"}, "NUL"),
        ({"cmdline": "x" * 2048}, "has 2048 bytes; the limit is 2047"),
        ({"cmdline": "é" * 1024}, "has 2048 bytes"),  # bytes, not characters
        ({"timeout": 0}, "positive number of seconds"),
        ({"timeout": float("nan")}, "positive number of seconds"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_with_the_fix(
    kernel: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        VMConfig(**{"kernel": kernel, **changes})  # type: ignore[arg-type]


def test_the_longest_command_line_fits(kernel: Path) -> None:
    VMConfig(kernel=kernel, cmdline="x" * 2047)


class Probe:
    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        pass


def test_overlapping_devices_are_named(kernel: Path) -> None:
    devices = [
        DeviceSpec("pio", 0x3F8, 8, Sink(), id="uart"),
        DeviceSpec("pio", 0x3FC, 4, Probe()),
    ]
    with pytest.raises(
        ConfigError, match=r"uart \(pio 0x3f8-0x3ff\) and Probe \(pio 0x3fc-0x3ff\) overlap"
    ):
        VMConfig(kernel=kernel, devices=devices)


def test_the_same_range_on_the_other_bus_or_adjacent_is_fine(kernel: Path) -> None:
    hole = pyfastvm.MMIO_HOLE_START
    VMConfig(
        kernel=kernel,
        devices=[
            DeviceSpec("pio", 0x3F8, 8, Sink()),
            DeviceSpec("pio", 0x400, 8, Sink()),
            DeviceSpec("mmio", hole, 0x1000, Sink()),
            DeviceSpec("mmio", hole + 0x1000, 0x1000, Probe()),
        ],
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        (DeviceSpec("pio", 0xFFFF, 2, Sink()), "Sink \\(pio 0xffff-0x10000\\) goes past .* 0xffff"),
        (DeviceSpec("mmio", (1 << 64) - 1, 2, Sink()), "goes past the mmio bus's end"),
        (DeviceSpec("pio", 0x10, 0, Sink(), id="empty"), "empty: base 0x10, length 0"),
        (DeviceSpec("pio", -1, 1, Sink()), "base >= 0"),
        (DeviceSpec("isa", 0x10, 1, Sink()), "bus 'isa' is not 'pio' or 'mmio'"),  # type: ignore[arg-type]
        (DeviceSpec("pio", 0x10, 1, object(), id="x"), "object has no read or write method"),
        (DeviceSpec("mmio", 0x1000, 0x100, Sink()), "lies in guest RAM .*0x0-0xfffffff.*hole"),
    ],
)  # fmt: skip
def test_bad_devices_are_refused(kernel: Path, spec: DeviceSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VMConfig(kernel=kernel, memory="256M", devices=[spec])


def test_mmio_above_4_gib_is_ram_only_when_the_vm_is_that_large(kernel: Path) -> None:
    above = DeviceSpec("mmio", 4 * GIB, 0x1000, Sink())
    VMConfig(kernel=kernel, memory="1G", devices=[above])
    with pytest.raises(ConfigError, match="lies in guest RAM"):
        VMConfig(kernel=kernel, memory="4G", devices=[above])


def test_validate_rechecks_after_mutation_and_replace_checks_too(kernel: Path) -> None:
    config = VMConfig(kernel=kernel)
    config.devices.append(DeviceSpec("pio", 0xFFFF, 2, Sink()))
    with pytest.raises(ConfigError, match="0xffff"):
        config.validate()
    with pytest.raises(ConfigError, match="1 to 255"):
        dataclasses.replace(VMConfig(kernel=kernel), vcpus=0)
