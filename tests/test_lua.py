"""Lua scripting (``-scr``) of the server under test: the embedded one, or $KT_SERVER_BIN
(a ktserver built with Lua 5.1).  The expected answers of the kt module were recorded
from the real server; both servers must give them.

Covered: every module function and DB/cursor method that tests/lua/kt_module.lua calls,
argument errors, return values and their HTTP statuses, failures and their log lines,
the environment of a procedure, HTTP vs binary, concurrent procedures, the update log,
SIGUSR1 reload, a script that does not load, a runaway script, and lupa missing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from ktcluster import KyotoTycoon
from ktcluster.errors import (
    InvalidArgumentError,
    KTTimeoutError,
    LogicalInconsistencyError,
    NoImplementationError,
    ScriptError,
    ServerError,
)
from ktcluster.replication import OP_REMOVE, OP_SET, XT_NEVER, KyotoSlave
from ktcluster.server.config import ConfigError
from ktcluster.testing import KTServer, using_real_server

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "kt_module.lua")


@pytest.fixture(scope="module")
def server():
    with KTServer(":", "+", args=["-scr", SCRIPT, "-th", "4"]) as srv:
        yield srv


@pytest.fixture
def kt(server):
    with KyotoTycoon().connect(server.host, server.port, timeout=10) as client:
        yield client


@pytest.fixture
def kt_binary(server):
    with KyotoTycoon(binary=True).connect(server.host, server.port, timeout=10) as client:
        yield client


def play(client: KyotoTycoon, name: str, inmap: dict | None = None) -> dict[str, bytes]:
    return client.play_script(name, inmap or {})


def script_log(srv: KTServer) -> list[str]:
    """The [SCRIPT] lines of the server's log, without their time stamps."""
    with open(srv.path("server.log"), encoding="utf-8", errors="replace") as f:
        return [line.split(": ", 1)[1] for line in f.read().splitlines() if "[SCRIPT]" in line]


# -- the kt module (answers recorded from ktserver) ----------------------------------------------

MODULE = {
    "ad": b"0161013108322e353030303030026262", "al.1": b"1=x", "al.2": b"2=yy", "al.3": b"3=", "al.n": b"3",
    "atof": b"1500", "atoi": b"12", "atoix": b"3072", "bad": b"nil", "base": b"aGVsbG8gd29ybGQ=",
    "big": b"-9223372036854775808", "bitand": b"8", "bitleft": b"2", "bitnot": b"4294967295",
    "bitright": b"268435455", "bwm": b"false", "dbstr": b":: 0: 8388664", "deflate": b"789c4b4c84010014e103cb",
    "err": b"no record: no rec|no record|7|no rec", "err2": b"success: error", "fwm": b"true",
    "gzip": b"1f8b08000000000000034b4c840100f0cd114c0a000000", "hex": b"01ab", "hf": b"117791150636571",
    "hm": b"254910939360214", "inf": b"-9223372036854775808", "invarg": b"kt_atoi: invalid arguments",
    "invarg2": b"db_set: invalid arguments", "lev": b"3", "levu": b"1", "md": b"0101613101016232",
    "ml.1": b"k1=v1", "ml.2": b"k3=v3", "ml.3": b"k2=v2", "ml.n": b"3", "nan": b"-nan", "neg": b"-1.250000",
    "nop": b"userdata",
    "pack1": b"01fffffffeff07000000f9ffffff0000000000010000fdffffffffffffff0000010200030000000000000005822c0000c03f"
             b"0000000000000240",
    "pack2": b"01020304050000", "pack3": b"808080808080808000", "pack4": b"2cff00000007",
    "quote": b"a=3Db=09=C3=BC", "re1": b"true", "re2": b"hell[oo$] w[oo$]rld", "re3": b"-abc", "re4": b"Abc",
    "re5": b"abc", "split1.1": b"1=a", "split1.2": b"2=b", "split1.3": b"3=", "split1.4": b"4=c",
    "split1.n": b"4", "split2.1": b"1=a", "split2.2": b"2=b", "split2.3": b"3=", "split2.n": b"3",
    "strstr1": b"3", "strstr2": b"0", "strstr3": b"a+-b+-c", "thid": b"number", "time": b"number",
    "unbase": b"hello", "ungzip": b"xyz", "unhex": b"A\x04\x02", "unknown": b"nil", "unpack.1": b"1=255",
    "unpack.2": b"2=-1", "unpack.3": b"3=258", "unpack.4": b"4=256", "unpack.5": b"5=257", "unpack.6": b"6=5",
    "unpack.n": b"6", "unurl": b"a b c", "unzlib": b"xyz", "url": b"a%20b%2f%c3%bc", "zlib": b"4b4c84010000",
}

