"""A call's deadline: one value carried from the call down to the socket.

A :class:`Deadline` is the ``time.monotonic()`` instant by which a whole call -- its
retries, its fan-out, every wait for a pooled connection, a connect, a send, a
reply -- must be done, or no deadline at all (:data:`NO_DEADLINE`).  It is created
once, where the call starts (``Deadline.after(retry.deadline)``), and passed down as
it is: each layer asks it what is left, or to cap a limit of its own (urllib3's
``Timeout`` plays the same part).

* :meth:`Deadline.left` -- seconds left (negative once passed; None without one);
* :meth:`Deadline.cap` -- a wait of at most ``limit`` seconds, cut to what is left,
  and whether the deadline is what binds it (then a timeout of that wait is the
  deadline's: :class:`~ktcluster.errors.DeadlineExceeded`, not the limit's);
* :meth:`Deadline.end` -- the same as an instant, for an exchange that spans several
  waits;
* :meth:`Deadline.check` -- raise DeadlineExceeded (nothing sent) when it has passed.
"""

from __future__ import annotations

import time
from typing import Final

from .errors import DeadlineExceeded

__all__ = ["Deadline", "NO_DEADLINE"]

_monotonic = time.monotonic


class Deadline:
    """The end of a call (``at``: a ``time.monotonic()`` value), or none (``at`` None)."""

    __slots__ = ("at",)

    def __init__(self, at: float | None = None) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline ``seconds`` from now (None: none)."""
        return NO_DEADLINE if seconds is None else cls(_monotonic() + seconds)

    def __repr__(self) -> str:
        return "Deadline(none)" if self.at is None else f"Deadline(in {self.at - _monotonic():.3f} s)"

    def __bool__(self) -> bool:
        """True when there is a deadline."""
        return self.at is not None

    def left(self) -> float | None:
        """Seconds left (zero or less once it has passed); None without a deadline."""
        return None if self.at is None else self.at - _monotonic()

    def cap(self, limit: float | None) -> tuple[float | None, bool]:
        """``(wait, bound)``: at most ``limit`` seconds (None: no limit of its own) and at
        most what is left; ``bound`` is True when the deadline is the smaller."""
        if self.at is None:
            return limit, False
        left = self.at - _monotonic()
        if limit is None or left < limit:
            return left, True
        return limit, False

    def end(self, limit: float | None) -> tuple[float | None, bool]:
        """:meth:`cap` as an instant: when a span of at most ``limit`` seconds starting now
        must end (None: never), and whether the deadline is that end."""
        if limit is None:
            return self.at, self.at is not None
        end = _monotonic() + limit
        if self.at is not None and self.at <= end:
            return self.at, True
        return end, False

    def check(self, what: str = "the call", node: str | None = None) -> None:
        """DeadlineExceeded (``request_sent=False``, naming ``node``) when the deadline has passed."""
        if self.at is not None and self.at <= _monotonic():
            raise DeadlineExceeded(f"the call's deadline passed before {what}", request_sent=False, node=node)


#: no deadline: every limit is a wait's own
NO_DEADLINE: Final = Deadline(None)
