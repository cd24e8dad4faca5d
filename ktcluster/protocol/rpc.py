"""TSV-RPC messages: ``POST /rpc/NAME`` with a TSV body, answered with a TSV map.

Both ends in one place: the client encodes a call and decodes the answer; the
embedded server builds the input map exactly as ktrpc.h does and encodes its
output map as ktserver does (encoding chosen by checkmapenc, lines sorted).
"""

from __future__ import annotations

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
    "RPC_PREFIX", "encode_call", "decode_answer", "answer_fields",
    "procedure_of", "decode_input", "encode_answer",
]

RPC_PREFIX = b"/rpc/"
_FORM_CONTENT_TYPE = b"application/x-www-form-urlencoded"
_B64_CONTENT_TYPE = b"Content-Type: text/tab-separated-values; colenc=B\r\n"
_RAW_CONTENT_TYPE = b"Content-Type: text/tab-separated-values\r\n"


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


def answer_fields(head: ResponseHead, body: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) fields of an RPC answer, decoded per its Content-Type."""
    ctype = head.headers.get(b"content-type", b"")
    if ctype[:len(TSV_CONTENT_TYPE)].lower() != TSV_CONTENT_TYPE:
        if not 200 <= head.status < 300:
            text = body.decode("utf-8", "replace").strip()
            raise error_for_status(head.status, text or f"HTTP status {head.status}")
        if body:
            raise ProtocolError(f"RPC answer with Content-Type {ctype!r}")
        return []
    return decode_fields(parse_tsv(body), colenc_of(ctype))


def decode_answer(head: ResponseHead, body: bytes) -> dict[bytes, bytes]:
    """The output map of a successful answer; an error status raises the matching
    KyotoTycoonException carrying the server's ERROR text."""
    fields = dict(answer_fields(head, body))
    if 200 <= head.status < 300:
        return fields
    message = fields.get(b"ERROR", b"").decode("utf-8", "replace")
    raise error_for_status(head.status, message or f"HTTP status {head.status}")


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
