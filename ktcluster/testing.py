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
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

__all__ = ["KTServer", "start_cluster", "free_port", "server_command", "using_real_server", "PORT_MIN", "PORT_MAX"]

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
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung node)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

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
