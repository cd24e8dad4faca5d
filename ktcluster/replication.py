"""Replication consumers: one master's update log, or every master's log merged into one stream.

:class:`KyotoSlave` reads one master's update log (the 0xB1 replication
protocol) and is a drop-in for python-kyototycoon-ng's ``KyotoSlave``: same
constructor, ``consume(timestamp)`` in seconds, same dict keys and value types
(``value`` without the 5-byte expiry prefix, ``expires`` the absolute epoch
second, ``0xFFFFFFFFFF`` for "never").  Every dict also carries ``ts``, the
record's KT timestamp, so a consumer can resume exactly after it with
``consume(ts=...)``.  Deliberate differences from ng:

* size-0 "dummy" records (sent every 256 entries the sid filter skipped) and
  heartbeats advance the position instead of crashing the decoder;
* SET values of ``ktopts=p`` databases (stored without an expiry prefix) are
  returned whole with ``expires`` = ``0xFFFFFFFFFF`` -- ng cuts 5 bytes off them.
  The master's ``status`` RPC tells which databases are ``ktopts=p``;
* a closed or broken connection raises :class:`~ktcluster.errors.KTConnectionError`
  (ng: ``IOError``), a refusal (no update log) :class:`~ktcluster.errors.ReplicationError`,
  and garbage :class:`~ktcluster.errors.ProtocolError` -- all KyotoTycoonException;
* a master cannot exhaust the consumer: a log entry announced larger than
  ``max_record_size`` (default 257 MiB) is a ProtocolError before its bytes are
  read, sizes inside an entry are read in linear time and at most 10 bytes long,
  and ``timeout`` bounds the arrival of each message (a master trickling a record
  is cut off);
  a bad ``sid`` raises :class:`~ktcluster.errors.ArgumentError`, a ``ValueError`` as in ng;
* ``close()`` ends ``consume()`` cleanly, from any thread;
* op codes other than SET/REMOVE/CLEAR (KT never writes them) are skipped, as
  ktserver's own slave does, instead of raising;
* with ``reconnect=True`` a broken connection is reopened with backoff after
  the last timestamp seen.

:class:`ReplicationStream` merges several masters (a sharded cluster) into one
stream ordered by ``(ts, node)``.  What it guarantees, and what it cannot:

* **Every record, once.**  A master's records are delivered in its log order,
  none skipped, none repeated -- also across reconnects and master restarts
  (the reader resumes after the last timestamp it received).
* **Checkpoints.**  :meth:`ReplicationStream.checkpoint` (any time, JSON-
  serialisable) holds each master's position: every record of that master up to
  it has been yielded, *including the record just yielded*.  Resuming from a
  checkpoint re-delivers nothing and loses nothing.  Save it after processing a
  record: a crash between processing and saving re-delivers what came after the
  last save, so delivery is at-least-once across crashes; consumers should be
  idempotent.
* **Order.**  A record is released only when every live master's stream has
  passed its timestamp (the master's heartbeats carry ``max(now - 1 s, last ts)``
  as a watermark), so the merged stream is non-decreasing in ``ts``.  The order
  is that of KT timestamps, i.e. of each master's wall clock at write time:
  between masters it is exact only up to their clock skew, and it says nothing
  about causality.  An idle master holds the stream back by about 1.1 s (KT's
  heartbeat lag); a master whose clock is behind holds it back by the skew.
* **Idle / unreachable masters.**  A master from which nothing (record or
  heartbeat) arrived for ``idle_timeout`` seconds stops holding the stream back
  ("excluded"; see :attr:`ReplicationStream.excluded` and ``on_idle``).  Its
  records are still delivered when they come -- possibly out of global order
  (counted in :attr:`ReplicationStream.late_records`) -- and it rejoins the
  ordering once its stream has caught up with what was already yielded.
* **Lost history.**  KT never says that a requested position predates its
  oldest update-log file (it silently starts at the oldest remaining file).  On
  every (re)connection from a known position the master's ``ulog_list`` is
  checked; if files were removed and the position precedes the oldest entry
  still there, :class:`~ktcluster.errors.ResyncRequiredError` is raised (its
  ``oldest_ts``: resuming from ``oldest_ts - 1`` accepts the gap).  This can
  report a gap that is not one (a position between the last removed and the
  first kept entry: KT keeps no trace of where removed files ended), but it
  never misses files removed by ``ulog_remove`` (always the oldest).  Not
  detected: files deleted by hand from the middle of the log, and a wiped
  update-log directory (it looks like a new master).
* **Heartbeat trust.**  Like ktserver's own slave, positions advance with the
  master's heartbeats, which assume the master flushes its log within 1 s.
* **Dual-master pairs.**  A master's log also holds entries it replicated from
  its partner; give each master's ``-sid`` in ``origin_sids`` and only entries
  written on that master are read from it (KT's WHITESID), so each write
  appears once.

Per master, at most ``max_buffer`` bytes of stream (plus one record) wait in
memory; a full buffer stops reading that master's socket (backpressure).
Readers are threads (greenlets under ``gevent.monkey.patch_all()``); they stop
on :meth:`~ReplicationStream.close`, when the ``with`` block or the iteration
ends.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .address import Servers, format_address, named_addresses
from .atomicfile import write_atomic
from .connection import DEFAULT_MAX_REPLY_SIZE, Connection
from .errors import (
    ArgumentError,
    InvalidArgumentError,
    KTConnectionError,
    ProtocolError,
    ReplicationError,
    ResyncRequiredError,
    SocketTimeoutError,
)
from .protocol.binary import XTMAX, Incomplete
from .protocol.replication import (
    ACK,
    FLAG_WHITESID,
    OP_CLEAR,
    OP_REMOVE,
    OP_SET,
    LogRecord,
    decode_accept,
    decode_log_stream,
    decode_stream_message,
    encode_handshake,
    parse_ulog_list,
    split_xt,
)

__all__ = [
    "OP_SET", "OP_REMOVE", "OP_CLEAR", "XT_NEVER",
    "KyotoSlave", "Checkpoint", "ReplicationStream", "ts_from_seconds",
]

log = logging.getLogger(__name__)

#: ``expires`` of a record that never expires (KT's XTMAX).
XT_NEVER = XTMAX

#: A record dict (``sid``, ``db``, ``op``, ``key``, ``value``, ``expires``, ``ts``; ``node`` when merged).
Record = dict[str, Any]
#: What a reader hands on: records, and ints (the ts of a heartbeat or of skipped entries).
_Item = Record | int

_TS_PER_SECOND = 10**9
_CHUNK = 256 * 1024
_TPERSIST = 2  # kttimeddb.h TimedDB::TPERSIST, reported in status' "ktopts"


def ts_from_seconds(seconds: float) -> int:
    """The KT timestamp of an epoch second, as ng computes it (whole seconds)."""
    return int(seconds) * _TS_PER_SECOND


def _check_sid(sid: int) -> int:
    if not isinstance(sid, int) or not 0 <= sid <= 65535:
        raise ArgumentError("SID must fit in a 16-bit unsigned integer")
    return sid


# -- one connection ---------------------------------------------------------------------------


def _bytes_needed(buf: bytes, max_size: int) -> int:
    """How many bytes the first message in ``buf`` needs (``buf`` holds no complete message)."""
    try:
        decode_stream_message(buf, 0, max_size)
    except Incomplete as inc:
        return inc.needed
    raise AssertionError("a complete message was left undecoded")


class _Link:
    """One replication connection: connect, handshake, then read messages (acknowledging
    heartbeats), each within ``timeout`` and ``max_size``."""

    __slots__ = ("address", "_sock", "_buf", "_timeout", "_max_size")

    def __init__(self, host: str, port: int, timeout: float, max_size: int) -> None:
        self.address = format_address(host, port)
        self._buf = b""
        self._timeout = timeout
        self._max_size = max_size
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise SocketTimeoutError(f"connecting to {self.address} timed out", request_sent=False) from exc
        except OSError as exc:
            raise KTConnectionError(f"connecting to {self.address} failed: {exc}", request_sent=False) from exc
        self._sock = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self.close()
            raise KTConnectionError(f"connecting to {self.address} failed: {exc}", request_sent=False) from exc

    def handshake(self, ts: int, sid: int, flags: int) -> None:
        """Ask for the entries after ``ts``; raise unless the master accepts."""
        self._send(encode_handshake(ts, sid, flags))
        end = time.monotonic() + self._timeout
        while not self._buf:
            self._buf = self._recv(end)
        used = decode_accept(self._buf)
        self._buf = self._buf[used:]

    def read(self) -> list[LogRecord | int]:
        """The next items of :func:`decode_log_stream` (at least one, complete within the
        timeout); heartbeats are acknowledged."""
        buf = self._buf
        end = time.monotonic() + self._timeout
        while True:
            items, pos, heartbeats = decode_log_stream(buf, 0, self._max_size)
            if items:
                self._buf = buf[pos:]
                if heartbeats:
                    self._send(ACK * heartbeats)
                return items
            need = _bytes_needed(buf, self._max_size)
            chunks = [buf]
            have = len(buf)
            while have < need:
                chunk = self._recv(end)
                chunks.append(chunk)
                have += len(chunk)
            buf = b"".join(chunks)

    def _recv(self, end: float) -> bytes:
        left = end - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            data = self._sock.recv(_CHUNK)
        except TimeoutError as exc:
            raise SocketTimeoutError(f"no complete message from {self.address} within {self._timeout} s") from exc
        except OSError as exc:
            raise KTConnectionError(f"reading from {self.address} failed: {exc}") from exc
        if not data:
            raise KTConnectionError(f"{self.address} closed the replication stream")
        return data

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise SocketTimeoutError(f"sending to {self.address} timed out") from exc
        except OSError as exc:
            raise KTConnectionError(f"sending to {self.address} failed: {exc}") from exc

    def close(self) -> None:
        """Close the socket; a read blocked in another thread returns at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()


