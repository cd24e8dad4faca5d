"""Unit tests of the embedded server's record store (ktcluster.server.db.storage): the
TimedDB semantics that the golden transcripts do not pin down on their own."""

from __future__ import annotations

import os
import time

import pytest

from ktcluster.protocol.replication import OP_CLEAR, OP_REMOVE, OP_SET, decode_log_entry
from ktcluster.server.db.sortedlist import SortedList
from ktcluster.server.db.storage import (
    DUPREC,
    LOGIC,
    NOIMPL,
    NOP,
    NOPERM,
    NOREC,
    REMOVE,
    XTMAX,
    Database,
    DBError,
    DBSpec,
    StorageError,
)

KEYS = [b"b", b"a", b"c", b"ab", b"aa", b"ba", b"abc", b"10", b"9", b"A"]
#: the orders a real ktserver produced for KEYS inserted in this order (tests/golden/db_types.json)
RECORDED_ORDER = {
    "-": [b"10", b"9", b"b", b"abc", b"c", b"ab", b"aa", b"a", b"A", b"ba"],
    ":": [b"abc", b"a", b"9", b"aa", b"ab", b"A", b"10", b"ba", b"b", b"c"],
    "*": [b"c", b"abc", b"b", b"aa", b"ba", b"10", b"A", b"9", b"ab", b"a"],
    "casket.kch": KEYS,
    "+": sorted(KEYS), "%": sorted(KEYS), "casket.kct": sorted(KEYS), "casket.kcf": sorted(KEYS),
}


class Sink:
    """Collects update-log entries."""

    def __init__(self) -> None:
        self.entries: list = []

    def write(self, payload: bytes) -> int:
        self.entries.append(decode_log_entry(payload))
        return len(self.entries)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def walk(db: Database) -> list[bytes]:
    cur = db.cursor()
    out = []
    try:
        cur.jump()
        while True:
            out.append(cur.get_key(step=True))
    except DBError as exc:
        assert exc.code == NOREC
    return out


@pytest.mark.parametrize("spec", sorted(RECORDED_ORDER))
def test_iteration_order_matches_kyoto_cabinet(spec):
    db = Database(spec)
    for key in KEYS:
        db.set(key, b"v-" + key)
    assert walk(db) == RECORDED_ORDER[spec]
    assert db.match_prefix(b"") == RECORDED_ORDER[spec]
    db.close()


@pytest.mark.parametrize("spec, expected", [
    # orders produced by a real ktserver for these keys
    ("%#rcomp=dec", [b"-3.5", b"-3", b"abc", b"0.1", b"2", b"2.25", b"2.5", b" 7", b"9", b"10"]),
    ("t.kct#rcomp=decdesc", [b"10", b"9", b" 7", b"2.5", b"2.25", b"2", b"0.1", b"abc", b"-3", b"-3.5"]),
    ("%#rcomp=lexdesc", [b"abc", b"9", b"2.5", b"2.25", b"2", b"10", b"0.1", b"-3.5", b"-3", b" 7"]),
])
def test_tree_comparators(spec, expected):
    db = Database(spec)
    for key in (b"10", b"9", b"-3", b"2.5", b"2.25", b"abc", b"2", b"-3.5", b" 7", b"0.1"):
        db.set(key, b"v")
    assert walk(db) == expected
    assert db.match_prefix(b"2") == [k for k in expected if k.startswith(b"2")]
    cur = db.cursor()
    cur.jump(expected[3])
    assert cur.get_key() == expected[3]
    db.close()


def test_cache_db_moves_accessed_records_to_the_end_of_their_slot():
    db = Database("*")
    for key in KEYS:
        db.set(key, b"v")
    assert walk(db) == RECORDED_ORDER["*"]  # slot 9 holds aa, ba, 10, A in insertion order
    db.get(b"aa")
    db.set(b"ba", b"w")
    assert walk(db) == [b"c", b"abc", b"b", b"10", b"A", b"aa", b"ba", b"9", b"ab", b"a"]


