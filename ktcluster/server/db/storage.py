"""The databases of the server: one :class:`Database` per database on the command line.

A :class:`Database` is ktserver's ``kt::TimedDB`` (kttimeddb.h) over the Kyoto Cabinet
type its spec names (a record store of :mod:`.stores`), down to the details the wire
shows:

* **expiry** -- each record carries an absolute expiration time (``xt``, XTMAX = never);
  every write sets it from its own ``xt`` parameter; expired records are invisible but
  stay counted (and matched by ``match_*``) until the lazy garbage collector removes
  them.  The collector is driven as kttimeddb.h drives it: each operation adds a score
  (256 per write, 32 per read), and every 2048 points a GC cursor advances over
  ``score/256`` records in database order.  ``ktcapcnt``/``ktcapsiz`` evict from the GC
  cursor at the same moments.  ``ktopts=p`` stores no expiry at all.
* **update log** -- every write that ktserver logs is logged here, with the stored
  value (5-byte xt prefix + value, or the bare value with ``ktopts=p``), under the same
  lock as the write.
* **persistence** -- file databases write each change through to disk
  (:mod:`.persistence`).

Public API (the RPC, REST and binary front ends, the memcached listener, the Lua
``kt.db`` object and the replication slave use it): :meth:`Database.get`, ``check``,
``set``, ``add``, ``replace``, ``append``, ``increment``, ``increment_double``, ``cas``,
``remove``, ``seize``, ``set_bulk``, ``remove_bulk``, ``get_bulk``, ``clear``, ``count``,
``size``, ``status``, ``vacuum``, ``synchronize``, ``match_prefix``, ``match_regex``,
``match_similar``, ``cursor`` (a :class:`Cursor`), ``accept`` (atomic read-modify-write
of one record, KT's visitor), ``iterate``, and ``apply_replicated`` (for a slave).
Failures raise :class:`DBError` carrying Kyoto Cabinet's error code and message; reads
return None for a missing record.  Every method is thread-safe (one re-entrant lock per
database).  The names a caller needs (DBError and its codes, NOP/REMOVE, DBSpec,
StorageError) are importable from here.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ...protocol.kcnum import INT64MAX, INT64MIN, cstr
from ...protocol.kctext import levenshtein, utf8_to_ucs
from ...protocol.replication import OP_CLEAR, OP_REMOVE, OP_SET, encode_log_entry, split_xt
from .dbspec import DBSpec
from .increments import increment_decimal, increment_int
from .kcdb import DUPREC, INVALID, LOGIC, NOIMPL, NOP, NOPERM, NOREC, REMOVE, SYSTEM, DBError, norec
from .persistence import Journal, RecordFiles, StorageError, read_snapshot, write_snapshot
from .stores import create_store
from .textmatch import RegexError, compile_regex

__all__ = [
    "XTMAX", "XT_NONE", "NOP", "REMOVE", "DBError", "DBSpec", "Database", "Cursor",
    "UpdateSink", "StorageError", "modify_exptime",
    "NOIMPL", "INVALID", "NOPERM", "DUPREC", "NOREC", "LOGIC", "SYSTEM",
]

#: the stored "never expires" time (2^40 - 1).
XTMAX = (1 << 40) - 1
#: the ``xt`` parameter value meaning "no expiration" (INT64MAX).
XT_NONE = INT64MAX

#: a visit_full callback: (key, value, absolute xt) -> NOP | REMOVE | (new value, xt param)
VisitFull = Callable[[bytes, bytes, int], Any]
#: a visit_empty callback: (key) -> NOP | REMOVE | (new value, xt param)
VisitEmpty = Callable[[bytes], Any]

# the garbage collector's pace (kttimeddb.h)
_XTSCUNIT = 256          # score per write
_XTREADFREQ = 8          # a read scores 1/8 of a write
_XTITERFREQ = 4          # an iteration scores a write per 4 records
_XTUNIT = 8              # the collector runs once the score reaches XTSCUNIT * XTUNIT
_READ_SCORE = _XTSCUNIT // _XTREADFREQ
_GC_THRESHOLD = _XTSCUNIT * _XTUNIT

_time = time.time


def _now() -> int:
    return int(_time())


def modify_exptime(xt: int, now: int) -> int:
    """kttimeddb.h modify_exptime: an ``xt`` parameter (>= 0 relative, < 0 absolute) as
    the absolute time stored, capped at XTMAX."""
    if xt < 0:
        xt = -max(xt, INT64MIN // 2)
    else:
        xt = min(xt, INT64MAX // 2) + now
    return xt if xt < XTMAX else XTMAX


class UpdateSink(Protocol):
    """Where a database writes its update-log entries (the server's update log).

    ``write(payload)`` receives an encoded log message (origin sid, dbid, op ...) and is
    called with the database lock held, so the log order is the write order."""

    def write(self, payload: bytes) -> int: ...


def _open_disk(spec: DBSpec, kind: str, writable: bool, opts: int) -> Journal | RecordFiles | None:
    """The on-disk form of a file database (None for the memory types)."""
    if kind in ("hash", "tree"):
        return Journal(spec.path, writable, opts)
    if kind == "forest":
        if not os.path.isdir(spec.path):
            if not writable:
                raise StorageError(f"{spec.path}: no such directory")
            os.mkdir(spec.path)
        return Journal(os.path.join(spec.path, "journal"), writable, opts)
    if kind == "dir":
        return RecordFiles(spec.path, writable, opts)
    return None


class Database:
    """One database of the server, with ktserver's TimedDB semantics (see the module doc).

    ``spec`` is a :class:`DBSpec` or its text; ``index`` the position on the command line
    (the ``dbid`` of its update-log entries).  ``writable`` False opens it read-only
    (``-ord``: writes raise NOPERM), ``void`` gives ktplugdbvoid's database that stores
    nothing, ``sink``/``sid`` receive the update log.  Raises :class:`StorageError` if
    its file cannot be opened.
    """

    def __init__(self, spec: DBSpec | str, index: int = 0, *, writable: bool = True, void: bool = False,
                 sink: UpdateSink | None = None, sid: int = 0) -> None:
        if isinstance(spec, str):
            spec = DBSpec.parse(spec)
        self.spec = spec
        self.index = index
        self.path = spec.path
        self.name = spec.name
        self.writable = writable
        self.lock = threading.RLock()
        self._sink = sink
        self._sid = sid
        self.capcnt = spec.int_param("ktcapcnt", "ktcapcount", "ktcap_count")
        self.capsiz = spec.int_param("ktcapsiz", "ktcapsize", "ktcap_size")
        kind = "void" if void else spec.kind
        persist = "p" in spec.str_param("ktopts", "ktoptions")
        disk = _open_disk(spec, kind, writable, 2 if persist else 0)
        if disk is not None:
            persist = bool(disk.opts & 2)   # a file keeps the ktopts it was created with
        self.persistent = persist
        self._store = create_store(DBSpec(spec.path, kind, spec.params), persist, disk)
        if disk is not None:
            self._load(disk)
        self._gc_enabled = writable and not persist
        self._gc_score = 0
        self._gc_cursor = self._store.cursor()
        if self._gc_enabled and self._store.recs:
            self._gc_cursor.gc_jump()

    def _load(self, disk: Journal | RecordFiles) -> None:
        store = self._store
        store.disk = None  # replay without writing back
        try:
            for op, key, stored in disk.replay():
                self._apply_raw(op, key, stored)
        finally:
            store.disk = disk
        store.opened()
        store.after_write(running=False)

    def _apply_raw(self, op: int, key: bytes, stored: bytes) -> bool:
        """Apply one recorded change as it was stored (no expiry logic, not logged); False
        for an unknown op."""
        store = self._store
        if op == OP_SET:
            value, xt = self._unpack(stored)
            rec = store.recs.get(key)
            if rec is None:
                store.insert(key, value, xt)
            else:
                store.update(key, rec, value, xt)
        elif op == OP_REMOVE:
            if key in store.recs:
                store.delete(key)
        elif op == OP_CLEAR:
            store.clear()
        else:
            return False
        return True

    def _unpack(self, stored: bytes) -> tuple[bytes, int]:
        """(value, absolute xt) of a stored value (a value shorter than the xt prefix is
        treated as already expired)."""
        if self.persistent:
            return stored, INT64MAX
        if len(stored) < 5:
            return stored, 0
        xt, value = split_xt(stored)
        return value, xt

    def dump_snapshot(self, path: str) -> None:
        """Write every record to a snapshot file (``-bgs``), atomically."""
        with self.lock:
            write_snapshot(path, 2 if self.persistent else 0, self._store.live_records())

    def load_snapshot(self, path: str) -> None:
        """Store the records of a snapshot file (raw, not logged; StorageError if unreadable)."""
        records = read_snapshot(path)
        with self.lock:
            for op, key, stored in records:
                if op == OP_SET:
                    self._apply_raw(op, key, stored)
            if self._gc_enabled and self._store.recs:
                self._gc_cursor.gc_jump()

    def close(self) -> None:
        """Flush and release the database file (compacting it when worthwhile)."""
        with self.lock:
            store = self._store
            if store.disk is None:
                return
            store.after_write(running=False)
            store.disk.close()
            store.disk = None

    # -- internals ----------------------------------------------------------------------------

    # The writers log through these when there is an update log (``if self._sink is not
    # None``: without one, the write path makes no call).

    def _log_set(self, sink: UpdateSink, key: bytes, value: bytes, xt: int) -> None:
        sink.write(encode_log_entry(self._sid, self.index, OP_SET, key, self._store.stored(value, xt)))

    def _log_remove(self, sink: UpdateSink, key: bytes) -> None:
        sink.write(encode_log_entry(self._sid, self.index, OP_REMOVE, key))

    def _check_writable(self) -> None:
        if not self.writable:
            raise DBError(NOPERM, "permission denied")

    def _score(self, score: int) -> None:
        """kttimeddb.h expire_records: accumulate the GC score, run the GC every 2048."""
        total = self._gc_score + score
        if total < _GC_THRESHOLD:
            self._gc_score = total
            return
        step = total // _XTSCUNIT
        self._gc_score = total - step * _XTSCUNIT
        self._expire(step)

    def _expire(self, step: int) -> None:
        """Advance the GC cursor over ``step`` records, removing the expired ones; then
        evict over ktcapcnt/ktcapsiz from the same cursor."""
        store = self._store
        recs = store.recs
        cur = self._gc_cursor
        now = _now()
        done = 0
        while done < step:
            if not cur.gc_accept(now):
                cur.gc_jump()
                self._gc_score = 0
                break
            done += 1
        if self.capcnt > 0:
            count = len(recs)
            while count > self.capcnt:
                if not cur.gc_remove():
                    cur.gc_jump()
                    break
                count -= 1
            store.defrag(step)
        if self.capsiz > 0 and self.size() > self.capsiz:
            for _ in range(min(step, len(recs) + 1)):
                if not cur.gc_remove():
                    cur.gc_jump()
                    break
            store.defrag(step)

    def _apply(self, key: bytes, rec: list[Any] | None, result: Any, now: int) -> None:
        """Carry out a visitor's answer on one record, logging it (TimedVisitor)."""
        if result is NOP:
            return
        store = self._store
        if result is REMOVE:
            if self._sink is not None:
                self._log_remove(self._sink, key)
            if rec is not None:
                store.delete(key)
            return
        value, xt = result
        xt = INT64MAX if self.persistent else modify_exptime(xt, now)
        if self._sink is not None:
            self._log_set(self._sink, key, value, xt)
        if rec is None:
            store.insert(key, value, xt)
        else:
            store.update(key, rec, value, xt)

    def _visit(self, key: bytes, visit_full: VisitFull, visit_empty: VisitEmpty, writable: bool) -> Any:
        """One record through a visitor, expired records counting as absent (lock held)."""
        store = self._store
        rec = store.recs.get(key)
        now = _now()
        if rec is None:
            result = visit_empty(key)
        else:
            if store.lru:
                store.touch(key, rec)
            if self.persistent:
                result = visit_full(key, rec[0], INT64MAX)
            elif now > rec[1]:
                result = visit_empty(key)
            else:
                result = visit_full(key, rec[0], rec[1])
        self._apply(key, rec, result, now)
        if self._gc_enabled:
            self._score(_XTSCUNIT if writable else _READ_SCORE)
        return result

    # -- single records -----------------------------------------------------------------------

    def accept(self, key: bytes, visit_full: VisitFull, visit_empty: VisitEmpty, writable: bool = True) -> Any:
        """Atomic read-modify-write of one record (KT's ``TimedDB::accept``).

        ``visit_full(key, value, xt)`` is called for a live record (``xt`` absolute,
        XTMAX when it never expires, INT64MAX in ``ktopts=p`` databases),
        ``visit_empty(key)`` when it is absent or expired.  Each returns :data:`NOP`,
        :data:`REMOVE`, or ``(new value, xt)`` with ``xt`` as in RPC (:data:`XT_NONE`:
        no expiry, >= 0 relative, < 0 absolute; pass ``-old_xt`` to keep an expiry).
        The change is logged; the visitor's answer is returned."""
        with self.lock:
            if writable:
                self._check_writable()
            return self._visit(key, visit_full, visit_empty, writable)

    def _get(self, key: bytes) -> tuple[bytes, int] | None:
        """A live record's (value, absolute xt), without GC scoring (lock held)."""
        store = self._store
        rec = store.recs.get(key)
        if rec is None:
            return None
        if store.lru:
            store.touch(key, rec)
        if self.persistent:
            return rec[0], INT64MAX
        xt = rec[1]
        if xt != XTMAX and _time() >= xt + 1:  # expired once int(now) > xt
            return None
        return rec[0], xt

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, absolute xt) of a live record, or None."""
        with self.lock:
            result = self._get(key)
            if self._gc_enabled:
                score = self._gc_score + _READ_SCORE
                if score < _GC_THRESHOLD:  # the usual case of _score, inline
                    self._gc_score = score
                else:
                    self._score(_READ_SCORE)
            return result

    def check(self, key: bytes) -> tuple[int, int] | None:
        """(value size, absolute xt) of a live record, or None."""
        got = self.get(key)
        return None if got is None else (len(got[0]), got[1])

    def set(self, key: bytes, value: bytes, xt: int = XT_NONE) -> None:
        """Store a record (replacing any), expiring per ``xt`` (RPC convention)."""
        with self.lock:
            self._check_writable()
            store = self._store
            rec = store.recs.get(key)
            if self.persistent:
                axt = INT64MAX
            elif xt == XT_NONE:
                axt = XTMAX
            else:
                axt = modify_exptime(xt, _now())
            if self._sink is not None:
                self._log_set(self._sink, key, value, axt)
            if rec is None:
                store.insert(key, value, axt)
            else:
                if store.lru:
                    store.touch(key, rec)
                store.update(key, rec, value, axt)
            if self._gc_enabled:
                self._score(_XTSCUNIT)

    def add(self, key: bytes, value: bytes, xt: int = XT_NONE) -> None:
        """Store a record that is absent (or expired); DUPREC otherwise."""
        result = self.accept(key, lambda k, v, x: NOP, lambda k: (value, xt))
        if result is NOP:
            raise DBError(DUPREC, "record duplication")

    def replace(self, key: bytes, value: bytes, xt: int = XT_NONE) -> None:
        """Overwrite a live record; NOREC if there is none."""
        result = self.accept(key, lambda k, v, x: (value, xt), lambda k: NOP)
        if result is NOP:
            raise norec()

    def append(self, key: bytes, value: bytes, xt: int = XT_NONE) -> None:
        """Append to a record's value (creating it if absent)."""
        self.accept(key, lambda k, v, x: (v + value, xt), lambda k: (value, xt))

    def _increment(self, key: bytes, add: Callable[[bytes | None], tuple[bytes | None, Any]], xt: int,
                   writable: bool = True) -> Any:
        """Run one of :mod:`.increments`' functions as the visitor; its result."""
        out = []

        def visit(value: bytes | None) -> Any:
            new, result = add(value)
            out.append(result)
            return NOP if new is None else (new, xt)

        self.accept(key, lambda k, v, x: visit(v), lambda k: visit(None), writable)
        return out[0]

    def increment(self, key: bytes, num: int, orig: int = 0, xt: int = XT_NONE) -> int:
        """Add to an 8-byte big-endian integer record (TimedDB::increment).  ``orig`` is the
        initial value when absent; INT64MIN ("try") fails then, INT64MAX ("set") stores
        ``num`` whatever the record holds.  LOGIC error for a value that is not 8 bytes."""
        result = self._increment(key, lambda value: increment_int(value, num, orig), xt,
                                 num != 0 or orig != INT64MIN)
        if result == INT64MIN:
            raise DBError(LOGIC, "logical inconsistency")
        return result

    def increment_double(self, key: bytes, num: float, orig: float = 0.0, xt: int = XT_NONE) -> float:
        """Add to a 16-byte fixed-point record (TimedDB::increment_double): big-endian int64
        integral part and int64 fraction x 10^15.  ``orig`` -inf ("try") fails when
        absent, +inf ("set") overwrites.  LOGIC error for a value that is not 16 bytes."""
        result = self._increment(key, lambda value: increment_decimal(value, num, orig), xt)
        if math.isnan(result):
            raise DBError(LOGIC, "logical inconsistency")
        return result

    def cas(self, key: bytes, oval: bytes | None, nval: bytes | None, xt: int = XT_NONE) -> None:
        """Compare and swap: ``oval`` None = must be absent, ``nval`` None = remove.
        LOGIC error ("status conflict") when the record does not match."""
        ok = [False]

        def full(k: bytes, v: bytes, x: int) -> Any:
            if oval is None or v != oval:
                return NOP
            ok[0] = True
            return REMOVE if nval is None else (nval, xt)

        def empty(k: bytes) -> Any:
            if oval is not None:
                return NOP
            ok[0] = True
            return NOP if nval is None else (nval, xt)

        self.accept(key, full, empty)
        if not ok[0]:
            raise DBError(LOGIC, "status conflict")

    def _remove(self, key: bytes, score: bool = True) -> bool:
        """Remove a record (lock held); False if it was absent or expired.  A REMOVE is
        logged either way, as ktserver does."""
        store = self._store
        rec = store.recs.get(key)
        if self._sink is not None:
            self._log_remove(self._sink, key)
        if rec is None:
            found = False
        else:
            found = self.persistent or _now() <= rec[1]
            store.delete(key)
        if score and self._gc_enabled:
            self._score(_XTSCUNIT)
        return found

    def remove(self, key: bytes) -> None:
        """Remove a record; NOREC if it was absent (the removal is logged anyway)."""
        with self.lock:
            self._check_writable()
            if not self._remove(key):
                raise norec()

    def seize(self, key: bytes) -> tuple[bytes, int]:
        """Remove a live record and return (value, absolute xt); NOREC if absent."""
        got: list[tuple[bytes, int]] = []

        def full(k: bytes, v: bytes, x: int) -> Any:
            got.append((v, x))
            return REMOVE

        self.accept(key, full, lambda k: NOP)
        if not got:
            raise norec()
        return got[0]

    # -- bulk ---------------------------------------------------------------------------------

    def set_bulk(self, records: Iterable[tuple[bytes, bytes]], xt: int = XT_NONE, atomic: bool = False) -> int:
        """Store records in the given order; the number stored.  ``atomic`` scores them as
        one operation (KT accept_bulk); otherwise each is a separate set."""
        with self.lock:
            self._check_writable()
            count = 0
            if atomic:
                now = _now()
                store = self._store
                recs = store.recs
                for key, value in records:
                    rec = recs.get(key)
                    if rec is not None and store.lru:
                        store.touch(key, rec)
                    self._apply(key, rec, (value, xt), now)
                    count += 1
                if self._gc_enabled:
                    self._score(_XTSCUNIT)
            else:
                for key, value in records:
                    self.set(key, value, xt)
                    count += 1
            return count

    def remove_bulk(self, keys: Iterable[bytes], atomic: bool = False) -> int:
        """Remove records; the number that existed (every key is logged as a removal)."""
        with self.lock:
            self._check_writable()
            count = 0
            for key in keys:
                count += self._remove(key, not atomic)
            if atomic and self._gc_enabled:
                self._score(_XTSCUNIT)
            return count

    def get_bulk(self, keys: Iterable[bytes], atomic: bool = False) -> dict[bytes, bytes]:
        """The values of the live records among ``keys``."""
        with self.lock:
            out: dict[bytes, bytes] = {}
            read = self._get if atomic else self.get
            for key in keys:
                got = read(key)
                if got is not None:
                    out[key] = got[0]
            if atomic and self._gc_enabled:
                self._score(_READ_SCORE)
            return out

    # -- whole database -----------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every record (logged as one CLEAR); every cursor becomes invalid."""
        with self.lock:
            self._check_writable()
            if self._sink is not None:
                self._sink.write(encode_log_entry(self._sid, self.index, OP_CLEAR))
            self._store.clear()

    def count(self) -> int:
        """Number of records, expired ones not yet collected included."""
        return len(self._store.recs)

    def size(self) -> int:
        """The database size as its Kyoto Cabinet type reports it."""
        return self._store.size()

    def status(self) -> dict[str, str]:
        """The ``status`` procedure's fields (Kyoto Cabinet's plus ktopts/ktcapcnt/ktcapsiz)."""
        with self.lock:
            out = self._store.status()
            out.update(path=self.path, ktopts=2 if self.persistent else 0, ktcapcnt=self.capcnt,
                       ktcapsiz=self.capsiz)
            return {k: str(v) for k, v in out.items()}

    def vacuum(self, step: int = 0) -> None:
        """Collect expired records: ``step`` > 1 advances the GC by that many steps,
        otherwise the whole database is scanned.  Then defragment the file (HashDB;
        fully when ``step`` < 1, else ``step`` blocks on)."""
        with self.lock:
            if self._gc_enabled:
                if step > 1:
                    self._score(min(step, INT64MAX // _XTSCUNIT) * _XTSCUNIT)
                else:
                    self._gc_cursor.gc_jump()
                    self._gc_score = 0
                    self._expire(len(self._store.recs) + 1)
                    self._gc_score = 0
            if self._store.kind in ("hash", "tree") and not self.writable:
                raise DBError(NOPERM, "permission denied")
            self._store.defrag(step)

    def synchronize(self, hard: bool = False,
                    postprocess: Callable[[str, int, int], bool] | None = None) -> None:
        """Flush the file (``hard``: to the device), then call ``postprocess(path, count,
        size)``; its False answer is the LOGIC error "postprocessing failed"."""
        with self.lock:
            if self._store.disk is not None:
                self._store.disk.sync(hard)
            if postprocess is not None and not postprocess(self.path, self.count(), self.size()):
                raise DBError(LOGIC, "postprocessing failed")

    # -- matching (raw scans: expired records not yet collected match too) ---------------------

    def match_prefix(self, prefix: bytes, max: int = -1) -> list[bytes]:
        """Keys starting with ``prefix`` in database order (at most ``max`` if >= 0)."""
        limit = INT64MAX if max < 0 else max
        out: list[bytes] = []
        with self.lock:
            store = self._store
            if limit == 0:
                return out
            keys = store.order.irange(prefix) if store.lexical else store.ordered_keys()
            for key in keys:
                if key.startswith(prefix):
                    out.append(key)
                    if len(out) >= limit:
                        break
                elif store.lexical:
                    break   # past the keys with this prefix
            return out

    def match_regex(self, regex: bytes, max: int = -1) -> list[bytes]:
        """Keys matching a POSIX extended regular expression (LOGIC error if invalid)."""
        try:
            search = compile_regex(regex).search
        except RegexError:
            raise DBError(LOGIC, "compilation failed") from None
        limit = INT64MAX if max < 0 else max
        out: list[bytes] = []
        with self.lock:
            if limit == 0:
                return out
            for key in self._store.ordered_keys():
                if search(key):
                    out.append(key)
                    if len(out) >= limit:
                        break
            return out

    def match_similar(self, origin: bytes, range: int = 1, utf: bool = False, max: int = -1) -> list[bytes]:
        """Keys within Levenshtein distance ``range`` of ``origin`` (bytes, or code points
        when ``utf``), nearest first, then by key."""
        limit = INT64MAX if max < 0 else max
        if limit == 0:
            return []
        oseq: Any = utf8_to_ucs(cstr(origin)) if utf else origin
        found: list[tuple[int, bytes]] = []
        with self.lock:
            for key in self._store.ordered_keys():
                kseq: Any = utf8_to_ucs(key) if utf else key
                if abs(len(oseq) - len(kseq)) > range:
                    continue
                dist = levenshtein(oseq, kseq)
                if dist <= range:
                    found.append((dist, key))
        found.sort()
        return [key for _, key in found[:limit]]

    # -- cursors and iteration ----------------------------------------------------------------

    def cursor(self) -> Cursor:
        """A new, unpositioned cursor."""
        return Cursor(self)

    def iterate(self, visit_full: VisitFull, writable: bool = True) -> None:
        """Visit every live record in database order, atomically (TimedDB::iterate); the
        visitor answers as for :meth:`accept`."""
        with self.lock:
            if writable:
                self._check_writable()
            store = self._store
            now = _now()
            for key in store.ordered_keys():
                rec = store.recs.get(key)
                if rec is None:
                    continue
                if self.persistent:
                    result = visit_full(key, rec[0], INT64MAX)
                elif now > rec[1]:
                    continue
                else:
                    result = visit_full(key, rec[0], rec[1])
                store.isiter = True
                try:
                    self._apply(key, rec, result, now)
                finally:
                    store.isiter = False
            if self._gc_enabled:
                score = _XTSCUNIT if writable else _READ_SCORE
                count = len(store.recs)
                self._score(score * (count // _XTITERFREQ) if count > 0 else score)

    # -- replication --------------------------------------------------------------------------

    def apply_replicated(self, op: int, key: bytes, stored: bytes, origin_sid: int) -> None:
        """Apply one update-log entry received from a master (TimedDB::recover): write the
        raw stored value (``OP_SET``, xt prefix included unless ktopts=p), remove
        (``OP_REMOVE``) or clear (``OP_CLEAR``) without any expiry logic, and log it
        again under the *origin* sid so that other masters do not echo it back.
        Unknown ops are ignored.  A read-only (``-ord``) database refuses with NOPERM."""
        with self.lock:
            self._check_writable()
            if not self._apply_raw(op, key, stored):
                return
            if self._sink is not None:
                self._sink.write(encode_log_entry(origin_sid, self.index, op, key, stored))
            if self._gc_enabled:
                self._score(_XTSCUNIT)


class Cursor:
    """A cursor with TimedDB semantics: reads and writes skip expired records, writes set
    the expiry from their ``xt`` and are logged.  Positioning errors raise
    :class:`DBError` (NOREC past either end or when unpositioned, NOIMPL for backward
    moves on hash databases), as the type's Kyoto Cabinet cursor does."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._raw = db._store.cursor()
        self._back = False

    def jump(self, key: bytes | None = None) -> None:
        """To the first record (hash DBs: the record ``key``; tree DBs: the first >= key)."""
        with self.db.lock:
            self._raw.jump(key)
            self._back = False

    def jump_back(self, key: bytes | None = None) -> None:
        """To the last record (tree DBs: the last <= key); NOIMPL on hash databases."""
        with self.db.lock:
            self._raw.jump_back(key)
            self._back = True

    def step(self) -> None:
        with self.db.lock:
            self._raw.step()
            self._back = False

    def step_back(self) -> None:
        with self.db.lock:
            self._raw.step_back()
            self._back = True

    def accept(self, visitor: VisitFull, writable: bool = True, step: bool = False) -> None:
        """Visit the current record (KC Cursor::accept): ``visitor(key, value, xt)`` answers
        as for :meth:`Database.accept`; ``step`` moves on after.  An expired record is
        skipped (in the cursor's direction) as if it were not there."""
        db = self.db
        raw = self._raw
        with db.lock:
            if writable:
                db._check_writable()
            now = _now()
            persist = db.persistent
            expired = [False]

            def visit(key: bytes, rec: list[Any]) -> Any:
                xt = INT64MAX if persist else rec[1]
                if not persist and now > xt:
                    expired[0] = True
                    return NOP
                result = visitor(key, rec[0], xt)
                if result is NOP:
                    return NOP
                if result is REMOVE:
                    if db._sink is not None:
                        db._log_remove(db._sink, key)
                    return REMOVE
                value, xtp = result
                axt = INT64MAX if persist else modify_exptime(xtp, now)
                if db._sink is not None:
                    db._log_set(db._sink, key, value, axt)
                return value, axt

            try:
                while True:
                    expired[0] = False
                    raw.accept(visit, step)
                    if not expired[0]:
                        break
                    if not step:
                        if self._back:
                            raw.step_back()
                        else:
                            raw.step()
            finally:
                if db._gc_enabled:
                    db._score(_XTSCUNIT if writable else _READ_SCORE)

    def get(self, step: bool = False) -> tuple[bytes, bytes, int]:
        """(key, value, absolute xt) of the current record; ``step`` moves on after."""
        got: list[tuple[bytes, bytes, int]] = []

        def visit(k: bytes, v: bytes, x: int) -> Any:
            got.append((k, v, x))
            return NOP

        self.accept(visit, False, step)
        return got[0]

    def get_key(self, step: bool = False) -> bytes:
        return self.get(step)[0]

    def get_value(self, step: bool = False) -> bytes:
        return self.get(step)[1]

    def set_value(self, value: bytes, xt: int = XT_NONE, step: bool = False) -> None:
        """Replace the current record's value (and expiry)."""
        self.accept(lambda k, v, x: (value, xt), True, step)

    def remove(self) -> None:
        """Remove the current record; the cursor moves to the next one."""
        self.accept(lambda k, v, x: REMOVE, True, False)

    def seize(self) -> tuple[bytes, bytes, int]:
        """Remove the current record and return (key, value, absolute xt)."""
        got: list[tuple[bytes, bytes, int]] = []

        def visit(k: bytes, v: bytes, x: int) -> Any:
            got.append((k, v, x))
            return REMOVE

        self.accept(visit, True, False)
        return got[0]
