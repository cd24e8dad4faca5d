"""Shared helpers for the benchmark scripts: a server to measure against, a bare socket
(the floor no library can beat), interleaved best-of-N timing, a ratio table, and another
git revision's client to compare with (worker processes answering one JSON line per
request).  Benchmarks print numbers; they never assert."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktcluster.protocol import binary
from ktcluster.protocol.http import parse_response_head
from ktcluster.testing import KTServer, server_command


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--host/--port (an existing server) or a fresh one (embedded, or $KT_SERVER_BIN)."""
    parser.add_argument("--host", default=None, help="measure an already running server")
    parser.add_argument("--port", type=int, default=1978)
    parser.add_argument("--batch", type=float, default=0.05, help="seconds per measured batch")
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved rounds; the fastest batch of each library counts")


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, int, str]]:
    """(host, port, description) of the server to measure."""
    if args.host:
        yield args.host, args.port, f"{args.host}:{args.port}"
        return
    with KTServer(":") as srv:
        yield srv.host, srv.port, " ".join(server_command())


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """``git archive REV ktcluster`` unpacked in a temporary directory: a process with it
    first on its PYTHONPATH imports that revision's client."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "ktcluster"], check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
        yield Path(tmp)


def ask(proc: subprocess.Popen[str], line: str = "") -> Any:
    """One request to a worker process: ``line`` to its stdin, its answer (a JSON line) back."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def http_complete(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole HTTP response."""
    try:
        head = parse_response_head(reply)
    except binary.Incomplete:
        return False
    return len(reply) >= head.body_start + (head.length or 0)


def binary_complete(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole binary-protocol answer."""
    try:
        if reply[:1] == bytes((binary.MAGIC_GET_BULK,)):
            binary.decode_get_bulk_reply(reply)
        else:
            binary.decode_count_reply(reply, reply[0] if reply else 0)
    except binary.Incomplete:
        return False
    return True


def reply_complete(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole HTTP or binary answer."""
    return http_complete(reply) if reply.startswith(b"HTTP/") else binary_complete(reply)


class BareSocket:
    """One plain socket: :meth:`exchange` turns a pre-encoded request into a callable that
    sends it and reads its answer by size (no library: the floor of what a client costs)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes, complete: Callable[[bytes], bool] = reply_complete,
                 check: Callable[[bytes], None] | None = None) -> Callable[[], None]:
        """Send ``request`` once and read its answer (until ``complete``; ``check`` looks
        at it); the callable repeats the exchange, reading as many bytes (every later
        answer has the same size: the Date header is fixed-width)."""
        sock = self.sock
        sock.sendall(request)
        reply = b""
        while not complete(reply):
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed the connection")
            reply += data
        if check is not None:
            check(reply)
        size = len(reply)
        view = memoryview(bytearray(size))

        def run() -> None:
            sock.sendall(request)
            got = 0
            while got < size:
                got += sock.recv_into(view[got:])

        return run

    def close(self) -> None:
        self.sock.close()


def ops_per_second(fn: Callable[[], object], duration: float) -> float:
    """Calls of ``fn`` per second over a batch of about ``duration`` seconds (GC paused)."""
    return timed_batch(fn, duration)[0]


def timed_batch(fn: Callable[[], object], duration: float) -> tuple[float, float]:
    """(calls per second, this process's CPU seconds per call) over a batch of about
    ``duration`` seconds (GC paused).  CPU time counts what the client itself costs,
    system calls included, whatever the server and other processes do meanwhile."""
    gc.disable()
    try:
        n = 0
        batch = 1
        cpu0 = time.process_time()
        start = time.perf_counter()
        deadline = start + duration
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                return n / (now - start), (time.process_time() - cpu0) / n
            batch = min(batch * 2, 64)
    finally:
        gc.enable()


@dataclass
class Case:
    """One operation measured for several libraries: ``runs`` maps a library to a callable;
    ``records`` is how many records one call handles (CPU is shown per record)."""

    name: str
    runs: dict[str, Callable[[], object]]
    best: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    records: int = 1


def measure(cases: Sequence[Case], duration: float, rounds: int) -> None:
    """The fastest of ``rounds`` short batches for every (case, library), and the least CPU
    per call of them.  Libraries take turns batch by batch, so load from other processes
    hits all of them alike, and the best batch is the one least disturbed by it."""
    for case in cases:
        for fn in case.runs.values():
            fn()  # warm up: connect, fill caches
    for _ in range(rounds):
        for case in cases:
            for lib, fn in case.runs.items():
                rate, cpu = timed_batch(fn, duration)
                case.best[lib] = max(case.best.get(lib, 0.0), rate)
                case.cpu[lib] = min(case.cpu.get(lib, float("inf")), cpu)


def print_table(cases: Sequence[Case], libs: Sequence[str], ours: str,
                targets: dict[tuple[str, str], float] | None = None, cpu_libs: Sequence[str] | None = None,
                per_record: bool = False) -> None:
    """ops/s per library (``per_record``: records/s) and ``ours / lib`` ratios (with the
    target when one is set), then the client's CPU per record (µs) of ``cpu_libs`` and
    ``lib / ours`` CPU ratios (above 1: ours costs less)."""
    targets = targets or {}
    others = [lib for lib in libs if lib != ours]

    def rate(case: Case, lib: str) -> str:
        best = case.best.get(lib)
        return f"{best * (case.records if per_record else 1):,.0f}" if best else "-"

    def ratio(case: Case, lib: str) -> str:
        mine, theirs = case.best.get(ours), case.best.get(lib)
        if not (mine and theirs):
            return "-"
        target = targets.get((case.name, lib))
        return f"{mine / theirs:.2f}x" + (f" (target {target:g}x)" if target else "")

    unit = " rec/s" if per_record else " ops/s"
    _table("operation", cases,
           [(lib + unit, lib, rate) for lib in libs] + [("vs " + lib, lib, ratio) for lib in others])
    if not cpu_libs:
        return

    def cpu(case: Case, lib: str) -> str:
        spent = case.cpu.get(lib)
        return f"{spent * 1e6 / case.records:.2f}" if spent else "-"

    def cpu_ratio(case: Case, lib: str) -> str:
        mine, theirs = case.cpu.get(ours), case.cpu.get(lib)
        return f"{theirs / mine:.2f}x" if mine and theirs else "-"

    print()
    _table("client CPU, us per record", cases, [(lib, lib, cpu) for lib in cpu_libs]
           + [(lib + " / " + ours, lib, cpu_ratio) for lib in cpu_libs if lib != ours])


def _table(title: str, cases: Sequence[Case],
           columns: Sequence[tuple[str, str, Callable[[Case, str], str]]]) -> None:
    """One row per case; ``columns`` are (heading, library, cell function)."""
    cells = [[cell(case, lib) for _, lib, cell in columns] for case in cases]
    widths = [2 + max(len(heading), *(len(row[n]) for row in cells)) for n, (heading, _, _) in enumerate(columns)]
    head = f"{title:<28}" + "".join(f"{heading:>{w}}" for (heading, _, _), w in zip(columns, widths, strict=True))
    print(head)
    print("-" * len(head))
    for case, row in zip(cases, cells, strict=True):
        print(f"{case.name:<28}" + "".join(f"{text:>{w}}" for text, w in zip(row, widths, strict=True)))
