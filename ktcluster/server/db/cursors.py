"""Kyoto Cabinet's cursors over the raw records of a store (:mod:`.stores`), each with the
rules of its database type, down to how it moves when records change under it.

* :class:`StoreCursor` -- StashDB and CacheDB (forward only), ProtoHashDB (``jump_back``
  to an existing key only) and ProtoTreeDB cursors: iterator-like, a cursor whose
  record is removed moves on to the next one;
* :class:`PlantCursor` -- the B+ tree cursors (kcplantdb.h: GrassDB, TreeDB, ForestDB):
  a cursor remembers a key and lands on the first record at or after it (after a
  removal in backward mode, on the one before);
* :class:`HashFileCursor` -- HashDB (kchashdb.h): a byte offset in the file, scanning up
  to the file's end as it was when it jumped;
* :class:`DirCursor` -- DirDB (kcdirdb.h): a directory stream.

The TimedDB cursor built on these (expiry, update log) is :class:`.storage.Cursor`.
Positioning errors raise :class:`~.kcdb.DBError`: NOREC past either end or when not
positioned, NOIMPL for what the type cannot do.  A raw visitor receives ``(key,
record)`` and answers NOP, REMOVE or ``(new value, absolute xt)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .kcdb import NOP, REMOVE, noimpl, norec

if TYPE_CHECKING:
    from .stores import DirStore, HashFileStore, RecordStore

__all__ = ["StoreCursor", "PlantCursor", "HashFileCursor", "DirCursor", "RawVisit"]

#: a raw visitor: (key, record) -> NOP | REMOVE | (new value, absolute xt)
RawVisit = Callable[[bytes, list[Any]], Any]


class StoreCursor:
    """An iterator-like cursor over a store's order keys.

    ``pos`` is the order key of the current record (None: not positioned, or past the
    end).  A vanished position means "the next order key" (resolved lazily by
    :meth:`current`); :meth:`escape` moves the cursor when the store removes its record.
    ``epoch`` is the store's at positioning: a :meth:`~.stores.RecordStore.clear`
    invalidates the cursor.
    """

    __slots__ = ("store", "pos", "back", "epoch", "end", "__weakref__")

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.pos: Any = None
        self.back = False      # PlantDB: moving backward
        self.epoch = store.epoch
        self.end = 0           # HashDB: the scan's end offset

    def escape(self, okey: Any) -> None:
        """The record ``okey`` is about to go away (still in the order)."""
        if self.pos == okey and self.epoch == self.store.epoch:
            self.pos = self.store.order.higher(okey)

    def _valid_pos(self) -> Any:
        """``pos``, forgotten if the store was cleared since."""
        store = self.store
        if self.epoch != store.epoch:
            self.epoch = store.epoch
            self.pos = None
        return self.pos

    def current(self) -> Any:
        """The order key of the record the cursor stands on, or None."""
        pos = self._valid_pos()
        if pos is None or self.store.has_okey(pos):
            return pos
        self.pos = nxt = self.store.order.ceiling(pos)
        return nxt

    def _next(self, pos: Any) -> Any:
        """The order key after ``pos``, or None."""
        return self.store.order.higher(pos)

    def jump(self, key: bytes | None = None) -> None:
        """To the first record (hash types: to the record ``key``; trees: the first >= key)."""
        store = self.store
        self.back = False
        self.epoch = store.epoch
        if key is None:
            self.pos = store.scan_start()
        elif store.tree:
            self.pos = store.order.ceiling(store.probe(key))
        else:
            rec = store.recs.get(key)
            self.pos = rec[2] if rec is not None else None
        if self.pos is None:
            raise norec()

    def jump_back(self, key: bytes | None = None) -> None:
        """To the last record (trees: the last <= key).  StashDB and CacheDB: NOIMPL;
        ProtoHashDB: only to an existing ``key``."""
        store = self.store
        family = store.family
        if family == "hash":
            raise noimpl()
        self.epoch = store.epoch
        if family == "phash":
            if key is not None and key in store.recs:
                self.pos = store.recs[key][2]
                return
            self.pos = None
            raise norec() if not store.recs else noimpl()
        self.back = True
        order = store.order
        if key is None:
            self.pos = order.last()
        else:
            probe = store.probe(key)
            found = order.ceiling(probe)
            if found is None:
                self.pos = order.last()
            elif probe < found:
                self.pos = order.lower(found)
            else:
                self.pos = found
        if self.pos is None:
            raise norec()

    def step(self) -> None:
        pos = self.current()
        if pos is None:
            raise norec()
        self.pos = self._next(pos)
        if self.pos is None:
            raise norec()

    def step_back(self) -> None:
        """ProtoTreeDB only: StashDB and CacheDB answer NOIMPL, ProtoHashDB NOIMPL unless
        on the first record (NOREC).  From past the end, ProtoTreeDB goes to the last."""
        store = self.store
        if store.family == "hash":
            raise noimpl()
        order = store.order
        pos = self.current()
        if pos == order.first():
            self.pos = None
            raise norec()
        if store.family == "phash":
            self.pos = None
            raise noimpl()
        self.pos = order.last() if pos is None else order.lower(pos)

    def _visit_current(self, visit: RawVisit) -> tuple[Any, bytes, list[Any], Any]:
        """(position, key, record, visitor's answer) of the current record; NOREC if none."""
        pos = self.current()
        if pos is None:
            self.pos = None
            raise norec()
        key = self.store.key_of(pos)
        rec = self.store.recs[key]
        return pos, key, rec, visit(key, rec)

    def accept(self, visit: RawVisit, step: bool) -> None:
        """Visit the current record and apply the visitor's answer (KC Cursor::accept)."""
        store = self.store
        pos, key, rec, result = self._visit_current(visit)
        if result is REMOVE:
            store.delete(key)
            self.pos = self._after_removal(pos)
            return
        if result is not NOP:
            store.update(key, rec, result[0], result[1])
        self.pos = self._following(pos) if step else pos

    def _after_removal(self, pos: Any) -> Any:
        return self.store.order.ceiling(pos)

    def _following(self, pos: Any) -> Any:
        return self.store.order.higher(pos)

    # -- the garbage collector's cursor (TimedDB::expire_records): forward only ----------------

    def gc_accept(self, now: int) -> bool:
        """One collection step: remove the current record if it expired before ``now``,
        else move on.  False: no current record (the collector then starts over)."""
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
        """Remove the current record (capacity eviction); False when there is none."""
        pos = self.current()
        if pos is None:
            return False
        store = self.store
        store.delete(store.key_of(pos))
        self.pos = store.order.ceiling(pos)
        return True

    def gc_jump(self) -> None:
        """To the first record, for the collector."""
        self.epoch = self.store.epoch
        self.pos = self.store.scan_start()


class PlantCursor(StoreCursor):
    """A B+ tree cursor (GrassDB, TreeDB, ForestDB): ``pos`` is a key (order key) that
    need not exist any more; the cursor stands on the first record at or after it, and
    ``back`` (set by the backward moves) makes removals and steps go backward."""

    __slots__ = ()

    def current(self) -> Any:
        pos = self._valid_pos()
        if pos is None or self.store.has_okey(pos):
            return pos
        return self.store.order.ceiling(pos)

    def step(self) -> None:
        self.back = False
        self.accept(lambda key, rec: NOP, True)
        if self.pos is None:
            raise norec()

    def step_back(self) -> None:
        self.current()
        if self.pos is None:
            raise norec()
        self.back = True
        self.pos = self.store.order.lower(self.pos)
        if self.pos is None:
            raise norec()

    def _after_removal(self, pos: Any) -> Any:
        return self.store.order.lower(pos) if self.back else self.store.order.ceiling(pos)

    def _following(self, pos: Any) -> Any:
        return self.store.order.lower(pos) if self.back else self.store.order.higher(pos)


class HashFileCursor(StoreCursor):
    """A HashDB cursor (kchashdb.h Cursor): ``pos`` is a byte offset that may be a free
    block (the record there is the first one at or after it); ``end`` is the file's end
    when the cursor jumped: records appended later lie beyond it and are not visited.
    The store moves cursors when blocks are freed or moved (``_escape_block``)."""

    __slots__ = ()
    store: HashFileStore

    def current(self) -> Any:
        pos = self._valid_pos()
        if pos is None or self.store.has_okey(pos):
            return pos
        self.pos = nxt = self._within(self.store.order.ceiling(pos))
        return nxt

    def _within(self, pos: Any) -> Any:
        return None if pos is None or pos >= self.end else pos

    def _next(self, pos: Any) -> Any:
        return self._within(self.store.order.higher(pos))

    def jump(self, key: bytes | None = None) -> None:
        """To the first block (even a free one), or to the record ``key``."""
        self.end = self.store.file_end
        super().jump(key)

    def jump_back(self, key: bytes | None = None) -> None:
        raise noimpl()

    def step(self) -> None:
        """Over one *block*: from a free block (where a removal left the cursor) to the
        first record after it."""
        pos = self._valid_pos()
        if pos is None:
            raise norec()
        if self.store.has_okey(pos):
            self.pos = self._next(pos)
        else:
            self.pos = self._within(self.store.order.ceiling(pos))
        if self.pos is None:
            raise norec()

    def step_back(self) -> None:
        raise noimpl()

    def accept(self, visit: RawVisit, step: bool) -> None:
        """A removed or outgrown record's block is freed, which moves the cursor to the
        next block: no further step then."""
        store = self.store
        pos, key, rec, result = self._visit_current(visit)
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

    def gc_remove(self) -> bool:
        pos = self.current()
        if pos is None:
            return False
        self.store.delete(self.store.key_of(pos))   # freeing the block moved the cursor
        return True

    def gc_jump(self) -> None:
        self.end = self.store.file_end
        super().gc_jump()


class DirCursor:
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

    def __init__(self, store: DirStore, serial: int) -> None:
        self.store = store
        self.names: list[str] = []   # the listing, ``_`` files included
        self.idx = -1                # index of name_ in ``names`` (-1: still "")
        self.alive = False
        self.epoch = store.epoch
        self.cap = 15                # name_'s capacity (libstdc++ short-string buffer)
        self.grown = False
        self.serial = serial

    def name(self) -> str:
        return self.names[self.idx] if self.idx >= 0 else ""

    def alive_now(self) -> bool:
        """Is the stream open (a clear() closed every one)?"""
        if self.epoch != self.store.epoch:
            self.epoch = self.store.epoch
            self.alive = False
        return self.alive

    def _open(self) -> None:
        self.epoch = self.store.epoch
        self.names = self.store.disk.names(meta=True)
        self.idx = -1
        self.alive = True

    def read_next(self) -> bool:
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

    def _read_on(self) -> str | None:
        """The current file if it still exists, else the next one that does (None at
        the end, the cursor disabled)."""
        live = self.store.dir_names
        name = self.name()
        while name not in live:
            if not self.read_next():
                return None
            name = self.name()
        return name

    def jump(self, key: bytes | None = None) -> None:
        self._open()
        if key is None:
            if not self.read_next():
                raise norec()
            return
        live = self.store.dir_names
        while True:
            if not self.read_next():
                raise norec()
            if live.get(self.name()) == key:
                return

    def jump_back(self, key: bytes | None = None) -> None:
        raise noimpl()

    def step(self) -> None:
        if not self.alive_now() or not self.read_next():
            raise norec()

    def step_back(self) -> None:
        raise noimpl()

    def accept(self, visit: RawVisit, step: bool) -> None:
        if not self.alive_now():
            raise norec()
        name = self._read_on()
        if name is None:
            raise norec()
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
            self.read_next()

    # -- the garbage collector's cursor (TimedDB::expire_records, Cursor::remove) -----------

    def gc_accept(self, now: int) -> bool:
        if not self.alive_now():
            return False
        name = self._read_on()
        if name is None:
            return True   # KC's accept reports success when reading on hits the end
        store = self.store
        key = store.dir_names[name]
        if now > store.recs[key][1]:
            store.delete(key, self)
        else:
            self.read_next()
        return True

    def gc_remove(self) -> bool:
        if not self.alive_now():
            return False
        name = self._read_on()
        if name is None:
            return False
        self.store.delete(self.store.dir_names[name], self)
        return True

    def gc_jump(self) -> None:
        self._open()
        self.read_next()
