"""Pure byte tests of the protocol pieces the client relies on: KC's lenient decoders
(checked against straight ports of kcutil.h as oracles), TSV parsing, RPC request
encoding (read back with the server half), REST targets and errors, HTTP response
heads and binary frames."""

from __future__ import annotations

import random

import pytest

from ktcluster.errors import (
    InvalidArgumentError,
    LogicalInconsistencyError,
    NoImplementationError,
    ProtocolError,
    ServerError,
)
from ktcluster.protocol import binary, rest
from ktcluster.protocol.http import ResponseHead, parse_request_head, parse_response_head, read_request_body
from ktcluster.protocol.rpc import decode_input, encode_call
from ktcluster.protocol.tsv import parse_tsv, quote_decode, url_decode, url_encode

HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


def kc_urldecode(data: bytes) -> bytes:
    """kcutil.h urldecode, line by line, with x86's signed char (bytes >= 0x80 are < ' ')."""
    data = data.split(b"\0", 1)[0]
    out = bytearray()
    i = 0
    while i < len(data):
        c = data[i] if data[i] < 0x80 else data[i] - 256
        if c == 0x25:
            i += 1
            if i >= len(data):
                break
            num = HEX.get(data[i], 0)
            i += 1
            if i >= len(data):
                break
            if data[i] in HEX:
                num = num * 16 + HEX[data[i]]
            out.append(num & 0xFF)
            i += 1
        elif c == 0x2B:
            out.append(0x20)
            i += 1
        elif c <= 0x20 or c == 0x7F:
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def tsvtomap_lines(body: bytes) -> list[tuple[bytes, bytes]]:
    """ktutil.h tsvtomap's line rules, line by line."""
    out = []
    for line in body.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        key, tab, value = line.partition(b"\t")
        if tab:
            out.append((key, value))
    return out


def random_bytes(rng: random.Random, alphabet: bytes, n: int) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randrange(n)))


# -- tsv ---------------------------------------------------------------------------------------


def test_url_decode_drops_high_bytes_like_ktserver():
    assert url_decode(b"a\xc3\xa9b") == b"ab"  # raw UTF-8 disappears (tests/golden SUMMARY)
    assert url_decode(b"%c3%a9") == "é".encode()
    assert url_decode(b"a+b%zz%4") == b"a b\0"
    assert quote_decode(b"a\xffb=41") == b"abA"


def test_url_decode_matches_kc():
    rng = random.Random(1)
    alphabet = b"%+aZ09-_.~ \x00\x01\x7f\x80\xff" + b"0123456789abcdefABCDEF"
    for _ in range(3000):
        data = random_bytes(rng, alphabet, 24)
        assert url_decode(data) == kc_urldecode(data), data
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert url_decode(url_encode(data)) == data


def test_parse_tsv_matches_tsvtomap():
    rng = random.Random(2)
    for _ in range(3000):
        body = random_bytes(rng, b"ab\t\n\r\x00\xff", 30)
        assert parse_tsv(body) == tsvtomap_lines(body), body


# -- rpc ---------------------------------------------------------------------------------------


def read_back(request: bytes) -> dict[bytes, bytes]:
    head = parse_request_head(request)
    body, end = read_request_body(request, head)
    assert end == len(request)
    return decode_input(head.query, head.headers, body)


def test_encode_call_is_read_back_exactly():
    rng = random.Random(3)
    alphabet = b"ab\t\n\r\x00\xff=%+ "
    for _ in range(1500):
        params = {random_bytes(rng, alphabet, 8): random_bytes(rng, alphabet, 12) for _ in range(rng.randrange(6))}
        assert read_back(encode_call(b"echo", list(params.items()))) == params


@pytest.mark.parametrize("params,raw", [
    ([(b"key", b"value"), (b"", b"")], True),
    ([(b"k", b"tab\tin value")], True),
    ([(b"k", b"\x00\x01\xff")], True),
    ([(b"k", b"line\nfeed")], False),
    ([(b"k", b"ends in cr\r")], False),
    ([(b"t\tab", b"v")], False),
    ([(b"l\nf", b"v")], False),
])
def test_encode_call_uses_raw_tsv_when_it_can(params, raw):
    request = encode_call(b"set", params)
    assert (b"colenc=B" not in request.split(b"\r\n\r\n")[0]) is raw
    assert read_back(request) == dict(params)