def test_expiry_rules():
    db = Database(":")
    now = int(time.time())
    db.set(b"rel", b"v", 3600)
    assert now + 3600 <= db.get(b"rel")[1] <= now + 3601
    db.set(b"abs", b"v", -4102444800)
    assert db.get(b"abs") == (b"v", 4102444800)
    db.set(b"past", b"v", -1)
    assert db.get(b"past") is None and db.check(b"past") is None
    assert db.count() == 3  # expired but not collected yet
    db.set(b"huge", b"v", 99999999999999)
    assert db.get(b"huge") == (b"v", XTMAX)
    db.replace(b"abs", b"w")  # a write without xt clears the expiry
    assert db.get(b"abs") == (b"w", XTMAX)
    db.add(b"past", b"again")  # expired counts as absent
    assert db.get(b"past") == (b"again", XTMAX)
    with pytest.raises(DBError) as err:
        db.replace(b"gone", b"x")
    assert err.value.code == NOREC and str(err.value) == "DB: 7: no record: no record"


def test_expired_records_are_matched_until_vacuumed():
    db = Database("+")
    db.set(b"k1", b"v", -1)
    db.set(b"k2", b"v")
    assert db.match_prefix(b"k") == [b"k1", b"k2"]
    assert walk(db) == [b"k2"]  # cursors skip expired records
    db.vacuum()
    assert db.match_prefix(b"k") == [b"k2"] and db.count() == 1


def test_gc_runs_every_eight_writes():
    db = Database(":")
    db.set(b"dead", b"v", -1)
    for i in range(6):
        db.set(b"k%d" % i, b"v")
    assert db.count() == 7
    db.set(b"k6", b"v")  # 8th write: the GC cursor positions itself
    for i in range(8):   # next 8 writes: it visits 8 records, the expired one among them
        db.set(b"m%d" % i, b"v")
    assert db.get(b"dead") is None
    assert b"dead" not in db.match_prefix(b"")


def test_ktcapcnt_is_enforced_lazily():
    db = Database(":#ktcapcnt=3")
    db.set_bulk([(b"_%d" % i, b"v") for i in range(6)])
    for i in range(6):
        db.set(b"x%d" % i, b"v")
    assert db.count() == 7  # what the real server reports (db_types capacity-limit-ktcapcnt)
    assert db.status()["ktcapcnt"] == "3"


def test_cache_capcnt_evicts_least_recently_used():
    db = Database("*#capcnt=16")
    for i in range(200):
        db.set(b"k%03d" % i, b"v")
    assert db.count() <= 16 + 16
    assert db.get(b"k199") == (b"v", XTMAX)


def test_ktopts_p_ignores_xt_and_logs_bare_values():
    sink = Sink()
    db = Database("+#ktopts=p", sink=sink, sid=3)
    db.set(b"k", b"v", -1)
    assert db.get(b"k") == (b"v", 2 ** 63 - 1)
    assert db.status()["ktopts"] == "2"
    assert sink.entries[-1].value == b"v" and sink.entries[-1].sid == 3


def test_update_log_entries():
    sink = Sink()
    db = Database(":", index=2, sink=sink, sid=7)
    db.set(b"a", b"A")
    with pytest.raises(DBError) as err:
        db.add(b"a", b"dup")
    assert err.value.code == DUPREC
    db.append(b"a", b"+")
    with pytest.raises(DBError):
        db.remove(b"missing")  # still logged
    db.cas(b"a", b"A+", None)
    db.clear()
    ops = [(e.op, e.key, e.value) for e in sink.entries]
    assert ops == [
        (OP_SET, b"a", b"\xff" * 5 + b"A"),
        (OP_SET, b"a", b"\xff" * 5 + b"A+"),
        (OP_REMOVE, b"missing", b""),
        (OP_REMOVE, b"a", b""),
        (OP_CLEAR, b"", b""),
    ]
    assert {(e.sid, e.dbid) for e in sink.entries} == {(7, 2)}


