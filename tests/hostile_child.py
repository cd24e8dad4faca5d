"""Run client calls against hostile servers, each in a forked process under a memory cap.

Used by tests/test_hostile.py: ``python hostile_child.py [--gevent] [--parallel N]`` reads a
JSON list of cases on stdin and prints one JSON result per case on stdout, in order.  With
``--gevent`` the process first does ``gevent.monkey.patch_all()``.

For each case a child is forked (the imports are done once, here); the child caps its
address space at its current size plus ``case["cap"]`` bytes (RLIMIT_AS), builds the
client, makes the call and reports what it raised (class names along its MRO), how long
it took, and its peak resident memory above what it had at fork.  A child still running
``case["kill_after"]`` seconds after it started is killed and reported as ``"HUNG"``.

A case: ``{"client": "http" | "binary" | "cluster" | "cluster_http" | "slave" | "stream",
"call": a name in CALLS, "address": "host:port", "timeout": s, "deadline": s (Cluster),
"options": {extra constructor arguments}, "cap": bytes, "kill_after": s}``; the clients
``"aio_http"``, ``"aio_binary"``, ``"aio_cluster"`` and ``"aio_cluster_http"`` are
ktcluster.aio's (each call runs in ``asyncio.run``).  The
``"storm"`` client is a Cluster of every address in ``"addresses"`` hammered by threads
(greenlets under gevent) for ``"seconds"``: see :func:`storm`.
"""

from __future__ import annotations

import sys

if "--gevent" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import asyncio  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from ktcluster import KT_PACKER_BYTES, Cluster, KyotoSlave, KyotoTycoon, ReplicationStream, aio  # noqa: E402
from ktcluster.address import parse_address  # noqa: E402
from ktcluster.errors import KyotoTycoonException  # noqa: E402
from ktcluster.health import HealthConfig  # noqa: E402
from ktcluster.retry import RetryPolicy  # noqa: E402


def storm(case: dict[str, Any]) -> str:
    """``case["threads"]`` workers call random operations on a Cluster of hostile nodes for
    ``case["seconds"]``: every call must end with a ktcluster error (or a value) within the
    deadline plus one second, and no connection may stay checked out."""
    retry = RetryPolicy(attempts=3, deadline=case["deadline"], backoff=0.01, max_backoff=0.05)
    cluster = Cluster(case["addresses"], timeout=case["timeout"], connect_timeout=case["timeout"],
                      pool_timeout=case["timeout"], retry=retry, fanout_workers=4,
                      health=HealthConfig(reset_timeout=0.05, max_reset_timeout=0.2))
    ops: list[Callable[[str], Any]] = [cluster.get, lambda k: cluster.get_bulk([k, k + "x", k + "y"]),
                                       lambda k: cluster.set(k, b"v"), cluster.remove,
                                       lambda k: cluster.set_bulk({k: b"1", k + "x": b"2"})]
    stop = time.monotonic() + case["seconds"]
    problems: list[str] = []
    counts = {"calls": 0, "typed": 0}

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop and not problems:
            started = time.monotonic()
            try:
                rnd.choice(ops)(f"k{rnd.randrange(1000)}")
            except KyotoTycoonException:
                counts["typed"] += 1
            except BaseException as exc:  # what the storm is looking for
                problems.append(f"untyped {exc!r}")
            counts["calls"] += 1
            if time.monotonic() - started > case["deadline"] + 1.0:
                problems.append(f"a call took {time.monotonic() - started:.2f} s")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(case["threads"])]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    time.sleep(case["timeout"] + 0.5)  # late shards (threads) finish and give their connections back
    in_use = {name: node["pool"]["in_use"] for name, node in cluster.stats()["nodes"].items()}
    if any(in_use.values()):
        problems.append(f"connections still checked out: {in_use}")
    cluster.close()
    if problems:
        raise AssertionError("; ".join(problems[:5]))
    return f"{counts['calls']} calls, {counts['typed']} typed errors"

