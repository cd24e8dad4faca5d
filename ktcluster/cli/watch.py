"""``ktcluster stats --watch``: a live per-node view, refreshed in the terminal (or JSON lines).

Each refresh takes a sample and shows, per node, what changed since the previous one:

* ``ops/s`` -- with ``--url``, the attempts the application's clients made on the node
  (its :class:`~ktcluster.observe.Metrics`, served as ``cluster.stats()`` JSON -- the
  example app's ``/stats``); otherwise the operations the server counted (its report's
  ``cnt_*``: every client's traffic);
* ``p99 ms`` -- the 99th percentile of those attempts in the interval (read from the
  difference of the two histograms); without ``--url``, of this command's own report
  calls (a probe of the node's responsiveness);
* ``errors`` -- failed attempts in the interval, and their most frequent class;
* ``breaker`` and ``pool`` (in use / size, ``+N`` waiting) -- the application's, or
  this command's own;
* ``lag s`` -- with ``--lag SID`` (this command reads every master's update log as
  replication client SID) or from the application's stats, how far behind its clock
  the last batch read from the node's log was.

:func:`sample_views` is pure: two samples in, one row per node out.  ``--json`` prints
each refresh as one JSON object per line instead of a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ..cluster import Cluster
from ..errors import KyotoTycoonException, PartialFailureError
from ..observe import BOUNDS, Histogram, Metrics
from ..replication import ReplicationStream
from .commands import print_table
from .servers import open_cluster, server_list

__all__ = ["watch", "sample_views", "SERVER_COUNTERS"]

#: the report counters of the operations a server ran (misses are among them)
SERVER_COUNTERS = ("cnt_get", "cnt_set", "cnt_remove", "cnt_script", "cnt_misc")

Sample = dict[str, Any]
log = logging.getLogger("ktcluster.cli")


def _merged(histograms: list[dict[str, Any]]) -> list[int]:
    counts = [0] * (len(BOUNDS) + 1)
    for h in histograms:
        counts = [a + b for a, b in zip(counts, h["buckets"], strict=True)]
    return counts


def _observed(sample: Sample, node: str) -> dict[str, Any]:
    metrics = sample["stats"].get("metrics") or {}
    return metrics.get("nodes", {}).get(node) or {"operations": {}, "replication": {"lag": None}}


def sample_views(prev: Sample, cur: Sample) -> dict[str, dict[str, Any]]:
    """Per node, what changed between two samples (see the module docstring).  A sample is
    ``{"time": monotonic seconds, "stats": cluster.stats(), "reports": {node: report or None}}``
    (``reports`` is None when the servers were not asked)."""
    dt = max(cur["time"] - prev["time"], 1e-9)
    views = {}
    for name, node in cur["stats"]["nodes"].items():
        now, before = _observed(cur, name), _observed(prev, name)
        ops_now, ops_before = now["operations"], before["operations"]
        attempts = sum(s["attempts"] for s in ops_now.values()) - sum(s["attempts"] for s in ops_before.values())
        latency = [a - b for a, b in zip(_merged([s["latency"] for s in ops_now.values()]),
                                         _merged([s["latency"] for s in ops_before.values()]), strict=True)]
        errors: dict[str, int] = {}
        for op, series in ops_now.items():
            old = ops_before.get(op, {}).get("errors", {})
            for cls, n in series["errors"].items():
                if n - old.get(cls, 0):
                    errors[cls] = errors.get(cls, 0) + n - old.get(cls, 0)
        view: dict[str, Any] = {"address": node["address"], "state": (node["health"] or {}).get("state"),
                                "ops_per_s": attempts / dt, "p99_ms": None, "errors": sum(errors.values()),
                                "top_error": max(errors, key=errors.__getitem__) if errors else None,
                                "pool_in_use": node["pool"]["in_use"], "pool_size": node["pool"]["size"],
                                "pool_waiting": node["pool"]["waiting"], "lag_s": now["replication"]["lag"]}
        p99 = Histogram.of(latency).quantile(0.99)
        view["p99_ms"] = None if p99 is None else p99 * 1e3
        reports = cur.get("reports")
        if reports is not None:
            report, old_report = reports.get(name), (prev.get("reports") or {}).get(name)
            if report is None:
                view["state"] = "DOWN"
            view["ops_per_s"] = (None if report is None or old_report is None else
                                 sum(report.get(c, 0) - old_report.get(c, 0) for c in SERVER_COUNTERS) / dt)
        views[name] = view
    return views


def render(views: dict[str, dict[str, Any]], title: str) -> str:
    rows = [["node", "address", "breaker", "ops/s", "p99 ms", "errors", "pool", "lag s"]]
    for name, v in views.items():
        pool = f"{v['pool_in_use']}/{v['pool_size']}" + (f" +{v['pool_waiting']}" if v["pool_waiting"] else "")
        errors = str(v["errors"]) + (f" {v['top_error']}" if v["top_error"] else "")
        rows.append([name, v["address"], v["state"] or "-",
                     "-" if v["ops_per_s"] is None else f"{v['ops_per_s']:,.0f}",
                     "-" if v["p99_ms"] is None else f"{v['p99_ms']:.2f}", errors, pool,
                     "-" if v["lag_s"] is None else f"{v['lag_s']:.2f}"])
    out = _Buffer()
    out.write(title + "\n\n")
    print_table(rows, right=(3, 4, 7), out=out)
    return out.text


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _from_url(url: str, timeout: float) -> Callable[[], Sample]:
    def take() -> Sample:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            stats = json.load(answer)
        return {"time": time.monotonic(), "stats": stats, "reports": None}
    return take


def _from_servers(cluster: Cluster) -> Callable[[], Sample]:
    def take() -> Sample:
        try:
            reports = cluster.per_node("report", typed=True)
        except PartialFailureError as exc:
            reports = exc.results
        except KyotoTycoonException:
            reports = {}
        return {"time": time.monotonic(), "stats": cluster.stats(),
                "reports": {name: reports.get(name) for name in cluster.nodes}}
    return take


def _read_logs(stream: ReplicationStream) -> None:
    """Consume the stream (its observer records the lag) until it ends or fails."""
    try:
        for _ in stream:
            pass
    except Exception as exc:  # the view keeps the last lag seen
        log.warning("reading the update logs stopped: %s", exc)


def watch(args: argparse.Namespace) -> int:
    """``ktcluster stats --watch``: see the module docstring."""
    metrics = Metrics()
    cluster = stream = None
    if args.url:
        take, title = _from_url(args.url, args.timeout), f"{args.url}: the application's clients"
    else:
        servers = server_list(args)
        cluster = open_cluster(servers, args.timeout, observer=metrics)
        take, title = _from_servers(cluster), "ops/s: the servers' counters; p99, breaker, pool: this command's"
        if args.lag is not None:
            stream = ReplicationStream(servers.nodes, args.lag, observer=metrics, timeout=args.timeout)
            threading.Thread(target=_read_logs, args=(stream,), daemon=True, name="ktcluster-watch-lag").start()
    tty = sys.stdout.isatty() and not args.json
    try:
        prev = take()
        shown = 0
        while args.count is None or shown < args.count:
            time.sleep(args.interval)
            cur = take()
            views = sample_views(prev, cur)
            prev = cur
            shown += 1
            if args.json:
                print(json.dumps({"time": time.time(), "nodes": views}), flush=True)
                continue
            text = render(views, f"ktcluster stats --watch  {time.strftime('%H:%M:%S')}  every {args.interval:g} s"
                                 f"  ({title})")
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + text + ("" if tty else "\n"))
            sys.stdout.flush()
    finally:
        if stream is not None:
            stream.close()
        if cluster is not None:
            cluster.close()
    return 0
