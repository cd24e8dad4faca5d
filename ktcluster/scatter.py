"""Scatter-gather: every node's share of a bulk call in flight at once, from the caller.

:func:`scatter` takes, per node, a transport and a list of operations (a bulk call's
chunks for that node, run in order) and drives them all from the caller's thread or
greenlet, spawning nothing: it sends every node's first request, waits (one ``poll``)
for whichever connections have an answer, reads those, and sends each such node's next
request.  The servers work in parallel while the caller reads, so a call lasts about as
long as its slowest node -- as with a thread or greenlet per node, without their cost
(a spawn, its switches and garbage, or a thread hop) -- and a slow node delays no
other node's chunks.

A node with several chunks may have up to ``lanes`` of them in flight at once, each on
a connection of its own (KT serves each connection with its own worker), so that one
big bulk call keeps a server's workers busy instead of waiting for each reply before
sending the next chunk.  A lane beyond a node's first is opened only when its pool has
a connection free at once (and nobody waits for one): it never delays other callers.

Contract:

* One attempt per chunk.  A node whose chunk fails hands out no more chunks (those in
  flight on its other lanes finish); :func:`scatter` reports its first error and the
  chunks not done, and the caller decides what to retry (the cluster retries them
  under its policy).
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
  its result or error; bytes from its connection's counters), and so is a wait for a
  node's pool that gave up (its first chunk's, with the time waited).
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

__all__ = ["scatter", "Failure", "Work"]

#: a node's work: its transport, one operation factory per chunk, how many lanes at most
Work = tuple[Transport, Sequence[Callable[[], Op[Any]]], int]
#: a node that stopped: (its first error, the indices of the chunks not done, in order)
Failure = tuple[Exception, list[int]]

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class _Node:
    """One node's share: the chunks not yet handed out, the results, the first error."""

    __slots__ = ("name", "transport", "ops", "lanes", "next", "results", "error", "undone", "observed")

    def __init__(self, name: str, work: Work, observed: Sequence[Observed] | None = None) -> None:
        self.name = name
        self.observed = observed
        self.transport, self.ops, self.lanes = work
        self.next = 0
        self.results: dict[int, Any] = {}
        self.error: Exception | None = None
        self.undone: list[int] = []

    def take(self) -> int | None:
        """The next chunk to send, or None (none left, or the node failed)."""
        if self.error is not None or self.next >= len(self.ops):
            return None
        self.next += 1
        return self.next - 1

    def fail(self, index: int, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self.undone.append(index)

    def failure(self) -> Failure | None:
        if self.error is None:
            return None
        return self.error, sorted(self.undone + list(range(self.next, len(self.ops))))


class _Lane:
    """One connection of a node: the chunk in flight on it."""

    __slots__ = ("node", "index", "op", "conn", "request", "sent", "attempt")

    def __init__(self, node: _Node, conn: Connection) -> None:
        self.node = node
        self.attempt: Attempt | None = None
        self.index = -1
        self.op: Op[Any] | None = None
        self.conn = conn
        self.request: Request | None = None
        self.sent: Sent = (None, False)

    def send(self, request: Request, deadline: Deadline) -> None:
        self.request = request
        self.sent = self.node.transport.start(self.conn, request, deadline)

    def begin(self, deadline: Deadline) -> bool:
        """Start the node's next chunk on this lane: False when none is left."""
        node = self.node
        while (index := node.take()) is not None:
            self.index = index
            op = self.op = node.ops[index]()
            try:
                request = op.send(None)
            except StopIteration as done:  # an operation that needs no request
                node.results[index] = done.value
                continue
            if node.observed is not None:
                self.attempt = node.observed[index].attempt(node.name, node.transport.address, 0)
                self.attempt.using(self.conn)
            self.send(request, deadline)
            return True
        return False

    def advance(self, deadline: Deadline) -> bool:
        """Read the answer in flight and go on: False when this lane is done."""
        answer = self.node.transport.finish(self.conn, self.request, self.sent)  # type: ignore[arg-type]
        try:
            request = self.op.send(answer)  # type: ignore[union-attr]
        except StopIteration as done:
            self.node.results[self.index] = done.value
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
        conn, self.conn = self.conn, None  # type: ignore[assignment]
        if conn is not None:
            self.node.transport.pool.checkin(conn, discard=discard)


def scatter(work: Mapping[str, Work], deadline: Deadline, observed: Mapping[str, Sequence[Observed]] | None = None
            ) -> tuple[dict[str, dict[int, Any]], dict[str, Failure]]:
    """Run every node's operations (``work``: node -> (transport, one operation factory
    per chunk, lanes at most)), all nodes at once; see the module docstring.  Returns
    each node's results by chunk index (of the chunks done) and the failures."""
    nodes = [_Node(name, w, None if observed is None else observed[name]) for name, w in work.items()]
    run = _Run(deadline)
    try:
        pending = nodes
        while pending:
            pending = run.round(pending)
    except BaseException:
        for lane in run.lanes:
            lane.release(discard=True)
        raise
    failures = {}
    for node in nodes:
        failure = node.failure()
        if failure is not None:
            failures[node.name] = failure
    return {node.name: node.results for node in nodes}, failures


class _Run:
    """The state of one :func:`scatter`: its deadline, every lane it opened, the lanes
    waiting for an answer (by descriptor)."""

    __slots__ = ("deadline", "lanes", "active")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.lanes: list[_Lane] = []
        self.active: dict[int, _Lane] = {}

    def round(self, pending: list[_Node]) -> list[_Node]:
        """Run to their end the nodes of ``pending`` that get a connection without waiting
        -- the first one waits for its own if need be, when nothing else is held -- and
        return the others."""
        later = []
        first = len(self.lanes)  # a lane is listed as soon as it holds a connection (see scatter)
        for node in pending:
            conn = node.transport.pool.try_checkout()
            if conn is None:
                if node is not pending[0]:
                    later.append(node)
                    continue
                waiting = None if node.observed is None else node.observed[0].attempt(
                    node.name, node.transport.address, 0)
                if waiting is not None:
                    waiting.waiting()
                try:
                    conn = node.transport.checkout(self.deadline)
                except Exception as exc:
                    node.error = exc
                    if waiting is not None:  # observed: a wait for the pool that gave up
                        waiting.done(exc)
                    continue
            self.lanes.append(_Lane(node, conn))
            for _ in range(min(node.lanes, len(node.ops)) - 1):  # more lanes, if free at once
                conn = node.transport.pool.try_checkout()
                if conn is None:
                    break
                self.lanes.append(_Lane(node, conn))
        for lane in self.lanes[first:]:
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
                self.active[lane.conn.fileno()] = lane
                return
        except Exception as exc:
            conn = lane.conn
            if lane.attempt is not None:
                lane.ended(exc)
            lane.release(discard=conn is None or conn.broken)
            lane.node.fail(lane.index, exc)
            return
        lane.release(discard=False)


def _ready(active: dict[int, _Lane]) -> list[int]:
    """The descriptors of ``active`` with an answer to read, or whose wait is over (their
    read then raises the timeout): one ``poll``, until the earliest end of a wait.  A lone
    lane needs none: its read waits for the answer until the same end."""
    if len(active) == 1:
        return list(active)
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
