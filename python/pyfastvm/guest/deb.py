"""Reading ``.deb`` packages without dpkg: control fields and data files.

A ``.deb`` is an ``ar`` archive of ``debian-binary`` (``2.0``), then
``control.tar[.COMP]`` (package metadata) and ``data.tar[.COMP]`` (the files
to install), where COMP is ``xz``, ``zst``, ``gz`` or ``bz2`` (or nothing).
"""

from __future__ import annotations

import gzip
import io
import lzma
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal, cast

from pyfastvm.guest.ar import ArMember, read_ar
from pyfastvm.guest.errors import DebFormatError

PathFilter = Callable[[str], bool]
SAFE_MODE_BITS = 0o755
TAR_STREAM_MODES: dict[str, Literal["r|", "r|xz", "r|gz", "r|bz2"]] = {
    "": "r|",
    ".xz": "r|xz",
    ".gz": "r|gz",
    ".bz2": "r|bz2",
}


class DebPackage:
    """A ``.deb`` file loaded into memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DebFormatError(f"cannot read package {path}: {exc.strerror}") from exc
        self._members = {m.name: m for m in read_ar(raw, source=str(path))}
        self._check_version()

    def control(self) -> dict[str, str]:
        """Return the fields of the package's ``control`` file."""
        with self._tar("control") as tar:
            for member in tar:
                if member.isfile() and _normalize(member.name) == "control":
                    data = _read_tar_member(tar, member)
                    return parse_control(data.decode("utf-8", errors="replace"))
        raise DebFormatError(f"{self.path}: control.tar has no 'control' file")

    def extract_data(self, dest: Path, keep: PathFilter) -> list[str]:
        """Extract the regular files of ``data.tar`` for which ``keep`` is true.

        ``keep`` receives normalized relative paths such as
        ``"boot/vmlinuz-6.1.0-56-cloud-amd64"``.  Symlinks, devices and
        hard links are skipped, and set-id bits are dropped, so nothing can be
        written outside ``dest``.  Returns the extracted relative paths.
        """
        extracted: list[str] = []
        for name, stream, mode in self.data_files(keep):
            _write_file(dest / name, stream, mode)
            extracted.append(name)
        return extracted

    def data_files(self, keep: PathFilter) -> Iterator[tuple[str, IO[bytes], int]]:
        """Stream the regular files of ``data.tar`` for which ``keep`` is true,
        in archive order, as (normalized path, readable stream, mode); each
        stream is valid until the next item is taken."""
        with self._tar("data") as tar:
            for member in tar:
                name = _normalize(member.name)
                if member.isfile() and name and keep(name):
                    yield name, _stream_tar_member(tar, member), member.mode

    def _check_version(self) -> None:
        version = self._members.get("debian-binary")
        if version is None or not version.data.startswith(b"2."):
            raise DebFormatError(
                f"{self.path} is an ar archive but not a Debian binary package "
                "(no 'debian-binary' member with format 2.x)"
            )

    @contextmanager
    def _tar(self, stem: str) -> Iterator[tarfile.TarFile]:
        """Open ``STEM.tar*`` as a streamed tar; map corruption to DebFormatError."""
        member = self._find_member(stem)
        try:
            with _open_stream(member, self.path) as tar:
                yield tar
        except _decode_errors() as exc:
            raise DebFormatError(
                f"{self.path}: member {member.name} is corrupt ({exc}); "
                "delete the file and fetch it again"
            ) from exc

    def _find_member(self, stem: str) -> ArMember:
        for name, member in self._members.items():
            if name == f"{stem}.tar" or name.startswith(f"{stem}.tar."):
                return member
        raise DebFormatError(f"{self.path} has no {stem}.tar member; the package is corrupt")


def parse_control(text: str) -> dict[str, str]:
    """Parse one deb822 stanza (``Field: value`` with indented continuations)."""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and current is not None:
            fields[current] += "\n" + line.strip()
        elif ":" in line:
            current, _, value = line.partition(":")
            fields[current.strip()] = value.strip()
    return fields


def dependency_names(depends: str) -> list[str]:
    """Package names in a ``Depends:`` value, alternatives included, in order."""
    names: list[str] = []
    for alternative in depends.replace("|", ",").split(","):
        name = alternative.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0]
        if name:
            names.append(name)
    return names


def _open_stream(member: ArMember, source: Path) -> tarfile.TarFile:
    """Open a (compressed) tar member for sequential reading."""
    raw: IO[bytes] = io.BytesIO(member.data)
    suffix = member.name.rpartition(".tar")[2]
    if suffix == ".zst":
        return tarfile.open(fileobj=_zstd_reader(raw), mode="r|")
    mode = TAR_STREAM_MODES.get(suffix)
    if mode is None:
        raise DebFormatError(f"{source}: unsupported compression of member {member.name!r}")
    return tarfile.open(fileobj=raw, mode=mode)


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        tarfile.TarError,
        lzma.LZMAError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
    )
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _zstd_reader(raw: IO[bytes]) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise DebFormatError(
            "this package's files are zstd-compressed; install the 'zstandard' "
            "Python package (pip install zstandard)"
        ) from None
    # The reader implements read(); that is all tarfile's stream mode uses.
    return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw))


def _normalize(name: str) -> str:
    """Relative POSIX path of a tar member, or '' if it would leave the root."""
    path = posixpath.normpath(name.lstrip("/"))
    if path in (".", "..") or path.startswith("../"):
        return ""
    return path


def _stream_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member)
    if stream is None:
        raise DebFormatError(f"tar member {member.name!r} has no readable data")
    return stream


def _read_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return _stream_tar_member(tar, member).read()


def _write_file(target: Path, source: IO[bytes], mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    target.chmod(mode & SAFE_MODE_BITS)
