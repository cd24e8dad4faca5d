"""Cluster speed: parallel fan-out, pooled concurrency under gevent, and routing overhead.

    python benchmarks/cluster.py                  # fresh servers ($KT_SERVER_BIN or embedded)
    python benchmarks/cluster.py --rtt 0.005

1. fan-out: get_bulk / set_bulk of 1000 keys over 4 nodes, each behind a delay proxy
   adding ``--rtt`` seconds per round trip (one proxy process per node).  The cluster's
   parallel call is compared with the same call on one node holding all the keys (target:
   <= 1.3x its latency), with one node's own share, and with the nodes called one at a
   time.  Measured with threads, and again in a process that did
   ``gevent.monkey.patch_all()``.
2. greenlets: 200 greenlets doing get() through a cluster whose pool has 16 connections,
   against the same with 1 connection (target >= 2x throughput), with and without the
   delay proxy.
3. overhead: a one-node Cluster against KyotoTycoon on the same node, binary protocol,
   one thread (target: at most 10% slower): end-to-end throughput (noisy on a shared
   machine), and the cluster's own work per call (routing, retry policy, breaker, fan-out,
   merging; measured against a stub client) as a share of one single-client call.
4. big bulks: get_bulk / set_bulk of 100,000 keys over 4 nodes (no delay proxy) against
   ukt calling the nodes in turn (target >= 1.3x its records/s): ``big_bulk.py --nodes 4``,
   which also measures one node.

Prints numbers and ratios; it never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NODES = 4
KEYS = 1000


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, default=0.002, help="round-trip delay added by the proxies (s)")
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best one counts")
    parser.add_argument("--child", choices=["threads", "gevent", "proxies"], help=argparse.SUPPRESS)
    parser.add_argument("--servers", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.child == "gevent":
        from gevent import monkey
        monkey.patch_all()
    if args.child == "proxies":
        return _serve_proxies(args)
    if args.child:
        return _measure(args)

    from ktcluster.testing import server_command, start_cluster
    print(f"server: {' '.join(server_command())}; added round trip: {args.rtt * 1000:g} ms; "
          f"{os.cpu_count()} CPUs")
    with start_cluster(NODES) as servers:
        addresses = ",".join(s.address for s in servers)
        for mode in ("threads", "gevent"):
            print(f"\n=== {mode} ===", flush=True)
            subprocess.run([sys.executable, __file__, "--child", mode, "--servers", addresses,
                            "--rtt", str(args.rtt), "--duration", str(args.duration),
                            "--rounds", str(args.rounds)], check=True)
    print("\n=== big bulks ===", flush=True)
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "big_bulk.py"), "--nodes", str(NODES),
                    "--rounds", str(args.rounds)], check=True)


# -- delay proxies in their own process ---------------------------------------------------------------

def _serve_proxies(args: argparse.Namespace) -> None:
    """Child: a FaultProxy per server, addresses printed as JSON, runs until stdin closes."""
    from ktcluster.testing import FaultProxy
    proxies = [FaultProxy(addr, latency=args.rtt).start() for addr in args.servers.split(",")]
    print(json.dumps([p.address for p in proxies]), flush=True)
    sys.stdin.read()
    for proxy in proxies:
        proxy.stop()


@contextlib.contextmanager
def delay_proxies(servers: list[str], rtt: float) -> Iterator[list[str]]:
    """One delay proxy per server, each in its own process (so they do not share a GIL)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "proxies", "--servers", server,
                               "--rtt", str(rtt)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for server in servers]
    try:
        yield [json.loads(proc.stdout.readline())[0] for proc in procs]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)


# -- measurements -------------------------------------------------------------------------------------

def best_rate(fn: Callable[[], object], duration: float, rounds: int) -> float:
    from _common import ops_per_second
    return max(ops_per_second(fn, duration) for _ in range(rounds))


def _measure(args: argparse.Namespace) -> None:
    servers = args.servers.split(",")
    with delay_proxies(servers, args.rtt) as proxied:
        fan_out(proxied, args)
    if args.child == "gevent":
        with delay_proxies(servers[:1], args.rtt) as proxied:
            greenlets(proxied[0], "with the delay proxy", args)
        greenlets(servers[0], "direct (loopback)", args)
    else:
        overhead(servers[0], args)


