"""The minimal test kernel: built once from Debian's linux-source, cached."""

from __future__ import annotations

from pyfastvm.boot import load_kernel
from pyfastvm.guest.minimal_kernel import (
    CONFIG_FRAGMENT,
    minimal_kernel,
    missing_options,
    requested_options,
)

KEY_OPTIONS = (
    "CONFIG_SERIAL_8250_CONSOLE=y",
    "CONFIG_KVM_GUEST=y",
    "CONFIG_PVH=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_DEVTMPFS=y",
)


def test_the_built_kernel_is_an_elf_with_a_pvh_entry() -> None:
    vmlinux = minimal_kernel()
    assert vmlinux.read_bytes()[:4] == b"\x7fELF"
    plan = load_kernel(vmlinux, memory_size=64 << 20, cmdline="console=ttyS0")
    assert plan.kind == "ELF" and plan.pvh_entry is not None
    assert minimal_kernel("bzImage").read_bytes()[0x202:0x206] == b"HdrS"


def test_the_built_config_has_what_the_fragment_asks() -> None:
    config = (minimal_kernel().parent / "config").read_text()
    for option in KEY_OPTIONS:
        assert option in config.splitlines()
    assert missing_options(config, CONFIG_FRAGMENT.read_text()) == []


def test_options_kconfig_dropped_are_named() -> None:
    fragment = "# comment\nCONFIG_PVH=y\nCONFIG_NR_CPUS=16\nCONFIG_FOO=y\n"
    config = "CONFIG_PVH=y\nCONFIG_NR_CPUS=8\n# CONFIG_FOO is not set\n"
    assert requested_options(fragment) == {
        "CONFIG_PVH": "y",
        "CONFIG_NR_CPUS": "16",
        "CONFIG_FOO": "y",
    }
    assert missing_options(config, fragment) == ["CONFIG_NR_CPUS=16", "CONFIG_FOO=y"]
