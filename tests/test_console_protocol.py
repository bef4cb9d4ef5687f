"""The host-side console protocol parser, on hand-written console recordings.

The recordings mimic what the 8250 UART delivers: kernel lines with printk
timestamps, "\\r\\n" line ends, and report frames written by the guest's
/init (frame lines recorded from the guest reporter, CRCs included).
"""

from __future__ import annotations

import base64
import os
import random

import pytest

from pyfastvm.guest.console_protocol import (
    ConsoleProtocol,
    decode_frame,
    encode_frame,
    new_nonce,
)
from pyfastvm.guest.errors import ConsoleFrameError, ConsoleProtocolError

NONCE = "c0ffee00d15ea5e5"
BEGIN = "@@PYFASTVM c0ffee00d15ea5e5 0 5 8dd157a5 BEGIN"
DATA1 = (
    "@@PYFASTVM c0ffee00d15ea5e5 1 133 9045bbc1 DATA TGludXggKG5vbmUpIDYuMS4wLTU2LWNsb3Vk"
    "LWFtZDY0ICMxIFNNUCBQUkVFTVBUX0RZTkFNSUMgRGViaWFuIDYuMS4xOTItMiB4ODZfNjQgR05VL0xpbnV4"
    "CmhlbGxv"
)
DATA2 = "@@PYFASTVM c0ffee00d15ea5e5 2 29 3e72924c DATA IGZyb20gdGhlIGd1ZXN0Cg=="
EXIT0 = "@@PYFASTVM c0ffee00d15ea5e5 3 6 d8c03ba3 EXIT 0"
EXIT_FIRST = "@@PYFASTVM c0ffee00d15ea5e5 1 6 41c96a19 EXIT 3"
UNAME_OUTPUT = (
    b"Linux (none) 6.1.0-56-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 "
    b"x86_64 GNU/Linux\nhello from the guest\n"
)

BOOT_LOG = [
    "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) "
    "(gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) "
    "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)",
    "[    0.000000] Command line: console=ttyS0 reboot=t panic=-1 quiet",
    "[    0.000000] BIOS-provided physical RAM map:",
    "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "[    0.081234] Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled",
    "[    0.082345] serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    "[    0.101112] Freeing unused kernel image (initmem) memory: 2732K",
    "[    0.101900] Run /init as init process",
]
REBOOT_LOG = ["[    0.190000] reboot: Power down"]


def console(*lines: str) -> bytes:
    """Lines as the 8250 console emits them."""
    return "".join(f"{line}\r\n" for line in lines).encode()


def parse(stream: bytes | str, *, chunk: int | None = None) -> ConsoleProtocol:
    protocol = ConsoleProtocol(NONCE)
    step = chunk or len(stream) or 1
    for start in range(0, len(stream), step):
        protocol.feed(stream[start : start + step])
    protocol.close()
    return protocol


def test_clean_run_separates_output_from_kernel_log() -> None:
    protocol = parse(console(*BOOT_LOG, BEGIN, DATA1, DATA2, EXIT0, *REBOOT_LOG))
    assert protocol.finished
    assert protocol.exit_code == 0
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.init_started and protocol.command_started
    assert protocol.panic is None
    assert protocol.kernel_log == "".join(f"{line}\n" for line in BOOT_LOG + REBOOT_LOG)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 4096])
def test_chunk_boundaries_anywhere(chunk: int) -> None:
    stream = console(*BOOT_LOG, BEGIN, DATA1, DATA2, EXIT0, *REBOOT_LOG)
    protocol = parse(stream, chunk=chunk)
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.exit_code == 0
    assert "Run /init as init process\n" in protocol.kernel_log


def test_str_chunks_and_bare_newlines() -> None:
    stream = "\n".join([*BOOT_LOG, BEGIN, DATA1, DATA2, EXIT0]) + "\n"
    protocol = parse(stream, chunk=50)
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.exit_code == 0


def test_utf8_split_across_chunks_in_a_kernel_line() -> None:
    line = "[    0.050000] ACPI: \u00e9t\u00e9 \u2603 snowman"
    protocol = parse(console(line, BEGIN, EXIT_FIRST), chunk=1)
    assert line in protocol.kernel_log
    assert protocol.exit_code == 3


