"""The everyday commands: stats, get, set, rm, load, dump, tail, ring, bench."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..address import parse_address
from ..cluster import Cluster
from ..connection import Connection
from ..errors import ArgumentError, PartialFailureError
from ..expiry import ExpireAt
from .progress import Progress
from .records import read_input, scan, to_json
from .servers import ServerList, open_cluster, server_list
from .statefile import load_state, save_state

__all__ = ["CLIError", "stats", "get", "set_", "rm", "load", "dump", "tail", "ring", "bench", "human_size",
           "print_table", "store_records"]


class CLIError(Exception):
    """A failure the command reports as one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_table(rows: list[list[str]], right: Iterable[int] = (), out: Any = None) -> None:
    """Columns padded to their widest cell; the columns in ``right`` are right-aligned."""
    out = out or sys.stdout
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        out.write("  ".join(cells).rstrip() + "\n")


def _text(raw: str) -> bytes:
    """A command-line argument as the bytes the user typed."""
    return os.fsencode(raw)


def _key_repr(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)


# -- stats ------------------------------------------------------------------------------------------

def stats(args: argparse.Namespace) -> int:
    """Per node: address, state, records, size, client connections, uptime; and the totals."""
    servers = server_list(args)
    with open_cluster(servers, args.timeout) as cluster:
        try:
            reports, errors = cluster.per_node("report", typed=True), {}
        except PartialFailureError as exc:
            reports, errors = exc.results, exc.errors
    rows = [["node", "address", "state", "records", "size", "connections", "uptime"]]
    nodes: dict[str, dict[str, Any]] = {}
    total_count = total_size = total_conn = 0
    for name, address in servers.nodes.items():
        report = reports.get(name)
        if report is None:
            rows.append([name, address, "DOWN", "-", "-", "-", "-"])
            nodes[name] = {"address": address, "state": "down"}
            continue
        count, size, conn = report["db_total_count"], report["db_total_size"], report["serv_conn_count"]
        total_count, total_size, total_conn = total_count + count, total_size + size, total_conn + conn
        uptime = int(report.get("serv_running_term", 0))
        rows.append([name, address, "up", f"{count:,}", human_size(size), str(conn),
                     f"{uptime // 3600}h{uptime // 60 % 60:02d}m{uptime % 60:02d}s"])
        nodes[name] = {"address": address, "state": "up", "records": count, "size": size, "connections": conn,
                       "uptime": uptime}
    down = f" ({len(errors)} down)" if errors else ""
    rows.append(["total", f"{len(servers.nodes)} nodes{down}", "", f"{total_count:,}", human_size(total_size),
                 str(total_conn), ""])
    if args.json:
        print(json.dumps({"nodes": nodes, "total": {"nodes": len(nodes), "down": len(errors), "records": total_count,
                                                    "size": total_size, "connections": total_conn}}))
    else:
        print_table(rows, right=(3, 4, 5, 6))
    if errors:
        first = next(iter(errors.values()))
        raise CLIError(f"{len(errors)} of {len(servers.nodes)} nodes down ({first})")
    return 0


# -- single records ---------------------------------------------------------------------------------

def get(args: argparse.Namespace) -> int:
    with open_cluster(server_list(args), args.timeout) as cluster:
        value = cluster.get(_text(args.key), args.db)
    if value is None:
        raise CLIError(f"no record for key {args.key!r}")
    out = sys.stdout.buffer
    out.write(value + b"\n")
    out.flush()
    return 0


