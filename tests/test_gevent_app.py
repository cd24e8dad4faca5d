"""The example web apps -- examples/gevent_app.py (a gevent WSGI server sharing one Cluster)
and examples/asgi_app.py (a Starlette app under uvicorn sharing one ktcluster.aio.Cluster),
the same endpoints -- driven by concurrent requests; one node then dies and the app
answers with the right status codes; one keep-alive connection is fast (TCP_NODELAY);
local pool congestion is a 503 with Retry-After."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from ktcluster.cluster import Cluster
from ktcluster.testing import FaultProxy, KTServer, free_port, start_cluster

EXAMPLES = Path(__file__).parent.parent / "examples"
APPS = ["gevent_app.py", "asgi_app.py"] if sys.version_info >= (3, 11) else ["gevent_app.py"]  # aio: 3.11+


class App:
    def __init__(self, script: str, servers: list[str], *options: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--listen", f"127.0.0.1:{self.port}",
                                      "--timeout", "1", *options, *servers], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the example app did not start")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        return self.response(method, path, body)[:2]

    def response(self, method: str, path: str, body: bytes | None = None
                 ) -> tuple[int, bytes, http.client.HTTPMessage]:
        """(status, body, headers) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.headers
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def servers() -> Iterator[list[KTServer]]:
    with start_cluster(3) as srvs:
        yield srvs


@pytest.fixture(params=APPS)
def app(servers, request) -> Iterator[App]:
    running = App(request.param, [s.address for s in servers])
    yield running
    running.stop()


def test_concurrent_requests_share_one_cluster(app, servers):
    def client(worker: int) -> None:
        for i in range(15):
            key = quote(f"w{worker}/k{i}", safe="")
            assert app.request("PUT", f"/kv/{key}", f"v{worker}-{i}".encode())[0] == 204
            assert app.request("GET", f"/kv/{key}") == (200, f"v{worker}-{i}".encode())
            assert app.request("POST", "/incr/counter")[0] == 200
        records = {f"b{worker}:{j}": str(j) for j in range(20)}
        assert json.loads(app.request("POST", "/bulk", json.dumps(records).encode())[1]) == {"stored": 20}
        query = "&".join(f"key={quote(k)}" for k in list(records) + ["absent"])
        status, body = app.request("GET", f"/bulk?{query}")
        assert status == 200 and json.loads(body) == records

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(client, range(24)))
    status, body = app.request("POST", "/incr/counter?by=0")
    assert (status, body) == (200, str(24 * 15).encode())
    assert app.request("GET", "/kv/nothing-here")[0] == 404
    assert app.request("DELETE", f"/kv/{quote('w0/k0', safe='')}")[0] == 204
    # every key went to its own node
    check = Cluster([s.address for s in servers])
    assert sum(check.per_node("count").values()) == 24 * 15 - 1 + 1 + 24 * 20
    check.close()


def test_a_dead_node_maps_to_http_errors(app, servers):
    ring = Cluster([s.address for s in servers])
    dead = servers[0]
    groups: dict[str, list[str]] = {}
    for i in range(60):
        groups.setdefault(ring.node_for(f"x{i}"), []).append(f"x{i}")
    ring.close()
    records = {k: "v" for keys in groups.values() for k in keys}
    assert app.request("POST", "/bulk", json.dumps(records).encode())[0] == 200
    dead.kill()
    status, body = app.request("GET", f"/kv/{groups[dead.address][0]}")
    assert status == 503 and b"marked down" in body
    status, body = app.request("GET", "/bulk?" + "&".join(f"key={k}" for k in records))
    report = json.loads(body)
    assert status == 502 and sorted(report["failed_keys"]) == sorted(groups[dead.address])
    assert report["results"] == {k: "v" for k in records if k not in groups[dead.address]}
    health = json.loads(app.request("GET", "/health")[1])
    assert health["down"] == [dead.address]


@pytest.fixture
def gevent_app(servers) -> Iterator[App]:
    """The gevent example alone (ktcluster.aio, under the ASGI one, takes no observer yet)."""
    running = App("gevent_app.py", [s.address for s in servers])
    yield running
    running.stop()


