"""A ``prometheus_client`` collector of a Cluster's metrics (extra ``ktcluster[prometheus]``).

    from prometheus_client import REGISTRY
    from ktcluster.observe import Metrics
    from ktcluster.observe.prometheus import Collector

    cluster = Cluster(servers, observer=Metrics())
    REGISTRY.register(Collector(cluster))

At each scrape the collector reads ``cluster.stats()`` (any object with such a
``stats()`` will do) and turns it into metric families named as Prometheus wants them
(``ktcluster_`` prefix, base units -- seconds, bytes --, ``_total`` counters, labels
``node``, ``operation``, ``outcome``, ``error``, ``state``).  Nothing is recorded twice:
the counting is the :class:`~ktcluster.observe.Metrics` observer's, and what the cluster
knows itself (breakers, pools, retry counts) is read from it as it is.  Without a
Metrics observer only the cluster's own gauges and counters are exported.
``labels`` adds constant labels to every sample (``{"cluster": "sessions"}`` to tell
several clusters of one process apart).

Families: ``ktcluster_attempts_total{node,operation,outcome}``,
``ktcluster_attempt_errors_total{node,operation,error}``,
``ktcluster_attempt_retries_total``, ``ktcluster_records_total``,
``ktcluster_sent_bytes_total``, ``ktcluster_received_bytes_total`` (by node and operation),
``ktcluster_attempt_duration_seconds`` (histogram), ``ktcluster_pool_wait_seconds``
(histogram), ``ktcluster_pool_exhausted_total``, ``ktcluster_pool_connections{state}``,
``ktcluster_pool_size``, ``ktcluster_pool_waiters``, ``ktcluster_pool_timeouts_total``,
``ktcluster_breaker_state{state}`` (1 for the current state), ``ktcluster_breaker_opened_total``,
``ktcluster_breaker_transitions_total{state}``, ``ktcluster_replication_lag_seconds``,
``ktcluster_replication_excluded`` (by node), and the cluster-wide ``ktcluster_retries_total``,
``ktcluster_failovers_total``, ``ktcluster_partial_failures_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ..health import BreakerState

__all__ = ["Collector"]


class Source(Protocol):
    def stats(self) -> dict[str, Any]: ...


class _Families:
    """The families of one scrape, created on first use, each with the constant labels."""

    def __init__(self, prefix: str, constant: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.names = list(constant)
        self.values = list(constant.values())
        self.made: dict[str, Metric] = {}

    def add(self, kind: Callable[..., Metric], name: str, doc: str, labels: dict[str, str], *value: Any,
            **kw: Any) -> None:
        family = self.made.get(name)
        if family is None:
            family = self.made[name] = kind(self.prefix + name, doc, labels=self.names + list(labels))
        family.add_metric(self.values + list(labels.values()), *value, **kw)  # type: ignore[attr-defined]

    def histogram(self, name: str, doc: str, labels: dict[str, str], hist: dict[str, Any],
                  bounds: list[float]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip([*bounds, float("inf")], hist["buckets"], strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        self.add(HistogramMetricFamily, name, doc, labels, buckets=buckets, sum_value=hist["sum"])


class Collector:
    """A custom collector for ``prometheus_client`` registries; see the module docstring."""

    def __init__(self, source: Source, *, labels: Mapping[str, str] | None = None, prefix: str = "ktcluster_") -> None:
        self.source = source
        self.labels = dict(labels or {})
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats = self.source.stats()
        f = _Families(self.prefix, self.labels)
        for name, node in stats["nodes"].items():
            self._node(f, name, node)
        metrics = stats.get("metrics")
        if metrics is not None:
            for name, node in metrics["nodes"].items():
                self._observed(f, name, node, metrics["buckets"])
        for counter, doc in (("retries", "retries of failed attempts"),
                             ("failovers", "attempts sent to a down node's failover partner"),
                             ("partial_failures", "bulk and fan-out calls that failed on some nodes")):
            f.add(CounterMetricFamily, counter, f"Cluster-wide count of {doc}.", {}, stats[counter])
        yield from f.made.values()

    @staticmethod
    def _node(f: _Families, name: str, node: dict[str, Any]) -> None:
        at = {"node": name}
        pool = node["pool"]
        for state in ("in_use", "idle"):
            f.add(GaugeMetricFamily, "pool_connections", "Pooled connections by state.", {**at, "state": state},
                  pool[state])
        f.add(GaugeMetricFamily, "pool_size", "Most connections the pool opens to the node.", at, pool["size"])
        f.add(GaugeMetricFamily, "pool_waiters", "Callers waiting for a pooled connection now.", at, pool["waiting"])
        f.add(CounterMetricFamily, "pool_timeouts", "Waits for a pooled connection that gave up.", at,
              pool["timeouts"])
        health = node["health"]
        if health is not None:
            for state in BreakerState:
                f.add(GaugeMetricFamily, "breaker_state", "The node's circuit breaker state (1: current).",
                      {**at, "state": state.value}, float(health["state"] == state.value))
            f.add(CounterMetricFamily, "breaker_opened", "Times the node's breaker opened.", at, health["opened"])

    @staticmethod
    def _observed(f: _Families, name: str, node: dict[str, Any], bounds: list[float]) -> None:
        at = {"node": name}
        for operation, s in node["operations"].items():
            by = {**at, "operation": operation}
            for outcome, n in s["outcomes"].items():
                f.add(CounterMetricFamily, "attempts", "Attempts of operations on the node, by outcome.",
                      {**by, "outcome": outcome}, n)
            for error, n in s["errors"].items():
                f.add(CounterMetricFamily, "attempt_errors", "Failed attempts by error class.",
                      {**by, "error": error}, n)
            f.add(CounterMetricFamily, "attempt_retries", "Attempts that were retries.", by, s["retries"])
            f.add(CounterMetricFamily, "records", "Records carried by attempts.", by, s["records"])
            f.add(CounterMetricFamily, "sent_bytes", "Bytes sent to the node.", by, s["bytes_sent"])
            f.add(CounterMetricFamily, "received_bytes", "Bytes received from the node.", by, s["bytes_received"])
            f.histogram("attempt_duration_seconds", "Duration of attempts (the wait for the pool included).",
                        by, s["latency"], bounds)
        f.histogram("pool_wait_seconds", "Waits for a pooled connection.", at, node["pool_wait"], bounds)
        f.add(CounterMetricFamily, "pool_exhausted", "Attempts that found every pooled connection busy until "
              "they gave up.", at, node["pool_exhausted"])
        for state, n in node["breaker_changes"].items():
            f.add(CounterMetricFamily, "breaker_transitions", "Breaker changes by new state.", {**at, "state": state},
                  n)
        replication = node["replication"]
        if replication["lag"] is not None:
            f.add(GaugeMetricFamily, "replication_lag_seconds", "How far behind the master's clock the last batch "
                  "read from its update log was.", at, replication["lag"])
            f.add(GaugeMetricFamily, "replication_excluded", "1 while a replication stream does not wait for the "
                  "master (idle).", at, float(replication["excluded"]))
