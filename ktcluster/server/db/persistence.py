"""On-disk form of the file databases (``.kch``, ``.kct``, ``.kcf``, ``.kcd``).

The embedded server keeps every database in memory; a file database additionally
writes each change through to disk before the request is answered, so its content
survives a restart, a SIGTERM and a SIGKILL (the data is in the kernel's page cache the
moment ``os.write`` returns).  The formats are our own (Kyoto Cabinet's are not needed
for wire compatibility):

* :class:`Journal` (``.kch``, ``.kct``, and ``journal`` inside a ``.kcf`` directory):
  an append-only file of change records, each ``u32 length`` + an update-log entry
  (:func:`~ktcluster.protocol.replication.encode_log_entry` with sid/dbid 0), after a
  header holding the ``ktopts`` byte.  Replayed at open, compacted when mostly garbage.
* :class:`RecordFiles` (``.kcd``): a directory with one file per record, named as
  Kyoto Cabinet's DirDB names it (:func:`~ktcluster.server.db.hashing.hashpath`), because a
  DirDB iterates in the directory's own (readdir) order and the emulation must too.

Both take an exclusive ``flock`` (shared for a read-only server), as Kyoto Cabinet does.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable, Iterator

from ...protocol.replication import OP_CLEAR, OP_REMOVE, OP_SET, decode_log_entry, encode_log_entry
from .hashing import hashpath

__all__ = ["Journal", "RecordFiles", "StorageError", "write_snapshot", "read_snapshot"]

_MAGIC = b"KTCLUSTER-JOURNAL-1\n"
_LEN = struct.Struct(">I")
#: rewrite the journal at open/close when it holds more than this many dead bytes ...
_COMPACT_MIN = 1 << 20
#: ... and while running when it exceeds this multiple of the live data (plus _COMPACT_MIN)
_COMPACT_RATIO = 4


class StorageError(Exception):
    """A database file cannot be opened or is not ours."""


def _lock(fd: int, writable: bool) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX if writable else fcntl.LOCK_SH)


def _encode(opts: int, records: Iterator[tuple[bytes, bytes]]) -> bytes:
    """A whole journal holding ``records`` ((key, stored value) pairs)."""
    parts = [_MAGIC + bytes((opts,))]
    for key, stored in records:
        payload = encode_log_entry(0, 0, OP_SET, key, stored)
        parts.append(_LEN.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def _decode(data: bytes, off: int, found: list[tuple[int, bytes, bytes]]) -> int:
    """Append the complete change records of ``data`` from ``off`` to ``found``; the
    offset after the last complete one."""
    end = len(data)
    while off + 4 <= end:
        (length,) = _LEN.unpack_from(data, off)
        if off + 4 + length > end:
            break
        entry = decode_log_entry(data[off + 4:off + 4 + length])
        off += 4 + length
        found.append((entry.op, entry.key, entry.value))
    return off


def _write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_snapshot(path: str, opts: int, records: Iterator[tuple[bytes, bytes]]) -> None:
    """Dump records ((key, stored value) pairs) to a snapshot file (``-bgs``), atomically."""
    _write_atomically(path, _encode(opts, records))


def read_snapshot(path: str) -> list[tuple[int, bytes, bytes]]:
    """The (op, key, stored value) records of a snapshot file; StorageError if it is not one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror}") from None
    if data[:len(_MAGIC)] != _MAGIC or len(data) <= len(_MAGIC):
        raise StorageError(f"{path}: not a snapshot file")
    found: list[tuple[int, bytes, bytes]] = []
    _decode(data, len(_MAGIC) + 1, found)
    return found


