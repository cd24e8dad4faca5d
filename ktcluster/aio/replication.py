"""Replication consumers for asyncio: ``async for`` over one master's log or over every master's.

    async with ReplicationStream(cluster.nodes, sid=99, since=checkpoint) as stream:
        async for record in stream:
            await handle(record)
            checkpoint = stream.checkpoint()

:class:`ReplicationStream` and :class:`KyotoSlave` are :mod:`ktcluster.replication`'s,
iterated with ``async for``: the same constructors, records, checkpoints, guarantees and
errors, because they *are* those objects -- each wraps the blocking one, and every record
is produced by the blocking iterator in a worker thread of its own (one per consumer),
one record per request, so the event loop never blocks.  The stream's readers are the
blocking stream's threads, as they are there.

What the wrapping keeps exact:

* **Positions.**  A stream's ``checkpoint()`` is taken when a record is handed to the
  consumer, so it counts only records the consumer received (and, unlike the blocking
  stream's, does not advance with the heartbeats that come between records: resuming
  from it reads nothing twice all the same).  A slave's worker fetches whole batches of
  the master's stream and ``last_ts`` follows each record and heartbeat as it is taken
  on the loop, as in the blocking slave.  A task
  cancelled while it waits for a record does not lose it: the record the worker was
  fetching is handed to the next ``__anext__`` (resuming from the checkpoint would
  deliver it too, since it was not counted).
* **Errors.**  What the blocking iterator raises (``ResyncRequiredError``,
  ``ReplicationError``, a slave's transport errors) is raised by ``__anext__``.
* **Stopping.**  ``await close()`` (also the end of ``async with``) stops the readers
  and the worker without blocking the loop; a blocked ``__anext__`` then ends the
  iteration.

Not native asyncio yet: the waits are threads', as in the blocking consumers (one
thread per consumer more).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from .. import replication as _blocking
from ..replication.checkpoint import Checkpoint
from ..replication.slave import Record

__all__ = ["ReplicationStream", "KyotoSlave"]

T = TypeVar("T")

_END = object()


class _Records(Generic[T]):
    """An async iterator over a blocking iterator, each item fetched in the worker thread
    of ``consumer``, until it is closed (see the module docstring: an item being fetched when the consumer is
    cancelled is handed to the next call).  ``on_item`` runs on the loop as an item is
    handed over."""

    def __init__(self, items: Iterator[T], consumer: _Consumer, on_item: Callable[[T], None] = lambda item: None
                 ) -> None:
        self._items = items
        self._consumer = consumer
        self._on_item = on_item
        self._fetching: concurrent.futures.Future[Any] | None = None

    def __aiter__(self) -> _Records[T]:
        return self

    async def __anext__(self) -> T:
        if self._fetching is None:
            if self._consumer.closed:
                raise StopAsyncIteration
            self._fetching = self._consumer._worker().submit(next, self._items, _END)
        # shielded: a cancelled consumer leaves the fetch running, for the next call
        item = await asyncio.shield(asyncio.wrap_future(self._fetching))
        self._fetching = None
        if item is _END:
            self._consumer._retire()
            raise StopAsyncIteration
        self._on_item(item)
        return item


class _Consumer:
    """What both consumers share: the worker thread, and stopping."""

    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    closed = False

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ktcluster-aio-replication")
        return self._executor

    def _stop(self) -> None:
        raise NotImplementedError

    def _retire(self) -> None:
        """The worker is not needed any more (its thread ends; a later iteration starts another)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def close(self) -> None:
        """Stop reading: readers and worker end, connections close (an iteration in progress ends)."""
        self.closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._stop)
        self._retire()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class ReplicationStream(_Consumer):
    """:class:`ktcluster.replication.ReplicationStream` for ``async for``; the same
    arguments (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stream = _blocking.ReplicationStream(*args, **kwargs)
        self._handed = self.stream.checkpoint()

    def __repr__(self) -> str:
        return f"<aio.ReplicationStream {self.stream.nodes}>"

    @property
    def nodes(self) -> list[str]:
        return self.stream.nodes

    @property
    def excluded(self) -> frozenset[str]:
        return self.stream.excluded

    @property
    def late_records(self) -> int:
        return self.stream.late_records

    def status(self) -> dict[str, dict[str, Any]]:
        return self.stream.status()

    def checkpoint(self) -> Checkpoint:
        """Every master's position, counting the records handed to the consumer."""
        return self._handed

    def __aiter__(self) -> _Records[Record]:
        return _Records(iter(self.stream), self, self._handing)

    def _handing(self, record: Record) -> None:
        self._handed = self.stream.checkpoint()  # the worker is idle: the positions are still

    def _stop(self) -> None:
        self.stream.close()


class KyotoSlave(_Consumer):
    """:class:`ktcluster.replication.KyotoSlave` with an async ``consume``; the same
    arguments (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slave = _blocking.KyotoSlave(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<aio.KyotoSlave sid={self.slave.sid} {self.slave.address}>"

    @property
    def sid(self) -> int:
        return self.slave.sid

    @property
    def address(self) -> str:
        return self.slave.address

    @property
    def last_ts(self) -> int:
        """The ts of the last record handed over (or heartbeat passed): resume with ``consume(ts=last_ts)``."""
        return self.slave.last_ts

    async def consume(self, timestamp: float | None = None, *, ts: int | None = None) -> AsyncIterator[Record]:
        """The master's log records after ``timestamp`` or ``ts``; see
        :meth:`ktcluster.replication.KyotoSlave.consume`."""
        slave = self.slave
        self.closed = False
        async for batch in _Records(slave._batches(*slave._start(timestamp, ts)), self):
            for record in slave._take(batch):
                yield record

    def _stop(self) -> None:
        self.slave.close()
