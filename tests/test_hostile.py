"""The client against hostile or broken servers: whatever a server sends, a call raises a
documented ktcluster error, within its limit, in bounded memory (issue 12).

One scripted fake server per kind of reply -- garbage, truncated, oversized declarations,
endless and trickling bodies, silence, malformed TSV, a hostile replication master -- and
each client call (KyotoTycoon over HTTP and binary, Cluster, KyotoSlave, ReplicationStream)
made in a child process under RLIMIT_AS (tests/hostile_child.py), once with threads and
once under gevent.  Each case asserts the error's class, the time the call took against
the limit it must respect (the socket timeout, or the cluster's deadline: how far past it
the call ended is printed as a table, ``-s`` shows it), and how much the child's resident
memory grew.

The fake servers are not KT: these tests do not depend on the server under test.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pool import ScriptedServer, read_request

from ktcluster.connection import DEFAULT_MAX_REPLY_SIZE
from ktcluster.protocol import binary
from ktcluster.protocol.replication import OP_SET, encode_log_entry, encode_log_message

HERE = Path(__file__).parent
MiB = 1 << 20
#: the address-space cap of a child, over what it had before the call (RLIMIT_AS)
CAP = 512 * MiB
#: resident memory a call may add when the reply is small or refused before its body
SMALL = 48 * MiB
#: how far past its limit a call may end on a loaded 2-core machine (the figures printed
#: are what it actually took)
SLACK = 1.5
TIMEOUT = 1.0      # the socket timeout of the clients (each exchange)
DEADLINE = 2.0     # the Cluster's RetryPolicy.deadline
TSV = b"Content-Type: text/tab-separated-values\r\n"

Handler = Callable[[socket.socket, int], None]
#: set when the fake servers stop: their handlers' waits end
STOPPING = threading.Event()


# -- what the fake servers send ---------------------------------------------------------------


def read_binary(conn: socket.socket) -> bytes:
    """A binary request (or a replication handshake): what the first recv brings."""
    return conn.recv(1 << 16)


def answer(data: bytes, *, request: Callable[[socket.socket], bytes] = read_request, then: str = "hang") -> Handler:
    """Read the request, send ``data``, then hang (until the client leaves) or close."""
    def handler(conn: socket.socket, i: int) -> None:
        request(conn)
        conn.sendall(data)
        if then == "hang":
            conn.recv(1)
        conn.close()
    return handler


def trickle(data: bytes, *, request: Callable[[socket.socket], bytes] = read_request,
            interval: float = 0.02) -> Handler:
    """A valid reply, one byte at a time."""
    def handler(conn: socket.socket, i: int) -> None:
        request(conn)
        for byte in data:
            conn.sendall(bytes((byte,)))
            if STOPPING.wait(interval):
                return
        conn.recv(1)
    return handler


def endless(prefix: bytes, block: bytes, *, request: Callable[[socket.socket], bytes] = read_request) -> Handler:
    """``prefix``, then ``block`` over and over, as fast as the client reads."""
    def handler(conn: socket.socket, i: int) -> None:
        request(conn)
        conn.sendall(prefix)
        while True:
            conn.sendall(block)
    return handler


def silent(conn: socket.socket, i: int) -> None:
    """Accepts, reads, never answers."""
    read_request(conn)
    conn.recv(1)


def late(data: bytes, delay: float) -> Handler:
    """A valid reply, after ``delay`` seconds."""
    def handler(conn: socket.socket, i: int) -> None:
        read_request(conn)
        if STOPPING.wait(delay):
            return
        conn.sendall(data)
        conn.recv(1)
    return handler


def http(body: bytes = b"", *, status: bytes = b"200 OK", headers: bytes = TSV, length: bytes | None = None) -> bytes:
    """An HTTP response (Content-Length is the body's unless ``length`` says otherwise)."""
    size = b"%d" % len(body) if length is None else length
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: " + size + b"\r\n" + headers + b"\r\n" + body


def get_bulk_reply(records: list[tuple[bytes, bytes]]) -> bytes:
    return binary.encode_get_bulk_reply([(0, k, v, binary.XTMAX) for k, v in records])


def bulk_head(magic: int, count: int) -> bytes:
    """A binary reply's head: magic and record count."""
    return struct.pack(">BI", magic, count)


def record(ksiz: int, vsiz: int) -> bytes:
    """The head of a get_bulk reply's record: dbidx, key size, value size, xt."""
    return struct.pack(">HIIq", 0, ksiz, vsiz, binary.XTMAX)


def master(*messages: bytes) -> Handler:
    """A replication master that accepts the handshake, sends ``messages`` and hangs."""
    return answer(b"\xb1" + b"".join(messages), request=read_binary)


def log_message(payload: bytes) -> bytes:
    return encode_log_message(1_700_000_000 * 10**9, payload)


LONG_VARNUM = struct.pack(">HHB", 2, 0, OP_SET) + b"\xff" * MiB + b"\x01\x01kv"  # 1 MiB of one number
TRICKLED_RECORD = log_message(encode_log_entry(2, 0, OP_SET, b"k", b"\0" * 5 + b"v" * 200))

#: behaviour name -> the fake server's handler
BEHAVIOURS: dict[str, Handler] = {
    "garbage": answer(b"\x00\xff\x13garbage that is not HTTP\r\n\r\n"),
    "truncated-head": answer(b"HTTP/1.1 200 OK\r\nContent-Le", then="close"),
    "truncated-body": answer(http(b"x" * 100)[:-90], then="close"),
    "length-4GiB": answer(http(length=b"%d" % (4 << 30))),
    "length-1PB": answer(http(length=b"%d" % 10**15)),
    "length-1e30": answer(http(length=b"1" + b"0" * 30)),
    "length-5000-digits": answer(http(length=b"9" * 5000)),
    "length-negative": answer(http(length=b"-1")),
    "chunked": answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "endless-body": endless(b"HTTP/1.1 200 OK\r\n" + TSV + b"\r\n", b"a\tb\n" * (MiB // 4)),
    "endless-head": endless(b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"y" * 1000 + b"\r\n"),
    "trickle": trickle(http(b"count\t1\nsize\t1\n" + b"x\t" * 1000)),
    "silent": silent,
    "slow": late(http(b"count\t1\nsize\t1\n"), 30.0),
    "empty-200": answer(http(b"")),
    "count-not-a-number": answer(http(b"count\tabc\nsize\t1\nnum\t\n")),
    "tsv-bomb": answer(http(b"a\tb\n" * (4 * MiB))),
    "tsv-bad-base64": answer(http(b"count\t!!!!\n", headers=b"Content-Type: text/tab-separated-values; colenc=B\r\n")),
    "rpc-more-records-than-keys": answer(http(b"".join(b"_k%d\tv\n" % i for i in range(1000)) + b"num\t1000\n")),
    "bin-garbage": answer(b"\x42" * 64, request=read_binary),
    "bin-hits-4G": endless(bulk_head(binary.MAGIC_GET_BULK, 2**32 - 1), record(0, 0) * 1000, request=read_binary),
    "bin-ksiz-4G": answer(bulk_head(binary.MAGIC_GET_BULK, 1) + record(2**32 - 1, 0), request=read_binary),
    "bin-vsiz-256MiB-then-1MiB": answer(bulk_head(binary.MAGIC_GET_BULK, 1) + record(1, binary.DATAMAXSIZ) + b"k"
                                        + b"v" * MiB, request=read_binary),
    "bin-count-more-than-sent": answer(binary.encode_count_reply(binary.MAGIC_SET_BULK, 5), request=read_binary),
    "bin-error-byte": answer(b"\xbf", request=read_binary, then="close"),
    "bin-other-key": answer(get_bulk_reply([(b"other", b"v")]), request=read_binary),
    "bin-script-4G-records": answer(bulk_head(binary.MAGIC_PLAY_SCRIPT, 2**32 - 1), request=read_binary),
    "bin-trickle": trickle(get_bulk_reply([(b"k", b"v" * 300)]), request=read_binary),
    "bin-silent": answer(b"", request=read_binary),
    "repl-huge-record": endless(b"\xb1" + struct.pack(">BQI", 0xB1, 1, 2**32 - 1), bytes(MiB), request=read_binary),
    "repl-long-varnum": master(log_message(LONG_VARNUM)),
    "repl-garbage": master(b"\x42" * 32),
    "repl-refuses": answer(b"\xbf", request=read_binary, then="close"),
    "repl-trickle": trickle(b"\xb1" + TRICKLED_RECORD, request=read_binary),
    "repl-silent": master(),
}


# -- the cases --------------------------------------------------------------------------------


PROTOCOL = ("ProtocolError",)
CLOSED = ("KTConnectionError",)
LATE = ("SocketTimeoutError", "DeadlineExceeded")


def case(client: str, call: str, behaviour: str, expect: tuple[str, ...], *, limit: float = 0.0,
         memory: int = SMALL, **extra: Any) -> dict[str, Any]:
    """A call on a fake server: it must raise one of ``expect`` (class names, subclasses
    count) within ``limit`` (+ SLACK) seconds and grow resident memory by at most ``memory``."""
    return {"id": f"{client}-{call}-{behaviour}", "client": client, "call": call, "behaviour": behaviour,
            "expect": expect, "limit": limit, "memory": memory, "timeout": TIMEOUT, "deadline": DEADLINE,
            "cap": CAP, "kill_after": 60, **extra}


SMALL_REPLIES = {"options": {"max_reply_size": 8 * MiB}}

CASES = [
    # KyotoTycoon over HTTP: REST get, RPC count/increment/match/get_bulk
    case("http", "get", "garbage", PROTOCOL),
    case("http", "count", "garbage", PROTOCOL),
    case("http", "get", "truncated-head", CLOSED),
    case("http", "get", "truncated-body", CLOSED),
    case("http", "get", "length-4GiB", PROTOCOL),
    case("http", "count", "length-1PB", PROTOCOL),
    case("http", "get", "length-1e30", PROTOCOL),
    case("http", "get", "length-5000-digits", PROTOCOL),
    case("http", "get", "length-negative", PROTOCOL),
    case("http", "get", "chunked", PROTOCOL),
    case("http", "get", "endless-body", PROTOCOL, timeout=30.0, limit=30.0, cap=2 * CAP,
         memory=2 * DEFAULT_MAX_REPLY_SIZE + SMALL),                # the default limit, 257 MiB
    case("http", "count", "endless-body", PROTOCOL, memory=4 * 8 * MiB + SMALL, **SMALL_REPLIES),
    case("http", "get", "endless-head", PROTOCOL),
    case("http", "get", "trickle", LATE, limit=TIMEOUT),
    case("http", "count", "trickle", LATE, limit=TIMEOUT),
    case("http", "get", "silent", LATE, limit=TIMEOUT),
    case("http", "count", "slow", LATE, limit=TIMEOUT),
    case("http", "count", "empty-200", PROTOCOL),
    case("http", "count", "count-not-a-number", PROTOCOL),
    case("http", "increment", "count-not-a-number", PROTOCOL),
    case("http", "increment_double", "count-not-a-number", PROTOCOL),
    case("http", "set_bulk", "empty-200", PROTOCOL),
    case("http", "count", "tsv-bomb", PROTOCOL, options={"max_reply_size": 24 * MiB}, memory=4 * 24 * MiB),
    case("http", "match_prefix", "tsv-bomb", PROTOCOL, options={"max_reply_size": 24 * MiB}, memory=4 * 24 * MiB),
    case("http", "count", "tsv-bad-base64", PROTOCOL),
    case("http", "get_bulk", "rpc-more-records-than-keys", PROTOCOL),
    # KyotoTycoon over the binary protocol
    case("binary", "get", "bin-garbage", PROTOCOL),
    case("binary", "get_bulk", "bin-hits-4G", PROTOCOL),
    case("binary", "get", "bin-ksiz-4G", PROTOCOL),
    case("binary", "get", "bin-vsiz-256MiB-then-1MiB", LATE, limit=TIMEOUT),   # nothing allocated ahead
    case("binary", "set", "bin-count-more-than-sent", PROTOCOL),
    case("binary", "set_bulk", "bin-error-byte", PROTOCOL),
    case("binary", "get", "bin-other-key", PROTOCOL),
    case("binary", "get_with_expiry", "bin-other-key", PROTOCOL),
    case("binary", "play_script", "bin-script-4G-records", PROTOCOL),
    case("binary", "get", "bin-trickle", LATE, limit=TIMEOUT),
    case("binary", "get_bulk", "bin-trickle", LATE, limit=TIMEOUT),
    case("binary", "get", "bin-silent", LATE, limit=TIMEOUT),
    # Cluster: the deadline bounds the whole call, retries included
    case("cluster", "get", "bin-trickle", LATE, limit=DEADLINE),
    case("cluster", "get_bulk", "bin-trickle", ("PartialFailureError",), limit=DEADLINE),  # a shard timed out
    case("cluster", "set", "bin-silent", LATE, limit=DEADLINE),
    case("cluster", "get", "bin-hits-4G", PROTOCOL),
    case("cluster_http", "get", "trickle", LATE, limit=DEADLINE),
    case("cluster_http", "get", "slow", LATE, limit=DEADLINE),
    case("cluster_http", "get", "length-4GiB", PROTOCOL),
    case("cluster_http", "get", "endless-body", PROTOCOL, **SMALL_REPLIES),
    case("cluster_http", "count", "garbage", ("PartialFailureError",)),        # a fan-out, of one node
    case("cluster_http", "increment", "count-not-a-number", PROTOCOL),
    # replication consumers
    case("slave", "consume", "repl-huge-record", PROTOCOL),
    case("slave", "consume", "repl-long-varnum", PROTOCOL),
    case("slave", "consume", "repl-garbage", PROTOCOL),
    case("slave", "consume", "repl-refuses", ("ReplicationError",)),
    case("slave", "consume", "repl-trickle", LATE, limit=TIMEOUT),
    case("slave", "consume", "repl-silent", LATE, limit=TIMEOUT),
    case("stream", "stream", "repl-huge-record", PROTOCOL),
    case("stream", "stream", "repl-long-varnum", PROTOCOL),
    case("stream", "stream", "repl-garbage", PROTOCOL),
]

#: what the gevent run repeats: the calls that wait (their timers are gevent's there)
GEVENT_CASES = [c for c in CASES if c["expect"] is LATE or c["client"] in ("cluster", "stream")
                or c["behaviour"] in ("endless-body", "bin-hits-4G")]


#: the client and cluster cases again with the asyncio front end (ktcluster.aio)
AIO_CASES = [dict(c, client="aio_" + c["client"], id="aio-" + c["id"]) for c in CASES
             if c["client"] in ("http", "binary", "cluster", "cluster_http") and sys.version_info >= (3, 11)]


@pytest.fixture(scope="module")
def fake_servers() -> Iterator[dict[str, str]]:
    servers = {name: ScriptedServer(handler) for name, handler in BEHAVIOURS.items()}
    yield {name: f"127.0.0.1:{srv.port}" for name, srv in servers.items()}
    STOPPING.set()
    for srv in servers.values():
        srv.close()


def run_cases(cases: list[dict[str, Any]], addresses: dict[str, str], *, gevent: bool) -> list[dict[str, Any]]:
    """Run ``cases`` in a child (tests/hostile_child.py), four at a time; their results."""
    for c in cases:
        c["address"] = addresses.get(c["behaviour"])
        c["addresses"] = [addresses[name] for name in c.get("nodes", ())]
    argv = [sys.executable, str(HERE / "hostile_child.py"), "--parallel", "4"] + (["--gevent"] if gevent else [])
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # no 64 MiB malloc arenas per thread under RLIMIT_AS
    proc = subprocess.run(argv, input=json.dumps(cases), capture_output=True, text=True, timeout=600, env=env,
                          cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def check(cases: list[dict[str, Any]], results: list[dict[str, Any]], mode: str) -> None:
    problems = []
    rows = []
    for c, r in zip(cases, results, strict=True):
        mro = r.get("mro", [])
        elapsed = r.get("elapsed", float("nan"))
        rows.append(f"{mode:7} {c['id']:55} {r['error'] or 'no error':20} {elapsed:6.3f} s"
                    + (f"  ({elapsed - c['limit']:+.3f} s past the limit)" if c["limit"] and c["expect"] else "")
                    + f"  rss +{r.get('rss_growth', 0) / MiB:.0f} MiB" + ("" if c["expect"] else f"  {r.get('value')}"))
        if not c["expect"] and r["error"] is not None:
            problems.append(f"{c['id']}: {r['error']}: {r.get('message')}")
        elif c["expect"] and not any(name in mro for name in c["expect"]):
            problems.append(f"{c['id']}: expected {c['expect']}, got {r.get('error')}: {r.get('message')}")
        elif not elapsed <= c["limit"] + SLACK:
            problems.append(f"{c['id']}: took {elapsed:.2f} s, limit {c['limit']} s")
        elif not r["rss_growth"] <= c["memory"]:
            problems.append(f"{c['id']}: resident memory grew by {r['rss_growth'] / MiB:.0f} MiB")
    print("\n" + "\n".join(rows))
    assert not problems, "\n".join(problems)


def test_every_call_fails_typed_in_time_and_in_bounded_memory(fake_servers):
    check(CASES, run_cases(CASES, fake_servers, gevent=False), "threads")


def test_under_gevent_too(fake_servers):
    check(GEVENT_CASES, run_cases(GEVENT_CASES, fake_servers, gevent=True), "gevent")


def test_the_asyncio_client_too(fake_servers):
    check(AIO_CASES, run_cases(AIO_CASES, fake_servers, gevent=False), "asyncio")


STORM = case("storm", "storm", "storm", (), limit=25.0, memory=4 * SMALL, seconds=20.0, threads=8,
             nodes=["bin-trickle", "bin-silent", "bin-garbage", "bin-hits-4G", "bin-count-more-than-sent"])


@pytest.mark.slow
@pytest.mark.parametrize("gevent", [False, True], ids=["threads", "gevent"])
def test_a_storm_of_calls_on_hostile_nodes(fake_servers, gevent):
    """Eight workers, 20 s of random calls on a cluster whose every node is hostile: each
    call ends typed within the deadline, memory stays bounded, no connection leaks."""
    check([dict(STORM)], run_cases([dict(STORM)], fake_servers, gevent=gevent), "gevent" if gevent else "threads")
