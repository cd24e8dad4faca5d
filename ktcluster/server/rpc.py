"""TSV-RPC: ``/rpc/NAME`` procedures, as ktserver's Worker::process and do_* run them.

For every call: ``WAIT`` (block on a named condition first; 503 if no signal comes),
``DB`` (index or name), ``CUR`` (a per-connection cursor, created on first use), the
procedure, then ``SIGNAL``/``SIGNALBROAD``.  Each procedure fills an output map and
returns a return value that becomes the HTTP status (:data:`HTTP_STATUS`); failures put
ktserver's message under ``ERROR``.  Input decoding and output encoding are
:mod:`ktcluster.protocol.rpc`'s.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol.http import RequestHead
from ..protocol.kcnum import INT64MAX, INT64MIN, atof, atoi, atoix
from ..protocol.rpc import decode_input, encode_answer, procedure_of
from .config import LOG_ERROR, LOG_INFO, LOG_SYSTEM
from .server import Counter
from .storage import DUPREC, LOGIC, NOIMPL, NOREC, XT_NONE, XTMAX, Cursor, Database, DBError
from .ulog import clock_pure

if TYPE_CHECKING:
    from .server import Session

__all__ = ["handle", "call", "HTTP_STATUS", "RV_SUCCESS", "RV_NOIMPL", "RV_INVALID", "RV_LOGIC",
           "RV_TIMEOUT", "RV_INTERNAL"]

#: kt::RPCClient::ReturnValue
RV_SUCCESS, RV_NOIMPL, RV_INVALID, RV_LOGIC, RV_TIMEOUT, RV_INTERNAL = 0, 1, 2, 3, 4, 5
#: HTTP status of each return value (anything else: 500)
HTTP_STATUS = {RV_SUCCESS: 200, RV_NOIMPL: 501, RV_INVALID: 400, RV_LOGIC: 450, RV_TIMEOUT: 503, RV_INTERNAL: 500}

_UINT64MAX = (1 << 64) - 1
_DEFAULT_WAIT = 30.0
KT_VERSION = b"0.9.56b (2.19)"
KT_FEATURES = b"(epoll)(lua)"
KC_VERSION = b"1.2.76a (16.13)"
KC_FEATURES = b"(atomic)(zlib)(lzo)"

OutMap = dict[bytes, bytes]
Procedure = Callable[["Session", "Database | None", "Cursor | None", OutMap, OutMap], int]


def handle(session: Session, head: RequestHead, body: bytes) -> bytes:
    """Answer one HTTP request under ``/rpc/``."""
    name = procedure_of(head.path) or b""
    inmap = decode_input(head.query, head.headers, body)
    rv, outmap = call(session, name, inmap)
    return encode_answer(HTTP_STATUS.get(rv, 500), outmap, keep_alive=head.keep_alive,
                         head_request=head.method == b"HEAD")


def _cstr(data: bytes) -> bytes:
    nul = data.find(b"\0")
    return data if nul < 0 else data[:nul]


def call(session: Session, name: bytes, inmap: dict[bytes, bytes]) -> tuple[int, OutMap]:
    """Run one procedure with its common parameters; (return value, output map)."""
    server = session.server
    outmap: OutMap = {}
    wait = inmap.get(b"WAIT")
    if wait is not None:
        text = inmap.get(b"WAITTIME")
        seconds = atof(text) if text is not None else 0.0
        if seconds <= 0:  # NaN stays NaN: the wait then gives up at once, as in ktserver
            seconds = _DEFAULT_WAIT
        if not server.conditions.wait(wait, seconds) or server.stopping.is_set():
            outmap[b"ERROR"] = b"the condition timed out"
            return RV_TIMEOUT, outmap
    expr = inmap.get(b"DB")
    db = server.dbs[0] if not expr or expr[0] == 0 else server.db_by_expr(expr)
    cur = None
    cexpr = inmap.get(b"CUR")
    if cexpr and 0x30 <= cexpr[0] <= 0x39:
        curid = atoi(cexpr)
        cur = session.cursors.get(curid)
        if cur is None:
            if db is not None:
                cur = session.cursors[curid] = db.cursor()
        elif name == b"cur_delete":
            del session.cursors[curid]
            return RV_SUCCESS, outmap
    proc = PROCEDURES.get(name)
    if proc is None:
        outmap[b"ERROR"] = b"not implemented: " + _cstr(name)
        rv = RV_NOIMPL
    else:
        rv = proc(session, db, cur, inmap, outmap)
    signal = inmap.get(b"SIGNAL")
    if signal is not None:
        conds = server.conditions
        woken = conds.broadcast(signal) if b"SIGNALBROAD" in inmap else conds.signal(signal)
        outmap[b"SIGNALED"] = b"%d" % woken
    return rv, outmap


# -- helpers ----------------------------------------------------------------------------------


def _no_db(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"no such database"
    return RV_INVALID


def _invalid(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"invalid parameters"
    return RV_INVALID


def _db_error(session: Session, outmap: OutMap, exc: DBError, logical: tuple[int, ...] = ()) -> int:
    """Report a database error: LOGIC (450) for the expected failures, else 500 (logged)."""
    outmap[b"ERROR"] = str(exc).encode()
    if exc.code in logical:
        return RV_LOGIC
    session.server.log(LOG_ERROR, f"database error: {exc.code}: {exc.name}: {exc.message}")
    return RV_INTERNAL


def _xt(inmap: dict[bytes, bytes]) -> int:
    text = inmap.get(b"xt")
    return atoi(text) if text is not None else XT_NONE


def _put_xt(outmap: OutMap, xt: int) -> None:
    if xt < XTMAX:
        outmap[b"xt"] = b"%d" % xt


def _bulk_keys(inmap: dict[bytes, bytes]) -> list[bytes]:
    """The ``_``-prefixed keys without the prefix, in ktserver's (std::map) order."""
    return sorted(k[1:] for k in inmap if k[:1] == b"_")


