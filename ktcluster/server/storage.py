"""The record store: one :class:`Database` per database given on the command line.

A :class:`Database` behaves as ktserver's ``kt::TimedDB`` wrapped around the Kyoto
Cabinet database type named by its spec, down to the details the wire shows:

* **expiry** -- each record carries an absolute expiration time (``xt``, XTMAX = never);
  every write sets it from its own ``xt`` parameter; expired records are invisible but
  stay counted (and matched by ``match_*``) until the lazy garbage collector removes
  them.  The collector is driven exactly as kttimeddb.h drives it: each operation adds a
  score (256 per write, 32 per read), and every 2048 points a GC cursor advances over
  ``score/256`` records in database order.  ``ktcapcnt``/``ktcapsiz`` evict from the GC
  cursor at the same moments.  ``ktopts=p`` stores no expiry at all.
* **order** -- tree types (``+ % .kct .kcf``) iterate by key; hash types in the order of
  their Kyoto Cabinet counterpart: StashDB ``:`` and CacheDB ``*`` by MurmurHash bucket,
  ProtoHashDB ``-`` by the libstdc++ tr1 hash bucket, HashDB ``.kch`` in insertion
  order, DirDB ``.kcd`` in the directory's readdir order.  Cursors
  (:class:`Cursor`) follow the per-type rules of their Kyoto Cabinet cursor.
* **update log** -- every write that ktserver logs is logged here, with the stored
  value (5-byte xt prefix + value, or the bare value with ``ktopts=p``), under the same
  lock as the write.
* **persistence** -- file databases write each change through to disk
  (:mod:`ktcluster.server.persistence`).

Public API (used by the RPC, REST and binary front ends, and meant for the memcached
listener, the Lua ``kt.db`` object and the replication slave): :meth:`Database.get`,
``check``, ``set``, ``add``, ``replace``, ``append``, ``increment``,
``increment_double``, ``cas``, ``remove``, ``seize``, ``set_bulk``, ``remove_bulk``,
``get_bulk``, ``clear``, ``count``, ``size``, ``status``, ``vacuum``, ``synchronize``,
``match_prefix``, ``match_regex``, ``match_similar``, ``cursor``, ``accept`` (atomic
read-modify-write of one record, KT's visitor), ``iterate``, and
``apply_replicated`` (for a slave).  Failures raise :class:`DBError` carrying Kyoto
Cabinet's error code and message; reads return None for a missing record.
Every method is thread-safe (one re-entrant lock per database).
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from ..protocol.kcnum import INT64MAX, INT64MIN, atoix, to_int64
from ..protocol.replication import OP_CLEAR, OP_REMOVE, OP_SET, encode_log_entry
from .hashing import murmur, tr1_fnv
from .persistence import Journal, RecordFiles, StorageError, read_snapshot, write_snapshot
from .sortedlist import SortedList
from .textmatch import RegexError, compile_regex, cstr, levenshtein, utf8_to_ucs

__all__ = [
    "XTMAX", "XT_NONE", "NOP", "REMOVE", "DBError", "DBSpec", "Database", "Cursor",
    "UpdateSink", "StorageError",
    "NOIMPL", "INVALID", "NOPERM", "DUPREC", "NOREC", "LOGIC", "SYSTEM",
]

#: the stored "never expires" time (2^40 - 1).
XTMAX = (1 << 40) - 1
#: the ``xt`` parameter value meaning "no expiration" (INT64MAX).
XT_NONE = INT64MAX

# Kyoto Cabinet error codes (kcdb.h BasicDB::Error::Code) and their names.
NOIMPL, INVALID, NOPERM, DUPREC, NOREC, LOGIC, SYSTEM = 1, 2, 4, 6, 7, 8, 9
_ERROR_NAMES = {1: "not implemented", 2: "invalid operation", 3: "file not found", 4: "no permission",
                5: "broken file", 6: "record duplication", 7: "no record", 8: "logical inconsistency",
                9: "system error", 15: "miscellaneous error"}


class DBError(Exception):
    """A Kyoto Cabinet database error: ``str()`` is ktserver's ``DB: code: name: message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return _ERROR_NAMES.get(code := self.code, "unknown error" if code else "success")

    def __str__(self) -> str:
        return f"DB: {self.code}: {self.name}: {self.message}"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: visitor result: leave the record alone.
NOP: Any = _Marker("NOP")
#: visitor result: remove the record.
REMOVE: Any = _Marker("REMOVE")

#: a visit_full callback: (key, value, absolute xt) -> NOP | REMOVE | (new value, xt param)
VisitFull = Callable[[bytes, bytes, int], Any]
#: a visit_empty callback: (key) -> NOP | REMOVE | (new value, xt param)
VisitEmpty = Callable[[bytes], Any]

_XT5 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_I64PAIR = struct.Struct(">qq")
_XTSCUNIT = 256          # GC score per write
_XTREADFREQ = 8          # a read scores 1/8 of a write
_XTITERFREQ = 4
_XTUNIT = 8              # GC runs once the score reaches XTSCUNIT * XTUNIT
_DECUNIT = 10 ** 15      # increment_double fixed-point unit
_PHASH_BUCKETS = 1056323  # buckets of ProtoHashDB's tr1::unordered_map after rehash(1048583)
_SEQ_BITS = 40


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


def _nearbyprime(num: int) -> int:
    """kc::nearbyprime: the smallest prime of Kyoto Cabinet's table >= num."""
    for prime in _PRIMES:
        if prime >= num:
            return prime
    return num


_PRIMES = (
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 79, 97, 107, 131,
    157, 181, 223, 257, 307, 367, 431, 521, 613, 727, 863, 1031, 1217, 1451, 1723, 2053, 2437, 2897,
    3449, 4099, 4871, 5801, 6899, 8209, 9743, 11587, 13781, 16411, 19483, 23173, 27581, 32771, 38971,
    46349, 55109, 65537, 77951, 92681, 110221, 131101, 155887, 185363, 220447, 262147, 311743, 370759,
    440893, 524309, 623521, 741457, 881743, 1048583, 1246997, 1482919, 1763491, 2097169, 2493949,
    2965847, 3526987, 4194319, 4987901, 5931641, 7053971, 8388617, 9975803, 11863289, 14107921,
    16777259, 19951597, 23726569, 28215809, 33554467, 39903197, 47453149, 56431657, 67108879,
    79806341, 94906297, 112863217, 134217757, 159612679, 189812533, 225726419, 268435459,
    319225391, 379625083, 451452839, 536870923, 638450719, 759250133, 902905657, 1073741827,
    1276901429, 1518500279, 1805811341, 2147483659, 2553802871, 3037000507, 3611622607, 4294967311)


# -- database specs ---------------------------------------------------------------------------

#: Kyoto Cabinet type of each kind: (type number, iteration family).
_KINDS = {
    "phash": (16, "phash"), "ptree": (17, "ptree"), "stash": (24, "hash"), "cache": (32, "hash"),
    "grass": (33, "plant"), "hash": (48, "hash"), "tree": (49, "plant"), "dir": (64, "dir"),
    "forest": (65, "plant"), "void": (128, "void"),
}
_MEMORY_KINDS = {"-": "phash", "+": "ptree", ":": "stash", "*": "cache", "%": "grass"}
_FILE_KINDS = {".kch": "hash", ".kct": "tree", ".kcd": "dir", ".kcf": "forest"}


