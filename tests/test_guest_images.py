"""Guest images: Debian fetch and unpack, the cpio format, the initramfs.

The Debian tests run the real ``apt-get download`` (fetched once per cache
directory).  The initramfs tests run the fetched static busybox on the host
to check the generated shell code and the guest-side report framing against
the host-side parser.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from pyfastvm.guest import cache
from pyfastvm.guest.ar import read_ar
from pyfastvm.guest.console_protocol import DATA_LINE_CHARS, ConsoleProtocol
from pyfastvm.guest.cpio import CpioEntry, read_cpio, write_cpio
from pyfastvm.guest.deb import DebPackage, dependency_names, parse_control
from pyfastvm.guest.debian import busybox_static, debian_kernel, debian_kernel_release
from pyfastvm.guest.errors import AptError, CpioFormatError, DebFormatError, GuestImageError
from pyfastvm.guest.init_script import REPORT_PATH, init_script
from pyfastvm.guest.initramfs import build_initramfs, load_static_busybox

NONCE = "0badc0de12345678"


@pytest.fixture(scope="session")
def kernel() -> Path:
    return debian_kernel()


@pytest.fixture(scope="session")
def busybox() -> Path:
    return busybox_static()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYFASTVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# --- cache location -------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYFASTVM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PYFASTVM_CACHE")
    assert cache.cache_dir() == tmp_path / "xdg" / "pyfastvm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "pyfastvm"


def test_unwritable_cache_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFASTVM_CACHE", "/proc/pyfastvm-cannot-exist")
    with pytest.raises(GuestImageError, match="PYFASTVM_CACHE"):
        cache.cache_subdir("debian")


# --- Debian packages ---------------------------------------------------------------------


def test_debian_kernel_is_a_bzimage(kernel: Path) -> None:
    header = kernel.read_bytes()[:0x300]
    assert header[0x202:0x206] == b"HdrS"
    assert header[0x1FE:0x200] == b"\x55\xaa"
    release = debian_kernel_release()
    assert kernel.name == f"vmlinuz-{release}"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", release)
    assert (kernel.parent / f"config-{release}").is_file()


def test_busybox_is_a_static_elf(busybox: Path) -> None:
    assert busybox.read_bytes()[:4] == b"\x7fELF"
    load_static_busybox(busybox)
    assert os.access(busybox, os.X_OK)


def test_cached_files_need_no_apt(kernel: Path, busybox: Path, no_apt: None) -> None:
    started = time.monotonic()
    assert debian_kernel() == kernel
    assert busybox_static() == busybox
    assert time.monotonic() - started < 0.5


def test_fetch_leaves_no_staging_behind(kernel: Path) -> None:
    debian_dir = kernel.parents[2]
    assert not list(debian_dir.glob(".staging-*"))


def test_missing_apt_get_says_how_to_pass_a_kernel(empty_cache: Path, no_apt: None) -> None:
    with pytest.raises(AptError, match="apt-get is not on PATH") as err:
        debian_kernel()
    assert "kernel=PATH" in str(err.value) and "--kernel PATH" in str(err.value)
    assert not (empty_cache / "debian" / "linux-image-cloud-amd64").exists()


def test_unknown_package_is_a_clear_error(empty_cache: Path) -> None:
    with pytest.raises(AptError, match="no such package") as err:
        debian_kernel("linux-image-pyfastvm-no-such-package")
    assert "--kernel" in str(err.value)
    assert not list((empty_cache / "debian").iterdir())


def test_failed_unpack_leaves_no_partial_cache(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download that cannot be unpacked leaves neither an entry nor staging."""
    bin_dir = tmp_path / "fake-apt"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(
        '#!/bin/sh\nfor p; do :; done\nprintf "!<arch>\\nbroken" > "${p}_1.0_amd64.deb"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(DebFormatError, match="bad ar member header"):
        busybox_static()
    assert list((empty_cache / "debian").iterdir()) == []


def test_ar_parser_rejects_a_non_ar_file(tmp_path: Path) -> None:
    with pytest.raises(DebFormatError, match="not an ar archive"):
        read_ar(b"\x7fELF\x02\x01\x01\x00not a deb")
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DebFormatError, match=r"bogus\.deb is not an ar archive"):
        DebPackage(bogus)


def test_ar_parser_reads_odd_sized_members() -> None:
    archive = make_ar([("debian-binary", b"2.0\n"), ("odd", b"abc"), ("last/", b"xyz!")])
    members = read_ar(archive)
    assert [(m.name, m.data) for m in members] == [
        ("debian-binary", b"2.0\n"),
        ("odd", b"abc"),
        ("last", b"xyz!"),
    ]