def _ts_param(inmap: dict[bytes, bytes]) -> int:
    text = inmap.get(b"ts")
    if text is None:
        return _UINT64MAX
    if _cstr(text) == b"now":
        return clock_pure()
    return atoi(text) & _UINT64MAX


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
    server = session.server
    total_count = total_size = 0
    for i, each in enumerate(server.dbs):
        count, size = each.count(), each.size()
        outmap[b"db_%d" % i] = b"count=%d size=%d path=%s" % (count, size, each.path.encode())
        total_count += count
        total_size += size
    outmap[b"db_total_count"] = b"%d" % total_count
    outmap[b"db_total_size"] = b"%d" % total_size
    outmap[b"serv_conn_count"] = b"%d" % server.connection_count()
    outmap[b"serv_task_count"] = b"%d" % max(server.task_count() - 1, 0)
    outmap[b"serv_thread_count"] = b"%d" % server.config.threads
    now = time.time()
    outmap[b"serv_current_time"] = b"%.6f" % now
    outmap[b"serv_running_term"] = b"%.6f" % (now - server.start_time)
    outmap[b"serv_proc_id"] = b"%d" % server.pid
    for key, value in _sysinfo().items():
        outmap[b"sys_" + key] = value
    if server.slave is not None:
        for key, value in server.slave.report_fields().items():
            outmap[key.encode()] = value.encode()
    for name, value in zip(Counter.NAMES, server.counts(), strict=True):
        outmap[name.encode()] = b"%d" % value
    outmap[b"conf_kt_version"] = KT_VERSION
    outmap[b"conf_kt_features"] = KT_FEATURES
    outmap[b"conf_kc_version"] = KC_VERSION
    outmap[b"conf_kc_features"] = KC_FEATURES
    outmap[b"conf_os_name"] = os.uname().sysname.encode()
    return RV_SUCCESS


def do_play_script(session, db, cur, inmap, outmap):
    engine = session.server.scripting
    if engine is None:
        outmap[b"ERROR"] = b"the scripting extention is disabled"
        return RV_NOIMPL
    name = inmap.get(b"name")
    name = _cstr(name) if name is not None else b""
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
    server = session.server
    if not server.config.rts_path:
        outmap[b"ERROR"] = b"the RTS file is not set"
        return RV_NOIMPL
    host = _cstr(inmap.get(b"host", b"")).decode("utf-8", "replace")
    text = inmap.get(b"port")
    port = atoi(text) if text is not None else 0
    if port < 1:
        port = 1978
    ts = _ts_param(inmap)
    text = inmap.get(b"iv")
    iv = atof(text) if text is not None else -1.0
    server.log(LOG_SYSTEM, "replication setting was modified: host=%s port=%d ts=%s iv=%s" % (
        host, port, "*" if ts == _UINT64MAX else ts, "*" if iv < 0 else "%.6f" % iv))
    if server.slave is None:
        outmap[b"ERROR"] = b"the replication slave is not available"
        return RV_NOIMPL
    server.slave.tune(host, port, None if ts == _UINT64MAX else ts, None if iv < 0 else iv)
    return RV_SUCCESS


