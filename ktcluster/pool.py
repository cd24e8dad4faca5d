"""A bounded, blocking pool of :class:`~ktcluster.connection.Connection` to one server.

Semantics follow redis-py's ``BlockingConnectionPool``:

* At most ``size`` connections exist (idle + in use).  ``checkout`` reuses the most
  recently returned idle connection (LIFO, so surplus ones age out), creates a new
  one while below ``size``, and otherwise waits up to ``pool_timeout`` seconds before
  raising :class:`~ktcluster.errors.PoolTimeoutError` (nothing was sent).
* At checkout an idle connection is closed and replaced when it idled longer than
  ``idle_timeout`` or is older than ``max_lifetime``, or when a liveness probe (one
  zero-timeout ``poll``, :meth:`Connection.is_alive
  <ktcluster.connection.Connection.is_alive>`) finds that the server closed it
  meanwhile -- after a server restart every idle connection is such a stale one.
  By default every reused connection is probed (``check_idle_after=0``; the probe
  costs about half a microsecond, 1-2% of a loopback round trip), so a stale
  connection is never handed out, and a request is never written into a socket
  already known to be closed.
* A connection comes back through ``checkin``.  It is discarded instead of being
  pooled when it is broken, when the caller says so, or when the pool was closed
  while it was out.  ``with pool.connection() as conn:`` discards it on every
  exception except a complete server answer (a KT error status such as 450, after
  which the stream is in sync).

Connections connect lazily, so creating one under the pool's lock is cheap.  The
lock is a ``threading.Condition`` created when the pool is, so a pool created after
``gevent.monkey.patch_all()`` blocks greenlets, not threads.  No thread-local state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import ModuleType, TracebackType

from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Connection
from .errors import KyotoTycoonException, PoolTimeoutError

_monotonic = time.monotonic

__all__ = ["ConnectionPool", "PoolStats", "DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT"]

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


def server_answered(exc: BaseException) -> bool:
    """True for an error the server stated in a complete answer (it carries a status code):
    the connection's stream is in sync, so it may be reused."""
    return isinstance(exc, KyotoTycoonException) and exc.code is not None


class ConnectionPool:
    """Bounded pool of connections to ``host:port``; see the module docstring.

    ``connect_timeout`` and ``timeout`` are passed to each Connection;
    ``idle_timeout``/``max_lifetime`` (None: no limit) retire connections at
    checkout; ``check_idle_after`` is the idle time after which a connection is
    probed before reuse (0: always, the default; None: never probe).
    """

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
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0
        self._idle: list[Connection] = []
        self._in_use: set[Connection] = set()
        self._created = 0
        self._discarded = 0
        self._checkouts = 0
        self._wait_total = 0.0
        self._wait_max = 0.0

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.address} size={self.size} in_use={len(self._in_use)} idle={len(self._idle)}>"

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"

    def _new_connection(self) -> Connection:
        self._created += 1
        return Connection(self.host, self.port, connect_timeout=self.connect_timeout, timeout=self.timeout,
                          socket_module=self.socket_module)

    def checkout(self, timeout: float | None = None) -> Connection:
        """A connection for exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default: the pool's ``pool_timeout``; None
        waits forever) for one to become free."""
        if timeout is None:
            timeout = self.pool_timeout
        while True:
            with self._lock:
                if self._idle:
                    conn = self._idle.pop()
                    reused = True
                elif len(self._in_use) < self.size:
                    conn = self._new_connection()
                    reused = False
                else:
                    conn, reused = self._wait_for_connection(timeout)
                self._in_use.add(conn)
                self._checkouts += 1
            if not reused or self._usable(conn):
                return conn
            self.checkin(conn, discard=True)

    def _wait_for_connection(self, timeout: float | None) -> tuple[Connection, bool]:
        """Called with the lock held when the pool is exhausted: wait for a checkin."""
        started = time.monotonic()
        self._waiters += 1
        try:
            while True:
                now = time.monotonic()
                remaining = None if timeout is None else started + timeout - now
                if remaining is not None and remaining <= 0:
                    self._record_wait(now - started)
                    raise PoolTimeoutError(
                        f"no connection to {self.address} became free within {timeout:g} s "
                        f"({self.size} in use)")
                self._cond.wait(remaining)
                if self._idle:
                    conn, reused = self._idle.pop(), True
                    break
                if len(self._in_use) < self.size:
                    conn, reused = self._new_connection(), False
                    break
        finally:
            self._waiters -= 1
        self._record_wait(time.monotonic() - started)
        return conn, reused

    def _record_wait(self, waited: float) -> None:
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited

    def _usable(self, conn: Connection) -> bool:
        """Checks an idle connection just taken from the pool (outside the lock)."""
        if conn.broken:
            return False
        if not conn.connected:
            return True
        now = _monotonic()
        idle = now - conn.last_used
        if self.idle_timeout is not None and idle > self.idle_timeout:
            return False
        if self.max_lifetime is not None and now - conn.created_at > self.max_lifetime:
            return False
        if self.check_idle_after is not None and idle >= self.check_idle_after:
            return conn.is_alive()
        return True

    def checkin(self, conn: Connection, *, discard: bool = False) -> None:
        """Return a connection.  It is closed instead of pooled when ``discard`` is set,
        when it is broken, or when the pool was closed since it was checked out."""
        with self._lock:
            if conn in self._in_use:
                self._in_use.remove(conn)
                if discard or conn.broken:
                    self._discarded += 1
                else:
                    self._idle.append(conn)
                    conn = None  # type: ignore[assignment]
                if self._waiters:
                    self._cond.notify()
        if conn is not None:
            conn.close()

    def connection(self, timeout: float | None = None) -> _Lease:
        """``with pool.connection() as conn:`` -- see the module docstring for when the
        connection is discarded rather than returned."""
        return _Lease(self, timeout)

    def stats(self) -> PoolStats:
        """Current counters."""
        with self._lock:
            return PoolStats(len(self._in_use), len(self._idle), self._created, self._discarded,
                             self._checkouts, self._wait_total, self._wait_max)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back.
        The pool stays usable: later checkouts open new connections."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._discarded += len(idle) + len(self._in_use)
            self._in_use = set()
            self._cond.notify_all()
        for conn in idle:
            conn.close()
