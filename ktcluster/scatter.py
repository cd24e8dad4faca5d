"""Scatter-gather: every node's share of a bulk call in flight at once, from the caller.

:func:`scatter` takes, per node, a transport and a list of operations (a bulk call's
chunks for that node, run in order) and drives them all from the caller's thread or
greenlet, spawning nothing: it sends every node's first request, waits (one ``poll``)
for whichever connections have an answer, reads those, and sends each such node's next
request.  The servers work in parallel while the caller reads, so a call lasts about as
long as its slowest node -- as with a thread or greenlet per node, without their cost
(a spawn, its switches and garbage, or a thread hop) -- and a slow node delays no
other node's chunks.

Contract:

* One attempt per chunk.  A node whose chunk fails stops there; :func:`scatter`
  reports its error and the index of the chunk that failed, and the caller decides what
  to retry (the cluster retries the rest of that node's chunks under its policy).
  An error raised by the operation itself (the server answered; the reply was read
  whole) leaves the connection pooled, a transport error discards it.
* Connections come from each node's pool and go back to it when the node is done.
  :func:`scatter` never waits for one while it holds another: it would hold that one
  idle (a slow node's busy pool would then stall the fast nodes' pools), and two such
  callers could each wait for what the other holds.  So it works in rounds: the nodes
  whose pool has a connection free start at once; if none has, it waits for the first
  node's pool, holding nothing; the nodes left over go in the next round.  If the caller is interrupted
  (``gevent.Timeout``, ``KeyboardInterrupt``...), every connection it holds is
  discarded: none carries a half-read reply back into the pool.
* Every wait ends by the deadline and by each exchange's own limit: a node that has not
  answered by then fails with the error its connection raises for that wait
  (:class:`~ktcluster.errors.DeadlineExceeded` or
  :class:`~ktcluster.errors.SocketTimeoutError`).
* With ``observed`` (node -> one observed call per chunk, :mod:`ktcluster.observe`) each
  chunk sent is an :class:`~ktcluster.observe.Attempt` event (from its first request to
  its result or error; bytes from its connection's counters).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .connection import Connection, Sent
from .deadline import Deadline
from .observe.events import Attempt
from .observe.events import Call as Observed
from .ops import Binary, Op, Request
from .transport import Transport

__all__ = ["scatter", "Failure"]

#: a node that stopped: (index of the chunk that failed, its error)
Failure = tuple[int, Exception]

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class _Lane:
    """One node's work: its chunks' operations, the one in flight, its connection."""

    __slots__ = ("node", "transport", "ops", "index", "op", "conn", "request", "sent", "results", "observed",
                 "attempt")

    def __init__(self, node: str, transport: Transport, ops: Sequence[Callable[[], Op[Any]]],
                 observed: Sequence[Observed] | None = None) -> None:
        self.node = node
        self.observed = observed
        self.attempt: Attempt | None = None
        self.transport = transport
        self.ops = ops
        self.index = 0
        self.op: Op[Any] | None = None
        self.conn: Connection | None = None
        self.request: Request | None = None
        self.sent: Sent = (None, False)
        self.results: list[Any] = []

    def send(self, request: Request, deadline: Deadline) -> None:
        self.request = request
        self.sent = self.transport.start(self.conn, request, deadline)  # type: ignore[arg-type]

    def begin(self, deadline: Deadline) -> bool:
        """Start the next chunk: False when none is left."""
        while self.index < len(self.ops):
            op = self.op = self.ops[self.index]()
            try:
                request = op.send(None)
            except StopIteration as done:  # an operation that needs no request
                self.results.append(done.value)
                self.index += 1
                continue
            if self.observed is not None:
                self.attempt = self.observed[self.index].attempt(self.node, self.transport.address, 0)
                self.attempt.using(self.conn)
            self.send(request, deadline)
            return True
        return False

    def advance(self, deadline: Deadline) -> bool:
        """Read the answer in flight and go on: False when this node is done."""
        answer = self.transport.finish(self.conn, self.request, self.sent)  # type: ignore[arg-type]
        try:
            request = self.op.send(answer)  # type: ignore[union-attr]
        except StopIteration as done:
            self.results.append(done.value)
            self.index += 1
            if self.attempt is not None:
                self.ended(None)
            return self.begin(deadline)
        self.send(request, deadline)
        return True

    def ended(self, exc: Exception | None) -> None:
        """The observed chunk in flight is done (``exc``: how it failed)."""
        attempt, self.attempt = self.attempt, None
        attempt.used(self.conn)  # type: ignore[union-attr]
        attempt.done(exc)  # type: ignore[union-attr]

    def release(self, discard: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.transport.pool.checkin(conn, discard=discard)


def scatter(work: Mapping[str, tuple[Transport, Sequence[Callable[[], Op[Any]]]]], deadline: Deadline,
            observed: Mapping[str, Sequence[Observed]] | None = None
            ) -> tuple[dict[str, list[Any]], dict[str, Failure]]:
    """Run every node's operations (``work``: node -> (transport, operation factories)),
    in order per node, all nodes at once; see the module docstring.  Returns each
    node's results (of the chunks done, in order) and the failures (node -> (index of
    the failed chunk, error))."""
    lanes = [_Lane(node, transport, ops, None if observed is None else observed[node])
             for node, (transport, ops) in work.items()]
    run = _Run(deadline)
    try:
        pending = lanes
        while pending:
            pending = run.round(pending)
    except BaseException:
        for lane in lanes:
            lane.release(discard=True)
        raise
    return {lane.node: lane.results for lane in lanes}, run.failures


class _Run:
    """The state of one :func:`scatter`: its deadline, the failures, the lanes in flight
    (by descriptor)."""

    __slots__ = ("deadline", "failures", "active")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.failures: dict[str, Failure] = {}
        self.active: dict[int, _Lane] = {}

    def round(self, pending: list[_Lane]) -> list[_Lane]:
        """Run to their end the lanes of ``pending`` that get a connection without waiting
        -- the first one waits for its own if need be, when nothing else is held -- and
        return the others."""
        later = []
        for lane in pending:
            lane.conn = lane.transport.pool.try_checkout()
            if lane.conn is None:
                if lane is not pending[0]:
                    later.append(lane)
                    continue
                try:
                    lane.conn = lane.transport.checkout(self.deadline)
                except Exception as exc:
                    self.failures[lane.node] = (0, exc)
                    continue
        for lane in pending:
            if lane.conn is not None:
                self.step(lane, lane.begin)
        active = self.active
        while active:
            for fd in _ready(active):
                lane = active.pop(fd)
                self.step(lane, lane.advance)
        return later

    def step(self, lane: _Lane, action: Callable[[Deadline], bool]) -> None:
        """Run ``action`` on ``lane``; keep it active while it has an answer to wait for."""
        try:
            busy = action(self.deadline)
            while busy and type(lane.request) is Binary and lane.request.noreply:  # nothing to wait for
                busy = lane.advance(self.deadline)
            if busy:
                self.active[lane.conn.fileno()] = lane  # type: ignore[union-attr]
                return
        except Exception as exc:
            conn = lane.conn
            if lane.attempt is not None:
                lane.ended(exc)
            lane.release(discard=conn is None or conn.broken)
            self.failures[lane.node] = (lane.index, exc)
            return
        lane.release(discard=False)


def _ready(active: dict[int, _Lane]) -> list[int]:
    """The descriptors of ``active`` with an answer to read, or whose wait is over (their
    read then raises the timeout): one ``poll``, until the earliest end of a wait."""
    now = time.monotonic()
    ends = [lane.sent[0] for lane in active.values() if lane.sent[0] is not None]
    end = min(ends) if ends else None
    if end is None or end > now:
        poller = select.poll()
        for fd in active:
            poller.register(fd, _READABLE)
        ready = [fd for fd, _ in poller.poll(None if end is None else int((end - now) * 1000) + 1)]
        if ready:
            return ready
        now = time.monotonic()
    return [fd for fd, lane in active.items() if lane.sent[0] is not None and lane.sent[0] <= now]
