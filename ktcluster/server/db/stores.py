"""The record stores: the Kyoto Cabinet database under each TimedDB (:mod:`.storage`).

A store holds the raw records of one database in the iteration order of its Kyoto
Cabinet type, and reports the ``size`` and ``status`` that type reports.  There is one
class per kind of order:

* :class:`TreeStore` -- ProtoTreeDB ``+`` (std::map), GrassDB ``%``, TreeDB ``.kct``,
  ForestDB ``.kcf`` (kcplantdb.h): key order, or the ``#rcomp`` comparator's;
* :class:`BucketStore` -- StashDB ``:`` (kcstashdb.h, MurmurHash buckets) and
  ProtoHashDB ``-`` (a libstdc++ ``tr1::unordered_map``): bucket order, then
  insertion order within a bucket (reversed for ProtoHashDB);
* :class:`CacheStore` -- CacheDB ``*`` (kccachedb.h): 16 slots, each an LRU list with
  its share of ``capcnt``/``capsiz``;
* :class:`HashFileStore` -- HashDB ``.kch`` (kchashdb.h): file order, records placed
  as Kyoto Cabinet places them in its file (free blocks, defragmentation);
* :class:`DirStore` -- DirDB ``.kcd`` (kcdirdb.h): the directory's readdir order;
* :class:`VoidStore` -- ktplugdbvoid's database, which stores nothing.

Every record is ``recs[key] = [value, xt, okey]``: the user value, the absolute
expiration time (INT64MAX in ``ktopts=p`` databases) and the *order key* that places it
in ``order`` (a :class:`SortedList`).  Every change is written through to ``disk``
(:mod:`.persistence`) when the database is a file.  Cursors (:mod:`.cursors`) are
registered in ``cursors`` so that changes can move them as Kyoto Cabinet moves its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from ...protocol.replication import join_xt
from .cursors import DirCursor, HashFileCursor, PlantCursor, StoreCursor
from .dbspec import TYPE_NUMBERS, DBSpec, comparator
from .hashing import murmur, tr1_fnv
from .persistence import Journal, RecordFiles
from .sortedlist import SortedList

__all__ = ["RecordStore", "TreeStore", "BucketStore", "CacheStore", "HashFileStore", "DirStore", "VoidStore",
           "create_store", "SEQ_BITS"]

#: an order key of the hash-ordered stores is ``bucket << SEQ_BITS | sequence number``.
SEQ_BITS = 40
#: buckets of ProtoHashDB's tr1::unordered_map after its rehash(1048583)
_PHASH_BUCKETS = 1056323
#: the fields of ``status`` that every type but StashDB and the ProtoDBs reports
_LIBRARY_FIELDS = {"librev": 13, "libver": 16, "fmtver": 5, "opts": 0, "recovered": 0, "reorganized": 0}


def create_store(spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> RecordStore:
    """The store for ``spec.kind``; ``persist``: ``ktopts=p`` (values without expiry)."""
    cls = {"phash": BucketStore, "stash": BucketStore, "cache": CacheStore, "ptree": TreeStore,
           "grass": TreeStore, "tree": TreeStore, "forest": TreeStore, "hash": HashFileStore,
           "dir": DirStore, "void": VoidStore}[spec.kind]
    return cls(spec, persist, disk)


def nearbyprime(num: int) -> int:
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


class RecordStore:
    """What every store has: the records, their order, the write-through to disk.

    The base class resolves order keys through ``by_okey`` (okey -> key), as the hash
    types do; :class:`TreeStore` orders the keys themselves.  ``epoch`` changes on
    :meth:`clear`, which invalidates every cursor; ``raw_size`` is the records' bytes as
    Kyoto Cabinet counts them (key, value, and the 5-byte xt prefix unless ``ktopts=p``).
    """

    #: the order is that of the keys (the tree types)
    tree = False
    #: the order keys are the keys in byte order (the trees without a comparator): the
    #: keys with a prefix are a range of :attr:`order`
    lexical = False
    #: accesses reorder records (CacheDB's LRU), see :meth:`touch`
    lru = False
    #: "hash" (StashDB, CacheDB, HashDB: cursors go forward only), "phash", "ptree",
    #: "plant" (the B+ trees), "dir" or "void": what the cursors need to know
    family = "hash"
    #: a cursor or an iteration is writing (HashDB then appends a record that grows)
    isiter = False

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.persist = persist
        self.disk = disk
        self.recs: dict[bytes, list[Any]] = {}
        self.order = SortedList()
        self.by_okey: dict[Any, bytes] = {}
        self.seq = 0
        self.raw_size = 0
        self.epoch = 0
        self.cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        self.xt_width = 0 if persist else 5
        bnum = spec.int_param("bnum")
        self.bnum = (nearbyprime(bnum) if bnum > 32767 else bnum) if bnum > 0 else 1048583

    def stored(self, value: bytes, xt: int) -> bytes:
        """The value as Kyoto Cabinet stores it: 5-byte xt prefix unless ktopts=p."""
        return value if self.persist else join_xt(xt, value)

    # -- order keys ---------------------------------------------------------------------------

    def new_okey(self, key: bytes, value: bytes) -> Any:
        """The order key of a new record."""
        raise NotImplementedError

    def probe(self, key: bytes) -> Any:
        """The order key a tree key sorts as (tree types only)."""
        raise NotImplementedError

    def key_of(self, okey: Any) -> bytes:
        return self.by_okey[okey]

    def has_okey(self, okey: Any) -> bool:
        """Is there still a record at this order key?"""
        return okey in self.by_okey

    def ordered_keys(self) -> list[bytes]:
        """Every key in database order."""
        by_okey = self.by_okey
        return [by_okey[okey] for okey in self.order]

    def scan_start(self) -> Any:
        """Where a cursor jumping to the start stands: the first order key (or None)."""
        return self.order.first()

    # -- changes ------------------------------------------------------------------------------

    def insert(self, key: bytes, value: bytes, xt: int) -> None:
        """Add a record that is not there."""
        okey = self.new_okey(key, value)
        self.recs[key] = [value, xt, okey]
        self._place(key, okey)
        self.raw_size += len(key) + len(value) + self.xt_width
        self._write(key, value, xt)

    def update(self, key: bytes, rec: list[Any], value: bytes, xt: int) -> None:
        """Change the value and expiry of the record ``rec`` (``recs[key]``)."""
        self.raw_size += len(value) - len(rec[0])
        rec[0] = value
        rec[1] = xt
        self._write(key, value, xt)

    def delete(self, key: bytes, via: Any = None) -> None:
        """Remove a record; ``via``: the cursor that removes it, if any."""
        rec = self.recs.pop(key)
        self._forget(rec[2], via)
        self.raw_size -= len(key) + len(rec[0]) + self.xt_width
        if self.disk is not None:
            self.disk.record_remove(key)

    def clear(self) -> None:
        """Remove every record; cursors become invalid."""
        self.recs.clear()
        self.by_okey.clear()
        self.order.clear()
        if self.kind not in ("phash", "ptree"):  # ProtoDB::clear forgets to reset its size
            self.raw_size = 0
        self.epoch += 1
        if self.disk is not None:
            self.disk.record_clear()

    def touch(self, key: bytes, rec: list[Any]) -> None:
        """A record was accessed (only stores with ``lru`` care)."""

    def defrag(self, step: int) -> None:
        """Defragment the file (only HashDB has something to do)."""

    def opened(self) -> None:
        """The file's records are loaded: reset what Kyoto Cabinet does not keep in it."""

    def _place(self, key: bytes, okey: Any) -> None:
        self.order.add(okey)
        self.by_okey[okey] = key

    def _forget(self, okey: Any, via: Any) -> None:
        """Take a removed record out of the order; cursors on it move to the next one."""
        if self.cursors:
            for cur in list(self.cursors):
                cur.escape(okey)
        self.order.discard(okey)
        del self.by_okey[okey]

    def _write(self, key: bytes, value: bytes, xt: int) -> None:
        if self.disk is not None:
            self.disk.record_set(key, self.stored(value, xt))
            self.after_write()

    # -- the file -----------------------------------------------------------------------------

    def live_records(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, stored value) of every record in database order, for rewriting a journal
        (replaying it then rebuilds the same order)."""
        recs = self.recs
        return ((k, self.stored(recs[k][0], recs[k][1])) for k in self.ordered_keys())

    def after_write(self, running: bool = True) -> None:
        """Compact the journal once it is mostly dead records."""
        if self.disk is not None:
            self.disk.maybe_compact(self.raw_size, self.live_records, running)

    # -- cursors ------------------------------------------------------------------------------

    def cursor(self) -> Any:
        """A new cursor of this store's type, registered for escapes."""
        cur = self._cursor_class()(self)
        self.cursors.add(cur)
        return cur

    def _cursor_class(self) -> type:
        return StoreCursor

    # -- what Kyoto Cabinet reports -----------------------------------------------------------

    def size(self) -> int:
        """The database size as its Kyoto Cabinet type reports it."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """The type's own fields of the ``status`` procedure."""
        type_num = TYPE_NUMBERS[self.kind]
        return {"count": len(self.recs), "size": self.size(), "type": type_num, "realtype": type_num}

    def _cusage(self) -> int:
        """The page cache usage a B+ tree reports (8 + 8 per record + raw size)."""
        return 8 + 8 * len(self.recs) + self.raw_size


