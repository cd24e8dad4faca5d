"""TSV-RPC: ``/rpc/NAME`` procedures, as ktserver's Worker::process and do_* run them.

For every call: ``WAIT`` (block on a named condition first; 503 if no signal comes),
``DB`` (index or name), ``CUR`` (a per-connection cursor, created on first use), the
procedure, then ``SIGNAL``/``SIGNALBROAD``.  Each procedure fills an output map and
returns a return value that becomes the HTTP status
(:data:`~ktcluster.server.state.HTTP_STATUS`); failures put ktserver's message under
``ERROR``.  Input decoding and output encoding are
:mod:`ktcluster.protocol.rpc`'s.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import resource
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...protocol.http import RequestHead
from ...protocol.kcnum import INT64MAX, INT64MIN, atof, atoi, atoix, cstr
from ...protocol.rpc import decode_input, encode_answer, procedure_of
from ..config import LOG_ERROR, LOG_INFO, LOG_SYSTEM
from ..db.kcdb import norec
from ..db.storage import DUPREC, LOGIC, NOIMPL, NOREC, XT_NONE, XTMAX, Cursor, Database, DBError
from ..db.ulog import clock_pure
from ..state import (
    HTTP_STATUS,
    KC_FEATURES,
    KC_VERSION,
    KT_FEATURES,
    KT_VERSION,
    RV_INTERNAL,
    RV_INVALID,
    RV_LOGIC,
    RV_NOIMPL,
    RV_SUCCESS,
    RV_TIMEOUT,
    Counter,
)

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["handle", "call"]

_UINT64MAX = (1 << 64) - 1
#: the buffer kc::strprintf formats a floating-point number into
_FORMAT_BUFSIZ = 128
_DEFAULT_WAIT = 30.0

InMap = dict[bytes, bytes]
OutMap = dict[bytes, bytes]
#: a procedure: (session, database of DB or None, cursor of CUR or None, inmap, outmap) -> return value
Procedure = Callable[["Session", "Database | None", "Cursor | None", InMap, OutMap], int]


def handle(session: Session, head: RequestHead, body: bytes) -> bytes:
    """Answer one HTTP request under ``/rpc/``."""
    name = procedure_of(head.path) or b""
    inmap = decode_input(head.query, head.headers, body)
    rv, outmap = call(session, name, inmap)
    return encode_answer(HTTP_STATUS.get(rv, 500), outmap, keep_alive=head.keep_alive,
                         head_request=head.method == b"HEAD")


def call(session: Session, name: bytes, inmap: dict[bytes, bytes]) -> tuple[int, OutMap]:
    """Run one procedure with its common parameters; (return value, output map)."""
    state = session.state
    outmap: OutMap = {}
    wait = inmap.get(b"WAIT")
    if wait is not None:
        text = inmap.get(b"WAITTIME")
        seconds = atof(text) if text is not None else 0.0
        if seconds <= 0:  # NaN stays NaN: the wait then gives up at once, as in ktserver
            seconds = _DEFAULT_WAIT
        if not state.conditions.wait(wait, seconds) or state.stopping.is_set():
            outmap[b"ERROR"] = b"the condition timed out"
            return RV_TIMEOUT, outmap
    db = state.db_by_expr(inmap.get(b"DB"))
    cur = None
    cexpr = inmap.get(b"CUR")
    curid = atoi(cexpr) if cexpr and 0x30 <= cexpr[0] <= 0x39 else -1   # 2^63 and above wrap negative
    if curid >= 0:
        cur = session.cursors.get(curid)
        if cur is None:
            if db is not None:
                cur = session.cursors[curid] = db.cursor()
        elif name == b"cur_delete":
            del session.cursors[curid]
            return RV_SUCCESS, outmap
    proc = PROCEDURES.get(name)
    if proc is None:
        outmap[b"ERROR"] = b"not implemented: " + cstr(name)
        rv = RV_NOIMPL
    else:
        rv = proc(session, db, cur, inmap, outmap)
    signal = inmap.get(b"SIGNAL")
    if signal is not None:
        conds = state.conditions
        woken = conds.broadcast(signal) if b"SIGNALBROAD" in inmap else conds.signal(signal)
        outmap[b"SIGNALED"] = b"%d" % woken
    return rv, outmap


# -- helpers ----------------------------------------------------------------------------------


def _invalid(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"invalid parameters"
    return RV_INVALID


def _db_error(session: Session, outmap: OutMap, exc: DBError, logical: tuple[int, ...] = (),
              unimplemented: bool = False) -> int:
    """Report a database error: LOGIC (450) for the expected failures (``logical``), NOIMPL
    (501) for what the database type cannot do if ``unimplemented``, else 500 (logged)."""
    outmap[b"ERROR"] = str(exc).encode()
    if exc.code in logical:
        return RV_LOGIC
    if unimplemented and exc.code == NOIMPL:
        return RV_NOIMPL
    session.state.log_db_error(exc)
    return RV_INTERNAL


def procedure(*, db: bool = False, cursor: bool = False, params: tuple[bytes, ...] = (),
              count: tuple[int, ...] = (), logical: tuple[int, ...] = (),
              unimplemented: bool = False) -> Callable[[Callable[..., int | None]], Procedure]:
    """A procedure on the call's database (``db``) or cursor (``cursor``), as ktserver's
    do_* functions check and count them: without the database "no such database", without
    the cursor "no such cursor", without one of the required ``params`` "invalid
    parameters" (400); then each of the ``count`` counters counts the call and its miss
    counter (the next one; none for MISC) counts a DBError, which is answered by
    :func:`_db_error`.  The function gets ``(session, db or cursor, inmap, outmap,
    *params)`` and returns a return value (None: success)."""

    missing = b"no such cursor" if cursor else b"no such database"
    misses = tuple(counter + 1 for counter in count if counter != Counter.MISC)
    fetch = _fetcher(params)

    def wrap(func: Callable[..., int | None]) -> Procedure:
        @functools.wraps(func)
        def run(session: Session, db_: Database | None, cur: Cursor | None, inmap: InMap, outmap: OutMap) -> int:
            target: Any = cur if cursor else db_
            if target is None and (db or cursor):
                outmap[b"ERROR"] = missing
                return RV_INVALID
            try:
                values = fetch(inmap)
            except KeyError:
                return _invalid(outmap)
            counts = session.counts
            for counter in count:
                counts[counter] += 1
            try:
                rv = func(session, target, inmap, outmap, *values)
            except DBError as exc:
                for counter in misses:
                    counts[counter] += 1
                return _db_error(session, outmap, exc, logical, unimplemented)
            return RV_SUCCESS if rv is None else rv

        return run

    return wrap


def _fetcher(names: tuple[bytes, ...]) -> Callable[[InMap], tuple[bytes, ...]]:
    """A function taking the values of ``names`` from an input map (KeyError if one is
    missing): an itemgetter, this is every call's hot path."""
    if not names:
        return lambda inmap: ()
    if len(names) == 1:
        get = operator.itemgetter(names[0])
        return lambda inmap: (get(inmap),)
    return operator.itemgetter(*names)


