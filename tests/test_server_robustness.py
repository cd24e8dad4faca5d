"""The server under abuse and load, down to the exact answer: hundreds of connections at
once, many connections writing at once, unparsable and random bytes, truncated requests
(at EOF and stalled until -tout), huge declared sizes (refused on sight, or read as they
arrive when at the limit), slow clients, memory held by half-sent bodies, pipelining,
waiters and signals.  The offending connection gets what ktserver gives it (an answer
such as 400, 413 or 0xBF, or a silent close) and every other connection keeps being
served.  Every test runs against the embedded server and against $KT_SERVER_BIN, and
asserts only what both do."""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time

import pytest
from server_wire import Wire, connect, memcached_plugin, rss

from ktcluster.testing import KTServer, free_port

TIMEOUT = 2  # the server's -tout: a request that has begun must arrive within it
WAIT = 15.0  # how long a test waits for anything
DATAMAX = 1 << 28
XT_NONE = 0x7FFFFFFFFFFFFFFF


@pytest.fixture
def server(kt_server_factory) -> KTServer:
    return kt_server_factory(":", args=["-tout", str(TIMEOUT)])


def wire(server: KTServer) -> Wire:
    return Wire(server.host, server.port, timeout=WAIT)


def read_to_close(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (data, closed within the timeout)."""
    out = b""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return out, True
            out += data
    except ConnectionResetError:
        return out, True
    except TimeoutError:
        return out, False


def exchange(port: int, data: bytes, *, half_close: bool = True) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection (then shut our side down), and collect the
    answer up to the server's close."""
    with connect(port, timeout=WAIT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may have closed already
            pass
        return read_to_close(sock)


def error_page(code: int, reason: str, message: str) -> bytes:
    text = b"%d %s (%s)\n" % (code, reason.encode(), message.encode())
    return (b"HTTP/1.1 %d %s\r\nServer: KyotoTycoon/0.9.56b\r\nDate: <D>\r\nConnection: close\r\n"
            b"Content-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (code, reason.encode(), len(text), text))


def undated(data: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r\n]*", b"Date: <D>", data)


BAD_REQUEST = error_page(400, "Bad Request", "receiving data failed")
TOO_LARGE = error_page(413, "Request Entity Too Large", "request entity too large")


def set_bulk(ksiz: int, vsiz: int, body: bytes = b"", rnum: int = 1, xt: int = XT_NONE) -> bytes:
    return struct.pack(">BII", 0xB8, 0, rnum) + struct.pack(">HIIq", 0, ksiz, vsiz, xt) + body


def keyed(magic: int, ksiz: int, body: bytes = b"", rnum: int = 1) -> bytes:
    """A remove_bulk (0xB9) or get_bulk (0xBA) request."""
    return struct.pack(">BII", magic, 0, rnum) + struct.pack(">HI", 0, ksiz) + body


def rpc_request(name: str, body: bytes) -> bytes:
    return (b"POST /rpc/%s HTTP/1.1\r\nContent-Type: text/tab-separated-values\r\nContent-Length: %d\r\n\r\n%s"
            % (name.encode(), len(body), body))


# -- many connections ---------------------------------------------------------------------------


def test_hundreds_of_concurrent_connections_are_all_served(server):
    conns = [wire(server) for _ in range(300)]
    try:
        # every connection sends its write before any answer is read
        for i, conn in enumerate(conns):
            key, value = b"k%d" % i, b"v%d" % i
            if i % 3 == 0:
                conn.sock.sendall(rpc_request("set", b"key\t%s\nvalue\t%s\n" % (key, value)))
            elif i % 3 == 1:
                conn.sock.sendall(b"PUT /%s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (key, len(value), value))
            else:
                conn.sock.sendall(set_bulk(len(key), len(value), key + value))
        for i, conn in enumerate(conns):
            if i % 3 == 2:
                assert conn.recv_exact(5) == b"\xb8\x00\x00\x00\x01"
            else:
                assert conn.response()[0].status == (200 if i % 3 == 0 else 201)
        # and each reads its record back on the same connection
        for i, conn in enumerate(conns):
            conn.sock.sendall(b"GET /k%d HTTP/1.1\r\n\r\n" % i)
        for i, conn in enumerate(conns):
            head, body = conn.response()
            assert (head.status, body) == (200, b"v%d" % i)
    finally:
        for conn in conns:
            conn.close()
    with wire(server) as conn:
        assert conn.rpc("status")[1][b"count"] == b"300"


def test_many_connections_writing_at_once(server):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with wire(server) as conn:
                for i in range(150):
                    key = b"w%02d-%03d" % (n, i)
                    if i % 3 == 0:
                        assert conn.set(key, key) == 200
                    elif i % 3 == 1:
                        assert conn.binary_set([(0, key, key, XT_NONE)]) == 1
                    else:
                        status, _, _ = conn.http(b"PUT /%s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                                                 % (key, len(key), key))
                        assert status == 201
                    assert conn.rpc("increment", key=b"counter", num=1)[0] == 200
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    with wire(server) as conn:
        assert conn.rpc("status")[1][b"count"] == b"%d" % (12 * 150 + 1)
        assert conn.get(b"counter") == struct.pack(">q", 12 * 150)
        found = conn.binary_get([(0, b"w%02d-%03d" % (n, i)) for n in range(12) for i in range(150)])
        assert len(found) == 12 * 150 and all(key == value for _, key, value, _ in found)


# -- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"\x00abc", b"\xffabc", b"\xbd\x00\x00", b"\x01\x02 garbage\r\n\r\n", b"hello world\r\n",
    b"GET / HTTP/2.0\r\n\r\n", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
], ids=["nul", "ff", "unknown-magic", "control-bytes", "no-version", "bad-version", "line-over-8191"])
def test_unparsable_requests_are_closed_silently(server, data):
    assert exchange(server.port, data, half_close=False) == (b"", True)
    assert server.ping()


#: random bytes alone, or after the start of each kind of request
RANDOM_PREFIXES = [b"", b"GET ", b"POST /rpc/set HTTP/1.1\r\n", b"\xb8", b"\xba", b"\xb9", b"\xb4", b"\xb1",
                   b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                   b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]


def test_random_bytes_then_eof_always_end_in_a_close(server):
    rng = random.Random(20261126)
    payloads = [rng.choice(RANDOM_PREFIXES) + rng.randbytes(rng.choice((1, 5, 16, 100, 1000, 10000)))
                for _ in range(60)]
    closed: list[bool] = [False] * len(payloads)

    def send(i: int) -> None:
        closed[i] = exchange(server.port, payloads[i])[1]

    with wire(server) as bystander:
        for start in range(0, len(payloads), 10):  # ten connections at a time
            threads = [threading.Thread(target=send, args=(i,)) for i in range(start, start + 10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT * 2)
            assert bystander.rpc("void")[0] == 200
    unclosed = [payloads[i][:40] for i, ok in enumerate(closed) if not ok]
    assert not unclosed, f"the server kept connections open after EOF: {unclosed}"


# -- truncated requests -------------------------------------------------------------------------

TRUNCATED = {
    "http-head": (b"POST /rpc/set HTTP/1.1\r\nContent-Le", b""),
    "http-long-header": (b"GET /rpc/void HTTP/1.1\r\nX: " + b"y" * 100000, b""),
    "http-body": (b"POST /rpc/set HTTP/1.1\r\nContent-Length: 100\r\n\r\nkey\tx", BAD_REQUEST),
    "http-body-at-limit": (b"POST /rpc/echo HTTP/1.1\r\nContent-Length: %d\r\n\r\nshort" % DATAMAX, BAD_REQUEST),
    "http-chunk": (b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", BAD_REQUEST),
    "http-chunk-at-limit": (b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\nab" % DATAMAX,
                            BAD_REQUEST),
    "set_bulk": (set_bulk(1, 1, b"ab", rnum=2), b"\xbf"),
    "set_bulk-record": (set_bulk(10, 10, b"abc"), b"\xbf"),
    "set_bulk-at-limit": (set_bulk(1, DATAMAX, b"k", rnum=0xFFFFFFFF, xt=-1), b"\xbf"),
    "remove_bulk": (keyed(0xB9, 5, b"ab"), b"\xbf"),
    "get_bulk": (keyed(0xBA, 1, b"a", rnum=2), b"\xbf"),
    "get_bulk-at-limit": (keyed(0xBA, DATAMAX, rnum=0xFFFFFFFF), b"\xbf"),
    "play_script-at-limit": (struct.pack(">BIII", 0xB4, 0, DATAMAX, 0xFFFFFFFF), b""),
    "replication": (b"\xb1\x00\x00", b""),
}


@pytest.mark.parametrize("name", list(TRUNCATED))
def test_truncated_request_at_eof(server, name):
    data, answer = TRUNCATED[name]
    got, closed = exchange(server.port, data)
    assert (undated(got), closed) == (answer, True)
    assert server.ping()


@pytest.mark.parametrize("name", ["http-head", "http-body", "set_bulk", "get_bulk"])
def test_stalled_request_times_out_while_others_are_served(server, name):
    data, answer = TRUNCATED[name]
    with wire(server) as stalled, wire(server) as busy:
        stalled.sock.sendall(data)  # and nothing more: the server gives up after -tout
        result: list[tuple[bytes, bool]] = []
        waiter = threading.Thread(target=lambda: result.append(read_to_close(stalled.sock)))
        waiter.start()
        served = 0
        while waiter.is_alive() and served < 1000:
            assert busy.rpc("set", key=b"k", value=b"%d" % served)[0] == 200
            served += 1
        waiter.join(WAIT)
        assert result and (undated(result[0][0]), result[0][1]) == (answer, True)
        assert served > 0
        assert busy.rpc("get", key=b"k") == (200, {b"value": b"%d" % (served - 1)})


def test_idle_connection_is_not_timed_out(server):
    with wire(server) as conn:
        time.sleep(TIMEOUT + 1)
        assert conn.rpc("void")[0] == 200


# -- huge declared sizes ------------------------------------------------------------------------

HUGE = {
    "content-length": (b"POST /rpc/set HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (DATAMAX + 1), TOO_LARGE),
    "chunk": (b"POST /rpc/set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (DATAMAX + 1), TOO_LARGE),
    "set_bulk-key": (set_bulk(DATAMAX + 1, 1), b"\xbf"),
    "set_bulk-value": (set_bulk(1, DATAMAX + 1), b"\xbf"),
    "set_bulk-both-max": (set_bulk(0xFFFFFFFF, 0xFFFFFFFF), b"\xbf"),
    "remove_bulk-key": (keyed(0xB9, DATAMAX + 1), b"\xbf"),
    "get_bulk-key": (keyed(0xBA, DATAMAX + 1), b"\xbf"),
    "play_script-name": (struct.pack(">BIII", 0xB4, 0, DATAMAX + 1, 0), b""),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_declared_size_is_refused_at_once(server, name):
    data, answer = HUGE[name]
    got, closed = exchange(server.port, data, half_close=False)  # no timeout involved: refused on sight
    assert (undated(got), closed) == (answer, True)
    assert server.ping()


def test_half_sent_huge_bodies_do_not_grow_memory(kt_server_factory):
    memc_port = free_port()
    # ktserver's worker threads block on a body being received: keep one free for the check
    server = kt_server_factory(":", args=["-tout", "30", "-th", "32", "-plsv", memcached_plugin(), "-plex",
                                          f"port={memc_port}"])
    chunk = b"x" * 65536
    with wire(server) as conn:  # warm up
        for _ in range(20):
            conn.rpc("set", key=b"w", value=chunk)
    time.sleep(0.5)
    before = rss(server.pid)
    socks = []
    try:
        for _ in range(8):
            http = connect(server.port)
            http.sendall(b"POST /rpc/set HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % DATAMAX + chunk)
            binary = connect(server.port)
            binary.sendall(set_bulk(1, DATAMAX, b"k" + chunk))
            memc = connect(memc_port, timeout=WAIT)
            memc.sendall(b"set k 0 0 %d\r\n" % DATAMAX + chunk)
            socks += [http, binary, memc]
        time.sleep(1.0)
        grown = rss(server.pid) - before
        # 24 connections each announcing 256 MiB: what was sent (1.5 MiB) plus buffers,
        # nowhere near what was announced
        assert grown < 64 << 20, f"RSS grew by {grown >> 20} MiB"
        with wire(server) as conn:
            assert conn.rpc("void")[0] == 200
    finally:
        for sock in socks:
            sock.close()


# -- slow clients and pipelining ----------------------------------------------------------------


def test_request_dribbled_byte_by_byte_is_answered(server):
    requests = [rpc_request("set", b"key\tslow\nvalue\tdrip\n"), set_bulk(2, 3, b"k2v2v"),
                b"GET /slow HTTP/1.1\r\n\r\n"]
    with wire(server) as conn:
        for request in requests:
            for byte in request:
                conn.sock.sendall(bytes((byte,)))
                time.sleep(0.001)
            if request[0] == 0xB8:
                assert conn.recv_exact(5) == b"\xb8\x00\x00\x00\x01"
            else:
                head, answer = conn.response()
                assert head.status == 200
        assert answer == b"drip"
        assert conn.rpc("get", key=b"k2") == (200, {b"value": b"v2v"})


def test_chunked_request_pipelined_behind_another_is_answered(server):
    with wire(server) as conn:
        # both heads arrive in one read; the chunked body is completed later
        conn.sock.sendall(b"GET /rpc/void HTTP/1.1\r\n\r\n" + b"POST /rpc/echo HTTP/1.1\r\n"
                          b"Content-Type: text/tab-separated-values\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na\tb")
        assert conn.response()[0].status == 200
        time.sleep(0.2)
        conn.sock.sendall(b"\n\r\n0\r\n\r\n")
        head, body = conn.response()
        assert (head.status, body) == (200, b"a\tb\n")


# -- the memcached plug-in ----------------------------------------------------------------------


@pytest.fixture
def memc_port(kt_server_factory) -> int:
    port = free_port()
    kt_server_factory(":", args=["-plsv", memcached_plugin(), "-plex", f"port={port}#tout={TIMEOUT}"])
    connect(port, timeout=WAIT).close()  # the plug-in listens a moment after the main port
    return port


@pytest.mark.parametrize("data", [
    b"set k 0 0 %d\r\n" % (DATAMAX + 1), b"set k 0 0 -1\r\n", b"add k 0 0 99999999999999999999\r\n",
    b"set k 0 0 1\r\nab\r\n",
], ids=["size-over-2^28", "negative-size", "wrapped-size", "bad-terminator"])
def test_memcached_bad_data_block_closes_silently(memc_port, data):
    assert exchange(memc_port, data, half_close=False) == (b"", True)


def test_memcached_stalled_block_times_out_while_others_are_served(memc_port):
    with connect(memc_port, timeout=WAIT) as stalled, connect(memc_port, timeout=WAIT) as busy:
        stalled.sendall(b"set k 0 0 10\r\nabc")
        result: list[tuple[bytes, bool]] = []
        waiter = threading.Thread(target=lambda: result.append(read_to_close(stalled)))
        waiter.start()
        served = 0
        while waiter.is_alive() and served < 1000:
            busy.sendall(b"set k 0 0 1\r\nx\r\n")
            assert busy.recv(8) == b"STORED\r\n"
            served += 1
        waiter.join(WAIT)
        assert result == [(b"", True)] and served > 0


def test_memcached_random_bytes_then_eof_always_end_in_a_close(memc_port):
    rng = random.Random(11211)
    with connect(memc_port, timeout=WAIT) as bystander:
        for _ in range(40):
            data = rng.randbytes(rng.choice((1, 16, 300, 9000)))
            assert exchange(memc_port, data)[1], f"kept open after EOF: {data[:40]!r}"
            bystander.sendall(b"version\r\n")
            assert bystander.recv(64) == b"VERSION KyotoTycoon/0.9.56b\r\n"


# -- waiters and signals ------------------------------------------------------------------------


def test_broadcast_wakes_every_waiter(server):
    results: list[tuple[int, dict]] = []
    ready = threading.Barrier(6)

    def waiter() -> None:
        with wire(server) as conn:
            ready.wait()
            results.append(conn.rpc("echo", WAIT=b"go", WAITTIME=10))

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.5)  # let the five WAIT requests arrive
    woken = 0
    with wire(server) as conn:
        deadline = time.monotonic() + 10
        while len(results) < 5 and time.monotonic() < deadline:
            woken += int(conn.rpc("void", SIGNAL=b"go", SIGNALBROAD=b"")[1][b"SIGNALED"])
            time.sleep(0.2)
    assert woken >= 5
    for thread in threads:
        thread.join(15)
    assert sorted(status for status, _ in results) == [200] * 5


@pytest.mark.parametrize("waittime", [b"1e400", b"9" * 30, b"1e18"])
def test_huge_waittime_waits_for_a_signal(server, waittime):
    with wire(server) as waiter, wire(server) as signaller:
        body = b"WAIT\tgo\nWAITTIME\t%s\n" % waittime
        waiter.sock.sendall(rpc_request("echo", body))
        signaled = {}
        deadline = time.monotonic() + WAIT
        while signaled.get(b"SIGNALED") != b"1" and time.monotonic() < deadline:
            signaled = signaller.rpc("void", SIGNAL=b"go")[1]
            time.sleep(0.05)
        assert signaled == {b"SIGNALED": b"1"}
        head, answer = waiter.response()
        assert (head.status, answer) == (200, body)


def test_nan_waittime_gives_up_at_once(server):
    with wire(server) as conn:
        assert conn.rpc("echo", WAIT=b"go", WAITTIME=b"nan") == (503, {b"ERROR": b"the condition timed out"})
