"""KyotoTycoon against the server under test (embedded, or $KT_SERVER_BIN): the ng 0.7.5
API (names, defaults, return values, errors), binary mode, packers, keys and values of
any bytes, DB selection, expiry, WAIT/SIGNAL, errors and concurrency."""

from __future__ import annotations

import contextlib
import datetime
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fronts
import pytest
from fronts import FRONTS, single
from threaded import run_threads

from ktcluster import (
    KEEP,
    KT_PACKER_BYTES,
    KT_PACKER_CUSTOM,
    KT_PACKER_JSON,
    KT_PACKER_PICKLE,
    KT_PACKER_STRING,
    ExpireAt,
    KyotoTycoon,
    KyotoTycoonException,
)
from ktcluster.errors import (
    ArgumentError,
    DeadlineExceeded,
    InvalidArgumentError,
    KTConnectionError,
    LogicalInconsistencyError,
    NoImplementationError,
    PoolTimeoutError,
    ScriptError,
    ServerError,
    SignalTimeoutError,
    SocketTimeoutError,
)
from ktcluster.packers import MemcachePacker, SimpleMemcachePacker
from ktcluster.protocol.binary import DATAMAXSIZ
from ktcluster.testing import KTServer, free_port

GOLDEN_LUA = str(Path(__file__).parent / "golden" / "golden.lua")


@pytest.fixture(scope="module")
def server() -> Iterator[KTServer]:
    """DB 0 ':' (hash), DB 1 '+' (tree); Lua procedures from the golden script."""
    with KTServer(":", "+", args=["-scr", GOLDEN_LUA]) as srv:
        yield srv


#: the front end the running test's ``kt`` and ``client()`` use (set by the ``kt`` fixture)
FRONT = ["blocking"]


@pytest.fixture(params=FRONTS)
def kt(server: KTServer, request) -> Iterator[KyotoTycoon]:
    """A client of the server, of each front end in turn (``ktcluster.aio`` through
    tests/fronts.py); tests marked ``blocking_only`` use what only the blocking one has."""
    if request.param != "blocking" and request.node.get_closest_marker("blocking_only"):
        pytest.skip("what the blocking front end does (gevent)")
    FRONT[0] = request.param
    client = single(request.param).connect(server.host, server.port)
    client.clear(0)
    client.clear(1)
    yield client
    client.close()
    FRONT[0] = "blocking"


@contextlib.contextmanager
def paused(srv: KTServer) -> Iterator[None]:
    """The server stopped (SIGSTOP) for the block: it keeps its sockets but answers nothing."""
    srv.pause()
    time.sleep(0.1)  # SIGSTOP is asynchronous: let it take effect
    try:
        yield
    finally:
        srv.resume()


def client(server: KTServer, **kw) -> KyotoTycoon:
    """A client of the running test's front end."""
    return single(FRONT[0], **kw).connect(server.host, server.port)


@pytest.fixture(params=["http", "binary"])
def mode(request) -> bool:
    return request.param == "binary"


# -- construction ------------------------------------------------------------------------------


def test_constructor_errors_match_ng():
    with pytest.raises(DeprecationWarning):
        KyotoTycoon(exceptions=False)
    with pytest.raises(KyotoTycoonException):
        KyotoTycoon(pack_type=KT_PACKER_JSON, custom_packer=SimpleMemcachePacker())
    with pytest.raises(KyotoTycoonException):
        KyotoTycoon(pack_type=KT_PACKER_CUSTOM)
    with pytest.raises(KyotoTycoonException):
        KyotoTycoon(pack_type=99)


def test_open_connect_close_and_context_manager(server, kt):
    fresh = KyotoTycoon()
    with pytest.raises(KTConnectionError):
        fresh.get("a")
    assert fresh.open(server.host, server.port) is True
    assert fresh.set("a", 1) is True
    assert fresh.close() is True
    assert fresh.get("a") == 1  # reconnects, as ng's HTTP client did
    with KyotoTycoon().connect(server.host, server.port, 5) as other:
        assert other.get("a") == 1
    assert other.pool.stats().idle == 0
    with KyotoTycoon().connect(server.host, str(server.port)) as by_text:  # a port as text, as ng took it
        assert by_text.get("a") == 1


@pytest.mark.parametrize("host, port, timeout", [
    ("127.0.0.1", 70000, 5), ("127.0.0.1", 0, 5), ("127.0.0.1", "x", 5), ("127.0.0.1", None, 5),
    ("", 1978, 5), (None, 1978, 5), ("127.0.0.1", 1978, 0), ("127.0.0.1", 1978, -1), ("127.0.0.1", 1978, "5"),
])
def test_open_refuses_a_bad_address_or_timeout(host, port, timeout):
    with pytest.raises(ArgumentError):
        KyotoTycoon().open(host, port, timeout)


# -- single records ----------------------------------------------------------------------------


@pytest.mark.parametrize("pack_type,value", [
    (KT_PACKER_PICKLE, {"a": [1, 2.5, None], "b": ("x", b"y")}),
    (KT_PACKER_JSON, {"a": [1, 2.5, None], "b": "ü"}),
    (KT_PACKER_STRING, "héllo\twörld\n"),
    (KT_PACKER_BYTES, bytes(range(256))),
])
def test_set_get_remove_each_packer(server, kt, mode, pack_type, value):
    c = client(server, binary=mode, pack_type=pack_type)
    assert c.get("k") is None
    assert c.set("k", value) is True
    assert c.get("k") == value
    assert kt.count() == 1
    assert c.remove("k") is True
    assert c.remove("k") is False
    assert c.get("k") is None