def _xt(inmap: InMap) -> int:
    text = inmap.get(b"xt")
    return atoi(text) if text is not None else XT_NONE


def _put_xt(outmap: OutMap, xt: int) -> None:
    if xt < XTMAX:
        outmap[b"xt"] = b"%d" % xt


def _orig(inmap: InMap, try_: Any, set_: Any, parse: Callable[[bytes], Any], default: Any) -> Any:
    """The ``orig`` of increment: "try", "set", or a number."""
    text = inmap.get(b"orig")
    if text is None:
        return default
    word = cstr(text)
    return try_ if word == b"try" else set_ if word == b"set" else parse(text)


def _bulk_keys(inmap: InMap) -> list[bytes]:
    """The ``_``-prefixed keys without the prefix, in ktserver's (std::map) order."""
    return sorted(k[1:] for k in inmap if k[:1] == b"_")


def _max(inmap: InMap) -> int:
    text = inmap.get(b"max")
    return atoi(text) if text is not None else -1


def _ts_param(inmap: InMap) -> int:
    text = inmap.get(b"ts")
    if text is None:
        return _UINT64MAX
    if cstr(text) == b"now":
        return clock_pure()
    return atoi(text) & _UINT64MAX


def _matches(outmap: OutMap, keys: list[bytes]) -> None:
    for rank, key in enumerate(keys):
        outmap[b"_" + key] = b"%d" % rank
    outmap[b"num"] = b"%d" % len(keys)


