"""The script library (ktcluster/scripts/*.lua) through KyotoTycoon.play_script, over HTTP
and the binary protocol, against the server under test (embedded or $KT_SERVER_BIN)."""

from __future__ import annotations

import threading
import time

import pytest

from ktcluster import KyotoTycoon
from ktcluster.errors import InvalidArgumentError, LogicalInconsistencyError, ScriptError
from ktcluster.packers import KT_PACKER_BYTES
from ktcluster.scripts import NAMES, bundle, path
from ktcluster.testing import KTServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    script = tmp_path_factory.mktemp("lua") / "library.lua"
    script.write_text(bundle())
    # "+" first: the priority queue needs an ordered database
    with KTServer("+", args=["-scr", str(script), "-th", "8"]) as srv:
        yield srv


@pytest.fixture(params=[False, True], ids=["http", "binary"])
def kt(request, server):
    with KyotoTycoon(binary=request.param).connect(server.host, server.port, timeout=10) as client:
        yield client


@pytest.fixture
def plain(server):
    """An HTTP client storing raw bytes (to look at the records the scripts write)."""
    with KyotoTycoon(pack_type=KT_PACKER_BYTES).connect(server.host, server.port, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def empty_database(server):
    KyotoTycoon().connect(server.host, server.port).clear()


def failed(kt: KyotoTycoon) -> type[Exception]:
    """What a failing procedure raises: its HTTP status' error, or 0xBF over binary."""
    return ScriptError if kt.binary else LogicalInconsistencyError


def test_bundle_and_paths():
    text = bundle("counters", "ttl")
    assert "function incr" in text and "function touch" in text and "function qpush" not in text
    assert all(path(name).endswith(f"{name}.lua") for name in NAMES)
    with pytest.raises(ValueError):
        path("nosuch")


# -- counters.lua ---------------------------------------------------------------------------------


def test_counters(kt, plain):
    assert kt.play_script("incr", {"key": "hits"}) == {"num": b"1"}
    assert kt.play_script("incr", {"key": "hits", "num": "41"}) == {"num": b"42"}
    assert kt.play_script("decr", {"key": "hits", "num": "50"}) == {"num": b"-8"}
    assert plain.get("hits") == b"-8"  # a decimal string, readable with get
    plain.set("name", b"abc")
    with pytest.raises(failed(kt)):
        kt.play_script("incr", {"key": "name"})
    with pytest.raises(ScriptError if kt.binary else InvalidArgumentError):
        kt.play_script("incr", {"key": "hits", "num": "1.5"})


def test_counter_expiry_is_set_then_kept(kt):
    kt.play_script("incr", {"key": "daily", "xt": "3600"})
    report = kt.play_script("ttl", {"key": "daily"})
    assert 3590 <= int(report["ttl"]) <= 3600
    kt.play_script("incr", {"key": "daily"})
    assert int(kt.play_script("ttl", {"key": "daily"})["xt"]) == int(report["xt"])


def test_concurrent_increments_are_not_lost(server):
    def work():
        client = KyotoTycoon().connect(server.host, server.port, timeout=10)
        for _ in range(25):
            client.play_script("incr", {"key": "shared"})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = KyotoTycoon().connect(server.host, server.port)
    assert client.play_script("incr", {"key": "shared", "num": "0"}) == {"num": b"100"}


def test_rate_limiter(kt):
    answers = [kt.play_script("ratelimit", {"key": "api:alice", "limit": "3", "window": "60"}) for _ in range(5)]
    assert [a["allowed"] for a in answers] == [b"true"] * 3 + [b"false"] * 2
    assert [int(a["count"]) for a in answers] == [1, 2, 3, 4, 5]
    assert all(58 <= int(a["reset"]) <= 60 for a in answers)
    assert kt.play_script("ratelimit", {"key": "api:bob", "limit": "3", "window": "60"})["allowed"] == b"true"


# -- queue.lua ------------------------------------------------------------------------------------


def test_fifo_queue(kt):
    assert kt.play_script("qpop", {"queue": "jobs"}) == {}
    for n, job in enumerate(["a", "b", "c"], 1):
        assert kt.play_script("qpush", {"queue": "jobs", "value": job}) == {"id": str(n).encode()}
    assert kt.play_script("qlen", {"queue": "jobs"}) == {"length": b"3"}
    assert kt.play_script("qpeek", {"queue": "jobs"}) == {"id": b"1", "value": b"a"}
    assert [kt.play_script("qpop", {"queue": "jobs"}).get("value") for _ in range(4)] == [b"a", b"b", b"c", None]
    assert kt.play_script("qlen", {"queue": "jobs"}) == {"length": b"0"}
    kt.play_script("qpush", {"queue": "jobs", "value": "\x00binary\xff"})
    assert kt.play_script("qpop", {"queue": "jobs"}) == {"id": b"4", "value": "\x00binary\xff".encode()}


def test_queue_items_are_popped_exactly_once_under_concurrency(server):
    pushed = [f"job-{n}" for n in range(60)]
    popped: list[bytes] = []
    lock = threading.Lock()

    def producer(items):
        client = KyotoTycoon(binary=True).connect(server.host, server.port, timeout=10)
        for item in items:
            client.play_script("qpush", {"queue": "work", "value": item})

    def consumer():
        client = KyotoTycoon().connect(server.host, server.port, timeout=10)
        idle_until = time.monotonic() + 2
        while time.monotonic() < idle_until:
            value = client.play_script("qpop", {"queue": "work"}).get("value")
            if value is None:
                time.sleep(0.01)
                continue
            with lock:
                popped.append(value)
                if len(popped) == len(pushed):
                    return
            idle_until = time.monotonic() + 2

    threads = [threading.Thread(target=producer, args=(pushed[i::3],)) for i in range(3)]
    threads += [threading.Thread(target=consumer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(popped) == sorted(item.encode() for item in pushed)


def test_priority_queue(kt):
    for priority, value in [(5, "low"), (1, "urgent"), (5, "low-2"), (3, "mid")]:
        kt.play_script("pqpush", {"queue": "tasks", "priority": str(priority), "value": value})
    got = [kt.play_script("pqpop", {"queue": "tasks"}) for _ in range(5)]
    assert got == [{"priority": b"1", "value": b"urgent"}, {"priority": b"3", "value": b"mid"},
                   {"priority": b"5", "value": b"low"}, {"priority": b"5", "value": b"low-2"}, {}]
    with pytest.raises(ScriptError if kt.binary else InvalidArgumentError):
        kt.play_script("pqpush", {"queue": "tasks", "priority": "-1", "value": "x"})


# -- hash.lua -------------------------------------------------------------------------------------


def test_hash_of_fields(kt):
    assert kt.play_script("hset", {"key": "user:1", "name": "Ann", "lang": "lua"}) == {"added": b"2"}
    assert kt.play_script("hset", {"key": "user:1", "lang": "c++", "city": "Oslo"}) == {"added": b"1"}
    assert kt.play_script("hget", {"key": "user:1", "field": "lang"}) == {"value": b"c++"}
    assert kt.play_script("hget", {"key": "user:1", "field": "zip"}) == {}
    assert kt.play_script("hgetall", {"key": "user:1"}) == {"name": b"Ann", "lang": b"c++", "city": b"Oslo"}
    assert kt.play_script("hincr", {"key": "user:1", "field": "visits", "num": "2"}) == {"num": b"2"}
    assert kt.play_script("hincr", {"key": "user:1", "field": "visits"}) == {"num": b"3"}
    with pytest.raises(failed(kt)):
        kt.play_script("hincr", {"key": "user:1", "field": "name"})
    assert kt.play_script("hlen", {"key": "user:1"}) == {"count": b"4"}
    assert kt.play_script("hdel", {"key": "user:1", "name": "", "zip": ""}) == {"removed": b"1"}
    assert kt.play_script("hdel", {"key": "user:1", "lang": "", "city": "", "visits": ""}) == {"removed": b"3"}
    assert kt.play_script("hlen", {"key": "user:1"}) == {"count": b"0"}
    assert kt.play_script("hgetall", {"key": "user:1"}) == {}


# -- ttl.lua --------------------------------------------------------------------------------------


def test_ttl_touch_persist_getex(kt, plain):
    plain.set("session", b"token", 100)
    assert 98 <= int(kt.play_script("ttl", {"key": "session"})["ttl"]) <= 100
    kt.play_script("touch", {"key": "session", "xt": "5000"})
    assert 4998 <= int(kt.play_script("ttl", {"key": "session"})["ttl"]) <= 5000
    assert kt.play_script("persist", {"key": "session"}) == {}
    assert kt.play_script("ttl", {"key": "session"}) == {"ttl": b"-1", "xt": b"1099511627775"}
    assert kt.play_script("getex", {"key": "session", "xt": "60"}) == {"value": b"token"}
    assert 58 <= int(kt.play_script("ttl", {"key": "session"})["ttl"]) <= 60
    absolute = int(time.time()) + 7200
    assert kt.play_script("touch", {"key": "session", "xt": str(-absolute)}) == {"xt": str(absolute).encode()}
    assert plain.get("session") == b"token"
    for name in ("ttl", "touch", "persist", "getex"):
        with pytest.raises(failed(kt)):
            kt.play_script(name, {"key": "nosuch", "xt": "10"})
