"""asyncio vs blocking threads vs gevent: the same client calls at 1, 50, 200 and 1000 concurrent tasks.

    python benchmarks/aio.py                              # 3 fresh servers ($KT_SERVER_BIN or embedded)
    KT_SERVER_BIN=/path/to/ktserver python benchmarks/aio.py --rounds 5
    python benchmarks/aio.py --servers kt1:1978,kt2:1978,kt3:1978 --tasks 50,200 --uvloop

Each front end runs in a process of its own (gevent patches the whole process):
``ktcluster.aio`` with N tasks on one event loop (``--uvloop``: uvloop's loop, when
installed), the blocking client with N threads, and the blocking client under
``gevent.monkey.patch_all()`` with N greenlets.  Every task calls in a loop for
``--duration`` seconds, sharing one client (one pool of ``--pool-size`` connections per
server).  Workloads:

* ``get``: ``KyotoTycoon.get`` of one 100-byte record over the binary protocol (one server);
* ``get_bulk``: ``Cluster.get_bulk`` of 20 keys over the three servers (a fan-out: one
  task / thread / greenlet per node).

Printed per workload and concurrency: the median over ``--rounds`` interleaved rounds of
ops/s, the p99 latency of a call, and the client process's CPU per call (user + system,
what the client itself costs), and asyncio's ops/s as a ratio of gevent's and of the
threads' (target: asyncio at or above gevent at 50 tasks and more).  It never asserts.
"""

from __future__ import annotations

import sys

if "--child" in sys.argv and sys.argv[sys.argv.index("--child") + 1] == "gevent":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

from ktcluster import KT_PACKER_BYTES  # noqa: E402
from ktcluster.address import parse_address  # noqa: E402
from ktcluster.retry import RetryPolicy  # noqa: E402
from ktcluster.testing import server_command, start_cluster  # noqa: E402

MODES = ("asyncio", "gevent", "threads")
WORKLOADS = ("get", "get_bulk")
BULK_KEYS = [f"aio:bulk:{i}" for i in range(20)]
VALUE = b"v" * 100


# -- the child: one front end, one workload, one concurrency ---------------------------------------


def _report(latencies: list[list[float]], elapsed: float, cpu: float, errors: int) -> dict[str, Any]:
    every = sorted(x for per_task in latencies for x in per_task)
    calls = len(every)
    return {"ops": calls / elapsed, "p99_ms": every[int(0.99 * (calls - 1))] * 1e3 if calls else None,
            "cpu_us": cpu / calls * 1e6 if calls else None, "calls": calls, "errors": errors}


def _blocking_call(workload: str, servers: list[str], pool_size: int) -> tuple[Callable[[], object], Any]:
    from ktcluster import Cluster, KyotoTycoon

    if workload == "get":
        host, port = parse_address(servers[0])
        kt = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES, pool_size=pool_size, pool_timeout=60)
        kt.open(host, port)
        return (lambda: kt.get("aio:one")), kt
    cluster = Cluster(servers, pool_size=pool_size, pool_timeout=60, retry=RetryPolicy(deadline=60))
    return (lambda: cluster.get_bulk(BULK_KEYS)), cluster