def fan_out(servers: list[str], args: argparse.Namespace) -> None:
    from ktcluster import KT_PACKER_BYTES, KyotoTycoon
    from ktcluster.cluster import Cluster

    cluster = Cluster(servers, pack_type=KT_PACKER_BYTES)
    keys = [f"fan:{i:05d}" for i in range(KEYS)]
    data = dict.fromkeys(keys, b"x" * 100)
    cluster.set_bulk(data)
    first = cluster.ring.nodes[0]
    shard = [k for k in keys if cluster.node_for(k) == first]
    shard_data = {k: data[k] for k in shard}
    shards = {n: [k for k in keys if cluster.node_for(k) == n] for n in cluster.ring.nodes}
    clients = {}
    for name in shards:
        host, port = cluster.nodes[name].rsplit(":", 1)
        clients[name] = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES).connect(host, int(port))
    one = clients[first]
    rows = []
    for op, whole, single, sequential, parallel in [
        ("get_bulk", lambda: one.get_bulk(keys), lambda: one.get_bulk(shard),
         lambda: [clients[n].get_bulk(s) for n, s in shards.items()], lambda: cluster.get_bulk(keys)),
        ("set_bulk", lambda: one.set_bulk(data), lambda: one.set_bulk(shard_data),
         lambda: [clients[n].set_bulk({k: data[k] for k in s}) for n, s in shards.items()],
         lambda: cluster.set_bulk(data)),
    ]:
        lat = {name: 1000 / best_rate(fn, args.duration, args.rounds)
               for name, fn in [("whole", whole), ("shard", single), ("sequential", sequential),
                                ("parallel", parallel)]}
        rows.append((op, lat))
    print(f"1. fan-out, {KEYS} keys over {NODES} nodes, +{args.rtt * 1000:g} ms per round trip "
          f"(latency per call, ms)")
    print(f"   {'op':<10}{'one node, 1000 keys':>21}{'one node, ' + str(len(shard)) + ' keys':>20}"
          f"{'nodes in turn':>15}{'cluster':>9}{'cluster / one node':>24}{'vs nodes in turn':>18}")
    for op, lat in rows:
        print(f"   {op:<10}{lat['whole']:>21.2f}{lat['shard']:>20.2f}{lat['sequential']:>15.2f}"
              f"{lat['parallel']:>9.2f}{lat['parallel'] / lat['whole']:>14.2f}x (<= 1.3)"
              f"{lat['sequential'] / lat['parallel']:>17.2f}x")
    cluster.close()
    for c in clients.values():
        c.close()


def greenlets(server: str, label: str, args: argparse.Namespace) -> None:
    from ktcluster import KT_PACKER_BYTES
    from ktcluster.cluster import Cluster

    rates = {}
    for size in (16, 1):
        cluster = Cluster([server], pack_type=KT_PACKER_BYTES, pool_size=size, pool_timeout=60)
        cluster.set("g", b"v" * 100)
        best = max(_greenlet_rate(cluster, 200, args.duration) for _ in range(args.rounds))
        rates[size] = best
        cluster.close()
    print(f"2. 200 greenlets doing get(), {label}: pool of 16 {rates[16]:,.0f} ops/s, "
          f"1 connection {rates[1]:,.0f} ops/s -> {rates[16] / rates[1]:.2f}x (target >= 2x)")


def _greenlet_rate(cluster, n: int, duration: float) -> float:
    """get() calls per second made by ``n`` greenlets sharing ``cluster``."""
    import gevent

    done = [0]
    stop_at = time.perf_counter() + duration

    def worker() -> None:
        while time.perf_counter() < stop_at:
            cluster.get("g")
            done[0] += 1

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(n)])
    return done[0] / (time.perf_counter() - started)


