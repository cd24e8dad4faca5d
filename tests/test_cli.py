"""The ``ktcluster`` command, run as a user runs it: in a subprocess, against real servers
(embedded, or ``$KT_SERVER_BIN``).  Errors must be one line on stderr and a non-zero exit."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktcluster.cli.rebalance import Tally, _Mover
from ktcluster.cli.records import scan
from ktcluster.client import KyotoTycoon
from ktcluster.cluster import Cluster
from ktcluster.expiry import ExpireAt
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.ring import Ring
from ktcluster.testing import KTServer, free_port, start_cluster

NAMES = ("a", "b", "c")


def ktcluster(*args: str, servers: str | None = None, stdin: bytes | None = None, cwd: str | Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("KT_SERVERS", None)
    if servers is not None:
        env["KT_SERVERS"] = servers
    return subprocess.run([sys.executable, "-m", "ktcluster.cli", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=timeout, check=False)


def text(proc: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    out, err = text(proc)
    assert proc.returncode == 0, err
    return out


def fails(proc: subprocess.CompletedProcess[bytes], *fragments: str, status: int = 1) -> str:
    """Exit ``status`` with exactly one line on stderr (no traceback) containing ``fragments``."""
    _, err = text(proc)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3, ulog=True) as started:
        yield started


@pytest.fixture
def spec(servers: list[KTServer]) -> Iterator[str]:
    """``a=host:port,b=...,c=...`` of three empty servers."""
    yield ",".join(f"{name}={srv.address}" for name, srv in zip(NAMES, servers, strict=True))
    with cluster_of(servers) as cluster:
        cluster.clear()


def cluster_of(servers: list[KTServer], names: tuple[str, ...] = NAMES) -> Cluster:
    return Cluster({name: srv.address for name, srv in zip(names, servers, strict=False)}, pack_type=KT_PACKER_BYTES)


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


# -- scanning a node (dump, rebalance) ------------------------------------------------------------


def test_scan_batches_and_resumes_after_a_key() -> None:
    with KTServer("%", "*", "%") as srv:  # DB 0 a tree, DB 1 a hash, DB 2 empty
        with KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(srv.host, srv.port) as kt:
            for db in (0, 1):
                kt.set_bulk({f"k{i}": f"v{i}" for i in range(7)}, db=db)
            kt.set("k3", "v3", expire=ExpireAt(4102444800), db=0)
        batches = list(scan(srv.host, srv.port, batch=3))
        assert [len(b) for b in batches] == [3, 3, 1]
        records = [r for b in batches for r in b]
        assert records == [(f"k{i}".encode(), f"v{i}".encode(), 4102444800 if i == 3 else None) for i in range(7)]
        rest = [r[0] for b in scan(srv.host, srv.port, start_after=b"k4") for r in b]
        assert rest == [b"k5", b"k6"]
        assert list(scan(srv.host, srv.port, start_after=b"k6")) == []  # resuming after the last one
        # a tree resumes at the next key when the one to resume after is gone
        assert [r[0] for b in scan(srv.host, srv.port, start_after=b"k2a") for r in b] == [b"k3", b"k4", b"k5", b"k6"]
        hashed = [r[0] for b in scan(srv.host, srv.port, db=1) for r in b]
        assert sorted(hashed) == [f"k{i}".encode() for i in range(7)]
        assert [r[0] for b in scan(srv.host, srv.port, db=1, start_after=hashed[2]) for r in b] == hashed[3:]
        with pytest.raises(LookupError):
            next(scan(srv.host, srv.port, db=1, start_after=b"gone"))
        assert list(scan(srv.host, srv.port, db=2)) == []  # an empty database


# -- single records, stats ---------------------------------------------------------------------------

def test_set_get_rm_with_named_servers(spec: str, servers: list[KTServer]) -> None:
    assert ok(ktcluster("set", "greeting", "hello world", servers=spec)) == ""
    assert ok(ktcluster("get", "greeting", servers=spec)) == "hello world\n"
    ok(ktcluster("set", "blob", "-", stdin=b"\x00\xff binary\n", servers=spec))
    assert ktcluster("get", "blob", servers=spec).stdout == b"\x00\xff binary\n\n"
    with cluster_of(servers) as cluster:
        assert cluster.get(b"greeting") == b"hello world"
        owner = cluster.node_for("greeting")
        assert cluster.client(owner).check("greeting")
    ok(ktcluster("set", "ttl", "x", "--expire", "100", "--servers", spec))
    with cluster_of(servers) as cluster:
        _, expires = cluster.get_with_expiry("ttl")
        assert 0 < expires - time.time() <= 101
    ok(ktcluster("rm", "greeting", "blob", servers=spec))
    fails(ktcluster("get", "greeting", servers=spec), "no record for key 'greeting'")
    fails(ktcluster("rm", "greeting", servers=spec), "no record")


def test_stats_table(spec: str, servers: list[KTServer]) -> None:
    with cluster_of(servers) as cluster:
        cluster.set_bulk({f"k{i}": b"v" for i in range(300)})
        counts = cluster.per_node("count")
    lines = ok(ktcluster("stats", servers=spec)).splitlines()
    assert lines[0].split() == ["node", "address", "state", "records", "size", "connections", "uptime"]
    for name, line in zip(NAMES, lines[1:4], strict=True):
        cells = line.split()
        assert cells[0] == name and cells[2] == "up" and cells[3] == f"{counts[name]:,}"
    assert lines[4].split()[:4] == ["total", "3", "nodes", "300"]


def test_stats_with_a_node_down_shows_the_table_and_fails(spec: str) -> None:
    proc = ktcluster("stats", servers=f"{spec},gone={dead_address()}")
    out, _ = text(proc)
    assert re.search(r"^gone\s+\S+\s+DOWN", out, re.M)
    assert "(1 down)" in out
    fails(proc, "1 of 4 nodes down", "gone")


# -- load, dump ---------------------------------------------------------------------------------------

def test_load_and_dump_round_trip(spec: str, tmp_path: Path) -> None:
    expires = int(time.time()) + 3600
    records = [{"key": f"user:{i}", "value": f"value {i}"} for i in range(250)]
    records.append({"key": "ttl", "value": "short-lived", "expires": expires})
    records.append({"key_b64": base64.b64encode(b"\xff\x00key").decode(),
                    "value_b64": base64.b64encode(b"\x80\x81").decode()})
    records.append({"key": "json", "value": {"a": [1, 2]}})
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    proc = ktcluster("load", str(path), "--batch", "40", servers=spec)
    ok(proc)
    assert "loaded 253 records" in text(proc)[1]
    dumped = [json.loads(line) for line in ok(ktcluster("dump", "--quiet", servers=spec)).splitlines()]
    expected = {json.dumps(r, sort_keys=True) for r in records[:-1]}
    expected.add(json.dumps({"key": "json", "value": '{"a":[1,2]}'}, sort_keys=True))
    assert {json.dumps(r, sort_keys=True) for r in dumped} == expected
    # a dump loads back as it is; one node at a time works too
    per_node = sum(len(ok(ktcluster("dump", "-q", "--node", n, servers=spec)).splitlines()) for n in NAMES)
    assert per_node == len(records)


def test_load_tsv(spec: str, servers: list[KTServer], tmp_path: Path) -> None:
    path = tmp_path / "in.tsv"
    path.write_bytes(b"alpha\tone\nbeta\ttwo\t4102444800\n\ngamma\t\n")
    ok(ktcluster("load", str(path), "-q", servers=spec))
    with cluster_of(servers) as cluster:
        assert cluster.get_bulk(["alpha", "beta", "gamma"]) == {"alpha": b"one", "beta": b"two", "gamma": b""}
        assert cluster.get_with_expiry("beta") == (b"two", 4102444800)


def test_load_resumes_from_its_checkpoint(spec: str, servers: list[KTServer], tmp_path: Path) -> None:
    lines = [json.dumps({"key": f"r{i:03d}", "value": "x"}) for i in range(100)]
    lines[73] = "{broken json line"
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ckpt = tmp_path / "load.ckpt"
    fails(ktcluster("load", str(path), "--batch", "10", "--checkpoint", str(ckpt), servers=spec),
          f"{path}:74: not valid JSON")
    state = json.loads(ckpt.read_text())
    assert state["line"] == 70 and state["loaded"] == 70 and not state["complete"]
    with cluster_of(servers) as cluster:
        assert cluster.count() == 70
        cluster.remove_bulk([f"r{i:03d}" for i in range(60)])  # proves the rerun does not start over
    lines[73] = json.dumps({"key": "r073", "value": "y"})  # fixed after the offset saved: resuming is exact
    path.write_text("\n".join(lines) + "\n")
    proc = ktcluster("load", str(path), "--batch", "10", "--checkpoint", str(ckpt), servers=spec)
    ok(proc)
    assert "loaded 100 records" in text(proc)[1]  # 70 before + 30 now
    with cluster_of(servers) as cluster:
        assert cluster.count() == 40
        assert cluster.get("r073") == b"y"
    assert "already loaded" in ok(ktcluster("load", str(path), "--checkpoint", str(ckpt), servers=spec))
    fails(ktcluster("load", str(tmp_path / "other.jsonl"), "--checkpoint", str(ckpt), servers=spec),
          "checkpoint", "is for")


# -- ring, rebalance ------------------------------------------------------------------------------------

def test_ring_names_nodes_and_diffs(spec: str) -> None:
    addresses = dict(entry.split("=") for entry in spec.split(","))
    ring = Ring(list(NAMES))
    out = ok(ktcluster("ring", "k1", "k2", "ü", servers=spec))
    for line, key in zip(out.splitlines(), ("k1", "k2", "ü"), strict=True):
        assert line.split("\t") == [key, ring.node_for(key), addresses[ring.node_for(key)]]
    out = ok(ktcluster("ring", "--add", "d=127.0.0.1:1999", servers=spec))
    diff = ring.diff(ring.with_node("d"))
    assert out.startswith(f"adding d moves {diff.moved:.1%} of the keys")
    for (src, dst), share in diff.flows.items():
        assert f"{src} -> {dst}: {share:.1%}" in out
    assert "removing b moves" in ok(ktcluster("ring", "--remove", "b", servers=spec))
    shares = ok(ktcluster("ring", servers=spec, timeout=10))
    assert all(re.search(rf"^{n}\s", shares, re.M) for n in NAMES)


def test_rebalance_after_adding_and_before_removing_a_node(spec: str, servers: list[KTServer],
                                                           tmp_path: Path) -> None:
    keys = [f"key{i}" for i in range(600)]
    expires = int(time.time()) + 3600
    with cluster_of(servers, NAMES[:2]) as two:  # written while the ring had two nodes
        two.set_bulk({k: k.encode() for k in keys[:500]})
        two.set_bulk({k: k.encode() for k in keys[500:]}, expire=3600)
    three_ring = Ring(list(NAMES))
    misplaced = sum(three_ring.node_for(k) != Ring(list(NAMES[:2])).node_for(k) for k in keys)
    out = ok(ktcluster("rebalance", "--dry-run", servers=spec))
    assert f"would move {misplaced:,}" in out
    with cluster_of(servers) as three:
        assert three.client("c").count() == 0  # a dry run changes nothing
    ckpt = tmp_path / "rebalance.ckpt"
    out = ok(ktcluster("rebalance", "--checkpoint", str(ckpt), "--batch", "50", servers=spec))
    assert f"moved {misplaced:,}" in out
    assert not ckpt.exists()  # removed after a clean run
    with cluster_of(servers) as three:
        assert three.get_bulk(keys) == {k: k.encode() for k in keys}
        assert sum(three.per_node("count").values()) == len(keys)
        for name in NAMES:
            client = three.client(name)
            assert all(three.node_for(k) == name for k in client.match_prefix("key"))
        moved_ttl = next(k for k in keys[500:] if three.node_for(k) == "c")
        assert abs(three.get_with_expiry(moved_ttl)[1] - expires) <= 2  # the expiry came along
    assert "moved 0" in ok(ktcluster("rebalance", servers=spec))  # running it again is harmless
    # take c out: its keys go back to a and b
    a_b = ",".join(spec.split(",")[:2])
    out = ok(ktcluster("rebalance", "--drain", spec.split(",")[2], servers=a_b))
    assert "c holds no more keys of the ring and can be stopped" in out
    with cluster_of(servers, NAMES[:2]) as two:
        assert two.get_bulk(keys) == {k: k.encode() for k in keys}
    with cluster_of(servers) as three:
        assert three.client("c").count() == 0


def test_rebalance_conflicts_are_kept_unless_told(spec: str, servers: list[KTServer]) -> None:
    ring = Ring(list(NAMES))
    key = next(f"k{i}" for i in range(100) if ring.node_for(f"k{i}") == "a")
    with cluster_of(servers) as cluster:
        cluster.client("a").set(key, b"owner's")
        cluster.client("b").set(key, b"stray")
    out, err = text(proc := ktcluster("rebalance", servers=spec))
    assert proc.returncode == 4 and "Traceback" not in err
    assert "1 keys are on two nodes" in err and repr(key.encode()) in err
    with cluster_of(servers) as cluster:
        assert cluster.client("a").get(key) == b"owner's" and cluster.client("b").get(key) == b"stray"
    ok(ktcluster("rebalance", "--on-conflict", "source", servers=spec))
    with cluster_of(servers) as cluster:
        assert cluster.client("a").get(key) == b"stray" and cluster.client("b").get(key) is None
        cluster.client("c").set(key, b"stray again")
    ok(ktcluster("rebalance", "--on-conflict", "target", servers=spec))
    with cluster_of(servers) as cluster:
        assert cluster.client("a").get(key) == b"stray" and cluster.client("c").get(key) is None


def test_rebalance_resumes_and_refuses_another_rings_checkpoint(spec: str, servers: list[KTServer],
                                                                tmp_path: Path) -> None:
    ring = Ring(list(NAMES))
    stray = {name: next(f"s{i}" for i in range(100) if ring.node_for(f"s{i}") != name) for name in NAMES}
    with cluster_of(servers) as cluster:
        for name, key in stray.items():
            cluster.client(name).set(key, b"v")
    ckpt = tmp_path / "r.ckpt"
    entries = {n: [a, 1] for n, a in (e.split("=") for e in spec.split(","))}
    ckpt.write_text(json.dumps({"kind": "rebalance", "ring": entries, "drain": {}, "db": 0,
                                "done": ["a"], "after": {}}))
    out = ok(ktcluster("rebalance", "--checkpoint", str(ckpt), servers=spec))
    assert "moved 2" in out  # a was done already: its stray key stays
    with cluster_of(servers) as cluster:
        assert cluster.client("a").check(stray["a"])
        assert not cluster.client("b").check(stray["b"]) and not cluster.client("c").check(stray["c"])
    ckpt.write_text(json.dumps({"kind": "rebalance", "ring": {}, "drain": {}, "db": 0, "done": [], "after": {}}))
    fails(ktcluster("rebalance", "--checkpoint", str(ckpt), servers=spec), "is for another ring")
    ckpt.write_text("not json")
    fails(ktcluster("rebalance", "--checkpoint", str(ckpt), servers=spec), "not a rebalance checkpoint")


def test_rebalance_never_deletes_a_value_written_after_the_copy(spec: str, servers: list[KTServer]) -> None:
    """The removal is a cas on the value copied: a concurrent write is carried over, a
    concurrent remove removes the copy too."""
    ring = Ring(list(NAMES))
    changed, removed = (next(f"{p}{i}" for i in range(100) if ring.node_for(f"{p}{i}") == "a") for p in "xy")
    with cluster_of(servers) as cluster:
        cluster.client("b").set(changed, b"new value")  # what a client wrote after the scan read "old"
    tally = Tally()
    mover = _Mover(dict(entry.split("=") for entry in spec.split(",")), 0, "keep", 5.0, tally)
    try:
        mover.move("b", "a", [(changed.encode(), b"old", None), (removed.encode(), b"gone", None)])
    finally:
        mover.close()
    assert tally.moved == {("b", "a"): 1} and tally.gone == 1 and not tally.conflicts
    with cluster_of(servers) as cluster:
        assert cluster.client("a").get(changed) == b"new value"
        assert cluster.client("b").get(changed) is None
        assert cluster.client("a").get(removed) is None


# -- tail, bench -------------------------------------------------------------------------------------------

def test_tail_prints_the_merged_stream(spec: str, servers: list[KTServer]) -> None:
    time.sleep(1.01 - time.time() % 1)  # --since counts whole seconds: skip the previous test's writes
    since = str(time.time())
    with cluster_of(servers) as cluster:
        cluster.set_bulk({f"t{i}": b"v" for i in range(6)})
    out = ok(ktcluster("tail", "--since", since, "--count", "6", "--idle-timeout", "1", servers=spec))
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["key"] for r in records) == [f"t{i}" for i in range(6)]
    assert {r["node"] for r in records} <= set(NAMES)
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)


def test_bench_reports_and_cleans_up(spec: str, servers: list[KTServer]) -> None:
    out = ok(ktcluster("bench", "--keys", "300", "--single", "30", "--bulk", "100", servers=spec))
    assert re.search(r"^set_bulk \(100/call\)\s+300\s", out, re.M)
    assert re.search(r"^get\s+30\s", out, re.M)
    with cluster_of(servers) as cluster:
        assert cluster.count() == 0


# -- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["get", "k"], ["is down", "refused"]),
    (["set", "k", "v"], ["is down"]),
    (["dump"], ["refused"]),
    (["tail", "--count", "1"], ["refused"]),
    (["rebalance", "--dry-run"], ["refused"]),
    (["bench", "--keys", "10", "--single", "1"], ["is down"]),
])
def test_a_server_down_is_one_line(args: list[str], fragments: list[str]) -> None:
    fails(ktcluster(*args, servers=f"n1={dead_address()}"), *fragments)


@pytest.mark.parametrize("servers, fragments", [
    ("host:notaport", ["bad port in address 'host:notaport'"]),
    ("host:99999", ["bad address"]),
    ("a=h:1,a=h:2", ["listed twice"]),
    ("", ["no servers", "KT_SERVERS"]),
    (None, ["no servers"]),
    ("no-such-host.invalid:1978", ["is down"]),
])
def test_a_bad_address_is_one_line(servers: str | None, fragments: list[str]) -> None:
    fails(ktcluster("get", "k", servers=servers), *fragments)


def test_a_bad_input_file_is_one_line(spec: str, tmp_path: Path) -> None:
    fails(ktcluster("load", str(tmp_path / "missing.jsonl"), servers=spec), "missing.jsonl: No such file")
    fails(ktcluster("load", str(tmp_path), servers=spec), "Is a directory")
    bad = tmp_path / "bad.jsonl"
    for content, fragment in [(b'{"key": "a", "value": "b"}\n[1, 2]\n', "bad.jsonl:2: not a JSON object"),
                              (b'{"key": "a"}\n', "no 'value'"),
                              (b'{"key": 1, "value": "b"}\n', "'key' must be a string"),
                              (b'{"key": "a", "value": "b", "expires": "soon"}\n', "'expires' must be epoch"),
                              (b'{"key_b64": "%%%", "value": "b"}\n', "not valid base64"),
                              (b"\xff\xfe\x00garbage\n", "not valid JSON")]:
        bad.write_bytes(content)
        fails(ktcluster("load", str(bad), servers=spec), fragment)
    tsv = tmp_path / "bad.tsv"
    tsv.write_bytes(b"a\tb\nno tab here\n")
    fails(ktcluster("load", str(tsv), servers=spec), "bad.tsv:2: expected key<TAB>value")
    fails(ktcluster("load", "-", "--checkpoint", str(tmp_path / "c"), servers=spec), "not stdin")


def test_usage_errors_exit_2() -> None:
    proc = ktcluster("load")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert ktcluster("--help").returncode == 0
    commands = text(ktcluster("--help"))[0]
    for name in ("demo", "stats", "get", "set", "rm", "load", "dump", "tail", "ring", "rebalance", "bench"):
        assert name in commands


# -- demo ---------------------------------------------------------------------------------------------------

def _gone(pid: int, address: str) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        pass
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_demo_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "ktcluster"), "demo", "--keys", "3000"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert "stored 3,000 keys" in out and "3,000 of 3,000 found" in out
    assert "NodeDownError" in out and "PartialFailureError" in out
    assert "breaker of kt2: closed again" in out and "1,000 found" in out
    stream = [json.loads(line) for line in out.splitlines() if line.startswith("   {")]
    assert [r["op"] for r in stream].count("set") == 6 and stream[-1]["op"] == "remove"
    started = re.findall(r"^  (kt\d)  (\S+)  sid \d  pid (\d+)$", out, re.M)
    assert len(started) == 3
    assert all(_gone(int(pid), address) for _, address, pid in started)
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory either


def test_demo_interrupted_leaves_nothing_running() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ktcluster.cli", "demo", "--keys", "2000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]  # the header and the three servers
        started = [re.match(r"^  (kt\d)  (\S+)  sid \d  pid (\d+)$", line) for line in lines[1:]]
        assert all(started), lines
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert all(_gone(int(m.group(3)), m.group(2)) for m in started)
