"""A server as replication slave (``-mhost/-mport/-rts``) against a server as master:
following, the RTS file, report fields, dual masters without echo, catching up after the
master or the slave restarts.  Runs against the embedded server or $KT_SERVER_BIN."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from server_wire import update_log

from ktcluster.connection import Connection
from ktcluster.errors import LogicalInconsistencyError, NoImplementationError
from ktcluster.testing import KTServer, free_port

DEADLINE = 15.0


def wait_until(check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def value(conn: Connection, key: bytes) -> bytes | None:
    try:
        return conn.call("get", {b"key": key})[b"value"]
    except LogicalInconsistencyError:
        return None


def has(conn: Connection, key: bytes, expected: bytes | None) -> Callable[[], bool]:
    return lambda: value(conn, key) == expected


def ulog_entries(server: KTServer) -> list[tuple[int, int, bytes]]:
    """(origin sid, op, key) of every entry in a server's update log."""
    return [(entry.sid, entry.op, entry.key) for _, entry in update_log(server.host, server.port)]


def slave_args(sid: int, master: KTServer | int, riv: str = "0") -> list[str]:
    port = master if isinstance(master, int) else master.port
    return ["-ulog", "ulog", "-sid", str(sid), "-mhost", "127.0.0.1", "-mport", str(port),
            "-rts", "slave.rts", "-riv", riv]


def rts_file(server: KTServer) -> bytes:
    with open(server.path("slave.rts"), "rb") as f:
        return f.read()


@pytest.fixture
def master(kt_server_factory):
    return kt_server_factory(":", args=["-ulog", "ulog", "-sid", "1"])


@pytest.fixture
def connect():
    """RPC connections to servers, closed after the test."""
    opened: list[Connection] = []

    def factory(server: KTServer) -> Connection:
        conn = Connection(server.host, server.port, timeout=10)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()


def test_slave_follows_master_and_reports(master, kt_server_factory, connect):
    slave = kt_server_factory(":", args=slave_args(2, master, riv="0.5"))
    m, s = connect(master), connect(slave)
    m.call("set", {b"key": b"k1", b"value": b"v1"})
    m.call("set", {b"key": b"k2", b"value": b"v2", b"xt": b"1000"})
    m.call("append", {b"key": b"k1", b"value": b"+"})
    m.call("increment", {b"key": b"n", b"num": b"7"})
    m.call("set", {b"key": b"gone", b"value": b"x"})
    m.call("remove", {b"key": b"gone"})
    wait_until(has(s, b"n", b"\0" * 7 + b"\x07"))
    assert value(s, b"k1") == b"v1+"
    assert value(s, b"gone") is None
    # the stored expiry travels as is: same absolute xt on both sides
    assert s.call("check", {b"key": b"k2"})[b"xt"] == m.call("check", {b"key": b"k2"})[b"xt"]
    report = s.call("report")
    assert report[b"repl_master_host"] == b"127.0.0.1"
    assert report[b"repl_master_port"] == str(master.port).encode()
    assert report[b"repl_interval"] == b"0.500000"
    assert re.fullmatch(rb"\d+\.\d{6}", report[b"repl_delay"])
    assert int(report[b"repl_timestamp"]) > 0
    assert b"repl_master_host" not in m.call("report")
    m.call("clear")
    wait_until(lambda: s.call("status")[b"count"] == b"0")


def test_rts_file_holds_the_last_time_stamp(master, kt_server_factory, connect):
    slave = kt_server_factory(":", args=slave_args(2, master))
    assert re.fullmatch(rb"\d{20}\n", rts_file(slave))
    m, s = connect(master), connect(slave)
    m.call("set", {b"key": b"a", b"value": b"1"})
    wait_until(has(s, b"a", b"1"))
    seen = int(s.call("report")[b"repl_timestamp"])
    slave.stop()  # the session ends: the RTS file is rewritten
    data = rts_file(slave)
    assert re.fullmatch(rb"\d{20}\n", data)
    assert int(data) >= seen > 0


