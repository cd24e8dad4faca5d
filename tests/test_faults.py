"""Cluster fault tests: refused ports, black holes, a node killed mid-set_bulk, a flapping
node, a restarted node, deadlines and failover.  Faults come from real servers (killed,
restarted) and from ktcluster.testing.FaultProxy.  Asserted every time: typed errors within
the deadline, the other shards' results intact, no connection leaked, the breaker opening and
closing, nothing retried that must not be.  tests/test_cluster_gevent.py reruns this module
under gevent."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator

import fronts
import pytest
from fronts import FRONTS

from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.concurrency import gevent_active
from ktcluster.errors import (
    KTConnectionError,
    KTTimeoutError,
    KyotoTycoonException,
    NodeDownError,
    OutcomeUnknownError,
    PartialFailureError,
)
from ktcluster.fanout import DeadlineExceeded
from ktcluster.health import BreakerState, HealthConfig
from ktcluster.packers import KT_PACKER_PICKLE
from ktcluster.retry import OpClass, RetryPolicy
from ktcluster.testing import FaultProxy, KTServer, free_port, start_cluster

UNDER_GEVENT = bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))
DEADLINE = 2.0
TIMEOUT = 0.4
#: slack for scheduling on a busy 2-core machine; the bounds below are correctness, not speed.
SLACK = 2.0


@pytest.fixture
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3) as srvs:
        yield srvs


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, node, old, new, exc) -> None:
        self.seen.append((node, new.value))

    def states(self, node: str) -> list[str]:
        return [state for n, state in self.seen if n == node]


@pytest.fixture(params=("blocking",) if UNDER_GEVENT else FRONTS)
def make_cluster(request):
    """Clusters of each front end in turn (``ktcluster.aio`` through tests/fronts.py)."""
    made: list[Cluster] = []

    def make(servers, **kw) -> Cluster:
        kw.setdefault("pack_type", KT_PACKER_PICKLE)  # Python values, on the test's own servers
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("connect_timeout", TIMEOUT)
        kw.setdefault("retry", RetryPolicy(attempts=3, deadline=DEADLINE, backoff=0.01, max_backoff=0.05))
        kw.setdefault("health", HealthConfig(failure_threshold=2, reset_timeout=0.2, max_reset_timeout=0.5,
                                             max_down=2))
        cluster = fronts.cluster(request.param, servers, **kw)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        assert_no_leak(cluster)
        cluster.close()


def assert_no_leak(cluster: Cluster, within: float = TIMEOUT + SLACK + 3) -> None:
    deadline = time.monotonic() + within
    while True:
        in_use = {n: s["pool"]["in_use"] for n, s in cluster.stats()["nodes"].items()}
        if not any(in_use.values()):
            return
        assert time.monotonic() < deadline, f"connections still checked out: {in_use}"
        time.sleep(0.05)


def keys_by_node(cluster: Cluster, n: int = 300, prefix: str = "k") -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {name: [] for name in cluster.nodes}
    for i in range(n):
        key = f"{prefix}{i}"
        groups[cluster.node_for(key)].append(key)
    return groups


def stored_on(address: str, keys: list[str]) -> int:
    host, port = address.rsplit(":", 1)
    with KyotoTycoon().connect(host, int(port)) as kt:
        return len(kt.get_bulk(keys))


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == UNDER_GEVENT


def test_refused_node_gives_partial_results_and_fails_fast(make_cluster, servers):
    events = Events()
    addrs = {"a": servers[0].address, "b": servers[1].address, "dead": f"127.0.0.1:{free_port()}"}
    cluster = make_cluster(addrs, on_node_event=events)
    groups = keys_by_node(cluster)
    data = {k: k for keys in groups.values() for k in keys}

    with pytest.raises(PartialFailureError) as info:
        cluster.set_bulk(data)
    err = info.value
    assert set(err.errors) == {"dead"} and isinstance(err.errors["dead"], KTConnectionError)
    assert sorted(err.failed_keys) == sorted(groups["dead"])
    assert err.results == {"a": len(groups["a"]), "b": len(groups["b"]), "dead": 0}
    assert stored_on(addrs["a"], groups["a"]) == len(groups["a"])
    assert stored_on(addrs["b"], groups["b"]) == len(groups["b"])
    assert events.states("dead") == ["open"] and cluster.health.down() == ["dead"]

    with pytest.raises(NodeDownError) as down:
        cluster.get(groups["dead"][0])
    assert down.value.request_sent is False and down.value.node == "dead"
    assert cluster.get(groups["a"][0]) == groups["a"][0]

    with pytest.raises(PartialFailureError) as info:
        cluster.get_bulk(list(data))
    assert info.value.results == {k: k for k in list(data) if k not in set(groups["dead"])}
    assert list(info.value.results) == [k for k in data if k in info.value.results]


def test_black_hole_node_times_out_within_the_deadline(make_cluster, servers):
    with FaultProxy(None, mode="blackhole") as hole:
        cluster = make_cluster({"a": servers[0].address, "hole": hole.address})
        groups = keys_by_node(cluster)
        started = time.monotonic()
        with pytest.raises(PartialFailureError) as info:
            cluster.set_bulk({k: 1 for keys in groups.values() for k in keys})
        assert time.monotonic() - started < DEADLINE + SLACK
        assert set(info.value.errors) == {"hole"} and isinstance(info.value.errors["hole"], KyotoTycoonException)
        assert info.value.results["a"] == len(groups["a"]) == stored_on(servers[0].address, groups["a"])
        # two soft failures (timeouts) opened the breaker; the third attempt failed fast
        assert cluster.health["hole"].state is BreakerState.OPEN
        assert hole.accepted == 2


def test_deadline_bounds_a_bulk_call_even_with_long_socket_timeouts(make_cluster, servers):
    with FaultProxy(None, mode="blackhole") as hole:
        cluster = make_cluster({"a": servers[0].address, "hole": hole.address}, timeout=5.0,
                               retry=RetryPolicy(attempts=3, deadline=0.5))
        groups = keys_by_node(cluster)
        started = time.monotonic()
        with pytest.raises(PartialFailureError) as info:
            cluster.get_bulk(groups["hole"] + groups["a"])      # the stuck shard first
        assert time.monotonic() - started < 0.5 + SLACK
        assert isinstance(info.value.errors["hole"], DeadlineExceeded)
        assert info.value.failed_keys == groups["hole"]
        assert info.value.results == {}                      # the keys on "a" do not exist
        assert_no_leak(cluster, within=SLACK)                # the stuck socket's wait was capped too


def test_deadline_bounds_a_single_node_call_with_long_socket_timeouts(make_cluster):
    # one node: the call runs in the caller's thread (greenlet); the socket timeout is capped
    # at the deadline (gevent: the call is also interrupted there)
    with FaultProxy(None, mode="blackhole") as hole:
        cluster = make_cluster({"hole": hole.address}, timeout=5.0, retry=RetryPolicy(attempts=3, deadline=0.5),
                               health=HealthConfig(failure_threshold=10))
        started = time.monotonic()
        with pytest.raises(PartialFailureError) as info:
            cluster.get_bulk(["a", "b"])
        assert time.monotonic() - started < 0.5 + SLACK
        assert isinstance(info.value.errors["hole"], DeadlineExceeded)
        assert info.value.errors["hole"].request_sent is True
        for call in (lambda: cluster.get("a"), lambda: cluster.set("a", 1)):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as late:
                call()
            assert time.monotonic() - started < 0.5 + SLACK and late.value.node == "hole"
        with pytest.raises(OutcomeUnknownError) as unknown:     # sent, then the deadline passed
            cluster.increment("a")
        assert isinstance(unknown.value.__cause__, DeadlineExceeded)
        assert cluster.stats()["retries"] == 0                  # no time left to retry in
        # each call's wait for the node's answer, cut short by the deadline, counts as the
        # socket timeout it was: the node did not answer in time (4 calls, 4 soft failures)
        health = cluster.health["hole"].stats()
        assert health["state"] == "closed" and health["consecutive_failures"] == 4
        assert_no_leak(cluster, within=SLACK)


@pytest.mark.parametrize("op", ["increment", "add", "append", "cas", "seize", "play_script"])
def test_unsafe_operations_are_never_resent(make_cluster, servers, op):
    with FaultProxy(servers[0].address, mode="blackhole") as proxy:
        cluster = make_cluster({"n": proxy.address}, binary=False,
                               retry=RetryPolicy(attempts=5, deadline=DEADLINE, backoff=0.01))
        call = {
            "increment": lambda: cluster.increment("x", 1),
            "add": lambda: cluster.add("x", 1),
            "append": lambda: cluster.append("x", "tail"),
            "cas": lambda: cluster.cas("x", None, 1),
            "seize": lambda: cluster.seize("x"),
            "play_script": lambda: cluster.play_script("echo", {"a": "b"}, node="n"),
        }[op]
        with pytest.raises(OutcomeUnknownError) as info:
            call()
        assert isinstance(info.value.__cause__, KTTimeoutError)
        assert proxy.accepted == 1      # one connection, one request: no retry
        assert cluster.stats()["retries"] == 0


def test_idempotent_writes_are_retried(make_cluster, servers):
    with FaultProxy(servers[0].address, mode="blackhole") as proxy:
        cluster = make_cluster({"n": proxy.address},
                               health=HealthConfig(failure_threshold=10, reset_timeout=0.2))
        with pytest.raises(KTTimeoutError):
            cluster.set("x", 1)
        assert proxy.accepted == 3 and cluster.stats()["retries"] == 2


class ApplyThenVanish:
    """A node that dies after applying a write: the first request is passed to ``target``
    and its reply awaited (the write is applied), then the client's connection is closed
    without the reply and nothing listens any more (later connects are refused)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        self.listener.close()
        host, port = self.target.rsplit(":", 1)
        with client, socket.create_connection((host, int(port)), timeout=10) as upstream:
            upstream.sendall(client.recv(1 << 16))
            upstream.recv(1)  # the server answered: the write is done


