"""The optional integrations against the real libraries: the Prometheus collector
(``ktcluster[prometheus]``, through prometheus_client's own exposition and parser) and the
OpenTelemetry tracer (``ktcluster[otel]``, with the SDK's in-memory exporters).  Each test
skips, saying why, when its library is not installed; the ``test`` extra installs both."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.concurrency import gevent_active
from ktcluster.errors import PartialFailureError
from ktcluster.observe import BOUNDS, Metrics, Tee
from ktcluster.testing import KTServer, free_port, start_cluster


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))  # tests/test_cluster_gevent.py


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3) as srvs:
        yield srvs


def prometheus():
    return pytest.importorskip("prometheus_client",
                               reason="the Prometheus extra is not installed: pip install 'ktcluster[prometheus]'")


def otel_sdk():
    pytest.importorskip("opentelemetry.sdk",
                        reason="the OpenTelemetry SDK is not installed: pip install 'ktcluster[test]'")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ktcluster.observe.otel import Tracer

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(tracer_provider, MeterProvider(metric_readers=[reader])), tracer_provider, exporter, reader


# -- Prometheus ---------------------------------------------------------------------------------------


def scrape(prom, source: Cluster, **labels: str) -> dict[str, dict[tuple, float]]:
    """{family: {sorted label items: value}} of one scrape, through the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    from ktcluster.observe.prometheus import Collector

    registry = prom.CollectorRegistry()
    registry.register(Collector(source, labels=labels))
    text = prom.generate_latest(registry).decode()
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_prometheus_collector_names_and_values(servers):
    prom = prometheus()
    cluster = Cluster([s.address for s in servers], observer=Metrics())
    try:
        cluster.set_bulk({f"p{i}": b"v" * 10 for i in range(50)})
        for i in range(50):
            cluster.get(f"p{i}")
        found = scrape(prom, cluster, cluster="sessions")
    finally:
        cluster.close()
    # Prometheus conventions: one prefix, base units, counters as _total, histograms as _bucket/_sum/_count
    assert all(name.startswith("ktcluster_") for name in found)
    assert {"ktcluster_attempts_total", "ktcluster_attempt_duration_seconds_bucket", "ktcluster_sent_bytes_total",
            "ktcluster_pool_wait_seconds_count", "ktcluster_breaker_state", "ktcluster_retries_total"} <= set(found)
    per_node = {n: len([i for i in range(50) if cluster.node_for(f"p{i}") == n]) for n in cluster.nodes}
    for node, gets in per_node.items():
        at = (("cluster", "sessions"), ("node", node), ("operation", "get"))
        assert found["ktcluster_attempts_total"][at + (("outcome", "ok"),)] == gets
        assert found["ktcluster_attempt_duration_seconds_count"][at] == gets
        buckets = {dict(k)["le"]: v for k, v in found["ktcluster_attempt_duration_seconds_bucket"].items()
                   if dict(k)["node"] == node and dict(k)["operation"] == "get"}
        assert len(buckets) == len(BOUNDS) + 1 and buckets["+Inf"] == gets
        assert list(buckets.values()) == sorted(buckets.values())             # cumulative
        assert found["ktcluster_records_total"][(("cluster", "sessions"), ("node", node),
                                                 ("operation", "set_bulk"))] == per_node[node]
        state = {dict(k)["state"]: v for k, v in found["ktcluster_breaker_state"].items() if dict(k)["node"] == node}
        assert state == {"closed": 1, "open": 0, "half-open": 0}


def test_prometheus_collector_without_metrics_exports_the_clusters_own_state(servers):
    prom = prometheus()
    cluster = Cluster([s.address for s in servers])
    try:
        cluster.get("k")
        found = scrape(prom, cluster)
    finally:
        cluster.close()
    assert "ktcluster_pool_size" in found and "ktcluster_breaker_state" in found
    assert "ktcluster_attempts_total" not in found


# -- OpenTelemetry ------------------------------------------------------------------------------------


def test_otel_one_span_per_cluster_call_with_a_child_per_shard(servers):
    tracer, provider, exporter, reader = otel_sdk()
    cluster = Cluster([s.address for s in servers], observer=Tee(Metrics(), tracer))
    keys = [f"o{i}" for i in range(60)]
    try:
        cluster.set_bulk({k: b"v" for k in keys})
        exporter.clear()
        with provider.get_tracer("app").start_as_current_span("request") as outer:
            assert len(cluster.get_bulk(keys)) == 60
            cluster.get("o1")
    finally:
        cluster.close()
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.parent is not None and s.parent.span_id == outer.get_span_context().span_id]
    assert [c.name for c in calls] == ["get_bulk", "get"]            # one span per call, under the caller's
    bulk, get = calls
    assert bulk.attributes["db.system.name"] == "kyototycoon" and bulk.attributes["db.operation.batch.size"] == 60
    shards = [s for s in spans if s.parent is not None and s.parent.span_id == bulk.context.span_id]
    assert sorted(s.attributes["ktcluster.node"] for s in shards) == sorted(cluster.nodes)   # one per shard
    assert sum(s.attributes["db.operation.batch.size"] for s in shards) == 60
    for shard in shards:
        host, port = shard.attributes["server.address"], shard.attributes["server.port"]
        assert f"{host}:{port}" == shard.attributes["ktcluster.node"]
        assert shard.kind.name == "CLIENT" and shard.attributes["ktcluster.outcome"] == "ok"
        assert bulk.start_time <= shard.start_time <= shard.end_time <= bulk.end_time
    (get_shard,) = [s for s in spans if s.parent is not None and s.parent.span_id == get.context.span_id]
    assert get_shard.attributes["ktcluster.node"] == cluster.node_for("o1")
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert {"db.client.operation.duration", "ktcluster.attempt.duration"} <= names


def test_otel_a_failed_shard_is_an_error_span_and_the_call_too(servers):
    tracer, _, exporter, _ = otel_sdk()
    dead = f"127.0.0.1:{free_port()}"
    cluster = Cluster({"a": servers[0].address, "b": dead}, observer=tracer)
    try:
        with pytest.raises(PartialFailureError):
            cluster.get_bulk([f"e{i}" for i in range(40)])
    finally:
        cluster.close()
    spans = exporter.get_finished_spans()
    (call,) = [s for s in spans if s.name == "get_bulk" and s.parent is None]
    assert call.status.status_code.name == "ERROR" and call.attributes["error.type"]
    children = [s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
    failed = [s for s in children if s.attributes["ktcluster.node"] == "b"]
    assert failed and all(s.status.status_code.name == "ERROR" and s.attributes["error.type"] for s in failed)
    assert [s.attributes["ktcluster.retry"] for s in failed] == list(range(len(failed)))
    assert all(s.status.status_code.name == "UNSET" for s in children if s.attributes["ktcluster.node"] == "a")


def test_otel_on_the_single_server_client(servers):
    tracer, _, exporter, _ = otel_sdk()
    kt = KyotoTycoon(observer=tracer)
    kt.open(servers[0].host, servers[0].port)
    try:
        kt.set("k", "v")
    finally:
        kt.close()
    call, attempt = sorted(exporter.get_finished_spans(), key=lambda s: s.parent is not None)
    assert call.name == attempt.name == "set" and attempt.parent.span_id == call.context.span_id
    assert attempt.attributes["server.port"] == servers[0].port
