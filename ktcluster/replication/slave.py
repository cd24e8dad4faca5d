"""``KyotoSlave``: a replication consumer of one master (python-kyototycoon-ng's API).

See :mod:`ktcluster.replication` for what it reads and how it differs from ng.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..address import format_address
from ..connection import DEFAULT_MAX_REPLY_SIZE, Connection
from ..errors import ArgumentError, InvalidArgumentError, KTConnectionError, ProtocolError, ResyncRequiredError
from ..observe.events import Observer, ReplicationLag, notify
from ..protocol.binary import XTMAX
from ..protocol.replication import FLAG_WHITESID, OP_CLEAR, OP_REMOVE, OP_SET, LogRecord, parse_ulog_list, split_xt
from .link import Link

__all__ = ["KyotoSlave", "OP_SET", "OP_REMOVE", "OP_CLEAR", "XT_NEVER", "Record", "Item", "ts_from_seconds",
           "check_sid"]

#: ``expires`` of a record that never expires (KT's XTMAX).
XT_NEVER = XTMAX

#: A record dict (``sid``, ``db``, ``op``, ``key``, ``value``, ``expires``, ``ts``; ``node`` when merged).
Record = dict[str, Any]
#: What a reader hands on: records, and ints (the ts of a heartbeat or of skipped entries).
Item = Record | int

_TS_PER_SECOND = 10**9
_TPERSIST = 2  # kttimeddb.h TimedDB::TPERSIST, reported in status' "ktopts"


def ts_from_seconds(seconds: float) -> int:
    """The KT timestamp of an epoch second, as ng computes it (whole seconds)."""
    return int(seconds) * _TS_PER_SECOND


def check_sid(sid: int) -> int:
    if not isinstance(sid, int) or not 0 <= sid <= 65535:
        raise ArgumentError("SID must fit in a 16-bit unsigned integer")
    return sid




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
    raised.  ``observer`` (:mod:`ktcluster.observe`) hears a
    :class:`~ktcluster.observe.ReplicationLag` per batch received (records or a
    heartbeat), naming the master ``name`` (default: its address).
    """

    def __init__(self, sid: int, host: str = "127.0.0.1", port: int = 1978, timeout: float = 30, *,
                 whitesid: bool = False, reconnect: bool = False, max_backoff: float = 5.0,
                 max_record_size: int = DEFAULT_MAX_REPLY_SIZE, observer: Observer | None = None,
                 name: str | None = None) -> None:
        self.sid = check_sid(sid)
        if isinstance(max_record_size, bool) or not isinstance(max_record_size, int) or max_record_size < 1:
            raise ArgumentError(f"max_record_size must be a positive number of bytes, not {max_record_size!r}")
        self.max_record_size = max_record_size
        self.host = host
        self.port = int(port)
        self.timeout = timeout
        self.whitesid = whitesid
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.observer = observer
        self.name = name or self.address
        #: The ts of the last record yielded (or heartbeat passed): resume with ``consume(ts=last_ts)``.
        self.last_ts = 0
        self._links: set[Link] = set()
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
        for batch in self._batches(*self._start(timestamp, ts)):
            yield from self._take(batch)

    def _start(self, timestamp: float | None, ts: int | None) -> tuple[int, bool]:
        """consume's start: the position, and whether to verify the master still has its history."""
        if ts is None:
            start = ts_from_seconds(time.time() if timestamp is None else timestamp)
            verify = timestamp is not None
        else:
            start, verify = int(ts), True
        self._closed.clear()
        self.last_ts = start
        return start, verify

    def _take(self, batch: list[Item]) -> Iterator[Record]:
        """The records of ``batch``, ``last_ts`` following each item (heartbeats too) as it is taken."""
        for item in batch:
            if isinstance(item, int):
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
                 on_state: Callable[[bool, BaseException | None], None] | None = None) -> Iterator[list[Item]]:
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
                    ts = last if isinstance(last, int) else last["ts"]
                    if ts > position:
                        position = ts
                    if self.observer is not None:
                        notify(self.observer.replication_lag, ReplicationLag(self.name, ts))
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

    def _open(self, position: int, verify: bool) -> Link:
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

    def _link(self) -> Link:
        link = Link(self.host, self.port, self.timeout, self.max_record_size)
        with self._lock:
            self._links.add(link)
        if self._closed.is_set():  # close() ran while we were connecting
            self._drop(link)
            raise KTConnectionError(f"replication from {self.address} closed", request_sent=False)
        return link

    def _drop(self, link: Link) -> None:
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
            return first if isinstance(first, int) else first[0]
        finally:
            self._drop(link)

    def _decode(self, items: list[LogRecord | int], persistent: dict[int, bool]) -> list[Item]:
        """Records (ng's dict keys plus ``ts``); progress-only ints pass through."""
        out: list[Item] = []
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