def _no_ulog(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"no update log allows no replication"
    return RV_INVALID


def do_ulog_list(session, db, cur, inmap, outmap):
    ulog = session.server.ulog
    if ulog is None:
        return _no_ulog(outmap)
    for status in ulog.list_files():
        outmap[status.path.encode()] = b"%d:%d" % (status.size, status.ts)
    return RV_SUCCESS


def do_ulog_remove(session, db, cur, inmap, outmap):
    server = session.server
    ulog = server.ulog
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
                server.log(LOG_ERROR, f"removing a file failed: {status.path}")
                rv = RV_INTERNAL
    return rv


# -- database procedures ----------------------------------------------------------------------


def do_status(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    session.counts[Counter.MISC] += 1
    for key, value in db.status().items():
        outmap[key.encode()] = value.encode()
    return RV_SUCCESS


def do_clear(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    session.counts[Counter.MISC] += 1
    try:
        db.clear()
    except DBError as exc:
        return _db_error(session, outmap, exc)
    return RV_SUCCESS


def do_synchronize(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    server = session.server
    hard = b"hard" in inmap
    command = _cstr(inmap.get(b"command", b"")).decode("utf-8", "surrogateescape")

    def postprocess(path: str, count: int, size: int) -> bool:
        if not command:
            return True
        if "/" in command or command in (".", ".."):
            server.log(LOG_INFO, f"invalid command name: {command}")
            return False
        ts = server.ulog.clock() if server.ulog is not None else clock_pure()
        if server.slave is not None and server.slave.host:
            ts = min(ts, server.slave.rts)
        server.log(LOG_SYSTEM, f'executing: {command} "{path}"')
        try:
            status = subprocess.call([os.path.join(server.config.cmd_path, command), path, "%020d" % ts],
                                     stdin=subprocess.DEVNULL)
        except OSError:
            status = -1
        if status != 0:
            server.log(LOG_ERROR, f'execution failed: {command} "{path}"')
            return False
        return True

    session.counts[Counter.MISC] += 1
    try:
        db.synchronize(hard, postprocess)
    except DBError as exc:
        return _db_error(session, outmap, exc)
    return RV_SUCCESS


def _write(session, db, inmap, outmap, method, logical: tuple[int, ...]):
    """set / add / replace / append."""
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    value = inmap.get(b"value")
    if key is None or value is None:
        return _invalid(outmap)
    counts = session.counts
    counts[Counter.SET] += 1
    try:
        method(db, key, value, _xt(inmap))
    except DBError as exc:
        counts[Counter.SET_MISS] += 1
        return _db_error(session, outmap, exc, logical)
    return RV_SUCCESS


def do_set(session, db, cur, inmap, outmap):
    return _write(session, db, inmap, outmap, Database.set, ())


def do_add(session, db, cur, inmap, outmap):
    return _write(session, db, inmap, outmap, Database.add, (DUPREC,))


def do_replace(session, db, cur, inmap, outmap):
    return _write(session, db, inmap, outmap, Database.replace, (NOREC,))


def do_append(session, db, cur, inmap, outmap):
    return _write(session, db, inmap, outmap, Database.append, ())


def do_increment(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    text = inmap.get(b"num")
    if key is None or text is None:
        return _invalid(outmap)
    num = atoi(text)
    otext = inmap.get(b"orig")
    if otext is None:
        orig = 0
    else:
        word = _cstr(otext)
        orig = INT64MIN if word == b"try" else INT64MAX if word == b"set" else atoi(otext)
    session.counts[Counter.SET] += 1
    try:
        result = db.increment(key, num, orig, _xt(inmap))
    except DBError as exc:
        session.counts[Counter.SET_MISS] += 1
        return _db_error(session, outmap, exc, (LOGIC,))
    outmap[b"num"] = b"%d" % result
    return RV_SUCCESS


def do_increment_double(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    text = inmap.get(b"num")
    if key is None or text is None:
        return _invalid(outmap)
    num = atof(text)
    otext = inmap.get(b"orig")
    if otext is None:
        orig = 0.0
    else:
        word = _cstr(otext)
        orig = -float("inf") if word == b"try" else float("inf") if word == b"set" else atof(otext)
    session.counts[Counter.SET] += 1
    try:
        result = db.increment_double(key, num, orig, _xt(inmap))
    except DBError as exc:
        session.counts[Counter.SET_MISS] += 1
        return _db_error(session, outmap, exc, (LOGIC,))
    outmap[b"num"] = b"%f" % result
    return RV_SUCCESS


def do_cas(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    if key is None:
        return _invalid(outmap)
    session.counts[Counter.SET] += 1
    try:
        db.cas(key, inmap.get(b"oval"), inmap.get(b"nval"), _xt(inmap))
    except DBError as exc:
        session.counts[Counter.SET_MISS] += 1
        return _db_error(session, outmap, exc, (LOGIC,))
    return RV_SUCCESS


def do_remove(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    if key is None:
        return _invalid(outmap)
    session.counts[Counter.REMOVE] += 1
    try:
        db.remove(key)
    except DBError as exc:
        session.counts[Counter.REMOVE_MISS] += 1
        return _db_error(session, outmap, exc, (NOREC,))
    return RV_SUCCESS


def do_get(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    if key is None:
        return _invalid(outmap)
    counts = session.counts
    counts[Counter.GET] += 1
    got = db.get(key)
    if got is None:
        counts[Counter.GET_MISS] += 1
        outmap[b"ERROR"] = b"DB: 7: no record: no record"
        return RV_LOGIC
    outmap[b"value"] = got[0]
    if got[1] < XTMAX:
        outmap[b"xt"] = b"%d" % got[1]
    return RV_SUCCESS


def do_check(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    if key is None:
        return _invalid(outmap)
    session.counts[Counter.GET] += 1
    got = db.check(key)
    if got is None:
        session.counts[Counter.GET_MISS] += 1
        outmap[b"ERROR"] = b"DB: 7: no record: no record"
        return RV_LOGIC
    outmap[b"vsiz"] = b"%d" % got[0]
    _put_xt(outmap, got[1])
    return RV_SUCCESS


def do_seize(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    key = inmap.get(b"key")
    if key is None:
        return _invalid(outmap)
    counts = session.counts
    counts[Counter.REMOVE] += 1
    counts[Counter.GET] += 1
    try:
        value, xt = db.seize(key)
    except DBError as exc:
        counts[Counter.REMOVE_MISS] += 1
        counts[Counter.GET_MISS] += 1
        return _db_error(session, outmap, exc, (NOREC,))
    outmap[b"value"] = value
    _put_xt(outmap, xt)
    return RV_SUCCESS


def do_set_bulk(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    xt = _xt(inmap)
    atomic = b"atomic" in inmap
    recs = sorted((k[1:], v) for k, v in inmap.items() if k[:1] == b"_")
    counts = session.counts
    counts[Counter.SET] += len(recs)
    try:
        num = db.set_bulk(recs, xt, atomic)
    except DBError as exc:
        counts[Counter.SET_MISS] += len(recs)
        return _db_error(session, outmap, exc)
    counts[Counter.SET_MISS] += len(recs) - num
    outmap[b"num"] = b"%d" % num
    return RV_SUCCESS


def do_remove_bulk(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    atomic = b"atomic" in inmap
    keys = _bulk_keys(inmap)
    counts = session.counts
    counts[Counter.REMOVE] += len(keys)
    try:
        num = db.remove_bulk(keys, atomic)
    except DBError as exc:
        counts[Counter.REMOVE_MISS] += len(keys)
        return _db_error(session, outmap, exc)
    counts[Counter.REMOVE_MISS] += len(keys) - num
    outmap[b"num"] = b"%d" % num
    return RV_SUCCESS


def do_get_bulk(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    atomic = b"atomic" in inmap
    keys = _bulk_keys(inmap)
    counts = session.counts
    counts[Counter.GET] += len(keys)
    recs = db.get_bulk(keys, atomic)
    counts[Counter.GET_MISS] += len(keys) - len(recs)
    for key, value in recs.items():
        outmap[b"_" + key] = value
    outmap[b"num"] = b"%d" % len(recs)
    return RV_SUCCESS


def do_vacuum(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    text = inmap.get(b"step")
    session.counts[Counter.MISC] += 1
    try:
        db.vacuum(atoi(text) if text is not None else 0)
    except DBError as exc:
        return _db_error(session, outmap, exc)
    return RV_SUCCESS


def _matches(session, outmap, keys: list[bytes]) -> int:
    for rank, key in enumerate(keys):
        outmap[b"_" + key] = b"%d" % rank
    outmap[b"num"] = b"%d" % len(keys)
    return RV_SUCCESS


def _max(inmap: dict[bytes, bytes]) -> int:
    text = inmap.get(b"max")
    return atoi(text) if text is not None else -1


def do_match_prefix(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    prefix = inmap.get(b"prefix")
    if prefix is None:
        return _invalid(outmap)
    session.counts[Counter.MISC] += 1
    return _matches(session, outmap, db.match_prefix(prefix, _max(inmap)))


def do_match_regex(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    regex = inmap.get(b"regex")
    if regex is None:
        return _invalid(outmap)
    session.counts[Counter.MISC] += 1
    try:
        keys = db.match_regex(regex, _max(inmap))
    except DBError as exc:
        return _db_error(session, outmap, exc, (LOGIC,))
    return _matches(session, outmap, keys)


def do_match_similar(session, db, cur, inmap, outmap):
    if db is None:
        return _no_db(outmap)
    origin = inmap.get(b"origin")
    if origin is None:
        return _invalid(outmap)
    text = inmap.get(b"range")
    span = atoi(text) if text is not None else 1
    if span < 0:
        span = 1
    session.counts[Counter.MISC] += 1
    return _matches(session, outmap, db.match_similar(origin, span, b"utf" in inmap, _max(inmap)))


# -- cursor procedures ------------------------------------------------------------------------


def _no_cursor(outmap: OutMap) -> int:
    outmap[b"ERROR"] = b"no such cursor"
    return RV_INVALID


def _cursor_error(session, outmap, exc: DBError, noimpl: bool = False) -> int:
    outmap[b"ERROR"] = str(exc).encode()
    if exc.code == NOREC:
        return RV_LOGIC
    if noimpl and exc.code == NOIMPL:
        return RV_NOIMPL
    session.server.log(LOG_ERROR, f"database error: {exc.code}: {exc.name}: {exc.message}")
    return RV_INTERNAL


def do_cur_jump(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.MISC] += 1
    try:
        cur.jump(inmap.get(b"key"))
    except DBError as exc:
        return _cursor_error(session, outmap, exc)
    return RV_SUCCESS


def do_cur_jump_back(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.MISC] += 1
    try:
        cur.jump_back(inmap.get(b"key"))
    except DBError as exc:
        return _cursor_error(session, outmap, exc, noimpl=True)
    return RV_SUCCESS


def do_cur_step(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.MISC] += 1
    try:
        cur.step()
    except DBError as exc:
        return _cursor_error(session, outmap, exc)
    return RV_SUCCESS


def do_cur_step_back(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.MISC] += 1
    try:
        cur.step_back()
    except DBError as exc:
        return _cursor_error(session, outmap, exc, noimpl=True)
    return RV_SUCCESS


def do_cur_set_value(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    value = inmap.get(b"value")
    if value is None:
        return _invalid(outmap)
    session.counts[Counter.SET] += 1
    try:
        cur.set_value(value, _xt(inmap), b"step" in inmap)
    except DBError as exc:
        session.counts[Counter.SET_MISS] += 1
        return _cursor_error(session, outmap, exc)
    return RV_SUCCESS


def do_cur_remove(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.REMOVE] += 1
    try:
        cur.remove()
    except DBError as exc:
        session.counts[Counter.REMOVE_MISS] += 1
        return _cursor_error(session, outmap, exc)
    return RV_SUCCESS


def _cur_read(session, cur, inmap, outmap, fields: str) -> int:
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.GET] += 1
    try:
        key, value, xt = cur.get(b"step" in inmap)
    except DBError as exc:
        session.counts[Counter.GET_MISS] += 1
        return _cursor_error(session, outmap, exc)
    if "k" in fields:
        outmap[b"key"] = key
    if "v" in fields:
        outmap[b"value"] = value
    if "x" in fields:
        _put_xt(outmap, xt)
    return RV_SUCCESS


def do_cur_get_key(session, db, cur, inmap, outmap):
    return _cur_read(session, cur, inmap, outmap, "k")


def do_cur_get_value(session, db, cur, inmap, outmap):
    return _cur_read(session, cur, inmap, outmap, "v")


def do_cur_get(session, db, cur, inmap, outmap):
    return _cur_read(session, cur, inmap, outmap, "kvx")


def do_cur_seize(session, db, cur, inmap, outmap):
    if cur is None:
        return _no_cursor(outmap)
    session.counts[Counter.GET] += 1
    try:
        key, value, xt = cur.seize()
    except DBError as exc:
        session.counts[Counter.GET_MISS] += 1
        return _cursor_error(session, outmap, exc)
    outmap[b"key"] = key
    outmap[b"value"] = value
    _put_xt(outmap, xt)
    return RV_SUCCESS


#: every procedure by name (cur_delete is handled before dispatch, for existing cursors)
PROCEDURES: dict[bytes, Procedure] = {
    name[3:].encode(): func for name, func in sorted(globals().items()) if name.startswith("do_")
}
