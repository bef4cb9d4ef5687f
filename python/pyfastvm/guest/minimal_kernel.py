"""A minimal Linux kernel for tests, built once from Debian's linux-source
with the small config in minimal.config, and cached.

The stock cloud kernel carries hundreds of drivers and initcalls; on hosts
where guest kernel code runs through KVM's instruction emulator (KVM on PVM)
that costs minutes per boot. This kernel has a serial console, an initramfs,
PVH, KVM guest support and ACPI, and little else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Literal

from pyfastvm.guest.apt import download
from pyfastvm.guest.cache import cache_subdir, publish, staging_dir
from pyfastvm.guest.deb import DebPackage
from pyfastvm.guest.errors import GuestImageError

SOURCE_PACKAGE = "linux-source-6.1"
CONFIG_FRAGMENT = Path(__file__).with_name("minimal.config")
BUILD_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc"}
BUILD_PACKAGES = "make gcc flex bison bc libelf-dev"
OUTPUTS = {"vmlinux": "vmlinux", "bzImage": "arch/x86/boot/bzImage", "config": ".config"}
HINT = "or pass your own kernel with kernel=PATH (--kernel PATH)"

KernelKind = Literal["vmlinux", "bzImage"]


def minimal_kernel(kind: KernelKind = "vmlinux") -> Path:
    """The minimal kernel (its ELF vmlinux, or its bzImage), built on first use."""
    entry = _cache_entry()
    if not is_built():
        _build(entry)
    return entry / kind


def is_built() -> bool:
    """Whether the minimal kernel is in the cache already."""
    return all((_cache_entry() / name).is_file() for name in OUTPUTS)


def _cache_entry() -> Path:
    return cache_subdir("minimal-kernel") / _build_key()


def _build_key() -> str:
    digest = hashlib.sha256(SOURCE_PACKAGE.encode() + CONFIG_FRAGMENT.read_bytes())
    return digest.hexdigest()[:16]


def requested_options(fragment: str) -> dict[str, str]:
    """The CONFIG_X=value lines of a config fragment."""
    options = {}
    for line in fragment.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value.strip()
    return options


def missing_options(config: str, fragment: str) -> list[str]:
    """The fragment's options that Kconfig left out of the final .config
    (usually an unmet dependency)."""
    final = requested_options(config)
    return [
        f"{name}={value}"
        for name, value in requested_options(fragment).items()
        if final.get(name) != value
    ]


def _build(entry: Path) -> None:
    _check_tools()
    print(
        f"pyfastvm: building the minimal test kernel from {SOURCE_PACKAGE} "
        "(once; a few minutes)...",
        file=sys.stderr,
        flush=True,
    )
    with staging_dir(entry.parent, "build") as stage:
        source = _unpack_source(stage)
        log = entry.parent / "build.log"
        with log.open("w") as log_file:
            _configure(source, log_file, log)
            _make(source, log_file, log, "vmlinux", "bzImage", f"-j{os.cpu_count() or 1}")
        out = stage / "out"
        out.mkdir()
        for name, built in OUTPUTS.items():
            shutil.copyfile(source / built, out / name)
        publish(out, entry)


def _check_tools() -> None:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise GuestImageError(
            f"building the minimal test kernel needs {', '.join(missing)}: "
            f"apt-get install {BUILD_PACKAGES}; {HINT}"
        )


def _unpack_source(stage: Path) -> Path:
    deb = DebPackage(download(SOURCE_PACKAGE, stage, fallback_hint=HINT))
    tarballs = deb.extract_data(stage, lambda name: name.endswith(".tar.xz"))
    if not tarballs:
        raise GuestImageError(f"{deb.path.name} holds no kernel source tarball; {HINT}")
    subprocess.run(["tar", "-xf", str(stage / tarballs[0]), "-C", str(stage)], check=True)
    (stage / tarballs[0]).unlink()
    return next(path for path in stage.iterdir() if (path / "Makefile").is_file())


def _configure(source: Path, log_file: IO[str], log: Path) -> None:
    _make(source, log_file, log, "tinyconfig")
    merge = ["scripts/kconfig/merge_config.sh", "-m", ".config", str(CONFIG_FRAGMENT)]
    _run(merge, source, log_file, log)
    _make(source, log_file, log, "olddefconfig")
    missing = missing_options((source / ".config").read_text(), CONFIG_FRAGMENT.read_text())
    if missing:
        raise GuestImageError(
            f"Kconfig dropped options of {CONFIG_FRAGMENT.name} (unmet dependencies?): "
            f"{', '.join(missing)}"
        )


def _make(source: Path, log_file: IO[str], log: Path, *targets: str) -> None:
    _run(["make", *targets], source, log_file, log)


def _run(argv: list[str], cwd: Path, log_file: IO[str], log: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise GuestImageError(
            f"building the minimal test kernel failed at `{' '.join(argv)}` (log: {log}):\n{tail}"
        )