# -- rest --------------------------------------------------------------------------------------


def test_rest_targets_read_back():
    rng = random.Random(4)
    for _ in range(1000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        target = rest.rest_target(b"0", key)
        assert b" " not in target and b"?" not in target and target.count(b"/") == 2
        assert url_decode(target.split(b"/", 2)[2]) == key
    assert rest.quote_path(b"bench:0001") == b"bench:0001"
    assert rest.quote_path(b"a/b+c d%e?f#g\x00\xe9") == b"a%2fb%2bc%20d%25e%3ff%23g%00%e9"
    assert rest.rest_target(b"casket.kct", b"k") == b"/casket.kct/k"
    assert rest.rest_target(b"+", b"k") == b"/%2b/k"


def test_rest_requests():
    assert rest.encode_get(b"/0/k", b"h:1") == b"GET /0/k HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert rest.encode_head(b"/0/k", b"h") == b"HEAD /0/k HTTP/1.1\r\nHost: h\r\n\r\n"
    assert rest.encode_delete(b"/0/k", b"h") == b"DELETE /0/k HTTP/1.1\r\nHost: h\r\n\r\n"
    put = rest.encode_put(b"/0/k", b"v\r\n", b"h", rest.MODE_ADD, 4102444800)
    assert put == (b"PUT /0/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Kt-Mode: add\r\n"
                   b"X-Kt-Xt: 4102444800\r\n\r\nv\r\n")
    head = parse_request_head(put)
    assert read_request_body(put, head) == (b"v\r\n", len(put))
    assert len(b"DELETE " + b"/" * rest.MAX_TARGET + b" HTTP/1.1") <= 8191


@pytest.mark.parametrize("status,headers,body,cls,message", [
    (404, {b"x-kt-error": b"DB: 7: no record: no record"}, b"", LogicalInconsistencyError,
     "DB: 7: no record: no record"),
    (450, {b"x-kt-error": b"DB: 6: record duplication: record duplication"}, b"", LogicalInconsistencyError,
     "DB: 6: record duplication: record duplication"),
    (400, {}, b"no such database\n", InvalidArgumentError, "no such database"),
    (500, {b"x-kt-error": b"DB: 4: no permission: permission denied"}, b"", ServerError,
     "DB: 4: no permission: permission denied"),
    (501, {}, b"", NoImplementationError, "HTTP status 501"),
])
def test_rest_errors(status, headers, body, cls, message):
    err = rest.rest_error(ResponseHead(status, headers, len(body), True, 0), body)
    assert type(err) is cls and err.code == status and err.message == message


# -- http --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,status,keep,length", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 200, True, 3),
    (b"HTTP/1.1 450 Logical Inconsistency\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 450, False, 0),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, False, 1),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", 200, True, 1),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True, 0),
    (b"HTTP/1.1 200 OK\r\n\r\nrest", 200, False, None),
    (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, True, 0),
])
def test_response_heads(raw, status, keep, length):
    head = parse_response_head(raw)
    assert (head.status, head.keep_alive, head.length) == (status, keep, length)
    assert head.body_start == raw.index(b"\r\n\r\n") + 4