def test_ar_parser_reports_truncation() -> None:
    archive = make_ar([("debian-binary", b"2.0\n"), ("data.tar", b"x" * 100)])
    with pytest.raises(DebFormatError, match="truncated"):
        read_ar(archive[:-10])


@pytest.mark.skipif(shutil.which("ar") is None, reason="binutils ar not installed")
def test_ar_parser_reads_binutils_archives(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_bytes(b"1")
    (tmp_path / "two.bin").write_bytes(bytes(range(256)))
    subprocess.run(["ar", "rc", "x.a", "one.txt", "two.bin"], cwd=tmp_path, check=True)
    members = read_ar((tmp_path / "x.a").read_bytes())
    assert [(m.name, m.data) for m in members] == [
        ("one.txt", b"1"),
        ("two.bin", bytes(range(256))),
    ]


def test_synthetic_deb_with_zstd_data_and_gzip_control(tmp_path: Path) -> None:
    deb = tmp_path / "demo_1.0_amd64.deb"
    control = (
        b"Package: demo\nVersion: 1.0\nDepends: libc6 (>= 2.36), a | b:any\nDescription: x\n more\n"
    )
    data = tar_bytes({"./boot/vmlinuz-9.9": b"kernel", "./usr/share/doc/demo/README": b"doc"})
    deb.write_bytes(
        make_ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", tar_bytes({"./control": control}, "w:gz")),
                ("data.tar.zst", zstandard.ZstdCompressor().compress(data)),
            ]
        )
    )
    package = DebPackage(deb)
    fields = package.control()
    assert fields["Package"] == "demo"
    assert fields["Description"] == "x\nmore"
    assert dependency_names(fields["Depends"]) == ["libc6", "a", "b"]
    out = tmp_path / "out"
    out.mkdir()
    assert package.extract_data(out, lambda name: name.startswith("boot/")) == ["boot/vmlinuz-9.9"]
    assert (out / "boot" / "vmlinuz-9.9").read_bytes() == b"kernel"
    assert not (out / "usr").exists()


def test_deb_extraction_stays_inside_destination(tmp_path: Path) -> None:
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:xz") as tar:
        add_symlink(tar, "./boot", "/etc")
        add_file(tar, "./../escaped", b"no")
        add_file(tar, "./boot/passwd", b"no")
        add_file(tar, "./ok", b"yes", mode=0o4755)
    deb = tmp_path / "evil.deb"
    deb.write_bytes(
        make_ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.xz", tar_bytes({"./control": b"Package: evil\n"}, "w:xz")),
                ("data.tar.xz", evil.getvalue()),
            ]
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    assert DebPackage(deb).extract_data(out, lambda name: True) == ["boot/passwd", "ok"]
    assert not (out / "boot").is_symlink()
    assert not (tmp_path / "escaped").exists()
    assert stat.S_IMODE((out / "ok").stat().st_mode) == 0o755


def test_parse_control_continuations() -> None:
    fields = parse_control("Package: p\nDescription: short\n long line\n .\n end\n")
    assert fields == {"Package": "p", "Description": "short\nlong line\n.\nend"}


# --- cpio ---------------------------------------------------------------------------------------

SAMPLE_ENTRIES = [
    CpioEntry.directory("bin"),
    CpioEntry.directory("dev"),
    CpioEntry.file("bin/tool", b"\x7fELF" + bytes(range(250)), 0o755),
    CpioEntry.file("empty", b""),
    CpioEntry.file("odd-name-len", b"x"),
    CpioEntry.symlink("bin/sh", "tool"),
    CpioEntry.char_device("dev/console", 5, 1),
    CpioEntry.char_device("dev/null", 1, 3, 0o666),
]


def test_cpio_round_trip() -> None:
    assert read_cpio(write_cpio(SAMPLE_ENTRIES)) == SAMPLE_ENTRIES


def test_cpio_layout_follows_newc_alignment() -> None:
    archive = write_cpio(SAMPLE_ENTRIES)
    assert len(archive) % 4 == 0
    headers = [m.start() for m in re.finditer(rb"070701", archive)]
    assert len(headers) == len(SAMPLE_ENTRIES) + 1
    assert all(offset % 4 == 0 for offset in headers)
    assert b"TRAILER!!!\0" in archive[headers[-1] :]
    first = archive[: headers[1]]
    assert first[110:114] == b"bin\0"
    assert int(first[6 + 8 : 6 + 16], 16) == stat.S_IFDIR | 0o755


def test_cpio_strips_leading_slash() -> None:
    entries = read_cpio(write_cpio([CpioEntry.file("/init", b"#!/bin/sh\n", 0o755)]))
    assert entries[0].name == "init"