def test_custom_packer(server, kt, mode):
    class Upper:
        def pack(self, data):
            return data.upper().encode()

        def unpack(self, data):
            return data.decode() + "!"

    c = client(server, binary=mode, pack_type=KT_PACKER_CUSTOM, custom_packer=Upper())
    c.set("k", "abc")
    assert c.get("k") == "ABC!"


def test_add_replace_follow_ng(kt):
    assert kt.add("k", 1) is True
    with pytest.raises(LogicalInconsistencyError) as info:
        kt.add("k", 2)
    assert isinstance(info.value, KyotoTycoonException)
    assert info.value.code == 450 and "record duplication" in info.value.message
    assert kt.get("k") == 1
    assert kt.replace("missing", 1) is False
    assert kt.replace("k", 3) is True and kt.get("k") == 3
    assert kt.add("x", 1, expire=60) is True
    with pytest.raises(LogicalInconsistencyError):
        kt.add("x", 1, expire=60)
    assert kt.replace("nothere", 1, expire=60) is False


def test_check_seize(kt):
    assert kt.check("k") is False
    kt.set("k", [1])
    assert kt.check("k") is True
    assert kt.seize("k") == [1]
    assert kt.seize("k") is None
    assert kt.check("k") is False


def test_append(server, kt):
    b = client(server, pack_type=KT_PACKER_BYTES)
    assert b.append("b", b"ab") is True and b.append("b", b"cd") is True and b.append("b", "é") is True
    assert b.get("b") == "abcdé".encode()
    s = client(server, pack_type=KT_PACKER_STRING)
    s.append("s", "x")
    s.append("s", "ÿ")
    assert s.get("s") == "xÿ"
    # pickle: ng's read-modify-cas on the unpacked string
    kt.append("p", "ab")
    kt.append("p", b"cd")  # converted to the stored type, as ng does
    assert kt.get("p") == "abcd"
    kt.set("n", 5)
    with pytest.raises(LogicalInconsistencyError):
        kt.append("n", "x")
    with pytest.raises(ValueError):
        kt.append("p", 5)
    kt.append("p", "!", db=1)  # ng ignored db when reading; ktcluster does not
    assert kt.get("p", db=1) == "!" and kt.get("p") == "abcd"


def test_increment_and_get_int(kt):
    assert kt.increment("n", 5) == 5
    assert kt.increment("n", -2) == 3
    assert kt.increment("n") == 4
    assert kt.get_int("n") == 4
    assert kt.increment("o", 1, orig=10) == 11
    with pytest.raises(LogicalInconsistencyError):
        kt.increment("missing", 1, orig="try")
    assert kt.increment("o", 7, orig="set") == 7
    kt.set("text", "x")
    with pytest.raises(LogicalInconsistencyError) as info:
        kt.increment("text", 1)
    assert info.value.code == 450
    with pytest.raises(LogicalInconsistencyError):
        kt.get_int("missing")
    with pytest.raises(LogicalInconsistencyError):
        kt.get_int("text")
    with pytest.raises(ArgumentError):
        kt.increment("n", 1, orig="sometimes")
    now = time.time()
    assert kt.increment("e", 1, expire=100) == 1  # ng ignored expire
    raw = client_raw(kt)
    assert 98 <= raw.get_with_expiry("e")[1] - now <= 102


def client_raw(kt: KyotoTycoon) -> KyotoTycoon:
    return KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(kt.pool.host, kt.pool.port)


def test_increment_double(kt):
    assert kt.increment_double("d", 1.5) == 1.5
    assert kt.increment_double("d", 0.25) == 1.75
    assert kt.increment_double("d", -3) == -1.25
    # full precision on the way in (ng sent %f, so 4e-7 became 0); KT answers with %f
    assert kt.increment_double("tiny", 4e-7) == 0.0
    assert kt.increment_double("tiny", 4e-7) == 0.000001
    assert kt.increment_double("t", 1, orig="set") == 1.0
    with pytest.raises(LogicalInconsistencyError):
        kt.increment_double("nope", 1, orig="try")


def test_cas(kt):
    with pytest.raises(ValueError):
        kt.cas("k")
    assert kt.cas("k", new_val=1) is True
    with pytest.raises(LogicalInconsistencyError) as info:
        kt.cas("k", new_val=1)
    assert "status conflict" in info.value.message
    with pytest.raises(LogicalInconsistencyError):
        kt.cas("k", old_val=2, new_val=3)
    assert kt.cas("k", old_val=1, new_val=2) is True and kt.get("k") == 2
    assert kt.cas("k", old_val=2) is True and kt.get("k") is None


