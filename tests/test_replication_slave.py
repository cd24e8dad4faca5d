"""KyotoSlave against a server (embedded, or $KT_SERVER_BIN): every operation, ng compatibility,
heartbeats, dummies, ktopts=p values, reconnects, refusals, and purged history."""

from __future__ import annotations

import threading
import time

import fronts
import kyototycoon.kyotoslave as ng_slave  # python-kyototycoon-ng, from the test extra
import pytest
from fronts import FRONTS

from ktcluster.connection import Connection
from ktcluster.errors import KTConnectionError, ReplicationError, ResyncRequiredError
from ktcluster.replication import OP_CLEAR, OP_REMOVE, OP_SET, XT_NEVER, KyotoSlave

ULOG = ["-ulog", "ulog", "-sid", "1"]
FLUSH = 0.3  # KT flushes its update log every 0.1 s


def take(gen, n: int) -> list[dict]:
    out = []
    for rec in gen:
        out.append(rec)
        if len(out) == n:
            break
    return out


def in_thread(fn):
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True, params=FRONTS)
def front(request, monkeypatch) -> str:
    """Each test runs with the KyotoSlave of each front end (``ktcluster.aio``'s through
    tests/fronts.py)."""
    return fronts.swap_consumer(request, monkeypatch, globals(), "KyotoSlave")


@pytest.fixture
def master(kt_server_factory):
    return kt_server_factory(":", "+#ktopts=p", args=ULOG)


@pytest.fixture
def rpc(master):
    conn = Connection(master.host, master.port)
    yield conn
    conn.close()


def test_every_operation_is_decoded(master, rpc):
    rpc.call("set", {b"key": b"a", b"value": b"A"})
    rpc.call("set", {b"key": b"b", b"value": b"\x00\xff", b"xt": b"-2000000000"})
    rpc.call("increment", {b"key": b"n", b"num": b"3"})
    rpc.call("set", {b"DB": b"1", b"key": b"p", b"value": b"xy"})  # ktopts=p: no expiry prefix
    rpc.call("set", {b"DB": b"1", b"key": b"q", b"value": b""})
    rpc.call("remove", {b"key": b"a"})
    rpc.call("clear", {b"DB": b"1"})
    slave = KyotoSlave(2, master.host, master.port, timeout=5)
    records = take(slave.consume(0), 7)
    slave.close()
    assert [{k: v for k, v in r.items() if k != "ts"} for r in records] == [
        {"sid": 1, "db": 0, "op": OP_SET, "key": b"a", "expires": XT_NEVER, "value": b"A"},
        {"sid": 1, "db": 0, "op": OP_SET, "key": b"b", "expires": 2000000000, "value": b"\x00\xff"},
        {"sid": 1, "db": 0, "op": OP_SET, "key": b"n", "expires": XT_NEVER, "value": (3).to_bytes(8, "big")},
        {"sid": 1, "db": 1, "op": OP_SET, "key": b"p", "expires": XT_NEVER, "value": b"xy"},
        {"sid": 1, "db": 1, "op": OP_SET, "key": b"q", "expires": XT_NEVER, "value": b""},
        {"sid": 1, "db": 0, "op": OP_REMOVE, "key": b"a"},
        {"sid": 1, "db": 1, "op": OP_CLEAR},
    ]
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(set(stamps)) and slave.last_ts == stamps[-1]


def test_records_match_python_kyototycoon_ng(kt_server_factory):
    srv = kt_server_factory(":", args=ULOG)
    conn = Connection(srv.host, srv.port)
    conn.call("set", {b"key": b"k1", b"value": b"v1"})
    conn.call("set", {b"key": b"k2", b"value": b"v" * 300, b"xt": b"-1999999999"})
    conn.call("remove", {b"key": b"k1"})
    conn.call("clear")
    conn.close()
    time.sleep(FLUSH)
    ng = ng_slave.KyotoSlave(2, srv.host, srv.port, timeout=5)
    expected = take(ng.consume(0), 4)
    ng.close()
    ours = KyotoSlave(2, srv.host, srv.port, timeout=5)
    got = take(ours.consume(0), 4)
    ours.close()
    assert [{k: v for k, v in r.items() if k != "ts"} for r in got] == expected
    assert [list(r)[:-1] for r in got] == [list(r) for r in expected]  # same keys, same order, then ts


def test_consume_from_timestamp_and_from_ts(master, rpc):
    rpc.call("set", {b"key": b"old", b"value": b"1"})
    time.sleep(1.1)
    boundary = time.time()
    time.sleep(1.1)
    rpc.call("set", {b"key": b"new", b"value": b"2"})
    rpc.call("set", {b"key": b"newer", b"value": b"3"})
    slave = KyotoSlave(2, master.host, master.port, timeout=5)
    assert [r["key"] for r in take(slave.consume(boundary), 2)] == [b"new", b"newer"]  # whole seconds, as ng
    first = take(slave.consume(0), 2)
    assert [r["key"] for r in take(slave.consume(ts=first[1]["ts"]), 1)] == [b"newer"]
    slave.close()


def test_heartbeats_are_answered_and_advance_last_ts(master, rpc):
    rpc.call("set", {b"key": b"k", b"value": b"v"})
    slave = KyotoSlave(2, master.host, master.port, timeout=0.5)
    got = []
    thread = in_thread(lambda: got.extend(slave.consume(0)))
    time.sleep(2.0)  # four timeouts long: only answered heartbeats keep the stream open
    rpc.call("set", {b"key": b"k2", b"value": b"v"})
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stamp = slave.last_ts
    slave.close()
    thread.join(5)
    assert not thread.is_alive()
    assert [r["key"] for r in got] == [b"k", b"k2"]
    assert stamp >= got[1]["ts"] and stamp > time.time_ns() - 10 * 10**9


