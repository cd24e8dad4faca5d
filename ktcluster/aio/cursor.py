"""``ktcluster.aio`` cursors: a server-side cursor on its own connection, awaited.

:class:`AsyncCursor` is :class:`ktcluster.cursor.Cursor` with ``await`` (and ``async
for``/``async with``): the same methods, arguments, results and errors, and the same
rules -- it checks a connection out of the server's pool on first use and keeps it until
``delete()``/``close()``; a lost connection loses the position (KTConnectionError until
the next jump).  Each method is the blocking one (its operation of :mod:`ktcluster.ops`
and its docstring); what happens around the call's I/O is the blocking cursor's own
steps (``_held``, ``_failed``, ``_deleted``).  A call cancelled at any await drops the
connection (and the position), as any failure that is not a server's answer does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

from .. import cursor as _blocking
from .. import ops
from ..keys import DB
from ..ops import Op
from .client import _awaiting
from .transport import AsyncTransport

__all__ = ["AsyncCursor"]

T = TypeVar("T")

_Cursor = _blocking.Cursor


class AsyncCursor(_Cursor):
    """A server-side cursor for asyncio; made by ``ktcluster.aio.KyotoTycoon.cursor()``."""

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            await self.delete()
        else:
            self.close()

    def __aiter__(self) -> AsyncIterator[tuple[Any, Any]]:
        """Every (key, value) pair of DB 0 from the first record on."""
        return self.items()

    async def items(self, db: DB = 0) -> AsyncIterator[tuple[Any, Any]]:  # type: ignore[override]
        """Every (key, value) pair of database ``db`` from its first record on, in its order."""
        if not await self.jump(db=db):
            return
        while True:
            key, value = await self.get()
            if key is None:
                return
            yield key, value
            if not await self.step():
                return

    def _run(self, op: Op[T], *, positioning: bool = False) -> Op[T]:  # type: ignore[override]
        """The blocking methods' last step: here the operation comes back to be awaited."""
        return op

    async def _carry(self, op: Op[T], *, positioning: bool = False) -> T:
        transport: AsyncTransport = self._transport  # type: ignore[assignment]
        conn = self._held(positioning) or self._hold(await transport.pool.checkout())
        try:
            result = await transport.run_on(conn, op)
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        self._generation = conn.generation
        return result

    async def get(self, step: bool = False) -> tuple[Any, Any]:  # type: ignore[override]
        record = await self.get_with_expiry(step)
        return (None, None) if record is None else record[:2]

    async def remove(self) -> bool:  # type: ignore[override]
        await self._carry(ops.cursor_call(self._session, b"cur_remove", self.cursor_id, []))
        return True

    async def delete(self) -> bool:  # type: ignore[override]
        conn: Any = self._conn
        if conn is None:
            self._generation = 0
            return True
        try:
            if not conn.broken and conn.generation == self._generation:
                transport: AsyncTransport = self._transport  # type: ignore[assignment]
                await transport.run_on(conn, ops.cursor_call(self._session, b"cur_delete", self.cursor_id, []))
        except BaseException as exc:
            return self._deleted(exc)  # the cursor is gone either way
        return self._deleted(None)

    get.__doc__ = _Cursor.get.__doc__
    remove.__doc__ = _Cursor.remove.__doc__
    delete.__doc__ = _Cursor.delete.__doc__

    jump = _awaiting(_Cursor.jump, positioning=True)  # type: ignore[assignment]
    jump_back = _awaiting(_Cursor.jump_back, positioning=True)  # type: ignore[assignment]
    step = _awaiting(_Cursor.step)  # type: ignore[assignment]
    step_back = _awaiting(_Cursor.step_back)  # type: ignore[assignment]
    set_value = _awaiting(_Cursor.set_value)  # type: ignore[assignment]
    get_key = _awaiting(_Cursor.get_key)
    get_value = _awaiting(_Cursor.get_value)
    get_with_expiry = _awaiting(_Cursor.get_with_expiry)  # type: ignore[assignment]
    seize = _awaiting(_Cursor.seize)  # type: ignore[assignment]
