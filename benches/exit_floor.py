"""Driver for benches/exit-floor, the pure-Rust userspace floor: a bare
kvm-ioctls loop with no Python and no bus, running one guest loop in batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

FLOOR_DIR = Path(__file__).parent / "exit-floor"
FLOOR_BINARY = FLOOR_DIR / "target" / "release" / "exit-floor"


def build() -> Path:
    manifest = str(FLOOR_DIR / "Cargo.toml")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", manifest], check=True
    )
    return FLOOR_BINARY


class ExitFloor:
    """One exit-floor process; `batch(n)` runs n exits and keeps its own timing."""

    def __init__(self, binary: Path, mode: str, code: bytes, count_address: int) -> None:
        command = [str(binary), "--mode", mode, "--code", code.hex()]
        self.process = subprocess.Popen(
            [*command, "--count-addr", hex(count_address)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._line()
        if ready != "ready":
            raise RuntimeError(f"exit-floor did not start: {ready!r}")
        self.batch_ns: list[int] = []

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def batch(self, count: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        word, exits, elapsed = self._line().split()
        if word != "done" or int(exits) != count:
            raise RuntimeError(f"exit-floor answered {word} {exits} for a batch of {count}")
        self.batch_ns.append(int(elapsed))

    def median_batch_seconds(self) -> float:
        """The floor's own median batch time, without the pipe round trip."""
        timings = sorted(self.batch_ns)
        return timings[len(timings) // 2] / 1e9

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