def test_cpio_reader_validates_magic() -> None:
    archive = bytearray(write_cpio(SAMPLE_ENTRIES))
    archive[:6] = b"070702"
    with pytest.raises(CpioFormatError, match="CRC variant"):
        read_cpio(bytes(archive))
    with pytest.raises(CpioFormatError, match="bad cpio magic"):
        read_cpio(b"\x1f\x8b\x08" + bytes(200))


def test_cpio_reader_reports_truncation() -> None:
    archive = write_cpio(SAMPLE_ENTRIES)
    with pytest.raises(CpioFormatError, match="truncated"):
        read_cpio(archive[:200])
    with pytest.raises(CpioFormatError, match="without a TRAILER"):
        read_cpio(archive[:-124])


def test_cpio_writer_rejects_bad_entries() -> None:
    with pytest.raises(ValueError, match=r"\.\."):
        write_cpio([CpioEntry.file("../x", b"")])
    with pytest.raises(ValueError, match="file type"):
        write_cpio([CpioEntry("x", 0o644)])
    with pytest.raises(ValueError, match="only files and symlinks"):
        write_cpio([CpioEntry("d", stat.S_IFDIR | 0o755, b"data")])


def test_busybox_cpio_extracts_our_archive(busybox: Path, tmp_path: Path) -> None:
    """An independent newc implementation (busybox cpio) reads what we write."""
    entries = [e for e in SAMPLE_ENTRIES if not stat.S_ISCHR(e.mode)]
    subprocess.run(
        [str(busybox), "cpio", "-i", "-d"],
        input=write_cpio(entries),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "bin" / "tool").read_bytes() == SAMPLE_ENTRIES[2].data
    assert os.readlink(tmp_path / "bin" / "sh") == "tool"
    assert (tmp_path / "empty").read_bytes() == b""


# --- initramfs ---------------------------------------------------------------------------------


@pytest.fixture
def initramfs(busybox: Path) -> dict[str, CpioEntry]:
    archive = build_initramfs(["uname", "-a"], nonce=NONCE, busybox=busybox)
    return {entry.name: entry for entry in read_cpio(archive)}