class Journal:
    """Append-only change log of one database file."""

    def __init__(self, path: str, writable: bool, opts: int) -> None:
        """Open (creating when writable) the journal at ``path``.  ``opts`` is the ktopts
        byte to record in a new file; an existing file keeps its own (see :attr:`opts`)."""
        self.path = path
        self.writable = writable
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror}") from None
        _lock(self._fd, writable)
        size = os.fstat(self._fd).st_size
        if size == 0:
            if not writable:
                os.close(self._fd)
                raise StorageError(f"{path}: empty database file")
            os.write(self._fd, _MAGIC + bytes((opts,)))
            size = len(_MAGIC) + 1
        head = os.pread(self._fd, len(_MAGIC) + 1, 0)
        if head[:len(_MAGIC)] != _MAGIC or len(head) != len(_MAGIC) + 1:
            os.close(self._fd)
            raise StorageError(f"{path}: not a ktcluster database file")
        self.opts = head[-1]
        self._size = size

    def replay(self) -> Iterator[tuple[int, bytes, bytes]]:
        """The recorded changes, oldest first: (op, key, stored value).  A torn last
        record (the process died while writing it) is dropped and truncated away."""
        pos = len(_MAGIC) + 1
        data = os.pread(self._fd, self._size - pos, pos) if self._size > pos else b""
        found: list[tuple[int, bytes, bytes]] = []
        off = _decode(data, 0, found)
        yield from found
        if off != len(data) and self.writable:
            os.ftruncate(self._fd, pos + off)
            self._size = pos + off

    def _append(self, payload: bytes) -> None:
        data = _LEN.pack(len(payload)) + payload
        os.pwrite(self._fd, data, self._size)
        self._size += len(data)

    def record_set(self, key: bytes, stored: bytes) -> None:
        self._append(encode_log_entry(0, 0, OP_SET, key, stored))

    def record_remove(self, key: bytes) -> None:
        self._append(encode_log_entry(0, 0, OP_REMOVE, key))

    def record_clear(self) -> None:
        self._append(encode_log_entry(0, 0, OP_CLEAR))

    def maybe_compact(self, live_bytes: int, records: Callable[[], Iterator[tuple[bytes, bytes]]],
                      running: bool = True) -> None:
        """Rewrite the journal with just the live ``records()`` ((key, stored value) pairs)
        when it is mostly dead records: while running, once it exceeds a multiple of the
        live data; at open and close, as soon as it holds 1 MiB of garbage."""
        garbage = self._size - live_bytes
        if garbage <= _COMPACT_MIN or not self.writable:
            return
        if running and self._size <= _COMPACT_RATIO * live_bytes + _COMPACT_MIN:
            return
        self._compact(records())

    def _compact(self, records: Iterator[tuple[bytes, bytes]]) -> None:
        data = _encode(self.opts, records)
        _write_atomically(self.path, data)
        old, self._fd = self._fd, os.open(self.path, os.O_RDWR)
        _lock(self._fd, True)
        os.close(old)
        self._size = len(data)

    @property
    def file_size(self) -> int:
        return self._size

    def sync(self, hard: bool) -> None:
        if hard and self.writable:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RecordFiles:
    """A directory holding one file per record (the DirDB layout)."""

    _META = "__meta__"
    _PLACEHOLDERS = ("__KCDIR__", "__opq__")   # so the listing holds KC's entries
    _REC = b"KTCR"

    def __init__(self, path: str, writable: bool, opts: int) -> None:
        self.path = path
        self.writable = writable
        if not os.path.isdir(path):
            if not writable:
                raise StorageError(f"{path}: no such directory")
            try:
                os.mkdir(path)
            except OSError as exc:
                raise StorageError(f"{path}: {exc.strerror}") from None
        meta = os.path.join(path, self._META)
        try:
            self._fd = os.open(meta, os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY, 0o644)
        except OSError as exc:
            raise StorageError(f"{meta}: {exc.strerror}") from None
        _lock(self._fd, writable)
        head = os.pread(self._fd, 1, 0)
        if not head:
            if writable:
                os.write(self._fd, bytes((opts,)))
            head = bytes((opts,))
        self.opts = head[0]
        if writable:
            for name in self._PLACEHOLDERS:
                place = os.path.join(path, name)
                if not os.path.exists(place):
                    os.close(os.open(place, os.O_WRONLY | os.O_CREAT, 0o644))

    @staticmethod
    def name_of(key: bytes) -> str:
        """The file name of a record (kc::hashpath)."""
        return hashpath(key)

    def names(self, meta: bool = False) -> list[str]:
        """Record file names in the directory's (readdir) order; ``meta``: with the
        database's own files (their names start with ``_``)."""
        names = os.listdir(self.path)
        return names if meta else [n for n in names if not n.startswith("_")]

    def replay(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(OP_SET, key, stored value) of every record file, in directory order."""
        for name in self.names():
            try:
                with open(os.path.join(self.path, name), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if data[:4] != self._REC:
                continue
            entry = decode_log_entry(data[4:])
            yield OP_SET, entry.key, entry.value

    def record_set(self, key: bytes, stored: bytes) -> None:
        name = self.name_of(key)
        tmp = os.path.join(self.path, "_tmp." + name)
        with open(tmp, "wb") as f:
            f.write(self._REC + encode_log_entry(0, 0, OP_SET, key, stored))
        os.replace(tmp, os.path.join(self.path, name))

    def record_remove(self, key: bytes) -> None:
        try:
            os.unlink(os.path.join(self.path, self.name_of(key)))
        except FileNotFoundError:
            pass

    def record_clear(self) -> None:
        for name in self.names():
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass

    def maybe_compact(self, live_bytes: int, records: Callable[[], Iterator[tuple[bytes, bytes]]],
                      running: bool = True) -> None:
        """Nothing to do: a record's file is replaced in place on every change."""

    @property
    def file_size(self) -> int:
        return 0

    def sync(self, hard: bool) -> None:
        if hard and self.writable:
            os.sync()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
