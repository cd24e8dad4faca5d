"""Connection (ktcluster.connection) and ConnectionPool (ktcluster.pool): framing over real
sockets, failure hygiene (a connection is never reused after an error midway), pool
bounds, LIFO reuse, retirement, liveness probes, threads and gevent.

Servers: the KT server under test (embedded or $KT_SERVER_BIN) for normal traffic, and
small scripted socket servers (below) for the faults a healthy KT never produces."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from threaded import run_threads

from ktcluster import connection as connection_module
from ktcluster.connection import Connection
from ktcluster.errors import (
    InvalidArgumentError,
    KTConnectionError,
    LogicalInconsistencyError,
    PoolTimeoutError,
    ProtocolError,
    SocketTimeoutError,
)
from ktcluster.pool import ConnectionPool, PoolStats
from ktcluster.protocol import binary

OK_VOID = (b"HTTP/1.1 200 OK\r\nServer: KyotoTycoon/0.9.56b\r\nContent-Length: 0\r\n"
           b"Content-Type: text/tab-separated-values\r\n\r\n")


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs ``handler(conn, index)`` for each in a thread."""

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            index = self.accepted
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, conn: socket.socket, index: int) -> None:
        try:
            self.handler(conn, index)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        for sock in [self.listener, *self.conns]:  # shutdown wakes threads blocked on these sockets
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for t in self.threads:
            t.join(5)
        self.thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[socket.socket, int], None]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(handler: Callable[[socket.socket, int], None]) -> ScriptedServer:
        srv = ScriptedServer(handler)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


# -- Connection against the server under test -------------------------------------------------