DATABASE = {
    "add": b"false", "addcode": b"6", "adderr": b"record duplication: record duplication", "append": b"true",
    "cas": b"true", "casbad": b"false", "caserr": b"logical inconsistency: status conflict", "check": b"1",
    "checkmiss": b"-1", "count": b"5", "get": b"1x", "getbulk": b"\x01\x01y2\x01\x01x1\x01\x053three",
    "geterr": b"no record: no record", "getmiss": b"nil", "idx": b"4.500000", "idx2": b"ww", "idx3": b"nil",
    "inc": b"5", "inc2": b"3", "incbad": b"nil", "incd": b"1.500000", "incd2": b"1.750000",
    "incerr": b"logical inconsistency: logical inconsistency", "mp": b"p2,p1", "mp1": b"p2", "mr": b"q1,p1",
    "mrbad": b"nil", "ms": b"3", "path": b":", "remove": b"true", "removebulk": b"1", "removemiss": b"false",
    "replace": b"false", "replaceerr": b"no record: no record", "seize": b"3", "seizemiss": b"nil",
    "set": b"true", "setbulk": b"4", "size": b"number", "status": b"7::", "xt": b"1099511627775",
    "xtrel": b"true",
}

VISITORS = {
    "a": b"1!", "ab": b"true", "acc": b"true", "accnew": b"true", "accrm": b"true", "accro": b"true", "b": b"nil",
    "c": b"3", "c2": b"3+", "c3": b"C", "c4": b"CC", "c5": b"nil", "cacc": b"true", "cdis": b"(disabled)",
    "cdiserr": b"cur_step: invalid arguments", "cget": b"a", "cget2": b"3+", "cseize": b"c", "cstep": b"true",
    "cstr": b":: n", "csv": b"true", "it": b"true", "jb": b"false",
    "jberr": b"not implemented: not implemented", "jump": b"true", "n": b"new", "order": b"c=3+,zz=nil",
    "pairs": b"a=1!+,c=3+,n=new+", "seen": b"a,after,before,c,n", "unpos": b"nil",
    "unposerr": b"no record: no record",
}

SCRIPT_DATABASES = {
    "close": b"true", "closed": b"nil", "closederr": b"invalid operation: not opened", "count": b"2",
    "first": b"a", "mcount": b"2", "merge": b"true", "occ": b"false",
    "occerr": b"logical inconsistency: processing failed", "open": b"true", "pcount": b"1", "process": b"nil",
    "reopen": b"true", "scount": b"2", "spath": b":", "str": b"+: 2: 14", "sync": b"true", "type": b"24",
}


def test_module_functions(kt):
    assert play(kt, "mod") == MODULE


def test_database_methods(kt):
    assert play(kt, "dbops") == DATABASE


def test_visitors_and_cursors(kt):
    out = play(kt, "visitors")
    # cur:set_value's default expiration: ktserver passes (step, xt) swapped, so the
    # record expires "now" (and the cursor steps)
    assert abs(int(out.pop("cxt")) - time.time()) < 5
    assert out == VISITORS


def test_databases_opened_by_scripts(kt):
    assert play(kt, "memdb") == SCRIPT_DATABASES


def test_argument_errors_raise_lua_errors(kt):
    assert play(kt, "errs") == {
        "kt.split()": b"kt_split: invalid arguments",
        "kt.pack()": b"kt_pack: invalid arguments",
        "db:get()": b"db_get: invalid arguments",
        "db:accept('k', 1)": b"db_accept: invalid arguments",
        "kt.Cursor:new(1, 2)": b"cur_new: invalid arguments",
        "kt.log('x')": b"serv_log: invalid arguments",
        "kt.mapdump(1)": b"kt_mapdump: invalid arguments",
        "db.foo(1)": b"[string \"db.foo(1)\"]:1: attempt to call field 'foo' (a nil value)",
    }


