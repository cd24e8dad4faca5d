"""Cluster against several KT servers (embedded, or $KT_SERVER_BIN): routing, the data API,
bulk splitting and ordering, fan-out merges, cursors, topology changes, concurrency.

tests/test_cluster_gevent.py runs this module again in a process that did
``gevent.monkey.patch_all()``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import fronts
import pytest
from fronts import FRONTS
from threaded import run_threads

from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster, parse_address
from ktcluster.concurrency import gevent_active
from ktcluster.errors import (
    ArgumentError,
    LogicalInconsistencyError,
    NoImplementationError,
    PartialFailureError,
    ScriptError,
)
from ktcluster.packers import KT_PACKER_PICKLE
from ktcluster.testing import KTServer, start_cluster

SCRIPT = str(Path(__file__).parent / "golden" / "golden.lua")
UNDER_GEVENT = bool(os.environ.get("KTCLUSTER_GEVENT_RUN"))


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3, args=["-scr", SCRIPT]) as srvs:
        yield srvs


@pytest.fixture(params=("blocking",) if UNDER_GEVENT else FRONTS)
def make_cluster(servers, request):
    """Clusters of each front end in turn (``ktcluster.aio`` through tests/fronts.py)."""
    made: list[Cluster] = []

    def make(**kw) -> Cluster:
        # These tests store Python objects, on servers of their own: pickle must be asked for.
        kw.setdefault("pack_type", KT_PACKER_PICKLE)
        cluster = fronts.cluster(request.param, kw.pop("addresses", [s.address for s in servers]), **kw)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        for stats in cluster.stats()["nodes"].values():
            assert stats["pool"]["in_use"] == 0, "a connection was not returned"
        cluster.close()
    Cluster([s.address for s in servers]).clear()


@pytest.fixture(params=[True, False], ids=["binary", "http"])
def cluster(request, make_cluster) -> Cluster:
    return make_cluster(binary=request.param)


def test_runs_in_the_expected_concurrency_mode():
    assert gevent_active() == UNDER_GEVENT


def test_addresses_and_node_names(servers):
    assert parse_address("h:1") == ("h", 1) and parse_address(("h", 2)) == ("h", 2)
    assert parse_address("kt1b") == ("kt1b", 1978) and parse_address("[::1]:5") == ("::1", 5)
    for bad in ["h:x", "", ("h",), None, ("h", 0)]:
        with pytest.raises(ArgumentError):
            parse_address(bad)
    named = Cluster({"a": servers[0].address, "b": (servers[1].host, servers[1].port)})
    assert named.nodes == {"a": servers[0].address, "b": servers[1].address}
    assert named.ring.nodes == ["a", "b"]
    named.close()
    for bad in [[], "h:1", ["h:1", "h:1"]]:
        with pytest.raises(ArgumentError):
            Cluster(bad)
    with pytest.raises(ArgumentError):
        Cluster(["h:1"], weights={"zz": 2})
    with pytest.raises(ArgumentError):
        Cluster(["h:1"], failover={"zz": "h:2"})


def test_bulk_calls_refuse_what_is_not_a_collection_of_keys(cluster):
    cluster.set_bulk({"a": 1, "b": 2})
    for call in (lambda: cluster.get_bulk("ab"), lambda: cluster.remove_bulk("ab"),
                 lambda: cluster.get_bulk(None), lambda: cluster.set_bulk(None), lambda: cluster.set_bulk(["a"])):
        with pytest.raises(ArgumentError):
            call()
    assert cluster.get_bulk(["a", "b"]) == {"a": 1, "b": 2}


def test_each_key_lives_on_its_node_only(cluster, servers):
    keys = [f"user:{i}" for i in range(300)]
    assert cluster.set_bulk({k: k.upper() for k in keys}) == 300
    for k in keys[:60]:
        owner = cluster.node_for(k)
        for name in cluster.nodes:
            stored = cluster.client(name).get(k)
            assert stored == (k.upper() if name == owner else None)
    assert sum(cluster.per_node("count").values()) == 300


def test_str_and_bytes_keys_are_the_same_record(cluster):
    cluster.set("ключ", "v1")
    assert cluster.get("ключ".encode()) == "v1"
    cluster.set(b"raw", "v2")
    assert cluster.get("raw") == "v2"
    assert cluster.get_bulk(["raw", b"raw", "ключ"]) == {"raw": "v2", b"raw": "v2", "ключ": "v1"}
    with pytest.raises(ArgumentError):
        cluster.get(42)


def test_single_record_api(cluster):
    assert cluster.get("missing") is None
    assert cluster.set("a", {"x": 1}) is True and cluster.get("a") == {"x": 1}
    assert cluster.check("a") and not cluster.check("missing")
    assert cluster.add("b", 1) is True
    with pytest.raises(LogicalInconsistencyError) as info:
        cluster.add("b", 2)
    assert info.value.node == cluster.node_for("b")
    assert cluster.replace("b", 3) is True and cluster.replace("nope", 3) is False
    assert cluster.get("b") == 3
    assert cluster.increment("n", 5) == 5 and cluster.increment("n", -2) == 3
    assert cluster.get_int("n") == 3
    assert cluster.increment_double("d", 1.5) == 1.5
    assert cluster.cas("b", 3, 4) is True
    with pytest.raises(LogicalInconsistencyError):
        cluster.cas("b", 3, 5)
    assert cluster.append("s", "ab") and cluster.append("s", "cd") and cluster.get("s") == "abcd"
    value, expires = cluster.get_with_expiry("b")
    assert value == 4 and expires is None
    assert cluster.seize("b") == 4 and cluster.get("b") is None
    assert cluster.remove("a") is True and cluster.remove("a") is False


def test_bulk_calls_split_by_node_and_keep_the_callers_order(make_cluster):
    cluster = make_cluster(bulk_chunk=7)
    data = {f"k{i:04d}": i for i in range(500)}
    assert cluster.set_bulk(data) == 500
    wanted = [f"k{i:04d}" for i in range(499, -1, -3)] + ["absent", "k0001", "k0001"]
    got = cluster.get_bulk(wanted)
    assert list(got) == [k for k in dict.fromkeys(wanted) if k in data]
    assert all(got[k] == data[k] for k in got)
    assert cluster.remove_bulk(list(data)[:100] + ["absent"]) == 100
    assert cluster.count() == 400
    assert cluster.get_bulk([]) == {} and cluster.set_bulk({}) == 0 and cluster.remove_bulk([]) == 0


def test_one_node_bulk_calls_keep_the_callers_order_and_keys(make_cluster, servers):
    cluster = make_cluster(addresses=[servers[0].address])
    data = {f"z{i}": i for i in range(50)}
    assert cluster.set_bulk(data) == 50
    wanted = ["z7", b"z3", "absent", "z49", "z0"]
    assert list(cluster.get_bulk(wanted).items()) == [("z7", 7), (b"z3", 3), ("z49", 49), ("z0", 0)]
    assert cluster.remove_bulk(["z1", b"z2", "absent"]) == 2


def test_bulk_with_atomic_uses_http_per_node(cluster):
    assert cluster.set_bulk({"x": 1, "y": 2, "z": 3}, atomic=True) == 3
    assert cluster.get_bulk(["x", "y", "z"], atomic=True) == {"x": 1, "y": 2, "z": 3}
    assert cluster.remove_bulk(["x", "y"], atomic=True) == 2


def test_fan_out_operations_merge(cluster):
    cluster.set_bulk({f"p:{i}": i for i in range(40)} | {f"q:{i}": i for i in range(5)})
    assert cluster.count() == 45
    assert cluster.size() == sum(cluster.per_node("size").values()) > 0
    status = cluster.status()
    assert status["count"] == 45 and set(status["nodes"]) == set(cluster.nodes)
    report = cluster.report()
    assert set(report["nodes"]) == set(cluster.nodes) and "db_total_count" in report
    assert cluster.match_prefix("q:") == [f"q:{i}" for i in range(5)]
    limited = cluster.match_prefix("p:", limit=3)
    assert len(limited) == 3 and limited == sorted(limited) and all(k.startswith("p:") for k in limited)
    assert cluster.match_regex(r"^q:[0-2]$") == ["q:0", "q:1", "q:2"]
    similar = cluster.match_similar("q:1", 1)
    assert similar[0] == "q:1" and sorted(similar) == ["p:1"] + [f"q:{i}" for i in range(5)]
    assert len(cluster.match_similar("q:1", 1, limit=2)) == 2
    assert cluster.vacuum() is True
    assert cluster.clear() is True and cluster.count() == 0
    with pytest.raises(ArgumentError):
        cluster.per_node("_rpc")
    with pytest.raises(ArgumentError):  # the caller's mistake, raised as is: not a failure of every node
        cluster.match_prefix(None)


def test_match_similar_merges_in_the_order_one_server_gives(make_cluster, kt_server):
    """The merged answer ranks keys as a single ktserver holding all of them would:
    by code points for a str origin (a multi-byte character is one edit), by bytes otherwise."""
    keys = ["café", "cafe", "cafés", "caffè", "chat", "cap", "cafébar", b"caf\xff", b"caf\xffe", "kaffe"]
    cluster = make_cluster()
    with KyotoTycoon().connect(kt_server.host, kt_server.port) as single:
        for key in keys:
            cluster.set(key, 1)
            single.set(key, 1)
        for origin, distance, utf in (("café", 2, None), ("café", 2, False), (b"caf", 3, None), ("cafe", 1, True)):
            want = single.match_similar(origin, distance, utf=utf)
            assert cluster.match_similar(origin, distance, utf=utf) == want
            assert cluster.match_similar(origin, distance, limit=3, utf=utf) == want[:3]


def test_play_script_on_a_node_or_the_node_of_a_key(cluster):
    out = cluster.play_script("setget", {"key": "k", "value": "v"}, key="k")
    assert out["value"] == b"v"
    assert [name for name in cluster.nodes if cluster.client(name).check("k")] == [cluster.node_for("k")]
    node = cluster.ring.nodes[0]
    assert cluster.play_script("echo", {"a": "1"}, node=node) == {"a": b"1"}
    for kwargs in [{}, {"node": node, "key": "k"}]:
        with pytest.raises(ArgumentError):
            cluster.play_script("echo", {}, **kwargs)
    # a failing procedure is the server's answer: typed, not retried, the node stays healthy and
    # (binary: 0xBF) the connection is kept
    created = cluster.stats()["nodes"][node]["pool"]["created"]
    with pytest.raises(ScriptError if cluster.binary else NoImplementationError) as info:
        cluster.play_script("nosuchproc", node=node)
    assert info.value.node == node
    assert cluster.play_script("echo", {"b": "2"}, node=node) == {"b": b"2"}
    stats = cluster.stats()
    assert stats["retries"] == 0 and stats["down"] == []
    assert stats["nodes"][node]["pool"]["created"] == created and stats["nodes"][node]["pool"]["discarded"] == 0


def test_cursors_per_node_and_whole_cluster_iteration(make_cluster):
    cluster = make_cluster()
    data = {f"c{i}": i for i in range(60)}
    cluster.set_bulk(data)
    assert dict(cluster.iterate()) == data
    node = cluster.node_for("c1")
    with cluster.cursor(node) as cur:
        assert cur.jump("c1") and cur.get() == ("c1", 1)
    on_node = {k for k in data if cluster.node_for(k) == node}
    with cluster.cursor(node) as cur:
        assert {k for k, _ in cur} == on_node


def test_add_and_remove_nodes_swap_the_ring_and_report_moves(make_cluster, servers):
    cluster = make_cluster(addresses={"a": servers[0].address, "b": servers[1].address})
    before = cluster.ring
    preview = cluster.add_node("c", servers[2].address, dry_run=True)
    assert cluster.ring is before and 0.2 < preview.moved < 0.5
    diff = cluster.add_node("c", servers[2].address)
    assert diff == preview and set(cluster.nodes) == {"a", "b", "c"}
    keys = [f"m{i}" for i in range(200)]
    cluster.set_bulk(dict.fromkeys(keys, 1))
    assert {cluster.node_for(k) for k in keys} == {"a", "b", "c"}
    assert cluster.client("c").count() == sum(cluster.node_for(k) == "c" for k in keys)
    removal = cluster.remove_node("c")
    assert all(dst != "c" for _, dst in removal.flows) and set(cluster.nodes) == {"a", "b"}
    assert "c" not in cluster.stats()["nodes"]
    with pytest.raises(ArgumentError):
        cluster.client("c")
    with pytest.raises(ArgumentError):
        cluster.add_node("a", servers[2].address)
    with pytest.raises(ArgumentError):
        cluster.remove_node("zz")
    cluster.remove_node("b")
    with pytest.raises(ArgumentError):
        cluster.remove_node("a")


def test_weights_shape_the_ring(servers):
    cluster = Cluster({"a": servers[0].address, "b": servers[1].address}, weights={"a": 3})
    shares = cluster.ring.shares()
    assert shares["a"] > 0.6
    cluster.close()


def test_shared_cluster_under_concurrency(make_cluster):
    cluster = make_cluster(pool_size=4)

    def worker(w: int) -> None:
        for i in range(20):
            keys = {f"w{w}:{i}:{j}": (w, i, j) for j in range(10)}
            assert cluster.set_bulk(keys) == 10
            assert cluster.get_bulk(list(keys)) == keys
            assert cluster.get(f"w{w}:{i}:3") == (w, i, 3)
            cluster.increment(f"ctr{w % 3}", 1)

    run_threads(worker, 12)
    assert sum(cluster.get_int(f"ctr{c}") for c in range(3)) == 12 * 20
    stats = cluster.stats()
    assert all(n["pool"]["created"] <= 4 for n in stats["nodes"].values())
    assert stats["retries"] == 0 and stats["down"] == []


def test_partial_failure_error_is_typed(make_cluster, servers):
    cluster = make_cluster(addresses=[servers[0].address, f"127.0.0.1:{_closed_port()}"])
    with pytest.raises(PartialFailureError) as info:
        cluster.count()
    assert list(info.value.results) == [servers[0].address]


def _closed_port() -> int:
    from ktcluster.testing import free_port
    return free_port()


def test_hash_tags_keep_a_users_keys_on_one_node(make_cluster) -> None:
    cluster = make_cluster(hash_tags=True)
    records = {f"{{user:{u}}}:{part}": part for u in range(30) for part in ("cart", "profile")}
    assert cluster.set_bulk(records) == len(records)
    for u in range(30):
        node = cluster.node_for(f"{{user:{u}}}:cart")
        assert cluster.node_for(f"{{user:{u}}}:profile") == node
        assert cluster.client(node).get_bulk([f"{{user:{u}}}:cart", f"{{user:{u}}}:profile"]) == \
            {f"{{user:{u}}}:cart": "cart", f"{{user:{u}}}:profile": "profile"}
    assert cluster.get_bulk(list(records)) == records
    assert len({cluster.node_for(f"{{user:{u}}}:cart") for u in range(30)}) == 3
