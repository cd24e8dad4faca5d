"""The observer interface and the events it receives.

An :class:`Observer` is given to a client (``Cluster(..., observer=...)``, the same keyword
on :class:`~ktcluster.client.KyotoTycoon`, :class:`~ktcluster.replication.KyotoSlave` and
:class:`~ktcluster.replication.ReplicationStream`).  Its methods are called in the thread or
greenlet of the work they describe, synchronously and without a lock held: they must be
quick and must not block (no I/O -- an asyncio front end calls them from its event loop).
An observer that raises is logged (``ktcluster.observe``) and otherwise ignored: observing
never changes what a call does.

Events:

* :class:`Call` -- one call of the client's API (``cluster.get``, ``get_bulk``...):
  ``call_started`` / ``call_ended`` bracket it.  A bulk call's shards are :meth:`Call.shard`
  children (their ``parent`` is the call) carrying their own record counts.
* :class:`Attempt` -- one attempt of a call on one node: the first try, each retry
  (``retry`` counts them) and a failover to a partner are each one event, with the
  node, the operation, its class, the records, the bytes sent and received, the time
  spent, the wait for a pooled connection and the outcome (``"ok"``, ``"error"`` with
  the error's class name, or ``"unknown"``: a non-idempotent write that may or may not
  have been applied).  A breaker that fails fast is an attempt too (``NodeDownError``).
* :class:`BreakerChange`, :class:`PoolExhausted` (a wait for a pooled connection gave
  up), :class:`ReplicationLag` (how far behind a master's log a consumer reads) and
  :class:`Exclusion` (a replication stream stops or starts waiting for an idle master).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DeadlineExceeded, PoolTimeoutError

if TYPE_CHECKING:  # at run time retry (and tenacity) load only when an attempt fails
    from ..retry import OpClass

__all__ = ["Observer", "Call", "Attempt", "BreakerChange", "PoolExhausted", "ReplicationLag", "Exclusion",
           "Tee", "observed", "notify", "OK", "ERROR", "UNKNOWN"]

T = TypeVar("T")
log = logging.getLogger("ktcluster.observe")
_clock = time.perf_counter

#: an attempt's outcomes
OK, ERROR, UNKNOWN = "ok", "error", "unknown"


class Observer:
    """Receives the events of the clients it is given to; override the methods you need
    (each one does nothing here).  See the module docstring for the rules."""

    def call_started(self, call: Call) -> None:
        """A call begins (before its first attempt)."""

    def call_ended(self, call: Call, error: BaseException | None) -> None:
        """A call ends, with the error it raises (None: it succeeded)."""

    def attempt(self, event: Attempt) -> None:
        """An attempt on a node ended."""

    def breaker(self, event: BreakerChange) -> None:
        """A node's circuit breaker changed state."""

    def pool_exhausted(self, event: PoolExhausted) -> None:
        """A wait for a pooled connection gave up (every connection stayed busy)."""

    def replication_lag(self, event: ReplicationLag) -> None:
        """A replication consumer received a batch (or a heartbeat) from a master."""

    def exclusion(self, event: Exclusion) -> None:
        """A replication stream stopped (or started again) waiting for an idle master."""


def notify(method: Callable[..., None], event: Any, *more: Any) -> None:
    """Call an observer's ``method(event, *more)``; its failure is logged, not raised."""
    try:
        method(event, *more)
    except Exception:
        log.exception("observer method %s failed", getattr(method, "__qualname__", method))


def observed(observer: Observer | None, operation: str, op_class: OpClass, records: int,
             run: Callable[[Call | None], T]) -> T:
    """``run(call)``: with an observer, ``call`` is a new :class:`Call` bracketed by
    ``call_started``/``call_ended``; without one, ``run(None)`` and nothing else."""
    if observer is None:
        return run(None)
    call = Call(observer, operation, op_class, records).begin()
    try:
        result = run(call)
    except BaseException as exc:
        call.end(exc)
        raise
    call.end(None)
    return result


class Call:
    """One call of a client's API: ``operation`` (the method's name), its retry class,
    the records it carries, and ``marks``, where observers keep their own state for it
    (a trace span...).  A shard (:meth:`shard`) has the call as ``parent``."""

    __slots__ = ("observer", "operation", "op_class", "records", "parent", "started", "marks")

    def __init__(self, observer: Observer, operation: str, op_class: OpClass, records: int = 1,
                 parent: Call | None = None) -> None:
        self.observer = observer
        self.operation = operation
        self.op_class = op_class
        self.records = records
        self.parent = parent
        self.started = _clock()
        self.marks: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"<Call {self.operation} records={self.records}{' shard' if self.parent else ''}>"

    @property
    def root(self) -> Call:
        """The API call this is (a shard's parent)."""
        return self.parent if self.parent is not None else self

    def shard(self, records: int) -> Call:
        """The part of this call that one node's request carries (``records`` of them)."""
        return Call(self.observer, self.operation, self.op_class, records, self)

    def begin(self) -> Call:
        notify(self.observer.call_started, self)
        return self

    def end(self, error: BaseException | None) -> None:
        notify(self.observer.call_ended, self, error)

    def attempt(self, node: str, address: str, retry: int) -> Attempt:
        """A new attempt of this call on ``node`` (its clock starts now)."""
        return Attempt(self, node, address, retry)