def test_binary_mode_supports_only_the_binary_protocol(server, kt):
    b = client(server, binary=True)
    assert b.atomic is False and kt.atomic is True
    for call in (lambda: b.add("k", 1), lambda: b.replace("k", 1), lambda: b.append("k", "x"),
                 lambda: b.increment("k", 1), lambda: b.increment_double("k", 1), lambda: b.cas("k", 1, 2),
                 lambda: b.check("k"), lambda: b.seize("k"), lambda: b.get_int("k"), lambda: b.vacuum(),
                 lambda: b.match_prefix("k"), lambda: b.match_regex("k"), lambda: b.match_similar("k"),
                 lambda: b.report(), lambda: b.status(), lambda: b.clear(), lambda: b.count(), lambda: b.size(),
                 lambda: b.cursor()):
        with pytest.raises(NotImplementedError):
            call()
    for call in (lambda: b.set_bulk({"a": 1}, atomic=True), lambda: b.get_bulk(["a"], atomic=True),
                 lambda: b.remove_bulk(["a"], atomic=True)):
        with pytest.raises(KyotoTycoonException):
            call()


# -- bulk --------------------------------------------------------------------------------------


def test_bulk(server, kt, mode):
    c = client(server, binary=mode)
    assert c.set_bulk({}) == 0 and c.get_bulk([]) == {} and c.remove_bulk([]) == 0
    data = {f"k{i}": {"i": i} for i in range(50)}
    assert c.set_bulk(data) == 50
    got = c.get_bulk(["k3", "missing", b"k1", "k40"])
    assert got == {"k3": {"i": 3}, b"k1": {"i": 1}, "k40": {"i": 40}}
    assert list(got) == ["k3", b"k1", "k40"]  # request order, caller's key objects
    assert c.remove_bulk(["k1", "k2", "missing"]) == 2
    assert kt.count() == 48
    if not mode:
        assert c.set_bulk({"x": 1}, atomic=False) == 1
        assert c.get_bulk(["x"], atomic=False) == {"x": 1}
        assert c.remove_bulk(["x"], atomic=False) == 1


def test_bulk_with_expiry_and_db(server, kt, mode):
    c = client(server, binary=mode)
    assert c.set_bulk({"a": 1, "b": 2}, expire=ExpireAt(4102444800), db=1) == 2
    assert kt.get_with_expiry("a", db=1) == (1, 4102444800)
    assert kt.get("a") is None
    assert c.get_bulk(["a", "b"], db="+") == {"a": 1, "b": 2}
    assert c.remove_bulk(["a"], db="+") == 1
    with pytest.raises(ArgumentError):
        c.set_bulk({"a": 1}, expire=KEEP)


def test_large_bulk(server, kt, mode):
    c = client(server, binary=mode, pack_type=KT_PACKER_BYTES)
    data = {b"key%05d" % i: os.urandom(i % 300) for i in range(3000)}
    assert c.set_bulk(data) == 3000
    assert c.get_bulk(list(data)) == data
    assert c.remove_bulk(list(data)[:1000]) == 1000
    assert kt.count() == 2000


# -- keys and values ---------------------------------------------------------------------------

ODD_KEYS = ["", "tab\tkey", "line\nkey", "cr\r", "sp ace", "sl/ash", "pl+us", "per%cent", "q?uery#frag", "ünï",
            b"\x00\xff\xfe", b"\x80", b"/", "rpc/x", "x" * 3000]


@pytest.mark.parametrize("key", ODD_KEYS, ids=lambda k: repr(k)[:20])
def test_odd_keys_roundtrip(server, kt, mode, key):
    c = client(server, binary=mode, pack_type=KT_PACKER_BYTES)
    value = b"v\x00\t\n\r" + bytes(range(256))
    assert c.set(key, value) is True
    assert c.get(key) == value
    assert c.get_bulk([key]) == {key: value}
    if not mode:
        assert c.check(key) is True
        assert c.get_with_expiry(key) == (value, None)
        found = c.match_prefix(key)
        expected = key if isinstance(key, str) else key.decode("utf-8", "surrogateescape")
        assert expected in found
    assert c.remove(key) is True
    assert c.get(key) is None


def test_empty_and_large_values(server, kt, mode):
    c = client(server, binary=mode, pack_type=KT_PACKER_BYTES)
    c.set("empty", b"")
    assert c.get("empty") == b""
    big = os.urandom(6 << 20)
    c.set("big", big)
    assert c.get("big") == big
    assert c.get_bulk(["big", "empty"]) == {"big": big, "empty": b""}


def test_response_encodings_b_and_u(server, kt):
    raw = client(server, pack_type=KT_PACKER_BYTES)
    mostly_text = b"some text with one\nnewline"  # the server answers colenc=U
    binary = os.urandom(64) + b"\x00"  # colenc=B
    long_text = b"y" * 400  # > 255 bytes: encoded although it is plain text
    for key, value in [("u", mostly_text), ("b", binary), ("l", long_text)]:
        raw.set(key, value, expire=3600)  # via RPC (relative expiry), read via RPC
        got, xt = raw.get_with_expiry(key)
        assert got == value and xt is not None
    assert raw.get_bulk(["u", "b", "l"], atomic=True) == {"u": mostly_text, "b": binary, "l": long_text}
    raw.set(b"k\x01ey", b"v")
    assert raw.match_prefix(b"k\x01") == ["k\x01ey"]
    assert raw.seize("b") == binary


def test_decode_keys_false_returns_bytes(server, kt):
    c = client(server, decode_keys=False, pack_type=KT_PACKER_BYTES)
    c.set(b"\xffkey", b"v", db=1)
    c.set("akey", b"v", db=1)
    assert c.match_prefix(b"", db=1) == [b"akey", b"\xffkey"]
    with c.cursor() as cur:
        assert cur.jump(db=1) and cur.get_key() == b"akey"
    assert kt.match_regex("key", db=1) == ["akey", "\udcffkey"]  # surrogateescape: round-trips
    assert c.get("\udcffkey", db=1) == b"v"


