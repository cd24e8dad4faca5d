"""The Python half of the Lua ``kt`` module: what ktserver's myscript.cc does in C.

:mod:`ktcluster.server.scripting`'s ``kt.lua`` defines ``__kyototycoon__``
in Lua (argument checks, defaults, the classes, conversions of Lua values to strings);
:class:`KtHost` does the rest, one instance per Lua state: database and cursor
operations on :mod:`~ktcluster.server.db.storage` (the server's databases, and those a script opens with
``kt.DB``), the library functions of :mod:`.lib` (``pack``, ``codec``,
``regex``, ``mapdump``...), the log and the clock.  Every primitive receives Lua values
already converted by the Lua side (strings as bytes, numbers as int or float, None for
nil) and returns what the Lua function returns; a failed database operation returns the
failure value and records Kyoto Cabinet's error for ``db:error()``, as a TimedDB does per
thread.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ...protocol.kcnum import INT64MAX, INT64MIN, atof, atoi, atoix, cstr
from ..config import LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_SYSTEM
from ..db.storage import (
    DUPREC,
    INVALID,
    LOGIC,
    NOP,
    NOREC,
    REMOVE,
    XT_NONE,
    XTMAX,
    Cursor,
    Database,
    DBError,
    DBSpec,
    StorageError,
)
from ..state import ServerState
from . import lib
from .lib import c_int64

__all__ = ["KtHost", "PRIMITIVES", "lua_list", "lua_pairs"]

_U64 = (1 << 64) - 1
_NOREPOS = 3
_OWRITER, _OCREATE, _OTRUNCATE = 2, 4, 8
_MSET, _MADD, _MREPLACE, _MAPPEND = 0, 1, 2, 3
_LOG_KINDS = {b"info": LOG_INFO, b"system": LOG_SYSTEM, b"error": LOG_ERROR}

#: the names of the primitives the Lua side calls as ``P.name(...)``.
PRIMITIVES = (
    "expired", "log", "time", "sleep",
    "atoi", "atoix", "atof", "hash_murmur", "hash_fnv", "levdist", "pack", "unpack", "split", "codec", "bit",
    "strstr", "strfwm", "strbwm", "regex", "arraydump", "arrayload", "mapdump", "mapload",
    "new_db", "open", "close", "error", "describe", "get", "check", "set", "add", "replace", "append",
    "increment", "increment_double", "cas", "remove", "seize", "set_bulk", "remove_bulk", "get_bulk",
    "clear", "count", "size", "path", "status", "match_prefix", "match_regex", "match_similar",
    "accept", "accept_bulk", "iterate", "synchronize", "occupy", "merge",
    "cursor", "cur_jump", "cur_jump_back", "cur_step", "cur_step_back", "cur_get", "cur_get_key",
    "cur_get_value", "cur_set_value", "cur_remove", "cur_seize", "cur_accept", "cur_disable", "cur_describe",
)


def lua_list(table: Any, count: int) -> list[Any]:
    """The elements 1..count of a Lua array."""
    return [table[i] for i in range(1, count + 1)]


def lua_pairs(table: Any, count: int) -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a flat Lua array {k1, v1, k2, v2, ...} of ``count`` elements."""
    flat = lua_list(table, count)
    return list(zip(flat[::2], flat[1::2], strict=True))


# -- handles -------------------------------------------------------------------------------------


class _DB:
    """What a Lua DB object's ``db_ptr_`` holds: the database (None until a script's
    ``kt.DB`` is opened) and this Lua state's last error on it."""

    __slots__ = ("db", "owned", "code", "message")

    def __init__(self, db: Database | None = None, owned: bool = True) -> None:
        self.db = db
        self.owned = owned
        self.code = 0
        self.message = b"no error"


class _Cur:
    """What a Lua cursor's ``cur_ptr_`` holds."""

    __slots__ = ("handle", "cur")

    def __init__(self, handle: _DB) -> None:
        self.handle = handle
        self.cur: Cursor | None = handle.db.cursor() if handle.db is not None else None


def _succeeding(op: Callable[[Any], Any]) -> Callable[[Any], bool]:
    """``op`` answering True (when it does not raise)."""
    def run(target: Any) -> bool:
        op(target)
        return True

    return run


# -- the host ------------------------------------------------------------------------------------


