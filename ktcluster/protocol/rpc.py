"""TSV-RPC messages: ``POST /rpc/NAME`` with a TSV body, answered with a TSV map.

Both ends in one place: the client encodes a call and decodes the answer; the
embedded server builds the input map exactly as ktrpc.h does and encodes its
output map as ktserver does (encoding chosen by checkmapenc, lines sorted).

The client trusts an answer no further than it must: its fields decode strictly
(see :mod:`~ktcluster.protocol.tsv`), their number is bounded before any is
parsed (by what the request can produce, else by the memory they would take:
:data:`FIELD_COST` each, with the body, within ``max_size``), and a field the
procedure always answers that is missing or not a number
(:func:`answer_value`, :func:`answer_int`, :func:`answer_float`) is a
ProtocolError, never a KeyError or ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from operator import itemgetter

from ..errors import ProtocolError, error_for_status
from .http import ResponseHead, encode_response
from .tsv import (
    TSV_CONTENT_TYPE,
    colenc_of,
    decode_fields,
    dump_tsv,
    encode_map,
    parse_form,
    parse_tsv,
    url_decode,
)

__all__ = [
    "RPC_PREFIX", "FIELD_COST", "encode_call", "decode_answer", "answer_fields",
    "answer_value", "answer_int", "answer_float", "parse_int",
    "procedure_of", "decode_input", "encode_answer",
]

RPC_PREFIX = b"/rpc/"
_FORM_CONTENT_TYPE = b"application/x-www-form-urlencoded"
_B64_CONTENT_TYPE = b"Content-Type: text/tab-separated-values; colenc=B\r\n"
_RAW_CONTENT_TYPE = b"Content-Type: text/tab-separated-values\r\n"


#: the memory one field of an answer is counted for once decoded (a tuple, two bytes objects
#: and a dict slot): an answer's body plus this much per field must fit within ``max_size``.
FIELD_COST = 128

_INT_TEXT = re.compile(rb"-?[0-9]{1,20}")
_FLOAT_TEXT = re.compile(rb"-?(?:[0-9]{1,400}(?:\.[0-9]{0,400})?|inf|nan)")

_KEY = itemgetter(0)
_VALUE = itemgetter(1)


def _raw_safe(params: Sequence[tuple[bytes, bytes]]) -> bool:
    """Can these fields travel as raw TSV?  Not when a key holds TAB or LF, a value holds
    LF, or a value ends in CR (the server strips it).  (Joined first: one C-level scan.)"""
    keys = b"".join(map(_KEY, params))
    if b"\t" in keys or b"\n" in keys:
        return False
    values = b"".join(map(_VALUE, params))
    if b"\n" in values:
        return False
    return b"\r" not in values or not any(value[-1:] == b"\r" for _, value in params)


def encode_call(procedure: bytes, params: Sequence[tuple[bytes, bytes]], host: bytes = b"localhost",
                query: bytes = b"") -> bytes:
    """The HTTP request for one RPC call.

    Fields go in the body, raw when they can, else Base64 (``colenc=B``);
    ``query`` (already URL-encoded, without '?') is only for parameters a
    caller wants visible in the request line."""
    if _raw_safe(params):
        ctype, body = _RAW_CONTENT_TYPE, encode_map(params)
    else:
        ctype, body = _B64_CONTENT_TYPE, encode_map(params, b"B")
    target = RPC_PREFIX + procedure + (b"?" + query if query else b"")
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n"
            % (target, host, ctype, len(body))) + body


def answer_fields(head: ResponseHead, body: bytes, max_fields: int | None = None) -> list[tuple[bytes, bytes]]:
    """The (key, value) fields of an RPC answer, decoded (strictly) per its Content-Type;
    an answer of more than ``max_fields`` lines is a ProtocolError, before it is parsed."""
    ctype = head.headers.get(b"content-type", b"")
    if ctype[:len(TSV_CONTENT_TYPE)].lower() != TSV_CONTENT_TYPE:
        if not 200 <= head.status < 300:
            text = body[:4096].decode("utf-8", "replace").strip()
            raise error_for_status(head.status, text or f"HTTP status {head.status}")
        if body:
            raise ProtocolError(f"RPC answer with Content-Type {ctype[:80]!r}")
        return []
    if max_fields is not None:
        lines = body.count(b"\n") + (body[-1:] not in (b"", b"\n"))
        if lines > max_fields:
            raise ProtocolError(f"an RPC answer of {lines} fields where at most {max_fields} can be "
                                "(what the request asked for, or max_reply_size)")
    return decode_fields(parse_tsv(body), colenc_of(ctype), strict=True)


def decode_answer(head: ResponseHead, body: bytes, *, max_size: int | None = None,
                  max_fields: int | None = None) -> dict[bytes, bytes]:
    """The output map of a successful answer; an error status raises the matching
    KyotoTycoonException carrying the server's ERROR text.

    ``max_fields`` bounds the fields by what the request can produce; without it,
    ``max_size`` bounds them by memory (the body plus :data:`FIELD_COST` a field)."""
    if max_fields is None and max_size is not None:
        max_fields = max(0, (max_size - len(body)) // FIELD_COST)
    fields = dict(answer_fields(head, body, max_fields))
    if 200 <= head.status < 300:
        return fields
    message = fields.get(b"ERROR", b"")[:4096].decode("utf-8", "replace")
    raise error_for_status(head.status, message or f"HTTP status {head.status}")


def answer_value(out: Mapping[bytes, bytes], name: bytes) -> bytes:
    """Field ``name`` of an answer, which the procedure always sends: ProtocolError when
    it is missing (a server answering 200 with an empty or foreign body)."""
    value = out.get(name)
    if value is None:
        raise ProtocolError(f"the RPC answer lacks its {name.decode('ascii', 'replace')!r} field")
    return value


def parse_int(text: bytes, name: str) -> int:
    """A decimal integer the server sent (up to 20 digits); ProtocolError for anything else."""
    if _INT_TEXT.fullmatch(text) is None:
        raise ProtocolError(f"the {name} field of an RPC answer is not an integer: {text[:40]!r}")
    return int(text)


def answer_int(out: Mapping[bytes, bytes], name: bytes) -> int:
    """Field ``name`` of an answer as an integer (see :func:`answer_value`, :func:`parse_int`)."""
    return parse_int(answer_value(out, name), name.decode("ascii", "replace"))


def answer_float(out: Mapping[bytes, bytes], name: bytes) -> float:
    """Field ``name`` of an answer as a decimal number (KT writes ``%f``); ProtocolError
    when it is missing or not a number."""
    text = answer_value(out, name)
    if _FLOAT_TEXT.fullmatch(text) is None:
        raise ProtocolError(f"the {name.decode('ascii', 'replace')} field of an RPC answer is not a number: "
                            f"{text[:40]!r}")
    return float(text)


# -- server side ------------------------------------------------------------------------------


def procedure_of(path: bytes) -> bytes | None:
    """The URL-decoded procedure name of an RPC path, or None for a REST path."""
    if not path.startswith(RPC_PREFIX):
        return None
    return url_decode(path[len(RPC_PREFIX):])


def decode_input(query: bytes | None, headers: Mapping[bytes, bytes], body: bytes) -> dict[bytes, bytes]:
    """ktrpc.h: the query string (form), then the body (form or TSV, by Content-Type),
    later keys overwriting earlier ones; a TSV colenc decodes the whole map."""
    inmap: dict[bytes, bytes] = {}
    if query is not None:
        inmap.update(parse_form(query))
    ctype = headers.get(b"content-type")
    if ctype is None:
        return inmap
    if ctype[:len(_FORM_CONTENT_TYPE)].lower() == _FORM_CONTENT_TYPE:
        nul = body.find(b"\0")
        inmap.update(parse_form(body if nul < 0 else body[:nul]))
    elif ctype[:len(TSV_CONTENT_TYPE)].lower() == TSV_CONTENT_TYPE:
        inmap.update(parse_tsv(body))
        colenc = colenc_of(ctype)
        if colenc is not None:
            inmap = dict(decode_fields(sorted(inmap.items()), colenc))
    return inmap


def encode_answer(code: int, output: Mapping[bytes, bytes], *, keep_alive: bool,
                  head_request: bool = False) -> bytes:
    """The HTTP response carrying an RPC output map."""
    ctype, body = dump_tsv(output)
    return encode_response(code, {b"content-type": ctype}, body, keep_alive=keep_alive,
                           head_request=head_request)
