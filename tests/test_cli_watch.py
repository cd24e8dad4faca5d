"""``ktcluster stats --json`` and ``ktcluster stats --watch`` (ktcluster/cli/watch.py), run as a
user runs them, against real servers (embedded, or $KT_SERVER_BIN) and against an
application serving its ``cluster.stats()``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_cli import NAMES, cluster_of, ktcluster, ok

from ktcluster.cli.watch import render, sample_views
from ktcluster.cluster import Cluster
from ktcluster.observe import Metrics
from ktcluster.testing import KTServer, free_port, start_cluster


@pytest.fixture(scope="module")
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3, ulog=True) as started:
        yield started


@pytest.fixture
def spec(servers: list[KTServer]) -> str:
    return ",".join(f"{name}={srv.address}" for name, srv in zip(NAMES, servers, strict=True))


class Traffic:
    """A thread writing and reading records until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.cluster.set(f"w{i % 50}", b"v")
                self.cluster.get(f"w{i % 50}")
            except Exception:  # a node that is down fails its keys: the traffic goes on
                time.sleep(0.001)
            i += 1

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_stats_json(spec: str, servers: list[KTServer]) -> None:
    with cluster_of(servers) as cluster:
        cluster.set_bulk({f"j{i}": b"v" for i in range(90)})
        counts = cluster.per_node("count")
    data = json.loads(ok(ktcluster("stats", "--json", servers=spec)))
    assert {n: node["records"] for n, node in data["nodes"].items()} == counts
    assert data["total"]["records"] == sum(counts.values()) and data["total"]["down"] == 0
    assert all(node["state"] == "up" and node["connections"] >= 1 for node in data["nodes"].values())


def test_watch_json_shows_the_servers_ops_and_the_replication_lag(spec: str, servers: list[KTServer]) -> None:
    with cluster_of(servers) as cluster, Traffic(cluster):
        out = ok(ktcluster("stats", "--watch", "--json", "--interval", "0.7", "--count", "3", "--lag", "99",
                           servers=spec))
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    last = lines[-1]["nodes"]
    assert set(last) == set(NAMES)
    assert sum(v["ops_per_s"] for v in last.values()) > 10      # the servers' counters moved
    for view in last.values():
        assert view["state"] == "closed" and view["errors"] == 0 and view["pool_size"] >= 1
        assert view["p99_ms"] is not None                      # this command's own report calls
        assert view["lag_s"] is not None and 0 <= view["lag_s"] < 60


def test_watch_a_table_in_the_terminal_rows(spec: str) -> None:
    out = ok(ktcluster("stats", "--watch", "--interval", "0.2", "--count", "2", servers=spec))
    screens = [s for s in out.split("ktcluster stats --watch") if s.strip()]
    assert len(screens) == 2
    header = [line for line in screens[-1].splitlines() if line.startswith("node")][0]
    assert header.split() == ["node", "address", "breaker", "ops/s", "p99", "ms", "errors", "pool", "lag", "s"]


class StatsApp:
    """An application serving its cluster's stats() as JSON (what examples/gevent_app.py's /stats does)."""

    def __init__(self, cluster: Cluster) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps(app.cluster.stats()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.cluster = cluster
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/stats"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_watch_url_shows_the_applications_clients_and_a_dead_node(servers: list[KTServer]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cluster = Cluster({"a": servers[0].address, "b": servers[1].address, "gone": dead}, observer=Metrics())
    app = StatsApp(cluster)
    try:
        with Traffic(cluster):
            out = ok(ktcluster("stats", "--watch", "--json", "--url", app.url, "--interval", "0.5", "--count", "2"))
    finally:
        app.close()
        cluster.close()
    views = json.loads(out.splitlines()[-1])["nodes"]
    assert views["a"]["ops_per_s"] > 10 and views["a"]["p99_ms"] > 0 and views["a"]["errors"] == 0
    assert views["gone"]["state"] == "open" and views["gone"]["errors"] > 0
    assert views["gone"]["top_error"] == "NodeDownError"


def test_sample_views_read_the_interval_not_the_totals() -> None:
    metrics = Metrics()
    cluster = Cluster(["127.0.0.1:1"], observer=metrics)
    from ktcluster.observe.events import Call
    from ktcluster.retry import OpClass

    def attempts(n: int, seconds: float) -> None:
        for _ in range(n):
            event = Call(metrics, "get", OpClass.READ).attempt("127.0.0.1:1", "127.0.0.1:1", 0)
            event.duration = seconds
            metrics.attempt(event)

    try:
        attempts(100, 0.5)                     # slow before the interval
        first = {"time": 0.0, "stats": cluster.stats(), "reports": None}
        attempts(50, 0.001)                    # fast within it
        second = {"time": 2.0, "stats": cluster.stats(), "reports": None}
    finally:
        cluster.close()
    (view,) = sample_views(first, second).values()
    assert view["ops_per_s"] == pytest.approx(50 / 2.0)
    assert view["p99_ms"] < 2                              # the interval's, not the slow history's
    assert "127.0.0.1:1" in render({"127.0.0.1:1": view}, "title")
