"""Before and after: this tree's client against another revision's, same server, one run.

    python benchmarks/versus.py --baseline e4c33f9        # fresh server ($KT_SERVER_BIN or embedded)
    python benchmarks/versus.py --baseline HEAD~3 --rounds 30

``git archive REV ktcluster`` is unpacked in a temporary directory, and two worker
processes -- one importing that tree, one importing this one -- run the same calls
against the same server, a batch each in turn (which goes first alternates from round
to round), so that whatever else the machine does hits both alike.  Calls: a
``KyotoTycoon`` over the binary protocol and over HTTP (get, set, get_bulk and set_bulk
of 500 records) and a one-node ``Cluster`` (get, set, get_bulk and set_bulk of 100
records), 100-byte values, no serializer, one connection, one thread.

Printed per call: each tree's client CPU per call (process CPU time / calls, the least of
the batches: what the client itself costs, steadier than wall time), the ratio
``after / before`` (below 1: the change made it cheaper), and calls per second (the best
batch).  (The kernel splits CPU time into user and system time by sampling at its clock
ticks, too coarse for batches this short: only the total is printed.)  It never asserts.

With ``--instructions`` (needs valgrind) it counts instead, for the single-record calls
(or those named by ``--calls``), how many instructions the client executes per call:
each tree's worker runs under callgrind for ``--count`` calls and for none, and the
difference is divided by ``--count``.  The count is the same from run to run within a
few hundred instructions, whatever else the machine does: the figure to compare when
wall and CPU times are too noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VALUE = b"v" * 100


def calls(host: str, port: int) -> dict[str, Callable[[], object]]:
    """The calls measured, written against the API every revision has."""
    from ktcluster import KT_PACKER_BYTES, Cluster, KyotoTycoon

    binary = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES).connect(host, port)
    http = KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(host, port)
    cluster = Cluster([f"{host}:{port}"], pack_type=KT_PACKER_BYTES)
    big = {f"versus:{i:04d}": VALUE for i in range(500)}
    small = dict(list(big.items())[:100])
    binary.set_bulk(big)
    out: dict[str, Callable[[], object]] = {}
    for name, client, records in (("binary", binary, big), ("http", http, big), ("Cluster", cluster, small)):
        keys = list(records)
        out[f"{name} get"] = lambda c=client: c.get("versus:0000")
        out[f"{name} set"] = lambda c=client: c.set("versus:0000", VALUE)
        out[f"{name} get_bulk {len(keys)}"] = lambda c=client, k=keys: c.get_bulk(k)
        out[f"{name} set_bulk {len(keys)}"] = lambda c=client, r=records: c.set_bulk(r)
    return out


def worker(host: str, port: int, batch: float) -> None:
    """For each call name read on stdin, one batch of it: prints (calls/s, CPU s per call)."""
    sys.path.insert(0, str(HERE))
    from _common import timed_batch

    runs = calls(host, port)
    for run in runs.values():
        timed_batch(run, batch / 4)  # warm up
    print(json.dumps(list(runs)), flush=True)
    for line in sys.stdin:
        print(json.dumps(timed_batch(runs[line.strip()], batch)), flush=True)


def count(host: str, port: int, name: str, n: int) -> None:
    """Run ``name`` ``n`` times after a warm-up (the body of a callgrind measurement)."""
    run = calls(host, port)[name]
    for _ in range(200):
        run()
    for _ in range(n):
        run()


def instructions(tree: Path, host: str, port: int, name: str, n: int) -> float:
    """Instructions per call of ``name`` with ``tree``'s client (callgrind: ``n`` calls minus none)."""
    def collected(calls_made: int) -> int:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              str(Path(__file__).resolve()), "--counting", host, str(port), name, str(calls_made)],
                             env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree, capture_output=True, text=True,
                             check=True)
        return int(re.search(r"Collected : (\d+)", out.stderr).group(1))  # type: ignore[union-attr]

    collected(0)  # compiles what needs compiling first
    return (collected(n) - collected(0)) / n


def start_worker(tree: Path, host: str, port: int, batch: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", host, str(port), str(batch)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the revision to compare with (git)")
    parser.add_argument("--batch", type=float, default=0.2, help="seconds per measured batch")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--instructions", action="store_true",
                        help="count the instructions per call under valgrind instead of timing")
    parser.add_argument("--calls", default="binary get,binary set,http get,http set,Cluster get,Cluster set",
                        help="with --instructions: the calls to count, comma-separated")
    parser.add_argument("--count", type=int, default=3000, help="with --instructions: calls per count")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--counting", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return
    if args.counting:
        count(args.counting[0], int(args.counting[1]), args.counting[2], int(args.counting[3]))
        return
    if not args.baseline:
        parser.error("--baseline is required")
    sys.path.insert(0, str(ROOT))
    from _common import ask, revision_tree

    from ktcluster.testing import KTServer, server_command

    with revision_tree(args.baseline) as before:
        with KTServer(":") as srv:
            trees = {"before": before, "after": ROOT}
            if args.instructions:
                print(f"server: {' '.join(server_command())}; before: {args.baseline}; after: this tree; "
                      f"instructions per call (callgrind, {args.count} calls)")
                head = f"{'call':<24}{'before':>12}{'after':>12}{'after/before':>14}"
                print(head)
                print("-" * len(head))
                for name in args.calls.split(","):
                    before, after = (instructions(trees[label], srv.host, srv.port, name, args.count)
                                     for label in ("before", "after"))
                    print(f"{name:<24}{before:>12,.0f}{after:>12,.0f}{after / before:>13.2f}x", flush=True)
                return
            procs = {label: start_worker(tree, srv.host, srv.port, args.batch) for label, tree in trees.items()}
            try:
                names = [json.loads(p.stdout.readline()) for p in procs.values()][0]  # type: ignore[union-attr]
                best: dict[tuple[str, str], tuple[float, float]] = {}
                for n in range(args.rounds):
                    order = list(procs) if n % 2 == 0 else list(reversed(procs))
                    for name in names:
                        for label in order:
                            rate, cpu = ask(procs[label], name)
                            old = best.get((label, name), (0.0, float("inf")))
                            best[(label, name)] = (max(old[0], rate), min(old[1], cpu))
            finally:
                for proc in procs.values():
                    proc.kill()
                    proc.wait()
            print(f"server: {' '.join(server_command())}; before: {args.baseline}; after: this tree; "
                  f"best of {args.rounds} interleaved batches of {args.batch:g} s")
    head = (f"{'call':<24}{'CPU us before':>15}{'after':>10}{'after/before':>14}"
            f"{'calls/s before':>16}{'after':>10}{'after/before':>14}")
    print(head)
    print("-" * len(head))
    for name in names:
        (rate0, cpu0), (rate1, cpu1) = best[("before", name)], best[("after", name)]
        print(f"{name:<24}{cpu0 * 1e6:>15.1f}{cpu1 * 1e6:>10.1f}{cpu1 / cpu0:>13.2f}x"
              f"{rate0:>16,.0f}{rate1:>10,.0f}{rate1 / rate0:>13.2f}x")


if __name__ == "__main__":
    main()
