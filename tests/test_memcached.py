"""The memcached plug-in: the sans-IO protocol functions, and behaviour beyond the golden
transcripts (queue waiting, update logging, framing across packets, large values,
expiry kept by incr, the refused q+r combination).  Integration tests run against the
embedded server or $KT_SERVER_BIN with its ktplugservmemc.so."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from golden_replay import libexec_dir
from server_wire import connect, update_log

from ktcluster.connection import Connection
from ktcluster.protocol import memcache as mc
from ktcluster.protocol.framing import Incomplete
from ktcluster.protocol.kcnum import INT64MAX
from ktcluster.protocol.replication import OP_SET
from ktcluster.testing import free_port, using_real_server

# -- protocol functions -------------------------------------------------------------------------


def test_tokenize_splits_on_control_bytes_and_stops_at_nul():
    assert mc.tokenize(b"  get\ta\x0bb\x01c ") == [b"get", b"a", b"b", b"c"]
    assert mc.tokenize(b"set k\x00 0 0 1") == [b"set", b"k"]
    assert mc.tokenize(b"get \x80\xff") == [b"get", b"\x80\xff"]
    assert mc.tokenize(b"") == []


def test_read_command_keeps_8191_bytes_of_a_line():
    tokens, pos = mc.read_command(b"get a\r\nrest", 0)
    assert (tokens, pos) == ([b"get", b"a"], 7)
    with pytest.raises(Incomplete):
        mc.read_command(b"get a", 0)
    long = b"get " + b"k" * 9000 + b"\n"
    tokens, pos = mc.read_command(long, 0)
    assert len(tokens[1]) == 8191 - 4 and pos == 8191
    assert mc.read_command(long, pos)[0] == [b"k" * (9000 - 8187)]


def test_parse_storage_reads_numbers_leniently():
    req = mc.parse_storage([b"set", b"k", b"-1", b"100", b"5x", b"junk", b"noreply"])
    assert req == mc.StorageRequest(b"k", 0xFFFFFFFF, 100, 5, True)
    assert mc.parse_storage([b"set", b"k", b"1", b"0"]) is None
    assert mc.parse_storage([b"add", b"k", b"1", b"0", b"1"]).noreply is False


def test_exptime_conventions():
    assert mc.exptime_to_xt(0) == INT64MAX
    assert mc.exptime_to_xt(-5) == INT64MAX
    assert mc.exptime_to_xt(1) == 1
    assert mc.exptime_to_xt(1 << 24) == 1 << 24
    assert mc.exptime_to_xt((1 << 24) + 1) == -((1 << 24) + 1)


def test_read_data_block_terminators_and_sizes():
    assert mc.read_data_block(b"ab\r\nX", 0, 2) == (b"ab", 4)
    assert mc.read_data_block(b"ab\nX", 0, 2) == (b"ab", 3)
    assert mc.read_data_block(b"\r\n\r\n", 0, 2) == (b"\r\n", 4)
    with pytest.raises(Incomplete) as inc:
        mc.read_data_block(b"a", 0, 2)
    assert inc.value.needed == 3
    with pytest.raises(Incomplete) as inc:
        mc.read_data_block(b"ab\r", 0, 2)
    assert inc.value.needed == 4
    for bad in (b"abX", b"ab\rX"):
        with pytest.raises(mc.BadDataBlock):
            mc.read_data_block(bad, 0, 2)
    for size in (-1, (1 << 28) + 1):
        with pytest.raises(mc.BadDataBlock):
            mc.read_data_block(b"", 0, size)


def test_flags_and_incr_values():
    assert mc.pack_flags(b"v", 7) == b"v\0\0\0\x07"
    assert mc.unpack_flags(b"v\0\0\0\x07", True) == (b"v", 7)
    assert mc.unpack_flags(b"v\0\0\0\x07", False) == (b"v\0\0\0\x07", 0)
    assert mc.unpack_flags(b"abc", True) == (b"abc", 0)
    assert mc.incr_value(b"10\0\0\0\x05", 5, True) == (b"15\0\0\0\x05", 15)
    assert mc.incr_value(b"10", -100, False) == (b"0", 0)
    assert mc.incr_value(b"abc", 2, False) == (b"2", 2)
    assert mc.incr_value(b" 12ab", 1, False) == (b"13", 13)
    assert mc.incr_value(b"12", 1, True) == (b"13", 13)  # too short for flags: no suffix
    assert mc.incr_value(b"9223372036854775807", 1, False) == (b"0", 0)  # int64 wrap, then clamp


def test_queue_keys_sort_in_arrival_order():
    first = mc.queue_key(b"job", 1795712100.093, 0)
    assert first == b"job 01795712100093 0000"
    assert mc.queue_key(b"job", 1795712100.093, 10001) == b"job 01795712100093 0001"
    assert first.startswith(mc.queue_prefix(b"job"))


def test_encoders():
    assert mc.encode_value(b"k", 4294967295, b"x\r\ny") == b"VALUE k 4294967295 4\r\nx\r\ny\r\n"
    assert mc.encode_stats([(b"pid", 12), (b"version", mc.VERSION)]) == (
        b"STAT pid 12\r\nSTAT version KyotoTycoon/0.9.56b\r\nEND\r\n")
    assert mc.server_error("set") == b"SERVER_ERROR DB::set failed\r\n"


# -- against a server ---------------------------------------------------------------------------


def plugin_args(opts: str = "f", extra: str = "") -> tuple[list[str], int]:
    port = free_port()
    path = os.path.join(libexec_dir(), "ktplugservmemc.so") if using_real_server() else "ktplugservmemc.so"
    return ["-plsv", path, "-plex", f"port={port}#opts={opts}{extra}"], port


class Memc:
    """A raw memcached text connection."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_until(self, end: bytes) -> bytes:
        while not self.buf.endswith(end):
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        out, self.buf = self.buf, b""
        return out

    def call(self, data: bytes, end: bytes = b"\r\n") -> bytes:
        self.send(data)
        return self.recv_until(end)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def memc_server(kt_server_factory):
    """(server, memcached connection factory) with opts given by the test's parameter."""
    clients: list[Memc] = []

    def start(*dbs: str, opts: str = "f", extra: str = "", args: tuple[str, ...] = ()):
        plex, port = plugin_args(opts, extra)
        server = kt_server_factory(*dbs, args=[*args, *plex])

        def client() -> Memc:
            memc = Memc(port)
            clients.append(memc)
            return memc

        return server, client

    yield start
    for memc in clients:
        memc.close()