def test_bad_key_types(kt):
    with pytest.raises(ArgumentError):
        kt.get(5)
    with pytest.raises(ArgumentError):
        kt.set(None, 1)


@pytest.mark.parametrize("call", [
    lambda c: c.get_bulk("ab"), lambda c: c.remove_bulk("ab"), lambda c: c.remove_bulk(b"ab"),
    lambda c: c.get_bulk(None), lambda c: c.remove_bulk(5), lambda c: c.set_bulk(None), lambda c: c.set_bulk(["a"]),
], ids=["get_bulk-str", "remove_bulk-str", "remove_bulk-bytes", "get_bulk-None", "remove_bulk-int",
        "set_bulk-None", "set_bulk-list"])
def test_bulk_calls_refuse_what_is_not_a_collection_of_keys(server, kt, mode, call):
    """One str is not taken for the list of its characters: remove_bulk("ab") must not
    remove "a" and "b"."""
    c = client(server, binary=mode)
    c.set_bulk({"a": 1, "b": 2})
    with pytest.raises(ArgumentError):
        call(c)
    assert c.get_bulk(iter(["a", "b"])) == {"a": 1, "b": 2}  # any other iterable of keys is fine


def test_binary_values_over_the_protocol_limit_are_refused_before_sending(server):
    c = client(server, binary=True, pack_type=KT_PACKER_BYTES)
    huge = bytes(DATAMAXSIZ + 1)
    for call in (lambda: c.set("big", huge), lambda: c.set_bulk({"limit:a": b"", "big": huge})):
        with pytest.raises(ArgumentError):
            call()
    assert c.get("limit:a") is None  # nothing was sent
    assert c.set("small", b"x") and c.get("small") == b"x"


# -- databases ---------------------------------------------------------------------------------


def test_db_by_index_and_name(server, kt, mode):
    c = client(server, binary=mode)
    c.set("k", "zero")
    c.set("k", "one", db=1)
    assert c.get("k") == "zero" and c.get("k", db=1) == "one" and c.get("k", db="+") == "one"
    assert c.get("k", db=":") == "zero"
    assert c.remove("k", db="+") is True
    assert c.get("k", db=1) is None
    with pytest.raises(InvalidArgumentError) as info:
        c.get("k", db="nosuch")
    assert "no such database" in info.value.message
    if not mode:
        with pytest.raises(InvalidArgumentError) as info:
            c.set("k", 1, db="nosuch")
        assert info.value.code == 400
        with pytest.raises(InvalidArgumentError):
            c.count(db=7)
        assert c.status(db="+")["path"] == "+"


# -- information -------------------------------------------------------------------------------


def test_report_status_count_size_clear_vacuum(kt):
    kt.set("a", 1)
    kt.set("b", 2, db=1)
    report = kt.report()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in report.items())
    assert report["db_0"].startswith("count=1 ")
    typed = kt.report(typed=True)
    assert typed["db_1"]["count"] == 1 and typed["db_1"]["path"] == "+"
    assert isinstance(typed["serv_current_time"], float) and isinstance(typed["db_total_count"], int)
    status = kt.status()
    assert status["count"] == "1" and isinstance(status["size"], str)
    assert kt.status(1, typed=True)["count"] == 1
    assert kt.count() == 1 and kt.count(1) == 1 and kt.size() > 0
    assert kt.vacuum() is True and kt.vacuum(step=3) is True
    assert kt.synchronize() is True
    assert kt.clear(1) is True and kt.count(1) == 0 and kt.count() == 1


# -- matching ----------------------------------------------------------------------------------


def test_match_order_and_limits(kt):
    for key in ["b2", "a1", "b1", "b10", "c", "bb"]:
        kt.set(key, 0, db=1)
    assert kt.match_prefix("b", db=1) == ["b1", "b10", "b2", "bb"]  # the tree's order
    assert kt.match_prefix("b", 2, db=1) == ["b1", "b10"]
    assert kt.match_prefix("b", 0, db=1) == ["b1", "b10", "b2", "bb"]  # ng: 0 means no limit
    assert kt.match_prefix("zz", db=1) == []
    assert kt.match_regex(r"^b[0-9]+$", db=1) == ["b1", "b10", "b2"]
    assert kt.match_similar("b1", 1, db=1) == ["b1", "a1", "b10", "b2", "bb"]  # nearest first
    assert kt.match_similar("b1", db=1) == ["b1"]  # distance 0
    with pytest.raises(LogicalInconsistencyError):
        kt.match_regex("(", db=1)
    for call in (kt.match_prefix, kt.match_regex, kt.match_similar):
        with pytest.raises(ValueError):
            call(None)


def test_match_similar_counts_characters_or_bytes(kt):
    kt.set("ü", 0)
    assert kt.match_similar("u", 1) == ["ü"]  # one character apart
    assert kt.match_similar(b"u", 1) == []  # two bytes apart


# -- cursors -----------------------------------------------------------------------------------


