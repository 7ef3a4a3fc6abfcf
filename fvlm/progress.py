"""Progress of a long run that a person can read in a terminal and in a log file alike.

    import sys
    from fvlm.progress import Progress, track

    for clip in track(clips, "eval coarse_fine"):          # total taken from len(clips)
        ...
    with Progress(total=steps, desc="train", initial=step) as bar:
        bar.update(1)
        bar.write("step 100: loss 2.31", sys.stdout)         # a line of its own (default: the bar's stream)

On a terminal (the stream is a TTY) one line is redrawn in place, at most 10 times a second:

    eval coarse_fine  [########------------]  37/90  41% | 0:42 elapsed, ~1:00 left

Anywhere else (a pipe, a file, a captured stream) redrawing would write every update as a line of
its own, so the same text is printed as a plain line at the start, then at most every `every_s`
seconds (default 30) and at each tenth of the total that is at least `min_gap_s` seconds (default
2) after the previous line, and once at the end: a log gets a few lines, not one per update.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

from typing_extensions import Self  # typing.Self needs Python 3.11

T = TypeVar("T")


def format_seconds(s: float) -> str:
    """1234.5 -> '20:34'; 4000 -> '1:06:40'."""
    h, rest = divmod(round(s), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class Progress:
    """done/total of one task, with elapsed and estimated time left; see the module doc."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "",
                 stream: IO[str] | None = None, disable: bool = False, tty: bool | None = None,
                 every_s: float = 30.0, min_gap_s: float = 2.0):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.stream = sys.stderr if stream is None else stream
        self.tty = is_tty(self.stream) if tty is None else tty
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self.done = self.start_done = initial
        self.start = self.last_print = time.monotonic()
        self.printed_tenth = self._tenth()
        self.printed_done: int | None = None  # done as of the last status line, None after a message
        self.closed = False
        if not disable and not self.tty:
            self._emit(self.line())

    def _tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 0

    def line(self) -> str:
        """The status text: desc, a bar (terminal only), done/total, percent, elapsed, time left."""
        elapsed = time.monotonic() - self.start
        unit = f" {self.unit}" if self.unit else ""
        parts = [self.desc]
        if self.total:
            frac = min(1.0, self.done / self.total)
            if self.tty:
                parts.append("[" + "#" * round(20 * frac) + "-" * (20 - round(20 * frac)) + "]")
            parts.append(f"{self.done}/{self.total}{unit} {100 * frac:3.0f}%")
        else:
            parts.append(f"{self.done}{unit}")
        timing = f"{format_seconds(elapsed)} elapsed"
        new = self.done - self.start_done
        if self.total and 0 < new and self.done < self.total:
            timing += f", ~{format_seconds(elapsed / new * (self.total - self.done))} left"
        return "  ".join(parts) + " | " + timing

    def _emit(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last_print = time.monotonic()
        self.printed_done = self.done

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.disable or self.closed:
            return
        now = time.monotonic()
        gap = now - self.last_print
        if self.tty:
            if gap >= 0.1 or (self.total and self.done >= self.total):
                self._emit(self.line())
        elif gap >= self.every_s or (self._tenth() > self.printed_tenth and gap >= self.min_gap_s):
            self.printed_tenth = self._tenth()
            self._emit(self.line())

    def write(self, text: str, stream: IO[str] | None = None) -> None:
        """A message on a line of its own, on `stream` (default: the bar's), above the bar on a terminal."""
        if self.disable:
            return
        out = self.stream if stream is None else stream
        if self.tty:
            self.stream.write("\r\033[K")  # clear the bar, print, redraw it below
            self.stream.flush()
        out.write(text + "\n")
        out.flush()
        if self.tty:
            self._emit(self.line())
        elif out is self.stream:
            self.printed_done = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self.tty or self.printed_done != self.done):  # no repeated last line
            self._emit(self.line())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, **kwargs) -> Iterator[T]:
    """Yield the items, reporting as Progress does; total defaults to len(items) where it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(1)


def say(text: str, stream: IO[str] | None = None) -> None:
    """One status line, flushed at once (what a long run is about to do)."""
    stream = sys.stderr if stream is None else stream
    stream.write(text + "\n")
    stream.flush()
