"""The on-disk cache for downloaded and unpacked guest images.

Location, first match wins:

1. ``$PYFASTVM_CACHE``
2. ``$XDG_CACHE_HOME/pyfastvm`` (only if that variable is an absolute path,
   as the XDG base directory specification requires)
3. ``~/.cache/pyfastvm``

Entries are written into a private staging directory next to their final
place and then renamed into place, so an interrupted fetch never leaves a
half-written entry behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyfastvm.guest.errors import GuestImageError

CACHE_ENV_VAR = "PYFASTVM_CACHE"
STAGING_PREFIX = ".staging-"
STALE_STAGING_SECONDS = 24 * 60 * 60


def cache_dir() -> Path:
    """Return the cache root directory (it is not created)."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "pyfastvm"
    return Path.home() / ".cache" / "pyfastvm"


def cache_subdir(name: str) -> Path:
    """Return ``cache_dir()/name``, creating it if needed."""
    path = cache_dir() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestImageError(
            f"cannot create the pyfastvm cache directory {path}: {exc.strerror}; "
            f"set ${CACHE_ENV_VAR} to a writable directory"
        ) from exc
    return path


@contextmanager
def staging_dir(parent: Path, label: str) -> Iterator[Path]:
    """Yield a fresh private directory inside ``parent``; remove it afterwards.

    Whatever is still inside when the block ends (normally or not) is
    deleted; move the finished result out with :func:`publish` first.
    """
    remove_stale_staging(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{label}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(staged: Path, final: Path) -> Path:
    """Atomically rename ``staged`` to ``final`` and return ``final``.

    If another process published ``final`` first, its entry is kept and
    ``staged`` is left for the caller's staging cleanup.
    """
    try:
        os.rename(staged, final)
    except OSError:
        if not final.exists():
            raise
    return final


def remove_stale_staging(parent: Path) -> None:
    """Delete staging directories left behind by killed processes."""
    cutoff = time.time() - STALE_STAGING_SECONDS
    for leftover in parent.glob(f"{STAGING_PREFIX}*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            continue
