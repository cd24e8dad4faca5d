"""The client's parsers against arbitrary bytes (hypothesis): whatever they are given --
garbage, a valid message cut anywhere, huge numbers -- they return, raise Incomplete
(with an honest count of the bytes they need), or raise ProtocolError; nothing else, and
never a value the bytes do not hold (issue 12)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktcluster.address import format_address, parse_address
from ktcluster.errors import ArgumentError, KyotoTycoonException, ProtocolError
from ktcluster.protocol import binary
from ktcluster.protocol.framing import Incomplete
from ktcluster.protocol.http import RESPONSE_HEAD_MAX, ResponseHead, parse_response_head
from ktcluster.protocol.replication import (
    VARNUM_MAX,
    decode_log_stream,
    decode_stream_message,
    decode_varnum,
    encode_log_entry,
    encode_log_message,
    encode_varnum,
)
from ktcluster.protocol.rpc import FIELD_COST, answer_float, answer_int, decode_answer
from ktcluster.protocol.tsv import base64_encode, decode_fields, quote_encode, url_encode

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
#: what a parser may raise: it needs more bytes, or the bytes are not the protocol
EXPECTED = (Incomplete, ProtocolError)

GET_BULK = binary.encode_get_bulk_reply([(0, b"key", b"value", binary.XTMAX), (1, b"", b"\x00" * 300, 5)])
SCRIPT = binary.encode_play_script_reply([(b"a", b"1"), (b"bb", b"")])


def outcome(parse, data):
    try:
        return parse(data)
    except EXPECTED as exc:
        return exc


@FUZZ
@given(st.binary(max_size=600))
def test_binary_reply_decoders_take_any_bytes(data):
    for parse in (binary.decode_get_bulk_reply, binary.decode_get_bulk_values, binary.decode_play_script_reply,
                  lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK)):
        result = outcome(parse, data)
        if isinstance(result, Incomplete):
            assert result.needed > len(data)
        elif not isinstance(result, ProtocolError):
            assert result[1] <= len(data)
    for hits in (0, 1, 3):
        result = outcome(lambda b, hits=hits: binary.decode_get_bulk_values(b, hits), data)
        if isinstance(result, tuple):
            assert len(result[0]) <= hits


@FUZZ
@given(st.sampled_from([GET_BULK, SCRIPT]), st.data())
def test_a_cut_reply_says_how_much_more_it_needs(reply, data):
    cut = data.draw(st.integers(0, len(reply) - 1))
    parse = binary.decode_get_bulk_reply if reply is GET_BULK else binary.decode_play_script_reply
    with pytest.raises(Incomplete) as info:
        parse(reply[:cut])
    assert cut < info.value.needed <= len(reply)
    assert parse(reply)[1] == len(reply)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 5))
def test_a_declared_record_count_beyond_the_request_is_refused_before_any_record(hits, asked):
    head = struct.pack(">BI", binary.MAGIC_GET_BULK, hits)
    result = outcome(lambda b: binary.decode_get_bulk_reply(b, asked), head)
    assert isinstance(result, ProtocolError if hits > asked else Incomplete if hits else tuple)
    count = struct.pack(">BI", binary.MAGIC_SET_BULK, hits)
    assert isinstance(outcome(lambda b: binary.decode_count_reply(b, binary.MAGIC_SET_BULK, asked), count),
                      ProtocolError if hits > asked else tuple)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_response_heads_take_any_bytes(data, head_request):
    result = outcome(lambda b: parse_response_head(b, head_request=head_request), b"HTTP/1.1 " + data)
    if isinstance(result, ResponseHead):
        assert result.length is None or 0 <= result.length < 10**18


@FUZZ
@given(st.one_of(st.integers(-10**40, 10**40).map(lambda n: str(n).encode()),
                 st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
                 st.sampled_from([b"9" * 5000, b" 12", b"1_0", b"+5", b"0x10", b"\xd9\xa3", b"1e3"])))
def test_content_length_is_a_plain_number_or_a_protocol_error(text):
    result = outcome(parse_response_head, b"HTTP/1.1 200 OK\r\nContent-Length: " + text + b"\r\n\r\n")
    plain = text.strip()
    if plain.isdigit() and len(plain) <= 18:
        assert isinstance(result, ResponseHead) and result.length == int(plain)
    else:
        assert isinstance(result, ProtocolError)


def test_a_response_head_is_bounded():
    endless = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (RESPONSE_HEAD_MAX // 6 + 1)
    with pytest.raises(ProtocolError, match="larger than"):
        parse_response_head(endless)
    with pytest.raises(Incomplete):
        parse_response_head(endless[:RESPONSE_HEAD_MAX // 2])


TSV_HEAD = {b"content-type": b"text/tab-separated-values"}


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", b"; colenc=B", b"; colenc=U", b"; colenc=Q"]),
       st.sampled_from([200, 450, 500]))
def test_rpc_answers_take_any_body(body, colenc, status):
    head = ResponseHead(status, {b"content-type": b"text/tab-separated-values" + colenc}, len(body), True, 0)
    try:
        out = decode_answer(head, body, max_size=1 << 20)
    except KyotoTycoonException as exc:
        assert status != 200 or isinstance(exc, ProtocolError)
    else:
        assert status == 200 and len(out) <= body.count(b"\n") + 1
        for name in (b"num", b"count"):
            try:
                answer_int(out, name)
                answer_float(out, name)
            except ProtocolError:
                pass


@FUZZ
@given(st.integers(0, 10**6))
def test_an_answer_may_not_hold_more_fields_than_memory_allows(lines):
    body = b"a\tb\n" * lines
    head = ResponseHead(200, TSV_HEAD, len(body), True, 0)
    max_size = 64 * FIELD_COST + len(body)
    if lines > 64:
        with pytest.raises(ProtocolError, match="fields"):
            decode_answer(head, body, max_size=max_size)
        with pytest.raises(ProtocolError, match="fields"):
            decode_answer(head, body, max_fields=3)
    else:
        assert decode_answer(head, body, max_size=max_size) == ({b"a": b"b"} if lines else {})


@FUZZ
@given(st.binary(max_size=200))
def test_strict_column_decoding_reads_what_ktserver_writes_and_refuses_the_rest(data):
    for letter, encode in ((b"B", base64_encode), (b"U", url_encode), (b"Q", quote_encode)):
        field = encode(data)
        assert decode_fields([(field, field)], letter, strict=True) == decode_fields([(field, field)], letter) \
            == [(data, data)]
        try:
            strict = decode_fields([(data, b"")], letter, strict=True)
        except ProtocolError:
            continue
        assert strict == decode_fields([(data, b"")], letter)   # what it accepts, it reads as KC does


@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_varnums_round_trip(num):
    data = encode_varnum(num)
    assert len(data) <= VARNUM_MAX and decode_varnum(data, 0) == (num, len(data))


@FUZZ
@given(st.binary(min_size=1, max_size=40))
def test_varnums_read_modulo_2_64_as_kc_does_and_have_a_maximum_length(data):
    kc = 0
    for i, c in enumerate(data):
        kc = ((kc << 7) + (c & 0x7F)) % 2**64
        if c < 0x80:
            assert decode_varnum(data, 0) == (kc, i + 1)
            result = outcome(lambda b: decode_varnum(b, 0, None, VARNUM_MAX), data)
            assert result == (kc, i + 1) if i < VARNUM_MAX else isinstance(result, ProtocolError)
            break
    else:
        with pytest.raises(ProtocolError):
            decode_varnum(data, 0)


def test_a_long_varnum_is_refused_at_once():
    long = b"\xff" * (1 << 20) + b"\x01"
    with pytest.raises(ProtocolError, match="longer than 10 bytes"):
        decode_varnum(long, 0, None, VARNUM_MAX)
    assert decode_varnum(long, 0) == (2**64 - 1 - 0x7E, len(long))   # KC's reading, in linear time


ENTRY = encode_log_message(5, encode_log_entry(1, 0, 0xA1, b"k", b"\0" * 5 + b"v"))


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 64))
def test_the_replication_stream_takes_any_bytes(data, max_size):
    for buf in (data, ENTRY + data, b"\xb1" + data):
        try:
            items, pos, _ = decode_log_stream(buf, 0, max_size)
        except ProtocolError:
            continue
        assert pos <= len(buf) and (not items or pos > 0)
        result = outcome(lambda b: decode_stream_message(b, 0, max_size), buf[pos:])
        assert not isinstance(result, tuple) or not buf[pos:]  # the leftover is no complete message


@FUZZ
@given(st.text(max_size=40))
def test_any_address_string_parses_or_is_an_argument_error(text):
    try:
        host, port = parse_address(text)
    except ArgumentError:
        return
    assert 0 < port < 65536 and host
    assert parse_address(format_address(host, port)) == (host, port)