@pytest.mark.parametrize("op", ["set", "remove", "set_bulk"])
def test_an_applied_write_is_never_reported_as_unsent(make_cluster, servers, op):
    """Issue 12, bug 6: the first attempt reached the node and was applied, the node then
    died: the retries found it refusing, then marked down, but the error that ends the call
    must say request_sent=True, with the first attempt's error as its cause."""
    node = servers[0].address
    host, port = node.rsplit(":", 1)
    with KyotoTycoon().connect(host, int(port)) as direct:
        direct.set("x", "old")
        vanishing = ApplyThenVanish(node)
        cluster = make_cluster({"n": vanishing.address})
        call = {"set": lambda: cluster.set("x", "new"), "remove": lambda: cluster.remove("x"),
                "set_bulk": lambda: cluster.set_bulk({"x": "new"})}[op]
        with pytest.raises(KyotoTycoonException) as info:
            call()
        vanishing.thread.join(10)
        error = info.value.errors["n"] if op == "set_bulk" else info.value
        assert isinstance(error, NodeDownError)                 # what the last attempt found
        assert error.request_sent is True
        assert isinstance(error.__cause__, KTConnectionError) and error.__cause__.request_sent is True
        assert direct.get("x") == (None if op == "remove" else "new")   # the write was applied


def test_node_killed_mid_set_bulk(make_cluster, servers):
    events = Events()
    victim = servers[1]
    with FaultProxy(victim.address) as proxy:
        addrs = {"a": servers[0].address, "b": proxy.address, "c": servers[2].address}
        cluster = make_cluster(addrs, on_node_event=events)
        groups = keys_by_node(cluster, 600)
        data = {k: k for keys in groups.values() for k in keys}
        outcome: list[BaseException | int] = []

        proxy.set_mode("blackhole")          # b's request will be in flight when b dies
        worker = threading.Thread(target=lambda: _capture(outcome, lambda: cluster.set_bulk(data)))
        started = time.monotonic()
        worker.start()
        assert proxy.wait_received(1)
        victim.kill()
        proxy.set_mode("refuse")             # resets b's connection mid-request, refuses reconnects
        worker.join(DEADLINE + SLACK + TIMEOUT)
        assert not worker.is_alive()
        assert time.monotonic() - started < DEADLINE + SLACK

        err = outcome[0]
        assert isinstance(err, PartialFailureError), err
        assert set(err.errors) == {"b"} and isinstance(err.errors["b"], KTConnectionError)
        assert sorted(err.failed_keys) == sorted(groups["b"])
        for name in "ac":
            assert err.results[name] == len(groups[name]) == stored_on(addrs[name], groups[name])
        assert err.results["b"] == 0
        assert "open" in events.states("b")

        victim.restart()                     # same port, empty DB
        proxy.set_mode("pass")
        time.sleep(0.6)                      # past the breaker's longest wait
        assert cluster.set_bulk(data) == len(data)
        assert events.states("b")[-2:] == ["half-open", "closed"]
        assert cluster.get_bulk(list(data)) == data


