"""QEMU's human monitor (HMP) on a Unix socket: how the lane asks a guest
that went silent where its CPU is, and makes its kernel say where it is
(an NMI, which the lane's init turns into a panic with a backtrace)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

PROMPT = b"(qemu) "
REPLY_SECONDS = 10.0


def monitor_option(path: Path) -> str:
    """QEMU's ``-monitor`` value: a socket QEMU listens on, never waiting."""
    return f"unix:{path},server=on,wait=off"


def ask(path: Path, *commands: str) -> str:
    """Each command's reply, in order; what went wrong instead if the
    monitor cannot be reached (the report is best effort)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as monitor:
            monitor.settimeout(REPLY_SECONDS)
            monitor.connect(str(path))
            _read_to_prompt(monitor)  # the banner
            replies = []
            for command in commands:
                monitor.sendall(command.encode() + b"\n")
                replies.append(f"(qemu) {command}\n{_read_to_prompt(monitor)}")
            return "\n".join(replies)
    except OSError as error:
        return f"(QEMU's monitor did not answer: {error})"


def _read_to_prompt(monitor: socket.socket) -> str:
    reply = b""
    deadline = time.monotonic() + REPLY_SECONDS
    while not reply.endswith(PROMPT) and time.monotonic() < deadline:
        chunk = monitor.recv(1 << 16)
        if not chunk:
            break
        reply += chunk
    text = reply.removesuffix(PROMPT).decode(errors="replace").replace("\r", "")
    # The monitor echoes each command (with terminal escapes) on its first line.
    return text.split("\n", 1)[1] if "\n" in text else ""
