"""Downloading ``.deb`` files with the host's ``apt-get download``.

apt's progress lines are relayed to stderr, prefixed with ``pyfastvm:``
lines saying what is being fetched.  If apt does not know the package
(stale or missing package lists), ``apt-get update`` is run once and the
download retried.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pyfastvm.guest.errors import AptError

UNKNOWN_PACKAGE_HINTS = (
    "Unable to locate package",
    "has no installation candidate",
    "Can't select candidate version",
    "Can't select versions",
)


def download(package: str, dest: Path, *, fallback_hint: str) -> Path:
    """Download ``package``'s ``.deb`` into ``dest`` and return its path.

    ``fallback_hint`` is appended to error messages to tell the user how to
    do without this package (for example how to pass their own kernel).
    """
    apt_get = _find_apt_get(package, fallback_hint)
    _progress(f"fetching {package} ...")
    status, output = _run([apt_get, *_apt_options(), "download", package], cwd=dest)
    if status != 0 and _is_unknown_package(output):
        _progress("apt does not know it yet; running apt-get update ...")
        _update_lists(apt_get, package, fallback_hint)
        status, output = _run([apt_get, *_apt_options(), "download", package], cwd=dest)
    if status != 0:
        raise AptError(_failure_message(package, status, output, fallback_hint))
    return _downloaded_file(package, dest, fallback_hint)


def _find_apt_get(package: str, fallback_hint: str) -> str:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise AptError(
            f"cannot fetch the Debian package {package}: apt-get is not on PATH "
            f"(pyfastvm downloads its default guest files from Debian). {fallback_hint}"
        )
    return apt_get


def _apt_options() -> list[str]:
    # As root, apt would switch to the '_apt' user, fail to write into our
    # private cache directory, warn, and download as root anyway; say so upfront.
    if os.geteuid() == 0:
        return ["-o", "APT::Sandbox::User=root"]
    return []


def _update_lists(apt_get: str, package: str, fallback_hint: str) -> None:
    status, output = _run([apt_get, "update"], cwd=None)
    if status != 0:
        raise AptError(
            f"cannot fetch the Debian package {package}: apt does not know it and "
            f"'apt-get update' failed (exit status {status}; run it as root, e.g. "
            f"'sudo apt-get update', then retry).\n{_tail(output)}\n{fallback_hint}"
        )


def _run(argv: list[str], cwd: Path | None) -> tuple[int, str]:
    """Run ``argv`` relaying its output to stderr; return (status, output)."""
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stderr.write(f"  {line}")
            sys.stderr.flush()
    return proc.returncode, "".join(lines)


def _is_unknown_package(output: str) -> bool:
    return any(hint in output for hint in UNKNOWN_PACKAGE_HINTS)


def _failure_message(package: str, status: int, output: str, fallback_hint: str) -> str:
    if _is_unknown_package(output):
        cause = "apt has no such package even after 'apt-get update'; check the name"
    elif "Temporary failure resolving" in output or "Could not resolve" in output:
        cause = "the package mirror could not be reached (no network?)"
    else:
        cause = "see apt's output below; 'apt-get update' may help"
    return (
        f"cannot fetch the Debian package {package}: 'apt-get download' failed "
        f"with exit status {status}: {cause}.\n{_tail(output)}\n{fallback_hint}"
    )


def _downloaded_file(package: str, dest: Path, fallback_hint: str) -> Path:
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise AptError(
            f"'apt-get download {package}' succeeded but left {len(debs)} matching "
            f".deb files in {dest} instead of one. {fallback_hint}"
        )
    return debs[0]


def _tail(output: str, lines: int = 8) -> str:
    return "\n".join(f"  apt: {line}" for line in output.strip().splitlines()[-lines:])


def _progress(message: str) -> None:
    sys.stderr.write(f"pyfastvm: {message}\n")
    sys.stderr.flush()
