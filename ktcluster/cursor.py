"""``Cursor``: a server-side cursor (python-kyototycoon-ng's API) on its own connection.

KT keeps cursors per connection, so a cursor checks a connection out of the server's
pool on first use and keeps it until :meth:`Cursor.delete` (or :meth:`Cursor.close`,
the end of a ``with`` block, garbage collection): concurrent calls on the client
cannot move it.  If that connection fails (or the process forked), the server forgets
the position: the error propagates, and every later call other than jump/jump_back
raises :class:`~ktcluster.errors.KTConnectionError` (``request_sent=False``) until the
cursor is positioned again.  Requests and answers are :mod:`ktcluster.ops`' cursor
operations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

from . import ops
from .connection import Connection
from .errors import KTConnectionError, KyotoTycoonException
from .expiry import Expire
from .keys import DB
from .ops import Op, Session
from .pool import server_answered
from .transport import Transport

__all__ = ["Cursor"]

T = TypeVar("T")


class Cursor:
    """A server-side cursor; see the module docstring.  Made by ``KyotoTycoon.cursor()``."""

    def __init__(self, transport: Transport, session: Session) -> None:
        self._transport = transport
        self._session = session
        self._conn: Connection | None = None
        self._generation = 0
        self._ids = itertools.count(1)
        self.cursor_id = next(self._ids)
        self._db: Any = None

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.delete()
        else:
            self.close()

    def __del__(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            try:
                self._transport.pool.checkin(conn, discard=True)  # closing it frees the server's cursor
            except Exception:  # noqa: BLE001 - nothing can be reported from a finalizer (e.g. at exit)
                pass

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair of DB 0 from the first record on, in the DB's order."""
        return self.items()

    def items(self, db: DB = 0) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair of database ``db`` from its first record on, in the DB's
        order (iterating the cursor does this for DB 0)."""
        if not self.jump(db=db):
            return
        while True:
            key, value = self.get()
            if key is None:
                return
            yield key, value
            if not self.step():
                return

    def _run(self, op: Op[T], *, positioning: bool = False) -> T:
        """``op`` on the cursor's connection (checked out now when positioning)."""
        conn = self._held(positioning) or self._hold(self._transport.pool.checkout())
        try:
            result = self._transport.run_on(conn, op)
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        self._generation = conn.generation
        return result

    # The steps around a call's I/O, shared with ktcluster.aio's cursor.

    def _held(self, positioning: bool) -> Any:
        """The connection holding the server's cursor; None when a positioning call must
        check one out; KTConnectionError when the position was lost."""
        conn = self._conn
        if conn is not None and (conn.broken or conn.generation != self._generation):
            self._release(discard=True)
            if not positioning:
                raise KTConnectionError("the cursor's connection was lost with its position; jump() again",
                                        request_sent=False)
            return None
        if conn is None and self._generation and not positioning:
            raise KTConnectionError("the cursor is not positioned (its connection was released); jump() first",
                                    request_sent=False)
        return conn

    def _hold(self, conn: Any) -> Any:
        self._conn = conn
        return conn

    def _failed(self, conn: Any, exc: BaseException) -> None:
        """A call failed: a server's answer keeps the connection (and position), anything else drops it."""
        if server_answered(exc):
            self._generation = conn.generation
        else:
            self._release(discard=True)

    def _deleted(self, exc: BaseException | None) -> bool:
        """After cur_delete (``exc``: how it failed): the connection goes back (discarded unless
        the server answered); True, or ``exc`` raised when it is not a ktcluster error."""
        self._release(discard=exc is not None and not server_answered(exc))
        self._generation = 0
        if exc is not None and not isinstance(exc, KyotoTycoonException):
            raise exc
        return True

    def _release(self, *, discard: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport.pool.checkin(conn, discard=discard)

    def _jump(self, procedure: bytes, key: Any, db: DB) -> bool:
        if self._db is not None and self._db != db and self._conn is not None:
            # The server binds a cursor to the DB it was created on: use a fresh one.
            self.cursor_id = next(self._ids)
        self._db = db
        return self._run(ops.cursor_move(self._session, procedure, self.cursor_id, key, db), positioning=True)

    def jump(self, key: Any = None, db: DB = 0) -> bool:
        """Position on ``key`` (None: the first record); False when there is no such record
        (tree DBs: no record at or after it).  ``db`` selects the database."""
        return self._jump(b"cur_jump", key, db)

    def jump_back(self, key: Any = None, db: DB = 0) -> bool:
        """Position on ``key`` (None: the last record) for a backward scan; tree DBs only
        (hash DBs raise NoImplementationError).  False when there is no such record."""
        return self._jump(b"cur_jump_back", key, db)

    def step(self) -> bool:
        """Move to the next record; False past the last one."""
        return self._run(ops.cursor_move(self._session, b"cur_step", self.cursor_id))

    def step_back(self) -> bool:
        """Move to the previous record (tree DBs only); False before the first one."""
        return self._run(ops.cursor_move(self._session, b"cur_step_back", self.cursor_id))

    def set_value(self, value: Any, step: bool = False, expire: Expire = None) -> bool:
        """Overwrite the current record's value (then move on with ``step``).  True;
        LogicalInconsistencyError when the cursor is not on a record.  ``expire=KEEP``
        is not supported here."""
        return self._run(ops.cursor_set_value(self._session, self.cursor_id, value, step, expire))

    def remove(self) -> bool:
        """Remove the current record (the cursor moves to the next one).  True;
        LogicalInconsistencyError when the cursor is not on a record."""
        self._run(ops.cursor_call(self._session, b"cur_remove", self.cursor_id, []))
        return True

    def get_key(self, step: bool = False) -> Any:
        """The current record's key (str or bytes, per the client's ``decode_keys``)."""
        return self._run(ops.cursor_get_key(self._session, self.cursor_id, step))

    def get_value(self, step: bool = False) -> Any:
        """The current record's unpacked value."""
        return self._run(ops.cursor_get_value(self._session, self.cursor_id, step))

    def get(self, step: bool = False) -> tuple[Any, Any]:
        """``(key, value)`` of the current record, or ``(None, None)`` when the cursor is
        not on a record (what ng meant: it tested for 404, but KT answers 450)."""
        record = self.get_with_expiry(step)
        return (None, None) if record is None else record[:2]

    def get_with_expiry(self, step: bool = False) -> tuple[Any, Any, int | None] | None:
        """``(key, value, expires)`` of the current record, ``expires`` as for
        :meth:`KyotoTycoon.get_with_expiry <ktcluster.client.KyotoTycoon.get_with_expiry>`;
        None when the cursor is not on a record."""
        return self._run(ops.cursor_get(self._session, self.cursor_id, step))

    def seize(self) -> dict[str, Any]:
        """Read and remove the current record: ``{"key": ..., "value": ...}``."""
        return self._run(ops.cursor_seize(self._session, self.cursor_id))

    def delete(self) -> bool:
        """Delete the server-side cursor and give the connection back to the pool."""
        conn = self._conn
        if conn is None:
            self._generation = 0
            return True
        try:
            if not conn.broken and conn.generation == self._generation:
                self._transport.run_on(conn, ops.cursor_call(self._session, b"cur_delete", self.cursor_id, []))
        except BaseException as exc:
            return self._deleted(exc)  # the cursor is gone either way
        return self._deleted(None)

    def close(self) -> None:
        """Release the cursor's connection without talking to the server (closing the
        connection frees the server-side cursor)."""
        self._release(discard=True)
        self._generation = 0
