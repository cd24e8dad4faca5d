"""Start Kyoto Tycoon servers for tests and demos.

:class:`KTServer` runs one server as a child process on a free loopback port,
in its own temporary working directory (so relative paths such as ``-ulog ulog``
or ``casket.kch`` land there), waits until it answers, and stops it and removes
its files on exit.  It runs the embedded server (``python -m ktcluster.server``)
unless the environment variable ``KT_SERVER_BIN`` names a real ``ktserver``
binary, which then gets exactly the same arguments.

    with KTServer() as srv:
        KyotoTycoon().open(srv.host, srv.port)

    with start_cluster(3, ulog=True) as servers:
        Cluster([s.address for s in servers])

:class:`FaultProxy` sits between a client and a server to inject faults: added
latency, a black hole (accepts, never answers), refused connects, connections
reset mid-request.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["KTServer", "start_cluster", "free_port", "server_command", "using_real_server", "PORT_MIN", "PORT_MAX",
           "FaultProxy"]

#: ktserver refuses ports above 32767; we also stay clear of the ephemeral range.
PORT_MIN = 10000
PORT_MAX = 32767


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port in [PORT_MIN, PORT_MAX] that nothing listens on right now."""
    for _ in range(200):
        port = random.randint(PORT_MIN, PORT_MAX)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below 32768")


def server_command() -> list[str]:
    """The argv prefix that starts a server: ``$KT_SERVER_BIN`` or the embedded one."""
    binary = os.environ.get("KT_SERVER_BIN")
    if binary:
        return [binary]
    return [sys.executable, "-m", "ktcluster.server"]


def using_real_server() -> bool:
    """True when KT_SERVER_BIN points the fixtures at a real ktserver."""
    return bool(os.environ.get("KT_SERVER_BIN"))


class KTServer:
    """One KT server process on 127.0.0.1.

    ``dbs`` are database specs (``":"``, ``"+"``, ``"casket.kct#ktopts=p"``...),
    ``args`` further ktserver options (``["-ulog", "ulog", "-sid", "1"]``).
    ``port`` is picked when not given.  ``workdir`` (default: a new temporary
    directory, removed on stop) is the server's cwd.
    """

    def __init__(self, *dbs: str, args: Sequence[str] = (), port: int | None = None,
                 host: str = "127.0.0.1", workdir: str | None = None, startup_timeout: float = 15.0,
                 log: bool = False) -> None:
        self.dbs = list(dbs) or [":"]
        self.args = list(args)
        self.host = host
        self.port = port or free_port(host)
        self._fixed_port = port is not None
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="ktserver-")
        self.startup_timeout = startup_timeout
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        """The full command line (ktserver syntax: options, then DB specs)."""
        argv = server_command() + ["-host", self.host, "-port", str(self.port)]
        argv += ["-log", "server.log"] + ([] if self.log else ["-le"])
        argv += self.args
        if self.dbs and self.dbs[0].startswith("-"):
            argv.append("--")
        return argv + self.dbs

    def start(self) -> KTServer:
        """Start the process and wait until it answers HTTP; retries on another port
        when the chosen one was taken meanwhile."""
        for attempt in range(5):
            self.process = subprocess.Popen(
                self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            if self._wait_ready():
                return self
            err = self._reap_failed()
            if self._fixed_port or attempt == 4:
                raise RuntimeError(f"KT server failed to start: {' '.join(self.argv())}: {err}")
            self.port = free_port(self.host)
        raise AssertionError("unreachable")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        return False

    def _reap_failed(self) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        try:
            _, err = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b""
        self.process = None
        return (err or b"").decode("utf-8", "replace").strip()[-2000:]

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers ``/rpc/void`` with 200."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"GET /rpc/void HTTP/1.0\r\n\r\n")
                return sock.recv(16).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL at once (a crash, for fault tests); files are kept for a restart."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung node).  Returns
        once the process is stopped (the signal is delivered asynchronously: a busy server
        could otherwise still answer a request sent right after), where /proc tells."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.process.pid}/stat")
        give_up = time.monotonic() + 5.0
        while time.monotonic() < give_up:
            try:   # the state follows the command name, which is in parentheses
                if stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                    return
            except (OSError, IndexError):
                return  # no /proc: nothing to wait on
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> KTServer:
        """Stop and start again on the same port and working directory."""
        self.stop()
        fixed, self._fixed_port = self._fixed_port, True
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def cleanup(self) -> None:
        """Stop, and remove the working directory if we created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def path(self, name: str) -> str:
        """A path inside the server's working directory."""
        return os.path.join(self.workdir, name)

    def __enter__(self) -> KTServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"KTServer({self.address}, dbs={self.dbs}, args={self.args})"