def test_cursor_walk(kt):
    for i in range(5):
        kt.set(f"k{i}", i, db=1)
    with kt.cursor() as cur:
        assert list(cur.items(db=1)) == [(f"k{i}", i) for i in range(5)]
    with kt.cursor() as cur:
        assert cur.jump("k2", db=1) is True
        assert cur.get_key() == "k2" and cur.get_value() == 2
        assert cur.get(step=True) == ("k2", 2)
        assert cur.get_key(step=True) == "k3" and cur.get_value(step=True) == 4
        assert cur.step() is False
        assert cur.get() == (None, None)  # ng meant this for an invalid cursor
        assert cur.get_with_expiry() is None
        kt.set("k3", 3, expire=ExpireAt(4102444800), db=1)
        assert cur.jump("k2", db=1) and cur.get_with_expiry(step=True) == ("k2", 2, None)
        assert cur.get_with_expiry() == ("k3", 3, 4102444800)
        assert cur.jump_back(db=1) is True and cur.get_key() == "k4"
        assert cur.step_back() is True and cur.get_key() == "k3"
        assert cur.set_value("three") is True and kt.get("k3", db=1) == "three"
        assert cur.remove() is True and cur.get_key() == "k4"
        assert cur.seize() == {"key": "k4", "value": 4}
        assert cur.jump("k0", db=1) and cur.step_back() is False
    assert kt.count(1) == 3


def test_cursor_iteration_and_errors(kt):
    for i in range(3):
        kt.set(f"h{i}", i)
    with kt.cursor() as cur:
        assert sorted(cur) == [("h0", 0), ("h1", 1), ("h2", 2)]
    with kt.cursor() as cur:
        assert cur.jump("missing") is False
        with pytest.raises(NoImplementationError) as info:
            cur.jump_back()
        assert info.value.code == 501
        with pytest.raises(LogicalInconsistencyError):
            cur.get_key()
        with pytest.raises(LogicalInconsistencyError):
            cur.remove()
    kt.clear()
    with kt.cursor() as empty:
        assert list(empty) == []
        assert empty.step() is False


def test_cursor_switching_db_uses_a_new_server_cursor(kt):
    kt.set("zero", 0)
    kt.set("one", 1, db=1)
    with kt.cursor() as cur:
        assert cur.jump() and cur.get() == ("zero", 0)
        assert cur.jump(db=1) and cur.get() == ("one", 1)
        assert cur.jump(db=0) and cur.get() == ("zero", 0)


def test_cursor_holds_its_connection(server, kt):
    c = client(server, pool_size=3)
    c.set_bulk({f"c{i:03d}": i for i in range(200)}, db=1)
    errors = []
    stop = threading.Event()

    def noise():
        try:
            while not stop.is_set():
                c.get("c001", db=1)
                c.set("other", 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=noise) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with c.cursor() as cur:
            walked = [k for k, _ in cur.items(db=1)]
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
    assert walked == [f"c{i:03d}" for i in range(200)]
    assert c.pool.stats().in_use == 0


def test_cursor_connection_loss_is_reported(server, kt):
    kt.set_bulk({"a": 1, "b": 2}, db=1)
    cur = kt.cursor()
    assert cur.jump(db=1)
    cur._conn.close()  # the socket goes away with the server-side cursor
    reconnected = cur._conn.connect()
    if reconnected is not None:  # the asyncio connection's: on the front end's loop
        fronts.run(reconnected)
    with pytest.raises(KTConnectionError):
        cur.step()
    assert cur.jump(db=1) and cur.get_key() == "a"
    cur.delete()
    assert cur.delete() is True
    cur.close()


def test_cursors_exhausting_the_pool(server, kt):
    c = client(server, pool_size=1, pool_timeout=0.2)
    cur = c.cursor()
    cur.jump()
    with pytest.raises(PoolTimeoutError) as info:
        c.get("x")
    assert info.value.request_sent is False
    del cur  # garbage collection gives the connection back
    assert c.get("x") is None


# -- expiry ------------------------------------------------------------------------------------


def test_expiry_forms(server, kt, mode):
    c = client(server, binary=mode)
    now = time.time()
    c.set("rel", 1, expire=100)
    c.set("abs", 1, expire=ExpireAt(4102444800))
    c.set("neg", 1, expire=-4102444800)
    c.set("dt", 1, expire=datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc))
    c.set("td", 1, expire=datetime.timedelta(minutes=2))
    c.set("none", 1)
    c.set("past", 1, expire=ExpireAt(1000))
    assert 98 <= kt.get_with_expiry("rel")[1] - now <= 102
    assert kt.get_with_expiry("abs")[1] == 4102444800
    assert kt.get_with_expiry("neg")[1] == 4102444800
    assert kt.get_with_expiry("dt")[1] == 4102444800
    assert 118 <= kt.get_with_expiry("td")[1] - now <= 122
    assert kt.get_with_expiry("none") == (1, None)
    assert c.get("past") is None
    assert c.get_with_expiry("abs") == (1, 4102444800)
    with pytest.raises(ArgumentError):
        c.set("bad", 1, expire="tomorrow")


