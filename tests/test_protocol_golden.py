"""Every HTTP and binary response recorded from a real ktserver (tests/golden) parses,
with the client halves of ktcluster.protocol, to the right result.

For each connection of each case the requests sent are split with the protocol's
request parsers (so pipelined and fragmented requests are followed), and each
response is decoded as the client would decode the answer to that request:

* HTTP framing consumes exactly the recorded bytes (HEAD answers have no body);
* a TSV-RPC answer decodes losslessly: re-encoding the decoded fields with the
  answer's colenc gives the recorded body back, ``echo`` answers decode to exactly
  the map the server read from the request, and error statuses raise the
  ktcluster error class of that status carrying the server's ERROR text;
* REST answers map to the documented result or error class (404 = no record);
* binary replies decode (get_bulk and play_script records re-encode to the
  recorded bytes); 0xBF decodes to ``None`` for play_script (the procedure failed) and
  raises ProtocolError for the bulk requests (after it the server closes).

Replication streams (0xB1) and memcached text belong to other modules and are
skipped here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from golden_replay import load_cases, step_bytes, unesc

from ktcluster.errors import (
    InvalidArgumentError,
    KyotoTycoonException,
    LogicalInconsistencyError,
    NoImplementationError,
    ProtocolError,
    ServerError,
    SignalTimeoutError,
)
from ktcluster.protocol import binary
from ktcluster.protocol.http import BadRequest, HTTPError, parse_request_head, parse_response_head, read_request_body
from ktcluster.protocol.rest import rest_error
from ktcluster.protocol.rpc import answer_fields, decode_answer, decode_input
from ktcluster.protocol.tsv import colenc_of, encode_map

FILES = ["http_rpc", "http_rest", "binary", "db_types", "lua", "memcached", "replication"]

STATUS_ERRORS = {400: InvalidArgumentError, 404: LogicalInconsistencyError, 413: InvalidArgumentError,
                 450: LogicalInconsistencyError, 500: ServerError, 501: NoImplementationError,
                 503: SignalTimeoutError}


class Untracked(Exception):
    """The connection left the HTTP/binary request-response protocol (or broke it on purpose)."""


@dataclass
class Conn:
    sent: bytes = b""
    received: bytes = b""
    expected: deque = field(default_factory=deque)
    broken: bool = False  # a malformed request: the server answers an error (or nothing) and closes
    checked: int = 0


def split_requests(conn: Conn) -> None:
    """Move every complete request from conn.sent to conn.expected."""
    buf = conn.sent
    pos = 0
    while pos < len(buf) and not conn.broken:
        first = buf[pos]
        try:
            if first == 0 or first >= 0x80:
                kind, end = binary_request(buf, pos)
            else:
                head = parse_request_head(buf, pos)
                body, end = read_request_body(buf, head)
                kind = ("http", head, body)
        except binary.Incomplete:
            break
        except (BadRequest, HTTPError, ProtocolError, Untracked):
            conn.broken = True
            break
        if kind is not None:
            conn.expected.append(kind)
        pos = end
    conn.sent = buf[pos:]


def binary_request(buf: bytes, pos: int) -> tuple[Any, int]:
    magic = buf[pos]
    if magic == binary.MAGIC_PLAY_SCRIPT:
        flags, _, rnum, pos = binary.decode_play_script_header(buf, pos)
        for _ in range(rnum):
            _, pos = binary.decode_script_record(buf, pos)
        return (None if flags & binary.FLAG_NOREPLY else ("bin", magic)), pos
    if magic not in (binary.MAGIC_SET_BULK, binary.MAGIC_REMOVE_BULK, binary.MAGIC_GET_BULK):
        raise Untracked(f"magic 0x{magic:02x}")
    magic, flags, rnum, pos = binary.decode_request_header(buf, pos)
    decode = binary.decode_set_record if magic == binary.MAGIC_SET_BULK else binary.decode_key_record
    for _ in range(rnum):
        _, pos = decode(buf, pos)
    noreply = flags & binary.FLAG_NOREPLY and magic != binary.MAGIC_GET_BULK
    return (None if noreply else ("bin", magic)), pos


def check_http(kind: Any, data: bytes, pos: int) -> int:
    _, request, request_body = kind
    head = parse_response_head(data, pos, head_request=request.method == b"HEAD")
    if head.length is None:
        raise binary.Incomplete(len(data) + 1)
    end = head.body_start + head.length
    if end > len(data):
        raise binary.Incomplete(end)
    body = data[head.body_start:end]
    if request.method == b"HEAD":
        assert body == b""
    ctype = head.headers.get(b"content-type", b"")
    if request.path.startswith(b"/rpc/"):
        if ctype.startswith(b"text/tab-separated-values"):
            fields = answer_fields(head, body)
            assert encode_map(fields, colenc_of(ctype)) == body  # lossless decoding
        if 200 <= head.status < 300:
            answer = decode_answer(head, body)
            if request.path == b"/rpc/echo" and request.method != b"HEAD":
                answer.pop(b"SIGNALED", None)  # added by a SIGNAL parameter
                assert answer == decode_input(request.query, request.headers, request_body)
        else:
            with pytest.raises(KyotoTycoonException) as info:
                decode_answer(head, body)
            assert isinstance(info.value, STATUS_ERRORS.get(head.status, KyotoTycoonException))
            assert info.value.code == head.status
            if ctype.startswith(b"text/tab-separated-values"):
                assert info.value.message == dict(fields).get(b"ERROR", b"").decode("utf-8", "replace")
    elif head.status not in (200, 201, 204):
        err = rest_error(head, body)
        assert isinstance(err, STATUS_ERRORS.get(head.status, KyotoTycoonException))
        assert err.code == head.status
        assert err.message
    return end


def check_binary(kind: Any, data: bytes, pos: int) -> int:
    magic = kind[1]
    buf = data[pos:]
    if buf[:1] == bytes((binary.MAGIC_ERROR,)):
        if magic == binary.MAGIC_PLAY_SCRIPT:  # the procedure failed: a complete answer
            assert decode_reply(magic, buf) == (None, 1)
        else:
            with pytest.raises(ProtocolError):
                decode_reply(magic, buf)
        return pos + 1
    result, used = decode_reply(magic, buf)
    if magic == binary.MAGIC_GET_BULK:
        assert binary.encode_get_bulk_reply(result) == buf[:used]
    elif magic == binary.MAGIC_PLAY_SCRIPT:
        assert binary.encode_play_script_reply(result) == buf[:used]
    else:
        assert binary.encode_count_reply(magic, result) == buf[:used]
    return pos + used


def decode_reply(magic: int, buf: bytes) -> tuple[Any, int]:
    if magic == binary.MAGIC_GET_BULK:
        return binary.decode_get_bulk_reply(buf)
    if magic == binary.MAGIC_PLAY_SCRIPT:
        return binary.decode_play_script_reply(buf)
    return binary.decode_count_reply(buf, magic)


def check_received(conn: Conn) -> None:
    data = conn.received
    pos = 0
    while conn.expected and pos < len(data):
        kind = conn.expected[0]
        try:
            pos = check_http(kind, data, pos) if kind[0] == "http" else check_binary(kind, data, pos)
        except binary.Incomplete:
            break
        conn.expected.popleft()
        conn.checked += 1
    if (conn.broken or conn.sent) and not conn.expected and pos < len(data):
        # the answer to a malformed request: an HTTP-layer error or 0xBF, then the server closes
        rest = data[pos:]
        if rest.startswith(b"HTTP/"):
            head = parse_response_head(rest)
            with pytest.raises(KyotoTycoonException):
                answer_fields(head, rest[head.body_start:head.body_start + (head.length or 0)])
        else:
            assert rest == bytes((binary.MAGIC_ERROR,))
        conn.checked += 1
        pos = len(data)
    conn.received = data[pos:]


def cases() -> list[Any]:
    out = []
    for name in FILES:
        for case in load_cases(name):
            out.append(pytest.param(case, id=f"{name}:{case['name']}"))
    return out


def kt_connections(case: dict[str, Any]) -> set[str]:
    """Connections to a KT port (not the memcached one, not accepted replication links)."""
    return {name for name, port in case["connections"].items() if port != "memc_port"}


PARSED: dict[str, int] = {}


@pytest.mark.parametrize("case", cases())
def test_every_recorded_response_parses(case):
    conns: dict[str, Conn] = {}
    names = kt_connections(case)
    accepted = {s["conn"] for s in case["steps"] if s.get("accept")}
    for step in case["steps"]:
        name = step.get("conn")
        if name not in names or name in accepted or step.get("client_close"):
            continue
        conn = conns.setdefault(name, Conn())
        if "send" in step:
            if conn.broken:
                continue
            data = step_bytes(step, "send")
            if not conn.sent and not conn.expected and data[:1] == bytes((binary.MAGIC_REPLICATION,)):
                conn.broken = True  # a replication stream
                conns[name] = Conn(broken=True, checked=-1)
                continue
            conn.sent += data
            split_requests(conn)
            if step.get("half_close") and conn.sent:
                conn.broken = True  # a truncated request: the server answers 0xBF or nothing
        if "recv" in step and conn.checked >= 0:
            conn.received += step_bytes(step, "recv")
            check_received(conn)
    for name, conn in conns.items():
        if conn.checked < 0:
            continue
        assert conn.received == b"", f"{name}: unparsed bytes {conn.received[:200]!r}"
    PARSED[case["name"]] = sum(max(c.checked, 0) for c in conns.values())


def test_the_transcripts_were_parsed():
    """Guard against a silently empty run: the transcripts hold hundreds of responses."""
    if len(PARSED) < 100:
        pytest.skip("run together with test_every_recorded_response_parses")
    assert sum(PARSED.values()) > 500


def test_spot_checks():
    """A few decoded results spelled out."""
    from ktcluster.protocol.http import ResponseHead
    head = ResponseHead(200, {b"content-type": b"text/tab-separated-values; colenc=U"}, 13, True, 0)
    assert decode_answer(head, b"k\ttab%09here\n") == {b"k": b"tab\there"}
    head = head._replace(headers={b"content-type": b"text/tab-separated-values; colenc=B"})
    assert decode_answer(head, b"aw==\tAQIDBAUG\n") == {b"k": b"\x01\x02\x03\x04\x05\x06"}
    reply = unesc("\\xba\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x01\\x00\\x00\\x00"
                  "\\xff\\xff\\xff\\xff\\xffb2")
    assert binary.decode_get_bulk_reply(reply) == ([(0, b"b", b"2", binary.XTMAX)], len(reply))