def test_metrics_after_a_node_failure_show_its_errors_and_open_breaker(gevent_app, servers):
    """What an on-call engineer's Prometheus scrapes from the app when a node dies."""
    parser = pytest.importorskip("prometheus_client.parser",
                                 reason="the Prometheus extra is not installed: pip install 'ktcluster[prometheus]'")
    app = gevent_app
    ring = Cluster([s.address for s in servers])
    dead = servers[0]
    keys = [k for k in (f"m{i}" for i in range(200)) if ring.node_for(k) == dead.address][:3]
    others = [k for k in (f"m{i}" for i in range(200)) if ring.node_for(k) == servers[1].address][:3]
    ring.close()
    for key in keys + others:
        assert app.request("PUT", f"/kv/{key}", b"v")[0] == 204
    dead.kill()
    assert [app.request("GET", f"/kv/{k}")[0] for k in keys] == [503, 503, 503]
    assert [app.request("GET", f"/kv/{k}")[0] for k in others] == [200, 200, 200]
    status, body = app.request("GET", "/metrics")
    assert status == 200, body
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parser.text_string_to_metric_families(body.decode()) for s in family.samples}

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert sample("ktcluster_breaker_state", node=dead.address, state="open") == 1
    assert sample("ktcluster_breaker_state", node=servers[1].address, state="closed") == 1
    assert sample("ktcluster_breaker_transitions_total", node=dead.address, state="open") >= 1
    errors = {dict(labels)["error"]: n for (name, labels), n in samples.items()
              if name == "ktcluster_attempt_errors_total" and dict(labels)["node"] == dead.address}
    # the first GET found the node gone (its breaker opened), the next ones failed fast
    assert errors.get("KTConnectionError", 0) >= 1 and errors.get("NodeDownError", 0) >= 2, errors
    assert sample("ktcluster_attempts_total", node=servers[1].address, operation="get", outcome="ok") == 3
    assert sample("ktcluster_attempt_duration_seconds_count", node=servers[1].address, operation="get") == 3
    stats = json.loads(app.request("GET", "/stats")[1])
    assert stats["nodes"][dead.address]["health"]["state"] == "open"


def test_one_keep_alive_connection_is_fast(app):
    """gevent.pywsgi writes a response's head and its body in two sends.  Without TCP_NODELAY
    on the accepted socket, Nagle's algorithm holds the body back until the client ACKs the
    head, which a client delays by ~40 ms: one keep-alive connection got ~23 requests/s."""
    value = b"v" * 100
    assert app.request("PUT", "/kv/nagle", value)[0] == 204
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=15)
    latencies = []
    try:
        for _ in range(200):
            start = time.perf_counter()
            conn.request("GET", "/kv/nagle")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, value)
            latencies.append(time.perf_counter() - start)
    finally:
        conn.close()
    assert statistics.median(latencies) < 0.020  # ~0.3 ms with TCP_NODELAY, ~40 ms without


@pytest.mark.parametrize("script", APPS)
def test_local_congestion_is_503_with_retry_after(servers, script):
    """No free pooled connection within pool_timeout (PoolTimeoutError) is local congestion,
    not a slow node: 503 with Retry-After, while the request holding the connection succeeds."""
    with FaultProxy(servers[0].address, latency=3.0) as slow:
        running = App(script, [slow.address], "--timeout", "10", "--pool-size", "1", "--pool-timeout", "0.2")
        try:
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(running.request, "GET", "/kv/held")
                deadline = time.monotonic() + 10
                while slow.received == 0:  # the first request holds the pool's only connection
                    assert time.monotonic() < deadline and not held.done()
                    time.sleep(0.01)
                status, body, headers = running.response("GET", "/kv/waiting")
                assert status == 503 and headers["Retry-After"] == "1"
                assert "became free within 0.2 s" in json.loads(body)["error"]
                assert held.result(30) == (404, b"")
        finally:
            running.stop()
