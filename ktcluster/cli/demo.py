"""``ktcluster demo``: a tour of ktcluster on three throw-away servers.

Starts three servers (the embedded one, or ``$KT_SERVER_BIN``) with update logs,
loads keys through a :class:`~ktcluster.Cluster` in bulk, shows how the ring
spread them, reads them back, stops one node to show the typed errors and the
circuit breaker, brings it back, and prints the tail of the merged replication
stream.  The servers are child processes in temporary directories: they are
stopped and removed when the demo ends, fails or is interrupted (Ctrl-C,
SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..cluster import Cluster
from ..errors import KyotoTycoonException, PartialFailureError
from ..health import HealthConfig
from ..packers import KT_PACKER_STRING
from ..replication import ReplicationStream
from ..retry import RetryPolicy
from ..testing import KTServer, server_command, using_real_server
from .progress import Progress
from .tail import record_to_json

__all__ = ["demo"]

_NAMES = ("kt1", "kt2", "kt3")
_BAR = 30


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo with KeyboardInterrupt, so the servers are
    stopped (SIGINT too: a process started in the background of a script inherits it ignored)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _servers() -> Iterator[list[KTServer]]:
    """Three servers with a persistent hash DB (so a restart keeps the data) and update logs;
    stopped on the way out, with Ctrl-C ignored while that happens."""
    servers: list[KTServer] = []
    try:
        for sid in range(1, len(_NAMES) + 1):
            servers.append(KTServer("casket.kch", args=["-ulog", "ulog", "-sid", str(sid)]))
            servers[-1].start()
        yield servers
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for srv in servers:
                srv.cleanup()
        finally:
            signal.signal(signal.SIGINT, previous)


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def demo(args: argparse.Namespace) -> int:
    keys_total = args.keys
    logging.getLogger("ktcluster.health").setLevel(logging.ERROR)  # step 4 shows the breaker itself
    with _signals_as_interrupt(), _servers() as servers:
        kind = "ktserver" if using_real_server() else "embedded server"
        _say(f"Started three Kyoto Tycoon servers ({kind}: {' '.join(server_command())}), "
             f"each with an update log:")
        nodes = {name: srv.address for name, srv in zip(_NAMES, servers, strict=True)}
        for sid, (name, address) in enumerate(nodes.items(), 1):
            _say(f"  {name}  {address}  sid {sid}  pid {servers[sid - 1].pid}")
        _say()
        # a short breaker backoff so the demo can show the node coming back without a long wait
        cluster = Cluster(nodes, pack_type=KT_PACKER_STRING, timeout=5.0,
                          health=HealthConfig(reset_timeout=0.2, max_reset_timeout=1.0),
                          retry=RetryPolicy(attempts=2, deadline=5.0))
        with cluster:
            keys = [f"user:{i:06d}" for i in range(keys_total)]
            _load(cluster, keys, args.quiet)
            _spread(cluster, keys_total)
            _read_back(cluster, keys)
            since = time.time()
            _node_down(cluster, servers[1], keys)
            _replication(cluster, since)
    _say()
    _say("Done: the three servers are stopped and their files removed.")
    return 0


def _load(cluster: Cluster, keys: list[str], quiet: bool) -> None:
    _say(f"1. Loading {len(keys):,} keys through Cluster.set_bulk (5,000 per call, split per node in parallel)")
    started = time.perf_counter()
    with Progress(len(keys), "   loading", enabled=not quiet) as bar:
        for i in range(0, len(keys), 5000):
            chunk = keys[i:i + 5000]
            cluster.set_bulk({key: f'{{"name": "user {key[5:]}", "visits": {n}}}' for n, key in enumerate(chunk)})
            bar.update(len(chunk))
    elapsed = time.perf_counter() - started
    _say(f"   stored {len(keys):,} keys in {elapsed:.2f}s ({len(keys) / elapsed:,.0f} keys/s)")
    _say()


def _spread(cluster: Cluster, total: int) -> None:
    _say("2. How the consistent-hash ring spread them (Cluster.per_node('count')):")
    counts = cluster.per_node("count")
    shares = cluster.ring.shares()
    for name, count in counts.items():
        share = count / total if total else 0.0
        _say(f"   {name} {'#' * round(share * _BAR):<{_BAR}} {count:>8,} keys ({share:.1%}; "
             f"ring share {shares[name]:.1%})")
    _say(f"   total {sum(counts.values()):,}; key 'user:000042' lives on {cluster.node_for('user:000042')}")
    _say()


def _read_back(cluster: Cluster, keys: list[str]) -> None:
    _say("3. Reading them all back with Cluster.get_bulk")
    started = time.perf_counter()
    found = 0
    for i in range(0, len(keys), 5000):
        found += len(cluster.get_bulk(keys[i:i + 5000]))
    elapsed = time.perf_counter() - started
    _say(f"   {found:,} of {len(keys):,} found in {elapsed:.2f}s ({len(keys) / elapsed:,.0f} keys/s)")
    _say(f"   cluster.get('user:000042') -> {cluster.get('user:000042')}")
    _say()


def _node_down(cluster: Cluster, victim: KTServer, keys: list[str]) -> None:
    name = _NAMES[1]
    sample = keys[:1000]
    own = next(k for k in keys if cluster.node_for(k) == name)
    other = next(k for k in keys if cluster.node_for(k) != name)
    _say(f"4. Stopping {name} (SIGTERM): errors are typed, and only its keys fail")
    victim.stop()
    for label, call in ((f"cluster.get({own!r})   [on {name}]", lambda: cluster.get(own)),
                        (f"cluster.get({own!r})   [again]", lambda: cluster.get(own))):
        started = time.perf_counter()
        try:
            call()
        except KyotoTycoonException as exc:
            _say(f"   {label}\n     -> {_error_line(exc)}  ({(time.perf_counter() - started) * 1000:.1f} ms)")
    _say(f"   cluster.get({other!r})   [on {cluster.node_for(other)}] -> {cluster.get(other)}")
    try:
        cluster.get_bulk(sample)
    except PartialFailureError as exc:
        _say(f"   cluster.get_bulk(1,000 keys) -> PartialFailureError: {len(exc.results):,} records from the "
             f"live nodes in .results, {len(exc.failed_keys):,} keys of {', '.join(exc.errors)} in .failed_keys")
    health = cluster.stats()["nodes"][name]["health"]
    _say(f"   breaker of {name}: {health['state']}, opened {health['opened']} time(s); down: {cluster.health.down()}")
    _say()
    _say(f"5. Restarting {name} on the same port (its casket.kch kept the data)")
    victim.restart()
    deadline = time.monotonic() + 10
    while True:  # the breaker lets one trial through after its backoff; then the node is back
        try:
            found = len(cluster.get_bulk(sample))
            break
        except PartialFailureError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    health = cluster.stats()["nodes"][name]["health"]
    _say(f"   breaker of {name}: {health['state']} again after a successful probe; "
         f"get_bulk(1,000 keys) -> {found:,} found")
    _say()


def _replication(cluster: Cluster, since: float) -> None:
    _say("6. The merged replication stream (Cluster.replication): every node's update log in one")
    _say("   (ts, node)-ordered stream. Six writes and a remove, as `ktcluster tail` prints them:")
    writes = {f"order:{i}": f"paid {10 * i} EUR" for i in range(1, 7)}
    for key, value in writes.items():
        cluster.set(key, value)
    cluster.remove("order:3")
    wanted = len(writes) + 1
    stream = cluster.replication(sid=65000, since=since - 1, idle_timeout=1.0)
    watchdog = threading.Timer(20.0, stream.close)  # never hang the demo on a silent stream
    watchdog.start()
    shown = 0
    try:
        with stream:
            for rec in _orders(stream):
                _say("   " + record_to_json(rec))
                shown += 1
                if shown >= wanted:
                    break
    finally:
        watchdog.cancel()
    if shown < wanted:
        _say(f"   (only {shown} of {wanted} records arrived in time)")


def _orders(stream: ReplicationStream) -> Iterator[dict[str, Any]]:
    """Records of the order:* keys (the restart of step 5 logs nothing else, but be explicit)."""
    for rec in stream:
        if rec.get("key", b"").startswith(b"order:"):
            yield rec

