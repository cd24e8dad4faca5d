"""The server's command line and process life cycle (ktserver's rules): usage errors,
consistency checks, -pid, -log, -dmn, signals.  Runs against the embedded server or
$KT_SERVER_BIN alike."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from server_wire import Wire, connect

from ktcluster.testing import KTServer, free_port, server_command

USAGE = "Kyoto Tycoon: a handy cache/storage server"


def run(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    """Run a server command line that is expected to end by itself."""
    return subprocess.run(server_command() + args, cwd=cwd, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def base_args() -> list[str]:
    return ["-host", "127.0.0.1", "-port", str(free_port()), "-log", "server.log"]


@pytest.mark.parametrize("args", [
    ["-nosuchoption"],
    ["-port"],
    ["-port", "0"],
    ["-th", "0"],
    ["-pldb", "ktplugdbvoid.so"],
])
def test_bad_command_line_prints_usage(tmp_path, args):
    done = run(args, str(tmp_path))
    assert done.returncode == 1
    assert USAGE in done.stderr and "usage:" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["-ulog", "ulog"], "update log requires the server ID"),
    (["-mhost", "127.0.0.1", "-rts", "x.rts"], "replication requires the server ID"),
    (["-mhost", "127.0.0.1", "-sid", "2"], "replication requires the replication time stamp file"),
    (["-scr", "missing.lua"], "no such file"),
    (["-cmd", "missing-dir"], "no such directory"),
    (["-dmn", "-pid", "relative.pid"], "a daemon can accept absolute path only"),
])
def test_inconsistent_options_fail(tmp_path, args, message):
    done = run(base_args() + args, str(tmp_path))
    assert done.returncode == 1
    assert message in done.stderr


def test_options_stop_at_the_first_database(tmp_path):
    # "-port" after ":" is a database spec, and not a valid one
    done = run(base_args() + [":", "-port", "1"], str(tmp_path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr


def test_a_database_of_unknown_type_is_one_error_line(tmp_path):
    done = run(base_args() + ["x.kcy"], str(tmp_path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
    assert "could not open a database file" in done.stderr + log


@pytest.mark.parametrize("host, port, expr", [
    ("0.0.0.0", 1978, "0.0.0.0:1978"),        # an address whose atoi is < 1 (ktsocket.cc)
    ("0.1.2.3", 1978, "0.1.2.3:1978"),
    (None, 32768, ":32768"),                  # a port above INT16MAX
    (None, 99999, ":99999"),
])
def test_an_address_ktserver_cannot_listen_on_ends_the_server(tmp_path, host, port, expr):
    args = (["-host", host] if host is not None else []) + ["-port", str(port), "-log", "server.log", ":"]
    done = run(args, str(tmp_path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    log = (tmp_path / "server.log").read_text()
    assert f"[ERROR]: socket error: expr={expr} msg=invalid address expression" in log


def test_an_empty_host_is_an_unknown_host(tmp_path):
    done = run(["-host", "", "-port", str(free_port()), "-log", "server.log", ":"], str(tmp_path))
    assert done.returncode == 1
    assert "[ERROR]: unknown host: \n" in (tmp_path / "server.log").read_text()


def test_without_host_the_server_listens_on_every_address(tmp_path):
    port = free_port()
    proc = subprocess.Popen(server_command() + ["-port", str(port), ":"], cwd=str(tmp_path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for host in ("127.0.0.1", "127.0.0.2"):       # a listener on 127.0.0.1 alone refuses the second
            connect(port, host, timeout=15).close()
        with Wire("127.0.0.2", port) as wire:
            assert wire.set(b"k", b"v") == 200
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def exit_status_after(srv: KTServer, signum: int) -> int:
    """Send ``signum`` to a running server; its exit status."""
    proc = srv.process
    assert proc is not None
    proc.send_signal(signum)
    return proc.wait(15)


def test_pid_file_log_and_clean_exit_on_sigterm(tmp_path):
    srv = KTServer(":", args=["-pid", "server.pid"], workdir=str(tmp_path), log=True)
    srv.start()
    try:
        with open(tmp_path / "server.pid") as f:
            assert f.read() == f"{srv.pid}\n"
        assert exit_status_after(srv, signal.SIGTERM) == 0
    finally:
        srv.stop()
    assert not (tmp_path / "server.pid").exists()
    log = (tmp_path / "server.log").read_text()
    assert "[SYSTEM]" in log


def test_sigint_also_stops_cleanly(tmp_path):
    srv = KTServer(":", workdir=str(tmp_path)).start()
    try:
        assert exit_status_after(srv, signal.SIGINT) == 0
    finally:
        srv.stop()


def test_thread_count_is_capped_at_64(tmp_path):
    with KTServer(":", args=["-th", "100"], workdir=str(tmp_path)) as srv, Wire(srv.host, srv.port) as wire:
        status, out = wire.rpc("report")
        assert status == 200
        assert out[b"serv_thread_count"] == b"64"


def test_daemon_mode(tmp_path):
    port = free_port()
    pid_path = str(tmp_path / "daemon.pid")
    args = ["-dmn", "-host", "127.0.0.1", "-port", str(port), "-log", str(tmp_path / "server.log"), "-le",
            "-pid", pid_path, str(tmp_path / "casket.kch")]
    done = run(args, str(tmp_path))
    assert done.returncode == 0
    deadline = time.monotonic() + 15
    pid = None
    try:
        while time.monotonic() < deadline:
            try:
                with Wire("127.0.0.1", port) as wire:
                    assert wire.set(b"k", b"v") == 200
                break
            except OSError:
                time.sleep(0.05)
        with open(pid_path) as f:
            pid = int(f.read())
        assert pid != os.getpid()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            while time.monotonic() < deadline and os.path.exists(pid_path):
                time.sleep(0.05)
    assert not os.path.exists(pid_path)
