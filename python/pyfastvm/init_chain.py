"""The init chain, after kvmtool's init list: named steps in ordered levels,
run in order; when one fails, the steps already done are undone in reverse
and the error names the failing step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._core import VmmError

LEVELS = ("core", "base", "dev", "late")

C = TypeVar("C")
Step = Callable[[C], object]


class InitStepError(VmmError):
    """An init step failed; ``step`` and ``level`` name it, ``__cause__`` says why."""

    def __init__(self, step: str, level: str, cause: BaseException) -> None:
        super().__init__(f"init step {step!r} (level {level}) failed: {cause}")
        self.step = step
        self.level = level


@dataclass(frozen=True)
class _Entry(Generic[C]):
    name: str
    level: str
    init: Step[C]
    undo: Step[C] | None


class InitChain(Generic[C]):
    """Steps keyed by name, run level by level in registration order.

    ``run(ctx)`` runs them; ``teardown(ctx)`` undoes the ones done, newest
    first, and may be called any number of times.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry[C]] = []
        self._done: list[_Entry[C]] = []

    def add(self, name: str, level: str, init: Step[C], undo: Step[C] | None = None) -> None:
        """Registers a step; `undo`, if given, reverses it."""
        if level not in LEVELS:
            raise ValueError(f"unknown init level {level!r} for step {name!r}: use one of {LEVELS}")
        if any(entry.name == name for entry in self._entries):
            raise ValueError(f"an init step named {name!r} is already registered")
        self._entries.append(_Entry(name, level, init, undo))

    def steps(self) -> list[tuple[str, str]]:
        """(level, name) of every step, in the order they run."""
        return [(entry.level, entry.name) for entry in self._ordered()]

    def _ordered(self) -> list[_Entry[C]]:
        return sorted(self._entries, key=lambda entry: LEVELS.index(entry.level))

    def run(self, ctx: C) -> None:
        """Runs every step; on failure undoes the done ones and raises
        InitStepError (KeyboardInterrupt is re-raised as it is)."""
        for entry in self._ordered():
            try:
                entry.init(ctx)
            except KeyboardInterrupt:
                self.teardown(ctx)
                raise
            except Exception as error:
                failure = InitStepError(entry.name, entry.level, error)
                for note in self._undo_all(ctx):
                    failure.add_note(note)
                raise failure from error
            self._done.append(entry)

    def teardown(self, ctx: C) -> None:
        """Undoes the done steps, newest first; raises the first undo error."""
        problems = self._undo_all(ctx)
        if problems:
            raise VmmError("; ".join(problems))

    def _undo_all(self, ctx: C) -> list[str]:
        problems = []
        while self._done:
            entry = self._done.pop()
            if entry.undo is None:
                continue
            try:
                entry.undo(ctx)
            except Exception as error:
                problems.append(f"undoing init step {entry.name!r} failed too: {error}")
        return problems
