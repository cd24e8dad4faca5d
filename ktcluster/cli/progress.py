"""A one-line progress bar on stderr, without dependencies.

It draws only when stderr is a terminal (and the command was not given
``--quiet``); otherwise every call is a no-op, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 24


class Progress:
    """``with Progress(total, "loading") as bar: bar.update(n)``; redrawn at most 10 times a second."""

    def __init__(self, total: int | None, label: str, *, unit: str = "keys", enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.enabled = enabled and self.stream.isatty()
        self._start = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= 0.1:
                self._drawn = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = int(share * _WIDTH)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            line = (f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] {share:4.0%} "
                    f"{self.done:,}/{self.total:,} {self.unit}  {rate:,.0f}/s  ETA {eta:.0f}s")
        else:
            line = f"{self.label} {self.done:,} {self.unit}  {rate:,.0f}/s"
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        """Erase the line (the command prints its own summary)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
