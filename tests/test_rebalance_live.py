"""``ktcluster rebalance begin|move|finish|abort|status``, run as a user runs it (a subprocess),
against real servers: growing and draining a cluster, dry runs, a command killed mid-move
or mid-wait and run again, an abort, two operators at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_cli import fails, ktcluster, ok

from ktcluster.cli.commands import CLIError
from ktcluster.cli.live import _load, _Nodes, _publish
from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.ring import Ring
from ktcluster.ringdoc import PREPARE, RING_KEY, STABLE, RingDoc
from ktcluster.testing import KTServer, start_cluster

NAMES = ("a", "b", "c", "d")
FAST = {"refresh": 0.1, "max_call": 1.0}  # a grace of 2.1 s per phase


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(4) as started:
        yield started


@pytest.fixture
def raw(servers: list[KTServer]) -> Iterator[dict[str, KyotoTycoon]]:
    clients = {name: KyotoTycoon(pack_type=KT_PACKER_BYTES, decode_keys=False).connect(srv.host, srv.port)
               for name, srv in zip(NAMES, servers, strict=True)}
    yield clients
    for client in clients.values():
        client.clear()
        client.close()


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
        for key in client.match_prefix(b"key"):
            assert ring.node_for(key) == name, f"{key!r} is on {name}"
            assert key.decode() not in found
            found[key.decode()] = client.get(key)
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
    nodes = _Nodes(dict(e.split("=") for e in spec(servers).split(",")), 5.0)
    try:
        held, doc = _load(nodes)
        assert doc is None and held == dict.fromkeys("abc")
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
