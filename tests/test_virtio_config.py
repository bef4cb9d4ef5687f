"""Disks, vsock and rng in VMConfig and on the command line: bad input gets
its error before any VM exists; the devices' DSDT description."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyfastvm
from pyfastvm.acpi import aml
from pyfastvm.cli import _parser
from pyfastvm.description import describe
from pyfastvm.devices import VirtioBlk, VirtioRng


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4096))
    return path


def config(**kwargs: object) -> pyfastvm.VMConfig:
    return pyfastvm.VMConfig(**kwargs)  # type: ignore[arg-type]


def test_a_missing_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pyfastvm.ConfigError, match="does not exist"):
        config(disks=[pyfastvm.Disk(tmp_path / "nope.img")])


def test_an_image_that_is_not_a_file_or_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pyfastvm.ConfigError, match="not a regular file"):
        config(disks=[pyfastvm.Disk(tmp_path)])
    small = tmp_path / "small.img"
    small.write_bytes(b"x")
    with pytest.raises(pyfastvm.ConfigError, match="at least one 512-byte sector"):
        config(disks=[pyfastvm.Disk(small)])


def test_read_write_on_a_read_only_image_is_refused(image: Path) -> None:
    image.chmod(0o444)
    with pytest.raises(pyfastvm.ConfigError, match="read_only=True"):
        config(disks=[pyfastvm.Disk(image)])
    assert config(disks=[pyfastvm.Disk(image, read_only=True)]).disks[0].read_only


def test_socket_paths_that_exist_or_cannot_be_made_are_refused(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.touch()
    with pytest.raises(pyfastvm.ConfigError, match="exists already"):
        config(vsock=pyfastvm.Vsock(taken))
    with pytest.raises(pyfastvm.ConfigError, match="not a writable directory"):
        config(vsock=pyfastvm.Vsock(tmp_path / "missing" / "v.sock"))
    with pytest.raises(pyfastvm.ConfigError, match="too long"):
        config(vsock=pyfastvm.Vsock(tmp_path / ("x" * 120)))
    with pytest.raises(pyfastvm.ConfigError, match="context id"):
        config(vsock=pyfastvm.Vsock(tmp_path / "v.sock", cid=2))


def test_the_cli_takes_disks_vsock_and_rng() -> None:
    args = _parser().parse_args(
        ["run", "--disk", "a.img", "--disk", "b.img,ro", "--vsock", "v.sock", "--rng", "true"]
    )
    assert args.disk == [pyfastvm.Disk("a.img"), pyfastvm.Disk("b.img", read_only=True)]
    assert (args.vsock, args.rng) == ("v.sock", True)


def test_resource_descriptors_encode_as_acpi_says() -> None:
    assert aml.memory32_fixed(0xC0000000, 0x1000) == bytes.fromhex("86090001000000c000100000")
    assert aml.extended_interrupt(5) == bytes.fromhex("890600030105000000")


def test_a_virtio_device_is_an_lnro0005_device_with_its_window_and_interrupt(
    image: Path,
) -> None:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()  # irqfd needs it
    blk = vm.add_mmio_device(None, VirtioBlk.WINDOW, VirtioBlk(image), gsi=vm.allocate_gsi())
    rng = vm.add_mmio_device(None, VirtioRng.WINDOW, VirtioRng(), gsi=vm.allocate_gsi())
    for info in (blk, rng):
        terms = describe(info).aml
        assert aml.string("LNRO0005") in terms
        assert aml.memory32_fixed(info.base, info.length) in terms
        assert info.gsi is not None and aml.extended_interrupt(info.gsi) in terms
    assert describe(blk).aml != describe(rng).aml
