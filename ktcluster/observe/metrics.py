"""The built-in aggregation: :class:`Metrics`, an observer that counts.

Per node x operation: attempts, their outcomes, retries, records, bytes sent and
received, and a latency :class:`Histogram`; per node x operation x error class: error
counts; per node: the wait for a pooled connection (a histogram), pool exhaustions,
breaker transitions by new state, and the last replication lag and exclusion seen.
:meth:`Metrics.snapshot` returns all of it as plain JSON-serialisable data (what
``Cluster.stats()["metrics"]`` holds, and what the Prometheus collector and ``ktcluster
stats`` read).

Histograms have fixed log-scale buckets (:data:`BOUNDS`: 10 µs to 10.5 s, two per
doubling -- each bound is sqrt(2) times the one before -- then +Inf), the same
for every histogram, so they add up across nodes and processes; p50/p90/p99 are read
from them by linear interpolation inside the bucket (at most the bucket's width off,
41% of the value, and usually much less).

Recording takes one short lock (no I/O under it), so a Metrics may be shared by every
client of a process, threads and greenlets alike.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from .events import ERROR, OK, UNKNOWN, Attempt, BreakerChange, Exclusion, Observer, PoolExhausted, ReplicationLag

__all__ = ["Metrics", "Histogram", "BOUNDS", "find_metrics"]

#: the upper bounds (seconds, inclusive) of every histogram's buckets; a last bucket is +Inf
BOUNDS: tuple[float, ...] = tuple(round(1e-5 * 2 ** (i / 2), 9) for i in range(41))

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


class Histogram:
    """Counts of values per bucket of :data:`BOUNDS` (the last one: above them all)."""

    __slots__ = ("counts", "count", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0

    @classmethod
    def of(cls, counts: list[int]) -> Histogram:
        """A histogram of these bucket counts (a snapshot's ``buckets``, or a difference of two);
        its ``sum`` is unknown (0)."""
        hist = cls()
        hist.counts = list(counts)
        hist.count = sum(counts)
        return hist

    def add(self, value: float) -> None:
        self.counts[bisect_left(BOUNDS, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) read from the buckets; None when empty.  A value above
        the last bound reads as that bound."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(BOUNDS):
                    return BOUNDS[-1]
                low = BOUNDS[i - 1] if i else 0.0
                return low + (BOUNDS[i] - low) * max(0.0, rank - seen) / n
            seen += n
        return BOUNDS[-1]

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"count": self.count, "sum": self.sum, "buckets": list(self.counts)}
        for name, q in QUANTILES:
            snap[name] = self.quantile(q)
        return snap


class _Series:
    """One node x operation."""

    __slots__ = ("attempts", "outcomes", "retries", "records", "sent", "received", "latency", "errors")

    def __init__(self) -> None:
        self.attempts = self.retries = self.records = self.sent = self.received = 0
        self.outcomes = {OK: 0, ERROR: 0, UNKNOWN: 0}
        self.latency = Histogram()
        self.errors: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "outcomes": dict(self.outcomes), "retries": self.retries,
                "records": self.records, "bytes_sent": self.sent, "bytes_received": self.received,
                "errors": dict(self.errors), "latency": self.latency.snapshot()}


class _Node:
    """What is known of one node beyond its operations."""

    __slots__ = ("pool_wait", "pool_exhausted", "breaker_changes", "lag", "lag_ts", "excluded", "exclusions")

    def __init__(self) -> None:
        self.pool_wait = Histogram()
        self.pool_exhausted = 0
        self.breaker_changes: dict[str, int] = {}
        self.lag: float | None = None
        self.lag_ts: int | None = None
        self.excluded = False
        self.exclusions = 0

    def snapshot(self) -> dict[str, Any]:
        return {"pool_wait": self.pool_wait.snapshot(), "pool_exhausted": self.pool_exhausted,
                "breaker_changes": dict(self.breaker_changes),
                "replication": {"lag": self.lag, "ts": self.lag_ts, "excluded": self.excluded,
                                "exclusions": self.exclusions}}


class Metrics(Observer):
    """An observer that aggregates the events it receives; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self._nodes: dict[str, _Node] = {}

    def __repr__(self) -> str:
        return f"<Metrics {len(self._series)} series>"

    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = _Node()
        return node

    def attempt(self, event: Attempt) -> None:
        key = (event.node, event.call.operation)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
                self._node(event.node)
            series.attempts += 1
            series.outcomes[event.outcome] += 1
            if event.retry:
                series.retries += 1
            series.records += event.call.records
            series.sent += event.sent
            series.received += event.received
            series.latency.add(event.duration)
            if event.error is not None:
                series.errors[event.error] = series.errors.get(event.error, 0) + 1
            if event.requests:
                self._nodes[event.node].pool_wait.add(event.pool_wait)

    def breaker(self, event: BreakerChange) -> None:
        with self._lock:
            changes = self._node(event.node).breaker_changes
            changes[event.new] = changes.get(event.new, 0) + 1

    def pool_exhausted(self, event: PoolExhausted) -> None:
        with self._lock:
            self._node(event.node).pool_exhausted += 1

    def replication_lag(self, event: ReplicationLag) -> None:
        with self._lock:
            node = self._node(event.node)
            node.lag, node.lag_ts = event.lag, event.ts

    def exclusion(self, event: Exclusion) -> None:
        with self._lock:
            node = self._node(event.node)
            node.excluded = event.excluded
            node.exclusions += event.excluded

    def snapshot(self) -> dict[str, Any]:
        """Everything counted so far, as plain data: ``{"buckets": BOUNDS, "nodes": {node:
        {"operations": {operation: {...}}, "pool_wait": ..., ...}}}``."""
        with self._lock:
            nodes = {name: {**node.snapshot(), "operations": {}} for name, node in self._nodes.items()}
            for (name, operation), series in self._series.items():
                nodes[name]["operations"][operation] = series.snapshot()
        return {"buckets": list(BOUNDS), "nodes": nodes}

    def reset(self) -> None:
        """Forget everything counted."""
        with self._lock:
            self._series.clear()
            self._nodes.clear()


def find_metrics(observer: Observer | None) -> Metrics | None:
    """The :class:`Metrics` among an observer (itself, or one inside a Tee), if any."""
    if isinstance(observer, Metrics):
        return observer
    for inner in getattr(observer, "observers", ()):
        found = find_metrics(inner)
        if found is not None:
            return found
    return None
