"""A bounded, blocking, fair pool of :class:`~ktcluster.connection.Connection` to one server.

Semantics (redis-py's ``BlockingConnectionPool``, made fair and interruption-safe):

* At most ``size`` connections exist (idle + in use).  ``checkout`` reuses the most
  recently returned idle connection (LIFO, so surplus ones age out), creates a new
  one while below ``size``, and otherwise waits up to ``pool_timeout`` seconds before
  raising :class:`~ktcluster.errors.PoolTimeoutError` (nothing was sent; it means
  local congestion, not a slow server).
* Waiting is first come, first served: a connection coming back goes straight to the
  caller that has waited longest (a caller returning a connection cannot take it
  back ahead of callers already waiting), and a freed slot is granted the same way.
  No caller waits past its ``pool_timeout`` (plus the scheduler's latency).
* At checkout an idle connection is closed and replaced when it idled longer than
  ``idle_timeout`` or is older than ``max_lifetime``, or when a liveness probe (one
  zero-timeout ``poll``, :meth:`Connection.is_alive
  <ktcluster.connection.Connection.is_alive>`) finds that the server closed it
  meanwhile -- after a server restart every idle connection is such a stale one.
  By default every reused connection is probed (``check_idle_after=0``; the probe
  costs about half a microsecond, 1-2% of a loopback round trip).
* A connection comes back through ``checkin``.  It is discarded instead of being
  pooled when it is broken, when the caller says so, or when the pool was closed
  (or the process forked) while it was out.  ``with pool.connection() as conn:``
  discards it on every exception except a complete server answer (a KT error
  status such as 450, after which the stream is in sync).

Interruption (``gevent.Timeout``, ``GreenletExit``, ``KeyboardInterrupt``...) never
corrupts the pool.  The lock guards short bookkeeping only -- nothing in it blocks or
does I/O -- so under gevent it is never contended and taking it never switches
greenlets; the only blocking point is a waiter's own wait, and a waiter interrupted
there gives back whatever it was granted meanwhile.  As a backstop, a connection
lost while checked out (its holder dropped it without ``checkin``) frees its slot
when it is garbage collected.  The invariant: once every caller has returned or
died, ``in_use == 0``.

Fork safety: in a child process (``os.fork``, gunicorn ``--preload``,
multiprocessing's fork start method) every connection inherited from the parent
is marked broken and forgotten, so the child opens its own sockets and never reads
an answer meant for the parent.  The parent is untouched.

The lock and the waiters' events come from ``threading`` when the pool is created,
so a pool created after ``gevent.monkey.patch_all()`` blocks greenlets, not threads.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Literal, overload

from . import forksafe
from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Connection
from .errors import KyotoTycoonException, PoolTimeoutError

_monotonic = time.monotonic

__all__ = ["ConnectionPool", "PoolStats", "DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT", "server_answered"]

DEFAULT_POOL_SIZE = 16
DEFAULT_POOL_TIMEOUT = 10.0


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters (times in seconds)."""

    in_use: int
    idle: int
    created: int
    discarded: int
    checkouts: int
    wait_time_total: float
    wait_time_max: float
    #: callers waiting for a connection right now
    waiting: int = 0
    #: checkouts that gave up waiting (``pool_timeout`` passed, or the caller was interrupted)
    timeouts: int = 0


def server_answered(exc: BaseException) -> bool:
    """True for an error the server stated in a complete answer (it carries a status code):
    the connection's stream is in sync, so it may be reused."""
    return isinstance(exc, KyotoTycoonException) and exc.code is not None