def test_slave_catches_up_after_its_restart(master, kt_server_factory, connect):
    slave = kt_server_factory(":", args=slave_args(2, master))
    m, s = connect(master), connect(slave)
    m.call("set", {b"key": b"before", b"value": b"1"})
    wait_until(has(s, b"before", b"1"))
    slave.stop()
    # written while the slave is down; its memory DB starts empty again, so only what
    # comes after the time stamp of its RTS file is copied
    m.call("set", {b"key": b"during", b"value": b"2"})
    m.call("remove", {b"key": b"before"})
    slave.start()
    s = connect(slave)
    wait_until(has(s, b"during", b"2"))
    assert s.call("status")[b"count"] == b"1"


def test_slave_catches_up_after_master_restart(master, kt_server_factory, connect):
    slave = kt_server_factory(":", args=slave_args(2, master))
    m, s = connect(master), connect(slave)
    m.call("set", {b"key": b"one", b"value": b"1"})
    wait_until(has(s, b"one", b"1"))
    master.restart()  # same port, same update log; time stamps go on above the old ones
    m = connect(master)
    m.call("set", {b"key": b"two", b"value": b"2"})
    m.call("set", {b"key": b"one", b"value": b"uno"})
    wait_until(has(s, b"two", b"2"))
    wait_until(has(s, b"one", b"uno"))
    assert s.call("report")[b"repl_master_port"] == str(master.port).encode()


def test_dual_masters_converge_without_echo(kt_server_factory, connect):
    port_a, port_b = free_port(), free_port()
    while port_b == port_a:
        port_b = free_port()
    a = kt_server_factory(":", port=port_a, args=slave_args(1, port_b))
    b = kt_server_factory(":", port=port_b, args=slave_args(2, port_a))
    ca, cb = connect(a), connect(b)
    ca.call("set", {b"key": b"from_a", b"value": b"A"})
    cb.call("set", {b"key": b"from_b", b"value": b"B"})
    wait_until(has(ca, b"from_b", b"B"))
    wait_until(has(cb, b"from_a", b"A"))
    cb.call("remove", {b"key": b"from_a"})
    wait_until(has(ca, b"from_a", None))
    time.sleep(1.5)  # room for an echo to come round
    # each write is logged once on each server, under the sid of the server it came from
    expected = sorted([(1, 0xA1, b"from_a"), (2, 0xA1, b"from_b"), (2, 0xA2, b"from_a")])
    assert sorted(ulog_entries(a)) == expected
    assert sorted(ulog_entries(b)) == expected
    assert ca.call("status")[b"count"] == cb.call("status")[b"count"] == b"1"


def test_tune_replication_switches_master(master, kt_server_factory, connect):
    other = kt_server_factory(":", args=["-ulog", "ulog", "-sid", "3"])
    slave = kt_server_factory(":", args=slave_args(2, master))
    m, o, s = connect(master), connect(other), connect(slave)
    m.call("set", {b"key": b"m", b"value": b"1"})
    wait_until(has(s, b"m", b"1"))
    o.call("set", {b"key": b"o", b"value": b"2"})
    s.call("tune_replication", {b"host": b"127.0.0.1", b"port": str(other.port).encode(), b"ts": b"0",
                                b"iv": b"0.25"})
    wait_until(has(s, b"o", b"2"))
    report = s.call("report")
    assert report[b"repl_master_port"] == str(other.port).encode()
    assert report[b"repl_interval"] == b"0.250000"
    assert int(rts_file(slave)) == 0  # the ts given, written when the new session began
    s.call("tune_replication")  # no host: replication stops, the report fields go
    assert b"repl_master_host" not in s.call("report")
    wait_until(lambda: int(rts_file(slave)) > 0)  # written when the session ended


def test_tune_replication_needs_an_rts_file(kt_server, connect):
    with pytest.raises(NoImplementationError):
        connect(kt_server).call("tune_replication", {b"host": b"127.0.0.1"})
