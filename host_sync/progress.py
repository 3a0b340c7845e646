"""Progress on long work, on stderr (stdout stays clean for scripts): a redrawn bar on a
terminal, a line every tenth of the way otherwise."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, quiet: bool = False):
        self.label, self.total = label, max(1, total)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet = quiet or total < 200  # short work needs no progress
        self._last_tenth = -1
        self._t0 = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.quiet:
            return
        frac = min(1.0, done / self.total)
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write("\r%s [%-30s] %d/%d" % (self.label, bar, done, self.total))
            self.stream.flush()
        elif int(frac * 10) > self._last_tenth:
            self._last_tenth = int(frac * 10)
            self.stream.write("%s: %d/%d (%d%%)\n" % (self.label, done, self.total, frac * 100))
            self.stream.flush()

    def done(self) -> None:
        if self.quiet:
            return
        self(self.total)
        if self.tty:
            self.stream.write("\n")
        self.stream.write("%s: done in %.1f s\n" % (self.label, time.monotonic() - self._t0))
        self.stream.flush()