def test_empty_output_and_nonzero_status() -> None:
    protocol = parse(console(*BOOT_LOG, BEGIN, EXIT_FIRST))
    assert protocol.finished
    assert protocol.exit_code == 3
    assert protocol.stdout == b""


def test_frame_glued_to_firmware_output() -> None:
    """Recorded from QEMU's SeaBIOS with 'quiet': no line end before BEGIN."""
    firmware = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    stream = f"{firmware}Booting from ROM..\x1bc\x1b[?7l\x1b[2J{BEGIN}\r\n"
    protocol = parse(stream.encode() + console(EXIT_FIRST))
    assert protocol.command_started and protocol.exit_code == 3
    assert protocol.kernel_log.endswith("Booting from ROM..\x1bc\x1b[?7l\x1b[2J\n")


def test_empty_lines_are_not_logged() -> None:
    protocol = parse(console("", BEGIN, "", EXIT_FIRST))
    assert protocol.kernel_log == ""
    assert protocol.exit_code == 3


def test_whole_kernel_lines_between_frames() -> None:
    stream = console(
        BEGIN,
        "[    0.123456] random: crng init done",
        DATA1,
        "[    0.130001] clocksource: tsc: Marking TSC unstable due to clocksource watchdog",
        "[    0.130002] clocksource: Switched to clocksource kvm-clock",
        DATA2,
        EXIT0,
    )
    protocol = parse(stream)
    assert protocol.stdout == UNAME_OUTPUT
    assert "crng init done" in protocol.kernel_log
    assert "Switched to clocksource kvm-clock" in protocol.kernel_log


KERNEL_SPLICE = "[    0.912345] random: crng init done"


@pytest.mark.parametrize("cut", [len(DATA1) - 1, 100, 60, 45, 20, 11, 2, 1])
def test_kernel_line_spliced_into_a_frame_is_repaired(cut: int) -> None:
    spliced = f"{DATA1[:cut]}{KERNEL_SPLICE}\r\n{DATA1[cut:]}\r\n"
    stream = console(BEGIN) + spliced.encode() + console(DATA2, EXIT0)
    protocol = parse(stream, chunk=5)
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.exit_code == 0
    assert protocol.kernel_log == f"{KERNEL_SPLICE}\n"


def test_splice_of_several_kernel_lines() -> None:
    cut = 90
    stream = (
        f"{DATA1[:cut]}[    1.000001] first message\r\n"
        "[    1.000002] second message\r\n"
        f"[    1.000003] third message\r\n{DATA1[cut:]}\r\n"
    )
    protocol = parse(console(BEGIN) + stream.encode() + console(DATA2, EXIT0))
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.kernel_log.splitlines() == [
        "[    1.000001] first message",
        "[    1.000002] second message",
        "[    1.000003] third message",
    ]


def test_splice_between_carriage_return_and_newline() -> None:
    stream = f"{DATA1}\r{KERNEL_SPLICE}\r\n\n"
    protocol = parse(console(BEGIN) + stream.encode() + console(DATA2, EXIT0))
    assert protocol.stdout == UNAME_OUTPUT
    assert protocol.kernel_log == f"{KERNEL_SPLICE}\n"


def test_splice_into_exit_frame() -> None:
    stream = f"{EXIT0[:-2]}{KERNEL_SPLICE}\r\n{EXIT0[-2:]}\r\n"
    protocol = parse(console(BEGIN, DATA1, DATA2) + stream.encode())
    assert protocol.exit_code == 0


def test_unrepairable_frame_raises_with_cause_and_fix() -> None:
    damaged = DATA1.replace("CmhlbGxv", "CmhlbGxw")
    protocol = ConsoleProtocol(NONCE)
    protocol.feed(console(BEGIN, damaged))
    with pytest.raises(ConsoleFrameError, match=r"expected report frame 1 .* got frame 2") as err:
        protocol.feed(console(DATA2))
    assert "quiet" in str(err.value)
    assert "unrepaired lines: '@@PYFASTVM c0ffee00d15ea5e5 1 133" in str(err.value)
    with pytest.raises(ConsoleFrameError):
        protocol.feed(console(EXIT0))