def test_queue_get_waits_for_a_message(memc_server):
    _, client = memc_server("%", opts="fq", extra="#qtout=10")
    consumer, producer = client(), client()
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(consumer.call(b"get jobs\r\n", b"END\r\n")))
    thread.start()
    time.sleep(0.3)  # the consumer is waiting on an empty queue
    assert producer.call(b"set jobs 3 0 5\r\nhello\r\n") == b"STORED\r\n"
    thread.join(10)
    assert got == [b"VALUE jobs 3 5\r\nhello\r\nEND\r\n"]
    assert consumer.call(b"delete jobs\r\n") == b"DELETED\r\n"
    assert consumer.call(b"delete jobs\r\n") == b"NOT_FOUND\r\n"


def test_queue_get_of_several_keys_and_redelivery(memc_server):
    _, client = memc_server("%", opts="q", extra="#qtout=0.2")
    producer = client()
    for key, data in ((b"a", b"1"), (b"b", b"2"), (b"a", b"3")):
        assert producer.call(b"set %s 0 0 1\r\n%s\r\n" % (key, data)) == b"STORED\r\n"
    consumer = client()
    assert consumer.call(b"get a b c\r\n", b"END\r\n") == b"VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
    assert consumer.call(b"get a\r\n", b"END\r\n") == b"VALUE a 0 1\r\n3\r\nEND\r\n"
    assert consumer.call(b"delete a\r\n") == b"DELETED\r\n"  # acknowledges the oldest taken ("1")
    consumer.close()  # "2" and "3" were never acknowledged: they come back
    other = client()
    deadline = time.monotonic() + 10
    answer = b""
    while b"VALUE a" not in answer and time.monotonic() < deadline:
        answer = other.call(b"get a b\r\n", b"END\r\n")
    assert answer == b"VALUE a 0 1\r\n3\r\nVALUE b 0 1\r\n2\r\nEND\r\n"