def test_expire_keep(kt):
    kt.set("k", "a", expire=ExpireAt(4102444800))
    assert kt.set("k", "b", expire=KEEP) is True
    assert kt.get_with_expiry("k") == ("b", 4102444800)
    assert kt.append("k", "c", expire=KEEP) is True
    assert kt.get_with_expiry("k") == ("bc", 4102444800)
    assert kt.replace("k", "d", expire=KEEP) is True
    assert kt.get_with_expiry("k") == ("d", 4102444800)
    assert kt.cas("k", "d", "e", expire=KEEP) is True
    assert kt.get_with_expiry("k") == ("e", 4102444800)
    assert kt.replace("missing", 1, expire=KEEP) is False
    assert kt.set("new", 1, expire=KEEP) is True and kt.get_with_expiry("new") == (1, None)
    kt.set("plain", "x")
    assert kt.set("k", "f") is True and kt.get_with_expiry("k") == ("f", None)  # KT: a write clears it
    raw = client_raw(kt)
    raw.increment("n", 1, expire=ExpireAt(4102444800))
    assert raw.increment("n", 1, expire=KEEP) == 2
    assert raw.get_with_expiry("n")[1] == 4102444800
    assert raw.increment("n", 1) == 3 and raw.get_with_expiry("n")[1] is None
    assert raw.increment_double("d", 1, expire=ExpireAt(4102444800)) == 1
    assert raw.increment_double("d", 1, expire=KEEP) == 2 and raw.get_with_expiry("d")[1] == 4102444800


def test_touch(kt):
    assert kt.touch("missing", 60) is False
    kt.set("k", [1, 2])
    assert kt.touch("k", ExpireAt(4102444800)) is True
    assert kt.get_with_expiry("k") == ([1, 2], 4102444800)
    assert kt.touch("k", KEEP) is True and kt.get_with_expiry("k") == ([1, 2], 4102444800)
    assert kt.touch("k") is True and kt.get_with_expiry("k") == ([1, 2], None)


def test_keep_retries_while_the_value_changes(kt):
    kt.set("k", 0, expire=ExpireAt(4102444800))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            kt.set("k", i, expire=ExpireAt(4102444800))

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(20):
            try:
                kt.set("k", -1, expire=KEEP)
            except LogicalInconsistencyError:
                pass  # gave up after KEEP_RETRIES concurrent changes: acceptable under this load
    finally:
        stop.set()
        t.join(10)
    assert kt.get_with_expiry("k")[1] == 4102444800


# -- scripts -----------------------------------------------------------------------------------


def test_play_script(server, kt, mode):
    c = client(server, binary=mode)
    assert c.play_script("echo", {"a": b"1", "b": "ü"}) == {"a": b"1", "b": "ü".encode()}
    assert c.play_script("echo") == {}
    out = c.play_script("setget", {"key": b"k", "value": b"v"})
    assert out["value"] == b"v"
    with pytest.raises(ValueError):
        c.play_script("echo", {"a": 1})
    if mode:
        before = c.pool.stats()
        with pytest.raises(ScriptError) as info:  # 0xBF: no detail, but a complete answer
            c.play_script("nosuchproc")
        assert isinstance(info.value, ServerError) and info.value.code == 500
        assert c.play_script("echo", {"x": b"y"}) == {"x": b"y"}
        after = c.pool.stats()   # the connection was kept: nothing discarded, nothing new
        assert (after.discarded, after.created) == (before.discarded, before.created)
    else:
        with pytest.raises(NoImplementationError):
            c.play_script("nosuchproc")
        with pytest.raises(LogicalInconsistencyError):
            c.play_script("get", {"key": b"missing"})


# -- WAIT / SIGNAL -----------------------------------------------------------------------------


def test_wait_times_out_and_skips_the_operation(kt):
    view = kt.with_options(wait="never", wait_time=0.3)
    started = time.monotonic()
    with pytest.raises(SignalTimeoutError) as info:
        view.set("k", 1)
    assert info.value.code == 503 and time.monotonic() - started >= 0.25
    assert kt.get("k") is None
    with pytest.raises(SignalTimeoutError):
        kt.wait("never", 0.2)


def test_signal_wakes_waiters(kt):
    results = []

    def waiter():
        results.append(kt.with_options(wait="cond", wait_time=10).get("k"))

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    woken = 0
    view = kt.with_options(signal="cond", signal_broadcast=True)
    while woken < 2 and time.monotonic() < deadline:
        view.set("k", "v")
        woken += view.signaled or 0
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert woken == 2 and sorted(map(str, results)) == ["v", "v"]
    assert kt.signal("nobody") == 0
    with pytest.raises(ArgumentError):
        kt.with_options(wait_time=1)


def test_views_merge_their_options(kt):
    signalling = kt.with_options(signal="nobody").with_options(timeout=5)
    signalling.set("k", 1)
    assert signalling.signaled == 0              # the first view's SIGNAL is still carried
    waiting = kt.with_options(wait="never", wait_time=30).with_options(wait_time=0.2)   # the newer wins
    started = time.monotonic()
    with pytest.raises(SignalTimeoutError):
        waiting.with_options(signal="other").get("k")
    assert time.monotonic() - started < 10
    with pytest.raises(ArgumentError):
        kt.with_options(signal_broadcast=True)
    for bad in [{"timeout": 0}, {"timeout": -1}, {"timeout": "1"}, {"timeout": float("nan")},
                {"deadline": float("inf")}, {"deadline": True}]:
        with pytest.raises(ArgumentError):
            kt.with_options(**bad)


