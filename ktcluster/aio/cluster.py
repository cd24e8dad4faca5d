"""``ktcluster.aio.Cluster``: many KT servers behind one client, for asyncio.

    async with Cluster(["kt1:1978", "kt2:1978", "kt3:1978"]) as cluster:
        await cluster.set_bulk({"a": b"1", "b": b"2", "c": b"3"})   # one task per node
        await cluster.get("a")                                      # routed to the owner of "a"

The same class as :class:`ktcluster.Cluster` with ``await``: the same constructor, ring,
operation classes and retries (``OutcomeUnknownError`` for a non-idempotent write whose
request may have left), circuit breakers, failover partners, deadline
(``retry.deadline`` bounds every call, fan-outs included) and
:class:`~ktcluster.errors.PartialFailureError` for bulk and whole-cluster calls.  All of
that is :class:`~ktcluster.cluster.ClusterCore`'s code, shared with the blocking
cluster: argument checks, planning, merging, partial-failure accounting
(:mod:`ktcluster.cluster`), which error is retried for which operation class and the
error a call ends with (:mod:`ktcluster.retry`), the breaker's state machine
(:mod:`ktcluster.health`).  What differs is how a call reaches the nodes:

* ``_execute`` retries through :meth:`RetryPolicy.run_async
  <ktcluster.retry.RetryPolicy.run_async>` (tenacity's ``AsyncRetrying``: its backoff
  waits are ``asyncio.sleep``);
* ``_guarded`` makes the breaker's steps (``enter``, ``probe_failed``, ``record``,
  ``succeeded``) around an awaited attempt, the probe on a fresh asyncio connection;
* ``_bulk`` and ``_each`` run one task per node (a lone node in the caller's task);
  each node's waits end by the call's deadline, so no task outlives it by more than
  the loop's latency.  A cancelled call cancels its node tasks and waits for them:
  their connections are discarded, their slots freed, before the cancellation
  propagates.

``cursor(node)`` returns an :class:`~ktcluster.aio.cursor.AsyncCursor`, ``iterate`` is
an async generator, ``replication`` returns :class:`ktcluster.aio.ReplicationStream`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..cluster import Call, ClusterCore, _before_attempt, _Member, _op, _Shard, _Topology
from ..deadline import Deadline
from ..errors import ArgumentError, KyotoTycoonException, NodeDownError
from ..keys import DB
from ..ops import Op, Session
from ..retry import OpClass, op_class
from .client import KyotoTycoon
from .cursor import AsyncCursor
from .replication import ReplicationStream
from .transport import AsyncTransport

__all__ = ["Cluster"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def _awaited(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """``method`` of ClusterCore, typed as what it returns here: a coroutine (its call
    reaches the nodes through this class's async ``_execute``/``_bulk``/``_each``/``_then``)."""
    return method  # type: ignore[return-value]


class Cluster(ClusterCore):
    """A sharded KT cluster for asyncio; see the module docstring and
    :class:`ktcluster.Cluster` for the arguments."""

    _transport_type = AsyncTransport
    _client_type = KyotoTycoon

    def __init__(self, servers: Any, **options: Any) -> None:
        if options.get("shared_ring"):
            raise ArgumentError("ktcluster.aio.Cluster does not follow the shared ring document (shared_ring=True) "
                                "yet: during a live migration use the blocking Cluster")
        if options.get("observer") is not None:
            raise ArgumentError("ktcluster.aio does not take an observer yet (docs/observability.md)")
        super().__init__(servers, **options)

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    # -- how a call reaches the nodes ---------------------------------------------------------------

    async def _execute(self, cls: OpClass, topo: _Topology, node: str, call: Call[Any],  # type: ignore[override]
                       deadline: Deadline, first_error: Exception | None = None, scope: Any = None) -> Any:
        member = topo.members[node]

        async def attempt() -> Any:
            try:
                return await self._guarded(member, call, deadline)
            except NodeDownError as exc:
                return await self._guarded(self._partner(topo, node, cls, exc), call, deadline)

        return await self.retry.run_async(cls, attempt, deadline, self._on_retry)

    async def _guarded(self, member: _Member, call: Call[Any], deadline: Deadline) -> Any:  # type: ignore[override]
        _before_attempt(member, deadline)
        breaker = member.breaker
        try:
            trial = breaker.enter()
            if trial:
                try:
                    await member.probe(deadline)
                except BaseException as exc:
                    err = breaker.probe_failed(exc)
                    if err is exc:
                        raise
                    raise err from exc
            try:
                result = await call(member, deadline, None)  # (no observer: see __init__)
            except BaseException as exc:
                breaker.record(exc, trial)
                raise
            breaker.succeeded(trial)
            return result
        except KyotoTycoonException as exc:
            if exc.node is None:
                exc.node = member.name
            raise

    async def _bulk(self, operation: str, topo: _Topology, plan: dict[str, list[list[int]]],  # type: ignore[override]
                    make_op: Callable[[list[int], Session], Op[Any]]) -> dict[str, _Shard]:
        deadline = self._deadline()
        cls = op_class(operation)

        async def shard_task(node: str, chunks: list[list[int]]) -> _Shard:
            shard = _Shard()
            for done, chunk in enumerate(chunks):
                try:
                    shard.results[done] = await self._execute(cls, topo, node, _op(partial(make_op, chunk)), deadline)
                except Exception as exc:
                    return shard.fail(exc, chunks, range(done, len(chunks)))
            return shard

        return await _gather({node: shard_task(node, chunks) for node, chunks in plan.items()})

    async def _each(self, operation: str, call: Call[T]) -> dict[str, T]:  # type: ignore[override]
        topo = self._topology
        names = list(topo.members)
        deadline = self._deadline()
        cls = op_class(operation)

        async def node_task(node: str) -> tuple[Any, BaseException | None]:
            try:
                return await self._execute(cls, topo, node, call, deadline), None
            except Exception as exc:
                return None, exc

        outcomes = await _gather({n: node_task(n) for n in names})
        results = {n: result for n, (result, exc) in outcomes.items() if exc is None}
        errors = {n: exc for n, (_, exc) in outcomes.items() if exc is not None}
        return self._every_node(operation, names, results, errors)

    async def _then(self, result: Any, finish: Callable[[Any], T]) -> T:  # type: ignore[override]
        return finish(await result)

    def cursor(self, node: str) -> AsyncCursor:
        """A cursor on one node (cursors live on a server; no retries, no failover)."""
        return self._member_named(node).client.cursor()

    async def iterate(self, db: DB = 0) -> AsyncIterator[tuple[Any, Any]]:
        """Every ``(key, value)`` of the cluster, node after node; see
        :meth:`ktcluster.Cluster.iterate`."""
        for name in list(self._topology.members):
            async with self.cursor(name) as cur:
                try:
                    async for item in cur.items(db):
                        yield item
                except KyotoTycoonException as exc:
                    if exc.node is None:
                        exc.node = name
                    raise

    def replication(self, sid: int, since: Any = None, **options: Any) -> ReplicationStream:
        """Every node's update log merged into one stream, for ``async for``: see
        :meth:`ktcluster.Cluster.replication` and :mod:`ktcluster.aio.replication`."""
        return ReplicationStream(self.nodes, sid, since, **options)

    # -- the data API: ClusterCore's methods, awaited ----------------------------------------------

    get = _awaited(ClusterCore.get)
    get_with_expiry = _awaited(ClusterCore.get_with_expiry)  # type: ignore[assignment]
    get_int = _awaited(ClusterCore.get_int)  # type: ignore[assignment]
    check = _awaited(ClusterCore.check)  # type: ignore[assignment]
    set = _awaited(ClusterCore.set)  # type: ignore[assignment]
    add = _awaited(ClusterCore.add)  # type: ignore[assignment]
    replace = _awaited(ClusterCore.replace)  # type: ignore[assignment]
    append = _awaited(ClusterCore.append)  # type: ignore[assignment]
    increment = _awaited(ClusterCore.increment)  # type: ignore[assignment]
    increment_double = _awaited(ClusterCore.increment_double)  # type: ignore[assignment]
    cas = _awaited(ClusterCore.cas)  # type: ignore[assignment]
    remove = _awaited(ClusterCore.remove)  # type: ignore[assignment]
    seize = _awaited(ClusterCore.seize)
    get_bulk = _awaited(ClusterCore.get_bulk)  # type: ignore[assignment]
    set_bulk = _awaited(ClusterCore.set_bulk)  # type: ignore[assignment]
    remove_bulk = _awaited(ClusterCore.remove_bulk)  # type: ignore[assignment]
    per_node = _awaited(ClusterCore.per_node)  # type: ignore[assignment]
    count = _awaited(ClusterCore.count)  # type: ignore[assignment]
    size = _awaited(ClusterCore.size)  # type: ignore[assignment]
    status = _awaited(ClusterCore.status)  # type: ignore[assignment]
    report = _awaited(ClusterCore.report)  # type: ignore[assignment]
    clear = _awaited(ClusterCore.clear)  # type: ignore[assignment]
    vacuum = _awaited(ClusterCore.vacuum)  # type: ignore[assignment]
    match_prefix = _awaited(ClusterCore.match_prefix)  # type: ignore[assignment]
    match_regex = _awaited(ClusterCore.match_regex)  # type: ignore[assignment]
    match_similar = _awaited(ClusterCore.match_similar)  # type: ignore[assignment]
    play_script = _awaited(ClusterCore.play_script)  # type: ignore[assignment]


async def _gather(tasks: dict[str, Coroutine[Any, Any, T]]) -> dict[str, T]:
    """Run one coroutine per node at once (a lone one in the caller's task): ``{node:
    result}``.  The coroutines report failures in their results; if the caller is
    cancelled, every node task is cancelled and waited for before it propagates."""
    if len(tasks) <= 1:
        return {node: await only for node, only in tasks.items()}
    running = {node: asyncio.ensure_future(coro) for node, coro in tasks.items()}
    try:
        await asyncio.wait(running.values())
    except BaseException:
        for task in running.values():
            task.cancel()
        await asyncio.wait(running.values())
        raise
    return {node: task.result() for node, task in running.items()}