def test_lazy_connect_nodelay_and_keepalive(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    assert not conn.connected and conn.generation == 0
    assert conn.call("void") == {}
    assert conn.connected and conn.generation == 1
    assert conn._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    # a blocking socket with kernel timeouts: no poll() before each send and recv
    assert conn._sock.gettimeout() is None
    sec, usec = struct.unpack("@ll", conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    assert sec == 0 and abs(usec - 250000) < 10000  # waits are steps of WAIT_STEP (timeout bounds the exchange)
    conn.set_timeout(0.25)
    sec, usec = struct.unpack("@ll", conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
    assert sec == 0 and abs(usec - 250000) < 10000  # the kernel rounds to its clock tick
    conn.set_timeout(30)
    for _ in range(3):
        assert conn.call(b"void") == {}
    assert conn.generation == 1  # one socket for all calls
    assert conn.is_alive()
    conn.close()
    assert not conn.connected and not conn.broken
    assert conn.call("void") == {} and conn.generation == 2


def test_call_roundtrips_any_bytes(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    params = [(b"", b""), (b"tab\tkey", b"line\nvalue\r"), (b"\xff\xfe", bytes(range(256))), (b"k", b"v" * 300)]
    assert conn.call("echo", params) == dict(params)


def test_call_raises_typed_errors_and_stays_usable(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    with pytest.raises(LogicalInconsistencyError) as info:
        conn.call("get", [(b"key", b"missing")])
    assert info.value.code == 450 and "no record" in info.value.message
    with pytest.raises(InvalidArgumentError) as info:
        conn.call("status", [(b"DB", b"nosuchdb")])
    assert info.value.code == 400 and info.value.message == "no such database"
    assert not conn.broken
    assert conn.call("void") == {} and conn.generation == 1


def test_binary_requests_share_the_connection_with_http(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    records = [(0, b"k%05d" % i, b"v" * (i % 50), binary.XT_NONE) for i in range(5000)]
    hits = conn.request_binary(binary.encode_set_bulk(records),
                               lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK))
    assert hits == 5000
    assert conn.call("status")[b"count"] == b"5000"
    got = conn.request_binary(binary.encode_get_bulk([(0, k) for _, k, _, _ in records]),
                              binary.decode_get_bulk_reply)
    assert [(k, v) for _, k, v, _ in got] == [(k, v) for _, k, v, _ in records]
    assert conn.request_binary(binary.encode_remove_bulk([(0, b"k00001")], binary.FLAG_NOREPLY),
                               lambda b: binary.decode_count_reply(b, binary.MAGIC_REMOVE_BULK),
                               noreply=True) is None
    assert conn.call("check", [(b"key", b"k00002")])[b"vsiz"] == b"2"
    with pytest.raises(LogicalInconsistencyError):
        conn.call("check", [(b"key", b"k00001")])
    assert conn.generation == 1


def test_large_replies_grow_the_buffer(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    big = os.urandom(3 << 20)
    conn.request_binary(binary.encode_set_bulk([(0, b"big", big, binary.XT_NONE)]),
                        lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK))
    assert conn.call("get", [(b"key", b"big")])[b"value"] == big
    (_, key, value, _), = conn.request_binary(binary.encode_get_bulk([(0, b"big")]), binary.decode_get_bulk_reply)
    assert value == big and len(conn._view) == 65536
    assert conn.call("void") == {} and conn.generation == 1


def test_binary_error_reply_breaks_the_connection(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    # a key size over 2^28: the server answers 0xBF and closes
    bad = struct.pack(">BII", binary.MAGIC_SET_BULK, 0, 1) + struct.pack(">HIIq", 0, (1 << 28) + 1, 0, 0)
    with pytest.raises(ProtocolError):
        conn.request_binary(bad, lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK))
    assert conn.broken and not conn.connected
    with pytest.raises(KTConnectionError) as info:
        conn.call("void")
    assert info.value.request_sent is False


def test_connection_close_answer_reconnects(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    head, _ = conn.request_http(b"GET /rpc/void HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert head.status == 200 and not head.keep_alive
    assert not conn.connected and not conn.broken
    assert conn.call("void") == {} and conn.generation == 2


def test_head_request_has_no_body(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    conn.call("set", [(b"key", b"k"), (b"value", b"12345")])
    head, body = conn.request_http(b"HEAD /k HTTP/1.1\r\n\r\n", head=True)
    assert head.status == 200 and body == b"" and head.headers[b"content-length"] == b"5"
    assert conn.call("void") == {} and conn.generation == 1


def test_connection_is_a_context_manager(kt_server):
    with Connection(kt_server.host, kt_server.port) as conn:
        assert conn.call("void") == {} and conn.connected
    assert not conn.connected and not conn.broken
    with pytest.raises(ValueError):
        with conn:
            assert conn.call("void") == {} and conn.generation == 2
            raise ValueError("caller bug")
    assert not conn.connected


def test_is_alive_detects_a_restarted_server(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    conn.call("void")
    kt_server.restart()
    deadline = time.monotonic() + 5
    while conn.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.broken and not conn.connected


# -- Connection failures (scripted servers) ----------------------------------------------------


def test_connect_refused_is_not_sent():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    conn = Connection("127.0.0.1", port, connect_timeout=1)
    with pytest.raises(KTConnectionError) as info:
        conn.call("void")
    assert info.value.request_sent is False and conn.broken
    assert "127.0.0.1:%d" % port in str(info.value)


class _TimeoutSocketModule:
    """A socket module whose connect times out."""

    timeout = socket.timeout
    IPPROTO_TCP = socket.IPPROTO_TCP
    TCP_NODELAY = socket.TCP_NODELAY
    MSG_PEEK = socket.MSG_PEEK

    @staticmethod
    def create_connection(address, timeout=None):
        raise TimeoutError("timed out")


def test_connect_timeout_can_be_capped():
    seen = []

    class Recording(_TimeoutSocketModule):
        @staticmethod
        def create_connection(address, timeout=None):
            seen.append(timeout)
            raise TimeoutError("timed out")

    for cap, used in [(0.25, 0.25), (10, 5.0), (None, 5.0)]:
        conn = Connection("127.0.0.1", 1, connect_timeout=5.0, socket_module=Recording)  # type: ignore
        with pytest.raises(SocketTimeoutError):
            conn.connect(cap)
        assert seen.pop() == used


def test_connect_timeout_is_not_sent():
    conn = Connection("127.0.0.1", 1, connect_timeout=0.1, socket_module=_TimeoutSocketModule)  # type: ignore
    with pytest.raises(SocketTimeoutError) as info:
        conn.call("void")
    assert info.value.request_sent is False and isinstance(info.value, KTConnectionError)


def test_read_timeout_breaks_the_connection(scripted):
    srv = scripted(lambda conn, i: (read_request(conn), conn.recv(1)))
    conn = Connection("127.0.0.1", srv.port, timeout=0.2)
    with pytest.raises(SocketTimeoutError) as info:
        conn.call("void")
    assert info.value.request_sent is True
    assert conn.broken and not conn.connected
    with pytest.raises(KTConnectionError):
        conn.call("void")
    assert srv.accepted == 1


@pytest.mark.parametrize("reply", [b"", OK_VOID[:30], b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
def test_eof_midway_breaks_the_connection(scripted, reply):
    def handler(conn, i):
        read_request(conn)
        conn.sendall(reply)
        conn.close()
    srv = scripted(handler)
    conn = Connection("127.0.0.1", srv.port)
    with pytest.raises(KTConnectionError) as info:
        conn.call("void")
    assert info.value.request_sent is True and conn.broken


@pytest.mark.parametrize("reply", [OK_VOID + b"junk", b"SSH-2.0-OpenSSH\r\n\r\n"],
                         ids=["unexpected bytes after the reply", "garbage status line"])
def test_bytes_that_are_not_kt_protocol_are_a_protocol_error(scripted, reply):
    def handler(conn, i):
        read_request(conn)
        conn.sendall(reply)
        conn.recv(1)
    srv = scripted(handler)
    conn = Connection("127.0.0.1", srv.port)
    with pytest.raises(ProtocolError):
        conn.call("void")
    assert conn.broken


def test_fragmented_reply_is_reassembled(scripted):
    reply = OK_VOID.replace(b"Content-Length: 0", b"Content-Length: 6") + b"a\tb\nc\t"

    def handler(conn, i):
        while True:
            if not read_request(conn):
                return
            for byte in reply:
                conn.sendall(bytes((byte,)))
                time.sleep(0.001)
    srv = scripted(handler)
    conn = Connection("127.0.0.1", srv.port)
    assert conn.call("void") == {b"a": b"b", b"c": b""}
    assert conn.call("void") == {b"a": b"b", b"c": b""} and conn.generation == 1


def test_body_until_eof_is_accepted(scripted):
    def handler(conn, i):
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/tab-separated-values\r\n\r\nk\tv\n")
        conn.close()
    srv = scripted(handler)
    conn = Connection("127.0.0.1", srv.port)
    assert conn.call("void") == {b"k": b"v"}
    assert not conn.connected and not conn.broken


def test_send_failure_before_the_first_byte_is_not_sent(scripted):
    srv = scripted(lambda conn, i: conn.recv(1))
    conn = Connection("127.0.0.1", srv.port)
    conn.connect()

    class FailingSocket:
        def __init__(self, sock):
            self.sock = sock

        def send(self, data):
            raise BrokenPipeError(32, "Broken pipe")

        def close(self):
            self.sock.close()

    conn._sock = FailingSocket(conn._sock)
    with pytest.raises(KTConnectionError) as info:
        conn.call("void")
    assert info.value.request_sent is False and conn.broken


def test_base_exception_midway_breaks_the_connection(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    conn.connect()
    real = conn._sock

    class Interrupting:
        def send(self, data):
            return real.send(data)

        def recv_into(self, *a):
            raise KeyboardInterrupt

        def close(self):
            real.close()

    conn._sock = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        conn.call("void")
    assert conn.broken and not conn.connected


@pytest.mark.parametrize("probe", ["poll", "peek"])
def test_is_alive_sees_a_close_or_stray_bytes_before_anything_is_sent(scripted, monkeypatch, probe):
    if probe == "peek":  # the fallback where the platform has no poll
        monkeypatch.setattr(connection_module, "original", lambda module, name: None)
    replied = [threading.Event() for _ in range(3)]
    done = [threading.Event() for _ in range(3)]

    def handler(conn, i):
        read_request(conn)
        conn.sendall(OK_VOID)
        replied[i].wait(5)
        if i == 0:
            conn.close()                 # an idle keep-alive connection closed (or a restart)
        elif i == 1:
            conn.sendall(b"stray")       # bytes nobody asked for
        done[i].set()
        if i:
            conn.recv(1)
    srv = scripted(handler)
    conns = [Connection("127.0.0.1", srv.port) for _ in range(3)]
    for i, conn in enumerate(conns):
        assert conn.call("void") == {}
        replied[i].set()
        assert done[i].wait(5)
        assert (conn._poller is None) == (probe == "peek")
    closed, stray, fine = conns
    assert not closed.is_alive() and closed.broken and not closed.connected
    assert not stray.is_alive() and stray.broken
    assert fine.is_alive() and fine.is_alive() and not fine.broken


def test_pool_never_hands_out_a_connection_the_server_closed(scripted):
    """The stale keep-alive case (what a server restart does to every idle connection): the
    pool finds the close before sending and uses a new connection -- no error, and nothing
    was written into the dead one."""
    closed = threading.Event()
    received: list[int] = []

    def handler(conn, i):
        while read_request(conn):
            received.append(i)
            conn.sendall(OK_VOID)
            if i == 0:
                conn.close()
                closed.set()
                return
    srv = scripted(handler)
    pool = ConnectionPool("127.0.0.1", srv.port, size=2)
    with pool.connection() as first:
        assert first.call("void") == {}
    assert closed.wait(5)
    with pool.connection() as second:   # at once: well within any idle time
        assert second is not first
        assert second.call("void") == {}
    assert first.broken and received == [0, 1]
    assert pool.stats().discarded == 1 and pool.stats().created == 2


# -- Pool --------------------------------------------------------------------------------------


def test_pool_reuses_lifo_and_counts(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=3)
    a = pool.checkout()
    b = pool.checkout()
    a.call("void")
    b.call("void")
    pool.checkin(a)
    pool.checkin(b)
    assert pool.checkout() is b  # most recently returned first
    pool.checkin(b)
    with pool.connection() as conn:
        assert conn is b
    stats = pool.stats()
    assert isinstance(stats, PoolStats)
    assert (stats.in_use, stats.idle, stats.created, stats.discarded, stats.checkouts) == (0, 2, 2, 0, 4)
    pool.close()
    assert pool.stats().idle == 0


def test_pool_is_bounded_and_times_out(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2, pool_timeout=0.2)
    a, b = pool.checkout(), pool.checkout()
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError) as info:
        pool.checkout()
    assert time.monotonic() - started >= 0.19
    assert info.value.request_sent is False
    threading.Timer(0.1, pool.checkin, args=(a,)).start()
    assert pool.checkout(timeout=5) is a
    stats = pool.stats()
    assert stats.created == 2 and stats.in_use == 2 and stats.wait_time_max >= 0.05
    pool.checkin(a)
    pool.checkin(b)


def test_a_checkout_with_a_bad_timeout_leaves_no_waiter_behind(kt_server):
    """A checkout that fails before it waits (here a timeout that is not a number) must not
    stay in the queue: the next connection returned goes to a caller still waiting."""
    pool = ConnectionPool(kt_server.host, kt_server.port, size=1, pool_timeout=5)
    held = pool.checkout()
    with pytest.raises(TypeError):
        pool.checkout("1")  # type: ignore[arg-type]
    assert pool.stats().waiting == 0
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout(timeout=5)))
    waiter.start()
    while pool.stats().waiting == 0:
        time.sleep(0.01)
    pool.checkin(held)
    waiter.join(5)
    assert got == [held]
    pool.checkin(held)
    assert pool.stats().in_use == 0 and pool.stats().waiting == 0
    pool.close()


def test_try_checkout_never_waits_and_never_passes_a_waiter(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2, pool_timeout=5)
    a = pool.try_checkout()
    b = pool.try_checkout()
    assert a is not None and b is not None and a is not b
    started = time.monotonic()
    assert pool.try_checkout() is None          # full: no wait
    assert time.monotonic() - started < 0.5
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout()))
    waiter.start()
    while pool.stats().waiting == 0:
        time.sleep(0.01)
    pool.checkin(a)
    waiter.join(5)
    assert got == [a]                           # the returned connection went to the waiter
    pool.checkin(got[0])
    assert pool.try_checkout() is a             # free again: taken without a wait
    pool.checkin(a)
    pool.checkin(b)
    assert pool.stats().in_use == 0
    pool.close()


def test_pool_discards_on_errors_but_not_on_server_answers(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2)
    with pytest.raises(LogicalInconsistencyError):
        with pool.connection() as conn:
            conn.call("get", [(b"key", b"missing")])
    assert pool.stats().idle == 1 and pool.stats().discarded == 0
    with pytest.raises(ValueError):
        with pool.connection() as conn2:
            assert conn2 is conn
            raise ValueError("caller bug while holding the connection")
    assert pool.stats().idle == 0 and pool.stats().discarded == 1
    assert not conn.connected
    with pytest.raises(KeyboardInterrupt):
        with pool.connection():
            raise KeyboardInterrupt
    assert pool.stats().discarded == 2
    conn3 = pool.checkout()
    conn3.call("void")
    conn3.broken = True
    pool.checkin(conn3)
    assert pool.stats().discarded == 3 and pool.stats().idle == 0


def test_pool_retires_old_and_idle_connections(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2, idle_timeout=0.05, max_lifetime=None)
    with pool.connection() as conn:
        conn.call("void")
    time.sleep(0.1)
    with pool.connection() as conn2:
        assert conn2 is not conn
        conn2.call("void")
    assert not conn.connected
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2, idle_timeout=None, max_lifetime=0.05)
    with pool.connection() as conn:
        conn.call("void")
    time.sleep(0.1)
    with pool.connection() as conn2:
        assert conn2 is not conn
    assert pool.stats().discarded == 1


def test_pool_probes_idle_connections(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2, check_idle_after=0.0)
    with pool.connection() as conn:
        conn.call("void")
    kt_server.restart()
    time.sleep(0.1)
    with pool.connection() as conn2:
        assert conn2 is not conn
        assert conn2.call("void") == {}
    assert conn.broken


def test_pool_close_discards_connections_in_use(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=2)
    a = pool.checkout()
    a.call("void")
    with pool.connection() as b:
        b.call("void")
    pool.close()
    assert not b.connected
    pool.checkin(a)
    assert not a.connected and pool.stats().idle == 0
    with pool.connection() as c:
        assert c.call("void") == {}


def test_pool_serves_waiters_first_come_first_served(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=1, pool_timeout=10)
    held = pool.checkout()
    served: list[int] = []

    def waiter(i: int) -> None:
        with pool.connection():
            served.append(i)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        while pool.stats().waiting < i + 1:   # queued in this order
            time.sleep(0.001)
    pool.checkin(held)
    # the caller that returned it cannot take it back ahead of the waiters
    again = pool.checkout()
    assert served == [0, 1, 2, 3, 4]
    pool.checkin(again)
    for t in threads:
        t.join()
    assert pool.stats().in_use == 0 and pool.stats().waiting == 0


def test_pool_timeout_is_not_overrun_and_interrupted_waiters_leave_the_queue(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=1, pool_timeout=0.2)
    held = pool.checkout()
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError) as info:
        pool.checkout()
    assert 0.19 <= time.monotonic() - started < 0.5 and info.value.request_sent is False
    stats = pool.stats()
    assert stats.waiting == 0 and stats.timeouts == 1 and stats.in_use == 1
    pool.checkin(held)
    assert pool.checkout(timeout=0) is held   # the gone waiter was passed over


def test_pool_slot_of_a_lost_connection_comes_back_when_it_is_collected(kt_server):
    import gc

    pool = ConnectionPool(kt_server.host, kt_server.port, size=1, pool_timeout=0.1)
    conn = pool.checkout()
    conn.call("void")
    del conn                          # its holder died without checkin (an interruption, a bug)
    gc.collect()
    stats = pool.stats()
    assert stats.in_use == 0 and stats.discarded == 1
    with pool.connection() as fresh:
        assert fresh.call("void") == {}


def test_pool_under_threads(kt_server):
    pool = ConnectionPool(kt_server.host, kt_server.port, size=3, pool_timeout=30)

    def worker(n: int) -> None:
        for i in range(40):
            with pool.connection() as conn:
                key = b"t%d-%d" % (n, i)
                conn.call("set", [(b"key", key), (b"value", key)])
                assert conn.call("get", [(b"key", key)])[b"value"] == key

    run_threads(worker, 8)
    stats = pool.stats()
    assert stats.created <= 3 and stats.checkouts == 320 and stats.in_use == 0
    with pool.connection() as conn:
        assert conn.call("status")[b"count"] == b"320"


GEVENT_SCRIPT = r"""
from gevent import monkey; monkey.patch_all()
import sys, gevent, gevent.timeout
from ktcluster.pool import ConnectionPool
from ktcluster.errors import PoolTimeoutError
host, port = sys.argv[1], int(sys.argv[2])
pool = ConnectionPool(host, port, size=3, pool_timeout=30)
def worker(n):
    for i in range(30):
        with pool.connection() as conn:
            key = b"g%d-%d" % (n, i)
            conn.call("set", [(b"key", key), (b"value", key)])
            assert conn.call("get", [(b"key", key)])[b"value"] == key
jobs = [gevent.spawn(worker, n) for n in range(10)]
gevent.joinall(jobs, raise_error=True)
s = pool.stats()
assert s.created <= 3 and s.checkouts == 300, s
# a gevent.Timeout while waiting for a reply breaks the connection, which is discarded
with pool.connection() as conn:
    conn.call("void")
try:
    with gevent.Timeout(0.2):
        with pool.connection() as conn:
            conn.call("void", [(b"WAIT", b"never"), (b"WAITTIME", b"5")])
except gevent.Timeout:
    pass
assert conn.broken and pool.stats().discarded == 1, pool.stats()
# pool exhaustion blocks only the greenlet
small = ConnectionPool(host, port, size=1, pool_timeout=0.1)
held = small.checkout()
try:
    small.checkout()
except PoolTimeoutError:
    print("OK")
"""


def test_pool_under_gevent(kt_server):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, kt_server.host, str(kt_server.port)],
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.strip() == b"OK"


def test_binary_request_in_pieces(kt_server):
    conn = Connection(kt_server.host, kt_server.port)
    records = [(0, b"p%04d" % i, b"v" * i, binary.XT_NONE) for i in range(200)]
    hits = conn.request_binary(binary.set_bulk_request(0, [k for _, k, _, _ in records], [v for _, _, v, _ in records],
                                                       binary.XT_NONE, per_piece=16),
                               lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK))
    assert hits == 200
    got = conn.request_binary(binary.get_bulk_request(0, [k for _, k, _, _ in records], per_piece=7),
                              binary.decode_get_bulk_reply)
    assert [v for _, _, v, _ in got] == [v for _, _, v, _ in records]

    def failing_before_sending():
        raise ValueError("bad record")
        yield b""  # pragma: no cover

    with pytest.raises(ValueError):
        conn.request_binary(failing_before_sending(), binary.decode_get_bulk_reply)
    assert not conn.broken and conn.call("void") == {}

    def failing_midway():
        yield binary.encode_set_bulk(records)[:50]
        raise ValueError("bad record")

    with pytest.raises(ValueError):
        conn.request_binary(failing_midway(), binary.decode_get_bulk_reply)
    assert conn.broken and not conn.connected  # half a request went out: never reused


def test_an_unconnected_pooled_connection_is_reused_whatever_its_age():
    """A pooled connection that never connected (or was closed by a Connection: close
    answer) holds no socket to go stale: idle_timeout and max_lifetime do not retire it."""
    pool = ConnectionPool("127.0.0.1", 1, size=1, idle_timeout=0.05, max_lifetime=0.05)  # never connects
    conn = pool.checkout()
    assert not conn.connected
    pool.checkin(conn)
    time.sleep(0.1)
    again = pool.checkout()
    stats = pool.stats()
    pool.checkin(again)
    assert again is conn and stats.discarded == 0 and stats.created == 1
