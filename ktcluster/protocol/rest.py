"""KT's RESTful interface: ``GET/HEAD/PUT/DELETE /DB/key``.

Pure functions over bytes.  REST moves a value as the raw HTTP body (no TSV
column encoding), which makes it the cheapest HTTP path for single records.

* The target is ``/`` + DB expression + ``/`` + key, both URL-escaped where
  ktserver would misread them (it URL-decodes both parts, dropping raw control,
  space and non-ASCII bytes, so those, ``%``, ``+``, ``/``, ``?`` and ``#`` are escaped).  The whole request
  line must fit in :data:`~ktcluster.protocol.http.LINE_MAX` bytes:
  :data:`MAX_TARGET` is the longest target that always fits.
* ``X-Kt-Xt`` on PUT is an **absolute** epoch; values that are not in
  ``0 < t < 2^40-1`` mean "no expiry" to the server.
* Answers: GET 200 (body = value), HEAD 200 (Content-Length = value size), PUT 201,
  DELETE 204; a missing record is 404 with ``X-Kt-Error``; add/replace
  conflicts are 450; a bad DB is 400 with the text body ``no such database``.

The server half, :func:`parse_target`, reads a target as ktserver does.
"""

from __future__ import annotations

from ..errors import KyotoTycoonException, LogicalInconsistencyError, error_for_status
from .http import LINE_MAX, ResponseHead
from .tsv import url_decode

__all__ = [
    "MAX_TARGET", "quote_path", "rest_target", "encode_get", "encode_head", "encode_put", "encode_delete",
    "MODE_SET", "MODE_ADD", "MODE_REPLACE", "rest_error", "parse_target",
]

#: the longest request target that fits ktserver's request-line limit with every method.
MAX_TARGET = LINE_MAX - len(b"DELETE  HTTP/1.1")

MODE_SET = b"set"
MODE_ADD = b"add"
MODE_REPLACE = b"replace"


# Bytes ktserver's REST path decoding keeps as they are: printable ASCII except '%' and '+'
# (escapes), '/' (the DB separator), '?' (the query) and '#'.
_PATH_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in b"%+/?#")
_PATH_TABLE = [bytes((c,)) if c in _PATH_SAFE else b"%%%02x" % c for c in range(256)]


def quote_path(data: bytes) -> bytes:
    """Escape a key or DB name for a REST target (only what ktserver would misread)."""
    if not data.translate(None, _PATH_SAFE):
        return data
    table = _PATH_TABLE
    return b"".join([table[c] for c in data])


def rest_target(db: bytes, key: bytes) -> bytes:
    """``/db/key`` with both parts escaped; ``db`` is the DB expression as RPC's
    ``DB`` takes it (index digits or name), b"" meaning DB 0."""
    return b"/" + quote_path(db) + b"/" + quote_path(key)


def encode_get(target: bytes, host: bytes) -> bytes:
    """GET request for one record."""
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def encode_head(target: bytes, host: bytes) -> bytes:
    """HEAD request (existence and value size, without the value)."""
    return b"HEAD " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def encode_delete(target: bytes, host: bytes) -> bytes:
    """DELETE request."""
    return b"DELETE " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def encode_put(target: bytes, value: bytes, host: bytes, mode: bytes = MODE_SET, xt: int | None = None) -> bytes:
    """PUT request storing ``value``; ``mode`` is set/add/replace, ``xt`` an absolute
    epoch (None: no expiry)."""
    head = b"PUT " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: %d\r\n" % len(value)
    if mode != MODE_SET:
        head += b"X-Kt-Mode: " + mode + b"\r\n"
    if xt is not None:
        head += b"X-Kt-Xt: %d\r\n" % xt
    return head + b"\r\n" + value


def rest_error(head: ResponseHead, body: bytes) -> KyotoTycoonException:
    """The exception for an unexpected REST answer: the server's ``X-Kt-Error`` text (or
    its text body) and status.  404 (no record) maps to LogicalInconsistencyError, the
    class RPC's 450 for the same condition maps to."""
    message = head.headers.get(b"x-kt-error") or body.strip() or b"HTTP status %d" % head.status
    text = message.decode("utf-8", "replace")
    if head.status == 404:
        return LogicalInconsistencyError(text, 404)
    return error_for_status(head.status, text)


def parse_target(path: bytes) -> tuple[bytes, bytes]:
    """(DB expression, key) of a REST path (the target before ``?``), as ktserver reads
    it: one leading ``/`` dropped; if a ``/`` remains, what precedes it (URL-decoded) is
    the DB expression and one more ``/`` after it is skipped; the rest, URL-decoded, is
    the key.  An empty expression (or one starting with NUL) means DB 0."""
    if path[:1] == b"/":
        path = path[1:]
    expr = b""
    slash = path.find(b"/")
    if slash >= 0:
        expr = url_decode(path[:slash])
        path = path[slash + 1:]
        if path[:1] == b"/":
            path = path[1:]
    return expr, url_decode(path)
