"""The server under abuse and load: random bytes, truncated and oversized requests, many
connections writing at once, waiters and signals.  After each ordeal the server must
still be running and answering.  Runs against the embedded server or $KT_SERVER_BIN."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest
from server_wire import Wire

from ktcluster.testing import KTServer


@pytest.fixture
def server():
    with KTServer(":", "+", args=["-tout", "2"]) as srv:
        yield srv


def assert_alive(srv: KTServer) -> None:
    assert srv.is_running()
    with Wire(srv.host, srv.port) as wire:
        assert wire.set(b"alive", b"yes") == 200
        assert wire.get(b"alive") == b"yes"


def blast(srv: KTServer, payload: bytes, half_close: bool = True) -> None:
    """Send bytes, optionally half-close, read whatever comes back, close."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def test_random_bytes_do_not_hurt(server):
    rng = random.Random(20261126)
    prefixes = [b"", b"GET ", b"POST /rpc/set HTTP/1.1\r\n", b"\xb8", b"\xba", b"\xb9", b"\xb4", b"\xb1",
                b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]
    threads = []
    for i in range(60):
        payload = rng.choice(prefixes) + rng.randbytes(rng.randint(0, 3000))
        threads.append(threading.Thread(target=blast, args=(server, payload, i % 3 != 0)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert_alive(server)


@pytest.mark.parametrize("payload, answer", [
    (b"POST /rpc/echo HTTP/1.1\r\nContent-Length: 268435456\r\n\r\nshort", b"HTTP/1.1 400 Bad Request"),
    (b"POST /rpc/echo HTTP/1.1\r\nContent-Length: 268435457\r\n\r\n", b"HTTP/1.1 413"),
    (b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000\r\nab", b"HTTP/1.1 400"),
    (b"\xb8\x00\x00\x00\x00\xff\xff\xff\xff" + struct.pack(">HIIq", 0, 1, 1 << 28, -1) + b"k", b"\xbf"),
    (b"\xba\x00\x00\x00\x00\xff\xff\xff\xff" + struct.pack(">HI", 0, 1 << 28), b"\xbf"),
    (b"\xb4\x00\x00\x00\x00\x10\x00\x00\x00\xff\xff\xff\xff", b""),
    (b"GET /rpc/void HTTP/1.1\r\nX: " + b"y" * 100000, b""),
])
def test_huge_declared_sizes_are_refused_or_read_incrementally(server, payload, answer):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert received.startswith(answer)
    assert_alive(server)


def test_a_stalled_request_does_not_block_others(server):
    with socket.create_connection((server.host, server.port), timeout=5) as stalled:
        stalled.sendall(b"POST /rpc/set HTTP/1.1\r\nContent-Length: 100\r\n\r\nkey\t")
        assert_alive(server)


def test_many_connections_writing_at_once(server):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with Wire(server.host, server.port) as wire:
                for i in range(150):
                    key = b"w%02d-%03d" % (n, i)
                    if i % 3 == 0:
                        assert wire.set(key, key) == 200
                    elif i % 3 == 1:
                        assert wire.binary_set([(0, key, key, 2 ** 63 - 1)]) == 1
                    else:
                        status, _, _ = wire.http(b"PUT /%s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                                                 % (key, len(key), key))
                        assert status == 201
                    assert wire.rpc("increment", key=b"counter", num=1)[0] == 200
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    with Wire(server.host, server.port) as wire:
        assert wire.rpc("status")[1][b"count"] == b"%d" % (12 * 150 + 1)
        assert wire.get(b"counter") == struct.pack(">q", 12 * 150)
        found = wire.binary_get([(0, b"w%02d-%03d" % (n, i)) for n in range(12) for i in range(150)])
        assert len(found) == 12 * 150 and all(key == value for _, key, value, _ in found)


def test_broadcast_wakes_every_waiter(server):
    results: list[tuple[int, dict]] = []
    ready = threading.Barrier(6)

    def waiter() -> None:
        with Wire(server.host, server.port) as wire:
            ready.wait()
            results.append(wire.rpc("echo", WAIT=b"go", WAITTIME=10))

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.5)  # let the five WAIT requests arrive
    woken = 0
    with Wire(server.host, server.port) as wire:
        deadline = time.monotonic() + 10
        while len(results) < 5 and time.monotonic() < deadline:
            woken += int(wire.rpc("void", SIGNAL=b"go", SIGNALBROAD=b"")[1][b"SIGNALED"])
            time.sleep(0.2)
    assert woken >= 5
    for thread in threads:
        thread.join(15)
    assert sorted(status for status, _ in results) == [200] * 5
