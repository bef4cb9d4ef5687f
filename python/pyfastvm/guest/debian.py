"""Guest binaries taken from Debian packages: the cloud kernel and busybox.

Each package is downloaded once with ``apt-get download``, unpacked in pure
Python, and kept under ``<cache>/debian/<package name>/``; later calls
return the cached files without touching the network.  Delete that
directory to fetch the current version again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pyfastvm.guest.apt import download
from pyfastvm.guest.cache import cache_subdir, publish, staging_dir
from pyfastvm.guest.deb import DebPackage, PathFilter, dependency_names
from pyfastvm.guest.errors import GuestImageError

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
KERNEL_PREFIX = "linux-image-"
MAX_METAPACKAGE_HOPS = 3
METADATA_FILE = ".pyfastvm-package.json"

KERNEL_HINT = (
    "To use your own kernel instead, pass a bzImage path with kernel=PATH "
    "(Python) or --kernel PATH (command line)."
)
BUSYBOX_HINT = (
    "To do without it, pass a statically linked busybox with busybox=PATH, "
    "or your own kernel and initramfs (kernel=/--kernel)."
)


def debian_kernel(package: str = KERNEL_PACKAGE) -> Path:
    """Path to ``boot/vmlinuz-*`` of a Debian kernel package, fetched once.

    ``package`` may be a metapackage such as ``linux-image-cloud-amd64``;
    its ``linux-image-*`` dependency is followed to the real image package.
    """
    entry = _cached_entry(package, _has_vmlinuz, _keep_boot, _fetch_kernel, KERNEL_HINT)
    return _vmlinuz(entry)


def debian_kernel_release(package: str = KERNEL_PACKAGE) -> str:
    """Kernel release of :func:`debian_kernel`, e.g. ``"6.1.0-56-cloud-amd64"``."""
    return debian_kernel(package).name.removeprefix("vmlinuz-")


def busybox_static(package: str = BUSYBOX_PACKAGE) -> Path:
    """Path to the statically linked ``bin/busybox`` from Debian, fetched once."""
    entry = _cached_entry(package, _has_busybox, _keep_busybox, _fetch_plain, BUSYBOX_HINT)
    return entry / "bin" / "busybox"


Fetcher = Callable[[str, Path, str], DebPackage]


def _cached_entry(
    package: str,
    is_complete: Callable[[Path], bool],
    keep: PathFilter,
    fetch: Fetcher,
    hint: str,
) -> Path:
    """Return the cache entry for ``package``, fetching and unpacking it if absent."""
    root = cache_subdir("debian")
    entry = root / package
    if entry.is_dir() and is_complete(entry):
        return entry
    with staging_dir(root, package) as stage:
        deb = fetch(package, stage, hint)
        unpacked = _unpack(deb, stage / "root", keep, requested=package)
        if not is_complete(unpacked):
            raise GuestImageError(
                f"Debian package {deb.path.name} does not contain the expected files. {hint}"
            )
        _discard_broken(entry, root)
        return publish(unpacked, entry)


def _fetch_plain(package: str, stage: Path, hint: str) -> DebPackage:
    return DebPackage(download(package, _download_dir(stage), fallback_hint=hint))


def _fetch_kernel(package: str, stage: Path, hint: str) -> DebPackage:
    """Fetch ``package``, following ``linux-image-*`` dependencies of metapackages."""
    deb = _fetch_plain(package, stage, hint)
    for _ in range(MAX_METAPACKAGE_HOPS):
        target = _kernel_dependency(deb)
        if target is None:
            return deb
        deb = _fetch_plain(target, stage, hint)
    raise GuestImageError(
        f"{package}: gave up after following {MAX_METAPACKAGE_HOPS} levels of "
        f"{KERNEL_PREFIX}* metapackages. {hint}"
    )


def _kernel_dependency(deb: DebPackage) -> str | None:
    """The ``linux-image-*`` package a metapackage depends on, if any."""
    control = deb.control()
    own_name = control.get("Package", "")
    for name in dependency_names(control.get("Depends", "")):
        if name.startswith(KERNEL_PREFIX) and name != own_name:
            return name
    return None


def _unpack(deb: DebPackage, dest: Path, keep: PathFilter, *, requested: str) -> Path:
    dest.mkdir()
    files = deb.extract_data(dest, keep)
    control = deb.control()
    metadata = {
        "requested": requested,
        "package": control.get("Package"),
        "version": control.get("Version"),
        "architecture": control.get("Architecture"),
        "deb": deb.path.name,
        "files": files,
    }
    (dest / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return dest


def _download_dir(stage: Path) -> Path:
    path = stage / "download"
    path.mkdir(exist_ok=True)
    return path


def _discard_broken(entry: Path, root: Path) -> None:
    """Move an incomplete (hand-edited) entry out of the way before publishing."""
    if entry.exists():
        with staging_dir(root, "discard") as trash:
            entry.rename(trash / entry.name)


def _keep_boot(name: str) -> bool:
    return name.startswith("boot/")


def _keep_busybox(name: str) -> bool:
    return name == "bin/busybox"


def _vmlinuz_candidates(entry: Path) -> list[Path]:
    return sorted((entry / "boot").glob("vmlinuz-*"))


def _has_vmlinuz(entry: Path) -> bool:
    return len(_vmlinuz_candidates(entry)) == 1


def _has_busybox(entry: Path) -> bool:
    return (entry / "bin" / "busybox").is_file()


def _vmlinuz(entry: Path) -> Path:
    return _vmlinuz_candidates(entry)[0]
