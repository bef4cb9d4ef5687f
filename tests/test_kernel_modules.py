"""Kernel modules out of a Debian kernel package: their dependencies from
each module's .modinfo, in an order insmod can load them, cached."""

from __future__ import annotations

import lzma
import time
from pathlib import Path

import pytest

from pyfastvm.guest.errors import GuestImageError
from pyfastvm.guest.kernel_modules import (
    ModuleInfo,
    debian_kernel_modules,
    load_order,
    read_modinfo,
)

GENERIC_KERNEL = "linux-image-amd64"


def modules(**depends: str) -> dict[str, ModuleInfo]:
    return {
        name: ModuleInfo(name, f"kernel/{name}.ko", tuple(d for d in deps.split(",") if d))
        for name, deps in depends.items()
    }


def test_dependencies_load_first_and_once() -> None:
    index = modules(kvm_amd="kvm,ccp", kvm="irqbypass", ccp="", irqbypass="", p9="netfs", netfs="")
    order = load_order(index, ["kvm-amd", "kvm", "p9"])
    assert [m.name for m in order] == ["irqbypass", "kvm", "ccp", "kvm_amd", "netfs", "p9"]


def test_built_in_modules_need_no_loading() -> None:
    index = modules(virtio_pci="virtio,virtio_ring", virtio_ring="virtio", virtio="")
    assert [m.name for m in load_order(index, ["virtio_pci"], builtin=["virtio"])] == [
        "virtio_ring",
        "virtio_pci",
    ]


def test_a_missing_dependency_is_named_with_what_needs_it() -> None:
    with pytest.raises(GuestImageError, match=r"no module 'ccp' \(needed by kvm_amd\)"):
        load_order(modules(kvm_amd="ccp"), ["kvm_amd"])


def test_a_dependency_cycle_is_refused() -> None:
    with pytest.raises(GuestImageError, match="cycle"):
        load_order(modules(a="b", b="a"), ["a"])


@pytest.fixture(scope="module")
def kvm_amd() -> list[Path]:
    return debian_kernel_modules(["kvm-amd"], GENERIC_KERNEL)


def test_the_generic_kernels_kvm_amd_comes_with_its_dependencies(kvm_amd: list[Path]) -> None:
    assert [path.stem for path in kvm_amd] == ["irqbypass", "kvm", "ccp", "kvm_amd"]
    info = read_modinfo(kvm_amd[-1].read_bytes(), "kvm-amd.ko")
    assert (info.name, info.depends) == ("kvm_amd", ("kvm", "ccp"))
    started = time.monotonic()
    assert debian_kernel_modules(["kvm_amd"], GENERIC_KERNEL) == kvm_amd  # cached
    assert time.monotonic() - started < 0.5


def test_xz_compressed_modules_read_like_plain_ones(kvm_amd: list[Path]) -> None:
    kvm = kvm_amd[1].read_bytes()
    compressed = read_modinfo(lzma.compress(kvm), "kvm.ko.xz")
    assert (compressed.name, compressed.depends) == ("kvm", ("irqbypass",))


def test_a_file_that_is_not_a_module_is_named() -> None:
    with pytest.raises(GuestImageError, match="notes.ko is not a 64-bit"):
        read_modinfo(b"plain text", "notes.ko")