def test_increment_formats():
    db = Database(":")
    assert db.increment(b"n", 5) == 5
    assert db.increment(b"n", -7) == -2
    assert db.get(b"n")[0] == b"\xff" * 7 + b"\xfe"
    db.set(b"t", b"12345678")
    assert db.increment(b"t", 1) == 3544952156018063161
    with pytest.raises(DBError) as err:
        db.increment(b"absent", 1, orig=-(2 ** 63))
    assert err.value.code == LOGIC
    assert db.increment(b"n", 9, orig=2 ** 63 - 1) == 9
    assert db.increment_double(b"d", 1.5) == 1.5
    assert db.increment_double(b"d", -0.25) == 1.25
    assert db.get(b"d")[0] == bytes.fromhex("0000000000000001" "0000e35fa931a000")
    assert db.increment_double(b"e", 2, 10.5) == 12.5


def test_cas():
    db = Database(":")
    db.cas(b"k", None, b"new")
    with pytest.raises(DBError) as err:
        db.cas(b"k", b"other", b"x")
    assert str(err.value) == "DB: 8: logical inconsistency: status conflict"
    db.cas(b"k", b"new", None)
    assert db.get(b"k") is None


def test_accept_is_the_generic_read_modify_write():
    db = Database(":")
    db.set(b"k", b"1", -4102444800)

    def full(key, value, xt):
        return (str(int(value) + 1).encode(), -xt)  # keep the expiry

    assert db.accept(b"k", full, lambda key: NOP) == (b"2", -4102444800)
    assert db.get(b"k") == (b"2", 4102444800)
    assert db.accept(b"missing", full, lambda key: NOP) is NOP
    db.accept(b"k", lambda k, v, x: REMOVE, lambda k: NOP)
    assert db.get(b"k") is None


def test_read_only_database(tmp_path):
    db = Database("ro.kch")
    db.set(b"a", b"1")
    db.close()
    ro = Database("ro.kch", writable=False)
    assert ro.get(b"a") == (b"1", XTMAX)
    for write in (lambda: ro.set(b"b", b"2"), lambda: ro.remove(b"a"), lambda: ro.clear()):
        with pytest.raises(DBError) as err:
            write()
        assert err.value.code == NOPERM
    ro.close()
    with pytest.raises(StorageError):
        Database("missing.kch", writable=False)


@pytest.mark.parametrize("spec", ["p.kch", "p.kct", "p.kcd", "p.kcf"])
def test_file_databases_persist(spec):
    db = Database(spec)
    db.set(b"a", b"1")
    db.set(b"b", b"2", -4102444800)
    db.set(b"c", b"3")
    db.remove(b"c")
    db.close()
    again = Database(spec)
    assert again.get(b"a") == (b"1", XTMAX)
    assert again.get(b"b") == (b"2", 4102444800)
    assert again.get(b"c") is None and again.count() == 2
    again.close()


def test_journal_survives_a_torn_last_record():
    db = Database("torn.kch")
    db.set(b"a", b"1")
    db.set(b"b", b"2")
    db.close()
    with open("torn.kch", "ab") as f:
        f.write(b"\x00\x00\x01\x00partial")
    db = Database("torn.kch")
    assert db.count() == 2
    db.set(b"c", b"3")
    db.close()
    assert Database("torn.kch").count() == 3


def test_journal_is_compacted():
    db = Database("big.kch")
    for _ in range(3000):
        db.set(b"k", b"x" * 1000)
    assert os.path.getsize("big.kch") < 2 << 20
    db.close()
    assert Database("big.kch").get(b"k") == (b"x" * 1000, XTMAX)