def test_environment_of_a_procedure(kt):
    out = play(kt, "globals")
    assert out.pop("kt") == (
        b"Cursor,DB,Error,FileProcessor,RVEINTERNAL,RVEINVALID,RVELOGIC,RVENOIMPL,RVSUCCESS,VERSION,Visitor,"
        b"__serv__,arraydump,arrayload,atof,atoi,atoix,bit,codec,db,dbs,hash_fnv,hash_murmur,levdist,log,"
        b"mapdump,mapload,pack,regex,sleep,split,strbwm,strfwm,strstr,thid,time,unpack")
    assert out.pop("db") == (
        b"accept,accept_bulk,add,append,begin_transaction,cas,check,clear,close,copy,count,cur_,cursor,"
        b"cursor_process,db_ptr_,dump_snapshot,end_transaction,err_,error,get,get_bulk,increment,"
        b"increment_double,iterate,load_snapshot,mapreduce,match_prefix,match_regex,match_similar,merge,"
        b"occupy,open,pairs,path,remove,remove_bulk,replace,seize,set,set_bulk,size,status,synchronize,"
        b"transaction")
    assert out == {"python": b"nil", "libs": b"tabletabletabletabletabletable", "same": b"true", "ndbs": b"2",
                   "second": b"+: 0: 0", "named": b"true"}


def test_coroutines(kt):
    assert play(kt, "coroutines") == {"a": b"2", "b": b"20"}


# -- return values and failures -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "error"), [
    ("0", None), ("nil", None), ("true", None), ("big", None), ("huge", None),  # all read as 0
    ("1", NoImplementationError), ("2", InvalidArgumentError), ("str", LogicalInconsistencyError),
    ("float", LogicalInconsistencyError), ("4", KTTimeoutError), ("5", ServerError), ("neg", ServerError),
    ("15", ServerError),
])
def test_return_values_over_http(kt, value, error):
    if error is None:
        assert play(kt, "rets", {"v": value}) == {"v": value.encode()}
    else:
        with pytest.raises(error):
            play(kt, "rets", {"v": value})


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("nil", True), ("3", False), ("neg", False)])
def test_return_values_over_binary(kt_binary, kt, value, ok):
    if ok:
        assert play(kt_binary, "rets", {"v": value}) == {"v": value.encode()}
    else:
        with pytest.raises(ScriptError):
            play(kt_binary, "rets", {"v": value})
    assert play(kt_binary, "thread")  # the connection stays usable


def test_missing_procedures(kt, kt_binary):
    with pytest.raises(NoImplementationError, match="no such scripting procedure"):
        play(kt, "nosuch")
    with pytest.raises(NoImplementationError):
        play(kt, "db")  # a global that is not a function
    with pytest.raises(ScriptError):
        play(kt_binary, "nosuch")


def test_failures_answer_500_and_are_logged(server, kt, kt_binary):
    for name in ("boom", "boomtable", "boomnumber", "badarg"):
        with pytest.raises(ServerError, match="the scripting procedure failed"):
            play(kt, name)
    with pytest.raises(ScriptError):
        play(kt_binary, "boom")
    assert play(kt, "logit") == {}
    chunk = '[string "-- kt_module.lua: procedures exercising the..."]'
    lines = script_log(server)
    for expected in (
        f"[ERROR]: [SCRIPT]: boom: {chunk}:246: boom",
        "[ERROR]: [SCRIPT]: boomtable: (null)",
        f"[ERROR]: [SCRIPT]: boomnumber: {chunk}:248: 42",
        "[ERROR]: [SCRIPT]: badarg: kt_split: invalid arguments",
        "[ERROR]: [SCRIPT]: logged",
    ):
        assert expected in lines


def test_http_and_binary_give_the_same_outputs(kt, kt_binary):
    inmap = {"a": "1", "b": "x\ty", "c": b"\x00\xff".decode("latin-1")}
    assert play(kt, "rets", {"v": "0", **inmap}) == play(kt_binary, "rets", {"v": "0", **inmap})


# -- the server around the scripts ----------------------------------------------------------------


