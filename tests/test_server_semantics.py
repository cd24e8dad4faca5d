"""Record semantics over the wire that the golden transcripts leave open: expiry and the
lazy garbage collector, cursors under concurrent removal, tree cursors in both
directions, increment formats.  Runs against the embedded server or $KT_SERVER_BIN."""

from __future__ import annotations

import struct
import threading
import time

from server_wire import Wire


def test_expired_records_stay_counted_and_matched_until_collected(kt_server_factory):
    srv = kt_server_factory(":")
    with Wire(srv.host, srv.port) as wire:
        answers = wire.pipelined([
            ("set", [(b"key", b"old"), (b"value", b"v"), (b"xt", b"-1")]),
            ("get", [(b"key", b"old")]),
            ("status", []),
            ("match_prefix", [(b"prefix", b"ol")]),
            ("vacuum", []),
            ("status", []),
            ("match_prefix", [(b"prefix", b"ol")]),
        ])
    statuses = [status for status, _ in answers]
    assert statuses == [200, 450, 200, 200, 200, 200, 200]
    assert answers[2][1][b"count"] == b"1"
    assert answers[3][1] == {b"_old": b"0", b"num": b"1"}
    assert answers[5][1][b"count"] == b"0"
    assert answers[6][1] == {b"num": b"0"}


def test_the_garbage_collector_runs_as_writes_go_by(kt_server_factory):
    srv = kt_server_factory("+")
    with Wire(srv.host, srv.port) as wire:
        wire.set(b"a-expired", b"v", xt=-1)
        for i in range(24):
            assert wire.set(b"k%02d" % i, b"v") == 200
        status, out = wire.rpc("status")
        assert out[b"count"] == b"24"


def test_expiry_forms(kt_server_factory):
    srv = kt_server_factory(":")
    with Wire(srv.host, srv.port) as wire:
        now = int(time.time())
        wire.set(b"rel", b"v", xt=3600)
        status, out = wire.rpc("check", key=b"rel")
        assert status == 200 and now + 3600 <= int(out[b"xt"]) <= now + 3602
        wire.set(b"abs", b"v", xt=-4102444800)
        assert wire.rpc("get", key=b"abs")[1] == {b"value": b"v", b"xt": b"4102444800"}
        wire.rpc("append", key=b"abs", value=b"w")  # a write without xt makes it permanent
        assert wire.rpc("get", key=b"abs")[1] == {b"value": b"vw"}
        wire.set(b"gone", b"v", xt=-1)
        assert wire.rpc("add", key=b"gone", value=b"again")[0] == 200  # expired = absent
        assert wire.rpc("replace", key=b"never", value=b"x")[0] == 450


def test_cursor_moves_on_when_another_connection_removes_its_record(kt_server_factory):
    for spec in ("+", "%", ":"):
        srv = kt_server_factory(spec)
        with Wire(srv.host, srv.port) as c0, Wire(srv.host, srv.port) as c1:
            c0.rpc("set_bulk", [(b"_a", b"1"), (b"_b", b"2"), (b"_c", b"3")])
            order = [k[1:] for k, _ in sorted(c0.rpc("match_prefix", prefix=b"")[1].items(),
                                              key=lambda kv: kv[1]) if k != b"num"]
            assert c0.rpc("cur_jump", [(b"key", order[1])], CUR=1)[0] == 200
            assert c1.rpc("remove", [(b"key", order[1])])[0] == 200
            status, out = c0.rpc("cur_get_key", CUR=1)
            assert status == 200 and out[b"key"] == order[2]


def test_tree_cursor_removal_in_backward_mode(kt_server_factory):
    # GrassDB (a B+ tree) moves a backward cursor to the previous record after a removal,
    # the prototype tree ('+', a std::map iterator) always to the next one
    expected = {"%": b"b", "+": b"d"}
    for spec, after in expected.items():
        srv = kt_server_factory(spec)
        with Wire(srv.host, srv.port) as wire:
            wire.rpc("set_bulk", [(b"_a", b"1"), (b"_b", b"2"), (b"_c", b"3"), (b"_d", b"4")])
            assert wire.rpc("cur_jump_back", [(b"key", b"c")], CUR=1)[0] == 200
            assert wire.rpc("cur_remove", CUR=1)[0] == 200
            assert wire.rpc("cur_get_key", CUR=1)[1][b"key"] == after