class Attempt:
    """One attempt of a call on one node; see the module docstring.  Times are seconds
    (``started`` is a ``time.perf_counter()`` value, ``wall`` the same instant as
    ``time.time()``); the transport adds ``pool_wait``, ``sent`` and ``received`` as it
    goes (:meth:`waiting`, :meth:`using`, :meth:`used`), :meth:`done` the rest."""

    __slots__ = ("call", "node", "address", "retry", "started", "wall", "duration", "pool_wait", "requests",
                 "sent", "received", "outcome", "error", "exception", "_mark")

    def __init__(self, call: Call, node: str, address: str, retry: int) -> None:
        self.call = call
        self.node = node
        self.address = address
        self.retry = retry
        self.wall = time.time()
        self.duration = self.pool_wait = 0.0
        self.requests = self.sent = self.received = 0
        self.outcome = OK
        self.error: str | None = None
        self.exception: BaseException | None = None
        self._mark = 0.0
        self.started = _clock()

    def __repr__(self) -> str:
        return (f"<Attempt {self.operation} {self.node} retry={self.retry} {self.outcome}"
                f"{'' if self.error is None else ' ' + self.error} {self.duration * 1e3:.3f} ms>")

    @property
    def operation(self) -> str:
        return self.call.operation

    @property
    def op_class(self) -> OpClass:
        return self.call.op_class

    @property
    def records(self) -> int:
        return self.call.records

    # -- what the transport reports -------------------------------------------------------------------

    def waiting(self) -> None:
        """A wait for a pooled connection starts."""
        self._mark = _clock()

    def using(self, conn: Any) -> None:
        """The wait ended (if one began) with ``conn``: count from its byte counters."""
        if self._mark:
            self.pool_wait += _clock() - self._mark
            self._mark = 0.0
        self.requests += 1
        self.sent -= conn.sent
        self.received -= conn.received

    def used(self, conn: Any) -> None:
        """The request on ``conn`` is done (answered or failed)."""
        self.sent += conn.sent
        self.received += conn.received

    # -- the end ------------------------------------------------------------------------------------

    def measure(self, run: Callable[[], T]) -> T:
        """``run()``, this attempt ending with it (:meth:`done`)."""
        try:
            result = run()
        except BaseException as exc:
            self.done(exc)
            raise
        self.done(None)
        return result

    def done(self, exc: BaseException | None) -> None:
        """The attempt ended (``exc``: its error): fill in the outcome and tell the observer."""
        now = _clock()
        self.duration = now - self.started
        observer = self.call.observer
        if exc is not None:
            from ..retry import outcome_unknown

            self.exception = exc
            self.error = type(exc).__name__
            self.outcome = UNKNOWN if outcome_unknown(exc, self.call.op_class) else ERROR
            if self._mark:  # the wait for the pool is what failed
                waited = now - self._mark
                self.pool_wait += waited
                if _pool_gave_up(exc):
                    notify(observer.pool_exhausted, PoolExhausted(self.node, self.address, waited, exc))
        notify(observer.attempt, self)


def _pool_gave_up(exc: BaseException) -> bool:
    return isinstance(exc, PoolTimeoutError) or (isinstance(exc, DeadlineExceeded)
                                                 and isinstance(exc.__cause__, PoolTimeoutError))


class BreakerChange:
    """Node ``node``'s breaker went from ``old`` to ``new`` (``"closed"``, ``"open"``,
    ``"half-open"``); ``error`` opened it (None otherwise)."""

    __slots__ = ("node", "old", "new", "error")

    def __init__(self, node: str, old: str, new: str, error: BaseException | None) -> None:
        self.node, self.old, self.new, self.error = node, old, new, error

    def __repr__(self) -> str:
        return f"<BreakerChange {self.node} {self.old} -> {self.new}>"


class PoolExhausted:
    """A caller waited ``waited`` seconds for a connection to ``node`` and gave up."""

    __slots__ = ("node", "address", "waited", "error")

    def __init__(self, node: str, address: str, waited: float, error: BaseException) -> None:
        self.node, self.address, self.waited, self.error = node, address, waited, error

    def __repr__(self) -> str:
        return f"<PoolExhausted {self.node} after {self.waited:.3f} s>"


class ReplicationLag:
    """A batch from master ``node`` reached ``ts`` (KT's nanosecond timestamps): ``lag`` is
    how many seconds that is behind this machine's clock (never below zero; clock skew
    between the hosts adds to it)."""

    __slots__ = ("node", "ts", "lag")

    def __init__(self, node: str, ts: int) -> None:
        self.node = node
        self.ts = ts
        self.lag = max(0.0, time.time() - ts / 1e9)

    def __repr__(self) -> str:
        return f"<ReplicationLag {self.node} {self.lag:.3f} s>"


class Exclusion:
    """A replication stream stopped waiting for master ``node`` (``excluded``: it sent
    nothing for its ``idle_timeout``) or orders the stream again (``excluded`` False)."""

    __slots__ = ("node", "excluded")

    def __init__(self, node: str, excluded: bool) -> None:
        self.node, self.excluded = node, excluded

    def __repr__(self) -> str:
        return f"<Exclusion {self.node} {'excluded' if self.excluded else 'back'}>"


class Tee(Observer):
    """Several observers as one: each event goes to each of them, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def __repr__(self) -> str:
        return f"Tee{self.observers!r}"

    def _each(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            notify(getattr(observer, method), *args)

    def call_started(self, call: Call) -> None:
        self._each("call_started", call)

    def call_ended(self, call: Call, error: BaseException | None) -> None:
        self._each("call_ended", call, error)

    def attempt(self, event: Attempt) -> None:
        self._each("attempt", event)

    def breaker(self, event: BreakerChange) -> None:
        self._each("breaker", event)

    def pool_exhausted(self, event: PoolExhausted) -> None:
        self._each("pool_exhausted", event)

    def replication_lag(self, event: ReplicationLag) -> None:
        self._each("replication_lag", event)

    def exclusion(self, event: Exclusion) -> None:
        self._each("exclusion", event)
