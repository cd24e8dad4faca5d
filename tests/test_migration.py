"""Live migration: the ring document; the Cluster's routing table per operation class in
each phase (shared_ring=True, ktcluster.migration's table); settling a key against
concurrent writers; the bound on how long a client acts on an old document; and
``ktcluster rebalance begin|move|finish|abort|status`` run as a user runs it (a
subprocess): growing and draining, dry runs, a command killed mid-move or mid-wait and
run again, an abort, two operators at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_cli import fails, ktcluster, ok

from ktcluster.cli.commands import CLIError
from ktcluster.cli.live import _load, _Nodes, _publish
from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.errors import ArgumentError, DeadlineExceeded, LogicalInconsistencyError
from ktcluster.expiry import ExpireAt
from ktcluster.migration import ABSENT, MOVED, SUPERSEDED, settle
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.retry import OpClass
from ktcluster.ring import Ring
from ktcluster.ringdoc import MIGRATE, PREPARE, RING_KEY, STABLE, RingDoc
from ktcluster.testing import KTServer, start_cluster

NAMES = ("a", "b", "c", "d")
OLD, NEW = Ring(list(NAMES[:3])), Ring(list(NAMES))
#: keys that move from an old node to d, and keys that stay
MOVING = [k for k in (f"key{i}" for i in range(400)) if OLD.node_for(k) != NEW.node_for(k)][:40]
STAYING = [k for k in (f"key{i}" for i in range(400)) if OLD.node_for(k) == NEW.node_for(k)][:40]
REFRESH = 0.05


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(4) as started:
        yield started


@pytest.fixture
def raw(servers: list[KTServer]) -> Iterator[dict[str, KyotoTycoon]]:
    """A bytes client per node (a..d); every node is emptied after the test."""
    clients = {name: KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(srv.host, srv.port)
               for name, srv in zip(NAMES, servers, strict=True)}
    yield clients
    for client in clients.values():
        client.clear()
        client.close()


def addresses(servers: list[KTServer], names: tuple[str, ...] = NAMES) -> dict[str, str]:
    return {name: srv.address for name, srv in zip(NAMES, servers, strict=True) if name in names}


def doc(servers: list[KTServer], phase: str, version: int, **options: Any) -> RingDoc:
    options.setdefault("refresh", REFRESH)
    old = RingDoc.of(addresses(servers, NAMES[:3]), {}).nodes
    new = RingDoc.of(addresses(servers), {}).nodes
    if phase == STABLE:
        return RingDoc(options.pop("nodes", old), None, STABLE, version, **options)
    return RingDoc(old, new, phase, version, **options)


def publish(raw: dict[str, KyotoTycoon], document: RingDoc) -> None:
    for client in raw.values():
        client.set(RING_KEY, document.encode())
    time.sleep(REFRESH * 2)  # every client's next call re-reads it


@pytest.fixture
def cluster(servers: list[KTServer], raw: dict[str, KyotoTycoon]) -> Iterator[Callable[[str], Cluster]]:
    """``cluster(phase)``: a shared-ring client of a b c after the document says ``phase``."""
    made: list[Cluster] = []

    def make(phase: str) -> Cluster:
        publish(raw, doc(servers, phase, 1))
        made.append(Cluster(addresses(servers, NAMES[:3]), pack_type=KT_PACKER_BYTES, shared_ring=True))
        made[-1].get("x")  # reads the document
        return made[-1]

    yield make
    for client in made:
        client.close()


def where(raw: dict[str, KyotoTycoon], key: str) -> dict[str, bytes]:
    """Which nodes hold ``key``, with their values."""
    return {name: value for name, client in raw.items() if (value := client.get(key)) is not None}


# -- the ring document -------------------------------------------------------------------------------


def test_the_document_round_trips_and_refuses_garbage(servers: list[KTServer]) -> None:
    document = doc(servers, MIGRATE, 3, hash_tags=True, max_call=2.5)
    again = RingDoc.decode(document.encode())
    assert again == document and again.target_ring() is not None and again.ring().hash_tags
    assert again.grace() == REFRESH + 2.5 + 1.0
    assert doc(servers, PREPARE, 1).grace() == 5.0 + 10.0 + 1.0  # the first version: clients had none
    assert set(again.addresses()) == set(NAMES)
    for bad in (b"", b"[]", b'{"format": 2}', document.encode().replace(b'"migrate"', b'"stable"'),
                document.encode().replace(b'"version": 3', b'"version": -1'), b"\xff"):
        with pytest.raises(ValueError, match="no valid ring document"):
            RingDoc.decode(bad)


def test_a_client_follows_the_document_and_caps_its_calls(servers: list[KTServer],
                                                          raw: dict[str, KyotoTycoon]) -> None:
    with Cluster(addresses(servers, NAMES[:3]), shared_ring=True) as cluster:
        assert cluster.get("x") is None  # no document: the ring given
        assert set(cluster.nodes) == set(NAMES[:3]) and cluster.ring.nodes == list(NAMES[:3])
        with pytest.raises(ArgumentError, match="ring document"):
            cluster.add_node("d", servers[3].address)
        assert cluster.add_node("d", servers[3].address, dry_run=True).moved > 0
    publish(raw, doc(servers, STABLE, 4, nodes=RingDoc.of(addresses(servers), {}).nodes, max_call=0.5))
    with Cluster(addresses(servers, NAMES[:3]), shared_ring=True) as cluster:
        cluster.set(MOVING[0], b"v")
        assert set(cluster.nodes) == set(NAMES) and cluster.node_for(MOVING[0]) == "d"
        assert where(raw, MOVING[0]) == {"d": b"v"}
        publish(raw, doc(servers, STABLE, 2))  # an older version than the one in force: ignored
        assert cluster.get(MOVING[0]) == b"v"
        servers[3].pause()  # a silent node: the call ends by the document's max_call, not the client's 10 s
        try:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                cluster.get(MOVING[0])
            assert time.monotonic() - started < 3.0
        finally:
            servers[3].resume()


def test_a_call_after_the_refresh_period_sees_the_new_version(servers: list[KTServer],
                                                              raw: dict[str, KyotoTycoon]) -> None:
    """The bound the migration's grace rests on: no call uses a document read more than
    ``refresh`` seconds before it started."""
    publish(raw, doc(servers, STABLE, 1, refresh=1.0))
    with Cluster(addresses(servers, NAMES[:3]), shared_ring=True) as cluster:
        cluster.get("x")
        read_at = time.monotonic()
        for client in raw.values():
            client.set(RING_KEY, doc(servers, PREPARE, 2, refresh=1.0).encode())
        while time.monotonic() - read_at < 1.0:
            cluster.get("x")
            time.sleep(0.05)
        cluster.get("x")
        assert cluster._topology.migration is not None and cluster._topology.migration.phase == PREPARE


# -- the prepare phase -------------------------------------------------------------------------------


def test_prepare_reads_both_and_writes_where_the_key_is(cluster: Callable[[str], Cluster],
                                                        raw: dict[str, KyotoTycoon]) -> None:
    k1, k2, k3, k4 = MOVING[:4]
    src = OLD.node_for(k1)
    raw[OLD.node_for(k1)].set(k1, b"on src")
    raw["d"].set(k2, b"on dst")
    raw[OLD.node_for(k3)].set(k3, b"stale")
    raw["d"].set(k3, b"newer")
    c = cluster(PREPARE)
    assert c.get(k1) == b"on src" and c.get(k2) == b"on dst" and c.get(k3) == b"newer" and c.get(k4) is None
    assert c.get_bulk([k4, k3, STAYING[0], k1]) == {k3: b"newer", k1: b"on src"}
    c.set(k1, b"set")  # dst does not hold it: src, as a stable client on the old ring does
    assert where(raw, k1) == {src: b"set"}
    c.set(k2, b"set")  # dst holds it: dst
    assert where(raw, k2) == {"d": b"set"}
    c.set(k4, b"new")
    assert where(raw, k4) == {OLD.node_for(k4): b"new"}
    assert c.increment(k4 + "n", 2) == 2 and c.increment(k4 + "n", 3) == 5
    assert c.remove(k3) and where(raw, k3) == {}
    assert not c.remove(k3)
    assert c.remove_bulk([k1, k2, k4, STAYING[0]]) == 3


# -- the migrate phase: one test per operation class ---------------------------------------------------


@pytest.fixture
def migrating(cluster: Callable[[str], Cluster],
              raw: dict[str, KyotoTycoon]) -> tuple[Cluster, Callable[[str, bytes], None]]:
    """A migrate-phase client, and ``put(key, value)`` writing a record on its old node only."""
    return cluster(MIGRATE), lambda key, value: raw[OLD.node_for(key)].set(key, value)


def test_migrate_reads_find_unmoved_keys_without_moving_them(migrating: Any, raw: dict[str, KyotoTycoon]) -> None:
    c, put = migrating
    k1, k2 = MOVING[:2]
    put(k1, b"v1")
    raw[OLD.node_for(k2)].set(k2, b"v2", expire=ExpireAt(4102444800))
    assert c.get(k1) == b"v1" and c.check(k1) and c.get_with_expiry(k2) == (b"v2", 4102444800)
    assert c.get_bulk([k2, "none", k1]) == {k2: b"v2", k1: b"v1"}
    assert where(raw, k1) == {OLD.node_for(k1): b"v1"}  # reads move nothing
    with pytest.raises(LogicalInconsistencyError):
        c.get_int("missing")


@pytest.mark.parametrize(("operation", "result", "after"), [
    (lambda c, k: c.set(k, b"new"), True, b"new"),
    (lambda c, k: c.replace(k, b"new"), True, b"new"),
    (lambda c, k: c.add(k, b"new"), "raises", b"old"),
    (lambda c, k: c.append(k, b"+"), True, b"old+"),
    (lambda c, k: c.cas(k, b"old", b"new"), True, b"new"),
    (lambda c, k: c.cas(k, b"other", b"new"), "raises", b"old"),
    (lambda c, k: c.seize(k), b"old", None),
    (lambda c, k: c.remove(k), True, None),
], ids=["set", "replace", "add", "append", "cas", "cas-mismatch", "seize", "remove"])
def test_migrate_writes_settle_the_key_then_act_on_its_new_node(migrating: Any, raw: dict[str, KyotoTycoon],
                                                                operation: Any, result: Any, after: Any) -> None:
    c, put = migrating
    key = MOVING[0]
    put(key, b"old")
    if result == "raises":
        with pytest.raises(LogicalInconsistencyError):
            operation(c, key)
    else:
        assert operation(c, key) == result
    assert where(raw, key) == ({} if after is None else {"d": after})  # never left on the old node


def test_migrate_counters_move_then_count_without_drift(migrating: Any, raw: dict[str, KyotoTycoon]) -> None:
    c, put = migrating
    k1, k2, k3 = MOVING[:3]
    raw[OLD.node_for(k1)].increment(k1, 5)  # a counter a stable client of the old ring made
    assert c.increment(k1, 3) == 8 and c.get_int(k1) == 8
    assert where(raw, k1) == {"d": (8).to_bytes(8, "big")}
    raw[OLD.node_for(k2)].increment_double(k2, 1.5)
    assert c.increment_double(k2, 1.0) == 2.5 and set(where(raw, k2)) == {"d"}
    assert c.increment(k3, 1) == 1 and c.increment(k3, 1) == 2 and set(where(raw, k3)) == {"d"}


def test_migrate_a_newer_value_on_the_new_node_wins(migrating: Any, raw: dict[str, KyotoTycoon]) -> None:
    c, put = migrating
    key = MOVING[0]
    put(key, b"stale")
    raw["d"].set(key, b"newer")
    assert c.get(key) == b"newer"
    assert c.append(key, b"!") and where(raw, key) == {"d": b"newer!"}  # the stale copy is dropped


def test_migrate_bulk_calls_route_moving_keys_and_keep_the_callers_order(migrating: Any,
                                                                          raw: dict[str, KyotoTycoon]) -> None:
    c, put = migrating
    for key in MOVING[:5]:
        put(key, b"old")
    keys = [MOVING[0], STAYING[0], MOVING[1], STAYING[1], MOVING[9]]
    assert c.set_bulk({k: k.encode() for k in keys}) == 5
    assert list(c.get_bulk(list(reversed(keys)) + MOVING[2:5])) == list(reversed(keys)) + MOVING[2:5]
    assert all(set(where(raw, k)) == {NEW.node_for(k)} for k in keys)
    assert c.remove_bulk(keys + ["none"]) == 5 and c.get_bulk(keys) == {}


# -- settle against concurrent writers -----------------------------------------------------------------


def runner(cluster: Cluster, before: Callable[[OpClass, str], None] | None = None) -> Any:
    """settle's ``run`` over a cluster's nodes, calling ``before(op_class, node)`` first."""
    topo = cluster._topology
    deadline = cluster._deadline()

    def run(cls: OpClass, node: str, make: Any) -> Any:
        if before is not None:
            before(cls, node)
        return cluster._execute(cls, topo, node, lambda m, d, _: m.transport.run(make(m.session), d), deadline)
    return run


def test_settle_carries_over_a_write_made_on_the_old_node_meanwhile(migrating: Any,
                                                                     raw: dict[str, KyotoTycoon]) -> None:
    c, put = migrating
    key = MOVING[0]
    src = OLD.node_for(key)
    put(key, b"first")
    writes = iter([b"second", b"third"])

    def before(cls: OpClass, node: str) -> None:  # a prepare-phase writer, just before each cas on src
        if node == src and cls is OpClass.UNSAFE:
            value = next(writes, None)
            if value is not None:
                raw[src].set(key, value)

    assert settle(runner(c, before), src, "d", key.encode(), 0) == MOVED
    assert where(raw, key) == {"d": b"third"}
    assert settle(runner(c), src, "d", key.encode(), 0) == ABSENT


def test_two_movers_of_one_key_never_remove_it(migrating: Any, raw: dict[str, KyotoTycoon]) -> None:
    """A second mover that read the old node before the first finished must leave the
    value alone, even when a client wrote a newer one on the new node in between."""
    c, put = migrating
    key = MOVING[0]
    src = OLD.node_for(key)
    put(key, b"v")
    done = []

    def before(cls: OpClass, node: str) -> None:  # the first mover runs just after the second read src
        if node == "d" and not done:
            done.append(settle(runner(c), src, "d", key.encode(), 0))
            raw["d"].set(key, b"client")
    assert settle(runner(c, before), src, "d", key.encode(), 0) == SUPERSEDED
    assert done == [MOVED] and where(raw, key) == {"d": b"client"}


# -- ktcluster rebalance begin|move|finish ---------------------------------------------------------------


FAST = {"refresh": 0.1, "max_call": 1.0}  # a grace of 2.1 s per phase


def spec(servers: list[KTServer], names: str = "abc") -> str:
    return ",".join(f"{n}={s.address}" for n, s in zip(NAMES, servers, strict=True) if n in names)


def initialize(servers: list[KTServer], **options: float) -> None:
    """Publish a b c as a stable ring document (version 1), as the first ``begin`` would,
    with a short grace; its own grace (16 s: clients without a document re-read every 5 s)
    is not waited for, as no client runs yet."""
    three = dict(e.split("=") for e in spec(servers).split(","))
    nodes = _Nodes(three, 5.0)
    try:
        _publish(nodes, _load(nodes)[0], RingDoc.of(three, {}, **options).next(STABLE), [])
    finally:
        nodes.close()


def loaded(servers: list[KTServer], n: int, **options: float) -> dict[str, bytes]:
    initialize(servers, **(options or FAST))
    records = {f"key{i}": f"value{i}".encode() for i in range(n)}
    with Cluster(dict(e.split("=") for e in spec(servers).split(",")), shared_ring=True) as c:
        c.set_bulk(records)
    return records


def placed(raw: dict[str, KyotoTycoon], ring: Ring) -> dict[str, bytes]:
    """Every record of the cluster, checking that each is on its node of ``ring`` only."""
    found: dict[str, bytes] = {}
    for name, client in raw.items():
        for key in client.match_prefix("key"):
            assert ring.node_for(key) == name, f"{key!r} is on {name}"
            assert key not in found
            found[key] = client.get(key)
    return found


def test_grow_then_drain_with_dry_runs(servers: list[KTServer], raw: dict[str, KyotoTycoon]) -> None:
    records = loaded(servers, 600)
    three, four = Ring(list("abc")), Ring(list("abcd"))
    moving = [k for k in records if three.node_for(k) != four.node_for(k)]
    add_d = ("--add", f"d={servers[3].address}")
    out = ok(ktcluster("rebalance", "begin", "--dry-run", *add_d, servers=spec(servers)))
    assert f"would move {len(moving):,} (" in out and "bytes" in out
    assert raw["d"].count() == 0  # nothing changed
    assert "version 1, stable" in ok(ktcluster("rebalance", "status", servers=spec(servers)))
    err = ktcluster("rebalance", "begin", *add_d, servers=spec(servers)).stderr.decode()
    assert "waiting" in err and "prepare" in err and "migrate" in err
    status = ok(ktcluster("rebalance", "status", servers=spec(servers, "a")))
    assert "version 3, migrate" in status
    with Cluster({"a": servers[0].address}, shared_ring=True, pack_type=KT_PACKER_BYTES) as client:
        assert client.get_bulk(list(records)) == records  # readable before anything moved
        out = ok(ktcluster("rebalance", "move", "--batch", "50", servers=spec(servers, "a")))
        assert f"moved {len(moving):,}" in out
        assert client.get_bulk(list(records)) == records
        assert "ring is a, b, c, d (version 4, stable)" in ok(ktcluster("rebalance", "finish",
                                                                         servers=spec(servers, "b")))
        assert placed(raw, four) == records
        # drain c: its keys go back to a, b and d
        out = ok(ktcluster("rebalance", "run", "--remove", "c", servers=spec(servers, "d")))
        assert "c holds no keys of the ring and can be stopped" in out
        assert raw["c"].count() == 0  # not even the ring document
        assert placed(raw, Ring(list("abd"))) == records
        assert client.get_bulk(list(records)) == records
        assert set(client.nodes) == set("abd")
    fails(ktcluster("rebalance", "move", servers=spec(servers, "a")), "no migration is in its migrate phase")
    fails(ktcluster("rebalance", "abort", servers=spec(servers, "a")), "nothing to abort")
    fails(ktcluster("rebalance", "--dry-run", servers=spec(servers, "abd")), "hold a ring document")


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def start(*args: str, servers: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ktcluster.cli", *args, "--servers", servers],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_move_killed_midway_resumes_and_loses_nothing(servers: list[KTServer], raw: dict[str, KyotoTycoon],
                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = loaded(servers, 4000)
    four = Ring(list("abcd"))
    moving = sum(Ring(list("abc")).node_for(k) != four.node_for(k) for k in records)
    ok(ktcluster("rebalance", "begin", "--add", f"d={servers[3].address}", servers=spec(servers)))
    ckpt = tmp_path / "move.ckpt"
    proc = start("rebalance", "move", "--batch", "20", "--checkpoint", str(ckpt), servers=spec(servers))
    try:
        wait_for(lambda: raw["d"].count() >= moving // 4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 0 < raw["d"].count() - 1 < moving  # killed mid-move (d also holds the document)
    with Cluster({"a": servers[0].address}, shared_ring=True, pack_type=KT_PACKER_BYTES) as client:
        assert client.get_bulk(list(records)) == records  # nothing missing while half moved
    fails(ktcluster("rebalance", "finish", servers=spec(servers)), "keys are not on their new node yet")
    out = ok(ktcluster("rebalance", "move", "--checkpoint", str(ckpt), servers=spec(servers)))
    assert "resuming from" not in out and not ckpt.exists()
    ok(ktcluster("rebalance", "finish", servers=spec(servers)))
    assert placed(raw, four) == records


def test_a_begin_killed_in_its_wait_resumes_or_aborts(servers: list[KTServer], raw: dict[str, KyotoTycoon]) -> None:
    records = loaded(servers, 200, refresh=1.0, max_call=1.0)
    add_d = ("--add", f"d={servers[3].address}")
    for then in ("resume", "abort"):
        proc = start("rebalance", "begin", *add_d, servers=spec(servers))
        try:
            wait_for(lambda: raw["d"].check(RING_KEY))
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        status = ok(ktcluster("rebalance", "status", servers=spec(servers)))
        assert "prepare" in status
        fails(ktcluster("rebalance", "begin", "--add", "e=127.0.0.1:1", servers=spec(servers)),
              "a migration to another ring is under way")
        fails(ktcluster("rebalance", "finish", servers=spec(servers)), "prepare phase")
        if then == "abort":
            out = ok(ktcluster("rebalance", "abort", servers=spec(servers)))
            assert "aborted: the ring is a, b, c again" in out
            with Cluster({"a": servers[0].address}, shared_ring=True, pack_type=KT_PACKER_BYTES) as client:
                assert client.get_bulk(list(records)) == records and set(client.nodes) == set("abc")
            continue
        started = time.monotonic()
        ok(ktcluster("rebalance", "begin", *add_d, servers=spec(servers)))  # picks up where it stopped
        assert time.monotonic() - started >= 3  # the rest of prepare's grace, then migrate's (3 s each)
        assert "version 3, migrate" in ok(ktcluster("rebalance", "status", servers=spec(servers)))
        fails(ktcluster("rebalance", "abort", servers=spec(servers)), "only goes forward")
        ok(ktcluster("rebalance", "move", servers=spec(servers)))
        ok(ktcluster("rebalance", "finish", servers=spec(servers)))
        # back to three nodes for the abort round
        ok(ktcluster("rebalance", "run", "--remove", "d", servers=spec(servers)))
        assert placed(raw, Ring(list("abc"))) == records


def test_two_publishers_from_one_version_cannot_both_win(servers: list[KTServer], raw: dict[str, KyotoTycoon]) -> None:
    nodes = _Nodes(dict(e.split("=") for e in spec(servers, "abcd").split(",")), 5.0)
    try:
        held, doc = _load(nodes)
        assert doc is None and held == dict.fromkeys("abcd")
        base = RingDoc.of({n: a for n, a in (e.split("=") for e in spec(servers).split(","))}, {})
        mine, theirs = dict(held), dict(held)
        _publish(nodes, mine, base.next(PREPARE, target={**base.nodes, "d": (servers[3].address, 1)}), ["a"])
        with pytest.raises(CLIError, match="changed under this command"):
            _publish(nodes, theirs, base.next(PREPARE, target={"a": base.nodes["a"]}), ["a"])
        _, now = _load(nodes)
        assert now is not None and now.version == 1 and now.target is not None and "d" in now.target
        assert {RingDoc.decode(raw[n].get(RING_KEY)).version for n in "abc"} == {1}
        assert now.phase == PREPARE
    finally:
        nodes.close()