def _capture(out: list, fn) -> None:
    try:
        out.append(fn())
    except BaseException as exc:  # handed to the test thread
        out.append(exc)


def test_flapping_node(make_cluster, servers):
    events = Events()
    with FaultProxy(servers[1].address) as proxy:
        cluster = make_cluster({"a": servers[0].address, "flap": proxy.address}, on_node_event=events)
        groups = keys_by_node(cluster, 40)
        stop = threading.Event()

        def flap() -> None:
            # random phases, so the breaker's probes cannot fall into the refusals every time
            jitter = random.Random(7)
            while not stop.is_set():
                proxy.set_mode("refuse")
                time.sleep(jitter.uniform(0.1, 0.2))
                proxy.set_mode("pass")
                time.sleep(jitter.uniform(0.2, 0.4))

        flapper = threading.Thread(target=flap)
        flapper.start()
        ok = failed = 0
        try:
            # at least 2 s of flapping, and on until writes went through and failed a few times each
            start = time.monotonic()
            i = 0
            while time.monotonic() < start + 2.0 or (min(ok, failed) < 3 and time.monotonic() < start + 20.0):
                i += 1
                key = groups["flap"][i % len(groups["flap"])]
                try:
                    cluster.set(key, i)
                    assert cluster.get(key) == i
                    ok += 1
                except (NodeDownError, KTConnectionError):
                    failed += 1
                cluster.get(groups["a"][0])  # the healthy node keeps answering (an error fails the test)
                time.sleep(0.01)
        finally:
            stop.set()
            flapper.join()
        proxy.set_mode("pass")
        time.sleep(0.6)
        cluster.set(groups["flap"][0], "final")
        assert cluster.get(groups["flap"][0]) == "final"
        assert ok > 0 and failed > 0
        states = events.states("flap")
        assert states.count("open") >= 2 and states[-1] == "closed"
        assert cluster.health.down() == []