def test_initramfs_contents(initramfs: dict[str, CpioEntry], busybox: Path) -> None:
    init = initramfs["init"]
    assert init.mode == stat.S_IFREG | 0o755
    assert init.data.startswith(b"#!/bin/sh\n")
    assert initramfs["bin/busybox"].mode == stat.S_IFREG | 0o755
    assert initramfs["bin/busybox"].data == busybox.read_bytes()
    console = initramfs["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert initramfs["dev/null"].rdev == (1, 3)
    for applet in ("sh", "mount", "base64", "awk", "poweroff", "reboot"):
        assert initramfs[f"bin/{applet}"].link_target == "busybox"
    for directory in ("proc", "sys", "tmp", "dev"):
        assert stat.S_ISDIR(initramfs[directory].mode)
    assert stat.S_ISREG(initramfs[REPORT_PATH.lstrip("/")].mode)


def test_initramfs_parents_come_first(initramfs: dict[str, CpioEntry]) -> None:
    seen: set[str] = set()
    for name in initramfs:
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen, name
        seen.add(name)


def test_init_script_is_valid_shell(initramfs: dict[str, CpioEntry], busybox: Path) -> None:
    for name in ("init", REPORT_PATH.lstrip("/")):
        check = subprocess.run(
            [str(busybox), "sh", "-n", "-c", initramfs[name].data.decode()],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr


def test_init_script_powers_off_after_reporting(initramfs: dict[str, CpioEntry]) -> None:
    script = initramfs["init"].data.decode()
    order = [
        script.index(word)
        for word in ("mount -t proc", "exec uname", REPORT_PATH, "poweroff -f", "reboot -f")
    ]
    assert order == sorted(order)
    assert "[ -d /sys/firmware/acpi ] && poweroff -f" in script
    assert "</dev/null" in script


def run_command_line(busybox: Path, script: str) -> str:
    """Run the command part of a generated /init (without its redirections)."""
    command = re.search(r"^(\(.*\)) </dev/null", script, re.MULTILINE | re.DOTALL)
    assert command is not None
    subshell = command[1]
    result = subprocess.run(
        [str(busybox), "sh", "-c", subshell], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_command_words_are_quoted(busybox: Path) -> None:
    argv = ["printf", "<%s>\\n", "two words", "$HOME", "it's", "; echo injected", "`id`", ""]
    output = run_command_line(busybox, init_script(argv, nonce=NONCE))
    assert output == "<two words>\n<$HOME>\n<it's>\n<; echo injected>\n<`id`>\n<>\n"


def test_environment_is_quoted(busybox: Path) -> None:
    env = {"GREETING": "hi 'there' $USER\nline two"}
    argv = [str(busybox), "sh", "-c", 'printf "[%s]" "$GREETING"']
    output = run_command_line(busybox, init_script(argv, nonce=NONCE, env=env))
    assert output == "[hi 'there' $USER\nline two]"


def test_init_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        init_script([], nonce=NONCE)
    with pytest.raises(ValueError, match="non-empty list"):
        init_script("uname -a", nonce=NONCE)
    with pytest.raises(ValueError, match="environment variable name"):
        init_script(["true"], nonce=NONCE, env={"BAD-NAME": "x"})
    with pytest.raises(ValueError, match="hex"):
        init_script(["true"], nonce="NOT HEX")


def test_dynamic_or_non_elf_busybox_is_rejected(tmp_path: Path) -> None:
    dynamic = Path("/bin/ls")
    with pytest.raises(GuestImageError, match="dynamically linked"):
        load_static_busybox(dynamic)
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(GuestImageError, match="not an ELF"):
        load_static_busybox(script)
    with pytest.raises(GuestImageError, match="busybox=PATH"):
        load_static_busybox(tmp_path / "missing")


# --- guest reporter against the host parser -----------------------------------------------------


@pytest.fixture
def guest_root(initramfs: dict[str, CpioEntry], tmp_path: Path) -> Path:
    """The initramfs unpacked on the host (device nodes skipped)."""
    root = tmp_path / "root"
    for name, entry in initramfs.items():
        target = root / name
        if stat.S_ISDIR(entry.mode):
            target.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(entry.mode):
            target.symlink_to(entry.link_target)
        elif stat.S_ISREG(entry.mode):
            target.write_bytes(entry.data)
            target.chmod(entry.perm)
    return root


def run_reporter(root: Path, output: bytes, status: int) -> bytes:
    """Run the guest's /init BEGIN line and reporter with the host's kernel."""
    captured = root / "tmp" / "captured"
    captured.write_bytes(output)
    begin = re.search(r"printf '\\n%s\\n' '(@@PYFASTVM [^']*)'", (root / "init").read_text())
    assert begin is not None
    report = subprocess.run(
        [
            str(root / "bin" / "sh"),
            str(root / REPORT_PATH.lstrip("/")),
            NONCE,
            str(status),
            str(captured),
        ],
        env={"PATH": str(root / "bin")},
        capture_output=True,
        check=True,
    )
    return f"{begin[1]}\n".encode() + report.stdout


@pytest.mark.parametrize(
    "output",
    [
        b"",
        b"hello\n",
        b"no trailing newline",
        bytes(range(256)) * 3,
        b"x" * (DATA_LINE_CHARS // 4 * 3),
        b"@@PYFASTVM 0badc0de12345678 9 6 d8c03ba3 EXIT 0\n",
    ],
)
def test_guest_reporter_round_trip(guest_root: Path, output: bytes) -> None:
    stream = run_reporter(guest_root, output, 42)
    protocol = ConsoleProtocol(NONCE)
    protocol.feed(stream)
    protocol.close()
    assert protocol.finished
    assert protocol.exit_code == 42
    assert protocol.stdout == output
    assert protocol.kernel_log == ""


def test_guest_reporter_survives_kernel_splices(guest_root: Path) -> None:
    output = os.urandom(3000)
    lines = run_reporter(guest_root, output, 0).decode().splitlines()
    console: list[str] = []
    for index, line in enumerate(lines):
        cut = 1 + (index * 37) % (len(line) - 1)
        kernel = f"[   {index}.000000] virtio_net: message {index}"
        console += [f"{line[:cut]}{kernel}", line[cut:]]
    protocol = ConsoleProtocol(NONCE)
    protocol.feed("\r\n".join(console) + "\r\n")
    assert protocol.stdout == output
    assert protocol.exit_code == 0
    assert protocol.kernel_log.splitlines() == [
        f"[   {index}.000000] virtio_net: message {index}" for index in range(len(lines))
    ]


def test_guest_reporter_speed(guest_root: Path) -> None:
    output = os.urandom(256 * 1024)
    started = time.monotonic()
    stream = run_reporter(guest_root, output, 0)
    elapsed = time.monotonic() - started
    protocol = ConsoleProtocol(NONCE)
    protocol.feed(stream)
    assert protocol.stdout == output
    assert elapsed < 10, f"framing 256 KiB took {elapsed:.1f}s on the host"


# --- helpers ------------------------------------------------------------------------------


def make_ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            add_file(tar, name, data)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)
