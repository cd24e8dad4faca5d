"""Multi-node tests against servers somebody else started: ``KT_SERVERS=host:port,...``
(``name=host:port`` entries allowed), e.g. the three nodes of ``docker compose up``.

Each test uses keys under its own random prefix and removes them, so the servers may hold
other data.  The replication tests need the servers to run with an update log
(``-ulog DIR -sid N``); they are skipped when they do not.

The restart test needs a runner that can stop and start a node: with
``KT_RESTART_NODE=name`` it prints a line ``KT-RESTART stop name`` and waits (up to
two minutes) for that node to stop answering, then ``KT-RESTART start name`` and waits
for it to come back on the same address.  The runner stops (SIGTERM) and starts the node
when it reads those lines: ``scripts/compose-check.sh`` with ``docker compose stop/start``,
``tests/test_compose.py`` with local servers, so the test runs on every test run.  The
node's data must survive the restart (a file database, as docker-compose.yml's nodes have).
Without ``KT_RESTART_NODE`` it is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ktcluster.cli.servers import parse_servers
from ktcluster.cluster import Cluster
from ktcluster.connection import Connection
from ktcluster.errors import KTConnectionError, ReplicationError
from ktcluster.health import HealthConfig
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.replication import ReplicationStream

SERVERS = os.environ.get("KT_SERVERS", "")
RESTART_NODE = os.environ.get("KT_RESTART_NODE", "")
#: how long a node may take to stop, or to come back (a container on a loaded machine)
RESTART_WAIT = 120.0

pytestmark = pytest.mark.skipif(not SERVERS.strip(), reason="set KT_SERVERS=host:port,... to run the multi-node "
                                                            "tests against running servers (docker compose up does)")


def _answers(address: str) -> bool:
    """Whether the server at ``address`` answers a ``void`` call now."""
    host, _, port = address.rpartition(":")
    conn = Connection(host.strip("[]"), int(port), connect_timeout=1.0, timeout=2.0)
    try:
        conn.call(b"void")
        return True
    except KTConnectionError:
        return False
    finally:
        conn.close()


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.25)


def _wait_until_up(nodes: dict[str, str], timeout: float = 60.0) -> None:
    """Containers start in any order: wait for every node to answer."""
    for name, address in nodes.items():
        _wait_until(functools.partial(_answers, address), timeout, f"{name} ({address}) answering")


@pytest.fixture(scope="module")
def nodes() -> dict[str, str]:
    parsed = parse_servers(SERVERS)
    _wait_until_up(parsed)
    return parsed


@pytest.fixture
def cluster(nodes: dict[str, str]) -> Iterator[Cluster]:
    with Cluster(nodes, pack_type=KT_PACKER_BYTES) as c:
        yield c


@pytest.fixture
def prefix(cluster: Cluster) -> Iterator[str]:
    """A key prefix of this test's own; its keys are removed afterwards."""
    mine = f"ktcluster-test:{uuid.uuid4().hex[:12]}:"
    yield mine
    cluster.remove_bulk(cluster.match_prefix(mine))


def test_every_node_answers(cluster: Cluster, nodes: dict[str, str]) -> None:
    assert set(cluster.per_node("report")) == set(nodes)
    assert len(nodes) >= 2, "a multi-node test needs at least two servers"


def test_bulk_calls_spread_keys_over_every_node(cluster: Cluster, prefix: str, nodes: dict[str, str]) -> None:
    records = {f"{prefix}{i}": b"value %d" % i for i in range(3000)}
    assert cluster.set_bulk(records) == len(records)
    assert cluster.get_bulk(list(records)) == records
    for name in nodes:
        stored = cluster.client(name).match_prefix(prefix)
        assert stored, f"no key landed on {name}"
        assert all(cluster.node_for(k) == name for k in stored)
    assert len(cluster.match_prefix(prefix)) == len(records)
    assert cluster.remove_bulk(list(records)[:1000]) == 1000
    assert len(cluster.get_bulk(list(records))) == 2000


def test_single_operations_route_to_the_owner(cluster: Cluster, prefix: str) -> None:
    for i in range(30):
        key = f"{prefix}single{i}"
        assert cluster.set(key, b"v", expire=600)
        owner = cluster.client(cluster.node_for(key))
        assert owner.get(key) == b"v"
        value, expires = cluster.get_with_expiry(key)
        assert value == b"v" and 0 < expires - time.time() <= 601
    counter = f"{prefix}counter"
    assert [cluster.increment(counter, 5) for _ in range(3)] == [5, 10, 15]


class _Collector:
    """Reads a merged replication stream in a thread and keeps the records of keys under
    ``prefix``; :meth:`wait_for` waits until given keys have come."""

    def __init__(self, stream: ReplicationStream, prefix: str) -> None:
        self.stream = stream
        self.prefix = prefix.encode()
        self.records: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="collector", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for rec in self.stream:
                if rec.get("key", b"").startswith(self.prefix):
                    self.records.append(rec)
        except Exception as exc:   # raised again by wait_for, in the test's thread
            self.error = exc

    def keys(self) -> set[str]:
        return {rec["key"].decode() for rec in list(self.records)}

    def wait_for(self, keys: set[str], timeout: float = 60.0) -> list[dict[str, Any]]:
        _wait_until(lambda: self.error is not None or keys <= self.keys(), timeout,
                    f"the stream delivering {len(keys)} records")
        if isinstance(self.error, ReplicationError):
            pytest.skip(f"the servers have no update log: {self.error}")
        if self.error is not None:
            raise self.error
        return list(self.records)

    def close(self) -> None:
        self.stream.close()
        self._thread.join(30)