def test_snapshots_of_memory_databases():
    db = Database("+")
    db.set(b"a", b"1", -4102444800)
    db.set(b"b", b"2")
    db.dump_snapshot("00000000.ktss")
    again = Database("+")
    again.load_snapshot("00000000.ktss")
    assert walk(again) == [b"a", b"b"]
    assert again.get(b"a") == (b"1", 4102444800)
    with pytest.raises(StorageError):
        again.load_snapshot("missing.ktss")


def test_ktopts_is_kept_in_the_file():
    Database("o.kct#ktopts=p").close()
    assert Database("o.kct").persistent


def test_tree_cursor_both_ways():
    db = Database("+")
    for key in (b"b", b"a", b"d", b"c"):
        db.set(key, key.upper())
    cur = db.cursor()
    cur.jump(b"bb")
    assert cur.get(step=True)[:2] == (b"c", b"C")
    assert cur.get_key() == b"d"
    cur.jump_back()
    cur.step_back()
    assert cur.get_key() == b"c"
    cur.jump_back(b"bb")
    assert cur.get_key() == b"b"
    with pytest.raises(DBError):
        cur.jump_back(b"0")


def test_cursor_moves_on_when_its_record_is_removed():
    for spec in ("+", ":", "%"):
        db = Database(spec)
        for key in (b"a", b"b", b"c"):
            db.set(key, b"v")
        order = walk(db)
        cur = db.cursor()
        cur.jump(order[1])
        db.remove(order[1])
        assert cur.get_key() == order[2]


def test_plant_cursor_removal_backwards_moves_back():
    db = Database("%")
    for key in (b"a", b"b", b"c"):
        db.set(key, b"v")
    cur = db.cursor()
    cur.jump_back()
    cur.remove()
    assert cur.get_key() == b"b"


def test_hash_cursor_backward_is_not_implemented():
    db = Database(":")
    db.set(b"a", b"1")
    cur = db.cursor()
    with pytest.raises(DBError) as err:
        cur.jump_back()
    assert err.value.code == NOIMPL


def test_cursor_skips_expired_records_and_clear_invalidates():
    db = Database("+")
    db.set(b"a", b"1", -1)
    db.set(b"b", b"2")
    cur = db.cursor()
    cur.jump()
    assert cur.get_key() == b"b"
    db.clear()
    with pytest.raises(DBError):
        cur.get_key()


def test_match_regex_and_similar():
    db = Database("+")
    for key in (b"kyoto", b"tokyo", b"kyouto", "日本".encode(), "日米".encode()):
        db.set(key, b"v")
    assert db.match_regex(b"^k.*o$") == [b"kyoto", b"kyouto"]
    with pytest.raises(DBError) as err:
        db.match_regex(b"(")
    assert err.value.message == "compilation failed"
    assert db.match_similar(b"kyoto", 1) == [b"kyoto", b"kyouto"]
    assert db.match_similar("日本".encode(), 1, utf=True) == ["日本".encode(), "日米".encode()]
    assert db.match_similar("日本".encode(), 1) == ["日本".encode()]


def test_apply_replicated_relogs_with_origin_sid():
    sink = Sink()
    db = Database(":", sink=sink, sid=2)
    db.apply_replicated(OP_SET, b"k", b"\xff" * 5 + b"v", origin_sid=1)
    assert db.get(b"k") == (b"v", XTMAX)
    db.apply_replicated(OP_REMOVE, b"k", b"", origin_sid=1)
    assert db.get(b"k") is None
    assert [(e.sid, e.op) for e in sink.entries] == [(1, OP_SET), (1, OP_REMOVE)]


def test_iterate_visits_live_records():
    db = Database("+")
    db.set(b"a", b"1")
    db.set(b"b", b"2", -1)
    db.set(b"c", b"3")
    seen = []

    def visit(key, value, xt):
        seen.append(key)
        return (value + b"!", xt) if key == b"a" else REMOVE

    db.iterate(visit)
    assert seen == [b"a", b"c"]
    assert db.get(b"a")[0] == b"1!" and db.get(b"c") is None


