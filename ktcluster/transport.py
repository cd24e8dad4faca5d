"""One server as the client reaches it: its pool, and requests carried under a deadline.

A :class:`Transport` owns the :class:`~ktcluster.pool.ConnectionPool` to one server and
what is known about that server (the DB name -> index map the binary protocol needs),
shared by every client view of it.

* :meth:`Transport.exchange` sends one request of :mod:`ktcluster.ops`
  (:class:`~ktcluster.ops.Http` or :class:`~ktcluster.ops.Binary`) on a pooled
  connection and returns the answer.  The call's :class:`~ktcluster.deadline.Deadline`
  caps the wait for a connection, the connect and the whole exchange; a wait it cuts
  short is :class:`~ktcluster.errors.DeadlineExceeded`.  A connection that failed in
  any way (even interrupted) is discarded, never pooled again.
* :meth:`Transport.run` drives an operation (a generator of requests, see
  :mod:`ktcluster.ops`) to its result, every request through :meth:`exchange`.
* :meth:`Transport.run_on` does the same on a connection the caller holds (a cursor's).
* :meth:`Transport.start` and :meth:`Transport.finish` are :meth:`send`'s two halves, for
  a caller with requests in flight on several connections at once (:mod:`ktcluster.scatter`).
* :meth:`Transport.probe` checks that the server answers, on a fresh connection.

``exchange`` and ``run`` take an optional ``attempt`` (an
:class:`~ktcluster.observe.Attempt` event, passed down explicitly by whoever observes
the call): each exchange adds its wait for the pool and the bytes it moved to it.
Without one (None) nothing is measured.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, TypeVar

from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE, OWN, Connection, Limit, Sent
from .deadline import NO_DEADLINE, Deadline
from .errors import DeadlineExceeded, KyotoTycoonException, PoolTimeoutError
from .observe.events import Attempt
from .ops import Binary, Http, Op, Operation, Request, Session, void
from .pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, ConnectionPool, PoolStats

__all__ = ["Transport", "TransportBase"]

T = TypeVar("T")
_monotonic = time.monotonic


class TransportBase:
    """What every front end's transport shares: the pool, what is known about the server,
    and the deadline's rules for the wait for a connection.  ``pool_type`` is the pool
    class (:class:`Transport`'s blocks; :class:`ktcluster.aio.transport.AsyncTransport`'s
    awaits)."""

    __slots__ = ("pool", "host_header", "db_names", "max_reply_size")

    pool_type: type[ConnectionPool] = ConnectionPool

    def __init__(self, host: str, port: int, *, timeout: float | None = 30.0, size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT, idle_timeout: float | None = 300.0,
                 max_lifetime: float | None = 3600.0, max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
                 socket_module: ModuleType | None = None) -> None:
        self.pool = self.pool_type(host, port, size=size, pool_timeout=pool_timeout,
                                   connect_timeout=connect_timeout, timeout=timeout, idle_timeout=idle_timeout,
                                   max_lifetime=max_lifetime, socket_module=socket_module)
        self.host_header = self.pool.address.encode()
        #: the server's DB name -> index map (filled by ops.db_index)
        self.db_names: dict[bytes, int] = {}
        self.max_reply_size = max_reply_size

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pool.address}>"

    @property
    def address(self) -> str:
        return self.pool.address

    def stats(self) -> PoolStats:
        return self.pool.stats()

    def close(self) -> None:
        """Close the pooled connections (those in use close when they come back)."""
        self.pool.close()

    def pool_wait(self, deadline: Deadline) -> tuple[float | None, bool]:
        """The wait for a pooled connection under ``deadline``: ``(limit, bound)`` as
        :meth:`Deadline.cap <ktcluster.deadline.Deadline.cap>`; DeadlineExceeded when
        nothing is left."""
        wait, bound = deadline.cap(self.pool.pool_timeout)
        if wait is not None and wait <= 0:
            raise DeadlineExceeded("the call's deadline passed before it started", request_sent=False)
        return wait, bound

    @staticmethod
    def pool_timed_out(exc: PoolTimeoutError, bound: bool) -> KyotoTycoonException:
        """The error of a wait for a connection that timed out: the deadline's when it bound."""
        if not bound:
            return exc  # the pool's own limit fired
        return DeadlineExceeded(f"the call's deadline passed: {exc.message}", request_sent=False)


