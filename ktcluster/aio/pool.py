"""A bounded, fair pool of :class:`~ktcluster.aio.connection.AsyncConnection` for one event loop.

:class:`AsyncConnectionPool` is :class:`ktcluster.pool.ConnectionPool` with an
awaitable checkout: the same bookkeeping (it is inherited, not copied), so the same
semantics and invariants, which that module's docstring states -- at most ``size``
connections, LIFO reuse, first come first served waiting bounded by ``pool_timeout``
(:class:`~ktcluster.errors.PoolTimeoutError`), idle connections vetted before reuse,
broken or discarded ones never pooled again, fork safety.  A waiter waits on a future
instead of a lock.

Cancellation: a task cancelled while it waits (``asyncio.CancelledError``, an
enclosing ``asyncio.timeout``) leaves the queue, and gives back a connection that was
granted to it meanwhile, before the cancellation propagates; nothing else in a
checkout or a checkin awaits.  The invariant: once every task has returned or been
cancelled, ``in_use == 0``.

A pool serves the event loop that uses it (its futures and connections belong to that
loop): share a client between tasks, not between threads or loops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..pool import ConnectionPool, _Waiter
from .connection import AsyncConnection, _timeout

__all__ = ["AsyncConnectionPool"]


class _Wake:
    """A waiter's wake-up: ``release()`` (by whoever hands it a connection) resolves its future."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class AsyncConnectionPool(ConnectionPool):
    """Bounded pool of asyncio connections to ``host:port``; see the module docstring and
    :class:`~ktcluster.pool.ConnectionPool` for the arguments."""

    connection_type = AsyncConnection

    async def checkout(self, timeout: float | None = None) -> AsyncConnection:  # type: ignore[override]
        """A connection for exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default: the pool's ``pool_timeout``; None waits
        forever) for one to become free, first come first served."""
        timeout, give_up = self._give_up(timeout)  # before the caller may queue: it may raise
        while True:
            claim = self._claim(True)
            conn, reused = await self._await(claim, timeout, give_up) if isinstance(claim, _Waiter) else claim
            if not reused or self._vetted(conn):
                return conn  # type: ignore[return-value]

    def _wake(self) -> Any:
        return _Wake()

    async def _await(self, waiter: _Waiter, timeout: float | None, give_up: float | None) -> tuple[Any, bool]:
        """Wait until ``waiter`` is granted a connection; see checkout."""
        started = time.monotonic()
        try:
            # (not asyncio.wait_for: on 3.11 it swallows a cancellation that races a grant)
            async with _timeout(None if give_up is None else max(0.0, give_up - time.monotonic())):
                await waiter.wake.future
        except TimeoutError:
            pass  # the pool's limit fired: a grant may still have raced in (_granted tells)
        except BaseException:  # cancelled: give back a grant that raced in, else leave the queue
            self._interrupted(waiter, started)
            raise
        return self._granted(waiter, started, timeout)