def test_restarted_node_is_used_again_without_errors(make_cluster, servers):
    cluster = make_cluster([s.address for s in servers])
    groups = keys_by_node(cluster, 60)
    victim = servers[2].address
    data = {k: 1 for k in groups[victim]}
    cluster.set_bulk(data)
    for _ in range(3):                       # pooled connections to the victim
        cluster.get_bulk(list(data))
    idle = cluster.stats()["nodes"][victim]["pool"]["idle"]
    assert idle >= 1
    servers[2].restart()                     # same port, empty DB: the pooled connections are now stale
    # at once: every stale connection is found closed before anything is sent on it, and replaced
    assert cluster.increment(keys_by_node(cluster, 60, "ctr")[victim][0], 2) == 2   # not OutcomeUnknown
    assert cluster.get_bulk(list(data)) == {}
    cluster.set_bulk(data)
    assert cluster.get_bulk(list(data)) == data
    assert cluster.stats()["retries"] == 0   # nothing failed, so nothing was retried
    assert cluster.stats()["nodes"][victim]["pool"]["discarded"] >= idle
    assert cluster.health.down() == []


def test_failover_sends_a_down_nodes_traffic_to_its_partner(make_cluster, servers):
    partner = servers[1]
    dead = f"127.0.0.1:{free_port()}"
    cluster = make_cluster({"a": servers[0].address, "b": dead}, failover={"b": partner.address})
    groups = keys_by_node(cluster, 60)
    data = {k: k for k in groups["b"]}
    assert cluster.set_bulk(data) == len(data)           # first attempt refused, then the partner
    assert cluster.get_bulk(list(data)) == data
    assert stored_on(partner.address, list(data)) == len(data)
    counter = keys_by_node(cluster, 60, "ctr")["b"][0]
    with pytest.raises(NodeDownError):                     # unsafe ops do not fail over by default
        cluster.increment(counter, 1)
    assert cluster.stats()["failovers"] >= 2
    unsafe_ok = make_cluster({"a": servers[0].address, "b": dead}, failover={"b": partner.address},
                             failover_ops=list(OpClass))
    assert unsafe_ok.increment(counter, 1) == 1
