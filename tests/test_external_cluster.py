"""Multi-node tests against servers somebody else started: ``KT_SERVERS=host:port,...``
(``name=host:port`` entries allowed), e.g. the three nodes of ``docker compose up``.

Each test uses keys under its own random prefix and removes them, so the servers may hold
other data.  The replication test needs the servers to run with an update log
(``-ulog DIR -sid N``); it is skipped when they do not.  ``tests/test_compose.py`` runs
this module against three local servers, so it is checked on every test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from ktcluster.cli.servers import parse_servers
from ktcluster.cluster import Cluster
from ktcluster.connection import Connection
from ktcluster.errors import KTConnectionError, ReplicationError
from ktcluster.packers import KT_PACKER_BYTES

SERVERS = os.environ.get("KT_SERVERS", "")

pytestmark = pytest.mark.skipif(not SERVERS.strip(), reason="set KT_SERVERS=host:port,... to run the multi-node "
                                                            "tests against running servers (docker compose up does)")


def _wait_until_up(nodes: dict[str, str], timeout: float = 60.0) -> None:
    """Containers start in any order: wait for every node to answer."""
    deadline = time.monotonic() + timeout
    for address in nodes.values():
        host, _, port = address.rpartition(":")
        while True:
            conn = Connection(host.strip("[]"), int(port), connect_timeout=1.0, timeout=2.0)
            try:
                conn.call(b"void")
                break
            except KTConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                conn.close()


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


def test_the_merged_replication_stream_sees_every_node(cluster: Cluster, prefix: str, nodes: dict[str, str]) -> None:
    since = time.time() - 1
    keys = [f"{prefix}repl{i}" for i in range(60)]
    cluster.set_bulk(dict.fromkeys(keys, b"r"))
    try:
        stream = cluster.replication(sid=65001, since=since, idle_timeout=2.0)
    except ReplicationError as exc:
        pytest.skip(f"the servers have no update log: {exc}")
    seen: dict[str, str] = {}
    timer = threading.Timer(30.0, stream.close)
    timer.start()
    try:
        with stream:
            for rec in stream:
                key = rec.get("key", b"").decode("utf-8", "replace")
                if key in keys:
                    seen[key] = rec["node"]
                    if len(seen) == len(keys):
                        break
    except ReplicationError as exc:
        pytest.skip(f"the servers have no update log: {exc}")
    finally:
        timer.cancel()
    assert set(seen) == set(keys)
    assert all(seen[k] == cluster.node_for(k) for k in keys)
    assert set(seen.values()) == set(nodes)


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