class _Lease:
    """``with pool.connection() as conn``: check out on entry, check in (or discard) on exit."""

    __slots__ = ("_pool", "_timeout", "_conn")

    def __init__(self, pool: ConnectionPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        self._conn = self._pool.checkout(self._timeout)
        return self._conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.checkin(conn, discard=exc is not None and not server_answered(exc))


class _Waiter:
    """One caller waiting for a connection.  ``grant`` becomes the connection handed to it
    (already counted as in use: from then on it owns it); ``wake`` is released once."""

    __slots__ = ("wake", "grant", "gone")

    def __init__(self, wake: Any) -> None:
        self.wake = wake
        self.grant: Connection | None = None
        self.gone = False  # gave up (timed out or interrupted): pass it over


class _Tracker(weakref.ref):
    """A weak reference to one of the pool's connections: while ``out`` it is checked out,
    and if it dies so (its holder lost it) the pool gets the slot back."""

    __slots__ = ("key", "out")

    key: int
    out: bool


class ConnectionPool:
    """Bounded pool of connections to ``host:port``; see the module docstring.

    ``connect_timeout`` and ``timeout`` are passed to each Connection;
    ``idle_timeout``/``max_lifetime`` (None: no limit) retire connections at
    checkout; ``check_idle_after`` is the idle time after which a connection is
    probed before reuse (0: always, the default; None: never probe).
    """

    #: what the pool holds (the asyncio pool holds ktcluster.aio.connection.AsyncConnection)
    connection_type: Any = Connection

    def __init__(self, host: str, port: int, *, size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 timeout: float | None = DEFAULT_TIMEOUT, idle_timeout: float | None = 300.0,
                 max_lifetime: float | None = 3600.0, check_idle_after: float | None = 0.0,
                 socket_module: ModuleType | None = None) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.host = host
        self.port = int(port)
        self.size = size
        self.pool_timeout = pool_timeout
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.check_idle_after = check_idle_after
        self.socket_module = socket_module
        self._lock_type = threading.Lock
        self._lock = self._lock_type()
        self._idle: list[Connection] = []
        self._out = 0                                # connections checked out (granted included)
        self._trackers: dict[int, _Tracker] = {}     # id(conn) -> tracker, every live connection
        self._lost: deque[_Tracker] = deque()        # died while checked out; reclaimed under the lock
        self._waiters: deque[_Waiter] = deque()
        self._waiting = 0
        self._created = 0
        self._discarded = 0
        self._checkouts = 0
        self._timeouts = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        forksafe.register(self)

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.address} size={self.size} in_use={self._out} idle={len(self._idle)}>"

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"

    # -- checkout ---------------------------------------------------------------------------------

    def checkout(self, timeout: float | None = None) -> Connection:
        """A connection for exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default: the pool's ``pool_timeout``; None waits
        forever) for one to become free, first come first served."""
        timeout, give_up = self._give_up(timeout)  # before the caller may queue: it may raise
        while True:
            claim = self._claim(True)
            conn, reused = self._wait(claim, timeout, give_up) if isinstance(claim, _Waiter) else claim
            if not reused or self._vetted(conn):
                return conn

    # The steps of a checkout that every front end shares (the asyncio pool,
    # ktcluster.aio.pool, awaits its waiter instead of blocking on it).

    def _give_up(self, timeout: float | None) -> tuple[float | None, float | None]:
        """The wait's limit (the pool's by default) and the instant it ends (None: never)."""
        if timeout is None:
            timeout = self.pool_timeout
        return timeout, None if timeout is None else _monotonic() + timeout

    def try_checkout(self) -> Connection | None:
        """A connection if one is free now (or may be created now), else None: never
        waits, and never passes a caller already waiting."""
        while True:
            claim = self._claim(False)
            if claim is None:
                return None
            conn, reused = claim
            if not reused or self._vetted(conn):
                return conn

    @overload
    def _claim(self, queue: Literal[True]) -> tuple[Connection, bool] | _Waiter: ...
    @overload
    def _claim(self, queue: Literal[False]) -> tuple[Connection, bool] | None: ...

    def _claim(self, queue: bool) -> tuple[Connection, bool] | _Waiter | None:
        """``(connection, reused)`` when one is free (or may be created) and nobody waits;
        else the caller's place in the queue (``queue``) or None."""
        with self._lock:
            if self._lost:
                self._reclaim_lost()
            if not self._waiting:               # else others were first
                if self._idle:
                    conn = self._idle.pop()
                    self._trackers[id(conn)].out = True
                    self._out += 1
                    self._checkouts += 1
                    return conn, True
                if self._out < self.size:
                    self._checkouts += 1
                    return self._new_connection(), False
            if not queue:
                return None
            self._checkouts += 1
            return self._enqueue()

    def _vetted(self, conn: Connection) -> bool:
        """True when ``conn``, reused from the pool, may be handed out; otherwise it is
        discarded (the caller claims again).  Checked outside the lock: a broken, idle for
        too long or too old connection is not handed out, nor one that :meth:`Connection.is_alive
        <ktcluster.connection.Connection.is_alive>` finds closed (after ``check_idle_after``)."""
        try:
            usable = not conn.broken
            if usable and conn.connected:
                now = _monotonic()
                idle = now - conn.last_used
                if self.idle_timeout is not None and idle > self.idle_timeout:
                    usable = False
                elif self.max_lifetime is not None and now - conn.created_at > self.max_lifetime:
                    usable = False
                elif self.check_idle_after is not None and idle >= self.check_idle_after:
                    usable = conn.is_alive()
        except BaseException:
            self.checkin(conn, discard=True)
            raise
        if not usable:
            self.checkin(conn, discard=True)
        return usable

    def _enqueue(self) -> _Waiter:
        waiter = _Waiter(self._wake())
        self._waiters.append(waiter)
        self._waiting += 1
        return waiter

    def _wake(self) -> Any:
        """What a waiter blocks on until ``release()``: a held lock."""
        wake = self._lock_type()
        wake.acquire()
        return wake

    def _wait(self, waiter: _Waiter, timeout: float | None, give_up: float | None) -> tuple[Connection, bool]:
        """Block until ``waiter`` is granted a connection; see checkout."""
        started = _monotonic()
        try:
            if give_up is None:
                waiter.wake.acquire()
            else:
                waiter.wake.acquire(True, max(0.0, give_up - _monotonic()))
        except BaseException:  # interrupted: give back a grant that raced in, else leave the queue
            self._interrupted(waiter, started)
            raise
        return self._granted(waiter, started, timeout)

    def _interrupted(self, waiter: _Waiter, started: float) -> None:
        """A waiter was interrupted: it gives back a grant that raced in, else leaves the queue."""
        conn = self._settle(waiter, started)
        if conn is not None:
            self.checkin(conn)

    def _granted(self, waiter: _Waiter, started: float, timeout: float | None) -> tuple[Connection, bool]:
        """A wait ended: the waiter's ``(connection, reused)``, or PoolTimeoutError."""
        conn = self._settle(waiter, started)
        if conn is None:
            raise PoolTimeoutError(f"no connection to {self.address} became free within {timeout:g} s "
                                   f"({self.size} in use)")
        return conn, conn.connected

    def _settle(self, waiter: _Waiter, started: float) -> Connection | None:
        """The waiter's grant, or None after marking it gone (it is then passed over)."""
        with self._lock:
            waited = _monotonic() - started
            self._wait_total += waited
            if waited > self._wait_max:
                self._wait_max = waited
            conn = waiter.grant
            if conn is None:
                waiter.gone = True
                self._waiting -= 1
                self._timeouts += 1
            return conn

    def _new_connection(self) -> Connection:
        """A new connection, counted as checked out (call with the lock held)."""
        conn = self.connection_type(self.host, self.port, connect_timeout=self.connect_timeout, timeout=self.timeout,
                          socket_module=self.socket_module)
        tracker = _Tracker(conn, self._on_connection_gone)
        tracker.key = id(conn)
        tracker.out = True
        self._trackers[tracker.key] = tracker
        self._out += 1
        self._created += 1
        return conn

    # -- checkin ----------------------------------------------------------------------------------

    def checkin(self, conn: Connection, *, discard: bool = False) -> None:
        """Return a connection.  It is closed instead of pooled when ``discard`` is set,
        when it is broken, or when the pool was closed since it was checked out."""
        close = True
        with self._lock:
            if self._lost:
                self._reclaim_lost()
            tracker = self._trackers.get(id(conn))
            if tracker is not None and tracker.out:
                if discard or conn.broken:
                    del self._trackers[tracker.key]
                    self._discarded += 1
                    self._release_slot()
                else:            # healthy: to the longest waiter, else back to the pool
                    close = False
                    waiter = self._next_waiter() if self._waiters else None
                    if waiter is not None:
                        waiter.grant = conn          # stays checked out: the waiter owns it now
                        waiter.wake.release()
                    else:
                        tracker.out = False
                        self._out -= 1
                        self._idle.append(conn)
        if close:
            conn.close()

    def _release_slot(self) -> None:
        """A checked-out connection is gone: grant a new one to the longest waiter (lock held)."""
        self._out -= 1
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.grant = self._new_connection()
            waiter.wake.release()

    def _next_waiter(self) -> _Waiter | None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.gone:
                self._waiting -= 1
                return waiter
        return None

    def _on_connection_gone(self, tracker: _Tracker) -> None:
        """Weakref callback (any thread, any moment, maybe with the lock held): only queue."""
        self._lost.append(tracker)

    def _reclaim_lost(self) -> None:
        """Free the slots of connections that died checked out (lock held)."""
        while self._lost:
            tracker = self._lost.popleft()
            if self._trackers.get(tracker.key) is tracker:
                del self._trackers[tracker.key]
                if tracker.out:
                    self._discarded += 1
                    self._release_slot()

    # -- the rest ---------------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _Lease:
        """``with pool.connection() as conn:`` -- see the module docstring for when the
        connection is discarded rather than returned."""
        return _Lease(self, timeout)

    def stats(self) -> PoolStats:
        """Current counters."""
        with self._lock:
            if self._lost:
                self._reclaim_lost()
            return PoolStats(self._out, len(self._idle), self._created, self._discarded, self._checkouts,
                             self._wait_total, self._wait_max, self._waiting, self._timeouts)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back.
        The pool stays usable: later checkouts open new connections."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._forget_checked_out()
            for conn in idle:
                self._trackers.pop(id(conn), None)
            self._discarded += len(idle)
        for conn in idle:
            conn.close()

    def _forget_checked_out(self) -> None:
        """Stop counting the connections now out: each is closed when it comes back, and
        their slots go to waiters now (lock held)."""
        out = [t for t in self._trackers.values() if t.out]
        for tracker in out:
            del self._trackers[tracker.key]
            self._discarded += 1
        self._out -= len(out)
        for _ in range(min(len(self._waiters), self.size - self._out)):
            waiter = self._next_waiter()
            if waiter is None:
                break
            waiter.grant = self._new_connection()
            waiter.wake.release()

    def _after_fork_in_child(self) -> None:
        """In a forked child: every connection belongs to the parent.  Break them all (the
        child's holders see a broken connection, never the parent's answers) and start
        empty.  The sockets are left to the garbage collector: closing the child's copy
        of a descriptor does not affect the parent."""
        self._lock = self._lock_type()
        for tracker in list(self._trackers.values()):
            conn = tracker()
            if conn is not None:
                conn.broken = True
        self._trackers = {}
        self._idle = []
        self._lost = deque()
        self._waiters = deque()
        self._waiting = 0
        self._out = 0