class _Echo:
    """A transport that answers binary requests at once, without a socket: every key read
    has the value b"v", every record written or removed counts.  The replies are encoded
    with the protocol's functions and decoded by the request's own decoder, so what is
    measured through it is the client's own work, codecs included.  It is also its own
    pool and connection for a bulk call's scatter-gather (whose ``poll`` finds the
    connection's descriptor, a pipe holding a byte, always readable)."""

    broken = False

    def __init__(self) -> None:
        from ktcluster.protocol import binary

        self.binary = binary
        self.host_header = b"echo"
        self.db_names: dict[bytes, int] = {}
        self.pool = self
        self._readable, writer = os.pipe()
        os.write(writer, b"!")
        self._answer = None

    def try_checkout(self):
        return self

    def checkin(self, conn, discard=False):
        pass

    def fileno(self):
        return self._readable

    def start(self, conn, request, deadline=None):
        self._answer = self.answer(request)
        return (None, False)

    def finish(self, conn, request, sent):
        return self._answer

    def run(self, op, deadline=None, timeout=None):
        try:
            request = op.send(None)
            while True:
                request = op.send(self.answer(request))
        except StopIteration as done:
            return done.value

    def answer(self, request):
        b = self.binary
        data = request.data if isinstance(request.data, bytes) else b"".join(request.data)
        magic, _, count, pos = b.decode_request_header(data)
        if magic == b.MAGIC_GET_BULK:
            records = []
            for _ in range(count):
                (dbidx, key), pos = b.decode_key_record(data, pos)
                records.append((dbidx, key, b"v", b.XTMAX))
            reply = b.encode_get_bulk_reply(records)
        else:
            reply = b.encode_count_reply(magic, count)
        return request.decode(reply)[0]


def overhead(server: str, args: argparse.Namespace) -> None:
    from ktcluster import KT_PACKER_BYTES, KyotoTycoon
    from ktcluster.cluster import Cluster
    from ktcluster.ops import BINARY

    host, port = server.rsplit(":", 1)
    single = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES).connect(host, int(port))
    cluster = Cluster([server], pack_type=KT_PACKER_BYTES)
    value = b"v" * 100
    bulk = {f"o:{i:03d}": value for i in range(100)}
    cases = [
        ("get", lambda c: c.get("o:000")),
        ("set", lambda c: c.set("o:000", value)),
        ("get_bulk 100", lambda c: c.get_bulk(list(bulk))),
        ("set_bulk 100", lambda c: c.set_bulk(bulk)),
    ]
    single.set_bulk(bulk)
    # The cluster's own work per call, measured with the node's transport replaced by a stub that
    # answers at once: steady even on a busy machine, unlike the end-to-end figures.
    stubbed = Cluster([server], pack_type=KT_PACKER_BYTES)
    echo = _Echo()
    stubbed._topology.members[server].transport = echo  # type: ignore[assignment]
    bare = KyotoTycoon._over(echo, wire=BINARY, pack_type=KT_PACKER_BYTES)  # type: ignore[arg-type]
    print("3. overhead: one-node Cluster vs KyotoTycoon, binary, one thread")
    print(f"   {'op':<14}{'single ops/s':>14}{'cluster ops/s':>15}{'wall':>9}"
          f"{'cluster work/call':>20}{'of a single call':>18}   (target <= +10%)")
    for name, fn in cases:
        rate: dict[str, float] = {}
        for _ in range(args.rounds):
            for label, client in (("single", single), ("cluster", cluster)):
                rate[label] = max(rate.get(label, 0.0), best_rate(lambda c=client, f=fn: f(c), args.duration, 1))
        own_us = 1e6 / best_rate(lambda f=fn: f(stubbed), args.duration, args.rounds) \
            - 1e6 / best_rate(lambda f=fn: f(bare), args.duration, args.rounds)
        print(f"   {name:<14}{rate['single']:>14,.0f}{rate['cluster']:>15,.0f}"
              f"{rate['single'] / rate['cluster'] - 1:>+9.1%}{own_us:>17.1f} us"
              f"{own_us * rate['single'] / 1e6:>+18.1%}")
    single.close()
    cluster.close()


if __name__ == "__main__":
    main()
