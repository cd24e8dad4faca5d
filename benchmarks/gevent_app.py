"""A gevent WSGI app under load: ktcluster's Cluster against the same app on ukt and on
python-kyototycoon-ng, 3 KT nodes, 50 / 200 / 1000 concurrent clients.

    python benchmarks/gevent_app.py               # 3 fresh servers ($KT_SERVER_BIN or embedded)
    python benchmarks/gevent_app.py --duration 10 --rounds 5 --clients 1000 --endpoints bulk
    python benchmarks/gevent_app.py --servers kt1:1978,kt2:1978,kt3:1978    # your own nodes

The app (one process per library: ``gevent.monkey.patch_all()``, ``gevent.pywsgi`` with
TCP_NODELAY on accepted connections, as examples/gevent_app.py does)::

    GET  /get/<i>    get of one of 10,000 preloaded 100-byte records        200 value
    PUT  /set/<i>    set with expire=3600 (the body: 100 bytes)             204
    POST /incr/<i>   increment of one of 1,000 counters                     200 new value
    GET  /bulk/<i>   get_bulk of 100 consecutive preloaded keys             200 the values

Any exception, or a record missing, answers 500; the app counts them by class.
The libraries, each as its user would write the app:

* ktcluster: one ``Cluster`` over the nodes, with its defaults (binary protocol, a pool
  of 16 connections per node, ``pool_timeout`` 5 s; a bulk call sends every node its
  request from the calling greenlet and then reads the replies);
* ukt: one ``ukt.KyotoTycoon`` per node (its pool opens a connection per concurrent caller
  and keeps them), keys routed with uhashring's ketama ring (the ring ktcluster agrees
  with), a bulk call's nodes called one after another;
* ng: the same with python-kyototycoon-ng, which has no pool (one connection per client
  object): a free list of connected clients per node and protocol, grown on demand.

Get, set and get_bulk use the binary protocol, increment HTTP, in all three.

The load is wrk (``apt-get install wrk``), in its own process: ``--clients`` keep-alive
connections, each sending its next request when the previous answer arrived (a closed
loop, so the load is bounded), random keys, wrk's timeout at 60 s so that slow answers count
in the latencies instead of being dropped.  Each round runs every (clients, endpoint) for
every library in turn, the libraries' order rotated from round to round, so they see the
same machine state.  Per run: successful (2xx) requests/s, p50 and p99 latency, the CPU
time per request of the app's process (and of it, the time in Python's garbage collector)
and of the KT servers (fresh servers only), and the errors (non-2xx answers and socket
errors).  The first table shows the median over rounds of each figure, the second
ktcluster's ratios to each peer paired by round (the libraries of a round ran back to
back), their median and range.  wrk's own CPU time per request (its headroom) is printed
at the end, with a calibration: wrk alone against a node's ``/rpc/void``.

Targets (issue 11): ktcluster >= 1.0x ukt's requests/s and p99 <= ukt's, on every endpoint
at every concurrency.  Prints numbers; it never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = ("get", "set", "incr", "bulk")
LIBRARIES = {"ktcluster": "ktcluster", "ukt": "ukt", "ng": "kyototycoon"}   #: library -> its module
RECORDS = 10_000        #: preloaded records k:0 .. k:9999
COUNTERS = 1_000        #: counters c:0 .. c:999
BULK = 100              #: keys per get_bulk
VALUE = b"v" * 100
EXPIRE = 3600
TIMEOUT = 5.0           #: socket timeouts towards KT, every library (ktcluster's default)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (wrk takes whole seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load per library and endpoint before the rounds")
    parser.add_argument("--clients", default="50,200,1000", help="concurrent connections, comma-separated")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (one drives 1000 connections)")
    parser.add_argument("--servers", default="",
                        help="existing KT nodes (host:port, comma-separated); k:*, s:* and c:* records are written")
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.child:
        from gevent import monkey
        monkey.patch_all()
        return serve(args.child, args.servers.split(","), args.port)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")
    libs = []
    for lib in args.libraries.split(","):
        if importlib.util.find_spec(LIBRARIES[lib]) is None:
            print(f"{lib} is not installed (pip install 'ktcluster[bench]'): left out")
        else:
            libs.append(lib)
    from ktcluster.testing import server_command, start_cluster
    with contextlib.ExitStack() as stack:
        if args.servers:
            servers, pids, description = args.servers.split(","), [], args.servers
        else:
            started = stack.enter_context(start_cluster(3))
            servers = [s.address for s in started]
            pids = [s.pid for s in started if s.pid is not None]
            description = f"3 x {' '.join(server_command())}"
        print(f"servers: {description}; {os.cpu_count()} CPUs; wrk {args.threads} thread(s), "
              f"{args.duration} s per run, {args.rounds} rounds", flush=True)
        preload(servers)
        apps = {lib: stack.enter_context(app_process(lib, servers)) for lib in libs}
        Bench(args, apps, pids, servers).run()


# -- the app (child process, monkey-patched) ----------------------------------------------------------

@dataclass
class Ops:
    """What the app needs from a client library."""

    get: Callable[[str], bytes | None]
    set: Callable[[str, bytes], object]
    incr: Callable[[str], int]
    get_bulk: Callable[[list[str]], dict[str, bytes]]


def ktcluster_ops(servers: list[str]) -> Ops:
    from ktcluster import KT_PACKER_BYTES, Cluster

    cluster = Cluster(servers, pack_type=KT_PACKER_BYTES)
    return Ops(cluster.get, lambda key, value: cluster.set(key, value, expire=EXPIRE), cluster.increment,
               cluster.get_bulk)


def _routed(servers: list[str], bulk: Callable[[str, list[str]], dict[str, bytes]]
            ) -> tuple[Callable[[str], str], Callable[[list[str]], dict[str, bytes]]]:
    """uhashring's ketama ring over ``servers``: the node of a key, and a get_bulk calling
    ``bulk(node, keys)`` for each node in turn."""
    from uhashring import HashRing

    ring = HashRing(nodes=servers, hash_fn="ketama")

    def get_bulk(keys: list[str]) -> dict[str, bytes]:
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(ring.get_node(key), []).append(key)
        found: dict[str, bytes] = {}
        for node, node_keys in groups.items():
            found.update(bulk(node, node_keys))
        return found

    return ring.get_node, get_bulk


def ukt_ops(servers: list[str]) -> Ops:
    import ukt

    clients = {}
    for server in servers:
        host, port = server.rsplit(":", 1)
        clients[server] = ukt.KyotoTycoon(host, int(port), timeout=TIMEOUT, serializer=ukt.KT_NONE)
    node, get_bulk = _routed(servers, lambda name, keys: clients[name].get_bulk(keys))
    return Ops(lambda key: clients[node(key)].get(key),
               lambda key, value: clients[node(key)].set(key, value, expire_time=EXPIRE),
               lambda key: clients[node(key)].increment(key), get_bulk)


class NgClients:
    """Connected python-kyototycoon-ng clients of one node and protocol: a free list,
    grown on demand (ng has one connection per client object and no pool)."""

    def __init__(self, server: str, binary: bool) -> None:
        self.host, port = server.rsplit(":", 1)
        self.port = int(port)
        self.binary = binary
        self.free: list[Any] = []

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        import kyototycoon as ng

        client = self.free.pop() if self.free else \
            ng.KyotoTycoon(binary=self.binary, pack_type=ng.KT_PACKER_BYTES).connect(self.host, self.port, TIMEOUT)
        try:
            yield client
        except BaseException:
            client.close()
            raise
        self.free.append(client)


def ng_ops(servers: list[str]) -> Ops:
    binary = {server: NgClients(server, binary=True) for server in servers}
    http = {server: NgClients(server, binary=False) for server in servers}

    def call(clients: dict[str, NgClients], node: str, op: Callable[[Any], Any]) -> Any:
        with clients[node].client() as client:
            return op(client)

    node, get_bulk = _routed(servers, lambda name, keys: call(binary, name, lambda c: c.get_bulk(keys)))
    return Ops(lambda key: call(binary, node(key), lambda c: c.get(key)),
               lambda key, value: call(binary, node(key), lambda c: c.set(key, value, EXPIRE)),
               lambda key: call(http, node(key), lambda c: c.increment(key, 1)), get_bulk)


class GcClock:
    """Seconds this process spent in the cyclic garbage collector (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def make_app(ops: Ops) -> Callable[[dict, Callable[..., object]], Iterable[bytes]]:
    """The WSGI app over ``ops``; ``GET /_stats`` answers the process's CPU seconds, its
    seconds in the garbage collector and the errors counted since the last ``/_stats``."""
    errors: Counter[str] = Counter()
    gc_clock = GcClock()

    def handle(method: str, op: str, arg: str, environ: dict) -> tuple[str, bytes]:
        if op == "get" and method == "GET":
            value = ops.get(f"k:{arg}")
            if value is None:
                raise LookupError(f"k:{arg} is missing")
            return "200 OK", value
        if op == "set" and method == "PUT":
            ops.set(f"s:{arg}", environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            return "204 No Content", b""
        if op == "incr" and method == "POST":
            return "200 OK", str(ops.incr(f"c:{int(arg) % COUNTERS}")).encode()
        if op == "bulk" and method == "GET":
            first = int(arg)
            found = ops.get_bulk([f"k:{i}" for i in range(first, first + BULK)])
            if len(found) != BULK:
                raise LookupError(f"{BULK - len(found)} of {BULK} keys missing")
            return "200 OK", b"".join(found.values())
        if op == "_stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            body = json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "gc": gc_clock.seconds,
                               "errors": errors}).encode()
            errors.clear()
            return "200 OK", body
        return "404 Not Found", b""

    def app(environ: dict, start: Callable[..., object]) -> Iterable[bytes]:
        _, op, arg = (environ["PATH_INFO"] + "/").split("/", 3)[:3]
        try:
            status, body = handle(environ["REQUEST_METHOD"], op, arg, environ)
        except Exception as exc:  # whatever the library raised: counted, and answered 500
            inner = getattr(exc, "errors", None)  # PartialFailureError: what failed on the nodes
            causes = "+".join(sorted({type(e).__name__ for e in inner.values()})) if isinstance(inner, dict) else ""
            errors[type(exc).__name__ + (f"({causes})" if causes else "")] += 1
            status, body = "500 Internal Server Error", str(exc).encode()
        start(status, [("Content-Length", str(len(body)))])
        return [body]

    return app


