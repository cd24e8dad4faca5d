"""ktcluster.testing and the pytest plug-in: server life cycle (start, stop, kill, pause,
restart), files, ports, clusters, $KT_SERVER_BIN, and the fixtures as a third-party
project gets them through the ``pytest11`` entry point."""

from __future__ import annotations

import os
import socket
import stat
import sys

import pytest

from ktcluster.connection import Connection
from ktcluster.protocol.replication import ACK, decode_accept, decode_log_stream, encode_handshake
from ktcluster.testing import PORT_MAX, PORT_MIN, KTServer, free_port, server_command, start_cluster, using_real_server

pytest_plugins = ["pytester"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rpc(srv: KTServer, name: str, params: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    conn = Connection(srv.host, srv.port)
    try:
        return conn.call(name, params or {})
    finally:
        conn.close()


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_free_port_is_free_and_below_32768():
    for _ in range(50):
        port = free_port()
        assert PORT_MIN <= port <= PORT_MAX < 32768
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it


def test_server_life_cycle_and_files():
    srv = KTServer(":", args=["-ulog", "ulog", "-sid", "1"])
    workdir = srv.workdir
    assert srv.address == f"127.0.0.1:{srv.port}" and PORT_MIN <= srv.port <= PORT_MAX
    assert not srv.is_running() and not srv.ping()
    with srv:
        pid = srv.pid
        assert srv.is_running() and srv.ping() and alive(pid)
        assert os.path.isdir(srv.path("ulog"))  # relative paths land in the working directory
        rpc(srv, "set", {b"key": b"k", b"value": b"v"})
        srv.stop()
        assert not srv.is_running() and not alive(pid) and not port_open(srv.port)
        assert os.path.isdir(workdir)  # stop keeps the files
        srv.start()
        assert srv.ping() and srv.pid != pid
    assert not srv.is_running() and not port_open(srv.port)
    assert not os.path.exists(workdir)  # cleaned up on exit


def test_kill_and_restart_keep_port_and_files(tmp_path):
    srv = KTServer("casket.kch", workdir=str(tmp_path)).start()
    try:
        port, pid = srv.port, srv.pid
        rpc(srv, "set", {b"key": b"k", b"value": b"kept"})
        srv.kill()
        assert not alive(pid) and not srv.is_running()
        srv.restart()
        assert srv.port == port and srv.ping()
        assert rpc(srv, "get", {b"key": b"k"})[b"value"] == b"kept"  # the file DB survived
        srv.restart()
        assert srv.port == port and srv.ping()
    finally:
        srv.cleanup()
    assert os.path.isdir(tmp_path)  # a workdir we were given is not ours to remove
    assert (tmp_path / "casket.kch").exists()


def test_pause_and_resume():
    with KTServer() as srv:
        srv.pause()
        try:
            proc_stat = f"/proc/{srv.pid}/stat"
            if os.path.exists(proc_stat):  # pause() returns once the process is stopped
                with open(proc_stat) as f:
                    assert f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
            assert not srv.ping(timeout=0.5)
        finally:
            srv.resume()
        assert srv.ping()


def test_start_failure_is_reported():
    srv = KTServer(args=["-no-such-option"])
    with pytest.raises(RuntimeError, match="failed to start"):
        srv.start()
    assert srv.process is None
    srv.cleanup()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = KTServer(port=holder.getsockname()[1], startup_timeout=5)
        with pytest.raises(RuntimeError):
            busy.start()
        busy.cleanup()


def test_start_cluster_gives_each_server_its_sid():
    with start_cluster(3, ulog=True) as servers:
        assert len({s.port for s in servers}) == 3
        pids = [s.pid for s in servers]
        for index, srv in enumerate(servers):
            rpc(srv, "set", {b"key": b"k", b"value": b"v"})
            with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
                sock.sendall(encode_handshake(0, 65535))
                decode_accept(sock.recv(1))
                buf = b""
                entries: list[tuple] = []
                while not entries:  # the update log reaches readers within 0.1 s
                    buf += sock.recv(65536)
                    items, pos, heartbeats = decode_log_stream(buf)
                    buf = buf[pos:]
                    entries += [item for item in items if isinstance(item, tuple)]
                    sock.sendall(ACK * heartbeats)
            assert [entry[1] for entry in entries] == [index + 1]
    assert not any(alive(pid) for pid in pids)


def test_kt_server_bin_is_honoured(tmp_path, monkeypatch):
    """A wrapper named by KT_SERVER_BIN gets exactly KTServer's command line."""
    record = tmp_path / "argv.txt"
    target = " ".join(server_command())  # what would have run: the real binary or the embedded server
    wrapper = tmp_path / "fake-ktserver"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {record}\nexec {target} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KT_SERVER_BIN", str(wrapper))
    assert server_command() == [str(wrapper)] and using_real_server()
    with KTServer("+", args=["-th", "4"]) as srv:
        assert srv.ping()
        argv = record.read_text().split()
    assert argv == ["-host", "127.0.0.1", "-port", str(srv.port), "-log", "server.log", "-le", "-th", "4", "+"]
    monkeypatch.delenv("KT_SERVER_BIN")
    assert server_command() == [sys.executable, "-m", "ktcluster.server"] and not using_real_server()


def test_fixtures_reach_third_party_tests_through_the_entry_point(pytester):
    pids_file = pytester.path / "pids.txt"
    pytester.makepyfile(f"""
        from ktcluster.connection import Connection

        def test_fixtures(kt_server, kt_server_factory, kt_cluster):
            extra = kt_server_factory("+", args=["-ulog", "ulog", "-sid", "9"])
            servers = [kt_server, extra, *kt_cluster]
            assert len(kt_cluster) == 3 and len({{s.port for s in servers}}) == 5
            for srv in servers:
                conn = Connection(srv.host, srv.port)
                assert conn.call("set", {{b"key": b"k", b"value": b"v"}}) == {{}}
                conn.close()
            with open({str(pids_file)!r}, "w") as f:
                f.write(" ".join(str(s.pid) for s in servers))
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 5 and not any(alive(pid) for pid in pids)  # every fixture stopped its servers


def test_stop_escalates_to_kill_when_the_server_hangs():
    with KTServer() as srv:
        pid = srv.pid
        srv.pause()  # SIGTERM cannot be handled while stopped
        srv.stop(timeout=1.0)
        assert not alive(pid)
