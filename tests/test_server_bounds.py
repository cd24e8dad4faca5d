"""Bounded work per request (issue 13): one request or one client must never stall the
server or make it grow.  ``-th`` worker threads serve the requests as ktserver's do (a
blocked request holds one; idle connections hold none), a replication handshake whose
client left stops scanning the update log, a backtracking regular expression is
answered at once, and after repeated rounds of abuse the server's threads and memory
are back where they started.  Every test runs against the embedded server and against
$KT_SERVER_BIN and asserts only what both do; resource figures come from /proc."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest
from difffuzz.runner import run_on, server_argv
from difffuzz.steps import IDLING, generate
from golden_replay import libexec_dir
from server_wire import NOBODY, Wire, connect, cpu_seconds, memcached_plugin, proc_status, rss

from ktcluster.protocol.binary import encode_set_bulk
from ktcluster.protocol.replication import encode_handshake
from ktcluster.testing import free_port, using_real_server

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")

WAIT = 15.0
XT_NONE = 0x7FFFFFFFFFFFFFFF


def memcached_libexec() -> str | None:
    return libexec_dir() if using_real_server() else None


def threads_of(pid: int) -> int:
    return proc_status(pid, "Threads")


def quiet_cpu_seconds(pid: int) -> float:
    """The CPU time of a process once it has stopped using any (for up to 60 s)."""
    deadline = time.monotonic() + 60
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - used < 0.02:
            return now
        used = now
    return used


# -- -th: a fixed set of workers ----------------------------------------------------------------


def test_one_worker_serves_one_request_at_a_time(kt_server_factory):
    """With -th 1 a request waiting on a condition holds the only worker: the request that
    would signal it runs only after the wait has timed out."""
    srv = kt_server_factory(":", args=["-th", "1"])
    with Wire(srv.host, srv.port, timeout=WAIT) as waiter, Wire(srv.host, srv.port, timeout=WAIT) as signaller:
        waiter.sock.sendall(b"GET /rpc/void?WAIT=c&WAITTIME=1.5 HTTP/1.1\r\n\r\n")
        time.sleep(0.3)   # the wait has begun
        assert signaller.rpc("void", SIGNAL=b"c") == (200, {b"SIGNALED": b"0"})
        assert waiter.response()[0].status == 503


def test_two_workers_serve_a_signal_while_one_waits(kt_server_factory):
    srv = kt_server_factory(":", args=["-th", "2"])
    with Wire(srv.host, srv.port, timeout=WAIT) as waiter, Wire(srv.host, srv.port, timeout=WAIT) as signaller:
        waiter.sock.sendall(b"GET /rpc/void?WAIT=c&WAITTIME=30 HTTP/1.1\r\n\r\n")
        signaled = b"0"
        deadline = time.monotonic() + WAIT
        while signaled == b"0" and time.monotonic() < deadline:
            signaled = signaller.rpc("void", SIGNAL=b"c")[1][b"SIGNALED"]
        assert signaled == b"1"
        assert waiter.response()[0].status == 200


def test_idle_connections_hold_no_thread(kt_server_factory):
    srv = kt_server_factory(":", args=["-th", "4"])
    with Wire(srv.host, srv.port) as wire:
        assert wire.rpc("void")[0] == 200
        baseline = threads_of(srv.pid)
        conns = [Wire(srv.host, srv.port, timeout=WAIT) for _ in range(200)]
        try:
            for conn in conns[::2]:
                assert conn.rpc("void")[0] == 200   # half of them after a request, half before any
            assert wire.rpc("report")[1][b"serv_conn_count"] == b"201"
            assert threads_of(srv.pid) <= baseline
        finally:
            for conn in conns:
                conn.close()


# -- replication handshakes of clients that left -------------------------------------------------


def test_replication_handshakes_of_departed_clients_stop_scanning(kt_server_factory):
    """A log of 60,000 entries the requester's sid filters out: a handshake scans it
    sending only a dummy record every 256 entries.  A hundred clients that sent the
    handshake and left at once must not each cost a scan of the whole log (ktserver stops
    at its second dummy record, when sending fails).  Measured: one whole scan costs the
    embedded server 0.13 CPU seconds, so a hundred would cost 13; the hundred departed
    clients cost 0.9-1.2 (connection, handshake, a reader, 1,024 entries each)."""
    srv = kt_server_factory(":", args=["-ulog", "ulog", "-sid", "7", "-th", "4"])
    with Wire(srv.host, srv.port, timeout=WAIT) as wire:
        for start in range(0, 60000, 1000):
            wire.sock.sendall(encode_set_bulk([(0, b"k%06d" % i, b"v", XT_NONE) for i in range(start, start + 1000)]))
            assert wire.recv_exact(5) == b"\xb8" + struct.pack(">I", 1000)
        before = cpu_seconds(srv.pid)
        for _ in range(100):
            with connect(srv.port, timeout=WAIT) as sock:
                sock.sendall(encode_handshake(0, 7))
        assert wire.rpc("void")[0] == 200
    used = quiet_cpu_seconds(srv.pid) - before
    assert used < 3.0, f"{used:.1f} CPU seconds for 100 departed replication clients"


# -- the memcached plug-in's address -------------------------------------------------------------


def listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                return socket.inet_ntoa(struct.pack("<I", int(addr, 16)))
    return None


@pytest.mark.parametrize("plex, address", [("", "0.0.0.0"), ("#host=127.0.0.1", "127.0.0.1"),
                                           ("#host=localhost", "127.0.0.1"), ("#host=0.0.0.0", None)])
def test_memcached_plugin_listen_address(kt_server_factory, plex, address):
    """The plug-in binds every address whatever ktserver's -host, its own host= if given,
    and refuses 0.0.0.0 as ktserver's socket layer does (the server keeps running)."""
    port = free_port()
    srv = kt_server_factory(":", args=["-plsv", memcached_plugin(), "-plex", f"port={port}{plex}"])
    if address is not None:
        connect(port, timeout=WAIT).close()
    else:
        time.sleep(1.0)
    assert listening_address(port) == address
    with Wire(srv.host, srv.port) as wire:
        assert wire.rpc("void")[0] == 200


