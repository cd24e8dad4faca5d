"""One server as an asyncio client reaches it: its pool, and requests carried under a deadline.

:class:`AsyncTransport` is :class:`ktcluster.transport.Transport` with ``await``: the
same pool bookkeeping, the same deadline rules for the wait for a connection
(:class:`~ktcluster.transport.TransportBase`), the same operations of
:mod:`ktcluster.ops` driven to their results.

* :meth:`AsyncTransport.exchange` sends one request on a pooled connection and returns
  the answer.  A connection that failed in any way -- cancelled included, whatever
  await the cancellation hit -- is discarded, never pooled again; one that answered
  goes back to the pool before the caller resumes (no await in between).
* :meth:`AsyncTransport.run` drives an operation (a generator of requests) to its
  result, every request through :meth:`exchange`; :meth:`AsyncTransport.run_on` on a
  connection the caller holds.
* :meth:`AsyncTransport.probe` checks that the server answers, on a fresh connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..connection import OWN, Limit
from ..deadline import NO_DEADLINE, Deadline
from ..errors import PoolTimeoutError
from ..ops import Http, Op, Operation, Request, Session, steps, void
from ..transport import TransportBase
from .connection import AsyncConnection
from .pool import AsyncConnectionPool

__all__ = ["AsyncTransport"]

T = TypeVar("T")


class AsyncTransport(TransportBase):
    """The way to one server ``host:port`` from an event loop; see the module docstring
    (the arguments are :class:`~ktcluster.transport.Transport`'s)."""

    __slots__ = ()

    pool_type = AsyncConnectionPool
    pool: AsyncConnectionPool

    async def checkout(self, deadline: Deadline = NO_DEADLINE) -> AsyncConnection:
        """A pooled connection, waiting at most ``pool_timeout`` and the deadline."""
        pool = self.pool
        if not deadline:
            return await pool.checkout()
        wait, bound = self.pool_wait(deadline)
        try:
            return await pool.checkout(wait)
        except PoolTimeoutError as exc:
            err = self.pool_timed_out(exc, bound)
            if err is exc:
                raise
            raise err from exc

    async def send(self, conn: AsyncConnection, request: Request, deadline: Deadline = NO_DEADLINE,
                   timeout: Limit = OWN) -> Any:
        """One request on ``conn`` (which breaks it on any failure midway)."""
        if type(request) is Http:
            return await conn.request_http(request.data, head=request.head, deadline=deadline,
                                           max_size=self.max_reply_size, timeout=timeout)
        return await conn.request_binary(request.data, request.decode,  # type: ignore[union-attr]
                                         noreply=request.noreply,  # type: ignore[union-attr]
                                         deadline=deadline, max_size=self.max_reply_size, timeout=timeout)

    async def exchange(self, request: Request, deadline: Deadline = NO_DEADLINE, timeout: Limit = OWN) -> Any:
        """One request on a pooled connection: its answer (see the module docstring)."""
        pool = self.pool
        conn = await self.checkout(deadline)
        try:
            answer = await self.send(conn, request, deadline, timeout)
        except BaseException:
            pool.checkin(conn, discard=True)  # type: ignore[arg-type]
            raise
        pool.checkin(conn)  # type: ignore[arg-type]
        return answer

    async def run(self, op: Operation[T], deadline: Deadline = NO_DEADLINE, timeout: Limit = OWN,
                  attempt: None = None) -> T:
        """Drive ``op`` to its result, each request on a pooled connection (``attempt``: the
        blocking transport's observed attempt; ktcluster.aio is not observed yet)."""
        return await _drive(op, lambda request: self.exchange(request, deadline, timeout))

    async def run_on(self, conn: AsyncConnection, op: Op[T], deadline: Deadline = NO_DEADLINE) -> T:
        """Drive ``op`` to its result on ``conn`` (held by the caller)."""
        return await _drive(op, lambda request: self.send(conn, request, deadline))

    async def probe(self, session: Session, deadline: Deadline = NO_DEADLINE, timeout: float | None = 1.0) -> None:
        """Raise unless the server answers ``void`` on a fresh connection (pooled ones may be
        stale) within ``timeout`` and the deadline."""
        pool = self.pool
        conn = AsyncConnection(pool.host, pool.port, connect_timeout=pool.connect_timeout, timeout=timeout)
        try:
            await self.run_on(conn, void(session), deadline)
        finally:
            conn.close()


async def _drive(op: Operation[T], answer: Callable[[Request], Awaitable[Any]]) -> T:
    """Send ``op``'s requests through ``answer`` until it returns its result."""
    op = steps(op)
    try:
        request = op.send(None)
        while True:
            request = op.send(await answer(request))
    except StopIteration as done:
        return done.value