def set_(args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read() if args.value == "-" else _text(args.value)
    with open_cluster(server_list(args), args.timeout) as cluster:
        cluster.set(_text(args.key), value, args.expire, args.db)
    return 0


def rm(args: argparse.Namespace) -> int:
    missing = []
    with open_cluster(server_list(args), args.timeout) as cluster:
        for key in args.keys:
            if not cluster.remove(_text(key), args.db):
                missing.append(key)
    if missing:
        raise CLIError(f"no record for key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    return 0


# -- bulk in and out --------------------------------------------------------------------------------

def store_records(cluster: Cluster, records: dict[bytes, tuple[bytes, int | None]], db: Any = 0) -> None:
    """set_bulk ``{key: (value, expires)}``, one call per distinct expiry (most records have none)."""
    by_expiry: dict[int | None, dict[bytes, bytes]] = {}
    for key, (value, expires) in records.items():
        by_expiry.setdefault(expires, {})[key] = value
    for expires, group in by_expiry.items():
        cluster.set_bulk(group, None if expires is None else ExpireAt(expires), db=db)


def _input_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "tsv" if os.path.splitext(args.file)[1].lower() in (".tsv", ".tab", ".txt") else "jsonl"


def load(args: argparse.Namespace) -> int:
    """Bulk-load JSON lines or TSV, ``--batch`` records per set_bulk; resumable with ``--checkpoint``."""
    fmt = _input_format(args)
    stdin = args.file == "-"
    if stdin and args.checkpoint:
        raise ArgumentError("--checkpoint needs a file to resume in, not stdin")
    source = "<stdin>" if stdin else os.path.abspath(args.file)
    offset = line_no = loaded = 0
    state = load_state(args.checkpoint, "load") if args.checkpoint else None
    if state is not None:
        if state.get("input") != source:
            raise CLIError(f"the checkpoint {args.checkpoint} is for {state.get('input')}, not {source}")
        if state.get("complete"):
            print(f"{args.file}: already loaded ({state['loaded']:,} records); delete {args.checkpoint} "
                  f"to load it again")
            return 0
        offset, line_no, loaded = state["offset"], state["line"], state["loaded"]
    stream = sys.stdin.buffer if stdin else open(args.file, "rb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    try:
        total = None if stdin else os.fstat(stream.fileno()).st_size
        if offset:
            stream.seek(offset)
        servers = server_list(args)
        with open_cluster(servers, args.timeout) as cluster, \
                Progress(total, f"loading {args.file}", unit="bytes", enabled=not args.quiet) as bar:
            bar.update(offset)
            batch: dict[bytes, tuple[bytes, int | None]] = {}
            done_at = offset

            def flush(end: int, line: int, complete: bool = False) -> None:
                nonlocal loaded, done_at
                if batch:
                    store_records(cluster, batch, args.db)
                    loaded += len(batch)
                    batch.clear()
                bar.update(end - done_at)
                done_at = end
                if args.checkpoint:
                    save_state(args.checkpoint, {"kind": "load", "input": source, "offset": end, "line": line,
                                                 "loaded": loaded, "complete": complete})

            end, line = offset, line_no
            for (key, value, expires), line, end in read_input(stream, args.file, fmt, offset, line_no):
                batch[key] = (value, expires)
                if len(batch) >= args.batch:
                    flush(end, line)
            flush(end, line, complete=True)
    finally:
        if not stdin:
            stream.close()
    elapsed = time.monotonic() - started
    if not args.quiet:
        print(f"loaded {loaded:,} records from {args.file} in {elapsed:.1f}s", file=sys.stderr)
    return 0


def _nodes_to_read(servers: ServerList, only: list[str] | None) -> dict[str, str]:
    if not only:
        return servers.nodes
    unknown = [n for n in only if n not in servers.nodes]
    if unknown:
        raise ArgumentError(f"no node named {', '.join(map(repr, unknown))}; nodes: {', '.join(servers.nodes)}")
    return {n: servers.nodes[n] for n in only}


def dump(args: argparse.Namespace) -> int:
    """Every record of every node (or of ``--node``) as JSON lines on stdout."""
    servers = server_list(args)
    nodes = _nodes_to_read(servers, args.node)
    with open_cluster(servers, args.timeout) as cluster:
        counts = {name: cluster.client(name).count(args.db) for name in nodes}
    out = sys.stdout
    written = 0
    with Progress(sum(counts.values()), "dumping", enabled=not args.quiet) as bar:
        for address in nodes.values():
            host, port = parse_address(address)
            for records in scan(host, port, db=args.db, batch=args.batch, timeout=args.timeout):
                out.write("".join(to_json(*rec) + "\n" for rec in records))
                written += len(records)
                bar.update(len(records))
        out.flush()
    if not args.quiet:
        print(f"dumped {written:,} records from {len(nodes)} node(s)", file=sys.stderr)
    return 0


def tail(args: argparse.Namespace) -> int:
    from .tail import tail as run_tail

    nodes = dict(args.nodes) if args.nodes else server_list(args).nodes
    masters: dict[str, str] | list[str] = nodes if any(k != v for k, v in nodes.items()) else list(nodes.values())
    for address in nodes.values():  # a master that is down at the start is a mistake, not an outage to ride out
        host, port = parse_address(address)
        conn = Connection(host, port, connect_timeout=args.timeout, timeout=args.timeout)
        try:
            conn.call(b"void")
        finally:
            conn.close()
    run_tail(masters, args.sid, since=args.since, checkpoint_file=args.checkpoint_file,
             origin_sids=dict(args.origin_sid), idle_timeout=args.idle_timeout, count=args.count)
    return 0


# -- the ring ---------------------------------------------------------------------------------------

def ring(args: argparse.Namespace) -> int:
    """Which node holds each key; the ring's shares; what a node added or removed would move."""
    servers = server_list(args)
    current = servers.ring()
    for key in args.keys:
        name = current.node_for(_text(key))
        print(f"{key}\t{name}\t{servers.nodes[name]}")
    if args.keys and not (args.add or args.remove):
        return 0
    changed = current
    what = []
    for spec in args.add or ():
        name, _, address = spec.partition("=")
        if address:
            parse_address(address)
        changed = changed.with_node(name, args.add_weight)
        what.append(f"adding {name}" + (f" (weight {args.add_weight})" if args.add_weight != 1 else ""))
    for name in args.remove or ():
        changed = changed.without_node(name)
        what.append(f"removing {name}")
    if changed is current:
        rows = [["node", "address", "weight", "share"]]
        for name, share in current.shares().items():
            rows.append([name, servers.nodes[name], str(current.weights[name]), f"{share:.1%}"])
        print_table(rows, right=(2, 3))
        return 0
    diff = current.diff(changed)
    print(f"{' and '.join(what)} moves {diff.moved:.1%} of the keys")
    rows = [["node", "share now", "share after"]]
    for name in dict.fromkeys(list(diff.before) + list(diff.after)):
        before, after = diff.before.get(name), diff.after.get(name)
        rows.append([name, "-" if before is None else f"{before:.1%}", "-" if after is None else f"{after:.1%}"])
    print_table(rows, right=(1, 2))
    print("moves:")
    for (src, dst), share in sorted(diff.flows.items(), key=lambda kv: -kv[1]):
        print(f"  {src} -> {dst}: {share:.1%}")
    return 0


# -- bench ------------------------------------------------------------------------------------------

def _remove_all(cluster: Cluster, chunks: Iterable[list[bytes]]) -> None:
    for chunk in chunks:
        cluster.remove_bulk(chunk)


def bench(args: argparse.Namespace) -> int:
    """Time single and bulk operations through a Cluster on the given servers (then remove the keys)."""
    servers = server_list(args)
    prefix = f"ktcluster-bench:{uuid.uuid4().hex[:8]}:".encode()
    keys = [prefix + b"%08d" % i for i in range(args.keys)]
    value = os.urandom(args.value_size // 2 + 1).hex().encode()[:args.value_size]
    singles = keys[:args.single]
    bulk = args.bulk
    rows = [["operation", "records", "seconds", "records/s"]]

    def measure(name: str, records: int, run: Callable[[], object]) -> None:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        rows.append([name, f"{records:,}", f"{elapsed:.3f}", f"{records / elapsed:,.0f}"])

    def chunks() -> Iterable[list[bytes]]:
        return (keys[i:i + bulk] for i in range(0, len(keys), bulk))

    with open_cluster(servers, args.timeout) as cluster:
        try:
            measure(f"set_bulk ({bulk}/call)", len(keys),
                    lambda: [cluster.set_bulk(dict.fromkeys(c, value)) for c in chunks()])
            measure(f"get_bulk ({bulk}/call)", len(keys), lambda: [cluster.get_bulk(c) for c in chunks()])
            measure("set", len(singles), lambda: [cluster.set(k, value) for k in singles])
            measure("get", len(singles), lambda: [cluster.get(k) for k in singles])
        except BaseException:
            with contextlib.suppress(Exception):  # report the first failure, not the clean-up's
                _remove_all(cluster, chunks())
            raise
        _remove_all(cluster, chunks())
    print(f"{len(servers.nodes)} node(s), {args.value_size}-byte values, one thread, binary protocol")
    print_table(rows, right=(1, 2, 3))
    return 0