def test_response_head_edge_cases():
    with pytest.raises(binary.Incomplete):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Len")
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_request=True)
    assert head.length == 0 and head.headers[b"content-length"] == b"9"
    for bad in (b"SSH-2.0\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with pytest.raises(ProtocolError):
            parse_response_head(bad)


# -- binary ------------------------------------------------------------------------------------


def test_binary_frames_roundtrip():
    records = [(0, b"k", b"v", binary.XT_NONE), (3, b"", b"\x00" * 300, -4102444800)]
    request = binary.encode_set_bulk(records, binary.FLAG_NOREPLY)
    magic, flags, rnum, pos = binary.decode_request_header(request)
    assert (magic, flags, rnum) == (binary.MAGIC_SET_BULK, 1, 2)
    got = []
    for _ in range(rnum):
        rec, pos = binary.decode_set_record(request, pos)
        got.append(rec)
    assert got == records and pos == len(request)
    reply = binary.encode_get_bulk_reply([(0, b"k", b"v", binary.XTMAX)])
    for cut in range(len(reply)):
        with pytest.raises(binary.Incomplete) as info:
            binary.decode_get_bulk_reply(reply[:cut])
        assert cut < info.value.needed <= len(reply)
    assert binary.decode_get_bulk_reply(reply) == ([(0, b"k", b"v", binary.XTMAX)], len(reply))
    with pytest.raises(ProtocolError):
        binary.decode_count_reply(b"\xbf", binary.MAGIC_SET_BULK)
    with pytest.raises(ProtocolError):
        binary.decode_count_reply(b"\xb9\x00\x00\x00\x01", binary.MAGIC_SET_BULK)
    script = binary.encode_play_script_reply([(b"a", b"1")])
    assert binary.decode_play_script_reply(script) == ([(b"a", b"1")], len(script))
    # play_script's 0xBF is a complete one-byte answer (the procedure failed), the stream stays in sync
    assert binary.decode_play_script_reply(b"\xbf") == (None, 1)
    with pytest.raises(binary.Incomplete):
        binary.decode_play_script_reply(b"")


def test_get_bulk_values_decodes_the_same_frame():
    rng = random.Random(5)
    for _ in range(200):
        records = [(rng.randrange(3), random_bytes(rng, b"ab\x00", 5), random_bytes(rng, b"xy\n", 9),
                    rng.randrange(1 << 40)) for _ in range(rng.randrange(6))]
        reply = binary.encode_get_bulk_reply(records)
        full, used = binary.decode_get_bulk_reply(reply)
        assert binary.decode_get_bulk_values(reply) == ({k: v for _, k, v, _ in full}, used)
        for cut in range(len(reply)):
            with pytest.raises(binary.Incomplete):
                binary.decode_get_bulk_values(reply[:cut])
    with pytest.raises(ProtocolError):
        binary.decode_get_bulk_values(b"\xbf")


@pytest.mark.parametrize("count", [0, 1, 2, 7, 8, 9, 50])
def test_bulk_requests_from_columns_equal_those_from_records(count):
    """The client builds bulk requests from its keys and values (no tuple per record), whole
    or in pieces; the bytes are those of the record-tuple encoders the server is tested with."""
    rng = random.Random(count)
    keys = [rng.randbytes(rng.randrange(0, 20)) for _ in range(count)]
    values = [rng.randbytes(rng.randrange(0, 300)) for _ in range(count)]
    xt = rng.choice([binary.XT_NONE, 60, -1700000000])

    def joined(request):
        return request if isinstance(request, bytes) else b"".join(request)

    for per_piece in (1, 3, 8, 128):
        assert joined(binary.set_bulk_request(2, keys, values, xt, flags=1, per_piece=per_piece)) == \
            binary.encode_set_bulk([(2, k, v, xt) for k, v in zip(keys, values, strict=True)], flags=1)
        assert joined(binary.remove_bulk_request(2, keys, per_piece=per_piece)) == \
            binary.encode_remove_bulk([(2, k) for k in keys])
        assert joined(binary.get_bulk_request(2, keys, per_piece=per_piece)) == \
            binary.encode_get_bulk([(2, k) for k in keys])
        if count > per_piece:
            assert not isinstance(binary.get_bulk_request(2, keys, per_piece=per_piece), bytes)
    records = [(rng.randrange(3), k, v, xt) for k, v in zip(keys, values, strict=True)]   # several databases
    request = binary.encode_set_bulk(records)
    magic, _, n, pos = binary.decode_request_header(request)
    decoded = []
    for _ in range(n):
        record, pos = binary.decode_set_record(request, pos)
        decoded.append(record)
    assert (magic, decoded, pos) == (binary.MAGIC_SET_BULK, records, len(request))