def test_tree_cursor_skips_expired_records_both_ways(kt_server_factory):
    srv = kt_server_factory("%")
    with Wire(srv.host, srv.port) as wire:
        wire.rpc("set_bulk", [(b"_a", b"1"), (b"_c", b"3")])
        wire.set(b"b", b"2", xt=-1)
        assert wire.rpc("cur_jump", CUR=1)[0] == 200
        keys = []
        while True:
            status, out = wire.rpc("cur_get_key", CUR=1, step=b"")
            if status != 200:
                break
            keys.append(out[b"key"])
        assert keys == [b"a", b"c"]
        assert wire.rpc("cur_jump_back", CUR=2)[0] == 200
        assert wire.rpc("cur_step_back", CUR=2)[0] == 200
        assert wire.rpc("cur_get_key", CUR=2)[1][b"key"] == b"a"


def test_increment_and_double_formats(kt_server_factory):
    srv = kt_server_factory(":")
    with Wire(srv.host, srv.port) as wire:
        assert wire.rpc("increment", key=b"n", num=7)[1] == {b"num": b"7"}
        assert wire.get(b"n") == b"\0" * 7 + b"\x07"
        assert wire.rpc("increment", key=b"n", num=0, orig=b"try")[1] == {b"num": b"7"}
        assert wire.rpc("increment_double", key=b"d", num=b"0.1")[1] == {b"num": b"0.100000"}
        assert wire.rpc("increment_double", key=b"d", num=b"0.2")[1] == {b"num": b"0.300000"}
        assert wire.get(b"d") == struct.pack(">qq", 0, 300000000000000)
        wire.set(b"t", b"text")
        assert wire.rpc("increment", key=b"t", num=1)[0] == 450
        assert wire.rpc("increment_double", key=b"t", num=1)[0] == 450


def test_database_selection_by_name_and_index(kt_server_factory):
    srv = kt_server_factory(":", "+", "casket.kch")
    with Wire(srv.host, srv.port) as wire:
        assert wire.rpc("set", key=b"k", value=b"v", DB=b"casket.kch")[0] == 200
        assert wire.rpc("get", key=b"k", DB=2)[1] == {b"value": b"v"}
        assert wire.rpc("get", key=b"k", DB=b"+")[0] == 450
        assert wire.rpc("get", key=b"k", DB=b"casket")[0] == 400
        assert wire.binary_get([(2, b"k"), (0, b"k"), (9, b"k")]) == [(2, b"k", b"v", (1 << 40) - 1)]


def test_bulk_operations_count_records_and_misses_in_report(kt_server_factory):
    """report's cnt_* counters: a bulk call counts every record it was given, and the
    ones it did not find (remove, get) under the misses."""
    srv = kt_server_factory(":")
    with Wire(srv.host, srv.port) as wire:
        assert wire.rpc("set_bulk", [(b"_a", b"1"), (b"_b", b"2"), (b"_c", b"3")])[0] == 200
        assert wire.rpc("remove_bulk", [(b"_a", b""), (b"_x", b"")])[1][b"num"] == b"1"
        assert wire.rpc("get_bulk", [(b"_b", b""), (b"_y", b""), (b"_z", b"")])[1][b"num"] == b"1"
        report = wire.rpc("report")[1]
    counters = {name: report[name.encode()] for name in (
        "cnt_set", "cnt_set_misses", "cnt_remove", "cnt_remove_misses", "cnt_get", "cnt_get_misses")}
    assert counters == {"cnt_set": b"3", "cnt_set_misses": b"0", "cnt_remove": b"2", "cnt_remove_misses": b"1",
                        "cnt_get": b"3", "cnt_get_misses": b"2"}


def test_report_counters_never_go_back_while_connections_come_and_go(kt_server_factory):
    """A connection's cnt_* counts must be in every report, before and after it closes
    (ktserver keeps them per worker thread)."""
    srv = kt_server_factory(":")
    done = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not done.is_set():
                with Wire(srv.host, srv.port) as conn:
                    conn.get(b"k")
        except BaseException as exc:
            errors.append(exc)

    churners = [threading.Thread(target=churn) for _ in range(4)]
    for thread in churners:
        thread.start()
    seen = []
    try:
        with Wire(srv.host, srv.port) as reporter:
            for _ in range(1500):
                seen.append(int(reporter.rpc("report")[1][b"cnt_get"]))
    finally:
        done.set()
        for thread in churners:
            thread.join(30)
    assert not errors
    assert seen[-1] > 0
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False)), "a report lost a closing connection's counts"
