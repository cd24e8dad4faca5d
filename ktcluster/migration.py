"""Live migration: how a client routes while keys move between rings, and how one key moves.

A migration takes a cluster from ring ``old`` to ring ``new`` in phases that every
client reads from the ring document (:mod:`ktcluster.ringdoc`).  Only keys whose owner
changes (``src = old.node_for(key) != new.node_for(key) = dst``) are routed
differently; every other key goes to its node as usual.  A record's value is the one on
``dst`` when ``dst`` holds it, else the one on ``src``.

=========  =========================  ==============================  ===================
phase      reads                      remove                          every other write
=========  =========================  ==============================  ===================
stable     the owner                  the owner                       the owner
prepare    ``dst``, ``src``, ``dst``  ``src``, then ``dst``           ``dst`` if it holds
                                                                      the key, else ``src``
migrate    ``dst``, ``src``, ``dst``  settle, then ``dst``            settle, then ``dst``
=========  =========================  ==============================  ===================

* A read stops at the first node that has the record; the second look at ``dst``
  catches a key that moved between the first two.
* **settle** (:func:`settle`) moves the key now if ``src`` still holds it: copy it to
  ``dst`` with ``add`` (never overwriting a value ``dst`` already holds: that one is
  newer), then remove it from ``src`` with a compare-and-swap on the value copied (a
  value written on ``src`` meanwhile is carried over first).  After it, ``src`` never
  holds the key again (in ``migrate`` nobody writes to ``src``), so the write, whatever
  its kind (set, add, replace, append, cas, increment, seize, remove), runs on ``dst``
  alone with its usual meaning: a counter is incremented where its value is.
* ``ktcluster rebalance move`` settles every misplaced key the same way.

Why the phases (each lasts at least the document's ``grace()``, so only neighbouring
phases ever run side by side): a ``stable`` client on ``old`` reads and writes ``src``
only, which is right as long as ``dst`` holds nothing, and only ``migrate`` clients
write ``dst`` (a ``prepare`` client writes ``dst`` only where a ``migrate`` client put
the key); a ``migrate`` client never writes ``src``, so once the ``prepare`` clients are
gone, a key settled stays settled and one scan moves everything; a ``stable`` client on
``new`` (after ``finish``) reads and writes ``dst``, which then holds every key.  What
is not covered: two clients in *different* phases acting on the *same* key at the same
moment (within one round trip) during the grace after ``migrate`` is published, where
a ``prepare`` client's conditional write or increment can land on ``src`` just after a
``migrate`` client settled the key, and a ``prepare`` client's remove can be undone by
a concurrent settle.  docs/cluster.md compares this with mcrouter and Redis Cluster.

Bulk calls send the keys that stay to their nodes in bulk and route the moving keys one
by one as above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .errors import LogicalInconsistencyError
from .ops import Op, Operation, Session, read_raw, rpc, xt_params
from .retry import OpClass
from .ring import Ring
from .ringdoc import PREPARE

__all__ = ["Migration", "Run", "keyed", "settle", "MOVED", "SUPERSEDED", "ABSENT", "SETTLE_TRIES"]

T = TypeVar("T")

#: run an operation of :mod:`ktcluster.ops` on a named node: ``run(op_class, node, make_op)``
Run = Callable[[OpClass, str, Callable[[Session], Operation[Any]]], Any]

#: what :func:`settle` did: copied and removed the source; removed a source ``dst``
#: already had a newer value for; found nothing to move
MOVED, SUPERSEDED, ABSENT = "moved", "superseded", "absent"
#: how often settle carries over a value written on the source meanwhile before giving up
SETTLE_TRIES = 8


@dataclass(frozen=True)
class Migration:
    """A migration in progress, as a client routes it: the phase and both rings."""

    phase: str
    old: Ring
    new: Ring

    def moving(self, kbs: Sequence[bytes]) -> set[int]:
        """The indices of the keys (as bytes) whose owner changes."""
        old, new = self.old.node_for, self.new.node_for
        return {i for i, kb in enumerate(kbs) if old(kb) != new(kb)}


def keyed(m: Migration, run: Run, operation: str, cls: OpClass, kb: bytes, db: Any,
          make_op: Callable[[Session], Operation[T]]) -> T:
    """Run one single-key operation under ``m`` (the table of the module docstring)."""
    src, dst = m.old.node_for(kb), m.new.node_for(kb)
    if src == dst:
        return run(cls, dst, make_op)
    if cls is OpClass.READ:
        return _read(run, (dst, src, dst), make_op)
    if m.phase == PREPARE:
        if operation == "remove":
            first = run(cls, src, make_op)
            return run(cls, dst, make_op) or first
        holds = run(OpClass.READ, dst, lambda s: read_raw(s, kb, db)) is not None
        return run(cls, dst if holds else src, make_op)
    settle(run, src, dst, kb, db)
    return run(cls, dst, make_op)


def _read(run: Run, nodes: tuple[str, ...], make_op: Callable[[Session], Operation[T]]) -> T:
    """The first answer that finds the record (a get_int that finds none raises: the next
    node is asked, and the last one's error stands)."""
    for i, node in enumerate(nodes):
        try:
            result = run(OpClass.READ, node, make_op)
        except LogicalInconsistencyError:
            if i == len(nodes) - 1:
                raise
            continue
        if result is not None and result is not False:
            return result
    return result


# -- moving one key ---------------------------------------------------------------------------------


def _add(s: Session, kb: bytes, value: bytes, expires: int | None, db: Any) -> Op[bool]:
    try:
        yield from rpc(s, b"add", xt_params([(b"key", kb), (b"value", value)], _xt(expires)), db)
    except LogicalInconsistencyError:
        return False
    return True


def _cas(s: Session, kb: bytes, old: bytes, new: bytes | None, expires: int | None, db: Any) -> Op[bool]:
    params = [(b"key", kb), (b"oval", old)] + ([] if new is None else [(b"nval", new)])
    try:
        yield from rpc(s, b"cas", xt_params(params, None if new is None else _xt(expires)), db)
    except LogicalInconsistencyError:
        return False
    return True


def _xt(expires: int | None) -> int | None:
    """An absolute expiry (epoch seconds) as KT's xt parameter (negative: absolute)."""
    return None if expires is None else -expires


def settle(run: Run, src: str, dst: str, kb: bytes, db: Any) -> str:
    """Move ``kb`` from ``src`` to ``dst`` if ``src`` holds it (see the module docstring);
    :data:`MOVED`, :data:`SUPERSEDED` or :data:`ABSENT`.  Never removes anything from
    ``dst``; LogicalInconsistencyError when ``src`` kept changing ``SETTLE_TRIES`` times."""
    read, unsafe = OpClass.READ, OpClass.UNSAFE
    rec = run(read, src, lambda s: read_raw(s, kb, db))
    if rec is None:
        return ABSENT
    value, expires = rec
    copied = run(unsafe, dst, partial(_add, kb=kb, value=value, expires=expires, db=db))
    for _ in range(SETTLE_TRIES):
        if run(unsafe, src, partial(_cas, kb=kb, old=value, new=None, expires=None, db=db)):
            return MOVED if copied else SUPERSEDED
        rec = run(read, src, lambda s: read_raw(s, kb, db))
        if rec is None:  # another mover finished it (dst holds the value) or a client removed it
            return MOVED if copied else SUPERSEDED
        latest, expires = rec
        if copied:  # a prepare-phase client wrote src after our copy: carry its value over
            copied = run(unsafe, dst, partial(_cas, kb=kb, old=value, new=latest, expires=expires, db=db))
        value = latest
    raise LogicalInconsistencyError(f"{kb[:80]!r} kept changing on {src} while it was moved to {dst}")
