"""Replication without a server: stream framing, handshake answer, ulog_list parsing, record
decoding of the golden (real ktserver) stream, checkpoints, the tail JSON format, and the
merge logic fed by hand."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest
from golden_replay import load_cases, step_bytes

from ktcluster.atomicfile import write_atomic
from ktcluster.cli.tail import record_to_json
from ktcluster.errors import ArgumentError, ProtocolError, ReplicationError, ResyncRequiredError
from ktcluster.protocol.binary import Incomplete
from ktcluster.protocol.replication import (
    OP_CLEAR,
    OP_REMOVE,
    OP_SET,
    decode_accept,
    decode_log_entry,
    decode_log_stream,
    decode_stream_message,
    encode_log_entry,
    encode_log_message,
    encode_nop,
    join_xt,
    parse_ulog_list,
)
from ktcluster.replication import XT_NEVER, Checkpoint, KyotoSlave, ReplicationStream
from ktcluster.testing import free_port


def golden_stream(case_name: str, conn: str = "r0") -> bytes:
    """The bytes a real master sent on replication connection ``conn`` of a golden case."""
    case = next(c for c in load_cases("replication") if c["name"] == case_name)
    return b"".join(step_bytes(s, "recv") for s in case["steps"] if s.get("conn") == conn and "recv" in s)


# -- framing ----------------------------------------------------------------------------------


def test_decode_log_stream_returns_complete_messages_and_leftover():
    entry = encode_log_entry(1, 0, OP_REMOVE, b"k")
    data = encode_log_message(5, entry) + encode_nop(6) + encode_log_message(7, b"") + encode_nop(8)
    whole, pos, heartbeats = decode_log_stream(data)
    assert whole == [(5, 1, 0, OP_REMOVE, b"k", b""), 6, 7, 8] and pos == len(data) and heartbeats == 2
    for cut in range(len(data) + 1):
        items, pos, beats = decode_log_stream(data[:cut])
        assert pos <= cut and items == whole[:len(items)]
        if pos < cut:
            with pytest.raises(Incomplete):  # what is left is the start of one message
                decode_stream_message(data[pos:cut])
        rest, end, more = decode_log_stream(data[pos:])  # the leftover, then the bytes after the cut
        assert items + rest == whole and pos + end == len(data) and beats + more == 2


def test_decode_log_stream_agrees_with_the_single_message_decoders():
    data = golden_stream("stream-all-operations-from-ts0")[1:]
    items, pos, _ = decode_log_stream(data)
    single, at = [], 0
    while at < pos:
        msg, at = decode_stream_message(data, at)
        single.append(msg.ts if msg.is_nop or not msg.payload else (msg.ts, *decode_log_entry(msg.payload)))
    assert items == single and len(items) > 10


@pytest.mark.parametrize("payload", [b"\x00\x01\x00\x00", b"\x00\x01\x00\x00\xa1\x81",
                                     b"\x00\x01\x00\x00\xa1\x02\x01k", b"\x00\x01\x00\x00\xa2\x05k"])
def test_truncated_entries_are_protocol_errors(payload):
    # a varnum or key running past the message must not read the next message's bytes
    data = encode_log_message(1, payload) + encode_nop(2)
    with pytest.raises(ProtocolError):
        decode_log_stream(data)
    with pytest.raises(ProtocolError):
        decode_log_entry(payload)


def test_long_sizes_use_multi_byte_varnums():
    entry = encode_log_entry(3, 1, OP_SET, b"K" * 200, b"V" * 70000)
    assert decode_log_entry(entry) == (3, 1, OP_SET, b"K" * 200, b"V" * 70000)
    assert decode_log_stream(encode_log_message(9, entry))[0] == [(9, 3, 1, OP_SET, b"K" * 200, b"V" * 70000)]


@pytest.mark.parametrize("byte", [b"\xbf", b"\x00", b"\xb4"])
def test_bad_byte_in_the_stream_is_a_protocol_error(byte):
    with pytest.raises(ProtocolError):
        decode_log_stream(encode_nop(1) + byte)


def test_decode_accept():
    assert decode_accept(b"\xb1\xb0") == 1
    with pytest.raises(Incomplete):
        decode_accept(b"")
    with pytest.raises(ReplicationError):
        decode_accept(b"\xbf")
    with pytest.raises(ProtocolError):
        decode_accept(b"H")


def test_decode_accept_of_the_golden_refusal():
    case = next(c for c in load_cases("replication") if c["name"] == "no-update-log")
    with pytest.raises(ReplicationError):
        decode_accept(step_bytes(case["steps"][0], "recv"))


def test_parse_ulog_list():
    files = parse_ulog_list([(b"ulog/0000000004.ulog", b"3217:1795714605077000007"),
                             (b"/abs/ulog/0000000003.ulog", b"17:0")])
    assert [(f.id, f.size, f.max_ts) for f in files] == [(3, 17, 0), (4, 3217, 1795714605077000007)]
    assert files[0].path == "/abs/ulog/0000000003.ulog"
    assert parse_ulog_list([]) == []
    for bad in [(b"ulog/x.ulog", b"1:2"), (b"ulog/0000000001.ulog", b"12"), (b"ulog/0000000001.log", b"1:2")]:
        with pytest.raises(ProtocolError):
            parse_ulog_list([bad])


# -- records ----------------------------------------------------------------------------------


def decode(data: bytes, persistent: dict[int, bool], sid: int = 2, whitesid: bool = False) -> list:
    assert decode_accept(data) == 1
    items, _, _ = decode_log_stream(data[1:])
    return KyotoSlave(sid, whitesid=whitesid)._decode(items, persistent)


def strip_ts(items: list) -> list:
    return [{k: v for k, v in item.items() if k != "ts"} for item in items if isinstance(item, dict)]


def test_golden_stream_of_every_operation():
    items = decode(golden_stream("stream-all-operations-from-ts0"), {0: False})
    records = strip_ts(items)
    assert records[0] == {"sid": 1, "db": 0, "op": OP_SET, "key": b"a", "expires": XT_NEVER, "value": b"A"}
    assert {"sid": 1, "db": 0, "op": OP_REMOVE, "key": b"nothere"} in records
    assert {"sid": 1, "db": 0, "op": OP_CLEAR} in records
    assert isinstance(items[-1], int)  # a heartbeat after the backlog
    stamps = [item["ts"] for item in items if isinstance(item, dict)]
    assert stamps == sorted(set(stamps)) and items[-1] >= stamps[-1]


def test_golden_stream_of_a_ktopts_p_database_keeps_the_whole_value():
    records = strip_ts(decode(golden_stream("log-format-variants"), {0: False, 1: True}))
    assert records[0] == {"sid": 1, "db": 0, "op": OP_SET, "key": b"k", "expires": XT_NEVER, "value": b"in db0"}
    assert records[1] == {"sid": 1, "db": 1, "op": OP_SET, "key": b"k", "expires": XT_NEVER,
                          "value": b"in db1 (persistent)"}
    long_set = records[2]
    assert len(long_set["key"]) > 127 and len(long_set["value"]) > 127  # multi-byte varnums


def test_golden_dummy_record_is_progress_only():
    # 300 entries of sid 1 read as sid 1: all filtered, one size-0 dummy after 256, then a heartbeat
    items = decode(golden_stream("sid-filtering", "same"), {0: False}, sid=1)
    assert len(items) == 2 and all(isinstance(i, int) for i in items) and items[0] < items[1]
    white = decode(golden_stream("sid-filtering", "white1"), {0: False}, sid=1, whitesid=True)
    records = [i for i in white if isinstance(i, dict)]
    assert len(records) == 301 and records[0]["key"] == b"k000"


def test_expiry_and_unknown_ops():
    msgs, _, _ = decode_log_stream(
        encode_log_message(10, encode_log_entry(1, 0, OP_SET, b"k", join_xt(1234567890, b"v")))
        + encode_log_message(11, encode_log_entry(1, 0, 0xA7)))
    items = KyotoSlave(2)._decode(msgs, {0: False})
    assert items == [{"sid": 1, "db": 0, "op": OP_SET, "key": b"k", "expires": 1234567890, "value": b"v",
                      "ts": 10}, 11]


def test_entries_the_filter_should_have_dropped_are_protocol_errors():
    msgs, _, _ = decode_log_stream(encode_log_message(10, encode_log_entry(2, 0, OP_CLEAR)))
    with pytest.raises(ProtocolError):
        KyotoSlave(2)._decode(msgs, {})
    with pytest.raises(ProtocolError):
        KyotoSlave(3, whitesid=True)._decode(msgs, {})
    assert KyotoSlave(2, whitesid=True)._decode(msgs, {})[0]["op"] == OP_CLEAR


def test_bad_sid_raises_value_error_like_ng():
    for sid in (-1, 65536, "1"):
        with pytest.raises(ValueError):
            KyotoSlave(sid)  # type: ignore[arg-type]


# -- checkpoints and JSON lines ---------------------------------------------------------------


def test_checkpoint_round_trips(tmp_path):
    cp = Checkpoint({"a:1": 2**63 + 5, "b:2": 0})
    assert Checkpoint.from_json(cp.to_json()) == cp
    assert Checkpoint.from_dict(json.loads(json.dumps(cp.to_dict()))) == cp
    path = tmp_path / "cp.json"
    cp.save(path)
    assert Checkpoint.load(path) == cp
    Checkpoint({"a:1": 1}).save(path)
    assert Checkpoint.load(path).positions == {"a:1": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]  # no temporary file left


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \udcff")  # fails while writing the temporary file
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("text", ["[]", "{}", '{"version": 2, "positions": {}}', "nope",
                                  '{"version": 1, "positions": {"a": -1}}', '{"version": 1, "positions": {"a": "1"}}',
                                  '{"version": 1, "positions": {"a": true}}', '{"version": 1, "positions": []}'])
def test_bad_checkpoints_are_rejected(text):
    with pytest.raises(ArgumentError):
        Checkpoint.from_json(text)


def test_record_to_json():
    line = record_to_json({"sid": 1, "db": 0, "op": OP_SET, "key": b"k\xff", "expires": XT_NEVER,
                           "value": "é".encode(), "ts": 7, "node": "n1"})
    assert json.loads(line) == {"node": "n1", "ts": 7, "sid": 1, "db": 0, "op": "set", "key_b64": "a/8=",
                                "value": "é", "expires": None}
    assert json.loads(record_to_json({"sid": 1, "db": 2, "op": OP_CLEAR, "ts": 8, "node": "n"}))["op"] == "clear"
    assert json.loads(record_to_json({"sid": 1, "db": 0, "op": OP_SET, "key": b"k", "expires": 99,
                                      "value": b"", "ts": 9}))["expires"] == 99


# -- the merge, fed by hand (the masters' ports are closed, so their readers only retry) -------


def test_merge_orders_excludes_silent_masters_delivers_late_records_and_rejoins():
    events = []
    nodes = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    stream = ReplicationStream(nodes, 99, since=0, idle_timeout=0.3, max_backoff=0.05,
                               on_idle=lambda node, excluded: events.append((node, excluded)))
    it = iter(stream)
    out: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [out.put(rec) for rec in it], daemon=True).start()

    def feed(index: int, *items) -> None:  # what master ``index``'s reader thread would hand over
        stream._sources[index].last_message = time.monotonic()
        stream._inbox.put((index, [{"ts": i, "key": b"%d" % i} if i % 2 else i for i in items]))

    def take(n: int) -> list[tuple[str, int]]:
        return [(nodes.index((rec := out.get(timeout=5))["node"]), rec["ts"]) for _ in range(n)]

    feed(0, 11, 21)  # odd: a record, even: a heartbeat
    feed(1, 13, 19)
    feed(2, 12)
    assert take(1) == [(0, 11)]
    time.sleep(0.1)
    assert out.empty()  # 13 waits for master 2, which has only reached 12
    feed(2, 14)
    assert take(1) == [(1, 13)]  # released up to master 2's watermark; 19 waits
    feed(1, 22)
    assert stream.excluded == frozenset()
    # master 2 goes silent: after idle_timeout it no longer holds the stream back
    assert take(2) == [(1, 19), (0, 21)] and stream.excluded == {nodes[2]}
    assert events == [(nodes[2], True)]
    feed(2, 15)  # older than what was yielded: delivered at once, out of order
    assert take(1) == [(2, 15)] and stream.late_records == 1 and stream.excluded == {nodes[2]}
    feed(2, 22)  # caught up with the stream: orders it again
    feed(0, 23)
    feed(1, 24)
    time.sleep(0.1)
    assert stream.excluded == frozenset() and events[-1] == (nodes[2], False)
    assert out.empty()  # 23 waits for master 2 again
    feed(2, 26)
    assert take(1) == [(0, 23)]
    positions = stream.checkpoint().positions
    assert positions == {nodes[0]: 23, nodes[1]: 24, nodes[2]: 26}
    stream.close()


def test_merge_raises_a_reader_error_and_stops(tmp_path):
    stream = ReplicationStream([f"127.0.0.1:{free_port()}"], 99, since=0)
    it = iter(stream)
    stream._inbox.put((0, ResyncRequiredError("gone", requested_ts=1, oldest_ts=5)))
    with pytest.raises(ResyncRequiredError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(ReplicationError):
        next(iter(stream))  # iterated once already