# -- DB-less procedures -----------------------------------------------------------------------


def do_void(session, db, cur, inmap, outmap):
    return RV_SUCCESS


def do_echo(session, db, cur, inmap, outmap):
    outmap.update(inmap)
    return RV_SUCCESS


def _sysinfo() -> OutMap:
    """kc::getsysinfo on Linux."""
    info: OutMap = {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info[b"ru_utime"] = b"%0.6f" % usage.ru_utime
    info[b"ru_stime"] = b"%0.6f" % usage.ru_stime
    if usage.ru_maxrss > 0:
        info[b"mem_peak"] = info[b"mem_size"] = info[b"mem_rss"] = b"%d" % (usage.ru_maxrss * 1024)
    for path, names in (("/proc/self/status", {b"VmPeak": b"mem_peak", b"VmSize": b"mem_size", b"VmRSS": b"mem_rss"}),
                        ("/proc/meminfo", {b"MemTotal": b"mem_total", b"MemFree": b"mem_free",
                                           b"Cached": b"mem_cached"})):
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            continue
        for line in lines:
            name, colon, value = line.partition(b":")
            if colon and name in names:
                size = atoix(value)
                if size > 0:
                    info[names[name]] = b"%d" % size
    return info


def do_report(session, db, cur, inmap, outmap):
    state = session.state
    total_count = total_size = 0
    for i, each in enumerate(state.dbs):
        count, size = each.count(), each.size()
        outmap[b"db_%d" % i] = b"count=%d size=%d path=%s" % (count, size, each.path.encode())
        total_count += count
        total_size += size
    outmap[b"db_total_count"] = b"%d" % total_count
    outmap[b"db_total_size"] = b"%d" % total_size
    outmap[b"serv_conn_count"] = b"%d" % state.counts.connections()
    outmap[b"serv_task_count"] = b"0"   # the requests waiting for a worker are not counted (thserv)
    outmap[b"serv_thread_count"] = b"%d" % state.config.threads
    now = time.time()
    outmap[b"serv_current_time"] = b"%.6f" % now
    outmap[b"serv_running_term"] = b"%.6f" % (now - state.start_time)
    outmap[b"serv_proc_id"] = b"%d" % state.pid
    for key, value in _sysinfo().items():
        outmap[b"sys_" + key] = value
    if state.slave is not None:
        for key, value in state.slave.report_fields().items():
            outmap[key.encode()] = value.encode()
    for name, value in zip(Counter.NAMES, state.counts.totals(), strict=True):
        outmap[name.encode()] = b"%d" % value
    outmap[b"conf_kt_version"] = KT_VERSION
    outmap[b"conf_kt_features"] = KT_FEATURES
    outmap[b"conf_kc_version"] = KC_VERSION
    outmap[b"conf_kc_features"] = KC_FEATURES
    outmap[b"conf_os_name"] = os.uname().sysname.encode()
    return RV_SUCCESS


def do_play_script(session, db, cur, inmap, outmap):
    engine = session.state.scripting
    if engine is None:
        outmap[b"ERROR"] = b"the scripting extention is disabled"
        return RV_NOIMPL
    name = cstr(inmap.get(b"name", b""))
    if not name or not name.isalnum() or not name.isascii():
        return _invalid(outmap)
    scrin = {k[1:]: v for k, v in sorted(inmap.items()) if k[:1] == b"_"}
    session.counts[Counter.SCRIPT] += 1
    rv, scrout = engine.call(name, scrin)
    if rv == RV_SUCCESS:
        for key, value in scrout.items():
            outmap[b"_" + key] = value
    elif rv == RV_NOIMPL:
        outmap[b"ERROR"] = b"no such scripting procedure"
    else:
        outmap[b"ERROR"] = b"the scripting procedure failed"
    return rv


def do_tune_replication(session, db, cur, inmap, outmap):
    state = session.state
    if not state.config.rts_path:
        outmap[b"ERROR"] = b"the RTS file is not set"
        return RV_NOIMPL
    host = cstr(inmap.get(b"host", b"")).decode("utf-8", "replace")
    text = inmap.get(b"port")
    port = atoi(text) if text is not None else 0
    if port < 1:
        port = 1978
    ts = _ts_param(inmap)
    text = inmap.get(b"iv")
    iv = atof(text) if text is not None else -1.0
    state.log(LOG_SYSTEM, "replication setting was modified: host=%s port=%d ts=%s iv=%s" % (
        host, port, "*" if ts == _UINT64MAX else ts, "*" if iv < 0 else "%.6f" % iv))
    if state.slave is None:
        outmap[b"ERROR"] = b"the replication slave is not available"
        return RV_NOIMPL
    state.slave.tune(host, port, None if ts == _UINT64MAX else ts, None if iv < 0 else iv)
    return RV_SUCCESS


def _no_ulog(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"no update log allows no replication"
    return RV_INVALID


def do_ulog_list(session, db, cur, inmap, outmap):
    ulog = session.state.ulog
    if ulog is None:
        return _no_ulog(outmap)
    for status in ulog.list_files():
        outmap[status.path.encode()] = b"%d:%d" % (status.size, status.ts)
    return RV_SUCCESS


def do_ulog_remove(session, db, cur, inmap, outmap):
    state = session.state
    ulog = state.ulog
    if ulog is None:
        return _no_ulog(outmap)
    ts = _ts_param(inmap)
    rv = RV_SUCCESS
    for status in ulog.list_files()[:-1]:
        if status.ts <= ts:
            try:
                os.remove(status.path)
            except OSError:
                outmap[b"ERROR"] = b"removing a file failed: " + status.path.encode()
                state.log(LOG_ERROR, f"removing a file failed: {status.path}")
                rv = RV_INTERNAL
    return rv


# -- database procedures ----------------------------------------------------------------------


@procedure(db=True, count=(Counter.MISC,))
def do_status(session, db, inmap, outmap):
    for key, value in db.status().items():
        outmap[key.encode()] = value.encode()


@procedure(db=True, count=(Counter.MISC,))
def do_clear(session, db, inmap, outmap):
    db.clear()


@procedure(db=True, count=(Counter.MISC,))
def do_synchronize(session, db, inmap, outmap):
    state = session.state
    command = cstr(inmap.get(b"command", b"")).decode("utf-8", "surrogateescape")

    def postprocess(path: str, count: int, size: int) -> bool:
        """Run ``-cmd``'s ``command`` on the file, with the time stamp to resume from."""
        if not command:
            return True
        if "/" in command or command in (".", ".."):
            state.log(LOG_INFO, f"invalid command name: {command}")
            return False
        ts = state.ulog.clock() if state.ulog is not None else clock_pure()
        if state.slave is not None and state.slave.host:
            ts = min(ts, state.slave.rts)
        state.log(LOG_SYSTEM, f'executing: {command} "{path}"')
        try:
            status = subprocess.call([os.path.join(state.config.cmd_path, command), path, "%020d" % ts],
                                     stdin=subprocess.DEVNULL)
        except OSError:
            status = -1
        if status != 0:
            state.log(LOG_ERROR, f'execution failed: {command} "{path}"')
            return False
        return True

    db.synchronize(b"hard" in inmap, postprocess)


@procedure(db=True, params=(b"key", b"value"), count=(Counter.SET,))
def do_set(session, db, inmap, outmap, key, value):
    db.set(key, value, _xt(inmap))


@procedure(db=True, params=(b"key", b"value"), count=(Counter.SET,), logical=(DUPREC,))
def do_add(session, db, inmap, outmap, key, value):
    db.add(key, value, _xt(inmap))


@procedure(db=True, params=(b"key", b"value"), count=(Counter.SET,), logical=(NOREC,))
def do_replace(session, db, inmap, outmap, key, value):
    db.replace(key, value, _xt(inmap))


@procedure(db=True, params=(b"key", b"value"), count=(Counter.SET,))
def do_append(session, db, inmap, outmap, key, value):
    db.append(key, value, _xt(inmap))


@procedure(db=True, params=(b"key", b"num"), count=(Counter.SET,), logical=(LOGIC,))
def do_increment(session, db, inmap, outmap, key, num):
    orig = _orig(inmap, INT64MIN, INT64MAX, atoi, 0)
    outmap[b"num"] = b"%d" % db.increment(key, atoi(num), orig, _xt(inmap))


@procedure(db=True, params=(b"key", b"num"), count=(Counter.SET,), logical=(LOGIC,))
def do_increment_double(session, db, inmap, outmap, key, num):
    orig = _orig(inmap, -math.inf, math.inf, atof, 0.0)
    outmap[b"num"] = _format_f(db.increment_double(key, atof(num), orig, _xt(inmap)))


def _format_f(num: float) -> bytes:
    """kc::strprintf's ``%f``: snprintf into a 128-byte buffer, so a longer result is cut
    at 127 bytes and marked with ``*``, and one of exactly 128 ends in the buffer's NUL."""
    text = b"%f" % num
    if len(text) >= _FORMAT_BUFSIZ:
        return text[:_FORMAT_BUFSIZ - 1] + (b"*" if len(text) > _FORMAT_BUFSIZ else b"\0")
    return text


@procedure(db=True, params=(b"key",), count=(Counter.SET,), logical=(LOGIC,))
def do_cas(session, db, inmap, outmap, key):
    db.cas(key, inmap.get(b"oval"), inmap.get(b"nval"), _xt(inmap))


@procedure(db=True, params=(b"key",), count=(Counter.REMOVE,), logical=(NOREC,))
def do_remove(session, db, inmap, outmap, key):
    db.remove(key)


@procedure(db=True, params=(b"key",), count=(Counter.GET,), logical=(NOREC,))
def do_get(session, db, inmap, outmap, key):
    got = db.get(key)
    if got is None:
        raise norec()
    outmap[b"value"] = got[0]
    _put_xt(outmap, got[1])


@procedure(db=True, params=(b"key",), count=(Counter.GET,), logical=(NOREC,))
def do_check(session, db, inmap, outmap, key):
    got = db.check(key)
    if got is None:
        raise norec()
    outmap[b"vsiz"] = b"%d" % got[0]
    _put_xt(outmap, got[1])


@procedure(db=True, params=(b"key",), count=(Counter.REMOVE, Counter.GET), logical=(NOREC,))
def do_seize(session, db, inmap, outmap, key):
    value, xt = db.seize(key)
    outmap[b"value"] = value
    _put_xt(outmap, xt)


def _bulk_write(session, outmap, counter: int, size: int, write) -> None:
    """Run a bulk write of ``size`` records; count them under ``counter`` and the ones it
    did not write (all of them when it fails) under its miss counter."""
    counts = session.counts
    counts[counter] += size
    try:
        num = write()
    except DBError:
        counts[counter + 1] += size
        raise
    counts[counter + 1] += size - num
    outmap[b"num"] = b"%d" % num


@procedure(db=True)
def do_set_bulk(session, db, inmap, outmap):
    recs = sorted((k[1:], v) for k, v in inmap.items() if k[:1] == b"_")
    _bulk_write(session, outmap, Counter.SET, len(recs), lambda: db.set_bulk(recs, _xt(inmap), b"atomic" in inmap))


@procedure(db=True)
def do_remove_bulk(session, db, inmap, outmap):
    keys = _bulk_keys(inmap)
    _bulk_write(session, outmap, Counter.REMOVE, len(keys), lambda: db.remove_bulk(keys, b"atomic" in inmap))


@procedure(db=True)
def do_get_bulk(session, db, inmap, outmap):
    keys = _bulk_keys(inmap)
    counts = session.counts
    counts[Counter.GET] += len(keys)
    recs = db.get_bulk(keys, b"atomic" in inmap)
    counts[Counter.GET_MISS] += len(keys) - len(recs)
    for key, value in recs.items():
        outmap[b"_" + key] = value
    outmap[b"num"] = b"%d" % len(recs)


@procedure(db=True, count=(Counter.MISC,))
def do_vacuum(session, db, inmap, outmap):
    text = inmap.get(b"step")
    db.vacuum(atoi(text) if text is not None else 0)


@procedure(db=True, params=(b"prefix",), count=(Counter.MISC,))
def do_match_prefix(session, db, inmap, outmap, prefix):
    _matches(outmap, db.match_prefix(prefix, _max(inmap)))


@procedure(db=True, params=(b"regex",), count=(Counter.MISC,), logical=(LOGIC,))
def do_match_regex(session, db, inmap, outmap, regex):
    _matches(outmap, db.match_regex(regex, _max(inmap)))


@procedure(db=True, params=(b"origin",), count=(Counter.MISC,))
def do_match_similar(session, db, inmap, outmap, origin):
    text = inmap.get(b"range")
    span = atoi(text) if text is not None else 1
    _matches(outmap, db.match_similar(origin, span if span >= 0 else 1, b"utf" in inmap, _max(inmap)))


# -- cursor procedures ------------------------------------------------------------------------


@procedure(cursor=True, count=(Counter.MISC,), logical=(NOREC,))
def do_cur_jump(session, cur, inmap, outmap):
    cur.jump(inmap.get(b"key"))


@procedure(cursor=True, count=(Counter.MISC,), logical=(NOREC,), unimplemented=True)
def do_cur_jump_back(session, cur, inmap, outmap):
    cur.jump_back(inmap.get(b"key"))


@procedure(cursor=True, count=(Counter.MISC,), logical=(NOREC,))
def do_cur_step(session, cur, inmap, outmap):
    cur.step()


@procedure(cursor=True, count=(Counter.MISC,), logical=(NOREC,), unimplemented=True)
def do_cur_step_back(session, cur, inmap, outmap):
    cur.step_back()


@procedure(cursor=True, params=(b"value",), count=(Counter.SET,), logical=(NOREC,))
def do_cur_set_value(session, cur, inmap, outmap, value):
    cur.set_value(value, _xt(inmap), b"step" in inmap)


@procedure(cursor=True, count=(Counter.REMOVE,), logical=(NOREC,))
def do_cur_remove(session, cur, inmap, outmap):
    cur.remove()


@procedure(cursor=True, count=(Counter.GET,), logical=(NOREC,))
def do_cur_get_key(session, cur, inmap, outmap):
    outmap[b"key"] = cur.get_key(b"step" in inmap)


@procedure(cursor=True, count=(Counter.GET,), logical=(NOREC,))
def do_cur_get_value(session, cur, inmap, outmap):
    outmap[b"value"] = cur.get_value(b"step" in inmap)


@procedure(cursor=True, count=(Counter.GET,), logical=(NOREC,))
def do_cur_get(session, cur, inmap, outmap):
    key, value, xt = cur.get(b"step" in inmap)
    outmap[b"key"] = key
    outmap[b"value"] = value
    _put_xt(outmap, xt)


@procedure(cursor=True, count=(Counter.GET,), logical=(NOREC,))
def do_cur_seize(session, cur, inmap, outmap):
    key, value, xt = cur.seize()
    outmap[b"key"] = key
    outmap[b"value"] = value
    _put_xt(outmap, xt)


#: every procedure by name (cur_delete is handled before dispatch, for existing cursors)
PROCEDURES: dict[bytes, Procedure] = {
    name[3:].encode(): func for name, func in sorted(globals().items()) if name.startswith("do_")
}
