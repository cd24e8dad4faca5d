"""``ReplicationStream``: every master's update log merged into one stream ordered by ``(ts, node)``.

See :mod:`ktcluster.replication` for the guarantees.
"""

from __future__ import annotations

import heapq
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from ..address import Servers, named_addresses
from ..connection import DEFAULT_MAX_REPLY_SIZE
from ..errors import ArgumentError, ReplicationError
from ..observe.events import Exclusion, Observer, notify
from .checkpoint import Checkpoint
from .link import CHUNK
from .slave import Item, KyotoSlave, Record, check_sid, ts_from_seconds

__all__ = ["ReplicationStream"]

log = logging.getLogger("ktcluster.replication")



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
        self.batches: deque[list[Item]] = deque()
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
    ``timeout`` and ``max_record_size`` are KyotoSlave's, per master.  ``observer``
    (:mod:`ktcluster.observe`) hears each master's lag (per batch) and exclusions.
    """

    def __init__(self, masters: Servers,
                 sid: int, since: float | Checkpoint | Mapping[str, Any] | None = None, *,
                 origin_sids: Mapping[str, int] | None = None, idle_timeout: float = 5.0,
                 max_buffer: int = 4 << 20, timeout: float = 30.0, max_backoff: float = 5.0,
                 on_idle: Callable[[str, bool], None] | None = None,
                 max_record_size: int = DEFAULT_MAX_REPLY_SIZE, observer: Observer | None = None) -> None:
        self.sid = check_sid(sid)
        if idle_timeout <= 0:
            raise ArgumentError("idle_timeout must be positive")
        self.idle_timeout = idle_timeout
        self.on_idle = on_idle
        self.observer = observer
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
        permits = max(1, max_buffer // CHUNK)
        self._sources = []
        for index, (name, host, port) in enumerate(addresses):
            origin = origin_sids.get(name)
            slave = KyotoSlave(sid if origin is None else origin, host, port, timeout,
                               whitesid=origin is not None, reconnect=True, max_backoff=max_backoff,
                               max_record_size=max_record_size, observer=observer, name=name)
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

    def _add_batch(self, src: _Source, batch: list[Item]) -> None:
        last = batch[-1]
        ts = last if type(last) is int else last["ts"]  # type: ignore[index]
        if ts > src.watermark:
            src.watermark = ts
        if src.batches and all(type(item) is int for item in batch):
            # progress only (heartbeats, dummies) behind records still pending: keep just the
            # highest ts, so that a master held back by others uses no buffer for heartbeats
            tail = src.batches[-1]
            if type(tail[-1]) is int:
                tail[-1] = max(tail[-1], ts)
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
        if self.observer is not None:
            notify(self.observer.exclusion, Exclusion(src.name, excluded))
        if self.on_idle is not None:
            self.on_idle(src.name, excluded)
