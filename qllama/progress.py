"""Progress of a long step on stderr: a counter rewritten in place for a person at a terminal, one
line per stage for a log.

A `\\r` counter is for terminals: written to a file or a pipe it leaves one line of hundreds of
overwritten counters. So when the stream is not a terminal, a stage writes its label when it starts
(a log or a `| tee` shows what the wait is) and ends that same line with a short note when it ends.
"""
from __future__ import annotations

import sys


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """One stage of `total` steps:  with Progress("extracting x:", n, percent=True) as p: p.update(i).

    Terminal: `label 3/9` (or ` 42%`) rewritten in place, ended by the note (or the final count).
    Otherwise: `label` at the start, ` note` (or ` done`) and a newline at the end: one line."""

    def __init__(self, label: str, total: int, stream=None, percent: bool = False):
        self.label, self.total, self.percent = label, max(total, 1), percent
        self.stream = sys.stderr if stream is None else stream
        self.terminal = is_terminal(self.stream)
        self.done, self.width, self.closed = 0, 0, False
        if self.terminal:
            self._show(self._counter())
        else:
            self._write(label)

    def _counter(self) -> str:
        return f"{self.done * 100 // self.total:3d}%" if self.percent else f"{self.done}/{self.total}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _show(self, tail: str, end: str = "") -> None:
        line = f"{self.label} {tail}"
        # padded over the previous line, which may have been longer
        self._write("\r" + line.ljust(self.width) + end)
        self.width = len(line)

    def update(self, done: int) -> None:
        """done steps of total so far; redrawn only on a terminal, only when the counter changes."""
        before = self._counter()
        self.done = min(done, self.total)
        if self.terminal and not self.closed and self._counter() != before:
            self._show(self._counter())

    def close(self, note: str = "") -> None:
        """End the stage's line with `note` (default: the count on a terminal, "done" in a log)."""
        if self.closed:
            return
        self.closed = True
        if self.terminal:
            self._show(note or self._counter(), "\n")
        else:
            self._write(f" {note or 'done'}\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "")


def show_count(label: str, done: int, total: int, stream=None) -> None:
    """A counter kept by the caller (`label done/total`), without state: on a terminal rewritten in
    place and ended at done == total; in a log only the last one, as one line."""
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        stream.write(f"\r{label} {done}/{total}" + ("\n" if done >= total else ""))
    elif done >= total:
        stream.write(f"{label} {done}/{total}\n")
    stream.flush()