def run_blocking(mode: str, workload: str, servers: list[str], tasks: int, duration: float,
                 pool_size: int) -> dict[str, Any]:
    """N threads (greenlets under gevent) calling for ``duration`` seconds."""
    call, client = _blocking_call(workload, servers, pool_size)
    call()  # connect
    latencies: list[list[float]] = [[] for _ in range(tasks)]
    errors = [0]
    start_line = threading.Event()
    end = [0.0]

    def worker(mine: list[float]) -> None:
        start_line.wait()
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= end[0]:
                return
            try:
                call()
            except Exception:  # noqa: BLE001 - counted, not expected
                errors[0] += 1
                continue
            mine.append(clock() - t0)

    threads = [threading.Thread(target=worker, args=(latencies[i],)) for i in range(tasks)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    started = time.perf_counter()
    end[0] = started + duration
    start_line.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    client.close()
    return _report(latencies, elapsed, cpu, errors[0])


def run_asyncio(workload: str, servers: list[str], tasks: int, duration: float, pool_size: int,
                use_uvloop: bool) -> dict[str, Any]:
    import asyncio

    from ktcluster import aio

    async def main() -> dict[str, Any]:
        if workload == "get":
            host, port = parse_address(servers[0])
            kt = aio.KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES, pool_size=pool_size, pool_timeout=60)
            kt.open(host, port)
            client: Any = kt

            def call() -> Any:
                return kt.get("aio:one")
        else:
            client = aio.Cluster(servers, pool_size=pool_size, pool_timeout=60, retry=RetryPolicy(deadline=60))

            def call() -> Any:
                return client.get_bulk(BULK_KEYS)
        await call()  # connect
        latencies: list[list[float]] = [[] for _ in range(tasks)]
        errors = 0

        async def worker(mine: list[float]) -> None:
            nonlocal errors
            clock = time.perf_counter
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                try:
                    await call()
                except Exception:  # noqa: BLE001 - counted, not expected
                    errors += 1
                    continue
                mine.append(clock() - t0)

        cpu0 = time.process_time()
        started = time.perf_counter()
        end = started + duration
        await asyncio.gather(*(worker(latencies[i]) for i in range(tasks)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        client.close()
        return _report(latencies, elapsed, cpu, errors)

    if use_uvloop:
        import uvloop

        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


def child(args: argparse.Namespace) -> None:
    servers = args.servers.split(",")
    if args.child == "asyncio":
        result = run_asyncio(args.workload, servers, args.tasks, args.duration, args.pool_size, args.uvloop)
    else:
        result = run_blocking(args.child, args.workload, servers, args.tasks, args.duration, args.pool_size)
    print(json.dumps(result))


# -- the parent: servers, interleaved rounds, the table ---------------------------------------------


@contextlib.contextmanager
def servers_for(args: argparse.Namespace) -> Iterator[tuple[list[str], str]]:
    if args.servers:
        yield args.servers.split(","), args.servers
        return
    with start_cluster(3) as srvs:
        yield [s.address for s in srvs], f"3 x {' '.join(server_command())}"


def load(servers: list[str]) -> None:
    from ktcluster import Cluster, KyotoTycoon

    host, port = parse_address(servers[0])
    with KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(host, port) as kt:
        kt.set("aio:one", VALUE)
    with Cluster(servers) as cluster:
        cluster.set_bulk(dict.fromkeys(BULK_KEYS, VALUE))


def run_child(args: argparse.Namespace, servers: list[str], mode: str, workload: str, tasks: int) -> dict[str, Any]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", mode, "--workload", workload, "--tasks",
            str(tasks), "--duration", str(args.duration), "--pool-size", str(args.pool_size),
            "--servers", ",".join(servers)] + (["--uvloop"] if args.uvloop and mode == "asyncio" else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration * 10 + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {workload} x{tasks} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(results: list[dict[str, Any]], field: str) -> float:
    values = [r[field] for r in results if r[field] is not None]
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", default=None, help="existing servers, host:port,host:port,...")
    parser.add_argument("--tasks", default="1,50,200,1000", help="concurrency levels")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are printed)")
    parser.add_argument("--pool-size", type=int, default=32, help="connections per server")
    parser.add_argument("--uvloop", action="store_true", help="run the asyncio front end on uvloop")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.tasks = int(args.tasks)
        child(args)
        return
    levels = [int(n) for n in args.tasks.split(",")]
    workloads = args.workloads.split(",")
    modes = args.modes.split(",")
    with servers_for(args) as (servers, description):
        load(servers)
        print(f"servers: {description}; pool {args.pool_size} per server; {args.rounds} rounds of "
              f"{args.duration:g} s; {os.cpu_count()} CPUs" + ("; asyncio on uvloop" if args.uvloop else ""))
        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for workload in workloads:
                for tasks in levels:
                    for mode in modes:
                        results.setdefault((workload, tasks, mode), []).append(
                            run_child(args, servers, mode, workload, tasks))
    head = f"{'workload':<10}{'tasks':>6}" + "".join(f"{m + ' ops/s':>16}" for m in modes)
    head += "".join(f"{m + ' p99 ms':>16}" for m in modes) + "".join(f"{m + ' CPU us':>16}" for m in modes)
    ratios = [m for m in modes if m != "asyncio"] if "asyncio" in modes else []
    head += "".join(f"{'asyncio/' + m:>18}" for m in ratios)
    print(head)
    print("-" * len(head))
    for workload in workloads:
        for tasks in levels:
            cell = {m: results[(workload, tasks, m)] for m in modes}
            line = f"{workload:<10}{tasks:>6}"
            line += "".join(f"{median(cell[m], 'ops'):>16,.0f}" for m in modes)
            line += "".join(f"{median(cell[m], 'p99_ms'):>16.2f}" for m in modes)
            line += "".join(f"{median(cell[m], 'cpu_us'):>16.1f}" for m in modes)
            line += "".join(f"{median(cell['asyncio'], 'ops') / median(cell[m], 'ops'):>17.2f}x" for m in ratios)
            errors = sum(r["errors"] for m in modes for r in cell[m])
            print(line + (f"   ({errors} errors)" if errors else ""))


if __name__ == "__main__":
    main()
