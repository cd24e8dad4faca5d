"""File databases and the update log across restarts: SIGTERM and SIGKILL, ktopts=p kept
in the file, update-log rotation and removal, time stamps that keep increasing after a
restart, heartbeats.  Runs against the embedded server or $KT_SERVER_BIN.

(-bgs snapshots are covered by test_server_storage: the reference ktserver build forks
to snapshot and abandons every attempt, so there is nothing to compare over the wire.)"""

from __future__ import annotations

import struct
import time

import pytest
from server_wire import Wire, update_log

from ktcluster.protocol.rpc import encode_call
from ktcluster.testing import KTServer


@pytest.mark.parametrize("spec", ["casket.kch", "casket.kct", "casket.kcd", "casket.kcf"])
def test_file_database_survives_a_restart(spec):
    with KTServer(spec) as srv:
        with Wire(srv.host, srv.port) as wire:
            for i in range(50):
                assert wire.set(b"k%02d" % i, b"v%d" % i) == 200
            assert wire.set(b"exp", b"x", xt=-4102444800) == 200
            assert wire.rpc("remove", key=b"k00")[0] == 200
        srv.restart()
        with Wire(srv.host, srv.port) as wire:
            assert wire.rpc("status")[1][b"count"] == b"50"
            assert wire.get(b"k00") is None
            assert wire.get(b"k49") == b"v49"
            assert wire.rpc("get", key=b"exp")[1] == {b"value": b"x", b"xt": b"4102444800"}


def test_hash_file_survives_sigkill():
    with KTServer("casket.kch") as srv:
        with Wire(srv.host, srv.port) as wire:
            for i in range(100):
                assert wire.set(b"k%03d" % i, b"v" * i) == 200
        srv.kill()
        srv.restart()
        with Wire(srv.host, srv.port) as wire:
            assert wire.get(b"k099") == b"v" * 99
            assert wire.rpc("status")[1][b"count"] == b"100"


def test_ktopts_is_a_property_of_the_file():
    with KTServer("casket.kct#ktopts=p") as srv:
        with Wire(srv.host, srv.port) as wire:
            wire.set(b"k", b"v", xt=-1)
        srv.dbs = ["casket.kct"]
        srv.restart()
        with Wire(srv.host, srv.port) as wire:
            assert wire.rpc("status")[1][b"ktopts"] == b"2"
            assert wire.rpc("get", key=b"k")[1] == {b"value": b"v"}


def test_update_log_time_stamps_increase_across_a_restart():
    with KTServer(":", args=["-ulog", "ulog", "-sid", "1"]) as srv:
        with Wire(srv.host, srv.port) as wire:
            for i in range(5):
                wire.set(b"a%d" % i, b"v")
        time.sleep(0.3)
        srv.restart()
        with Wire(srv.host, srv.port) as wire:
            for i in range(5):
                wire.set(b"b%d" % i, b"v")
        time.sleep(0.3)
        records = update_log(srv.host, srv.port, 0, 2)
    keys = [entry.key for _, entry in records]
    assert keys == [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(5)]
    stamps = [ts for ts, _ in records]
    assert stamps == sorted(set(stamps))
    assert all(ts > 10 ** 18 for ts in stamps)


def test_update_log_rotation_and_removal():
    with KTServer(":", args=["-ulog", "ulog", "-sid", "1", "-ulim", "1k"]) as srv:
        with Wire(srv.host, srv.port) as wire:
            for i in range(6):
                for j in range(10):
                    wire.set(b"k%d-%d" % (i, j), b"x" * 100)
                time.sleep(0.25)  # one flush per batch; a file rotates once it has reached 1 KiB
            status, files = wire.rpc("ulog_list")
            assert status == 200 and len(files) >= 3
            sizes = {path: int(value.split(b":")[0]) for path, value in files.items()}
            assert all(path.startswith(b"ulog/") and path.endswith(b".ulog") for path in sizes)
            newest = max(files)
            assert wire.rpc("ulog_remove", ts=b"now")[0] == 200
            status, left = wire.rpc("ulog_list")
            assert list(left) == [newest]
        # what is left of the history is still served; removed files are simply gone
        keys = [entry.key for _, entry in update_log(srv.host, srv.port, 0, 2)]
        assert keys and keys[-1] == b"k5-9" and b"k0-0" not in keys


def test_heartbeat_needs_an_acknowledgement():
    with KTServer(":", args=["-ulog", "ulog", "-sid", "1"]) as srv, Wire(srv.host, srv.port) as wire:
        wire.replication(2 ** 64 - 1, 2)
        assert wire.recv_exact(1) == b"\xb1"
        nop = wire.recv_exact(9)
        assert nop[0] == 0xB0
        (ts,) = struct.unpack(">Q", nop[1:])
        assert abs(ts / 1e9 - (time.time() - 1)) < 5
        wire.sock.sendall(b"\xb1")
        assert wire.recv_exact(1) == b"\xb0"


def test_sigkill_after_a_burst_loses_the_update_log_tail_not_the_records():
    """The update log is written every 0.1 s (or 64 KiB), the database at once: killed
    right after a burst of writes, the server keeps every record but its log lacks the
    last ones, so no replication consumer will ever see them (docs/replication.md)."""
    requests = [encode_call(b"set", [(b"key", b"k%05d" % i), (b"value", b"v")]) for i in range(3000)]
    losses = []
    for _ in range(3):
        with KTServer("casket.kch", args=["-ulog", "ulog", "-sid", "1"]) as srv:
            with Wire(srv.host, srv.port) as wire:
                for start in range(0, len(requests), 100):
                    wire.sock.sendall(b"".join(requests[start:start + 100]))
                    for _ in range(100):
                        assert wire.response()[0].status == 200
            srv.kill()
            srv.start()
            with Wire(srv.host, srv.port) as wire:
                assert wire.rpc("status")[1][b"count"] == b"3000"
            logged = update_log(srv.host, srv.port)
            assert [entry.key for _, entry in logged] == [b"k%05d" % i for i in range(len(logged))]
            losses.append(len(requests) - len(logged))
    assert max(losses) > 0, "every kill came after a flush of the log"