def test_writes_are_logged_with_flags(memc_server):
    server, client = memc_server(":", args=("-ulog", "ulog", "-sid", "1"))
    memc = client()
    assert memc.call(b"set k 5 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert memc.call(b"incr k 1\r\n") == b"1\r\n"
    assert memc.call(b"delete k\r\n") == b"DELETED\r\n"
    time.sleep(0.3)  # the update log is flushed every 0.1 s
    entries = [(entry.op, entry.key, entry.value) for _, entry in update_log(server.host, server.port, 0, 2)]
    never = b"\xff" * 5
    assert entries == [(OP_SET, b"k", never + b"hi\0\0\0\x05"), (OP_SET, b"k", never + b"1\0\0\0\x05"),
                       (0xA2, b"k", b"")]


def test_incr_keeps_the_expiry(memc_server):
    server, client = memc_server(":")
    memc = client()
    assert memc.call(b"set n 0 1000 1\r\n5\r\n") == b"STORED\r\n"
    conn = Connection(server.host, server.port)
    try:
        before = conn.call("check", {b"key": b"n"})[b"xt"]
        assert memc.call(b"decr n 2\r\n") == b"3\r\n"
        assert conn.call("check", {b"key": b"n"})[b"xt"] == before
    finally:
        conn.close()


def test_framing_across_packets_and_large_values(memc_server):
    _, client = memc_server(":")
    memc = client()
    for byte in b"set slow 1 0 3\r\nabc\r\n":  # one byte per packet
        memc.send(bytes((byte,)))
        time.sleep(0.002)
    assert memc.recv_until(b"\r\n") == b"STORED\r\n"
    big = os.urandom(3 << 20)
    assert memc.call(b"set big 9 0 %d\r\n%s\r\n" % (len(big), big)) == b"STORED\r\n"
    answer = memc.call(b"get big slow\r\n", b"END\r\n")
    assert answer == b"VALUE big 9 %d\r\n%s\r\nVALUE slow 1 3\r\nabc\r\nEND\r\n" % (len(big), big)
    # pipelined commands are answered in order
    assert memc.call(b"set p 0 0 1\r\nP\r\nget p\r\ndelete p\r\n", b"DELETED\r\n") == (
        b"STORED\r\nVALUE p 0 1\r\nP\r\nEND\r\nDELETED\r\n")


def test_stats_count_operations(memc_server):
    _, client = memc_server(":", extra="#th=3")
    memc = client()
    memc.call(b"set a 0 0 1\r\nA\r\n")
    memc.call(b"add a 0 0 1\r\nA\r\n")
    memc.call(b"get a b\r\n", b"END\r\n")
    memc.call(b"delete b\r\n")
    memc.call(b"incr a 1\r\n")
    memc.call(b"decr zz 1\r\n")
    memc.call(b"flush_all\r\n")
    stats = dict(line.split(b" ", 2)[1:] for line in memc.call(b"stats\r\n", b"END\r\n").splitlines()[:-1])
    assert stats[b"threads"] == b"3"
    assert stats[b"curr_items"] == b"0"
    assert {k: stats[k] for k in (b"set_hits", b"set_misses", b"get_hits", b"get_misses", b"delete_hits",
                                  b"delete_misses", b"incr_hits", b"incr_misses", b"decr_hits", b"decr_misses",
                                  b"cmd_set", b"cmd_get", b"cmd_delete", b"cmd_flush")} == {
        b"set_hits": b"1", b"set_misses": b"1", b"get_hits": b"1", b"get_misses": b"1", b"delete_hits": b"0",
        b"delete_misses": b"1", b"incr_hits": b"1", b"incr_misses": b"0", b"decr_hits": b"0",
        b"decr_misses": b"1", b"cmd_set": b"2", b"cmd_get": b"2", b"cmd_delete": b"1", b"cmd_flush": b"1"}


def test_queue_with_read_only_does_not_start(kt_server_factory):
    plex, port = plugin_args("qr")
    server = kt_server_factory(":", args=plex)
    time.sleep(1.0)  # ktserver starts its plug-in 0.4 s after the main port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert server.ping()