def test_with_protocol_is_a_view_over_the_same_pool(server, kt):
    fast = kt.with_protocol(binary=True)
    assert (fast.binary, fast.atomic, kt.binary, kt.atomic) == (True, False, False, True)
    assert fast.pool is kt.pool
    fast.set("k", "v")
    assert kt.get("k") == "v" and fast.get_bulk(["k"]) == {"k": "v"}
    with pytest.raises(NotImplementedError):
        fast.increment("n")
    back = fast.with_protocol(binary=False)
    assert back.increment("n") == 1 and back.atomic
    assert kt.pool.stats().created == 1          # one connection served all three
    signalling = kt.with_options(signal="nobody").with_protocol(binary=True)
    signalling.set("k", "w")                     # options need RPC: the view keeps them
    assert signalling.signaled == 0 and kt.get("k") == "w"


def test_closing_a_view_leaves_the_shared_pool_alone(server):
    c = client(server)
    c.set("k", 1)
    for view in (c.with_options(timeout=5), c.with_protocol(binary=True), c.with_options(signal="s")):
        with view:
            assert view.get("k") == 1
        assert view.close() is True
        stats = c.pool.stats()
        assert (stats.idle, stats.created, stats.discarded) == (1, 1, 0)
    c.close()
    assert c.pool.stats().idle == 0


def test_a_views_timeout_replaces_the_socket_timeout(kt_server_factory, mode):
    srv = kt_server_factory()
    c = KyotoTycoon(binary=mode).connect(srv.host, srv.port, 0.3)
    c.set("k", 1)
    with paused(srv):
        resume = threading.Timer(0.8, srv.resume)
        resume.start()
        try:
            assert c.with_options(timeout=10).get("k") == 1    # 0.8 s of silence, beyond the client's 0.3 s
        finally:
            resume.cancel()
    with c.pool.connection() as conn:
        assert conn.timeout == 0.3                       # restored for the client's own calls
    patient = KyotoTycoon(binary=mode).connect(srv.host, srv.port)  # 30 s
    patient.set("k", 2)
    with paused(srv):
        started = time.monotonic()
        with pytest.raises(SocketTimeoutError) as info:
            patient.with_options(timeout=0.2).get("k")
        assert info.value.request_sent is True and time.monotonic() - started < 10
    assert patient.get("k") == 2


def test_a_views_deadline_caps_every_wait(kt_server_factory, mode):
    srv = kt_server_factory()
    c = KyotoTycoon(binary=mode, pool_size=1).connect(srv.host, srv.port)  # 30 s socket, 10 s pool waits
    c.set("k", 1)
    with pytest.raises(DeadlineExceeded) as info:
        c.with_options(deadline=time.monotonic() - 1).get("k")
    assert info.value.request_sent is False
    deadlines: list[float | None] = [None, time.monotonic() - 1]   # a function: read as each call starts
    view = c.with_options(deadline=lambda: deadlines[0])
    assert view.get("k") == 1
    deadlines.pop(0)
    with pytest.raises(DeadlineExceeded):
        view.get("k")
    with paused(srv):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:           # a hung server: the receive is cut
            c.with_options(deadline=started + 0.3).get("k")
        assert info.value.request_sent is True and "while receiving" in str(info.value)
        assert time.monotonic() - started < 10
        short = KyotoTycoon(binary=mode).connect(srv.host, srv.port, 0.2)
        with pytest.raises(SocketTimeoutError) as own:          # a shorter limit of its own says so
            short.with_options(deadline=time.monotonic() + 30).get("k")
        assert not isinstance(own.value, DeadlineExceeded)
    held = c.pool.checkout()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:           # an exhausted pool: the wait is cut
            c.with_options(deadline=started + 0.3).get("k")
        assert info.value.request_sent is False and isinstance(info.value.__cause__, PoolTimeoutError)
        assert time.monotonic() - started < 5
    finally:
        c.pool.checkin(held)
    assert c.with_options(deadline=time.monotonic() + 10).get("k") == 1
    with c.pool.connection() as conn:
        assert conn.timeout == 30


def test_wait_longer_than_the_socket_timeout(server, kt):
    c = KyotoTycoon().connect(server.host, server.port, 0.3)
    t = threading.Timer(0.6, lambda: kt.signal("late"))
    t.start()
    try:
        c.wait("late", 5)  # blocks 0.6 s, beyond the 0.3 s socket timeout
    finally:
        t.cancel()


# -- transport errors --------------------------------------------------------------------------


def test_connection_refused():
    c = KyotoTycoon().connect("127.0.0.1", free_port(), 1)
    with pytest.raises(KTConnectionError) as info:
        c.get("k")
    assert info.value.request_sent is False
    assert isinstance(info.value, KyotoTycoonException)


def test_socket_timeout_discards_the_connection(kt_server_factory):
    srv = kt_server_factory()
    c = KyotoTycoon().connect(srv.host, srv.port, 0.3)
    c.set("k", 1)
    with paused(srv):
        with pytest.raises(SocketTimeoutError) as info:
            c.get("k")
        assert info.value.request_sent is True
    assert c.get("k") == 1
    stats = c.pool.stats()
    assert stats.discarded == 1 and stats.in_use == 0


def test_server_errors_keep_the_connection(kt):
    kt.add("dup", 1)
    for _ in range(5):
        with pytest.raises(LogicalInconsistencyError):
            kt.add("dup", 1)
    assert kt.pool.stats().discarded == 0 and kt.pool.stats().created == 1


# -- concurrency -------------------------------------------------------------------------------


