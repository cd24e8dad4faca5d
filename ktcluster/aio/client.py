"""``ktcluster.aio.KyotoTycoon``: the client for one KT server, for asyncio.

    async with KyotoTycoon(pack_type=KT_PACKER_BYTES).connect("127.0.0.1", 1978) as kt:
        await kt.set("a", b"1")
        value = await kt.get("a")

The same class as :class:`ktcluster.KyotoTycoon` with ``await``: the same constructor,
``open``/``connect``, views (``with_options``, ``with_protocol``), method names,
arguments, defaults, results and errors -- each method *is* the blocking one (it builds
the same operation of :mod:`ktcluster.ops`, with the same checks, and its docstring is
that method's); only the I/O differs: the operation is carried by an
:class:`~ktcluster.aio.transport.AsyncTransport`, whose pool lets many tasks share
one client.

Limits: ``open``'s ``timeout`` bounds each exchange and ``with_options(deadline=...)``
the whole call, as in the blocking client; an enclosing ``asyncio.timeout`` (or a
task's cancellation) works too, at any await, and leaves the pool consistent (see
:mod:`ktcluster.aio.connection`).  ``cursor()`` returns an
:class:`~ktcluster.aio.cursor.AsyncCursor`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .. import client as _blocking
from .. import ops
from ..client import ClientCore
from ..errors import ArgumentError
from ..ops import Operation
from .transport import AsyncTransport

if TYPE_CHECKING:
    from .cursor import AsyncCursor

__all__ = ["KyotoTycoon"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def _awaiting(method: Callable[Concatenate[Any, P], R], **carry: Any
              ) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """A blocking ``method`` (of the client, or of a cursor) as a coroutine: the method
    builds its operation and hands it to ``_run``, which here hands it back to be carried
    with ``await`` (``self._carry(op, **carry)``)."""

    @functools.wraps(method)
    async def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._carry(method(self, *args, **kwargs), **carry)

    return call


class KyotoTycoon(ClientCore[AsyncTransport]):
    """Client for one KT server, for asyncio; see the module docstring and
    :class:`ktcluster.KyotoTycoon` for the arguments."""

    def __init__(self, *args: Any, **options: Any) -> None:
        if options.get("observer") is not None:
            raise ArgumentError("ktcluster.aio does not take an observer yet (docs/observability.md)")
        super().__init__(*args, **options)

    async def __aenter__(self) -> KyotoTycoon:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def _new_transport(self, host: str, port: int, timeout: float | None) -> AsyncTransport:
        return AsyncTransport(host, port, timeout=timeout, **self._pool_options)  # type: ignore[arg-type]

    def _run(self, op: Operation[T], operation: str | None = None) -> Operation[T]:
        """The blocking methods' last step: here the operation comes back to :func:`_awaiting`
        (not observed: ``operation`` is not needed)."""
        return op

    async def _carry(self, op: Operation[T]) -> T:
        """Carry ``op`` to the server under this view's limits."""
        transport = self._transport or self.transport
        if self._extra is None:
            return await transport.run(op)
        return await transport.run(op, *self._limits())

    async def signal(self, name: str | bytes, *, broadcast: bool = False) -> int:
        """Wake one (``broadcast``: every) task waiting on condition ``name``; returns how
        many were waiting (a signal nobody waits for is lost)."""
        view = self.with_options(signal=name, signal_broadcast=broadcast)
        await view._carry(ops.void(view._session))
        return view.signaled or 0

    def cursor(self) -> AsyncCursor:
        """A new cursor (it takes a connection from the pool on first use and keeps it
        until ``await delete()``/``close()``, the end of an ``async with`` block, or garbage
        collection)."""
        from .cursor import AsyncCursor

        self._session.http_only("cursor")
        return AsyncCursor(self.transport, self._session.derive(options=()))  # type: ignore[arg-type]

    async def wait(self, name: str | bytes, timeout: float = 30.0) -> None:
        """Wait until condition ``name`` is signalled, or raise
        :class:`~ktcluster.errors.SignalTimeoutError` after ``timeout`` seconds."""
        view = self.with_options(wait=name, wait_time=timeout)
        await view._carry(ops.void(view._session))

    _KT = _blocking.KyotoTycoon
    report = _awaiting(_KT.report)
    status = _awaiting(_KT.status)
    count = _awaiting(_KT.count)
    size = _awaiting(_KT.size)
    clear = _awaiting(_KT.clear)
    vacuum = _awaiting(_KT.vacuum)
    synchronize = _awaiting(_KT.synchronize)
    get = _awaiting(_KT.get)
    get_with_expiry = _awaiting(_KT.get_with_expiry)
    get_int = _awaiting(_KT.get_int)
    check = _awaiting(_KT.check)
    seize = _awaiting(_KT.seize)
    set = _awaiting(_KT.set)
    add = _awaiting(_KT.add)
    replace = _awaiting(_KT.replace)
    append = _awaiting(_KT.append)
    touch = _awaiting(_KT.touch)
    increment = _awaiting(_KT.increment)
    increment_double = _awaiting(_KT.increment_double)
    cas = _awaiting(_KT.cas)
    remove = _awaiting(_KT.remove)
    set_bulk = _awaiting(_KT.set_bulk)
    remove_bulk = _awaiting(_KT.remove_bulk)
    get_bulk = _awaiting(_KT.get_bulk)
    match_prefix = _awaiting(_KT.match_prefix)
    match_regex = _awaiting(_KT.match_regex)
    match_similar = _awaiting(_KT.match_similar)
    play_script = _awaiting(_KT.play_script)
    del _KT
