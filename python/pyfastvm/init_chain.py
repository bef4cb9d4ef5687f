"""The init chain, after kvmtool's init list (util/init.c): named steps in
ordered levels, run in order; when one fails, the steps already done are
undone newest first and the error names the failing step.

A device plugin is one more step: ``chain.add("my-dev", "dev", init, undo)``
on the chain that ``default_init_chain()`` built, before it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._core import VmmError

LEVELS = ("core", "base", "dev", "firmware", "late")

C = TypeVar("C")
Step = Callable[[C], object]


class InitChainError(VmmError, ValueError):
    """The chain was misused: a bad registration, or ``run`` while steps are
    still done. The message says what to change."""


class InitStepError(VmmError):
    """An init step failed; ``step`` and ``level`` name it, ``__cause__`` says
    why, and any undo that failed on the way back is in ``__notes__``."""

    def __init__(self, step: str, level: str, cause: BaseException) -> None:
        super().__init__(f"init step {step!r} (level {level}) failed: {cause}")
        self.step = step
        self.level = level


class InitTeardownError(VmmError):
    """Undoing init steps failed; ``failures`` holds (step, error) for each,
    and ``__cause__`` is the first error. The other steps were still undone."""

    def __init__(self, failures: list[tuple[str, Exception]]) -> None:
        super().__init__("; ".join(_undo_failure(step, error) for step, error in failures))
        self.failures = failures


def _undo_failure(step: str, error: Exception) -> str:
    return f"undoing init step {step!r} failed: {type(error).__name__}: {error}"


@dataclass(frozen=True)
class _Entry(Generic[C]):
    name: str
    level: str
    init: Step[C]
    undo: Step[C] | None


class InitChain(Generic[C]):
    """Steps keyed by name, run level by level (``LEVELS``), within a level in
    registration order unless placed with ``before=``/``after=``.

    ``run(ctx)`` runs them; ``teardown(ctx)`` undoes the ones done, newest
    first, and may be called any number of times. A step whose ``init``
    raises is not undone itself, so it must leave nothing behind.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry[C]] = []
        self._done: list[_Entry[C]] = []

    def add(
        self,
        name: str,
        level: str,
        init: Step[C],
        undo: Step[C] | None = None,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Registers a step; `undo`, if given, reverses it. `before` or
        `after` names a step of the same level to run right before or after."""
        if level not in LEVELS:
            raise InitChainError(
                f"unknown init level {level!r} for step {name!r}: "
                f"use one of {', '.join(LEVELS)} (they run in that order)"
            )
        if self._index(name) is not None:
            raise InitChainError(
                f"an init step named {name!r} is already registered: pick another name"
            )
        position = self._position(name, level, before, after)
        self._entries.insert(position, _Entry(name, level, init, undo))

    def _index(self, name: str) -> int | None:
        return next((i for i, entry in enumerate(self._entries) if entry.name == name), None)

    def _position(self, name: str, level: str, before: str | None, after: str | None) -> int:
        """Where a new step goes in `_entries`; sorting by level keeps it
        next to its anchor, as both are in the same level."""
        if before is not None and after is not None:
            raise InitChainError(f"init step {name!r}: give before= or after=, not both")
        anchor = before if before is not None else after
        if anchor is None:
            return len(self._entries)
        index = self._index(anchor)
        if index is None:
            known = ", ".join(entry.name for entry in self._ordered()) or "none yet"
            raise InitChainError(
                f"init step {name!r} is to run next to {anchor!r}, which is not registered "
                f"(registered: {known})"
            )
        anchor_level = self._entries[index].level
        if anchor_level != level:
            raise InitChainError(
                f"init step {name!r} (level {level}) cannot run next to {anchor!r} "
                f"(level {anchor_level}): levels run in order; use level={anchor_level!r}"
            )
        return index if before is not None else index + 1

    def steps(self) -> list[tuple[str, str]]:
        """(level, name) of every step, in the order they run."""
        return [(entry.level, entry.name) for entry in self._ordered()]

    def _ordered(self) -> list[_Entry[C]]:
        # sorted() is stable: registration order holds within a level.
        return sorted(self._entries, key=lambda entry: LEVELS.index(entry.level))

    def run(self, ctx: C) -> None:
        """Runs every step. If one raises, undoes the done ones and raises
        InitStepError; KeyboardInterrupt (any BaseException) is re-raised as
        it is, after the same undo."""
        if self._done:
            raise InitChainError(
                "the init chain has already run: call teardown() before running it again"
            )
        for entry in self._ordered():
            try:
                entry.init(ctx)
            except Exception as error:
                failure = InitStepError(entry.name, entry.level, error)
                self._undo_noting(ctx, failure)
                raise failure from error
            except BaseException as interrupt:
                self._undo_noting(ctx, interrupt)
                raise
            self._done.append(entry)

    def teardown(self, ctx: C) -> None:
        """Undoes the done steps, newest first; a step is undone once however
        often this is called. Raises InitTeardownError if any undo failed."""
        failures = self._undo_all(ctx)
        if failures:
            raise InitTeardownError(failures) from failures[0][1]

    def _undo_noting(self, ctx: C, error: BaseException) -> None:
        """Undoes the done steps; their failures become notes on `error`
        rather than replacing it."""
        for step, undo_error in self._undo_all(ctx):
            error.add_note(_undo_failure(step, undo_error))

    def _undo_all(self, ctx: C) -> list[tuple[str, Exception]]:
        failures: list[tuple[str, Exception]] = []
        while self._done:
            # Popped first: an undo is never retried, even when it fails.
            entry = self._done.pop()
            if entry.undo is None:
                continue
            try:
                entry.undo(ctx)
            except Exception as error:
                failures.append((entry.name, error))
        return failures