@dataclass
class DBSpec:
    """A database spec of the command line: ``path#name=value#...``.

    ``path`` is ``-``, ``+``, ``:``, ``*``, ``%`` (memory) or a file name whose extension
    chooses the type (``.kch .kct .kcd .kcf``; ``#type=`` overrides it).  Tuning
    parameters are kept as given; the ones with a visible effect are read by
    :class:`Database` (``ktopts``, ``ktcapcnt``, ``ktcapsiz``, ``bnum``, ``capcnt``,
    ``capsiz``)."""

    path: str
    kind: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> DBSpec:
        """Parse a spec; raises ValueError for a type Kyoto Cabinet cannot open."""
        path, *tunings = spec.split("#")
        params: dict[str, str] = {}
        for tuning in tunings:
            name, sep, value = tuning.partition("=")
            if sep:
                params[name] = value.split("=")[0]
        kind = _MEMORY_KINDS.get(path)
        type_name = params.get("type", "").lower()
        if type_name:
            kind = _TYPE_ALIASES.get(type_name)
        elif kind is None:
            ext = os.path.splitext(path)[1].lower()
            kind = _FILE_KINDS.get(ext)
        if kind is None:
            raise ValueError(f"{spec}: unknown database type")
        return cls(path, kind, params)

    @property
    def name(self) -> str:
        """The name RPC ``DB=`` and REST ``/name/key`` select it by (base name of the path)."""
        return self.path.rsplit("/", 1)[-1]

    def int_param(self, *names: str, default: int = -1) -> int:
        for name in names:
            if name in self.params:
                return atoix(self.params[name].encode())
        return default


_TYPE_ALIASES = {
    "-": "phash", "phash": "phash", "+": "ptree", "ptree": "ptree", ":": "stash", "stash": "stash",
    "*": "cache", "cache": "cache", "%": "grass", "grass": "grass", "kch": "hash", "hash": "hash",
    "kct": "tree", "tree": "tree", "kcd": "dir", "dir": "dir", "kcf": "forest", "forest": "forest",
}


class UpdateSink(Protocol):
    """Where a database writes its update-log entries (the server's update log).

    ``write(payload)`` receives an encoded log message (origin sid, dbid, op ...) and is
    called with the database lock held, so the log order is the write order."""

    def write(self, payload: bytes) -> int: ...


# -- comparators of the B+ tree types (#rcomp=) -------------------------------------------------


def _decimal_parts(key: bytes) -> tuple[int, Fraction]:
    """kc::DecimalComparator's reading of a key: the integer after blanks and an optional
    minus, then (only if a digit follows) the fraction after a point, 16 digits at most."""
    n = len(key)
    i = 0
    while i < n and (key[i] <= 0x20 or key[i] == 0x7F):
        i += 1
    sign = 1
    if i < n and key[i] == 0x2D:
        sign = -1
        i += 1
    start = i
    while i < n and 0x30 <= key[i] <= 0x39:
        i += 1
    num = to_int64(int(key[start:i]) * sign) if i > start else 0
    frac = Fraction(0)
    if n - i > 1 and key[i] == 0x2E:
        digits = bytearray()
        for c in key[i + 1:i + 1 + 16]:
            if not 0x30 <= c <= 0x39:
                break
            digits.append(c)
        if digits:
            frac = Fraction(int(digits), 10 ** len(digits)) * sign
    return num, frac


class _OrderKey:
    """A tree order key for a non-lexical comparator; ``key`` is the record's key."""

    __slots__ = ("key", "rank")

    def __init__(self, key: bytes, rank: Any) -> None:
        self.key = key
        self.rank = rank

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OrderKey) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: _OrderKey) -> bool:
        return self.rank < other.rank


class _Descending(_OrderKey):
    __slots__ = ()

    def __lt__(self, other: _OrderKey) -> bool:
        return other.rank < self.rank


#: ``#rcomp=`` values (kcpolydb.h) -> (name in ``status``, order key maker or None for lexical)
_COMPARATORS: dict[str, tuple[str, Callable[[bytes], Any] | None]] = {
    "lex": ("lexical", None), "lexical": ("lexical", None),
    "dec": ("decimal", lambda k: _OrderKey(k, (*_decimal_parts(k), k))),
    "decimal": ("decimal", lambda k: _OrderKey(k, (*_decimal_parts(k), k))),
    "lexdesc": ("lexicaldesc", lambda k: _Descending(k, k)),
    "lexicaldesc": ("lexicaldesc", lambda k: _Descending(k, k)),
    "decdesc": ("decimaldesc", lambda k: _Descending(k, (*_decimal_parts(k), k))),
    "decimaldesc": ("decimaldesc", lambda k: _Descending(k, (*_decimal_parts(k), k))),
}


# -- the raw record store (the Kyoto Cabinet database under the TimedDB) ---------------------