def test_lost_begin_is_reported() -> None:
    with pytest.raises(ConsoleFrameError, match="expected report frame 0"):
        parse(console(*BOOT_LOG, DATA1))


def test_frames_of_another_run_are_log_lines() -> None:
    other = encode_frame("0123456789abcdef", 0, "BEGIN")
    protocol = parse(console(other, BEGIN, EXIT_FIRST))
    assert protocol.kernel_log == f"{other}\n"
    assert protocol.exit_code == 3


def test_intact_frame_of_unknown_kind_is_a_protocol_error() -> None:
    shout = "@@PYFASTVM c0ffee00d15ea5e5 1 8 22fa0e16 SHOUT hi"
    with pytest.raises(ConsoleProtocolError, match="incompatible pyfastvm version"):
        parse(console(BEGIN, shout))


def test_kernel_panic_is_detected() -> None:
    panic = (
        "[    0.412233] Kernel panic - not syncing: VFS: Unable to mount root fs on "
        "unknown-block(0,0)"
    )
    stream = console(
        *BOOT_LOG[:-1],
        "[    0.410000] /dev/root: Can't open blockdev",
        panic,
        "[    0.412300] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0-56-cloud-amd64 #1",
        "[    0.412400] Call Trace:",
        "[    0.412500]  <TASK>",
        "[    0.412600] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs "
        "on unknown-block(0,0) ]---",
    )
    protocol = parse(stream, chunk=13)
    assert protocol.panic == "VFS: Unable to mount root fs on unknown-block(0,0)"
    assert not protocol.finished
    assert not protocol.init_started
    assert "Call Trace:" in protocol.kernel_log


def test_panic_after_report_keeps_the_result() -> None:
    stream = console(
        BEGIN,
        EXIT_FIRST,
        "[    0.200000] reboot: Power down",
        "[    0.200100] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000",
    )
    protocol = parse(stream)
    assert protocol.finished and protocol.exit_code == 3
    assert protocol.panic == "Attempted to kill init! exitcode=0x00000000"


def test_final_line_without_newline_is_kept_on_close() -> None:
    protocol = ConsoleProtocol(NONCE)
    protocol.feed(console(BEGIN, EXIT_FIRST) + b"[    0.3] reboot: Restarting system")
    assert "Restarting" not in protocol.kernel_log
    protocol.close()
    assert protocol.kernel_log.endswith("reboot: Restarting system\n")


def test_log_line_starting_like_a_frame_stays_in_the_log() -> None:
    odd = "@ user wrote this to /dev/kmsg"
    protocol = parse(console(odd, BEGIN, DATA1, DATA2, EXIT0))
    assert protocol.kernel_log == f"{odd}\n"
    assert protocol.stdout == UNAME_OUTPUT


def test_encode_decode_round_trip() -> None:
    rng = random.Random(7)
    nonce = new_nonce()
    for seq in range(50):
        payload = base64.b64encode(rng.randbytes(rng.randrange(0, 97))).decode()
        frame = decode_frame(encode_frame(nonce, seq, f"DATA {payload}"), nonce)
        assert frame is not None
        assert (frame.seq, frame.kind, frame.argument) == (seq, "DATA", payload)


def test_nonce_is_validated() -> None:
    with pytest.raises(ValueError, match="hex"):
        ConsoleProtocol("not a nonce")
    assert len(new_nonce()) == 16


def test_large_output_fed_in_uart_sized_chunks() -> None:
    output = os.urandom(20_000)
    encoded = base64.b64encode(output).decode()
    chunks = [encoded[i : i + 128] for i in range(0, len(encoded), 128)]
    lines = [encode_frame(NONCE, 0, "BEGIN")]
    lines += [encode_frame(NONCE, i, f"DATA {c}") for i, c in enumerate(chunks, 1)]
    lines.append(encode_frame(NONCE, len(chunks) + 1, "EXIT 0"))
    protocol = parse(console(*lines), chunk=16)
    assert protocol.stdout == output