CALLS: dict[str, Callable[[Any], Any]] = {
    "get": lambda c: c.get("k"),
    "get_with_expiry": lambda c: c.get_with_expiry("k"),
    "get_bulk": lambda c: c.get_bulk(["a", "b", "c"]),
    "set": lambda c: c.set("k", b"v"),
    "set_bulk": lambda c: c.set_bulk({"a": b"1", "b": b"2"}),
    "remove": lambda c: c.remove("k"),
    "check": lambda c: c.check("k"),
    "count": lambda c: c.count(),
    "status": lambda c: c.status(),
    "increment": lambda c: c.increment("n", 1),
    "increment_double": lambda c: c.increment_double("n", 1.5),
    "match_prefix": lambda c: c.match_prefix("a"),
    "play_script": lambda c: c.play_script("echo", {"a": "1"}),
    "consume": lambda s: next(iter(s.consume(ts=0))),
    "stream": lambda s: next(iter(s)),
    "storm": storm,
}


def make_client(case: dict[str, Any]) -> Any:
    kind = case["client"]
    if kind == "storm":
        return case
    host, port = parse_address(case["address"])
    options = dict(case.get("options", {}))
    timeout = case.get("timeout", 1.0)
    if kind in ("http", "binary", "aio_http", "aio_binary"):
        front = aio.KyotoTycoon if kind.startswith("aio_") else KyotoTycoon
        kt = front(binary=kind.endswith("binary"), pack_type=KT_PACKER_BYTES, **options)
        kt.open(host, port, timeout=timeout)
        return kt
    if kind in ("cluster", "cluster_http", "aio_cluster", "aio_cluster_http"):
        retry = RetryPolicy(attempts=3, deadline=case["deadline"], backoff=0.01, max_backoff=0.05)
        front = aio.Cluster if kind.startswith("aio_") else Cluster
        return front([case["address"]], binary=kind.endswith("cluster"), timeout=timeout, connect_timeout=timeout,
                     pool_timeout=timeout, retry=retry, **options)
    if kind == "slave":
        return KyotoSlave(1, host, port, timeout, **options)
    if kind == "stream":
        return ReplicationStream([case["address"]], sid=1, since=0, timeout=timeout, **options)
    raise ValueError(f"unknown client {kind!r}")


def vm_size() -> int:
    """This process's address-space size in bytes (what RLIMIT_AS counts)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """In the forked child: the call's outcome."""
    client = make_client(case)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limit = vm_size() + case["cap"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.monotonic()
    try:
        value = CALLS[case["call"]](client)
        if inspect.isawaitable(value):  # an asyncio client's call: on a loop of its own
            value = asyncio.run(value)
    except BaseException as exc:  # reported to the test, whatever it is
        outcome = {"error": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                   "message": str(exc)[:300], "request_sent": getattr(exc, "request_sent", None)}
    else:
        outcome = {"error": None, "value": repr(value)[:300]}
    outcome["elapsed"] = time.monotonic() - started
    outcome["rss_growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return outcome


def main() -> None:
    parallel = int(sys.argv[sys.argv.index("--parallel") + 1]) if "--parallel" in sys.argv else 1
    cases = json.load(sys.stdin)
    results: list[dict[str, Any] | None] = [None] * len(cases)
    out_dir = tempfile.mkdtemp(prefix="hostile-")
    running: dict[int, tuple[int, float]] = {}  # pid -> (case index, start time)
    todo = list(range(len(cases)))
    while todo or running:
        while todo and len(running) < parallel:
            index = todo.pop(0)
            pid = os.fork()
            if pid == 0:
                try:
                    result = run_case(cases[index])
                except BaseException as exc:  # the client could not even be built
                    result = {"error": "SETUP", "message": f"{type(exc).__name__}: {exc}"[:300]}
                with open(os.path.join(out_dir, str(index)), "w") as fh:
                    json.dump(result, fh)
                os._exit(0)
            running[pid] = (index, time.monotonic())
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            index, _ = running.pop(pid)
            try:
                with open(os.path.join(out_dir, str(index))) as fh:
                    results[index] = json.load(fh)
            except (OSError, ValueError):
                results[index] = {"error": "DIED", "message": "the child wrote no result"}
            continue
        now = time.monotonic()
        for pid, (index, started) in list(running.items()):
            if now - started > cases[index].get("kill_after", 60):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                running.pop(pid)
                results[index] = {"error": "HUNG", "elapsed": now - started}
        time.sleep(0.01)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
