"""Expiration times: what ``expire=`` accepts and how it reaches the server.

KT stores an absolute expiry per record and takes an ``xt`` on every write:
positive = seconds from now (the *server's* clock), negative = absolute epoch
``-xt``, absent = never.  **Every write without xt clears the expiry** (set,
replace, append, increment, cas...), and KT has no "touch".

``expire=`` (the same on every write method):

* ``None`` -- no expiry (python-kyototycoon-ng's default).
* a number ``>= 0`` -- seconds from now, rounded up to whole seconds, measured on
  the server's clock.  This is ng's meaning; ng computed ``time() + expire`` on
  the client's clock for its REST writes, ktcluster lets the server do it, so a
  skewed client clock no longer shortens or stretches lifetimes.  ``0`` expires
  the record at the end of the current second.
* a negative number -- an absolute epoch ``-expire`` (KT's own convention).  For
  ng users this only differs from "already expired" when the magnitude is a
  future epoch, which ng could not express.
* a :class:`datetime.datetime` (naive = local time) or :class:`ExpireAt` -- an absolute time.
* a :class:`datetime.timedelta` -- relative, like a number.
* :data:`KEEP` -- keep the record's current expiry.  KT cannot do this natively:
  ktcluster reads the record's absolute expiry and writes it back.  For set,
  replace, append and touch the write is a ``cas`` against the value it read,
  retried when the record changed meanwhile, so no concurrent value change is
  lost; a concurrent write of the *same* value with another expiry (ABA) is
  overwritten with the old expiry.  For increment/increment_double and cas the
  expiry is read with ``check`` first: a write between the two calls that changes
  the expiry loses its new expiry.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Final

from .errors import ArgumentError
from .protocol.binary import XT_NONE, XTMAX

__all__ = ["KEEP", "ExpireAt", "Expire", "xt_of", "binary_xt", "expires_at"]


class _Keep:
    """The type of :data:`KEEP`."""

    _instance: _Keep | None = None

    def __new__(cls) -> _Keep:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"

    def __reduce__(self) -> str:
        return "KEEP"


#: ``expire=KEEP``: keep the record's current expiry (see the module docstring for the cost).
KEEP: Final = _Keep()


class ExpireAt:
    """An absolute expiry, in epoch seconds (a float is rounded up)."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: float) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch != epoch:
            raise ArgumentError(f"ExpireAt needs epoch seconds, not {epoch!r}")
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"ExpireAt({self.epoch!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExpireAt) and other.epoch == self.epoch

    def __hash__(self) -> int:
        return hash(("ExpireAt", self.epoch))


#: What ``expire=`` accepts.
Expire = Any


def xt_of(expire: Expire) -> int | None:
    """The server's ``xt`` for ``expire`` (None: no expiry).  KEEP is the caller's job.
    Magnitudes of 2^40-1 seconds and more mean "never", as the server clamps them."""
    if expire is None:
        return None
    if type(expire) is int:
        return expire if -XTMAX < expire < XTMAX else None
    xt = _xt_of(expire)
    return xt if -XTMAX < xt < XTMAX else None


def _xt_of(expire: Expire) -> int:
    kind = type(expire)
    if kind is float:
        if expire != expire or expire in (math.inf, -math.inf):
            raise ArgumentError(f"expire must be a finite number of seconds, not {expire!r}")
        return math.ceil(expire) if expire >= 0 else -math.ceil(-expire)
    if isinstance(expire, ExpireAt):
        return -max(1, math.ceil(expire.epoch))
    if isinstance(expire, _dt.datetime):
        return -max(1, math.ceil(expire.timestamp()))
    if isinstance(expire, _dt.timedelta):
        seconds = expire.total_seconds()
        if seconds < 0:  # already in the past: an absolute time long gone
            return -1
        return math.ceil(seconds)
    if kind is not bool and isinstance(expire, int):
        return int(expire)
    raise ArgumentError(
        f"expire must be None, seconds, a datetime, a timedelta, ExpireAt or KEEP, not {expire!r}")


def binary_xt(xt: int | None) -> int:
    """The binary protocol's xt field for an RPC-style xt."""
    return XT_NONE if xt is None else xt


def expires_at(stored_xt: int | None) -> int | None:
    """An absolute expiry read back from the server (RPC ``xt`` output or a binary xt
    field) as epoch seconds, None when the record never expires."""
    if stored_xt is None or stored_xt >= XTMAX:
        return None
    return stored_xt

