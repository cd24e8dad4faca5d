"""The update log (``-ulog DIR``): ktserver's ktulog.h UpdateLogger, file format included.

``DIR/NNNNNNNNNN.ulog`` files (10-digit id from 1) each start with a 17-byte header
(``A0``, u64 file size, u64 highest time stamp) followed by entries
``A1 ts:u64 size:u32 message A2``.  Writes are buffered and appended by a flusher thread
every 0.1 s (or when 64 KiB are pending); a file is rotated at flush time once it has
reached the size limit (``-ulim``).  Time stamps are wall-clock milliseconds x 10^6
plus a per-millisecond counter, strictly increasing, and after a restart continue above
the newest file's highest time stamp.

A :class:`UpdateLogReader` reads the files the way a replication master does
(KT's ``UpdateLogger::Reader``): it starts in the file whose predecessor ends more than
a second before the requested time stamp and skips entries up to it.  Entries in files
that were removed (``ulog_remove``) are simply not there: a reader asking for a time
stamp older than the oldest file starts from the oldest file, as ktserver does.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import NamedTuple

__all__ = ["UpdateLog", "UpdateLogReader", "FileStatus", "clock_pure", "UlogError"]

_META = struct.Struct(">BQQ")   # 0xA0, file size, max ts
_ENTRY_HEAD = struct.Struct(">BQI")  # 0xA1, ts, size
_METAMAGIC, _BEGMAGIC, _ENDMAGIC = 0xA0, 0xA1, 0xA2
_TSLACC = 1000 * 1000      # logical counter range per millisecond
_CACHEMAX = 65536
_FLUSHWAIT = 0.1
_SUFFIX = ".ulog"


class UlogError(Exception):
    """The update log directory cannot be used."""


class FileStatus(NamedTuple):
    path: str
    size: int
    ts: int


def clock_pure() -> int:
    """The current time as a time stamp with a zero counter (UpdateLogger::clock_pure)."""
    return int(time.time() * 1000) * _TSLACC


def _is_log_name(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return len(stem) == 10 and stem.isdigit() and dot == "." and ext == "ulog"


class UpdateLog:
    """The writer side: time stamps, buffering, files and rotation (UpdateLogger)."""

    def __init__(self, path: str, limit: int = 256 << 20, sync_interval: float = 0.0) -> None:
        path = path.rstrip("/") or "/"
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise UlogError(f"{path}: not a directory")
        else:
            try:
                os.mkdir(path)
            except OSError as exc:
                raise UlogError(f"{path}: {exc.strerror}") from None
        ids = [int(n[:10]) for n in os.listdir(path) if _is_log_name(n)]
        self.path = path
        self.limit = limit if limit > 0 else (1 << 63) - 1
        self.sync_interval = sync_interval
        self.id = max(ids) if ids else 1
        self._lock = threading.Lock()       # clock, cache
        self.file_lock = threading.Lock()   # the files (readers take it too)
        self._cache: list[tuple[int, bytes]] = []
        self._csiz = 0
        self._cts = 0
        self._tswall = 0
        self._tslogic = 0
        try:
            self._fd = os.open(self.file_path(self.id), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UlogError(f"{path}: {exc.strerror}") from None
        if os.fstat(self._fd).st_size < 1:
            self._write_meta()
        head = os.pread(self._fd, _META.size, 0)
        if len(head) < _META.size or head[0] != _METAMAGIC:
            os.close(self._fd)
            raise UlogError(f"{self.file_path(self.id)}: broken update log file")
        _, fsiz, fts = _META.unpack(head)
        psiz = os.fstat(self._fd).st_size
        if psiz < fsiz or fsiz < _META.size:
            os.close(self._fd)
            raise UlogError(f"{self.file_path(self.id)}: broken update log file")
        if psiz > fsiz:
            os.ftruncate(self._fd, fsiz)
        self._size = fsiz
        self._tswall = fts // _TSLACC + 1
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="ulog-flusher", daemon=True)
        self._flusher.start()

    def file_path(self, file_id: int) -> str:
        return f"{self.path}/{file_id:010d}{_SUFFIX}"

    # -- time stamps ----------------------------------------------------------------------------

    def _clock(self) -> int:
        now = int(time.time() * 1000)
        if now > self._tswall:
            self._tswall = now
            self._tslogic = 0
        else:
            self._tslogic += 1
        return self._tswall * _TSLACC + self._tslogic

    def clock(self) -> int:
        """A fresh time stamp (consumes one, like UpdateLogger::clock)."""
        with self._lock:
            return self._clock()

    # -- writing --------------------------------------------------------------------------------

    def write(self, message: bytes) -> int:
        """Queue one log message; returns its time stamp.  It reaches the file (and the
        readers) at the next flush, within 0.1 s."""
        with self._lock:
            ts = self._clock()
            self._cache.append((ts, message))
            self._csiz += 14 + len(message)
            if ts > self._cts:
                self._cts = ts
            if self._csiz > _CACHEMAX:
                self._flush()
            return ts

    def _write_meta(self) -> None:
        size = max(os.fstat(self._fd).st_size, _META.size)
        os.pwrite(self._fd, _META.pack(_METAMAGIC, size, self._cts), 0)

    def _flush(self) -> None:
        """Append the pending messages (self._lock held)."""
        with self.file_lock:
            if self._size >= self.limit:
                if self.sync_interval > 0:
                    os.fsync(self._fd)
                os.close(self._fd)
                self.id += 1
                self._fd = os.open(self.file_path(self.id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self._write_meta()
                self._size = _META.size
            parts = []
            for ts, message in self._cache:
                parts.append(_ENTRY_HEAD.pack(_BEGMAGIC, ts, len(message)))
                parts.append(message)
                parts.append(b"\xa2")
            data = b"".join(parts)
            os.pwrite(self._fd, data, self._size)
            self._size += len(data)
            os.pwrite(self._fd, _META.pack(_METAMAGIC, self._size, self._cts), 0)
            self._cache = []
            self._csiz = 0

    def flush(self) -> None:
        with self._lock:
            if self._cache:
                self._flush()

    def _flush_loop(self) -> None:
        next_sync = 0.0
        while not self._closed.wait(_FLUSHWAIT):
            if self._lock.acquire(blocking=False):
                try:
                    if self._cache:
                        self._flush()
                finally:
                    self._lock.release()
            if self.sync_interval > 0 and time.time() >= next_sync:
                with self._lock:
                    os.fsync(self._fd)
                next_sync = time.time() + self.sync_interval

    def close(self) -> None:
        """Stop the flusher, write what is pending, close the file."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._flusher.join()
        self.flush()
        os.close(self._fd)

    # -- files ----------------------------------------------------------------------------------

    def list_files(self) -> list[FileStatus]:
        """Every file of the directory with a valid header, in name order."""
        out = []
        with self.file_lock:
            for name in sorted(os.listdir(self.path)):
                path = f"{self.path}/{name}"
                try:
                    with open(path, "rb") as f:
                        head = f.read(_META.size)
                except OSError:
                    continue
                if len(head) == _META.size and head[0] == _METAMAGIC:
                    _, fsiz, fts = _META.unpack(head)
                    out.append(FileStatus(path, fsiz, fts))
        return out

    def reader(self, ts: int) -> UpdateLogReader:
        """A reader of the entries with a time stamp > ``ts``; raises UlogError when the
        log cannot be opened."""
        return UpdateLogReader(self, ts)