# -- one master -------------------------------------------------------------------------------


class KyotoSlave:
    """A replication consumer of one master (python-kyototycoon-ng compatible).

    ``sid`` is this consumer's server id: the master sends every entry except
    those whose origin is ``sid`` -- or, with ``whitesid=True``, only those
    (give a master's own ``-sid`` to read just the writes made on it).
    ``timeout`` bounds connecting and the arrival of each message, a record or a
    heartbeat (an idle master sends a heartbeat every 0.1 s); ``max_record_size``
    bounds a log entry (a larger one is a ProtocolError before it is read).  With
    ``reconnect=True`` a broken connection is reopened (exponential backoff up to
    ``max_backoff`` seconds) after the last timestamp seen; otherwise the error is
    raised.
    """

    def __init__(self, sid: int, host: str = "127.0.0.1", port: int = 1978, timeout: float = 30, *,
                 whitesid: bool = False, reconnect: bool = False, max_backoff: float = 5.0,
                 max_record_size: int = DEFAULT_MAX_REPLY_SIZE) -> None:
        self.sid = _check_sid(sid)
        if isinstance(max_record_size, bool) or not isinstance(max_record_size, int) or max_record_size < 1:
            raise ArgumentError(f"max_record_size must be a positive number of bytes, not {max_record_size!r}")
        self.max_record_size = max_record_size
        self.host = host
        self.port = int(port)
        self.timeout = timeout
        self.whitesid = whitesid
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        #: The ts of the last record yielded (or heartbeat passed): resume with ``consume(ts=last_ts)``.
        self.last_ts = 0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def __repr__(self) -> str:
        return f"<KyotoSlave sid={self.sid} {self.address}>"

    def consume(self, timestamp: float | None = None, *, ts: int | None = None) -> Iterator[Record]:
        """Yield the master's log records after ``timestamp`` (epoch seconds, whole
        seconds as in ng; None: now; 0: the oldest entry kept), or after the KT
        timestamp ``ts`` (e.g. the last record's ``ts``), until :meth:`close`.

        Raises :class:`~ktcluster.errors.ResyncRequiredError` when the master may
        have purged entries after the requested position."""
        if ts is None:
            start = ts_from_seconds(time.time() if timestamp is None else timestamp)
            verify = timestamp is not None
        else:
            start, verify = int(ts), True
        self._closed.clear()
        self.last_ts = start
        for batch in self._batches(start, verify):
            for item in batch:
                if type(item) is int:
                    if item > self.last_ts:
                        self.last_ts = item
                else:
                    if item["ts"] > self.last_ts:
                        self.last_ts = item["ts"]
                    yield item

    def close(self) -> bool:
        """Close the connection; a running :meth:`consume` ends (also from another thread)."""
        self._closed.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        return True

    # -- internals shared with ReplicationStream ---------------------------------------------------

    def _batches(self, position: int, verify: bool,
                 on_state: Callable[[bool, BaseException | None], None] | None = None) -> Iterator[list[_Item]]:
        """Batches of records and heartbeat ints after ``position``, reconnecting if enabled.
        ``verify``: check that the master still has the history after ``position``.
        ``on_state(up, error)`` is told when a connection opens or fails."""
        failures = 0
        while not self._closed.is_set():
            try:
                link = self._open(position, verify)
            except KTConnectionError as exc:
                if self._closed.is_set():
                    return
                if not self.reconnect:
                    raise
                failures += 1
                if on_state:
                    on_state(False, exc)
                self._closed.wait(min(self.max_backoff, 0.05 * 2 ** min(failures, 16)) * random.uniform(0.5, 1))
                continue
            failures = 0
            verify = True  # later positions come from the master: check them on every reconnection
            if on_state:
                on_state(True, None)
            persistent: dict[int, bool] = {}
            try:
                while True:
                    batch = self._decode(link.read(), persistent)
                    last = batch[-1]
                    ts = last if type(last) is int else last["ts"]
                    if ts > position:
                        position = ts
                    yield batch
            except KTConnectionError as exc:
                if self._closed.is_set():
                    return
                if not self.reconnect:
                    raise
                if on_state:
                    on_state(False, exc)
            finally:
                self._drop(link)

    def _open(self, position: int, verify: bool) -> _Link:
        flags = FLAG_WHITESID if self.whitesid else 0
        link = self._link()
        try:
            link.handshake(position, self.sid, flags)
            if verify and position > 0:
                self._verify_history(position)
        except BaseException:
            self._drop(link)
            raise
        return link

    def _link(self) -> _Link:
        link = _Link(self.host, self.port, self.timeout, self.max_record_size)
        with self._lock:
            self._links.add(link)
        if self._closed.is_set():  # close() ran while we were connecting
            self._drop(link)
            raise KTConnectionError(f"replication from {self.address} closed", request_sent=False)
        return link

    def _drop(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
        link.close()

    def _verify_history(self, position: int) -> None:
        """Raise ResyncRequiredError if the master may have purged entries after ``position``.

        KT numbers update-log files from 1 and ``ulog_remove`` deletes the oldest
        ones; a removed file's last ts is recorded nowhere.  Every removed entry
        is older than the first entry still kept, so the gap is harmless only if
        ``position`` reaches that entry's ts - 1.  The first entry is the first
        message of one of two streams from ts 0 which together see every entry
        (origin sid == ours, origin sid != ours)."""
        conn = Connection(self.host, self.port, timeout=self.timeout)
        try:
            files = parse_ulog_list(conn.call("ulog_list", max_size=self.max_record_size).items())
        finally:
            conn.close()
        if not files or files[0].id == 1:
            return
        oldest = min(self._first_ts(FLAG_WHITESID), self._first_ts(0))
        if position + 1 < oldest:
            raise ResyncRequiredError(
                f"the update log starts at ts {oldest} (the files before {files[0].path} were removed): "
                f"entries after ts {position} may be lost", node=self.address, requested_ts=position,
                oldest_ts=oldest)

    def _first_ts(self, flags: int) -> int:
        """The ts of the first message of a stream from ts 0 (a record, a dummy or a heartbeat)."""
        link = self._link()
        try:
            link.handshake(0, self.sid, flags)
            first = link.read()[0]
            return first if type(first) is int else first[0]
        finally:
            self._drop(link)

    def _decode(self, items: list[LogRecord | int], persistent: dict[int, bool]) -> list[_Item]:
        """Records (ng's dict keys plus ``ts``); progress-only ints pass through."""
        out: list[_Item] = []
        append = out.append
        sid = self.sid
        whitesid = self.whitesid
        for item in items:
            if type(item) is int:  # heartbeat or dummy
                append(item)
                continue
            ts, origin, dbid, op, key, value = item  # type: ignore[misc]
            if (origin == sid) != whitesid:
                raise ProtocolError(f"{self.address} sent an entry of sid {origin} to sid {sid} "
                                    f"({'whitesid' if whitesid else 'default'} filter)")
            if op == OP_SET:
                keep = persistent.get(dbid)
                if keep is None:
                    keep = persistent[dbid] = self._is_persistent(dbid)
                if keep:
                    expires = XT_NEVER
                else:
                    expires, value = split_xt(value)
                append({"sid": origin, "db": dbid, "op": op, "key": key, "expires": expires, "value": value,
                        "ts": ts})
            elif op == OP_REMOVE:
                append({"sid": origin, "db": dbid, "op": op, "key": key, "ts": ts})
            elif op == OP_CLEAR:
                append({"sid": origin, "db": dbid, "op": op, "ts": ts})
            else:  # never written by KT; ktserver's slave skips unknown ops too
                append(ts)
        return out

    def _is_persistent(self, dbid: int) -> bool:
        """Is database ``dbid`` of the master ``ktopts=p`` (values stored without an expiry)?"""
        conn = Connection(self.host, self.port, timeout=self.timeout)
        try:
            status = conn.call("status", {b"DB": b"%d" % dbid})
        except InvalidArgumentError:  # no such DB on this master (an entry replicated from a partner)
            return False
        finally:
            conn.close()
        try:
            return bool(int(status.get(b"ktopts", b"0")) & _TPERSIST)
        except ValueError:
            raise ProtocolError(f"{self.address}: unexpected ktopts {status.get(b'ktopts')!r}") from None


# -- checkpoints ------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Each master's position in a merged stream: every record of the master up to
    that KT timestamp has been yielded.  Masters not listed start from their
    oldest entry when resumed (nothing is lost)."""

    positions: dict[str, int] = field(default_factory=dict)

    VERSION = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (timestamps are ints up to 2**64)."""
        return {"version": self.VERSION, "positions": dict(self.positions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Parse :meth:`to_dict` output; anything else raises ArgumentError."""
        try:
            if data.get("version") != cls.VERSION:
                raise ValueError(f"unknown checkpoint version {data.get('version')!r}")
            positions = {}
            for node, ts in data["positions"].items():
                if not isinstance(node, str) or isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
                    raise ValueError(f"bad position {node!r}: {ts!r}")
                positions[node] = ts
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ArgumentError(f"not a replication checkpoint: {exc}") from exc
        return cls(positions)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ArgumentError(f"not a replication checkpoint: {exc}") from exc
        if not isinstance(data, dict):
            raise ArgumentError("not a replication checkpoint: not a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, fsync, rename): a crash leaves the old or the new one."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())


# -- the merged stream ------------------------------------------------------------------------


class _Source:
    """One master inside a ReplicationStream: its reader thread's hand-over state and
    the consumer-side view (pending batches, watermark, position)."""

    def __init__(self, index: int, name: str, slave: KyotoSlave, start: int, permits: int) -> None:
        self.index = index
        self.name = name
        self.slave = slave
        self.start = start
        self.permits = threading.Semaphore(permits)
        self.thread: threading.Thread | None = None
        # written by the reader thread
        self.last_message = time.monotonic()
        # consumer side
        self.batches: deque[list[_Item]] = deque()
        self.offset = 0  # next item in batches[0]
        self.watermark = start  # every record of this master received so far has ts <= watermark
        self.position = start  # every record with ts <= position has been yielded
        self.connected = False
        self.excluded = False
        self.in_heap = False
        self.error: BaseException | None = None
        self.reconnects = 0

    def head(self) -> Record | None:
        """The next record to yield, passing heartbeats (which advance the position)."""
        batches = self.batches
        while batches:
            batch = batches[0]
            offset = self.offset
            while offset < len(batch):
                item = batch[offset]
                if type(item) is not int:
                    self.offset = offset
                    return item  # type: ignore[return-value]
                if item > self.position:
                    self.position = item
                offset += 1
            batches.popleft()
            self.offset = 0
            self.permits.release()
        return None

    def take(self) -> Record:
        """Remove the head record (head() must have returned it)."""
        rec: Record = self.batches[0][self.offset]  # type: ignore[assignment]
        self.offset += 1
        if rec["ts"] > self.position:
            self.position = rec["ts"]
        return rec


class ReplicationStream:
    """The update logs of several masters merged into one stream ordered by ``(ts, node)``.

    ``masters``: ``"host:port"`` strings or ``(host, port)`` pairs, or a mapping
    of node names to them (names appear in records as ``node`` and key the
    checkpoint).  ``sid``: this consumer's server id (entries whose origin is
    ``sid`` are not sent).  ``since``: None (from now), epoch seconds (0: all
    history kept), or a :class:`Checkpoint` / its ``to_dict()`` form.
    ``origin_sids``: node name -> that master's ``-sid``, to read only entries
    written on it (dual-master pairs).  See the module docstring for the
    guarantees; records are the dicts of :class:`KyotoSlave` plus ``node``.
    ``timeout`` and ``max_record_size`` are KyotoSlave's, per master.
    """

    def __init__(self, masters: Servers,
                 sid: int, since: float | Checkpoint | Mapping[str, Any] | None = None, *,
                 origin_sids: Mapping[str, int] | None = None, idle_timeout: float = 5.0,
                 max_buffer: int = 4 << 20, timeout: float = 30.0, max_backoff: float = 5.0,
                 on_idle: Callable[[str, bool], None] | None = None,
                 max_record_size: int = DEFAULT_MAX_REPLY_SIZE) -> None:
        self.sid = _check_sid(sid)
        if idle_timeout <= 0:
            raise ArgumentError("idle_timeout must be positive")
        self.idle_timeout = idle_timeout
        self.on_idle = on_idle
        self.late_records = 0
        addresses = named_addresses(masters, "master")
        origin_sids = dict(origin_sids or {})
        unknown = set(origin_sids) - {name for name, _, _ in addresses}
        if unknown:
            raise ArgumentError(f"origin_sids names unknown masters: {sorted(unknown)}")
        if isinstance(since, Mapping):
            since = Checkpoint.from_dict(since)
        self._carried: dict[str, int] = {}
        if isinstance(since, Checkpoint):
            starts = {name: since.positions.get(name, 0) for name, _, _ in addresses}
            self._carried = {k: v for k, v in since.positions.items() if k not in starts}
            self._verify_start = True
        else:
            now_ts = ts_from_seconds(time.time() if since is None else since)
            starts = {name: now_ts for name, _, _ in addresses}
            self._verify_start = since is not None
        permits = max(1, max_buffer // _CHUNK)
        self._sources = []
        for index, (name, host, port) in enumerate(addresses):
            origin = origin_sids.get(name)
            slave = KyotoSlave(sid if origin is None else origin, host, port, timeout,
                               whitesid=origin is not None, reconnect=True, max_backoff=max_backoff,
                               max_record_size=max_record_size)
            self._sources.append(_Source(index, name, slave, starts[name], permits))
        self._inbox: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self._heap: list[tuple[int, int]] = []
        self._frontier = 0  # the highest ts yielded
        self._stop = threading.Event()
        self._started = False

    def __repr__(self) -> str:
        return f"<ReplicationStream {[s.name for s in self._sources]}>"

    # -- public API -------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return [s.name for s in self._sources]

    @property
    def excluded(self) -> frozenset[str]:
        """Masters that currently do not hold the stream back (idle or unreachable)."""
        return frozenset(s.name for s in self._sources if s.excluded)

    def checkpoint(self) -> Checkpoint:
        """Every master's position (records up to it, including the last one yielded, are done)."""
        positions = dict(self._carried)
        positions.update((s.name, s.position) for s in self._sources)
        return Checkpoint(positions)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per master: connected, excluded, position, watermark, buffered batches, reconnects, last error."""
        now = time.monotonic()
        return {s.name: {"connected": s.connected, "excluded": s.excluded, "position": s.position,
                         "watermark": s.watermark, "buffered_batches": len(s.batches),
                         "idle_seconds": now - s.last_message, "reconnects": s.reconnects,
                         "error": None if s.error is None else str(s.error)} for s in self._sources}

    def __iter__(self) -> Iterator[Record]:
        if self._started:
            raise ReplicationError("a ReplicationStream can be iterated only once; resume a new one "
                                   "from its checkpoint()")
        self._started = True
        if self._stop.is_set():
            return
        for src in self._sources:
            src.last_message = time.monotonic()
            src.thread = threading.Thread(target=self._read, args=(src,), daemon=True,
                                          name=f"ktcluster-replication-{src.name}")
            src.thread.start()
        try:
            yield from self._merge()
        except GeneratorExit:  # the consumer stopped iterating: a normal end
            self.close()
            raise
        except BaseException:
            # Interrupted: stop without blocking, for a switch here could let another
            # interruption (the consumer's own gevent.Timeout) replace this one.
            self._halt()
            raise
        self.close()

    def close(self) -> None:
        """Stop every reader thread and close every connection (idempotent)."""
        self._halt()
        current = threading.current_thread()
        for src in self._sources:
            if src.thread is not None and src.thread is not current:
                src.thread.join(src.slave.timeout + 1)

    def _halt(self) -> None:
        """Tell the readers to stop and close their connections; they end on their own."""
        self._stop.set()
        for src in self._sources:
            src.slave.close()
        self._inbox.put(None)

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self._halt()

    # -- reader threads ---------------------------------------------------------------------------

    def _read(self, src: _Source) -> None:
        inbox = self._inbox

        def on_state(up: bool, error: BaseException | None) -> None:
            inbox.put((src.index, (up, error)))

        try:
            for batch in src.slave._batches(src.start, self._verify_start, on_state):
                src.last_message = time.monotonic()
                while not src.permits.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                inbox.put((src.index, batch))
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            if not self._stop.is_set():
                inbox.put((src.index, exc))

    # -- the merge --------------------------------------------------------------------------------

    def _merge(self) -> Iterator[Record]:
        heap = self._heap
        sources = self._sources
        heappop, heappush = heapq.heappop, heapq.heappush
        while not self._stop.is_set():
            self._dispatch(0)
            limit = self._limit()
            while heap and heap[0][0] <= limit:
                ts, index = heappop(heap)
                src = sources[index]
                rec = src.take()
                nxt = src.head()
                if nxt is None:
                    src.in_heap = False
                else:
                    heappush(heap, (nxt["ts"], index))
                if ts < self._frontier:
                    self.late_records += 1
                else:
                    self._frontier = ts
                rec["node"] = src.name
                yield rec
                if self._stop.is_set():
                    return
            self._wait()

    def _limit(self) -> float:
        """Records up to this ts are released: the lowest watermark of the masters that hold back."""
        marks = [s.watermark for s in self._sources if not s.excluded]
        return min(marks) if marks else math.inf

    def _wait(self) -> None:
        """Nothing can be released: wait for data, excluding masters idle for too long."""
        heap = self._heap
        if not heap:
            self._dispatch(0.5)
            return
        top = heap[0][0]
        blockers = [s for s in self._sources if not s.excluded and s.watermark < top]
        now = time.monotonic()
        deadline = min(s.last_message for s in blockers) + self.idle_timeout
        if now >= deadline:
            for src in blockers:
                if now - src.last_message >= self.idle_timeout:
                    self._set_excluded(src, True)
            return
        self._dispatch(deadline - now)

    def _dispatch(self, timeout: float) -> None:
        """Take what the readers handed over, waiting up to ``timeout`` seconds for the first item."""
        inbox = self._inbox
        try:
            item = inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:  # close() woke us
                return
            index, payload = item
            src = self._sources[index]
            if type(payload) is list:
                self._add_batch(src, payload)
            elif type(payload) is tuple:
                up, error = payload
                if up and src.error is not None:
                    src.reconnects += 1
                elif not up:
                    first = src.connected or src.error is None  # not a retry that failed again
                    log.log(logging.WARNING if first else logging.DEBUG,
                            "replication from %s interrupted: %s", src.name, error)
                src.connected, src.error = up, error
            else:
                src.error = payload
                raise payload
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return

    def _add_batch(self, src: _Source, batch: list[_Item]) -> None:
        last = batch[-1]
        ts = last if type(last) is int else last["ts"]  # type: ignore[index]
        if ts > src.watermark:
            src.watermark = ts
        if src.batches and all(type(item) is int for item in batch):
            # progress only (heartbeats, dummies) behind records still pending: keep just the
            # highest ts, so that a master held back by others uses no buffer for heartbeats
            tail = src.batches[-1]
            if type(tail[-1]) is int:
                tail[-1] = max(tail[-1], ts)  # type: ignore[type-var]
            else:
                tail.append(ts)
            src.permits.release()
        else:
            src.batches.append(batch)
        if not src.in_heap:
            head = src.head()
            if head is not None:
                heapq.heappush(self._heap, (head["ts"], src.index))
                src.in_heap = True
        if src.excluded and src.watermark >= self._frontier:
            self._set_excluded(src, False)

    def _set_excluded(self, src: _Source, excluded: bool) -> None:
        src.excluded = excluded
        if excluded:
            log.warning("replication: %s sent nothing for %.1f s; the stream no longer waits for it",
                        src.name, self.idle_timeout)
        else:
            log.info("replication: %s caught up and orders the stream again", src.name)
        if self.on_idle is not None:
            self.on_idle(src.name, excluded)
