"""The observer interface (ktcluster.observe): the events a Cluster and a KyotoTycoon emit per
call and attempt, breaker changes, pool exhaustion, the Metrics aggregation and stats() as
plain data, and the INFO/WARNING log lines of retries, failovers and breaker changes
(embedded server, or $KT_SERVER_BIN)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from itertools import islice

import pytest

from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.concurrency import gevent_active
from ktcluster.errors import (
    ArgumentError,
    KTTimeoutError,
    NodeDownError,
    OutcomeUnknownError,
    PartialFailureError,
    PoolTimeoutError,
)
from ktcluster.health import HealthConfig
from ktcluster.observe import BOUNDS, Histogram, Metrics, Observer, Tee
from ktcluster.observe.events import Attempt, BreakerChange, Call, PoolExhausted
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.retry import OpClass, RetryPolicy
from ktcluster.testing import FaultProxy, KTServer, free_port, start_cluster


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))  # tests/test_cluster_gevent.py


class Recorder(Observer):
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def call_started(self, call: Call) -> None:
        self.events.append(("start", call))

    def call_ended(self, call: Call, error: BaseException | None) -> None:
        self.events.append(("end", (call, error)))

    def attempt(self, event: Attempt) -> None:
        self.events.append(("attempt", event))

    def breaker(self, event: BreakerChange) -> None:
        self.events.append(("breaker", event))

    def pool_exhausted(self, event: PoolExhausted) -> None:
        self.events.append(("pool", event))

    def of(self, kind: str) -> list:
        return [e for k, e in self.events if k == kind]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3) as srvs:
        yield srvs


@pytest.fixture
def observed(servers):
    made: list[Cluster] = []

    def make(addresses=None, **kw) -> tuple[Cluster, Recorder, Metrics]:
        recorder, metrics = Recorder(), Metrics()
        cluster = Cluster(addresses or [s.address for s in servers], observer=Tee(recorder, metrics), **kw)
        made.append(cluster)
        return cluster, recorder, metrics

    yield make
    for cluster in made:
        cluster.close()


def test_a_keyed_call_is_one_call_and_one_attempt_measured_by_the_transport(observed):
    cluster, rec, _ = observed()
    cluster.set("k", b"v" * 100)
    assert cluster.get("k") == b"v" * 100
    kinds = [k for k, _ in rec.events]
    assert kinds == ["start", "attempt", "end"] * 2
    set_attempt, get_attempt = rec.of("attempt")
    owner = cluster.node_for("k")
    for event, op, cls in ((set_attempt, "set", OpClass.IDEMPOTENT), (get_attempt, "get", OpClass.READ)):
        assert (event.node, event.operation, event.op_class, event.records, event.retry) == (owner, op, cls, 1, 0)
        assert event.outcome == "ok" and event.error is None and event.requests == 1
        assert event.duration > 0 and 0 <= event.pool_wait <= event.duration
    assert set_attempt.sent > 100 > set_attempt.received > 0     # the value went out...
    assert get_attempt.received > 100 > get_attempt.sent > 0     # ...and came back
    assert [end[1] for end in rec.of("end")] == [None, None]


def test_a_bulk_call_has_an_attempt_per_chunk_carrying_its_records(observed):
    cluster, rec, metrics = observed(bulk_chunk=7)
    keys = [f"bulk{i}" for i in range(60)]
    assert cluster.set_bulk({k: b"x" for k in keys}) == 60
    (call,) = rec.of("start")
    assert (call.operation, call.records) == ("set_bulk", 60)
    attempts = rec.of("attempt")
    assert sum(a.records for a in attempts) == 60 and all(0 < a.records <= 7 for a in attempts)
    assert all(a.call.root is call and a.outcome == "ok" for a in attempts)
    per_node = {n: sum(a.records for a in attempts if a.node == n) for n in cluster.nodes}
    assert per_node == {n: len([k for k in keys if cluster.node_for(k) == n]) for n in cluster.nodes}
    snap = metrics.snapshot()["nodes"]
    assert sum(s["operations"]["set_bulk"]["records"] for s in snap.values()) == 60


def test_a_bulk_shard_failing_in_the_first_pass_goes_on_as_numbered_attempts(observed, servers):
    with FaultProxy(None, mode="blackhole") as hole:
        cluster, rec, _ = observed({"a": servers[0].address, "b": hole.address}, timeout=0.2,
                                   retry=RetryPolicy(attempts=2, backoff=0.001))
        with pytest.raises(PartialFailureError):
            cluster.get_bulk([f"q{i}" for i in range(40)])
    # the first pass (scatter-gather) is attempt 0, the retry goes through the cluster's loop
    assert [(a.retry, a.outcome, a.error) for a in rec.of("attempt") if a.node == "b"] == [
        (0, "error", "SocketTimeoutError"), (1, "error", "SocketTimeoutError")]
    assert [(a.retry, a.outcome) for a in rec.of("attempt") if a.node == "a"] == [(0, "ok")]
    assert all(a.sent > 0 for a in rec.of("attempt"))
    ((call, error),) = rec.of("end")
    assert call.operation == "get_bulk" and isinstance(error, KTTimeoutError)


def test_a_fan_out_call_has_an_attempt_per_node(observed):
    cluster, rec, _ = observed()
    cluster.count()
    assert sorted(a.node for a in rec.of("attempt")) == sorted(cluster.nodes)
    assert {a.operation for a in rec.of("attempt")} == {"count"}


def test_retries_are_numbered_logged_at_info_and_the_breaker_change_is_an_event(observed, caplog):
    with FaultProxy(None, mode="blackhole") as hole:
        cluster, rec, metrics = observed([hole.address], timeout=0.2, retry=RetryPolicy(attempts=3, backoff=0.001))
        with caplog.at_level(logging.INFO, logger="ktcluster"):
            with pytest.raises(KTTimeoutError):
                cluster.get("k")
    attempts = rec.of("attempt")
    assert [a.retry for a in attempts] == [0, 1, 2]
    assert all(a.outcome == "error" and a.error == "SocketTimeoutError" for a in attempts)
    retries = [r for r in caplog.records if r.name == "ktcluster.cluster" and "retrying" in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.INFO for r in retries)
    assert hole.address in retries[0].getMessage() and "SocketTimeoutError" in retries[0].getMessage()
    (change,) = rec.of("breaker")
    assert (change.node, change.old, change.new) == (hole.address, "closed", "open")
    assert any(r.levelno == logging.WARNING and "marked down" in r.getMessage() for r in caplog.records)
    series = metrics.snapshot()["nodes"][hole.address]
    assert series["operations"]["get"]["retries"] == 2
    assert series["operations"]["get"]["errors"] == {"SocketTimeoutError": 3}
    assert series["breaker_changes"] == {"open": 1}


def test_an_unsafe_write_that_may_have_happened_is_outcome_unknown(observed):
    with FaultProxy(None, mode="blackhole") as hole:
        cluster, rec, metrics = observed([hole.address], timeout=0.2)
        with pytest.raises(OutcomeUnknownError):
            cluster.increment("n", 1)
    (attempt,) = rec.of("attempt")
    assert (attempt.outcome, attempt.op_class) == ("unknown", OpClass.UNSAFE)
    assert metrics.snapshot()["nodes"][hole.address]["operations"]["increment"]["outcomes"]["unknown"] == 1


def test_failover_is_logged_at_info_and_observed_on_both_nodes(observed, servers, caplog):
    dead = f"127.0.0.1:{free_port()}"
    cluster, rec, _ = observed({"a": servers[0].address, "b": dead}, failover={"b": servers[1].address})
    key = next(k for k in (f"f{i}" for i in range(1000)) if cluster.node_for(k) == "b")
    with caplog.at_level(logging.INFO, logger="ktcluster.cluster"):
        cluster.set(key, b"1")   # refused (the breaker opens), retried: fails fast, the partner takes it
        cluster.set(key, b"2")   # the breaker fails fast, the partner takes it
    nodes = [(a.node, a.retry, a.outcome, a.error) for a in rec.of("attempt")]
    partner = f"b~{servers[1].address}"
    assert nodes == [("b", 0, "error", "KTConnectionError"), ("b", 1, "error", "NodeDownError"),
                     (partner, 1, "ok", None), ("b", 0, "error", "NodeDownError"), (partner, 0, "ok", None)]
    failovers = [r for r in caplog.records if "failing over" in r.getMessage()]
    assert len(failovers) == 2 and all(r.levelno == logging.INFO and servers[1].address in r.getMessage()
                                       for r in failovers)


@pytest.mark.parametrize(("run", "raises", "records"), [
    (lambda cluster: cluster.get("k"), PoolTimeoutError, 1),
    (lambda cluster: cluster.get_bulk(["a", "b"]), PartialFailureError, 2),  # scatter-gather's wait
], ids=["get", "get_bulk"])
def test_a_pool_that_stays_busy_is_a_pool_exhaustion_event(observed, servers, run, raises, records):
    cluster, rec, metrics = observed([servers[0].address], pool_size=1, pool_timeout=0.1)
    pool = cluster._topology.members[servers[0].address].transport.pool
    held = pool.checkout()
    try:
        with pytest.raises(raises):
            run(cluster)
    finally:
        pool.checkin(held)
    (exhausted,) = rec.of("pool")
    assert exhausted.node == servers[0].address and exhausted.waited >= 0.09
    (attempt,) = rec.of("attempt")
    assert (attempt.error, attempt.records, attempt.requests) == ("PoolTimeoutError", records, 0)
    assert attempt.pool_wait >= 0.09
    node = cluster.stats()["metrics"]["nodes"][servers[0].address]
    assert node["pool_exhausted"] == 1 and node["pool_wait"]["count"] == 0  # no connection was had


def test_a_failing_observer_is_logged_and_changes_nothing(observed, caplog):
    class Broken(Observer):
        def attempt(self, event: Attempt) -> None:
            raise RuntimeError("observer bug")

    cluster, rec, _ = observed()
    cluster.observer = Tee(Broken(), cluster.observer)
    with caplog.at_level(logging.ERROR, logger="ktcluster.observe"):
        assert cluster.set("k", b"v") is True
    assert any("observer bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert len(rec.of("attempt")) == 1   # the next observer still hears it


def test_stats_is_plain_data(observed, servers):
    cluster, _, _ = observed()
    cluster.set_bulk({f"s{i}": b"v" for i in range(30)})
    cluster.get_bulk([f"s{i}" for i in range(30)])
    stats = json.loads(json.dumps(cluster.stats()))
    node = stats["nodes"][servers[0].address]
    assert node["pool"]["size"] == 16 and node["pool"]["in_use"] == 0 and node["pool"]["waiting"] == 0
    metrics = stats["metrics"]
    assert metrics["buckets"] == list(BOUNDS)
    get_bulk = metrics["nodes"][servers[0].address]["operations"]["get_bulk"]
    assert get_bulk["attempts"] == 1 and get_bulk["latency"]["count"] == 1
    assert get_bulk["latency"]["p99"] is not None and len(get_bulk["latency"]["buckets"]) == len(BOUNDS) + 1
    plain = Cluster([s.address for s in servers])
    try:
        plain.get("k")
        assert json.loads(json.dumps(plain.stats()))["metrics"] is None
    finally:
        plain.close()


def test_kyototycoon_takes_an_observer_too(servers):
    rec = Recorder()
    kt = KyotoTycoon(binary=True, observer=rec)
    kt.open(servers[0].host, servers[0].port)
    try:
        kt.set("k", "v")
        kt.get("k")
        kt.with_options(timeout=5).get_bulk(["k", "j"])
    finally:
        kt.close()
    attempts = rec.of("attempt")
    assert [(a.operation, a.op_class, a.records) for a in attempts] == [
        ("set", OpClass.IDEMPOTENT, 1), ("get", OpClass.READ, 1), ("get_bulk", OpClass.READ, 0)]
    assert all(a.node == servers[0].address and a.sent > 0 and a.received > 0 for a in attempts)


def test_kyototycoon_observes_each_operation_under_its_own_name(servers):
    """Operations whose op is built by a helper (replace and remove keep ng's False through a
    wrapper; set and add choose their generator) are observed under the method's name and
    class, errors raised while the operation is built included."""
    rec, strict = Recorder(), Recorder()
    kt = KyotoTycoon(observer=rec).connect(servers[0].host, servers[0].port)
    binary = KyotoTycoon(binary=True, observer=strict).connect(servers[0].host, servers[0].port)
    try:
        kt.set("k", "v")
        kt.add("new-key-of-this-test", "v")
        kt.replace("k", "w")
        kt.remove("k")
        with pytest.raises(NotImplementedError):
            binary.add("k", "v")
    finally:
        kt.close()
        binary.close()
    assert [(a.operation, a.op_class) for a in rec.of("attempt")] == [
        ("set", OpClass.IDEMPOTENT), ("add", OpClass.UNSAFE), ("replace", OpClass.IDEMPOTENT),
        ("remove", OpClass.IDEMPOTENT)]
    ended = strict.of("end")
    assert [(call.operation, type(error)) for call, error in ended] == [("add", NotImplementedError)]


def test_argument_errors_of_one_request_operations_are_observed(servers):
    """A binary get/set/remove of one record is its request, built before the call: an
    argument error found while building it is raised inside the observed call all the same."""
    rec = Recorder()
    kt = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES, observer=rec).connect(servers[0].host, servers[0].port)
    try:
        with pytest.raises(ArgumentError):
            kt.set("k", 12)  # the bytes packer takes bytes only
        with pytest.raises(ArgumentError):
            kt.get(12)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError):
            kt.remove(12)  # type: ignore[arg-type]
        assert kt.set("k", b"v") is True and kt.get("k") == b"v" and kt.remove("k") is True
    finally:
        kt.close()
    assert [(call.operation, type(error)) for call, error in rec.of("end")] == [
        ("set", ArgumentError), ("get", ArgumentError), ("remove", ArgumentError),
        ("set", type(None)), ("get", type(None)), ("remove", type(None))]


def test_breaker_down_fails_fast_as_an_observed_attempt(observed):
    dead = f"127.0.0.1:{free_port()}"
    cluster, rec, _ = observed([dead], health=HealthConfig(reset_timeout=60, max_reset_timeout=60))
    for _ in range(2):
        with pytest.raises((NodeDownError, OSError)):
            cluster.get("k")
    # refused (the breaker opens), then its retry and the next call fail fast, sending nothing
    assert [a.error for a in rec.of("attempt")] == ["KTConnectionError", "NodeDownError", "NodeDownError"]
    assert [a.requests for a in rec.of("attempt")] == [1, 0, 0]


def test_the_clusters_replication_stream_reports_its_lag_to_the_clusters_observer():
    with start_cluster(2, ulog=True) as masters:
        metrics = Metrics()
        cluster = Cluster({"m1": masters[0].address, "m2": masters[1].address}, observer=metrics)
        stream = cluster.replication(99)
        records = []
        reader = threading.Thread(target=lambda: records.extend(islice(stream, 2)), daemon=True)
        reader.start()
        time.sleep(0.5)
        cluster.set_bulk({"a": b"1", "b": b"2", "c": b"3", "d": b"4"})
        reader.join(15)
        stream.close()
        cluster.close()
    lag = {n: s["replication"]["lag"] for n, s in cluster.stats()["metrics"]["nodes"].items() if n in ("m1", "m2")}
    assert len(records) == 2 and set(lag) == {"m1", "m2"} and all(0 <= v < 60 for v in lag.values())


# -- histograms (pure) --------------------------------------------------------------------------------


def test_histogram_buckets_are_fixed_log_scale_and_quantiles_come_from_them():
    assert BOUNDS[0] == 1e-5 and all(abs(b / a - 2 ** 0.5) < 1e-3 for a, b in zip(BOUNDS, BOUNDS[1:], strict=False))
    h = Histogram()
    assert h.quantile(0.5) is None
    for ms in range(1, 1001):                      # 1 ms .. 1 s, uniform
        h.add(ms / 1000)
    for q in (0.5, 0.9, 0.99):                     # within the bucket's width (sqrt 2)
        assert abs(h.quantile(q) - q) / q < 2 ** 0.5 - 1, (q, h.quantile(q))
    assert h.count == 1000 and abs(h.sum - 500.5) < 1e-6
    h.add(1e6)                                     # above the last bound: counted, read as the bound
    assert h.counts[-1] == 1 and h.quantile(1.0) == BOUNDS[-1]
    one = Histogram()
    one.add(BOUNDS[3])                             # a bound belongs to its own bucket (le)
    assert one.counts[3] == 1