class KtHost:
    """The primitives of one Lua state (see the module docstring).

    ``state`` is the server's :class:`~ktcluster.server.state.ServerState` (its
    ``dbs``, ``log`` and ``stopping``); ``table_from``
    makes a Lua table from a Python list (lupa's ``LuaRuntime.table_from``).  After the
    Lua side has run, :meth:`bind` receives its trampolines.  ``deadline`` (a
    ``time.monotonic()`` value or None) is the end of the running call; ``timed_out``
    tells that :meth:`expired` said so."""

    def __init__(self, state: ServerState, table_from: Callable[..., Any]) -> None:
        self._state = state
        self._table = table_from
        self._visit_full: Callable[..., Any] | None = None
        self._visit_empty: Callable[..., Any] | None = None
        self._file_process: Callable[..., Any] | None = None
        self.deadline: float | None = None
        self.timed_out = False

    def primitives(self) -> dict[bytes, Callable[..., Any]]:
        return {name.encode(): getattr(self, name) for name in PRIMITIVES}

    def bind(self, visit_full: Callable[..., Any], visit_empty: Callable[..., Any],
             file_process: Callable[..., Any]) -> None:
        self._visit_full = visit_full
        self._visit_empty = visit_empty
        self._file_process = file_process

    def server_handles(self) -> list[_DB]:
        return [_DB(db, owned=False) for db in self._state.dbs]

    # -- server, clock -----------------------------------------------------------------------

    def expired(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            return True
        return False

    def log(self, kind: bytes, message: bytes) -> None:
        text = cstr(message).decode("utf-8", "replace")
        self._state.log(_LOG_KINDS.get(cstr(kind).lower(), LOG_DEBUG), f"[SCRIPT]: {text}")

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> bool:
        """kt.sleep, cut short by the deadline (then True) or by the server stopping."""
        seconds = float(seconds)
        if not seconds > 0:
            time.sleep(0)
            return False
        if self.deadline is not None and self.deadline - time.monotonic() < seconds:
            self._state.stopping.wait(max(0.0, self.deadline - time.monotonic()))
            return self.expired()
        self._state.stopping.wait(min(seconds, threading.TIMEOUT_MAX))
        return False

    # -- module functions ------------------------------------------------------------------

    def atoi(self, text: bytes) -> int:
        return atoi(cstr(text))

    def atoix(self, text: bytes) -> int:
        return atoix(cstr(text))

    def atof(self, text: bytes) -> float:
        return atof(cstr(text))

    hash_murmur = staticmethod(lib.hash_murmur)
    hash_fnv = staticmethod(lib.hash_fnv)
    levdist = staticmethod(lib.levdist)
    codec = staticmethod(lib.codec)
    bit = staticmethod(lib.bit)
    strstr = staticmethod(lib.strstr)
    regex = staticmethod(lib.regex)

    def strfwm(self, text: bytes, pattern: bytes) -> bool:
        return cstr(text).startswith(cstr(pattern))

    def strbwm(self, text: bytes, pattern: bytes) -> bool:
        return cstr(text).endswith(cstr(pattern))

    def pack(self, fmt: bytes, table: Any, count: int) -> bytes:
        return lib.pack(fmt, lua_list(table, count))

    def unpack(self, fmt: bytes, data: bytes) -> Any:
        return self._table(lib.unpack(fmt, data))

    def split(self, data: bytes, delims: bytes | None) -> Any:
        return self._table(lib.split(data, delims))

    def arraydump(self, table: Any, count: int) -> bytes:
        return lib.arraydump(lua_list(table, count))

    def arrayload(self, data: bytes) -> Any:
        return self._table(lib.arrayload(data))

    def mapdump(self, table: Any, count: int) -> bytes:
        return lib.mapdump(lua_pairs(table, count))

    def mapload(self, data: bytes) -> Any:
        return self._table(lib.mapload(data))

    # -- databases -------------------------------------------------------------------------

    @staticmethod
    def _attempt(handle: _DB, target: Any, op: Callable[[Any], Any], fail: Any) -> Any:
        """``op(target)`` (the database or cursor of ``handle``); on a Kyoto Cabinet error,
        or when there is no target, record the error for ``db:error()`` and return ``fail``."""
        try:
            if target is None:
                raise DBError(INVALID, "not opened")
            return op(target)
        except DBError as exc:
            handle.code = exc.code
            handle.message = exc.message.encode()
            return fail

    def _run(self, handle: _DB, op: Callable[[Database], Any], fail: Any = False) -> Any:
        """``op(db)``, or ``fail`` with the error recorded."""
        return self._attempt(handle, handle.db, op, fail)

    def _ok(self, handle: _DB, op: Callable[[Database], Any]) -> bool:
        """``op(db)``: True, or False with the error recorded."""
        return self._attempt(handle, handle.db, _succeeding(op), False)

    def _visitor(self, visitor: Any, writable: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """A storage visitor pair calling the Lua visitor through the trampolines."""
        visit_full, visit_empty = self._visit_full, self._visit_empty
        assert visit_full is not None and visit_empty is not None

        def answer(result: Any, keep_xt: int) -> Any:
            if result is None or not writable:
                return NOP
            if result is False:
                return REMOVE
            value, xt = result if isinstance(result, tuple) else (result, None)
            return value, keep_xt if xt is None else c_int64(xt)

        def full(key: bytes, value: bytes, xt: int) -> Any:
            return answer(visit_full(visitor, key, value, min(xt, XTMAX)), -xt)

        def empty(key: bytes) -> Any:
            return answer(visit_empty(visitor, key), XT_NONE)

        return full, empty

    @staticmethod
    def _xt(xt: float | None) -> int:
        return XT_NONE if xt is None else c_int64(xt)

    def _processor(self, proc: Any) -> Callable[[str, int, int], bool]:
        file_process = self._file_process
        assert file_process is not None
        return lambda path, count, size: bool(file_process(proc, os.fsencode(path), count, size))

    def new_db(self) -> _DB:
        return _DB()

    def open(self, handle: _DB, path: bytes, mode: float) -> bool:
        """``kt.DB:open``: a database of the script's own (not logged, not the server's)."""
        mode = c_int64(mode) & 0xFFFFFFFF
        if handle.db is not None:
            handle.code, handle.message = INVALID, b"already opened"
            return False
        try:
            spec = DBSpec.parse(cstr(path).decode("utf-8", "surrogateescape"))
        except ValueError:
            handle.code, handle.message = INVALID, b"unknown database type"
            return False
        if spec.path not in (":", "*", "-", "+", "%") and not mode & _OCREATE and not os.path.exists(spec.path):
            handle.code, handle.message = _NOREPOS, b"no such file"
            return False
        try:
            db = Database(spec, writable=bool(mode & _OWRITER))
        except (StorageError, OSError) as exc:
            handle.code, handle.message = _NOREPOS, str(exc).encode()
            return False
        if mode & _OTRUNCATE and mode & _OWRITER:
            db.clear()
        handle.db = db
        handle.owned = True
        return True

    def close(self, handle: _DB) -> bool:
        if handle.db is not None and not handle.owned:
            handle.code, handle.message = INVALID, b"the server's databases stay open"
            return False

        def op(db: Database) -> bool:
            db.close()
            handle.db = None
            return True

        return self._run(handle, op)

    def error(self, handle: _DB) -> tuple[int, bytes]:
        return handle.code, handle.message

    def describe(self, handle: _DB) -> bytes:
        db = handle.db
        if db is None:
            return b"(nil): -1: -1"
        return b"%s: %d: %d" % (os.fsencode(db.path) or b"(nil)", db.count(), db.size())

    def get(self, handle: _DB, key: bytes) -> tuple[bytes, int] | None:
        def op(db: Database) -> tuple[bytes, int] | None:
            got = db.get(key)
            if got is None:
                raise DBError(NOREC, "no record")
            return got[0], min(got[1], XTMAX)

        return self._run(handle, op, None)

    def check(self, handle: _DB, key: bytes) -> int:
        def op(db: Database) -> int:
            got = db.check(key)
            if got is None:
                raise DBError(NOREC, "no record")
            return got[0]

        return self._run(handle, op, -1)

    def set(self, handle: _DB, key: bytes, value: bytes, xt: float | None) -> bool:
        return self._ok(handle, lambda db: db.set(key, value, self._xt(xt)))

    def add(self, handle: _DB, key: bytes, value: bytes, xt: float | None) -> bool:
        return self._ok(handle, lambda db: db.add(key, value, self._xt(xt)))

    def replace(self, handle: _DB, key: bytes, value: bytes, xt: float | None) -> bool:
        return self._ok(handle, lambda db: db.replace(key, value, self._xt(xt)))

    def append(self, handle: _DB, key: bytes, value: bytes, xt: float | None) -> bool:
        return self._ok(handle, lambda db: db.append(key, value, self._xt(xt)))

    def increment(self, handle: _DB, key: bytes, num: float, orig: float, xt: float | None) -> int | None:
        if isinstance(orig, float) and math.isinf(orig):
            start = INT64MAX if orig > 0 else INT64MIN
        else:
            start = c_int64(orig)
        return self._run(handle, lambda db: db.increment(key, c_int64(num), start, self._xt(xt)), None)

    def increment_double(self, handle: _DB, key: bytes, num: float, orig: float,
                         xt: float | None) -> float | None:
        return self._run(handle, lambda db: db.increment_double(key, float(num), float(orig), self._xt(xt)), None)

    def cas(self, handle: _DB, key: bytes, oval: bytes | None, nval: bytes | None, xt: float | None) -> bool:
        return self._ok(handle, lambda db: db.cas(key, oval, nval, self._xt(xt)))

    def remove(self, handle: _DB, key: bytes) -> bool:
        return self._ok(handle, lambda db: db.remove(key))

    def seize(self, handle: _DB, key: bytes) -> tuple[bytes, int] | None:
        def op(db: Database) -> tuple[bytes, int]:
            value, xt = db.seize(key)
            return value, min(xt, XTMAX)

        return self._run(handle, op, None)

    def set_bulk(self, handle: _DB, table: Any, count: int, xt: float | None, atomic: bool) -> int:
        records = sorted(dict(lua_pairs(table, count)).items())
        return self._run(handle, lambda db: db.set_bulk(records, self._xt(xt), atomic), -1)

    def remove_bulk(self, handle: _DB, table: Any, count: int, atomic: bool) -> int:
        keys = lua_list(table, count)
        return self._run(handle, lambda db: db.remove_bulk(keys, atomic), -1)

    def get_bulk(self, handle: _DB, table: Any, count: int, atomic: bool) -> Any:
        keys = lua_list(table, count)

        def op(db: Database) -> Any:
            found = db.get_bulk(keys, atomic)
            return self._table([part for item in sorted(found.items()) for part in item])

        return self._run(handle, op, None)

    def clear(self, handle: _DB) -> bool:
        return self._ok(handle, lambda db: db.clear())

    def count(self, handle: _DB) -> int:
        return self._run(handle, lambda db: db.count(), -1)

    def size(self, handle: _DB) -> int:
        return self._run(handle, lambda db: db.size(), -1)

    def path(self, handle: _DB) -> bytes | None:
        db = handle.db
        return (os.fsencode(db.path) or None) if db is not None else None

    def status(self, handle: _DB) -> Any:
        def op(db: Database) -> Any:
            items = sorted((k.encode(), v.encode()) for k, v in db.status().items())
            return self._table([part for item in items for part in item])

        return self._run(handle, op, None)

    def match_prefix(self, handle: _DB, prefix: bytes, max: float) -> Any:
        return self._run(handle, lambda db: self._table(db.match_prefix(prefix, c_int64(max))), None)

    def match_regex(self, handle: _DB, regex: bytes, max: float) -> Any:
        return self._run(handle, lambda db: self._table(db.match_regex(regex, c_int64(max))), None)

    def match_similar(self, handle: _DB, origin: bytes, range: float, utf: bool, max: float) -> Any:
        span = c_int64(range) & _U64  # a size_t: -1 matches everything
        return self._run(handle, lambda db: self._table(db.match_similar(origin, span, utf, c_int64(max))), None)

    def accept(self, handle: _DB, key: bytes, visitor: Any, writable: bool) -> bool:
        full, empty = self._visitor(visitor, writable)
        return self._ok(handle, lambda db: db.accept(key, full, empty, writable))

    def accept_bulk(self, handle: _DB, table: Any, count: int, visitor: Any, writable: bool) -> bool:
        keys = lua_list(table, count)
        full, empty = self._visitor(visitor, writable)

        def op(db: Database) -> bool:
            with db.lock:
                for key in keys:
                    db.accept(key, full, empty, writable)
            return True

        return self._run(handle, op)

    def iterate(self, handle: _DB, visitor: Any, writable: bool) -> bool:
        full, _ = self._visitor(visitor, writable)
        return self._ok(handle, lambda db: db.iterate(full, writable))

    def synchronize(self, handle: _DB, hard: bool, proc: Any) -> bool:
        postprocess = None if proc is None else self._processor(proc)
        return self._ok(handle, lambda db: db.synchronize(hard, postprocess))

    def occupy(self, handle: _DB, writable: bool, proc: Any) -> bool:
        def op(db: Database) -> bool:
            with db.lock:
                if proc is not None and not self._processor(proc)(db.path, db.count(), db.size()):
                    raise DBError(LOGIC, "processing failed")
            return True

        return self._run(handle, op)

    def merge(self, handle: _DB, table: Any, count: int, mode: float) -> bool:
        """TimedDB::merge: the sources' records in key order (a k-way merge of their
        cursors), each stored by ``mode`` with its expiration."""
        sources = lua_list(table, count)
        mode = c_int64(mode) & 0xFFFFFFFF

        def records(src: Database) -> Iterable[tuple[bytes, bytes, int]]:
            cur = src.cursor()
            try:
                cur.jump()
                while True:
                    yield cur.get(True)
            except DBError:
                return

        def op(db: Database) -> bool:
            streams = [records(src.db) for src in sources if isinstance(src, _DB) and src.db is not None]
            for key, value, xt in heapq.merge(*streams, key=lambda rec: rec[0]):
                try:
                    if mode == _MSET:
                        db.set(key, value, -xt)
                    elif mode == _MADD:
                        db.add(key, value, -xt)
                    elif mode == _MREPLACE:
                        db.replace(key, value, -xt)
                    elif mode == _MAPPEND:
                        db.append(key, value, -xt)
                except DBError as exc:
                    if not (mode == _MADD and exc.code == DUPREC or mode == _MREPLACE and exc.code == NOREC):
                        raise
            return True

        return self._run(handle, op)

    # -- cursors ---------------------------------------------------------------------------

    def _cur_run(self, cur: _Cur, op: Callable[[Cursor], Any], fail: Any = False) -> Any:
        """``op(cursor)``, or ``fail`` with the error recorded on the cursor's database."""
        return self._attempt(cur.handle, cur.cur, op, fail)

    def _cur_ok(self, cur: _Cur, op: Callable[[Cursor], Any]) -> bool:
        return self._attempt(cur.handle, cur.cur, _succeeding(op), False)

    def cursor(self, handle: _DB) -> _Cur:
        return _Cur(handle)

    def cur_jump(self, cur: _Cur, key: bytes | None) -> bool:
        return self._cur_ok(cur, lambda raw: raw.jump(key))

    def cur_jump_back(self, cur: _Cur, key: bytes | None) -> bool:
        return self._cur_ok(cur, lambda raw: raw.jump_back(key))

    def cur_step(self, cur: _Cur) -> bool:
        return self._cur_ok(cur, lambda raw: raw.step())

    def cur_step_back(self, cur: _Cur) -> bool:
        return self._cur_ok(cur, lambda raw: raw.step_back())

    def cur_get(self, cur: _Cur, step: bool) -> tuple[bytes, bytes, int] | None:
        def op(raw: Cursor) -> tuple[bytes, bytes, int]:
            key, value, xt = raw.get(step)
            return key, value, min(xt, XTMAX)

        return self._cur_run(cur, op, None)

    def cur_get_key(self, cur: _Cur, step: bool) -> bytes | None:
        return self._cur_run(cur, lambda raw: raw.get_key(step), None)

    def cur_get_value(self, cur: _Cur, step: bool) -> bytes | None:
        return self._cur_run(cur, lambda raw: raw.get_value(step), None)

    def cur_set_value(self, cur: _Cur, value: bytes, xt: float | None, step: bool) -> bool:
        """As ktserver does it: myscript.cc passes (step, xt) where the cursor takes (xt,
        step), so the step flag becomes the expiration (false: now, true: one second
        from now) and the expiration the step flag (the default, INT64MAX, steps)."""
        real_step = xt is None or c_int64(xt) != 0
        return self._cur_ok(cur, lambda raw: raw.set_value(value, int(step), real_step))

    def cur_remove(self, cur: _Cur) -> bool:
        return self._cur_ok(cur, lambda raw: raw.remove())

    def cur_seize(self, cur: _Cur) -> tuple[bytes, bytes, int] | None:
        def op(raw: Cursor) -> tuple[bytes, bytes, int]:
            key, value, xt = raw.seize()
            return key, value, min(xt, XTMAX)

        return self._cur_run(cur, op, None)

    def cur_accept(self, cur: _Cur, visitor: Any, writable: bool, step: bool) -> bool:
        full, _ = self._visitor(visitor, writable)
        return self._cur_ok(cur, lambda raw: raw.accept(full, writable, step))

    def cur_disable(self, cur: _Cur) -> None:
        cur.cur = None

    def cur_describe(self, cur: _Cur) -> bytes:
        db = cur.handle.db
        path = os.fsencode(db.path) if db is not None else b""
        key = self._cur_run(cur, lambda raw: raw.get_key(False), None)
        return b"%s: %s" % (path or b"(nil)", b"(nil)" if key is None else key)
