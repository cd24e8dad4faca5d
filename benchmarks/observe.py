"""What observing costs: a single binary get with no observer, and with each shipped observer.

    python benchmarks/observe.py                      # a fresh server ($KT_SERVER_BIN or embedded)
    python benchmarks/observe.py --baseline 334ef4b   # also: the hooks' cost against that revision

Measures the client's own CPU per call (process CPU time / calls: what the client costs,
steadier than wall time on a shared machine) of ``Cluster.get`` (one node, binary
protocol) and ``KyotoTycoon(binary=True).get``, one connection, one thread, in
interleaved rounds, for: no observer, :class:`~ktcluster.observe.Metrics`, the
OpenTelemetry :class:`~ktcluster.observe.otel.Tracer` (SDK providers, spans batched to
an exporter that drops them: the cost of making them, not of shipping them) and both;
then the time of one Prometheus scrape of the metrics.

``--baseline REV`` measures what the hooks cost when no observer is set, against ``git
archive REV ktcluster`` (the code before the hooks), two ways: (1) the client's Python
path alone -- the connection answering at once, no socket: the best of many timed
runs, in fresh processes alternating between the trees, precise to a few tens of ns --
and (2) the whole get, two worker processes a batch each in turn, paired ratios (on a
loaded machine their spread is wider than the hooks' cost).  Target: at most 2% of a get.
Prints medians; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_server_arguments, ask, revision_tree, server, timed_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def clients(host: str, port: int, observer: object = None) -> dict[str, Callable[[], object]]:
    """The calls measured: a Cluster get and a KyotoTycoon get, with ``observer``."""
    from ktcluster import KT_PACKER_BYTES, Cluster, KyotoTycoon

    extra = {} if observer is None else {"observer": observer}
    cluster = Cluster([f"{host}:{port}"], **extra)  # type: ignore[arg-type]
    kt = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES, **extra)  # type: ignore[arg-type]
    kt.open(host, port)
    cluster.set("bench:key", b"v" * 100)
    return {"Cluster.get": lambda: cluster.get("bench:key"), "KyotoTycoon.get": lambda: kt.get("bench:key")}


def worker(host: str, port: int, batch: float) -> None:
    """A subprocess of --baseline: for each line read, one batch of each client; print
    their CPU per call (a JSON line)."""
    runs = clients(host, port)
    for run in runs.values():
        timed_batch(run, batch)  # warm up
    for _ in sys.stdin:
        print(json.dumps({name: timed_batch(run, batch)[1] for name, run in runs.items()}), flush=True)


def python_path() -> None:
    """A subprocess of --baseline: the best time of each client's get with the network
    replaced by an immediate answer (the connection's exchange answers "no record" without
    connecting, in whichever of its methods the revision calls)."""
    import timeit

    from ktcluster import Cluster, KyotoTycoon
    from ktcluster.connection import Connection

    answers = {"request_binary": lambda self, *args, **kwargs: [], "read_reply": lambda self, *args, **kwargs: [],
               "send_request": lambda self, *args, **kwargs: (None, False)}
    for method, answer in answers.items():
        if hasattr(Connection, method):
            setattr(Connection, method, answer)
    cluster = Cluster(["127.0.0.1:1"])
    kt = KyotoTycoon(binary=True)
    kt.open("127.0.0.1", 1)
    best = {}
    for name, run in (("Cluster.get", lambda: cluster.get("k")), ("KyotoTycoon.get", lambda: kt.get("k"))):
        run()
        best[name] = min(timeit.repeat(run, number=20000, repeat=15)) / 20000
    print(json.dumps(best))


def observers() -> dict[str, object]:
    """The shipped observers that can be built here (OpenTelemetry needs its SDK)."""
    from ktcluster.observe import Metrics, Tee

    made: dict[str, object] = {"none": None, "Metrics": Metrics()}
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        print("OpenTelemetry SDK not installed: the Tracer is not measured (pip install 'ktcluster[test]')")
        return made
    from ktcluster.observe.otel import Tracer

    class Drop(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
            return SpanExportResult.SUCCESS

    def tracer() -> Tracer:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        return Tracer(provider, MeterProvider())

    made["otel Tracer"] = tracer()
    made["Metrics + Tracer"] = Tee(Metrics(), tracer())
    return made


def measure_observers(host: str, port: int, rounds: int, batch: float) -> None:
    variants = {name: clients(host, port, obs) for name, obs in observers().items()}
    cpu: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, runs in variants.items():
            for call, run in runs.items():
                cpu.setdefault((call, name), []).append(timed_batch(run, batch)[1])
    print(f"\nclient CPU per call, median of {rounds} interleaved rounds (µs; ratio to no observer)")
    for call in ("Cluster.get", "KyotoTycoon.get"):
        base = statistics.median(cpu[(call, "none")])
        cells = []
        for name in variants:
            value = statistics.median(cpu[(call, name)])
            cells.append(f"{name} {value * 1e6:7.2f} ({value / base:.3f}x)")
        print(f"  {call:16} " + "   ".join(cells))
    scrape_cost(variants)


def scrape_cost(variants: dict[str, dict[str, Callable[[], object]]]) -> None:
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        print("prometheus_client not installed: the scrape is not measured (pip install 'ktcluster[prometheus]')")
        return
    import time

    from ktcluster import Cluster
    from ktcluster.observe import Metrics
    from ktcluster.observe.prometheus import Collector

    # a scrape of 3 nodes x 16 operations (what a busy app exports), from synthetic events
    metrics = Metrics()
    cluster = Cluster(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], observer=metrics)
    from ktcluster.observe.events import Call
    from ktcluster.retry import OPERATIONS

    for operation, cls in OPERATIONS.items():
        for node in cluster.nodes:
            event = Call(metrics, operation, cls).attempt(node, node, 0)
            event.done(None)
    registry = CollectorRegistry()
    registry.register(Collector(cluster))
    start = time.perf_counter()
    for _ in range(20):
        text = generate_latest(registry)
    took = (time.perf_counter() - start) / 20
    print(f"\none Prometheus scrape of {len(OPERATIONS)} operations x 3 nodes: {took * 1e3:.1f} ms, "
          f"{len(text) / 1024:.0f} KiB")
    cluster.close()


def measure_hooks(host: str, port: int, rev: str, rounds: int, batch: float) -> None:
    """Worker processes on this tree and on ``rev``'s, alternately; paired ratios."""
    with revision_tree(rev) as tree:
        base = str(tree)
        python: dict[tuple[str, str], float] = {}
        for _ in range(max(3, rounds // 10)):
            for label, path in (("this tree", str(ROOT)), (rev, base)):
                out = subprocess.run([sys.executable, __file__, "--python-path"], check=True, capture_output=True,
                                     env={**os.environ, "PYTHONPATH": path}, text=True).stdout
                for call, took in json.loads(out).items():
                    python[(call, label)] = min(python.get((call, label), took), took)
        print(f"\nno observer, the Python path alone (network replaced by an immediate answer): best of "
              f"{max(3, rounds // 10)} processes per tree")
        for call in ("Cluster.get", "KyotoTycoon.get"):
            ours, theirs = python[(call, "this tree")], python[(call, rev)]
            print(f"  {call:16} {ours * 1e6:6.3f} µs vs {theirs * 1e6:6.3f} µs at {rev}: "
                  f"{1e9 * (ours - theirs):+.0f} ns")
        workers = {label: subprocess.Popen(
            [sys.executable, __file__, "--worker", "--host", host, "--port", str(port), "--batch", str(batch)],
            env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for label, path in (("this tree", str(ROOT)), (rev, base))}
        ratios: dict[str, list[float]] = {}
        medians: dict[tuple[str, str], list[float]] = {}
        try:
            for i in range(rounds):  # which tree goes first alternates: the order must not favour one
                order = list(workers.items())[::1 if i % 2 else -1]
                got = {label: ask(proc) for label, proc in order}
                for call in got["this tree"]:
                    ratios.setdefault(call, []).append(got["this tree"][call] / got[rev][call])
                    for label in got:
                        medians.setdefault((call, label), []).append(got[label][call])
        finally:
            for proc in workers.values():
                proc.communicate()
    print(f"\nno observer: this tree against {rev} (the hooks' cost), {rounds} rounds alternating between "
          "two worker processes")
    for call, values in ratios.items():
        ours = statistics.median(medians[(call, "this tree")]) * 1e6
        theirs = statistics.median(medians[(call, rev)]) * 1e6
        print(f"  {call:16} {ours:7.2f} µs vs {theirs:7.2f} µs: paired ratio median {statistics.median(values):.3f} "
              f"(min {min(values):.3f}, max {max(values):.3f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--baseline", metavar="REV", help="also measure the hooks against this git revision")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--python-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.python_path:
        python_path()
        return
    if args.worker:
        worker(args.host, args.port, args.batch)
        return
    args.batch = max(args.batch, 0.2)
    with server(args) as (host, port, description):
        print(f"server: {description}")
        measure_observers(host, port, max(3, args.rounds // 2), args.batch)
        if args.baseline:
            measure_hooks(host, port, args.baseline, 3 * args.rounds, args.batch)


if __name__ == "__main__":
    main()