@contextlib.contextmanager
def start_cluster(n: int, *dbs: str, args: Sequence[str] = (), ulog: bool = False,
                  log: bool = False) -> Iterator[list[KTServer]]:
    """Start ``n`` servers (each ``-ulog ulog -sid i+1`` when ``ulog``) and stop them on exit."""
    servers: list[KTServer] = []
    try:
        for i in range(n):
            extra = list(args) + (["-ulog", "ulog", "-sid", str(i + 1)] if ulog else [])
            servers.append(KTServer(*dbs, args=extra, log=log).start())
        yield servers
    finally:
        for srv in servers:
            srv.cleanup()


# -- fault injection ---------------------------------------------------------------------------------------

class FaultProxy:
    """A TCP proxy in front of a server whose behaviour a test changes at will.

    Modes (:meth:`set_mode` applies a mode before returning):

    * ``"pass"``: forward both ways, adding ``latency`` seconds to every round
      trip (half on the way in, half on the way out);
    * ``"blackhole"``: accept connections, swallow what clients send and never
      answer (a hung node); open connections go silent too;
    * ``"refuse"``: nothing listens (connects are refused) and open connections
      are reset (a crashed node).

    :meth:`reset_connections` drops every open connection with a TCP reset
    (a crash mid-request).  ``FaultProxy(None, mode="blackhole")`` is a
    black-hole server with no backend.  One event-loop thread serves
    everything, so it also works under ``gevent.monkey.patch_all()``.

        with KTServer() as srv, FaultProxy(srv.address, latency=0.001) as proxy:
            Cluster([proxy.address])
    """

    MODES = ("pass", "blackhole", "refuse")

    def __init__(self, target: str | tuple[str, int] | None, *, mode: str = "pass", latency: float = 0.0,
                 host: str = "127.0.0.1", port: int | None = None) -> None:
        if isinstance(target, str):
            thost, _, tport = target.rpartition(":")
            target = (thost, int(tport))
        if target is None and mode == "pass":
            raise ValueError("a proxy without a target can only be a black hole or refuse")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.target = target
        self.host = host
        self.port = port or free_port(host)
        self.latency = latency
        self.accepted = 0       #: connections accepted so far
        self.received = 0       #: bytes received from clients so far
        self._mode = mode
        self._commands: list[tuple[str, Any, threading.Event]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``"host:port"`` that clients should use."""
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def start(self) -> FaultProxy:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(ready,), name=f"FaultProxy-{self.port}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Close everything and end the loop thread."""
        if self._thread is not None:
            self._command("stop", None)
            self._thread.join(10)
            self._thread = None
            self._wake_r.close()
            self._wake_w.close()

    def set_mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self._command("mode", mode)

    def reset_connections(self) -> None:
        """Reset (RST) every open connection now; new ones are accepted as the mode says."""
        self._command("reset", None)

    def wait_received(self, at_least: int = 1, timeout: float = 10.0) -> bool:
        """Wait until clients have sent ``at_least`` bytes in total."""
        deadline = time.monotonic() + timeout
        while self.received < at_least:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def __enter__(self) -> FaultProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({self.address} -> {self.target}, {self._mode}, latency={self.latency})"

    # -- event loop (runs in the proxy's thread) -----------------------------------------------------------

    def _command(self, name: str, arg: Any) -> None:
        done = threading.Event()
        with self._lock:
            self._commands.append((name, arg, done))
        self._wake_w.send(b"x")
        done.wait(10)

    def _loop(self, ready: threading.Event) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        listener: socket.socket | None = None
        pipes: set[_Pipe] = set()

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, ("listen", None))
            return sock

        def close_pipe(pipe: _Pipe, reset: bool) -> None:
            pipes.discard(pipe)
            for sock in pipe.sockets():
                sel.unregister(sock)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

        def apply_mode(mode: str) -> None:
            nonlocal listener
            self._mode = mode
            if mode == "refuse":
                if listener is not None:
                    sel.unregister(listener)
                    listener.close()
                    listener = None
                for pipe in list(pipes):
                    close_pipe(pipe, reset=True)
            elif listener is None:
                listener = listen()

        def accept() -> None:
            if listener is None:
                return  # a "refuse" handled earlier in the same select batch closed it
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            upstream = None
            if self._mode == "pass":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)  # type: ignore[arg-type]
                except OSError:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                    return
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setblocking(False)
            pipe = _Pipe(client, upstream)
            pipes.add(pipe)
            sel.register(client, selectors.EVENT_READ, ("pipe", pipe))
            if upstream is not None:
                sel.register(upstream, selectors.EVENT_READ, ("pipe", pipe))

        def pump(pipe: _Pipe, sock: socket.socket) -> None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                close_pipe(pipe, reset=False)
                return
            from_client = sock is pipe.client
            if from_client:
                self.received += len(data)
            if self._mode != "pass" or pipe.upstream is None:
                return  # swallowed
            queue = pipe.to_upstream if from_client else pipe.to_client
            due = max(time.monotonic() + self.latency / 2, queue[-1][0] if queue else 0.0)
            queue.append((due, data))

        def flush(now: float) -> float | None:
            """Send what is due; return the next due time."""
            next_due = None
            for pipe in list(pipes):
                for queue, sock in ((pipe.to_upstream, pipe.upstream), (pipe.to_client, pipe.client)):
                    while queue and queue[0][0] <= now:
                        due, data = queue[0]
                        try:
                            sent = sock.send(data)  # type: ignore[union-attr]
                        except BlockingIOError:
                            sent = 0
                        except OSError:
                            close_pipe(pipe, reset=True)
                            break
                        if sent < len(data):
                            queue[0] = (now + 0.001, data[sent:])
                            break
                        queue.popleft()
                    if pipe not in pipes:
                        break
                    if queue:
                        next_due = queue[0][0] if next_due is None else min(next_due, queue[0][0])
            return next_due

        apply_mode(self._mode)
        ready.set()
        next_due: float | None = None
        stopped: list[threading.Event] = []
        while not stopped:
            timeout = None if next_due is None else max(0.0, next_due - time.monotonic())
            for key, _ in sel.select(timeout):
                kind, pipe = key.data
                if kind == "wake":
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    with self._lock:
                        commands, self._commands = self._commands, []
                    for name, arg, done in commands:
                        if name == "stop":
                            stopped.append(done)
                            continue
                        if name == "mode":
                            apply_mode(arg)
                        else:
                            for p in list(pipes):
                                close_pipe(p, reset=True)
                        done.set()
                elif kind == "listen":
                    accept()
                elif pipe in pipes:
                    pump(pipe, key.fileobj)  # type: ignore[arg-type]
            next_due = flush(time.monotonic())
        for p in list(pipes):
            close_pipe(p, reset=True)
        if listener is not None:
            sel.unregister(listener)
            listener.close()
        sel.close()
        for done in stopped:
            done.set()


class _Pipe:
    """One proxied connection: the client's socket, the upstream socket and what is queued for each."""

    __slots__ = ("client", "upstream", "to_upstream", "to_client")

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.to_upstream: deque[tuple[float, bytes]] = deque()
        self.to_client: deque[tuple[float, bytes]] = deque()

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]