# -- soak: threads and memory come back --------------------------------------------------------


def abuse(srv, memc_port: int, rng: random.Random) -> None:
    """One round of hostile traffic, every connection closed at the end: pipelined
    writes, junk, half-sent requests, waits, replication handshakes that leave, idle
    connections, memcached commands."""
    socks = []
    try:
        for i in range(60):
            sock = connect(srv.port, timeout=WAIT)
            socks.append(sock)
            kind = i % 6
            if kind == 0:
                body = b"".join(b"_k%d\t%s\n" % (rng.randrange(500), rng.randbytes(rng.randrange(2000)).hex().encode())
                                for _ in range(20))
                sock.sendall(b"POST /rpc/set_bulk HTTP/1.1\r\nContent-Type: text/tab-separated-values\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            elif kind == 1:
                sock.sendall(rng.randbytes(rng.choice((1, 50, 3000))))
            elif kind == 2:
                sock.sendall(b"POST /rpc/set HTTP/1.1\r\nContent-Length: 100000\r\n\r\nkey\tx")
            elif kind == 3:
                sock.sendall(b"GET /rpc/void?WAIT=w&WAITTIME=0.3 HTTP/1.1\r\n\r\n")
            elif kind == 4:
                sock.sendall(encode_handshake(0, NOBODY))
        for i in range(20):
            sock = connect(memc_port, timeout=WAIT)
            socks.append(sock)
            sock.sendall(b"set m%d 0 0 3\r\nabc\r\nget m%d\r\n" % (i, i) if i % 2 else b"set m 0 0 50\r\nab")
        time.sleep(0.5)
    finally:
        for sock in socks:
            sock.close()


def fuzz_round(srv, memc_port: int, seed: int) -> None:
    """A session of the differential fuzzer (tests/difffuzz) without its pauses."""
    session = generate(seed, [":", "casket.kch"], 150, lua=False)
    run_on(srv, memc_port, session.with_steps([step for step in session.steps if step.kind not in IDLING]))


def test_threads_and_memory_return_to_baseline_after_rounds_of_abuse(kt_server_factory):
    memc_port = free_port()
    args = server_argv(generate(0, [], 0, lua=False), memc_port, memcached_libexec(), timeout=1)
    srv = kt_server_factory(":", "casket.kch", args=args)
    connect(memc_port, timeout=WAIT).close()
    rng = random.Random(13)

    def settled() -> tuple[int, int]:
        time.sleep(2.0)   # half-sent requests time out (-tout 1), waits end
        with Wire(srv.host, srv.port) as wire:
            report = wire.rpc("report")[1]
            assert report[b"serv_conn_count"] == b"1"
        return threads_of(srv.pid), rss(srv.pid)

    for seed in range(2):   # warm up: first allocations, caches, the update log file
        abuse(srv, memc_port, rng)
        fuzz_round(srv, memc_port, seed)
    threads, memory = settled()
    for seed in range(2, 7):
        abuse(srv, memc_port, rng)
        fuzz_round(srv, memc_port, seed)
    threads_after, memory_after = settled()
    assert threads_after <= threads
    grown = memory_after - memory
    assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB over five rounds"


# -- regular expressions that backtrack -----------------------------------------------------------


@pytest.mark.parametrize("regex, expected", [
    (rb"^(a|a)*$", set()), (rb"^(a*)*$", set()), (rb"(a|aa)*b", {b"aaab"}), (rb"^(a+)+b", {b"aaab"}),
    (rb"(x+x+)+y", {b"xxy"}), (rb"^(a|a)*!$", {b"a" * 40 + b"!"}),
])
def test_backtracking_regex_is_answered_at_once_and_stalls_no_one(kt_server_factory, regex, expected):
    srv = kt_server_factory(":")
    with Wire(srv.host, srv.port, timeout=WAIT) as wire, Wire(srv.host, srv.port, timeout=WAIT) as other:
        for key in (b"a" * 40 + b"!", b"x" * 40, b"aaab", b"xxy"):
            wire.set(key, b"v")
        started = time.monotonic()
        status, out = wire.rpc("match_regex", regex=regex)
        took = time.monotonic() - started
        assert status == 200
        assert {k[1:] for k in out if k != b"num"} == expected
        assert took < 5.0, f"match_regex took {took:.1f} s"
        assert other.rpc("void")[0] == 200


def test_many_backtracking_regexes_at_once_do_not_stall_other_clients(kt_server_factory):
    srv = kt_server_factory(":", args=["-th", "8"])
    with Wire(srv.host, srv.port) as wire:
        for i in range(200):
            wire.set(b"a" * 30 + b"%03d" % i, b"v")
    errors: list[BaseException] = []

    def search() -> None:
        try:
            with Wire(srv.host, srv.port, timeout=60) as conn:
                assert conn.rpc("match_regex", regex=rb"^(a|a)*$")[1] == {b"num": b"0"}
        except BaseException as exc:
            errors.append(exc)

    searchers = [threading.Thread(target=search) for _ in range(4)]
    for thread in searchers:
        thread.start()
    with Wire(srv.host, srv.port, timeout=WAIT) as other:
        for _ in range(20):
            assert other.rpc("get", key=b"a" * 30 + b"000")[0] == 200
    for thread in searchers:
        thread.join(60)
    assert not errors