@contextlib.contextmanager
def _collecting(cluster: Cluster, prefix: str, **options: Any) -> Iterator[_Collector]:
    """The merged stream of every node from a second ago, read by a :class:`_Collector`."""
    collector = _Collector(cluster.replication(since=time.time() - 1, **options), prefix)
    try:
        yield collector
    finally:
        collector.close()


def _check_delivery(records: list[dict[str, Any]], cluster: Cluster) -> None:
    """Each record from the node that owns its key, and each node's records in its log
    order with none repeated (a master's timestamps are unique and increasing)."""
    for rec in records:
        assert rec["node"] == cluster.node_for(rec["key"].decode()), rec
    for name in cluster.nodes:
        stamps = [rec["ts"] for rec in records if rec["node"] == name]
        assert stamps == sorted(set(stamps)), f"{name}: records repeated or out of order"


def test_the_merged_replication_stream_sees_every_node(cluster: Cluster, prefix: str, nodes: dict[str, str]) -> None:
    keys = [f"{prefix}repl{i}" for i in range(60)]
    # a master is excluded from the ordering only after 30 s of silence: none should be
    with _collecting(cluster, prefix, sid=65001, idle_timeout=30.0) as collector:
        cluster.set_bulk(dict.fromkeys(keys, b"r"))
        records = collector.wait_for(set(keys))
        late = collector.stream.late_records
    assert len(records) == len(keys)
    _check_delivery(records, cluster)
    assert {rec["node"] for rec in records} == set(nodes)
    assert late == 0
    stamps = [rec["ts"] for rec in records]
    assert stamps == sorted(stamps)                  # merged: never back in time


def test_the_command_line_works_against_them(prefix: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ktcluster.cli", *args], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "KT_SERVERS": SERVERS})

    key = f"{prefix}cli"
    assert run("set", key, "from the CLI").returncode == 0
    got = run("get", key)
    assert got.returncode == 0 and got.stdout == "from the CLI\n"
    stats = run("stats")
    assert stats.returncode == 0 and stats.stdout.splitlines()[-1].startswith("total")
    assert run("rm", key).returncode == 0


def _keys_by_owner(cluster: Cluster, stem: str, per_node: int) -> dict[str, list[str]]:
    """``per_node`` keys ``stem0, stem1...`` for each node, by the node that owns them."""
    owned: dict[str, list[str]] = {name: [] for name in cluster.nodes}
    count = 0
    while any(len(keys) < per_node for keys in owned.values()):
        key = f"{stem}{count}"
        count += 1
        keys = owned[cluster.node_for(key)]
        if len(keys) < per_node:
            keys.append(key)
    return owned


def _tell_runner(capsys: pytest.CaptureFixture[str], message: str) -> None:
    with capsys.disabled():
        print(f"\nKT-RESTART {message}", flush=True)


def _set_succeeds(cluster: Cluster, key: str) -> bool:
    try:
        return cluster.set(key, b"probe")
    except KTConnectionError:
        return False


@pytest.mark.skipif(not RESTART_NODE, reason="set KT_RESTART_NODE=name, with a runner that stops and starts that node "
                                             "when told (scripts/compose-check.sh and tests/test_compose.py do)")
def test_a_node_stopped_and_restarted_during_the_run(nodes: dict[str, str], prefix: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    victim = RESTART_NODE
    assert victim in nodes, f"KT_RESTART_NODE={victim} is none of {sorted(nodes)}"
    health = HealthConfig(reset_timeout=0.2, max_reset_timeout=1.0)
    with Cluster(nodes, pack_type=KT_PACKER_BYTES, health=health) as cluster, \
            _collecting(cluster, prefix, sid=65002, idle_timeout=2.0, max_backoff=0.5) as collector:
        owned = _keys_by_owner(cluster, f"{prefix}restart", 21)
        before = {k for keys in owned.values() for k in keys[:10]}
        assert cluster.set_bulk(dict.fromkeys(before, b"before")) == len(before)

        _tell_runner(capsys, f"stop {victim}")
        _wait_until(lambda: not _answers(nodes[victim]), RESTART_WAIT, f"{victim} stopping")
        during = {k for name, keys in owned.items() if name != victim for k in keys[10:]}
        for key in sorted(during):                  # the other nodes serve on
            assert cluster.set(key, b"during")
        for key in owned[victim][10:13]:            # the stopped node's keys fail
            with pytest.raises(KTConnectionError):
                cluster.set(key, b"never stored")
        assert cluster.health.down() == [victim]
        served = (before - set(owned[victim])) | during
        collector.wait_for(served)                  # the stream goes on without the stopped node

        _tell_runner(capsys, f"start {victim}")
        probe = owned[victim][-1]
        _wait_until(lambda: _set_succeeds(cluster, probe), RESTART_WAIT, f"{victim} serving again")
        after = set(owned[victim][10:-1])
        assert cluster.set_bulk(dict.fromkeys(after, b"after")) == len(after)
        assert cluster.health.down() == []
        kept = owned[victim][:10]                   # what it held before the stop, still there
        assert cluster.get_bulk(kept) == dict.fromkeys(kept, b"before")
        records = collector.wait_for(before | during | after)
        _check_delivery(records, cluster)
        assert collector.stream.status()[victim]["reconnects"] >= 1