class TreeStore(RecordStore):
    """ProtoTreeDB ``+``, GrassDB ``%``, TreeDB ``.kct``, ForestDB ``.kcf``: the order key
    is the key itself, or its :class:`~.dbspec.RankedKey` under a ``#rcomp`` comparator
    (B+ trees only).  The B+ trees' cursors remember a key (:class:`PlantCursor`)."""

    tree = True

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        super().__init__(spec, persist, disk)
        self.family = "ptree" if spec.kind == "ptree" else "plant"
        self.comparator, self.rank_of = comparator(spec) if self.family == "plant" else ("lexical", None)
        self.lexical = self.rank_of is None

    def probe(self, key: bytes) -> Any:
        return key if self.rank_of is None else self.rank_of(key)

    def new_okey(self, key: bytes, value: bytes) -> Any:
        return self.probe(key)

    def key_of(self, okey: Any) -> bytes:
        return okey if self.rank_of is None else okey.key

    def has_okey(self, okey: Any) -> bool:
        return self.key_of(okey) in self.recs

    def ordered_keys(self) -> list[bytes]:
        return list(self.order) if self.rank_of is None else [okey.key for okey in self.order]

    def _place(self, key: bytes, okey: Any) -> None:
        self.order.add(okey)

    def _forget(self, okey: Any, via: Any) -> None:
        if self.cursors and self.family == "ptree":   # PlantDB cursors remember their key
            for cur in list(self.cursors):
                cur.escape(okey)
        self.order.discard(okey)

    def _cursor_class(self) -> type:
        return StoreCursor if self.family == "ptree" else PlantCursor

    def size(self) -> int:
        kind = self.kind
        if kind == "ptree":
            return self.raw_size
        if kind == "grass":
            return 526625 + self._cusage()
        if kind == "tree":
            return max(400128, self.disk.file_size if self.disk else 0)
        return 89 + self._cusage()   # forest

    def status(self) -> dict[str, Any]:
        out = super().status()
        kind = self.kind
        if kind == "ptree":
            return out
        out.update(_LIBRARY_FIELDS)
        out.update(bnum=self.spec.int_param("bnum", default=65536), cusage=self._cusage(), first=1, last=1,
                   icnt=0, lcnt=1, pccap=67108864, pnum=2, psiz=8192, rcomp=self.comparator, root=1)
        if kind == "grass":
            out.update(capcnt=-1, capsiz=-1, chksum=255)
        elif kind == "tree":
            out.update(apow=8, chksum=188, dfunit=0, flags=1, fpow=10, frgcnt=0, msiz=67108864,
                       realsize=out["size"], trimmed=0)
        else:
            out.update(chksum=184, flags=0)
        return out