def test_shared_between_threads(server, kt, mode):
    c = client(server, binary=mode, pool_size=4)

    def worker(n):
        for i in range(50):
            key = f"t{n}-{i}"
            c.set(key, (n, i))
            assert c.get(key) == (n, i)
            assert c.get_bulk([key, "missing"]) == {key: (n, i)}

    run_threads(worker, 8)
    assert kt.count() == 400 and c.pool.stats().created <= 4


# -- memcached packers against KT's memcached plug-in ------------------------------------------


def test_memcache_packers_interoperate_with_the_plugin(kt_server_factory):
    from golden_replay import libexec_dir  # the plug-in path rules the golden replay uses

    from ktcluster.testing import using_real_server
    plugin = os.path.join(libexec_dir(), "ktplugservmemc.so") if using_real_server() else "ktplugservmemc.so"
    if using_real_server() and not os.path.exists(plugin):
        pytest.skip(f"the real server's memcached plug-in is not at {plugin} (set KT_LIBEXEC)")
    memc_port = free_port()
    srv = kt_server_factory(":", args=["-plsv", plugin, "-plex", f"port={memc_port}#opts=f"])
    import socket
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((srv.host, memc_port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        sock.sendall(b"set m 6 0 5\r\nhello\r\n")
        assert sock.recv(100) == b"STORED\r\n"
        simple = KyotoTycoon(pack_type=KT_PACKER_CUSTOM, custom_packer=SimpleMemcachePacker()).connect(
            srv.host, srv.port)
        assert simple.get("m") == (b"hello", 6)
        simple.set("n", (b"world", 42))
        sock.sendall(b"get n\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            reply += sock.recv(100)
        assert reply == b"VALUE n 42 5\r\nworld\r\nEND\r\n"
        gz = KyotoTycoon(pack_type=KT_PACKER_CUSTOM,
                         custom_packer=MemcachePacker(gzip_enabled=True, gzip_threshold=10)).connect(
            srv.host, srv.port)
        gz.set("z", b"x" * 100)
        assert gz.get("z") == b"x" * 100 and gz.get("m") == b"hello"
        assert len(simple.get("z")[0]) < 100 and simple.get("z")[1] == 1


def test_packers_are_byte_compatible_with_ng():
    import pickle

    from ktcluster.packers import make_packer
    assert make_packer(KT_PACKER_PICKLE).pack({"a": 1}) == pickle.dumps({"a": 1}, 2)
    assert make_packer(KT_PACKER_JSON).pack({"a": [1, "ü"]}) == b'{"a":[1,"\\u00fc"]}'
    assert make_packer(KT_PACKER_STRING).pack("ü") == "ü".encode()
    assert SimpleMemcachePacker().pack((b"v", 1)) == b"v\x00\x00\x00\x01"
    assert SimpleMemcachePacker().unpack(b"v\x00\x00\x00\x01") == (b"v", 1)
    with pytest.raises(ValueError):
        SimpleMemcachePacker().pack((b"v", 1 << 32))
    with pytest.raises(ValueError):
        MemcachePacker(gzip_flag=33)
    assert MemcachePacker().pack(b"v") == b"v\x00\x00\x00\x00"
    assert MemcachePacker().unpack(b"v\x00\x00\x00\x01") == b"v"
    assert struct.unpack(">I", MemcachePacker(True, 1, 3).pack(b"abc")[-4:])[0] == 4


GEVENT_CLIENT = r"""
from gevent import monkey; monkey.patch_all()
import sys, gevent
from ktcluster import KyotoTycoon, KT_PACKER_BYTES
from ktcluster.errors import SignalTimeoutError
host, port = sys.argv[1], int(sys.argv[2])
kt = KyotoTycoon(pack_type=KT_PACKER_BYTES, pool_size=4).connect(host, port)
kb = KyotoTycoon(binary=True, pack_type=KT_PACKER_BYTES, pool_size=4).connect(host, port)
kt.clear(); kt.clear(1)
def worker(n):
    for i in range(25):
        key = b"g%d-%d" % (n, i)
        (kb if i % 2 else kt).set(key, key)
        assert kt.get(key) == key and kb.get(key) == key
        assert kb.get_bulk([key, b"nope"]) == {key: key}
def walker():
    kt.set_bulk({b"w%03d" % i: b"" for i in range(100)}, db=1)
    with kt.cursor() as cur:
        cur.jump(db=1)
        seen = 0
        while True:
            seen += 1
            gevent.sleep(0)
            if not cur.step():
                break
    assert seen == 100, seen
# a greenlet waiting on a condition does not block the others
waiter = gevent.spawn(lambda: kt.with_options(wait="go", wait_time=10).get(b"g0-0"))
jobs = [gevent.spawn(worker, n) for n in range(8)] + [gevent.spawn(walker)]
gevent.joinall(jobs, raise_error=True)
while not waiter.ready():
    kt.signal("go")
    gevent.sleep(0.01)
assert waiter.get() == b"g0-0"
# gevent.Timeout midway: the connection is discarded, the client keeps working
try:
    with gevent.Timeout(0.2):
        kt.wait("never", 5)
except gevent.Timeout:
    pass
assert kt.get(b"g1-1") == b"g1-1"
assert kt.pool.stats().discarded == 1, kt.pool.stats()
print("OK")
"""


@pytest.mark.blocking_only
def test_client_under_gevent(server, kt):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", GEVENT_CLIENT, server.host, str(server.port)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.strip() == b"OK"
