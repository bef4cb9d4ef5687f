"""Loadable modules of a Debian kernel package, with what they depend on, in
an order in which ``insmod`` can load them.

Debian's kernel packages carry no ``modules.dep`` (``depmod`` writes it when
the package is installed), so the dependencies come from each module's own
``.modinfo`` ELF section (``depends=kvm,ccp``), as ``depmod`` reads them; the
modules that are built into the image are listed in ``modules.builtin``.
The chosen modules are unpacked once, uncompressed, into
``<cache>/kernel-modules/<image package>/<key>/`` beside a ``load-order``
file; later calls read that file and touch neither apt nor the network.
"""

from __future__ import annotations

import hashlib
import lzma
import posixpath
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyfastvm.guest.apt import download
from pyfastvm.guest.cache import cache_subdir, publish, staging_dir
from pyfastvm.guest.deb import DebPackage
from pyfastvm.guest.debian import KERNEL_PACKAGE, KERNEL_PREFIX, debian_kernel_release
from pyfastvm.guest.errors import GuestImageError

LOAD_ORDER_FILE = "load-order"
MODULE_SUFFIXES = (".ko", ".ko.xz")  # newer Debian kernels compress them with xz
ELF64_LITTLE = b"\x7fELF\x02\x01"
MODINFO_SECTION = b".modinfo"
HINT = "Pass your own kernel and initramfs instead (kernel=PATH, initrd=PATH)."


@dataclass(frozen=True)
class ModuleInfo:
    """What ``depmod`` needs of one ``.ko`` file: its name, where it is in the
    package and the modules it depends on."""

    name: str
    path: str
    depends: tuple[str, ...]


def module_name(name: str) -> str:
    """The kernel's spelling of a module name: ``kvm-amd`` is ``kvm_amd``."""
    return name.replace("-", "_")


def debian_kernel_modules(names: Sequence[str], package: str = KERNEL_PACKAGE) -> list[Path]:
    """The ``.ko`` files of the modules ``names`` of the kernel that
    :func:`~pyfastvm.guest.debian.debian_kernel` gives for ``package``, and
    of the modules they depend on, dependencies first. Modules built into
    that kernel are left out: they need no loading."""
    image_package = KERNEL_PREFIX + debian_kernel_release(package)
    root = cache_subdir("kernel-modules") / image_package
    root.mkdir(exist_ok=True)
    entry = root / _cache_key(names)
    if not (entry / LOAD_ORDER_FILE).is_file():
        _fetch(image_package, names, root, entry)
    order = (entry / LOAD_ORDER_FILE).read_text().split()
    return [entry / f"{name}.ko" for name in order]


def load_order(
    modules: Mapping[str, ModuleInfo], wanted: Iterable[str], builtin: Iterable[str] = ()
) -> list[ModuleInfo]:
    """``wanted`` and everything they depend on, each after its dependencies
    (a depth-first walk, as ``modprobe`` loads them)."""
    skip = {module_name(name) for name in builtin}
    order: dict[str, ModuleInfo] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = module_name(name)
        if name in order or name in skip:
            return
        if name in chain:
            raise GuestImageError(f"kernel modules depend on each other in a cycle: {chain}")
        info = modules.get(name)
        if info is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise GuestImageError(f"the kernel has no module {name!r}{needed_by}. {HINT}")
        for dependency in info.depends:
            visit(dependency, (*chain, name))
        order[name] = info

    for name in wanted:
        visit(name, ())
    return list(order.values())


def read_modinfo(module: bytes, path: str) -> ModuleInfo:
    """Name and dependencies from a module's ``.modinfo`` section (NUL-separated
    ``key=value`` strings). ``path`` names the module in errors, tells by its
    suffix whether it is compressed and, when the section has no ``name=``
    (kernels before 5.10), gives the name."""
    fields: dict[str, str] = {}
    for item in _modinfo_section(_uncompressed(module, path), path).split(b"\0"):
        key, _, value = item.decode(errors="replace").partition("=")
        fields.setdefault(key, value)
    name = fields.get("name") or _stem(path)
    depends = tuple(module_name(d) for d in fields.get("depends", "").split(",") if d)
    return ModuleInfo(module_name(name), path, depends)


def _modinfo_section(module: bytes, path: str) -> bytes:
    """The ``.modinfo`` section of a 64-bit little-endian ELF relocatable."""
    if not module.startswith(ELF64_LITTLE):
        raise GuestImageError(f"kernel module {path} is not a 64-bit little-endian ELF file")
    (section_offset,) = struct.unpack_from("<Q", module, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", module, 0x3A)
    headers = [
        struct.unpack_from("<IIQQQQ", module, section_offset + index * entry_size)
        for index in range(count)
    ]
    names_offset = headers[names_index][4]
    for name_offset, _, _, _, offset, size in headers:
        start = names_offset + name_offset
        if module[start : start + len(MODINFO_SECTION) + 1] == MODINFO_SECTION + b"\0":
            return module[offset : offset + size]
    raise GuestImageError(f"kernel module {path} has no .modinfo section")


def _fetch(image_package: str, names: Sequence[str], root: Path, entry: Path) -> None:
    """Two passes over the package: the modules' dependencies, then their files."""
    with staging_dir(root, "modules") as stage:
        deb = DebPackage(download(image_package, stage, fallback_hint=HINT))
        release = image_package.removeprefix(KERNEL_PREFIX)
        modules, builtin = _index(deb, f"lib/modules/{release}/")
        order = load_order(modules, names, builtin)
        out = stage / "out"
        out.mkdir()
        paths = {info.path: info.name for info in order}
        for path, stream, _ in deb.data_files(lambda name: name in paths):
            (out / f"{paths[path]}.ko").write_bytes(_uncompressed(stream.read(), path))
        (out / LOAD_ORDER_FILE).write_text("".join(f"{info.name}\n" for info in order))
        publish(out, entry)


def _index(deb: DebPackage, modules_dir: str) -> tuple[dict[str, ModuleInfo], list[str]]:
    """Every module of the package by name, and the names of the built-in ones."""
    modules: dict[str, ModuleInfo] = {}
    builtin: list[str] = []
    builtin_list = modules_dir + "modules.builtin"

    def wanted(name: str) -> bool:
        return name == builtin_list or (
            name.startswith(modules_dir) and name.endswith(MODULE_SUFFIXES)
        )

    for path, stream, _ in deb.data_files(wanted):
        if path == builtin_list:
            builtin = [_stem(line) for line in stream.read().decode().split()]
        else:
            info = read_modinfo(stream.read(), path)
            modules[info.name] = info
    if not modules:
        raise GuestImageError(f"{deb.path.name} holds no kernel modules under {modules_dir}")
    return modules, builtin


def _uncompressed(data: bytes, path: str) -> bytes:
    """A module as insmod takes it, whether or not ``path`` ends in ``.xz``."""
    return lzma.decompress(data) if path.endswith(".xz") else data


def _stem(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in MODULE_SUFFIXES:
        base = base.removesuffix(suffix)
    return module_name(base)


def _cache_key(names: Sequence[str]) -> str:
    """Stable for the same set of names, however spelled or ordered."""
    canonical = ",".join(sorted({module_name(name) for name in names}))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
