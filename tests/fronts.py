"""Test helper: the asyncio front end seen through the blocking one's interface, so one
test body checks both (``front`` fixtures parametrised over ``"blocking"``/``"asyncio"``).

:class:`Awaited` wraps a ``ktcluster.aio`` client: each method call runs on one event
loop in a thread of its own (:func:`loop_thread`) and returns its result or raises its
error in the caller's thread -- several threads may call at once, and their calls then
run concurrently on the loop, as tasks of an asyncio app would.  Attributes that are
not methods (``pool``, ``transport``...) are the client's own.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

#: the front ends (ktcluster.aio needs Python 3.11: asyncio.timeout)
FRONTS = ("blocking", "asyncio") if sys.version_info >= (3, 11) else ("blocking",)

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop_thread() -> asyncio.AbstractEventLoop:
    """The event loop the wrapped clients run on (started once, in a daemon thread)."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="aio-front", daemon=True).start()
            _loop = loop
        return _loop


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the loop thread and wait for its outcome."""
    return asyncio.run_coroutine_threadsafe(coro, loop_thread()).result()


async def _call(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = method(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class Awaited:
    """A ``ktcluster.aio`` client (or cluster) driven like a blocking one; see the module docstring."""

    def __init__(self, aio_client: Any) -> None:
        self.aio = aio_client

    def __repr__(self) -> str:
        return f"<Awaited {self.aio!r}>"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.aio, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return _wrapped(run(_call(attr, args, kwargs)))

        return call

    def __enter__(self) -> Awaited:
        return self

    def __iter__(self) -> Iterator[Any]:
        return _iterate(run(_call(self.aio.__aiter__, (), {})))

    def __exit__(self, *exc: Any) -> None:
        run(self.aio.__aexit__(*exc))


def _wrapped(result: Any) -> Any:
    """An asyncio client, cluster, consumer or cursor (``connect``, ``with_options``,
    ``Cluster.client``, ``Cluster.replication``, ``cursor``) as Awaited; an async iterator
    (``KyotoSlave.consume``, ``Cursor.items``, ``Cluster.iterate``) as an iterator."""
    from ktcluster import aio
    from ktcluster.aio.cursor import AsyncCursor

    if isinstance(result, (aio.KyotoTycoon, aio.Cluster, aio.ReplicationStream, aio.KyotoSlave, AsyncCursor)):
        return Awaited(result)
    if hasattr(result, "__anext__"):
        return _iterate(result)
    return result


def _iterate(records: Any) -> Iterator[Any]:
    while True:
        try:
            yield run(records.__anext__())
        except StopAsyncIteration:
            return


def single(front: str, *args: Any, **kwargs: Any) -> Any:
    """``KyotoTycoon(*args, **kwargs)`` of the front end ``front`` (not yet open)."""
    if front == "blocking":
        from ktcluster import KyotoTycoon

        return KyotoTycoon(*args, **kwargs)
    from ktcluster.aio import KyotoTycoon as AsyncKyotoTycoon

    return Awaited(AsyncKyotoTycoon(*args, **kwargs))


def cluster(front: str, *args: Any, **kwargs: Any) -> Any:
    """``Cluster(*args, **kwargs)`` of the front end ``front``."""
    if front == "blocking":
        from ktcluster import Cluster

        return Cluster(*args, **kwargs)
    from ktcluster.aio import Cluster as AsyncCluster

    return Awaited(AsyncCluster(*args, **kwargs))


def consumer(front: str, kind: str) -> Any:
    """The class ``kind`` ("ReplicationStream" or "KyotoSlave") of the front end ``front``:
    calling it makes one (an asyncio one through Awaited)."""
    from ktcluster import aio, replication

    if front == "blocking":
        return getattr(replication, kind)
    return lambda *args, **kwargs: Awaited(getattr(aio, kind)(*args, **kwargs))


def swap_consumer(request: Any, monkeypatch: Any, namespace: dict[str, Any], kind: str) -> str:
    """In an autouse fixture parametrised over FRONTS: the test module's ``kind``
    ("ReplicationStream" or "KyotoSlave") becomes the front end's."""
    if request.param != "blocking":
        monkeypatch.setitem(namespace, kind, consumer(request.param, kind))
    return str(request.param)