def test_dummy_records_from_filtered_entries(master, rpc):
    rpc.call("set_bulk", {b"_k%03d" % i: b"v" for i in range(300)})
    time.sleep(FLUSH)
    reader = KyotoSlave(2, master.host, master.port, timeout=5)
    stamps = [r["ts"] for r in take(reader.consume(0), 300)]
    reader.close()
    for sid, whitesid in ((1, False), (9, True)):  # every entry filtered out
        slave = KyotoSlave(sid, master.host, master.port, timeout=5, whitesid=whitesid)
        got = []
        thread = in_thread(lambda s=slave, out=got: out.extend(s.consume(0)))
        deadline = time.monotonic() + 5
        while slave.last_ts < stamps[-1] and time.monotonic() < deadline:
            time.sleep(0.05)
        slave.close()
        thread.join(5)
        assert got == [] and slave.last_ts >= stamps[-1]


def test_close_from_another_thread_ends_consume(master):
    slave = KyotoSlave(2, master.host, master.port, timeout=30)
    done = threading.Event()
    thread = in_thread(lambda: (list(slave.consume()), done.set()))
    time.sleep(0.3)
    slave.close()
    thread.join(5)
    assert done.is_set()


def test_without_update_log_replication_is_refused(kt_server_factory):
    srv = kt_server_factory(":")
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5)
    with pytest.raises(ReplicationError):
        next(slave.consume(0))


def test_a_stopped_master_raises_without_reconnect(kt_server_factory):
    srv = kt_server_factory(":", args=ULOG)
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5)
    gen = slave.consume(0)
    errors = []
    thread = in_thread(lambda: errors.append(pytest.raises(KTConnectionError, next, gen)))
    time.sleep(0.3)
    srv.stop()
    thread.join(10)
    assert errors
    with pytest.raises(KTConnectionError):
        next(KyotoSlave(2, srv.host, srv.port, timeout=5).consume(0))


def test_reconnect_resumes_after_a_restart_without_loss_or_duplicates(kt_server_factory):
    srv = kt_server_factory(":", args=ULOG)
    conn = Connection(srv.host, srv.port)
    conn.call("set_bulk", {b"_a%d" % i: b"1" for i in range(50)})
    conn.close()
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5, reconnect=True, max_backoff=0.2)
    got: list[dict] = []
    thread = in_thread(lambda: got.extend(slave.consume(0)))
    deadline = time.monotonic() + 5
    while len(got) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.restart()
    conn = Connection(srv.host, srv.port)
    conn.call("set_bulk", {b"_b%d" % i: b"2" for i in range(50)})
    conn.close()
    deadline = time.monotonic() + 10
    while len(got) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    slave.close()
    thread.join(5)
    keys = [r["key"] for r in got]
    assert sorted(keys) == sorted([b"a%d" % i for i in range(50)] + [b"b%d" % i for i in range(50)])
    stamps = [r["ts"] for r in got]
    assert stamps == sorted(set(stamps))


def purged_master(kt_server_factory):
    """A master whose first update-log files were removed by ulog_remove; returns
    (server, every record read before the purge)."""
    srv = kt_server_factory(":", args=ULOG + ["-ulim", "2048"])
    conn = Connection(srv.host, srv.port)
    for batch in range(6):  # one flush per batch: files rotate at flush time
        conn.call("set_bulk", {b"_k%d-%d" % (batch, i): b"v" * 50 for i in range(20)})
        time.sleep(FLUSH)
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5)
    records = take(slave.consume(0), 120)
    slave.close()
    before = conn.call("ulog_list")
    conn.call("ulog_remove", {b"ts": b"now"})  # all but the newest file
    after = conn.call("ulog_list")
    conn.close()
    assert len(before) > 2 and len(after) == 1
    return srv, records


def test_purged_history_is_reported(kt_server_factory):
    srv, records = purged_master(kt_server_factory)
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5)
    with pytest.raises(ResyncRequiredError) as info:
        next(slave.consume(ts=records[3]["ts"]))
    err = info.value
    assert err.requested_ts == records[3]["ts"] and err.node == srv.address
    kept = [r for r in records if r["ts"] >= err.oldest_ts]
    assert 0 < len(kept) < len(records) - 4 and err.oldest_ts == kept[0]["ts"]
    # accepting the gap: resume just before the oldest entry kept
    assert [r["ts"] for r in take(slave.consume(ts=err.oldest_ts - 1), 2)] == [r["ts"] for r in kept[:2]]
    # a position inside the kept history is fine; so are 0 (all that is kept) and "now"
    assert take(slave.consume(ts=kept[1]["ts"]), 1)[0]["ts"] == kept[2]["ts"]
    assert take(slave.consume(0), 1)[0]["ts"] == kept[0]["ts"]
    with pytest.raises(ResyncRequiredError):
        next(slave.consume(records[0]["ts"] / 1e9))
    slave.close()


def test_resync_is_raised_not_retried_with_reconnect(kt_server_factory):
    srv, records = purged_master(kt_server_factory)
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5, reconnect=True, max_backoff=0.1)
    with pytest.raises(ResyncRequiredError):
        next(slave.consume(ts=records[0]["ts"]))