class Transport(TransportBase):
    """The way to one server ``host:port``; see the module docstring.

    ``timeout`` is each exchange's limit (None: none), ``max_reply_size`` the largest
    reply accepted; the other keywords are the pool's."""

    __slots__ = ()

    # -- requests ---------------------------------------------------------------------------------

    def checkout(self, deadline: Deadline = NO_DEADLINE) -> Connection:
        """A pooled connection, waiting at most ``pool_timeout`` and the deadline."""
        pool = self.pool
        if deadline.at is None:  # (not deadline.__bool__: a Python call less on the hot path)
            return pool.checkout()
        wait, bound = self.pool_wait(deadline)
        try:
            return pool.checkout(wait)
        except PoolTimeoutError as exc:
            err = self.pool_timed_out(exc, bound)
            if err is exc:
                raise
            raise err from exc

    def send(self, conn: Connection, request: Request, deadline: Deadline = NO_DEADLINE,
             timeout: Limit = OWN) -> Any:
        """One request on ``conn`` (which breaks it on any failure midway): :meth:`start`
        and :meth:`finish` in one."""
        return self.finish(conn, request, conn.send_request(request.data, deadline, timeout))

    def start(self, conn: Connection, request: Request, deadline: Deadline = NO_DEADLINE) -> Sent:
        """:meth:`send` in two halves: send ``request`` on ``conn``; :meth:`finish` reads
        its answer.  In between, ``conn.fileno()`` becomes readable when it arrives
        (a ``noreply`` request has no answer to wait for)."""
        return conn.send_request(request.data, deadline)

    def finish(self, conn: Connection, request: Request, sent: Sent) -> Any:
        """The answer to ``request``, which :meth:`start` sent on ``conn``."""
        if type(request) is Http:  # positional arguments: the hot path
            return conn.read_http(sent, request.head, self.max_reply_size)
        if request.noreply:  # type: ignore[union-attr]
            conn.last_used = _monotonic()
            return None
        return conn.read_reply(sent, request.decode, self.max_reply_size)  # type: ignore[union-attr]

    def exchange(self, request: Request, deadline: Deadline = NO_DEADLINE, timeout: Limit = OWN,
                 attempt: Attempt | None = None) -> Any:
        """One request on a pooled connection: its answer (see the module docstring)."""
        pool = self.pool
        if attempt is not None:
            attempt.waiting()
        conn = pool.checkout() if deadline.at is None else self.checkout(deadline)
        if attempt is not None:
            attempt.using(conn)
        try:
            answer = self.finish(conn, request, conn.send_request(request.data, deadline, timeout))  # send()
        except BaseException:
            pool.checkin(conn, discard=True)
            raise
        finally:
            if attempt is not None:
                attempt.used(conn)
        pool.checkin(conn)
        return answer

    def run(self, op: Operation[T], deadline: Deadline = NO_DEADLINE, timeout: Limit = OWN,
            attempt: Attempt | None = None) -> T:
        """Drive ``op`` to its result, each request on a pooled connection."""
        if type(op) is Binary:  # a one-request operation
            return self.exchange(op, deadline, timeout, attempt)
        exchange = self.exchange
        try:
            request = op.send(None)  # type: ignore[union-attr]
            while True:
                request = op.send(exchange(request, deadline, timeout, attempt))  # type: ignore[union-attr]
        except StopIteration as done:
            return done.value

    def run_on(self, conn: Connection, op: Op[T], deadline: Deadline = NO_DEADLINE) -> T:
        """Drive ``op`` to its result on ``conn`` (held by the caller)."""
        send = self.send
        try:
            request = op.send(None)
            while True:
                request = op.send(send(conn, request, deadline))
        except StopIteration as done:
            return done.value

    def probe(self, session: Session, deadline: Deadline = NO_DEADLINE, timeout: float | None = 1.0) -> None:
        """Raise unless the server answers ``void`` on a fresh connection (pooled ones may be
        stale) within ``timeout`` and the deadline."""
        pool = self.pool
        with Connection(pool.host, pool.port, connect_timeout=pool.connect_timeout, timeout=timeout,
                        socket_module=pool.socket_module) as conn:
            self.run_on(conn, void(session), deadline)