def test_void_database_stores_nothing():
    sink = Sink()
    db = Database(":", void=True, sink=sink)
    db.set(b"a", b"1")
    assert db.get(b"a") is None and db.count() == 0
    assert db.status() == {"count": "0", "path": ":", "size": "0", "type": "128", "ktopts": "0",
                           "ktcapcnt": "-1", "ktcapsiz": "-1"}
    assert len(sink.entries) == 1


def test_specs():
    assert DBSpec.parse("a/b/casket.kct#bnum=10#ktopts=p").name == "casket.kct"
    assert DBSpec.parse("x.db#type=kch").kind == "hash"
    with pytest.raises(ValueError):
        DBSpec.parse("x.unknown")


def test_sorted_list_neighbours():
    import random
    items = random.sample(range(100000), 5000)
    sl = SortedList()
    ref = []
    for i in items:
        sl.add(i)
        ref.append(i)
    for i in items[:2000]:
        sl.discard(i)
        ref.remove(i)
    ref.sort()
    assert list(sl) == ref and len(sl) == len(ref)
    for probe in random.sample(range(100000), 300):
        import bisect
        pos = bisect.bisect_left(ref, probe)
        assert sl.ceiling(probe) == (ref[pos] if pos < len(ref) else None)
        assert sl.lower(probe) == (ref[pos - 1] if pos else None)
        pos_r = bisect.bisect_right(ref, probe)
        assert sl.higher(probe) == (ref[pos_r] if pos_r < len(ref) else None)
    assert list(sl.irange(ref[10])) == ref[10:]


# -- HashDB and DirDB cursor details (each checked against a real ktserver) ------------------


def test_hash_cursor_does_not_see_records_appended_after_its_jump():
    db = Database("c.kch")
    cur = db.cursor()
    db.set(b"a", b"v")
    db.remove(b"a")
    cur.jump()  # only a free block left: the jump succeeds, reading finds nothing
    with pytest.raises(DBError) as exc:
        cur.get_key()
    assert exc.value.code == NOREC
    db.set(b"x", b"v")
    cur.jump()
    db.set(b"y", b"v")  # appended beyond the cursor's end
    assert cur.get_key(step=True) == b"x"
    with pytest.raises(DBError):
        cur.get_key()
    db.close()


def test_hash_cursor_steps_over_a_free_block():
    db = Database("c.kch")
    for key in (b"a", b"b", b"c"):
        db.set(key, b"v" * 10)
    cur = db.cursor()
    cur.jump()
    db.remove(b"b")
    db.remove(b"a")  # the cursor moves to the next block: b's free block
    cur.step()       # skips that block, lands on c
    assert cur.get_key() == b"c"
    db.close()


def test_hash_shrunk_record_gives_back_its_tail():
    db = Database("c.kch")
    db.set(b"big", b"x" * 300)
    size = db.size()
    db.set(b"big", b"x")
    db.set(b"new", b"y" * 100)  # fits in the tail the shrunk record gave back
    assert db.size() == size
    assert db.match_prefix(b"") == [b"big", b"new"]
    db.set(b"c", b"z" * 400)
    grown = db.size()
    assert grown > size
    db.vacuum()  # full defragmentation: records shift down over the free space
    assert db.size() < grown
    assert walk(db) == [b"big", b"new", b"c"]
    db.close()


def test_dir_cursor_escape_aliases_the_removing_cursors_name():
    # kcdirdb.h escape_cursors compares every later cursor with the removing cursor's
    # own (already moved) name buffer
    db = Database("c.kcd")
    for key in (b"a", b"b", b"c", b"d"):
        db.set(key, b"v")
    order = walk(db)
    first, second = db.cursor(), db.cursor()
    first.jump()
    second.jump()
    second.step()
    assert second.get_key() == order[1]
    first.remove()
    assert first.get_key() == order[1]
    assert second.get_key() == order[2]
    db.close()