class BucketStore(RecordStore):
    """StashDB ``:`` and ProtoHashDB ``-``: records in bucket order (kc::hashmurmur modulo
    ``bnum``, or the libstdc++ tr1 hash modulo the unordered_map's buckets), in insertion
    order within a bucket (ProtoHashDB: newest first).  Cursors are iterator-like: one
    whose record goes away moves on to the next."""

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        super().__init__(spec, persist, disk)
        self.family = "phash" if spec.kind == "phash" else "hash"

    def new_okey(self, key: bytes, value: bytes) -> int:
        self.seq += 1
        if self.kind == "phash":
            return (tr1_fnv(key) % _PHASH_BUCKETS) << SEQ_BITS | ((1 << SEQ_BITS) - 1 - self.seq)
        return (murmur(key) % self.bnum) << SEQ_BITS | self.seq

    def size(self) -> int:
        if self.kind == "phash":
            return self.raw_size
        return self.bnum * 8 + len(self.recs) * 12 + self.raw_size



class CacheStore(BucketStore):
    """CacheDB ``*``: 16 slots by MurmurHash, each an LRU list (an accessed record moves to
    the end of its slot) holding 1/16 of ``#capcnt`` records and of ``#capsiz`` bytes;
    a full slot drops its least recently used record (kccachedb.h adjust_slot_capacity)."""

    lru = True

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        super().__init__(spec, persist, disk)
        self.capcnt = spec.int_param("capcnt", "capcount", "cap_count")
        self.capsiz = spec.int_param("capsiz", "capsize", "cap_size")
        self._slot_capcnt = self.capcnt // 16 + 1 if self.capcnt > 0 else 1 << 62
        self._slot_capsiz = max(self.capsiz // 16 + 1 - 116, 1) if self.capsiz > 0 else 1 << 62
        self.slots = [[0, 0] for _ in range(16)]  # per slot: [count, bytes]

    def new_okey(self, key: bytes, value: bytes) -> int:
        self.seq += 1
        return (murmur(key) & 15) << SEQ_BITS | self.seq

    def insert(self, key: bytes, value: bytes, xt: int) -> None:
        super().insert(key, value, xt)
        sidx = self.recs[key][2] >> SEQ_BITS
        slot = self.slots[sidx]
        slot[0] += 1
        slot[1] += 40 + len(key) + len(value) + self.xt_width
        self._adjust_slot(sidx)

    def update(self, key: bytes, rec: list[Any], value: bytes, xt: int) -> None:
        grow = len(value) - len(rec[0])
        super().update(key, rec, value, xt)
        sidx = rec[2] >> SEQ_BITS
        self.slots[sidx][1] += grow
        if grow > 0:
            self._adjust_slot(sidx)

    def delete(self, key: bytes, via: Any = None) -> None:
        rec = self.recs[key]
        size = len(key) + len(rec[0]) + self.xt_width
        super().delete(key, via)
        slot = self.slots[rec[2] >> SEQ_BITS]
        slot[0] -= 1
        slot[1] -= 40 + size

    def clear(self) -> None:
        super().clear()
        for slot in self.slots:
            slot[0] = slot[1] = 0

    def touch(self, key: bytes, rec: list[Any]) -> None:
        """Move an accessed record to the end of its slot (unless it is there already)."""
        okey = rec[2]
        following = self.order.higher(okey)
        if following is None or following >> SEQ_BITS != okey >> SEQ_BITS:
            return
        if self.cursors:
            for cur in list(self.cursors):
                cur.escape(okey)
        self.order.discard(okey)
        del self.by_okey[okey]
        self.seq += 1
        okey = (okey >> SEQ_BITS) << SEQ_BITS | self.seq
        rec[2] = okey
        self.order.add(okey)
        self.by_okey[okey] = key

    def _adjust_slot(self, sidx: int) -> None:
        """Drop the least recently used record of a slot over its capacity."""
        slot = self.slots[sidx]
        if slot[0] > self._slot_capcnt or slot[1] > self._slot_capsiz:
            okey = self.order.ceiling(sidx << SEQ_BITS)
            if okey is not None and okey >> SEQ_BITS == sidx:
                self.delete(self.by_okey[okey])

    def size(self) -> int:
        return 1856 + 16 * nearbyprime(self.bnum // 16) * 8 + 40 * len(self.recs) + self.raw_size

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(_LIBRARY_FIELDS, bnum=self.bnum, capcnt=self.capcnt, capsiz=self.capsiz, chksum=255)
        return out


class HashFileStore(RecordStore):
    """HashDB ``.kch``: records in file order, placed in the file as kchashdb.h places them.

    The file is a sequence of blocks, records (``alloc``: offset -> block size) and free
    blocks (``free_map``), 8-byte aligned, counted from the first record (KC's roff).
    A new record takes the smallest pooled free block that fits (the pool keeps the 1024
    largest; among equal sizes the last one) or is appended; a record that outgrows its
    block moves (to the end when a cursor or an iteration writes it); a block much
    larger than its record is split (adjust_record); a removed record's block becomes
    free.  Defragmentation shifts records down over free blocks, a few blocks per step
    from where the last step stopped (defrag_impl).  The order key is the offset.
    ``frgcnt`` counts the blocks freed by removals and moves since the last defragmentation
    (or the opening), as kchashdb.h's ``frgcnt_``.
    """

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        super().__init__(spec, persist, disk)
        self.file_end = 0                 # where the next record is appended
        self.alloc: dict[int, int] = {}
        self.free_map: dict[int, int] = {}
        self.free_blocks = SortedList()   # (size, -offset): KC's free block pool
        self.dfcur = 0                    # where defragmentation goes on
        self.frgcnt = 0
        roff = 64 + 6 * 1024 + 14 + 6 * self.bnum   # header, free block pool, buckets
        self.roff = roff + (-roff & 7)

    def new_okey(self, key: bytes, value: bytes) -> int:
        return self._allocate(self._record_size(key, value))

    def scan_start(self) -> int | None:
        """The first block, even a free one."""
        return 0 if self.file_end > 0 else None

    def update(self, key: bytes, rec: list[Any], value: bytes, xt: int) -> None:
        self._resize(key, rec, value)
        super().update(key, rec, value, xt)

    def _forget(self, okey: Any, via: Any) -> None:
        self.order.discard(okey)
        del self.by_okey[okey]
        self._free(okey)   # moves the cursors on the block
        self.frgcnt += 1

    def opened(self) -> None:
        self.frgcnt = 0

    def clear(self) -> None:
        super().clear()
        self.file_end = 0
        self.alloc.clear()
        self.free_map.clear()
        self.free_blocks.clear()
        self.dfcur = 0

    def _cursor_class(self) -> type:
        return HashFileCursor

    # -- blocks -------------------------------------------------------------------------------

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
        return self._append(padded)

    def _append(self, padded: int) -> int:
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
        """A record's value changes: it stays (maybe giving back a tail) or, if it
        outgrows its block, moves elsewhere."""
        old = rec[2]
        size = self._record_size(key, value)
        if size <= self.alloc[old]:
            self._adjust(old, size)
            return
        self.order.discard(old)
        del self.by_okey[old]
        self._free(old)
        self.frgcnt += 1
        # a cursor or an iteration always appends (accept_impl isiter)
        okey = self._append(size + (-size & 7)) if self.isiter else self._allocate(size)
        rec[2] = okey
        self.order.add(okey)
        self.by_okey[okey] = key

    def _escape_block(self, off: int, dest: int) -> None:
        """KC escape_cursors: the block at ``off`` became free (or a free block there is
        being reused): cursors on it move to ``dest``, the following block; a cursor
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

    def defrag(self, step: int) -> None:
        """KC HashDB::defrag: ``step`` < 1 defragments the whole file, otherwise ``step``
        blocks from where the last call stopped."""
        self.frgcnt = 0
        if step < 1:
            self.dfcur = 0
            step = 1 << 62
        alloc, free_map = self.alloc, self.free_map
        end = self.file_end
        while True:   # find the next free block
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
        while step > 0 and self.dfcur < end:   # shift the blocks after it down
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

    # -- what Kyoto Cabinet reports -----------------------------------------------------------

    def size(self) -> int:
        return self.roff + self.file_end

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(_LIBRARY_FIELDS, apow=3, bnum=self.bnum, chksum=188, dfunit=0, flags=1, fpow=10, frgcnt=self.frgcnt,
                   msiz=67108864, realsize=out["size"], trimmed=0)
        return out


class DirStore(RecordStore):
    """DirDB ``.kcd``: one file per record, named by kc::hashpath; the order is the
    directory's (readdir), which the cursors read themselves (:class:`DirCursor`).
    ``dir_names`` maps a record's file name (its order key) to its key."""

    family = "dir"
    disk: RecordFiles   # a DirDB is its directory

    def __init__(self, spec: DBSpec, persist: bool, disk: Journal | RecordFiles | None) -> None:
        super().__init__(spec, persist, disk)
        self.dir_names: dict[str, bytes] = {}
        self.cursor_serial = 0   # cursors are escaped in creation order

    def new_okey(self, key: bytes, value: bytes) -> str:
        return RecordFiles.name_of(key)

    def key_of(self, okey: Any) -> bytes:
        return self.dir_names[okey]

    def has_okey(self, okey: Any) -> bool:
        return okey in self.dir_names

    def ordered_keys(self) -> list[bytes]:
        names = self.dir_names
        return [names[n] for n in self.disk.names() if n in names]

    def _place(self, key: bytes, okey: Any) -> None:
        self.dir_names[okey] = key

    def _forget(self, okey: Any, via: Any) -> None:
        """kcdirdb.h escape_cursors, with its aliasing of the removing cursor's name (see
        :class:`~.cursors.DirCursor`)."""
        if self.cursors:
            alias: str | None = okey
            for cur in sorted(self.cursors, key=lambda c: c.serial):
                if alias is not None and cur.alive_now() and cur.name() == alias:
                    cur.read_next()
                    if cur is via:
                        alias = None if cur.grown else cur.name()
        del self.dir_names[okey]

    def clear(self) -> None:
        super().clear()
        self.dir_names.clear()

    def cursor(self) -> DirCursor:
        self.cursor_serial += 1
        cur = DirCursor(self, self.cursor_serial)
        self.cursors.add(cur)
        return cur

    def size(self) -> int:
        return self.raw_size + 36 * len(self.recs)

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(_LIBRARY_FIELDS, chksum=184, flags=0)
        return out


class VoidStore(RecordStore):
    """ktplugdbvoid's database (``-pldb ktplugdbvoid.so``): writes succeed, nothing is kept."""

    family = "void"

    def insert(self, key: bytes, value: bytes, xt: int) -> None:
        pass

    def size(self) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {"count": 0, "size": 0, "type": TYPE_NUMBERS["void"]}
