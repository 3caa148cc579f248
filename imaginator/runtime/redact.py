"""Removing secret values from text, whole or as it streams in.

Every character that belongs to an occurrence of a secret is hidden: the
occurrences of all secrets (overlapping ones included) are merged into runs,
and each run becomes one ``[REDACTED]``. So a secret containing another is
removed whole, and two secrets that overlap leave nothing of either.

Output of a child arrives in pieces (a line over 64 KiB is passed on in
parts), so a secret may straddle two pieces. :class:`StreamRedactor` keeps
back the undecided end of what it was given (at most the longest secret
minus one character, and nothing after a newline when no secret contains
one), so the concatenation of its output is exactly what :class:`Redactor`
makes of the whole text, however the text was split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces every run of secret occurrences in a text by ``[REDACTED]``.

    Immutable; calling it redacts a whole text. Empty values are ignored.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({value for value in secrets if value}, key=len, reverse=True)
        self.values: tuple[str, ...] = tuple(values)
        self.longest = len(values[0]) if values else 0
        # Every secret is free of newlines (the usual case): a position followed
        # by a newline in the text can be decided without seeing more.
        self.newline_free = all("\n" not in value for value in values)
        # A zero-width lookahead finds every position where a secret starts,
        # overlapping ones included; the alternatives are tried longest first,
        # so the group is the longest secret starting there.
        self._starts = (
            re.compile("(?=(" + "|".join(re.escape(value) for value in values) + "))")
            if values
            else None
        )

    def __call__(self, text: str) -> str:
        if self._starts is None:
            return text
        out, _pos, _covered = self._redact(text, len(text), 0)
        return "".join(out)

    def _redact(self, text: str, limit: int, covered: int) -> tuple[list[str], int, int]:
        """Redact ``text`` up to ``limit`` (positions before it are decided).

        ``covered`` is how many leading characters belong to a run whose
        ``[REDACTED]`` was already given out. Returns the output pieces, the
        position the output reaches and how far the last run is known to
        extend (beyond ``limit`` when it may grow).
        """
        out: list[str] = []
        pos = 0
        run_start, run_end = (0, covered) if covered else (-1, -1)
        assert self._starts is not None
        for match in self._starts.finditer(text, 0, len(text)):
            start = match.start()
            if start >= limit:
                break
            end = start + len(match.group(1))
            if start < run_end:
                run_end = max(run_end, end)
                continue
            if run_start >= 0:
                pos = self._close_run(out, text, pos, run_start, run_end, covered)
            run_start, run_end = start, end
        if run_start >= 0:
            pos = self._close_run(out, text, pos, run_start, run_end, covered)
        if pos < limit:
            out.append(text[pos:limit])
            pos = limit
        return out, pos, run_end if run_end > limit else 0

    @staticmethod
    def _close_run(out: list[str], text: str, pos: int, start: int, end: int, covered: int) -> int:
        """Give out the plain text before the run and the run's ``[REDACTED]``."""
        if start > pos:
            out.append(text[pos:start])
        if not (covered and start == 0):
            out.append(REDACTED)
        return end


class StreamRedactor:
    """Redacts a text given in pieces; the output never depends on where they were cut.

    ``feed`` returns the part that is decided; ``finish`` the rest, at the
    end of the text. ``current()`` gives the redactor in force (the secrets
    may change while a build runs; the held-back text is checked against the
    new ones).
    """

    def __init__(self, current: Callable[[], Redactor]) -> None:
        self._current = current
        self._held = ""
        # How many leading characters of ``_held`` belong to a run whose
        # ``[REDACTED]`` was already given out (the run may still grow).
        self._covered = 0

    @property
    def held(self) -> int:
        """Characters kept back, waiting for more text."""
        return len(self._held)

    def feed(self, text: str) -> str:
        return self._process(self._held + text, final=False)

    def finish(self) -> str:
        """The end of the text: give out everything held back."""
        return self._process(self._held, final=True)

    def _process(self, text: str, *, final: bool) -> str:
        redactor = self._current()
        if redactor._starts is None:
            self._held, self._covered = "", 0
            return text
        if final:
            limit = len(text)
        else:
            limit = len(text) - redactor.longest + 1
            if redactor.newline_free:
                limit = max(limit, text.rfind("\n") + 1)
        if limit <= 0:
            self._held = text
            return ""
        out, pos, run_end = redactor._redact(text, limit, min(self._covered, len(text)))
        # Keep everything from ``limit`` on: a secret may start there. If the
        # last run reaches beyond it, the kept text starts inside a run that
        # was already given out.
        keep = min(pos, limit)
        self._held = text[keep:]
        self._covered = max(run_end - keep, 0)
        return "".join(out)