class _Store:
    """The raw records of one database, in Kyoto Cabinet's iteration order.

    ``recs`` maps key -> [value, xt, okey]: the user value, the absolute xt (INT64MAX in
    persistent databases) and the order key.  ``order`` holds the order keys sorted; for
    tree types the order key is the key itself, for hash types an integer
    ``bucket << 40 | sequence`` resolved through ``by_okey``.  DirDB keeps no order here:
    its cursors read the directory (:class:`_DirCursor`), ``dir_names`` maps file names to
    keys.  Every mutation is written through to ``disk`` when there is one.
    """

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        self.kind = kind = spec.kind
        self.family = _KINDS[kind][1]
        self.tree = self.family in ("ptree", "plant")
        rcomp = spec.params.get("rcomp", spec.params.get("comparator", "")) if self.family == "plant" else ""
        self.comparator, self.rank_of = _COMPARATORS.get(rcomp, ("lexical", None))
        self.void = kind == "void"
        self.persist = persist
        self.disk = disk
        self.recs: dict[bytes, list[Any]] = {}
        self.order: SortedList | None = None if self.family == "dir" else SortedList()
        self.by_okey: dict[Any, bytes] = {}
        self.dir_names: dict[str, bytes] = {}
        self.seq = 0
        self.raw_size = 0
        self.epoch = 0           # bumped by clear(): cursors positioned before are invalid
        self.cursors: weakref.WeakSet[_RawCursor | _DirCursor] = weakref.WeakSet()
        self.cursor_serial = 0   # DirDB cursors are escaped in creation order
        self.xt_width = 0 if persist else 5
        bnum = spec.int_param("bnum")
        self.bnum = (_nearbyprime(bnum) if bnum > 32767 else bnum) if bnum > 0 else 1048583
        self.cache_slots: list[list[int]] = []
        if kind == "hash":
            self.file_end = 0                          # HashDB: where the next record is appended
            self.alloc: dict[int, int] = {}            # offset -> record block size
            self.free_map: dict[int, int] = {}         # offset -> free block size
            self.free_blocks = SortedList()            # (size, -offset): KC's free block pool
            self.dfcur = 0                             # where defragmentation goes on
            self.isiter = False                        # a cursor or iterate() is writing
            roff = 64 + 6 * 1024 + 14 + 6 * self.bnum     # header, free block pool, buckets
            self.roff = roff + (-roff & 7)
        if kind == "cache":
            self.cache_capcnt = spec.int_param("capcnt", "capcount", "cap_count")
            self.cache_capsiz = spec.int_param("capsiz", "capsize", "cap_size")
            self._slot_capcnt = self.cache_capcnt // 16 + 1 if self.cache_capcnt > 0 else 1 << 62
            self._slot_capsiz = (max(self.cache_capsiz // 16 + 1 - 116, 1) if self.cache_capsiz > 0
                                 else 1 << 62)
            self.cache_slots = [[0, 0] for _ in range(16)]  # per slot: [count, bytes]

    def stored(self, value: bytes, xt: int) -> bytes:
        """The value as Kyoto Cabinet stores it: 5-byte xt prefix unless ktopts=p."""
        return value if self.persist else _XT5.pack(xt)[3:] + value

    def probe(self, key: bytes) -> Any:
        """The order key a tree key sorts as (the key itself unless #rcomp says otherwise)."""
        return key if self.rank_of is None else self.rank_of(key)

    def _new_okey(self, key: bytes) -> Any:
        if self.tree:
            return self.probe(key)
        self.seq += 1
        kind = self.kind
        if kind == "stash":
            return (murmur(key) % self.bnum) << _SEQ_BITS | self.seq
        if kind == "cache":
            return (murmur(key) & 15) << _SEQ_BITS | self.seq
        if kind == "phash":
            return (tr1_fnv(key) % _PHASH_BUCKETS) << _SEQ_BITS | ((1 << _SEQ_BITS) - 1 - self.seq)
        if kind == "dir":
            return RecordFiles.name_of(key)
        raise AssertionError(kind)  # HashDB records get file offsets from _allocate

    def key_of(self, okey: Any) -> bytes:
        if self.tree:
            return okey if self.rank_of is None else okey.key
        return self.by_okey[okey]

    def has_okey(self, okey: Any) -> bool:
        return self.key_of(okey) in self.recs if self.tree else okey in self.by_okey

    # HashDB (.kch) iterates in file order; its records are placed like Kyoto Cabinet
    # places them (kchashdb.h).  The file is a sequence of blocks, records (``alloc``) and
    # free blocks (``free_map``), 8-byte aligned.  A new record takes the smallest pooled
    # free block that fits (the pool keeps the 1024 largest; among equal sizes the last
    # one) or is appended; a record that outgrows its block moves; a block much larger
    # than its record is split (adjust_record); a removed record's block becomes free.
    # Defragmentation shifts records down over free blocks, a few blocks per step from
    # where the last step stopped (defrag_impl).  Offsets count from the first record
    # (KC's roff).
    def _record_size(self, key: bytes, value: bytes) -> int:
        """KC calc_record_size (without the alignment padding)."""
        vsiz = len(value) + self.xt_width
        ksiz = len(key)
        size = 14 + ksiz + vsiz
        for n in (ksiz, vsiz):
            size += 1 if n < 1 << 7 else 2 if n < 1 << 14 else 3 if n < 1 << 21 else 4 if n < 1 << 28 else 5
        return size

    def _allocate(self, size: int) -> int:
        """The offset of a new record of ``size`` bytes."""
        padded = size + (-size & 7)
        block = self.free_blocks.ceiling((padded, -(1 << 62)))
        if block is not None:
            self.free_blocks.discard(block)
            offset = -block[1]
            del self.free_map[offset]
            if self.cursors:
                self._escape_block(offset, offset + block[0])
            self.alloc[offset] = block[0]
            self._adjust(offset, size)
            return offset
        offset = self.file_end
        self.file_end += padded
        self.alloc[offset] = padded
        return offset

    def _adjust(self, offset: int, size: int) -> None:
        """KC adjust_record: a block padded by more than half (or 32 KiB) gives its tail
        back as a free block."""
        rsiz = self.alloc[offset]
        psiz = rsiz - size
        if psiz > 32767 or psiz > rsiz // 2:
            nsiz = psiz & ~7
            if nsiz < 16:
                return
            self.alloc[offset] = rsiz - nsiz
            self._insert_free(offset + rsiz - nsiz, nsiz)

    def _insert_free(self, offset: int, size: int) -> None:
        """KC insert_free_block: the block is free; cursors on it move on; it joins the
        pool unless the pool is full of larger blocks."""
        self.free_map[offset] = size
        if self.cursors:
            self._escape_block(offset, offset + size)
        pool = self.free_blocks
        if len(pool) >= 1024:
            smallest = pool.first()
            if size <= smallest[0]:
                return
            pool.discard(smallest)
        pool.add((size, -offset))

    def _free(self, offset: int) -> None:
        self._insert_free(offset, self.alloc.pop(offset))

    def _resize(self, key: bytes, rec: list[Any], value: bytes) -> None:
        """A HashDB record's value changes: it stays (maybe giving back a tail) or, if it
        outgrows its block, moves elsewhere."""
        old = rec[2]
        size = self._record_size(key, value)
        if size <= self.alloc[old]:
            self._adjust(old, size)
            return
        self.order.discard(old)
        del self.by_okey[old]
        self._free(old)
        if self.isiter:   # a cursor or an iteration always appends (accept_impl isiter)
            padded = size + (-size & 7)
            okey = self.file_end
            self.file_end += padded
            self.alloc[okey] = padded
        else:
            okey = self._allocate(size)
        rec[2] = okey
        self.order.add(okey)
        self.by_okey[okey] = key

    def defrag(self, step: int) -> None:
        """KC HashDB::defrag: ``step`` < 1 defragments the whole file, otherwise ``step``
        blocks from where the last call stopped."""
        if self.kind != "hash":
            return
        if step < 1:
            self.dfcur = 0
            step = 1 << 62
        alloc, free_map = self.alloc, self.free_map
        end = self.file_end
        while True:
            if self.dfcur >= end:
                self.dfcur = 0
                return
            if step < 1:
                return
            step -= 1
            size = free_map.get(self.dfcur)
            if size is not None:
                break
            self.dfcur += alloc[self.dfcur]
        base = dest = self.dfcur
        del free_map[base]
        self.dfcur += size
        step += 1
        order, by_okey, recs = self.order, self.by_okey, self.recs
        while step > 0 and self.dfcur < end:
            step -= 1
            off = self.dfcur
            if self.cursors:
                self._escape_block(off, dest)
            size = free_map.pop(off, None)
            if size is not None:
                self.dfcur += size
                continue
            size = alloc.pop(off)
            self.dfcur += size
            key = by_okey.pop(off)
            rec = recs[key]
            psiz = size - self._record_size(key, rec[0])
            if psiz >= 8:
                size -= psiz - psiz % 8
            order.discard(off)
            order.add(dest)
            by_okey[dest] = key
            rec[2] = dest
            alloc[dest] = size
            dest += size
        pool = self.free_blocks
        for block in [b for b in pool if base <= -b[1] < self.dfcur]:
            pool.discard(block)
        if self.dfcur >= end:
            self.file_end = dest
            for cur in self.cursors:
                if cur.epoch == self.epoch and cur.pos is not None:
                    if cur.pos >= dest:
                        cur.pos = None
                    elif cur.end > dest:
                        cur.end = dest
            self.dfcur = 0
        else:
            self._insert_free(dest, self.dfcur - dest)
            self.dfcur = dest

    def insert(self, key: bytes, value: bytes, xt: int) -> None:
        if self.void:
            return
        okey = self._allocate(self._record_size(key, value)) if self.kind == "hash" else self._new_okey(key)
        self.recs[key] = [value, xt, okey]
        if self.order is not None:
            self.order.add(okey)
            if not self.tree:
                self.by_okey[okey] = key
        elif self.kind == "dir":
            self.dir_names[okey] = key
        size = len(key) + len(value) + self.xt_width
        self.raw_size += size
        if self.disk is not None:
            self.disk.record_set(key, self.stored(value, xt))
            self.after_write()
        if self.cache_slots:
            slot = self.cache_slots[okey >> _SEQ_BITS]
            slot[0] += 1
            slot[1] += 40 + size
            self._adjust_cache_slot(okey >> _SEQ_BITS)

    def update(self, key: bytes, rec: list[Any], value: bytes, xt: int) -> None:
        grow = len(value) - len(rec[0])
        if self.kind == "hash":
            self._resize(key, rec, value)
        self.raw_size += grow
        rec[0] = value
        rec[1] = xt
        if self.disk is not None:
            self.disk.record_set(key, self.stored(value, xt))
            self.after_write()
        if self.cache_slots:
            self.cache_slots[rec[2] >> _SEQ_BITS][1] += grow
            if grow > 0:
                self._adjust_cache_slot(rec[2] >> _SEQ_BITS)

    def _escape(self, okey: Any) -> None:
        """Move every cursor standing on a record that goes away to the next record, as
        Kyoto Cabinet's iterator-like cursors are moved (PlantDB cursors remember keys)."""
        if self.family != "plant":
            for cur in list(self.cursors):
                cur.escape(okey)

    def _escape_block(self, off: int, dest: int) -> None:
        """HashDB escape_cursors: the block at ``off`` became free (or a free block there
        is being reused): cursors on it move to ``dest``, the following block; a cursor
        whose scan ended at ``off`` now ends at ``dest``."""
        epoch = self.epoch
        for cur in self.cursors:
            if cur.epoch != epoch:
                continue
            if cur.end == off:
                cur.end = dest
                if cur.pos is not None and cur.pos >= dest:
                    cur.pos = None
            if cur.pos == off:
                cur.pos = dest if dest < cur.end else None

    def _escape_dir(self, name: str, via: Any) -> None:
        """DirDB escape_cursors, with its aliasing of the removing cursor's name (see
        :class:`_DirCursor`)."""
        alias: str | None = name
        for cur in sorted(self.cursors, key=lambda c: c.serial):
            if alias is not None and cur._alive() and cur.name() == alias:
                cur._read()
                if cur is via:
                    alias = None if cur.grown else cur.name()

    def delete(self, key: bytes, via: Any = None) -> None:
        """Remove a record; ``via``: the raw cursor that removes it, if any."""
        rec = self.recs.pop(key)
        okey = rec[2]
        if self.cursors:
            if self.kind == "dir":
                self._escape_dir(okey, via)
            elif self.kind != "hash":   # HashDB: _free escapes
                self._escape(okey)
        if self.order is not None:
            self.order.discard(okey)
            if not self.tree:
                del self.by_okey[okey]
            if self.kind == "hash":
                self._free(okey)
        elif self.kind == "dir":
            del self.dir_names[okey]
        size = len(key) + len(rec[0]) + self.xt_width
        self.raw_size -= size
        if self.disk is not None:
            self.disk.record_remove(key)
        if self.cache_slots:
            slot = self.cache_slots[okey >> _SEQ_BITS]
            slot[0] -= 1
            slot[1] -= 40 + size

    def touch(self, key: bytes, rec: list[Any]) -> None:
        """CacheDB moves a record to the end of its slot's LRU list on every access (unless
        it is there already)."""
        okey = rec[2]
        following = self.order.higher(okey)
        if following is None or following >> _SEQ_BITS != okey >> _SEQ_BITS:
            return
        if self.cursors:
            self._escape(okey)
        self.order.discard(okey)
        del self.by_okey[okey]
        self.seq += 1
        okey = (okey >> _SEQ_BITS) << _SEQ_BITS | self.seq
        rec[2] = okey
        self.order.add(okey)
        self.by_okey[okey] = key

    def _adjust_cache_slot(self, sidx: int) -> None:
        """CacheDB adjust_slot_capacity: drop the least recently used record of a full slot."""
        slot = self.cache_slots[sidx]
        if slot[0] > self._slot_capcnt or slot[1] > self._slot_capsiz:
            okey = self.order.ceiling(sidx << _SEQ_BITS)
            if okey is not None and okey >> _SEQ_BITS == sidx:
                self.delete(self.by_okey[okey])

    def clear(self) -> None:
        self.recs.clear()
        self.by_okey.clear()
        self.dir_names.clear()
        if self.order is not None:
            self.order.clear()
        if self.family not in ("phash", "ptree"):  # ProtoDB::clear forgets to reset its size
            self.raw_size = 0
        if self.kind == "hash":
            self.file_end = 0
            self.alloc.clear()
            self.free_map.clear()
            self.free_blocks.clear()
            self.dfcur = 0
        self.epoch += 1
        for slot in self.cache_slots:
            slot[0] = slot[1] = 0
        if self.disk is not None:
            self.disk.record_clear()

    def ordered_keys(self) -> list[bytes]:
        """Every key in database order (DirDB: the directory's current order)."""
        if self.order is None:
            names = self.dir_names
            return [names[n] for n in self.disk.names() if n in names]
        if self.tree:
            return list(self.order) if self.rank_of is None else [okey.key for okey in self.order]
        by_okey = self.by_okey
        return [by_okey[okey] for okey in self.order]

    def cursor(self) -> _RawCursor | _DirCursor:
        cur = _DirCursor(self) if self.kind == "dir" else _RawCursor(self)
        self.cursors.add(cur)
        return cur

    def live_records(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, stored value) of every record in database order, for rewriting a journal
        (replaying it then rebuilds the same order)."""
        recs = self.recs
        return ((k, self.stored(recs[k][0], recs[k][1])) for k in self.ordered_keys())

    def after_write(self, running: bool = True) -> None:
        """Compact the journal once it is mostly dead records."""
        if self.disk is not None:
            self.disk.maybe_compact(self.raw_size, self.live_records, running)


def _norec() -> DBError:
    return DBError(NOREC, "no record")


def _noimpl() -> DBError:
    return DBError(NOIMPL, "not implemented")


#: a raw visitor of a cursor: (key, record) -> NOP | REMOVE | (new value, absolute xt)
_RawVisit = Callable[[bytes, list[Any]], Any]


class _RawCursor:
    """A Kyoto Cabinet cursor on the raw store, with the rules of its database type.

    ``pos`` is the order key of the current record (None: not positioned; for ProtoTree
    and ProtoHash also "the end").  Hash-type and ProtoTree cursors move to the next
    record when theirs is removed (resolved lazily: a vanished position means "the next
    order key"); PlantDB cursors (GrassDB, TreeDB, ForestDB) remember the key and land
    on the first record >= it, and after a removal in backward mode on the previous one.

    HashDB (``.kch``) cursors are byte offsets into the file: ``pos`` may be a free block
    (the record there is the first one at or after it), and ``end`` is the file's end
    when the cursor jumped; records appended later lie beyond it and are not visited
    (kchashdb.h Cursor::step_impl, escape_cursors).
    """

    __slots__ = ("store", "pos", "back", "epoch", "end", "__weakref__")

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.pos: Any = None
        self.back = False      # PlantDB's own direction flag
        self.epoch = store.epoch
        self.end = 0           # HashDB: the scan's end offset

    def escape(self, okey: Any) -> None:
        """The record ``okey`` is about to go away (still in the order)."""
        if self.pos == okey and self.epoch == self.store.epoch:
            self.pos = self.store.order.higher(okey)

    def current(self) -> Any:
        """The order key of the record the cursor stands on, or None."""
        store = self.store
        if self.epoch != store.epoch:
            self.epoch = store.epoch
            self.pos = None
        pos = self.pos
        if pos is None or store.has_okey(pos):
            return pos
        nxt = store.order.ceiling(pos)
        if store.kind == "hash" and nxt is not None and nxt >= self.end:
            nxt = None
        if store.family != "plant":
            self.pos = nxt
        return nxt

    def _next(self, pos: Any) -> Any:
        """The order key after ``pos`` (HashDB: within the scan), or None."""
        nxt = self.store.order.higher(pos)
        if nxt is not None and self.store.kind == "hash" and nxt >= self.end:
            return None
        return nxt

    def jump(self, key: bytes | None = None) -> None:
        store = self.store
        order = store.order
        self.back = False
        self.epoch = store.epoch
        if store.kind == "hash":
            # HashDB: from the first block (even if it is free) to the current end
            self.end = store.file_end
            if key is None:
                self.pos = 0 if store.file_end > 0 else None
            else:
                rec = store.recs.get(key)
                self.pos = rec[2] if rec is not None else None
            if self.pos is None:
                raise _norec()
            return
        if key is None:
            self.pos = order.first()
        elif store.tree:
            self.pos = order.ceiling(store.probe(key))
        else:
            rec = store.recs.get(key)
            self.pos = rec[2] if rec is not None else None
        if self.pos is None:
            raise _norec()

    def jump_back(self, key: bytes | None = None) -> None:
        store = self.store
        order = store.order
        family = store.family
        if family == "hash":
            raise _noimpl()
        self.epoch = store.epoch
        if family == "phash":
            if key is not None and key in store.recs:
                self.pos = store.recs[key][2]
                return
            self.pos = None
            raise _norec() if not store.recs else _noimpl()
        self.back = True
        if key is None:
            self.pos = order.last()
            if self.pos is None:
                raise _norec()
            return
        probe = store.probe(key)
        found = order.ceiling(probe)
        if found is None:
            self.pos = order.last()
        elif probe < found:
            if family == "ptree" and found == order.first():
                self.pos = None
            else:
                self.pos = order.lower(found)
        else:
            self.pos = found
        if self.pos is None:
            raise _norec()

    def step(self) -> None:
        if self.store.family == "plant":
            self.back = False
            self.accept(lambda key, rec: NOP, True)
            if self.pos is None:
                raise _norec()
            return
        store = self.store
        if store.kind == "hash":
            # HashDB steps over one *block*: from a free block (where a removal left the
            # cursor) it lands on the first record after it
            if self.epoch != store.epoch:
                self.epoch = store.epoch
                self.pos = None
            pos = self.pos
            if pos is None:
                raise _norec()
            if store.has_okey(pos):
                self.pos = self._next(pos)
            else:
                nxt = store.order.ceiling(pos)
                self.pos = nxt if nxt is not None and nxt < self.end else None
            if self.pos is None:
                raise _norec()
            return
        pos = self.current()
        if pos is None:
            raise _norec()
        self.pos = self._next(pos)
        if self.pos is None:
            raise _norec()

    def step_back(self) -> None:
        store = self.store
        family = store.family
        order = store.order
        if family == "hash":
            raise _noimpl()
        if family == "plant":
            self.current()
            if self.pos is None:
                raise _norec()
            self.back = True
            self.pos = order.lower(self.pos)
            if self.pos is None:
                raise _norec()
            return
        pos = self.current()
        if pos == order.first():
            self.pos = None
            raise _norec()
        if family == "phash":
            self.pos = None
            raise _noimpl()
        self.pos = order.last() if pos is None else order.lower(pos)

    def accept(self, visit: _RawVisit, step: bool) -> None:
        """Visit the current record and apply the visitor's answer (KC Cursor::accept)."""
        store = self.store
        order = store.order
        pos = self.current()
        if pos is None:
            self.pos = None
            raise _norec()
        key = store.key_of(pos)
        rec = store.recs[key]
        result = visit(key, rec)
        plant_back = store.family == "plant" and self.back
        if store.kind == "hash":
            # HashDB: a removed or outgrown record's block is freed, which moves the
            # cursor to the next block; no further step then
            if result is REMOVE:
                store.delete(key)
                return
            if result is not NOP:
                store.isiter = True
                try:
                    store.update(key, rec, result[0], result[1])
                finally:
                    store.isiter = False
                if rec[2] != pos:
                    return
            self.pos = self._next(pos) if step else pos
            return
        if result is REMOVE:
            store.delete(key)
            self.pos = order.lower(pos) if plant_back else order.ceiling(pos)
            return
        if result is not NOP:
            store.update(key, rec, result[0], result[1])
        if step:
            self.pos = order.lower(pos) if plant_back else order.higher(pos)
        else:
            self.pos = pos

    # the garbage collector's cursor moves forward only
    def gc_accept(self, now: int) -> bool:
        """One garbage-collection step: remove the current record if it expired before
        ``now``, else move on.  False: no current record (the GC then jumps back)."""
        self.pos = pos = self.current()
        if pos is None:
            return False
        store = self.store
        key = store.key_of(pos)
        if now > store.recs[key][1]:
            store.delete(key)
        else:
            self.pos = self._next(pos)
        return True

    def gc_remove(self) -> bool:
        pos = self.current()
        if pos is None:
            return False
        store = self.store
        store.delete(store.key_of(pos))
        if store.kind != "hash":   # HashDB: freeing the block moved the cursor
            self.pos = store.order.ceiling(pos)
        return True

    def gc_jump(self) -> None:
        store = self.store
        self.epoch = store.epoch
        if store.kind == "hash":
            self.end = store.file_end
            self.pos = 0 if store.file_end > 0 else None
        else:
            self.pos = store.order.first()


class _DirCursor:
    """A DirDB cursor, as Kyoto Cabinet's (kcdirdb.h): a directory stream read entry by
    entry into ``name_``.

    A small directory is read whole at the first readdir (glibc buffers 32 KiB of
    entries, and ext4 reports the end after that), so the listing is taken when the
    cursor jumps: files created later are not seen.  Entries starting with ``_`` (the
    database's own files) are skipped.  A step reads the next entry whatever it is; a
    visit of a vanished file reads on to the next file that still exists.

    When a record file is removed, every live cursor standing on that name reads on
    (``escape_cursors``), in cursor creation order.  If the removal went through a cursor
    (a cursor remove, the expiry GC), the name compared is that cursor's own ``name_``
    buffer, so once that cursor has moved the cursors after it are compared with its
    *new* name: a quirk that can disable an unrelated cursor, reproduced here
    (``std::string`` capacity is tracked: a reallocated buffer matches nothing).
    """

    __slots__ = ("store", "names", "idx", "alive", "epoch", "cap", "grown", "serial", "__weakref__")

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.names: list[str] = []   # the listing, ``_`` files included
        self.idx = -1                # index of name_ in ``names`` (-1: still "")
        self.alive = False
        self.epoch = store.epoch
        self.cap = 15                # name_'s capacity (libstdc++ short-string buffer)
        self.grown = False
        store.cursor_serial += 1
        self.serial = store.cursor_serial

    def name(self) -> str:
        return self.names[self.idx] if self.idx >= 0 else ""

    def _alive(self) -> bool:
        if self.epoch != self.store.epoch:   # clear() disabled every cursor
            self.epoch = self.store.epoch
            self.alive = False
        return self.alive

    def _open(self) -> None:
        self.epoch = self.store.epoch
        self.names = self.store.disk.names(meta=True)
        self.idx = -1
        self.alive = True

    def _read(self) -> bool:
        """DirStream::read into name_ until an entry not starting with ``_``; False at
        the end (the cursor is disabled, name_ keeps the last entry read).  ``grown``
        tells whether name_'s buffer was reallocated on the way."""
        self.grown = False
        names = self.names
        while True:
            if self.idx + 1 >= len(names):
                self.alive = False
                return False
            self.idx += 1
            name = names[self.idx]
            if len(name) > self.cap:
                self.cap = max(len(name), 2 * self.cap)
                self.grown = True
            if name[0] != "_":
                return True

    def escape(self, name: str) -> None:   # handled by _Store._escape_dir
        pass

    def _read_on(self) -> str | None:
        """The current file if it still exists, else the next one that does (None at
        the end, the cursor disabled)."""
        live = self.store.dir_names
        name = self.name()
        while name not in live:
            if not self._read():
                return None
            name = self.name()
        return name

    def jump(self, key: bytes | None = None) -> None:
        store = self.store
        self._open()
        if key is None:
            if not self._read():
                raise _norec()
            return
        live = store.dir_names
        while True:
            if not self._read():
                raise _norec()
            if live.get(self.name()) == key:
                return

    def jump_back(self, key: bytes | None = None) -> None:
        raise _noimpl()

    def step(self) -> None:
        if not self._alive() or not self._read():
            raise _norec()

    def step_back(self) -> None:
        raise _noimpl()

    def accept(self, visit: _RawVisit, step: bool) -> None:
        if not self._alive():
            raise _norec()
        name = self._read_on()
        if name is None:
            raise _norec()
        store = self.store
        key = store.dir_names[name]
        rec = store.recs[key]
        result = visit(key, rec)
        if result is REMOVE:
            store.delete(key, self)   # the count changed: no step
            return
        if result is not NOP:
            store.update(key, rec, result[0], result[1])
        if step and self.alive:
            self._read()

    # the garbage collector's cursor (TimedDB::expire_records, Cursor::remove)
    def gc_accept(self, now: int) -> bool:
        if not self._alive():
            return False
        name = self._read_on()
        if name is None:
            return True   # KC's accept reports success when reading on hits the end
        store = self.store
        key = store.dir_names[name]
        if now > store.recs[key][1]:
            store.delete(key, self)
        else:
            self._read()
        return True

    def gc_remove(self) -> bool:
        if not self._alive():
            return False
        name = self._read_on()
        if name is None:
            return False
        self.store.delete(self.store.dir_names[name], self)
        return True

    def gc_jump(self) -> None:
        self._open()
        self._read()


# -- numeric record formats -------------------------------------------------------------------


def _ld_to_i64(num: float) -> int:
    """C's (int64_t) of a long double on x86-64: out of range gives INT64MIN."""
    return int(num) if -9.223372036854775808e18 <= num < 9.223372036854775808e18 else INT64MIN


def _ld_mul_trunc(frac: float, unit: int = _DECUNIT) -> int:
    """(int64_t)(frac * unit) computed in x87 long double (64-bit mantissa, round half even)."""
    exact = Fraction(frac) * unit
    if not exact:
        return 0
    mag = abs(exact)
    exp = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** exp > mag:
        exp -= 1
    scale = Fraction(2) ** (63 - exp)
    rounded = Fraction(round(mag * scale)) / scale
    return int(rounded) if exact > 0 else -int(rounded)


def _fixed_to_float(integ: int, fract: int) -> float:
    return float(integ) + fract / 1e15


# -- the timed database -----------------------------------------------------------------------


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
        persist = "p" in spec.params.get("ktopts", spec.params.get("ktoptions", ""))
        self.capcnt = spec.int_param("ktcapcnt", "ktcapcount", "ktcap_count")
        self.capsiz = spec.int_param("ktcapsiz", "ktcapsize", "ktcap_size")
        disk: Journal | RecordFiles | None = None
        kind = "void" if void else spec.kind
        if kind in ("hash", "tree"):
            disk = Journal(spec.path, writable, 2 if persist else 0)
        elif kind == "forest":
            if not os.path.isdir(spec.path):
                if not writable:
                    raise StorageError(f"{spec.path}: no such directory")
                os.mkdir(spec.path)
            disk = Journal(os.path.join(spec.path, "journal"), writable, 2 if persist else 0)
        elif kind == "dir":
            disk = RecordFiles(spec.path, writable, 2 if persist else 0)
        if disk is not None:
            persist = bool(disk.opts & 2)
        self.persistent = persist
        self._store = _Store(DBSpec(spec.path, kind, spec.params), persist, disk)
        if disk is not None:
            self._load(disk)
        self._gc = writable and not persist
        self._xsc = 0
        self._xcur = self._store.cursor()
        if self._gc and self._store.recs:
            self._xcur.gc_jump()

    def _load(self, disk: Journal | RecordFiles) -> None:
        store = self._store
        store.disk = None  # replay without writing back
        try:
            for op, key, stored in disk.replay():
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
        finally:
            store.disk = disk
        store.after_write(running=False)

    def _unpack(self, stored: bytes) -> tuple[bytes, int]:
        """(value, absolute xt) of a stored value (a value shorter than the xt prefix is
        treated as already expired)."""
        if self.persistent:
            return stored, INT64MAX
        if len(stored) < 5:
            return stored, 0
        return stored[5:], _XT5.unpack(b"\0\0\0" + stored[:5])[0]

    def dump_snapshot(self, path: str) -> None:
        """Write every record to a snapshot file (``-bgs``), atomically."""
        with self.lock:
            write_snapshot(path, 2 if self.persistent else 0, self._store.live_records())

    def load_snapshot(self, path: str) -> None:
        """Store the records of a snapshot file (raw, not logged; StorageError if unreadable)."""
        records = read_snapshot(path)
        with self.lock:
            store = self._store
            for op, key, stored in records:
                if op == OP_SET:
                    value, xt = self._unpack(stored)
                    rec = store.recs.get(key)
                    if rec is None:
                        store.insert(key, value, xt)
                    else:
                        store.update(key, rec, value, xt)
            if self._gc and store.recs:
                self._xcur.gc_jump()

    def close(self) -> None:
        """Flush and release the database file (compacting it when worthwhile)."""
        with self.lock:
            disk = self._store.disk
            if disk is None:
                return
            store = self._store
            store.after_write(running=False)
            disk.close()
            store.disk = None

    # -- internals ----------------------------------------------------------------------------

    def _log_set(self, key: bytes, value: bytes, xt: int, sid: int | None = None) -> None:
        stored = value if self.persistent else _XT5.pack(xt)[3:] + value
        self._sink.write(encode_log_entry(self._sid if sid is None else sid, self.index, OP_SET, key, stored))

    def _log_remove(self, key: bytes, sid: int | None = None) -> None:
        self._sink.write(encode_log_entry(self._sid if sid is None else sid, self.index, OP_REMOVE, key))

    def _check_writable(self) -> None:
        if not self.writable:
            raise DBError(NOPERM, "permission denied")

    def _score(self, score: int) -> None:
        """kttimeddb.h expire_records: accumulate the GC score, run the GC every 2048."""
        xsc = self._xsc + score
        if xsc < _XTSCUNIT * _XTUNIT:
            self._xsc = xsc
            return
        step = xsc // _XTSCUNIT
        self._xsc = xsc - step * _XTSCUNIT
        self._expire(step)

    def _expire(self, step: int) -> None:
        store = self._store
        recs = store.recs
        cur = self._xcur
        now = _now()
        done = 0
        while done < step:
            if not cur.gc_accept(now):
                cur.gc_jump()
                self._xsc = 0
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
                self._log_remove(key)
            if rec is not None:
                store.delete(key)
            return
        value, xt = result
        xt = INT64MAX if self.persistent else modify_exptime(xt, now)
        if self._sink is not None:
            self._log_set(key, value, xt)
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
            if store.cache_slots:
                store.touch(key, rec)
            if self.persistent:
                result = visit_full(key, rec[0], INT64MAX)
            elif now > rec[1]:
                result = visit_empty(key)
            else:
                result = visit_full(key, rec[0], rec[1])
        self._apply(key, rec, result, now)
        if self._gc:
            self._score(_XTSCUNIT if writable else _XTSCUNIT // _XTREADFREQ)
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
        if store.cache_slots:
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
            if self._gc:
                xsc = self._xsc + _XTSCUNIT // _XTREADFREQ
                if xsc < _XTSCUNIT * _XTUNIT:  # the usual case of _score, inline
                    self._xsc = xsc
                else:
                    self._score(_XTSCUNIT // _XTREADFREQ)
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
                self._log_set(key, value, axt)
            if rec is None:
                store.insert(key, value, axt)
            else:
                if store.cache_slots:
                    store.touch(key, rec)
                store.update(key, rec, value, axt)
            if self._gc:
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
            raise _norec()

    def append(self, key: bytes, value: bytes, xt: int = XT_NONE) -> None:
        """Append to a record's value (creating it if absent)."""
        self.accept(key, lambda k, v, x: (v + value, xt), lambda k: (value, xt))

    def increment(self, key: bytes, num: int, orig: int = 0, xt: int = XT_NONE) -> int:
        """Add to an 8-byte big-endian integer record (TimedDB::increment).  ``orig`` is the
        initial value when absent; INT64MIN ("try") fails then, INT64MAX ("set") stores
        ``num`` whatever the record holds.  LOGIC error for a value that is not 8 bytes."""
        out = [0]

        def full(k: bytes, v: bytes, x: int) -> Any:
            if len(v) != 8:
                out[0] = INT64MIN
                return NOP
            if orig == INT64MAX:
                onum = 0
            else:
                onum = _I64.unpack(v)[0]
                if num == 0:
                    out[0] = onum
                    return NOP
            out[0] = to_int64(num + onum)
            return _I64.pack(out[0]), xt

        def empty(k: bytes) -> Any:
            if orig == INT64MIN:
                out[0] = INT64MIN
                return NOP
            out[0] = num if orig == INT64MAX else to_int64(num + orig)
            return _I64.pack(out[0]), xt

        self.accept(key, full, empty, num != 0 or orig != INT64MIN)
        if out[0] == INT64MIN:
            raise DBError(LOGIC, "logical inconsistency")
        return out[0]

    def increment_double(self, key: bytes, num: float, orig: float = 0.0, xt: int = XT_NONE) -> float:
        """Add to a 16-byte fixed-point record (TimedDB::increment_double): big-endian int64
        integral part and int64 fraction x 10^15.  ``orig`` -inf ("try") fails when
        absent, +inf ("set") overwrites.  LOGIC error for a value that is not 16 bytes."""
        out = [math.nan]
        set_mode = math.isinf(orig) and orig > 0

        def full(k: bytes, v: bytes, x: int) -> Any:
            if len(v) != 16:
                return NOP
            integ, fract = (0, 0) if set_mode else _I64PAIR.unpack(v)
            if integ == INT64MIN and fract == INT64MIN:
                return NOP
            if integ == INT64MAX:
                out[0] = math.inf
                return NOP
            if integ == INT64MIN:
                out[0] = -math.inf
                return NOP
            if num == 0.0 and not set_mode:
                out[0] = _fixed_to_float(integ, fract)
                return NOP
            dfract, dinteg = math.modf(num)
            if math.isnan(dinteg):
                integ = fract = INT64MIN
            elif math.isinf(dinteg):
                integ, fract = (INT64MAX if dinteg > 0 else INT64MIN), 0
                out[0] = dinteg
            else:
                integ = to_int64(integ + _ld_to_i64(dinteg))
                fract = to_int64(fract + _ld_mul_trunc(dfract))
                if fract >= _DECUNIT:
                    integ = to_int64(integ + 1)
                    fract -= _DECUNIT
                out[0] = _fixed_to_float(integ, fract)
            return _I64PAIR.pack(integ, fract), xt

        def empty(k: bytes) -> Any:
            if math.isnan(orig) or (math.isinf(orig) and orig < 0):
                return NOP
            total = num if math.isinf(orig) else num + orig
            dfract, dinteg = math.modf(total)
            if math.isnan(dinteg):
                integ = fract = INT64MIN
            elif math.isinf(dinteg):
                integ, fract = (INT64MAX if dinteg > 0 else INT64MIN), 0
            else:
                integ, fract = _ld_to_i64(dinteg), _ld_mul_trunc(dfract)
            out[0] = total
            return _I64PAIR.pack(integ, fract), xt

        self.accept(key, full, empty)
        if math.isnan(out[0]):
            raise DBError(LOGIC, "logical inconsistency")
        return out[0]

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
            self._log_remove(key)
        if rec is None:
            found = False
        else:
            found = self.persistent or _now() <= rec[1]
            store.delete(key)
        if score and self._gc:
            self._score(_XTSCUNIT)
        return found

    def remove(self, key: bytes) -> None:
        """Remove a record; NOREC if it was absent (the removal is logged anyway)."""
        with self.lock:
            self._check_writable()
            if not self._remove(key):
                raise _norec()

    def seize(self, key: bytes) -> tuple[bytes, int]:
        """Remove a live record and return (value, absolute xt); NOREC if absent."""
        got: list[tuple[bytes, int]] = []

        def full(k: bytes, v: bytes, x: int) -> Any:
            got.append((v, x))
            return REMOVE

        self.accept(key, full, lambda k: NOP)
        if not got:
            raise _norec()
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
                recs = self._store.recs
                for key, value in records:
                    self._apply(key, recs.get(key), (value, xt), now)
                    count += 1
                if self._gc:
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
            if atomic and self._gc:
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
            if atomic and self._gc:
                self._score(_XTSCUNIT // _XTREADFREQ)
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

    def _cusage(self) -> int:
        return 8 + 8 * len(self._store.recs) + self._store.raw_size

    def size(self) -> int:
        """The database size as its Kyoto Cabinet type reports it."""
        store = self._store
        kind = store.kind
        count = len(store.recs)
        raw = store.raw_size
        if kind == "stash":
            return store.bnum * 8 + count * 12 + raw
        if kind == "cache":
            return 1856 + 16 * _nearbyprime(store.bnum // 16) * 8 + 40 * count + raw
        if kind in ("phash", "ptree"):
            return raw
        if kind == "grass":
            return 526625 + self._cusage()
        if kind == "hash":
            return store.roff + store.file_end
        if kind == "tree":
            return max(400128, store.disk.file_size if store.disk else 0)
        if kind == "dir":
            return raw + 36 * count
        if kind == "forest":
            return 89 + self._cusage()
        return 0

    def status(self) -> dict[str, str]:
        """The ``status`` procedure's fields (Kyoto Cabinet's plus ktopts/ktcapcnt/ktcapsiz)."""
        with self.lock:
            store = self._store
            kind = store.kind
            type_num = _KINDS[kind][0]
            out: dict[str, Any] = {"count": len(store.recs), "path": self.path, "size": self.size(),
                                   "type": type_num}
            if kind != "void":
                out["realtype"] = type_num
            common = {"librev": 13, "libver": 16, "fmtver": 5, "opts": 0, "recovered": 0, "reorganized": 0}
            plant = {"bnum": self.spec.int_param("bnum", default=65536), "cusage": self._cusage(), "first": 1,
                     "last": 1, "icnt": 0, "lcnt": 1, "pccap": 67108864, "pnum": 2, "psiz": 8192,
                     "rcomp": store.comparator, "root": 1}
            if kind == "cache":
                out.update(common, bnum=store.bnum, capcnt=store.cache_capcnt, capsiz=store.cache_capsiz,
                           chksum=255)
            elif kind == "grass":
                out.update(common, **plant, capcnt=-1, capsiz=-1, chksum=255)
            elif kind == "hash":
                out.update(common, apow=3, bnum=store.bnum, chksum=188, dfunit=0, flags=1, fpow=10, frgcnt=0,
                           msiz=67108864, realsize=out["size"], trimmed=0)
            elif kind == "tree":
                out.update(common, **plant, apow=8, chksum=188, dfunit=0, flags=1, fpow=10, frgcnt=0,
                           msiz=67108864, realsize=out["size"], trimmed=0)
            elif kind == "dir":
                out.update(common, chksum=184, flags=0)
            elif kind == "forest":
                out.update(common, **plant, chksum=184, flags=0)
            out["ktopts"] = 2 if self.persistent else 0
            out["ktcapcnt"] = self.capcnt
            out["ktcapsiz"] = self.capsiz
            return {k: str(v) for k, v in out.items()}

    def vacuum(self, step: int = 0) -> None:
        """Collect expired records: ``step`` > 1 advances the GC by that many steps,
        otherwise the whole database is scanned.  Then defragment the file (HashDB;
        fully when ``step`` < 1, else ``step`` blocks on)."""
        with self.lock:
            if self._gc:
                if step > 1:
                    self._score(min(step, INT64MAX // _XTSCUNIT) * _XTSCUNIT)
                else:
                    self._xcur.gc_jump()
                    self._xsc = 0
                    self._expire(len(self._store.recs) + 1)
                    self._xsc = 0
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
            if store.tree and store.rank_of is None:
                for key in store.order.irange(prefix):
                    if not key.startswith(prefix):
                        break
                    out.append(key)
                    if len(out) >= limit:
                        break
                return out
            for key in store.ordered_keys():
                if key.startswith(prefix):
                    out.append(key)
                    if len(out) >= limit:
                        break
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
                if store.kind == "hash":
                    store.isiter = True
                try:
                    self._apply(key, rec, result, now)
                finally:
                    store.isiter = False
            if self._gc:
                score = _XTSCUNIT if writable else _XTSCUNIT // _XTREADFREQ
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
            store = self._store
            if op == OP_SET:
                value, xt = self._unpack(stored)
                rec = store.recs.get(key)
                if rec is None:
                    store.insert(key, value, xt)
                else:
                    store.update(key, rec, value, xt)
                if self._sink is not None:
                    self._sink.write(encode_log_entry(origin_sid, self.index, OP_SET, key, stored))
            elif op == OP_REMOVE:
                if key in store.recs:
                    store.delete(key)
                if self._sink is not None:
                    self._log_remove(key, origin_sid)
            elif op == OP_CLEAR:
                store.clear()
                if self._sink is not None:
                    self._sink.write(encode_log_entry(origin_sid, self.index, OP_CLEAR))
            else:
                return
            if self._gc:
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
        as for :meth:`Database.accept`; ``step`` moves on after."""
        db = self.db
        raw = self._raw
        with db.lock:
            if writable:
                db._check_writable()
            now = _now()
            persist = db.persistent
            again = [False]

            def visit(key: bytes, rec: list[Any]) -> Any:
                xt = INT64MAX if persist else rec[1]
                if not persist and now > xt:
                    again[0] = True
                    return NOP
                result = visitor(key, rec[0], xt)
                if result is NOP:
                    return NOP
                if result is REMOVE:
                    if db._sink is not None:
                        db._log_remove(key)
                    return REMOVE
                value, xtp = result
                axt = INT64MAX if persist else modify_exptime(xtp, now)
                if db._sink is not None:
                    db._log_set(key, value, axt)
                return value, axt

            try:
                while True:
                    again[0] = False
                    raw.accept(visit, step)
                    if not again[0]:
                        break
                    if not step:
                        if self._back:
                            raw.step_back()
                        else:
                            raw.step()
            finally:
                if db._gc:
                    db._score(_XTSCUNIT if writable else _XTSCUNIT // _XTREADFREQ)

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
