"""Linux finds pyfastvm's virtio devices through the DSDT and uses them: one
boot per kernel with a root disk, a second disk, a vsock channel and the
entropy device. The command runs in the root disk's ext4 filesystem (made on
the host with `mke2fs -d`), reads a file there, writes one to the second
disk that the host reads afterwards, reads /dev/hwrng, and exchanges a
megabyte with host programs over vsock both ways, on connections opened
from each side. On this host's default kernel (on KVM-on-PVM hosts the
minimal kernel, with the drivers built in); the stock kernel's one boot
(test_runner, marked slow) checks that it finds the same devices with the
drivers loaded from the initramfs."""

from __future__ import annotations

import hashlib
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kernel_log import VIRTIO_ERRORS, virtio_disks

import pyfastvm
from pyfastvm.guest.debian import busybox_static
from pyfastvm.runner import default_kernel
from pyfastvm.testing.vsock_program import vsock_stream_program

pytestmark = pytest.mark.hwkvm

BOOT_TIMEOUT = 900.0
MEGABYTE = 1 << 20
HOST_PORT, GUEST_PORT = 5000, 6000
APPLETS = ("sh", "mount", "umount", "cat", "cp", "head", "wc", "md5sum", "sleep", "echo")
GREETING = b"hello from the host's ext4 image\n"
SCRIPT = f"""
cat /hello.txt
mount /dev/vdb /mnt
cp /hello.txt /mnt/back.txt && echo from the guest >> /mnt/back.txt
umount /mnt
echo "hwrng $(head -c 4096 /dev/hwrng | wc -c) $(cat /sys/class/misc/hw_random/rng_current)"
vsock-listen &
listener=$!
echo "vsock-connect $(vsock-stream connect {HOST_PORT} < /blob | md5sum)"
wait $listener
echo "vsock-listen $?"
"""


def make_ext4(root: Path, image: Path, size: str = "16M") -> None:
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(image), size], check=True
    )


def root_filesystem(tmp: Path, blob: bytes) -> Path:
    """An ext4 image with busybox, the vsock program, a greeting and a blob."""
    root = tmp / "root"
    for directory in ("bin", "proc", "sys", "dev", "mnt"):
        (root / directory).mkdir(parents=True)
    shutil.copy(busybox_static(), root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    program = root / "bin" / "vsock-stream"
    program.write_bytes(vsock_stream_program("connect", HOST_PORT))
    listener = root / "bin" / "vsock-listen"
    listener.write_bytes(vsock_stream_program("listen", GUEST_PORT))
    for path in (program, listener):
        path.chmod(0o755)
    (root / "hello.txt").write_bytes(GREETING)
    (root / "blob").write_bytes(blob)
    image = tmp / "root.ext4"
    make_ext4(root, image)
    return image


def in_thread(work: Callable[[], bytes]) -> Callable[[], bytes]:
    """Runs `work` now; the returned function waits for its result."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()

    def join() -> bytes:
        thread.join(timeout=60)
        return result[0] if result else b""

    return join


def receive_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def host_listener(path: Path, reply: bytes) -> bytes:
    """The guest connects to host port HOST_PORT: take its megabyte, answer with ours."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(f"{path}_{HOST_PORT}")
        server.listen(1)
        server.settimeout(BOOT_TIMEOUT)
        connection, _ = server.accept()
        with connection:
            connection.settimeout(120)
            received = receive_all(connection)
            connection.sendall(reply)
    return received


def host_connector(path: Path, data: bytes, deadline: float) -> bytes:
    """Connects to the guest's GUEST_PORT (retrying until it listens),
    sends `data` while reading back the echo."""
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            try:
                connection.connect(str(path))
                connection.sendall(f"CONNECT {GUEST_PORT}\n".encode())
                answer = connection.makefile("rb").readline()
            except OSError:
                answer = b""
            if answer.startswith(b"OK "):
                connection.settimeout(120)
                sender = in_thread(lambda: send_and_close(connection, data))
                echoed = receive_all(connection)
                sender()
                return echoed
        time.sleep(0.5)
    return b""


def send_and_close(connection: socket.socket, data: bytes) -> bytes:
    connection.sendall(data)
    connection.shutdown(socket.SHUT_WR)
    return b""


class Boot:
    """One boot and what the host saw of it."""

    def __init__(self, kernel: Path, tmp: Path) -> None:
        chance = random.Random(12)
        self.blob = chance.randbytes(MEGABYTE)
        self.reply = chance.randbytes(MEGABYTE)
        self.echo_data = chance.randbytes(MEGABYTE)
        root = root_filesystem(tmp, self.blob)
        (tmp / "empty").mkdir()
        self.data_disk = tmp / "data.ext4"
        make_ext4(tmp / "empty", self.data_disk)
        sock = tmp / "v.sock"
        guest_sent = in_thread(lambda: host_listener(sock, self.reply))
        echoed = in_thread(
            lambda: host_connector(sock, self.echo_data, time.monotonic() + BOOT_TIMEOUT)
        )
        self.result = pyfastvm.run(
            ["sh", "-c", SCRIPT],
            kernel=kernel,
            cmdline="root=/dev/vda ro",
            disks=[pyfastvm.Disk(root, read_only=True), pyfastvm.Disk(self.data_disk)],
            vsock=pyfastvm.Vsock(sock),
            rng=True,
            timeout=BOOT_TIMEOUT,
        )
        self.guest_sent, self.echoed = guest_sent(), echoed()

    def line(self, label: str) -> str:
        lines = self.result.stdout.decode().splitlines()
        found = [line.removeprefix(f"{label} ") for line in lines if line.startswith(f"{label} ")]
        assert len(found) == 1, self.result.stdout
        return found[0]


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Boot:
    return Boot(default_kernel(), tmp_path_factory.mktemp("virtio"))


def test_the_kernel_finds_every_device_without_errors(boot: Boot) -> None:
    console = boot.result.console
    assert virtio_disks(console) == {"vda": 32768, "vdb": 32768}
    assert not VIRTIO_ERRORS.search(console), console
    assert boot.line("hwrng").split() == ["4096", "virtio_rng.0"]


def test_the_command_runs_in_the_root_disk_and_writes_the_other(boot: Boot) -> None:
    assert boot.result.exit_code == 0, boot.result.stdout
    assert boot.result.stdout.startswith(GREETING)
    written = subprocess.run(
        ["debugfs", "-R", "cat /back.txt", str(boot.data_disk)],
        capture_output=True,
        check=True,
    ).stdout
    assert written == GREETING + b"from the guest\n"


def test_a_megabyte_each_way_over_vsock_from_either_side(boot: Boot) -> None:
    assert boot.guest_sent == boot.blob  # guest -> host, on the guest's connection
    md5 = hashlib.md5(boot.reply).hexdigest()
    assert boot.line("vsock-connect").split()[0] == md5  # host -> guest
    assert boot.echoed == boot.echo_data  # both ways, on the host's connection
    assert boot.line("vsock-listen") == "0"