class UpdateLogReader:
    """Reads entries after a time stamp, across files (UpdateLogger::Reader)."""

    def __init__(self, ulog: UpdateLog, ts: int) -> None:
        self.ulog = ulog
        self.ts = ts
        self.id = 0
        self._fd = -1
        self._off = 0
        self._buf = b""
        self._buf_off = 0
        names = sorted((n for n in os.listdir(ulog.path) if n.endswith(_SUFFIX)), reverse=True)
        last_id = 0
        for name in names:
            cid = int(name[:10]) if name[:10].isdigit() else 0
            try:
                with ulog.file_lock, open(f"{ulog.path}/{name}", "rb") as f:
                    head = f.read(_META.size)
            except OSError:
                continue
            if len(head) == _META.size and head[0] == _METAMAGIC:
                _, _, fts = _META.unpack(head)
                if fts + 1000 * _TSLACC < ts:
                    self.id = last_id
            last_id = cid
            if self.id >= 1:
                break
        if self.id < 1:
            self.id = last_id if last_id > 0 else 1
        with ulog.file_lock:
            if not self._open(self.id):
                raise UlogError(f"{ulog.file_path(self.id)}: cannot open")
        self._skip(ts)

    def _open(self, file_id: int) -> bool:
        try:
            fd = os.open(self.ulog.file_path(file_id), os.O_RDONLY)
        except OSError:
            return False
        head = os.pread(fd, _META.size, 0)
        if len(head) < _META.size or head[0] != _METAMAGIC:
            os.close(fd)
            return False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._off = _META.size
        self._buf = b""
        self._buf_off = 0
        return True

    def _pread(self, off: int, size: int) -> bytes:
        """``size`` bytes at ``off`` (fewer at the end of the file), through a read buffer."""
        start = off - self._buf_off
        if 0 <= start and start + size <= len(self._buf):
            return self._buf[start:start + size]
        self._buf = os.pread(self._fd, max(size, 65536), off)
        self._buf_off = off
        return self._buf[:size]

    def _read_impl(self) -> tuple[bytes, int] | None:
        head = self._pread(self._off, _ENTRY_HEAD.size)
        if len(head) < _ENTRY_HEAD.size:
            nid = self.id + 1
            while nid <= self.ulog.id:
                if os.path.exists(self.ulog.file_path(nid)):
                    if not self._open(nid):
                        return None
                    self.id = nid
                    head = self._pread(self._off, _ENTRY_HEAD.size)
                    if len(head) < _ENTRY_HEAD.size:
                        return None
                    break
                nid += 1
            else:
                return None
        magic, ts, size = _ENTRY_HEAD.unpack(head)
        if magic != _BEGMAGIC:
            return None
        body = self._pread(self._off + _ENTRY_HEAD.size, size + 1)
        if len(body) < size + 1 or body[size] != _ENDMAGIC:
            return None
        self._off += _ENTRY_HEAD.size + size + 1
        return body[:size], ts

    def _skip(self, ts: int) -> None:
        while True:
            old_id, old_off = self.id, self._off
            with self.ulog.file_lock:
                entry = self._read_impl()
            if entry is None:
                return
            if entry[1] > ts:
                self._off = old_off if self.id == old_id else _META.size
                return

    def read(self) -> tuple[bytes, int] | None:
        """The next (message, time stamp), or None at the end of the log for now."""
        with self.ulog.file_lock:
            entry = self._read_impl()
        if entry is None or entry[1] <= self.ts:
            return None
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
