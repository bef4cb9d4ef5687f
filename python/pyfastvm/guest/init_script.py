"""The shell programs that run inside the guest: ``/init`` and the reporter.

``/init`` mounts the pseudo filesystems, runs the command with stdin from
``/dev/null`` and its stdout and stderr captured to a file, then calls the
reporter, which writes the frames described in
:mod:`pyfastvm.guest.console_protocol` to the console with busybox
``base64`` and ``awk``.  Finally it ends the VM: ``poweroff -f`` when the
guest has ACPI, else ``reboot -f`` (a kernel with no power-off method
turns power-off into a halt that never returns).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from pyfastvm.guest.console_protocol import (
    DATA_LINE_CHARS,
    MARKER,
    READY,
    check_nonce,
    encode_frame,
)

REPORT_PATH = "/pyfastvm/report"
OUTPUT_PATH = "/tmp/pyfastvm-output"
GUEST_PATH = "/bin:/sbin:/usr/bin:/usr/sbin"
INIT_APPLETS = ("sh", "mount", "base64", "awk", "sync", "poweroff", "reboot", "stty")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Frames DATA lines and the final EXIT line; see console_protocol.encode_frame.
_REPORT_AWK = r"""
# zlib's CRC-32: reflected polynomial 0xEDB88320 (3988292384), init/xorout ~0.
function crc32(s,    c, i, n) {
    c = 4294967295
    n = length(s)
    for (i = 1; i <= n; i++)
        c = xor(table[and(xor(c, ord[substr(s, i, 1)]), 255)], rshift(c, 8))
    return xor(c, 4294967295)
}
function frame(seq, body,    c) {
    c = crc32(body)
    printf "%s %s %d %d %04x%04x %s\n", marker, nonce, seq, length(body),
        rshift(c, 16), and(c, 65535), body
}
BEGIN {
    for (i = 0; i < 256; i++) {
        c = i
        for (k = 0; k < 8; k++)
            c = and(c, 1) ? xor(3988292384, rshift(c, 1)) : rshift(c, 1)
        table[i] = c
    }
    for (i = 32; i < 127; i++)
        ord[sprintf("%c", i)] = i
}
{ frame(NR, "DATA " $0) }
END { frame(NR + 1, "EXIT " status) }
"""


def report_script() -> str:
    """``/pyfastvm/report NONCE STATUS FILE``: frame FILE and STATUS on stdout."""
    return (
        "#!/bin/sh\n"
        "# pyfastvm reporter: usage: report NONCE EXIT_STATUS OUTPUT_FILE\n"
        f'base64 -w {DATA_LINE_CHARS} "$3" | awk -v marker={MARKER} '
        f'-v nonce="$1" -v status="$2" {shlex.quote(_REPORT_AWK)}\n'
    )


SETUP = f"""export PATH={GUEST_PATH} HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin 2>/dev/null
cd /
"""
COMMAND_PATH = "/tmp/pyfastvm-command"


def init_script(command: Sequence[str], *, nonce: str, env: Mapping[str, str] | None = None) -> str:
    """The guest's ``/init``: run ``command`` once, report, power off."""
    return (
        "#!/bin/sh\n# pyfastvm guest init (generated): run one command, report its output\n"
        "# and exit status on the console, power the VM off.\n"
        + SETUP
        + command_script(command, nonce=nonce, env=env)
    )


def serving_init_script() -> str:
    """A ``/init`` that boots, says READY on the console and waits there for
    its command (a line ``NONCE BASE64-SCRIPT``, the script from
    `command_script`), which it then runs: a guest snapshotted while it
    waits answers any later command without booting again."""
    return f"""#!/bin/sh
# pyfastvm guest init (generated): wait for a command on the console.
{SETUP}stty -echo -icanon min 1 < /dev/console
printf '\\n%s\\n' {READY}
read -r nonce script < /dev/console
printf '%s' "$script" | base64 -d > {COMMAND_PATH}
exec /bin/sh {COMMAND_PATH}
"""


def command_script(
    command: Sequence[str], *, nonce: str, env: Mapping[str, str] | None = None
) -> str:
    """Run ``command`` once, report its output and exit status on the
    console with ``nonce``, power the VM off."""
    check_nonce(nonce)
    begin = encode_frame(nonce, 0, "BEGIN")
    return f"""printf '\\n%s\\n' {shlex.quote(begin)}
({command_line(command, env or {})}) </dev/null >{OUTPUT_PATH} 2>&1
status=$?
/bin/sh {REPORT_PATH} {nonce} "$status" {OUTPUT_PATH}
sync
# Power off where the platform can (ACPI). Without a power-off method the
# kernel turns power-off into a halt that never returns, so reset instead
# (the kernel's reboot= parameter picks how, e.g. reboot=t: triple fault).
[ -d /sys/firmware/acpi ] && poweroff -f
reboot -f
# Still here: init exits and the kernel panics ("Attempted to kill init"),
# which resets the VM when the kernel command line has panic=-1.
"""


def command_line(command: Sequence[str], env: Mapping[str, str]) -> str:
    """``export K=V; exec ARGV`` with every word shell-quoted; names must
    match ENV_NAME."""
    if isinstance(command, str) or not command:
        raise ValueError(f"command must be a non-empty list of strings, got {command!r}")
    for word in [*command, *env, *env.values()]:
        if "\0" in word:
            raise ValueError(f"command and environment must not contain NUL bytes: {word!r}")
    exports = [f"export {_env_name(k)}={shlex.quote(v)}; " for k, v in env.items()]
    return "".join(exports) + "exec " + shlex.join(command)


def _env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise ValueError(f"invalid environment variable name {name!r}")
    return name