def serve(lib: str, servers: list[str], port: int) -> None:
    import socket

    from gevent.pywsgi import WSGIServer

    class NoDelayWSGIServer(WSGIServer):
        def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    ops = {"ktcluster": ktcluster_ops, "ukt": ukt_ops, "ng": ng_ops}[lib](servers)
    server = NoDelayWSGIServer(("127.0.0.1", port), make_app(ops), log=None, backlog=2048)
    server.serve_forever()


# -- the driver ------------------------------------------------------------------------------------

def preload(servers: list[str]) -> None:
    from ktcluster import KT_PACKER_BYTES, Cluster

    with Cluster(servers, pack_type=KT_PACKER_BYTES) as cluster:
        for start in range(0, RECORDS, 1000):
            cluster.set_bulk({f"k:{i}": VALUE for i in range(start, start + 1000)})


@contextlib.contextmanager
def app_process(lib: str, servers: list[str]) -> Iterator[App]:
    from ktcluster.testing import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", lib, "--port", str(port),
                             "--servers", ",".join(servers)])
    app = App(lib, f"http://127.0.0.1:{port}", proc.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                app.stats()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {lib} app did not start") from None
                time.sleep(0.1)
        yield app
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class App:
    lib: str
    url: str
    pid: int

    def stats(self) -> dict[str, Any]:
        """The app's CPU seconds so far and its errors since the last call."""
        with urllib.request.urlopen(self.url + "/_stats", timeout=30) as resp:
            return json.loads(resp.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WRK_SCRIPT = """
local kind, records, counters, span = "%(kind)s", %(records)d, %(counters)d, %(span)d
local body = string.rep("v", 100)
local threads, requests, n = 0, {}, 0
function setup(thread) threads = threads + 1; thread:set("seed", threads) end
local function make()
  if kind == "set" then return wrk.format("PUT", "/set/" .. math.random(0, records - 1), nil, body) end
  if kind == "incr" then return wrk.format("POST", "/incr/" .. math.random(0, counters - 1)) end
  if kind == "bulk" then return wrk.format("GET", "/bulk/" .. math.random(0, records - span)) end
  if kind == "void" then return wrk.format("GET", "/rpc/void") end
  return wrk.format("GET", "/get/" .. math.random(0, records - 1))
end
function init(args)  -- 4096 random requests made once, then sent in turn (wrk's CPU per request stays low)
  math.randomseed(os.time() * 100 + (seed or 0))
  for i = 1, 4096 do requests[i] = make() end
end
function request() n = n %% 4096 + 1; return requests[n] end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\n{"requests": %%d, "us": %%d, "non2xx": %%d, "socket": %%d, "p50": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Run:
    """One wrk run's figures."""

    rate: float          #: successful requests per second
    p50: float           #: ms
    p99: float           #: ms
    errors: int          #: non-2xx answers and socket errors
    app_us: float        #: CPU µs of the app process per request
    gc_us: float         #: of which in the garbage collector
    kt_us: float | None  #: CPU µs of the KT servers per request
    wrk_us: float        #: CPU µs of wrk per request
    seconds: float


def wrk(url: str, kind: str, clients: int, duration: int, threads: int) -> tuple[dict[str, int], float]:
    """Run wrk; its figures (see WRK_SCRIPT's done()) and its CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % {"kind": kind, "records": RECORDS, "counters": COUNTERS, "span": BULK})
        script.flush()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(["wrk", "-t", str(min(threads, clients)), "-c", str(clients), "-d", f"{duration}s",
                              "--timeout", "60s", "-s", script.name, url],
                             capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(out.strip().splitlines()[-1]), cpu


@dataclass
class Cell:
    """Every run of one (library, endpoint, clients), and the app's error classes."""

    runs: list[Run] = field(default_factory=list)
    causes: Counter[str] = field(default_factory=Counter)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def figures(self) -> str:
        """req/s, p50, p99, app CPU, gc, kt CPU, errors/10 s: the columns of the table."""
        kt = "-" if self.runs[0].kt_us is None else f"{self.median('kt_us'):.0f}"
        return (f"{self.median('rate'):>9,.0f}{self.median('p50'):>9.1f}{self.median('p99'):>9.1f}"
                f"{self.median('app_us'):>9.0f}{self.median('gc_us'):>6.0f}{kt:>8}{self.errors_per_10s():>9.1f}")

    def errors_per_10s(self) -> float:
        return 10 * sum(r.errors for r in self.runs) / sum(r.seconds for r in self.runs)


class Bench:
    def __init__(self, args: argparse.Namespace, apps: dict[str, App], kt_pids: list[int],
                 servers: list[str]) -> None:
        self.args = args
        self.apps = apps
        self.kt_pids = kt_pids
        self.servers = servers
        self.clients = [int(c) for c in args.clients.split(",")]
        self.endpoints = args.endpoints.split(",")
        self.cells: dict[tuple[str, str, int], Cell] = {}

    def kt_cpu(self) -> float | None:
        return sum(cpu_seconds(pid) for pid in self.kt_pids) if self.kt_pids else None

    def measure(self, app: App, kind: str, clients: int, duration: int) -> tuple[Run, Counter[str]]:
        start, kt_start = app.stats(), self.kt_cpu()
        figures, wrk_cpu = wrk(app.url, kind, clients, duration, self.args.threads)
        end, kt_end = app.stats(), self.kt_cpu()
        seconds = figures["us"] / 1e6
        good = figures["requests"] - figures["non2xx"]
        per_request = 1e6 / max(figures["requests"], 1)
        kt_us = None if kt_start is None or kt_end is None else (kt_end - kt_start) * per_request
        run = Run(good / seconds, figures["p50"] / 1000, figures["p99"] / 1000,
                  figures["non2xx"] + figures["socket"], (end["cpu"] - start["cpu"]) * per_request,
                  (end["gc"] - start["gc"]) * per_request, kt_us, wrk_cpu * per_request, seconds)
        return run, Counter(end["errors"])

    def run(self) -> None:
        libs = list(self.apps)
        print(f"warm-up: {self.args.warmup:g} s per library and endpoint at {max(self.clients)} clients", flush=True)
        for kind in self.endpoints:
            for lib in libs:
                self.measure(self.apps[lib], kind, max(self.clients), self.args.warmup)
        for rnd in range(self.args.rounds):
            order = libs[rnd % len(libs):] + libs[:rnd % len(libs)]
            for clients in self.clients:
                for kind in self.endpoints:
                    for lib in order:
                        run, causes = self.measure(self.apps[lib], kind, clients, self.args.duration)
                        cell = self.cells.setdefault((lib, kind, clients), Cell())
                        cell.runs.append(run)
                        cell.causes.update(causes)
            print(f"round {rnd + 1} of {self.args.rounds} done", flush=True)
        self.report(libs)

    def report(self, libs: list[str]) -> None:
        print(f"\nmedians of {self.args.rounds} rounds; req/s counts 2xx answers; CPU in µs per request "
              f"(app: the app's process, gc: of which its garbage collector; kt: the {len(self.servers)} "
              f"servers together)")
        head = (f"{'endpoint':<9}{'clients':>8}  {'library':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                f"{'app CPU':>9}{'gc':>6}{'kt CPU':>8}{'err/10s':>9}")
        print(head)
        print("-" * len(head))
        for clients in self.clients:
            for kind in self.endpoints:
                for i, lib in enumerate(libs):
                    print(f"{kind if i == 0 else '':<9}{clients if i == 0 else '':>8}  {lib:<10}"
                          f"{self.cells[(lib, kind, clients)].figures()}")
        if "ktcluster" in libs and len(libs) > 1:
            self.ratios([lib for lib in libs if lib != "ktcluster"])
        print("\nerrors by class (all rounds):")
        for (lib, kind, clients), cell in self.cells.items():
            if cell.causes:
                print(f"  {lib:<10} {kind:<5} {clients:>5} clients: "
                      + ", ".join(f"{name} {n}" for name, n in cell.causes.most_common()))
        self.headroom()

    def ratios(self, peers: list[str]) -> None:
        """ktcluster / peer, round by round (the libraries of a round ran back to back): the
        median and the range of the rounds' ratios, and the target against ukt."""
        print(f"\nktcluster / peer, paired by round: median (lowest-highest) of {self.args.rounds} rounds")
        head = f"{'endpoint':<9}{'clients':>8}" + "".join(f"{'req/s vs ' + p:>22}{'p99 vs ' + p:>22}" for p in peers)
        print(head)
        print("-" * len(head))
        missed = []
        for clients in self.clients:
            for kind in self.endpoints:
                ours = self.cells[("ktcluster", kind, clients)].runs
                line = f"{kind:<9}{clients:>8}"
                for peer in peers:
                    theirs = self.cells[(peer, kind, clients)].runs
                    rate = [a.rate / b.rate for a, b in zip(ours, theirs, strict=True)]
                    p99 = [a.p99 / b.p99 for a, b in zip(ours, theirs, strict=True)]
                    for values in (rate, p99):
                        line += f"{f'{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})':>22}"
                    if peer == "ukt" and (statistics.median(rate) < 1.0 or statistics.median(p99) > 1.0):
                        every = max(rate) < 1.0 or min(p99) > 1.0
                        missed.append(f"{kind} at {clients} clients ({'every round' if every else 'the median'})")
                print(line)
        if "ukt" in peers:
            print("\ntarget (ktcluster >= 1.0x ukt req/s and p99 <= ukt, median of the rounds): "
                  + ("met everywhere" if not missed else "missed: " + "; ".join(missed)))

    def headroom(self) -> None:
        """wrk's CPU per request during the runs, and wrk alone against a KT node."""
        runs = [r for cell in self.cells.values() for r in cell.runs]
        busiest = max(r.wrk_us * r.rate for r in runs) / 1e6
        print(f"\nload generator: wrk used {statistics.median(r.wrk_us for r in runs):.0f} µs CPU per request "
              f"(median; the apps {statistics.median(r.app_us for r in runs):.0f} µs), at most "
              f"{busiest:.0%} of one core in a run")
        for clients in self.clients:
            figures, cpu = wrk(f"http://{self.servers[0]}", "void", clients, 3, self.args.threads)
            rate = figures["requests"] / (figures["us"] / 1e6)
            print(f"  wrk alone against a KT node's /rpc/void, {clients} clients: {rate:,.0f} req/s, "
                  f"{1e6 * cpu / max(figures['requests'], 1):.0f} µs CPU per request")


if __name__ == "__main__":
    main()