def test_procedures_run_concurrently_on_up_to_th_states(server):
    """A sleeping procedure does not hold up the others; kt.thid stays below -th 4."""
    done = threading.Event()
    results: list = []

    def sleeper():
        client = KyotoTycoon().connect(server.host, server.port, timeout=10)
        results.append(play(client, "nap", {"seconds": "1.5"}))
        done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        time.sleep(0.2)
        client = KyotoTycoon().connect(server.host, server.port, timeout=10)
        quick = play(client, "thread")
        assert not done.is_set()  # answered while the sleeper still sleeps
    finally:
        thread.join()
    assert 0 <= int(quick["thid"]) < 4 and 0 <= int(results[0]["thid"]) < 4
    ids = set()
    workers = [threading.Thread(target=lambda: ids.add(
        play(KyotoTycoon().connect(server.host, server.port), "nap", {"seconds": "0.2"})["thid"]))
        for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert ids and all(0 <= int(thid) < 4 for thid in ids)


def test_script_writes_go_to_the_update_log(kt_server_factory):
    srv = kt_server_factory(":", "+", args=["-scr", SCRIPT, "-ulog", "ulog", "-sid", "1"])
    play(KyotoTycoon().connect(srv.host, srv.port), "writes")
    slave = KyotoSlave(2, srv.host, srv.port, timeout=5)
    records = []
    for record in slave.consume(0):
        records.append({k: v for k, v in record.items() if k != "ts"})
        if len(records) == 4:
            break
    slave.close()
    assert abs(records[1].pop("expires") - (time.time() + 100)) < 5  # the visitor's xt
    assert records == [
        {"sid": 1, "db": 0, "op": OP_SET, "key": b"w1", "value": b"one", "expires": XT_NEVER},
        {"sid": 1, "db": 0, "op": OP_SET, "key": b"w2", "value": b"two"},
        {"sid": 1, "db": 0, "op": OP_REMOVE, "key": b"w1"},
        {"sid": 1, "db": 1, "op": OP_SET, "key": b"w3", "value": b"three", "expires": XT_NEVER},
    ]


def test_sigusr1_reloads_the_script(kt_server_factory, tmp_path):
    path = tmp_path / "reload.lua"
    path.write_text('kt = __kyototycoon__\nfunction version(i, o) o.v = "1" return 0 end\n')
    srv = kt_server_factory(args=["-scr", str(path)])
    client = KyotoTycoon().connect(srv.host, srv.port, timeout=5)
    assert play(client, "version") == {"v": b"1"}
    path.write_text('kt = __kyototycoon__\nfunction version(i, o) o.v = "2" return 0 end\n'
                    'function added(i, o) return 0 end\n')
    srv.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if play(client, "version") == {"v": b"2"}:
                break
        except KTTimeoutError:
            pass
        except Exception:  # the real server restarts its listener: connections drop meanwhile
            client.close()
        assert time.monotonic() < deadline, "the script was not reloaded"
        time.sleep(0.1)
    assert play(client, "added") == {}


def test_a_script_that_does_not_load_is_logged(kt_server_factory, tmp_path):
    path = tmp_path / "broken.lua"
    path.write_text("kt = __kyototycoon__\nfunction ok(i, o) return 0 end\nthis is not lua\n")
    srv = kt_server_factory(args=["-scr", str(path)])
    client = KyotoTycoon().connect(srv.host, srv.port, timeout=5)
    with pytest.raises(NoImplementationError):
        play(client, "ok")  # the chunk never ran
    lines = script_log(srv)
    assert any(line.startswith("[ERROR]: [SCRIPT]: (init): [string \"kt = __kyototycoon__...\"]:3:")
               for line in lines)


def test_a_runaway_script_is_bounded_and_the_server_serves_on(kt_server_factory):
    """The embedded server ends it at -tout with a 500 (ktserver has no limit: its worker
    spins until the process is killed, and only the client's own timeout saves it)."""
    srv = kt_server_factory(args=["-scr", SCRIPT, "-tout", "1", "-th", "4"])
    for name in ("spin", "spinpcall"):
        client = KyotoTycoon().connect(srv.host, srv.port, timeout=4)
        with pytest.raises((ServerError, KTTimeoutError)) as info:
            play(client, name)
        if not using_real_server():
            assert isinstance(info.value, ServerError)
        client.close()
    other = KyotoTycoon().connect(srv.host, srv.port, timeout=4)
    assert "thid" in play(other, "thread")
    if not using_real_server():
        assert "[ERROR]: [SCRIPT]: spin: the procedure ran past the request timeout (1 s)" in script_log(srv)
    srv.stop(timeout=2)


def test_without_lupa_the_server_refuses_to_start(monkeypatch):
    """``-scr`` with no Lua runtime: a clear startup error, not a server answering 501."""
    from ktcluster.server import scripting

    monkeypatch.setitem(sys.modules, "lupa", None)
    monkeypatch.setitem(sys.modules, "lupa.lua51", None)
    logged = []

    class FakeServer:
        def log(self, kind: int, message: str) -> None:
            logged.append(message)

    with pytest.raises(ConfigError, match=r"pip install 'ktcluster\[lua\]'"):
        scripting.create_engine(FakeServer(), "app.lua")
    assert logged
