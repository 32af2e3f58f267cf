"""What the jobs print: stage headers, progress and one-line results, for people.

Progress is a bar redrawn in place when stdout is a terminal, and a plain line every few seconds
otherwise (a log file, `ray job logs`), so a long run leaves a readable log rather than thousands
of cursor movements.
"""
from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 10.0  # seconds between progress lines when stdout is not a terminal


def say(message: str = "") -> None:
    print(message, flush=True)


def stage(title: str) -> float:
    """A stage header; returns the start time (perf_counter)."""
    say(f"\n=== {title}")
    return time.perf_counter()


def is_terminal() -> bool:
    return sys.stdout.isatty()


class Progress:
    """`done` of `total` things: a bar on a terminal, else a line every `every` seconds and at the end.

        progress = Progress("VOC", total=1449, unit="images")
        progress.update(done, note="mIoU so far 41.2")
        progress.close()
    """

    def __init__(self, label: str, total: int | None, unit: str = "", every: float = PROGRESS_EVERY_S,
                 terminal: bool | None = None):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.terminal = is_terminal() if terminal is None else terminal
        self.start = time.perf_counter()
        self.last_print = self.start
        self.done = 0
        self.note = ""
        self._width = 0
        self._printed = None  # the last line printed off a terminal

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.label}: {self.done}{of} {self.unit}".rstrip() + f", {rate:.1f}/s"
        if self.total and self.done and self.done < self.total and rate > 0:
            text += f", {(self.total - self.done) / rate:.0f} s left"
        return text + (f", {self.note}" if self.note else "")

    def update(self, done: int, note: str = "") -> None:
        self.done, self.note = done, note or self.note
        now = time.perf_counter()
        if self.terminal:
            if now - self.last_print >= 0.2:
                self.last_print = now
                self._draw()
        elif now - self.last_print >= self.every:
            self.last_print = now
            self._say()

    def _say(self) -> None:
        line = self._line()
        if line != self._printed:
            say(line)
            self._printed = line

    def _draw(self) -> None:
        line = self._line()
        if self.total:
            filled = int(20 * min(1.0, self.done / self.total))
            line = f"[{'#' * filled}{'.' * (20 - filled)}] " + line
        sys.stdout.write("\r" + line.ljust(self._width))
        sys.stdout.flush()
        self._width = len(line)

    def close(self, note: str = "") -> None:
        """The final line (always printed)."""
        self.note = note or self.note
        if self.terminal:
            self._draw()
            sys.stdout.write("\n")
            sys.stdout.flush()
        else:
            self._say()
