"""HTTP/1.x framing as ktserver speaks it, for both ends.

Pure functions over bytes (sans-IO).  The client encodes requests and parses
response heads; the embedded server parses request heads and bodies with
kthttp.h's exact rules (lines end at LF, every CR is dropped, a line holds at
most 8191 bytes, only ``HTTP/1.0``/``HTTP/1.1`` are accepted) and encodes
responses with ktserver's header order.  A parser given too few bytes raises
:class:`~ktcluster.protocol.framing.Incomplete`; a request ktserver would drop
silently raises :class:`BadRequest`; one it would answer with an error status
raises :class:`HTTPError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..errors import KTConnectionError, ProtocolError
from .framing import Incomplete
from .kcnum import atoi, atoih, cstr

__all__ = [
    "SERVER_NAME", "LINE_MAX", "BODY_MAX", "RESPONSE_HEAD_MAX", "reason", "http_date", "format_http_date",
    "encode_request", "ResponseHead", "parse_response_head", "HTTPReply", "ReadToEOF",
    "RequestHead", "BadRequest", "HTTPError", "IncompleteChunkEnd", "read_line", "parse_request_head",
    "read_request_body", "encode_response", "encode_error_response",
]

SERVER_NAME = b"KyotoTycoon/0.9.56b"
#: longest request/header line ktserver keeps (LINEBUFSIZ - 1).
LINE_MAX = 8191
#: largest request body ktserver accepts (RECVMAXSIZ).
BODY_MAX = 1 << 28
#: largest response head a client accepts (ktserver's are a few hundred bytes).
RESPONSE_HEAD_MAX = 1 << 16

_REASONS = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 200: "OK", 201: "Created",
    202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    305: "Use Proxy", 307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable",
    417: "Expectation Failed", 422: "Unprocessable Entity", 423: "Locked",
    424: "Failed Dependency", 426: "Upgrade Required", 450: "Logical Inconsistency",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage",
    509: "Bandwidth Limit Exceeded", 510: "Not Extended",
}


_REASON_BYTES = {code: text.encode() for code, text in _REASONS.items()}


def reason(code: int) -> str:
    """kthttp.h status_name."""
    name = _REASONS.get(code)
    if name:
        return name
    for limit, text in ((100, "Unknown Status"), (200, "Unknown Informational Status"),
                        (300, "Unknown Success Status"), (400, "Unknown Redirection Status"),
                        (500, "Unknown Client Error Status"), (600, "Unknown Server Error Status")):
        if code < limit:
            return text
    return "Unknown Status"


_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def format_http_date(t: int) -> bytes:
    """ktutil datestrhttp with no offset: ``Www, DD Mon YYYY hh:mm:ss GMT`` for any epoch
    second (X-Kt-Xt may lie far beyond the year 9999)."""
    try:
        tm = time.gmtime(t)
    except (OverflowError, OSError, ValueError):
        tm = time.gmtime(0)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (_DAYS[tm.tm_wday], tm.tm_mday, _MONTHS[tm.tm_mon - 1],
                                                   tm.tm_year, tm.tm_hour, tm.tm_min, tm.tm_sec)


_date_cache: tuple[int, bytes] = (0, b"")


def http_date(now: float | None = None) -> bytes:
    """The RFC 1123 ``Date`` of now, in GMT (cached per second)."""
    global _date_cache
    sec = int(time.time() if now is None else now)
    if _date_cache[0] != sec:
        _date_cache = (sec, format_http_date(sec))
    return _date_cache[1]


# -- client side ------------------------------------------------------------------------------


def encode_request(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]] = (),
                   body: bytes | None = None) -> bytes:
    """An HTTP/1.1 request; Content-Length is added when there is a body."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers)
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class ResponseHead(NamedTuple):
    """A parsed response head; ``length`` is None when the body runs to EOF."""

    status: int
    headers: dict[bytes, bytes]  # lower-case names
    length: int | None
    keep_alive: bool
    body_start: int


def parse_response_head(buf: bytes, pos: int = 0, *, head_request: bool = False) -> ResponseHead:
    """Parse the status line and headers starting at ``pos``.  A head over
    :data:`RESPONSE_HEAD_MAX` bytes, a malformed status line and a Content-Length
    that is not a plain decimal number are ProtocolErrors."""
    end = buf.find(b"\r\n\r\n", pos, pos + RESPONSE_HEAD_MAX + 4)
    if end < 0:
        if len(buf) - pos >= RESPONSE_HEAD_MAX + 4:
            raise ProtocolError(f"HTTP response head larger than {RESPONSE_HEAD_MAX} bytes")
        raise Incomplete(len(buf) + 1)
    lines = buf[pos:end].split(b"\r\n")
    status_line = lines[0]
    if status_line[:9] == b"HTTP/1.1 " and status_line[9:12].isdigit() and status_line[12:13] in (b" ", b""):
        status = int(status_line[9:12])  # the usual case, without the general parse below
        keep_alive = True
    else:
        try:
            version, code = status_line.split(b" ", 2)[:2]
            status = int(code)
        except ValueError:
            raise ProtocolError(f"malformed HTTP status line {status_line[:80]!r}") from None
        if not version.startswith(b"HTTP/1."):
            raise ProtocolError(f"malformed HTTP status line {status_line[:80]!r}")
        keep_alive = version == b"HTTP/1.1"
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    conn = headers.get(b"connection")
    if conn is not None:
        conn = conn.lower()
        if conn == b"close":
            keep_alive = False
        elif conn == b"keep-alive":
            keep_alive = True
    length: int | None
    if head_request or status in (204, 304) or 100 <= status < 200:
        length = 0
    elif b"content-length" in headers:
        text = headers[b"content-length"]
        if not text.isdigit() or len(text) > 18:  # ASCII digits only: no sign, blank or underscore
            raise ProtocolError(f"malformed Content-Length {text[:40]!r} in HTTP response")
        length = int(text)
    elif b"transfer-encoding" in headers:
        raise ProtocolError("chunked HTTP responses are not supported (KT never sends them)")
    else:
        length = None
        keep_alive = False
    return ResponseHead(status, headers, length, keep_alive, end + 4)


class ReadToEOF(Incomplete):
    """The response's body runs to EOF: nothing more to decode until the peer closes."""


class HTTPReply:
    """The decoder of one HTTP response (head first, then an exactly sized body), in the
    shape a reader calls: ``reply(buf) -> ((head, body), used)`` or :class:`Incomplete`
    (:class:`ReadToEOF` when the body ends only at EOF: then ``reply.at_eof(buf)``).
    ``head_request``: the response to a HEAD request has no body whatever it declares.
    It keeps the parsed head between calls, so the head is parsed once."""

    __slots__ = ("head_request", "head")

    def __init__(self, head_request: bool = False) -> None:
        self.head_request = head_request
        self.head: ResponseHead | None = None

    def __call__(self, buf: bytes) -> tuple[tuple[ResponseHead, bytes], int]:
        head = self.head
        if head is None:
            head = self.head = parse_response_head(buf, head_request=self.head_request)
        if head.length is None:  # the body runs to EOF: see at_eof
            raise ReadToEOF(len(buf) + 1)
        end = head.body_start + head.length
        if len(buf) < end:
            raise Incomplete(end)
        return (head, buf[head.body_start:end]), end

    def at_eof(self, buf: bytes) -> tuple[ResponseHead, bytes]:
        """The peer closed the connection after ``buf``: complete only for a body without length."""
        if self.head is None or self.head.length is not None:
            raise KTConnectionError(f"the connection closed after {len(buf)} bytes of an HTTP response")
        return self.head, buf[self.head.body_start:]


# -- server side ------------------------------------------------------------------------------


class BadRequest(Exception):
    """ktserver drops the connection without answering."""


class IncompleteChunkEnd(Incomplete):
    """The body stops where the CRLF after a chunk should be: if it never comes, ktserver
    answers ``400 (invalid chunk)`` rather than ``400 (receiving data failed)``."""


class HTTPError(Exception):
    """ktserver answers with ``encode_error_response(code, message)`` and closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def read_line(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Socket::receive_line: (line without CRs, new pos).

    A line ends at LF (consumed) or after LINE_MAX non-CR bytes (the rest,
    LF included, is left for the next line)."""
    nl = buf.find(b"\n", pos)
    stop = len(buf) if nl < 0 else nl
    # Fast path: the LINE_MAX-th non-CR byte cannot lie before pos + LINE_MAX.
    if stop - pos <= LINE_MAX:
        if nl < 0:
            raise Incomplete(len(buf) + 1)
        return buf[pos:nl].replace(b"\r", b""), nl + 1
    out = bytearray()
    i = pos
    while i < stop and len(out) < LINE_MAX:
        c = buf[i]
        if c != 0x0D:
            out.append(c)
        i += 1
    if len(out) >= LINE_MAX:
        return bytes(out), i
    if nl < 0:
        raise Incomplete(len(buf) + 1)
    return bytes(out), nl + 1


class RequestHead(NamedTuple):
    """A parsed request head (kthttp.h WorkerAdapter::process)."""

    method: bytes        # as sent: GET, HEAD, POST, PUT, DELETE, or anything else
    target: bytes        # the raw target, query included (for REST's Location header)
    path: bytes          # the target before '?'
    query: bytes | None  # the text after the first '?', if any
    version: int         # 0 for HTTP/1.0, 1 for HTTP/1.1
    headers: dict[bytes, bytes]  # lower-case names, last one wins
    keep_alive: bool
    content_length: int  # -1 when absent
    chunked: bool
    body_start: int

    @property
    def reads_body(self) -> bool:
        """ktserver reads a body only for POST, PUT and unknown methods."""
        return self.method not in (b"GET", b"HEAD", b"DELETE")


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes, bytes | None, int]:
    """(method, target, path, query, version) of a request line, or BadRequest."""
    method, sp, rest = line.partition(b" ")
    if not sp:
        raise BadRequest("no space in the request line")
    target, sp, version_text = rest.partition(b" ")
    if not sp:
        raise BadRequest("no version in the request line")
    path, qmark, query = target.partition(b"?")
    if not path:
        raise BadRequest("empty request target")
    if version_text == b"HTTP/1.1":
        version = 1
    elif version_text == b"HTTP/1.0":
        version = 0
    else:
        raise BadRequest("unsupported HTTP version")
    return method, target, path, query if qmark else None, version


_HEADER_NAMES: dict[bytes, bytes] = {}


def _header_name(name: bytes) -> bytes:
    """kthttp's reading of a header name: blanks folded, lower-cased (memoised)."""
    norm = _HEADER_NAMES.get(name)
    if norm is None:
        norm = b" ".join(name.split()).lower()
        if len(_HEADER_NAMES) < 1024:
            _HEADER_NAMES[name] = norm
    return norm


def _request_head(request: tuple[bytes, bytes, bytes, bytes | None, int], lines: list[bytes],
                  body_start: int) -> RequestHead:
    method, target, path, query, version = request
    keep = version >= 1
    clen = -1
    chunked = False
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = _header_name(name)
        if not name:
            continue
        value = value.lstrip(b" ")
        if name == b"content-length":
            clen = int(value) if value.isdigit() and len(value) < 18 else atoi(value)
        elif name == b"connection":
            if value.lower() == b"close":
                keep = False
            elif value.lower() == b"keep-alive":
                keep = True
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                chunked = True
        headers[name] = value
    return RequestHead(method, target, path, query, version, headers, keep, clen, chunked, body_start)


def parse_request_head(buf: bytes, pos: int = 0) -> RequestHead:
    """Parse a request line and headers at ``pos``."""
    end = buf.find(b"\r\n\r\n", pos)
    if 0 <= end - pos < LINE_MAX:
        # Fast path: a short head with plain CRLF line ends and no NUL reads the same
        # as line by line below.
        head = buf[pos:end]
        crlf = head.count(b"\r\n")
        if head.count(b"\n") == crlf and head.count(b"\r") == crlf and b"\0" not in head:
            lines = head.split(b"\r\n")
            return _request_head(_request_line(lines[0]), lines[1:], end + 4)
    line, pos = read_line(buf, pos)
    request = _request_line(cstr(line))
    lines = []
    while True:
        line, pos = read_line(buf, pos)
        line = cstr(line)
        if not line:
            break
        lines.append(line)
    return _request_head(request, lines, pos)


def read_request_body(buf: bytes, head: RequestHead) -> tuple[bytes, int]:
    """(body, new pos) of the request whose head is ``head``.

    Raises Incomplete, or HTTPError(413) for a body over BODY_MAX and
    HTTPError(400, 'invalid chunk') for a bad chunk terminator.  A body that
    never arrives is the caller's ``HTTPError(400, 'receiving data failed')``."""
    pos = head.body_start
    if not head.reads_body:
        return b"", pos
    if head.content_length >= 0:
        if head.content_length > BODY_MAX:
            raise HTTPError(413, "request entity too large")
        end = pos + head.content_length
        if len(buf) < end:
            raise Incomplete(end)
        return buf[pos:end], end
    if not head.chunked:
        return b"", pos
    parts = []
    size = 0
    while True:
        line, pos = read_line(buf, pos)
        if not cstr(line):
            break
        csiz = atoih(cstr(line))
        if size + csiz > BODY_MAX:
            raise HTTPError(413, "request entity too large")
        end = pos + csiz
        if len(buf) < end + 2:
            if len(buf) > end and buf[end] != 0x0D:
                raise HTTPError(400, "invalid chunk")
            raise IncompleteChunkEnd(end + 2) if len(buf) >= end else Incomplete(end + 2)
        if buf[end:end + 2] != b"\r\n":
            raise HTTPError(400, "invalid chunk")
        if csiz < 1:
            pos = end + 2
            break
        parts.append(buf[pos:end])
        size += csiz
        pos = end + 2
    return b"".join(parts), pos


def _capitalize(name: bytes) -> bytes:
    """kthttp strcapitalize: upper-case the first letter and every letter after '-' or ' '."""
    out = bytearray(name)
    head = True
    for i, c in enumerate(out):
        if head and 0x61 <= c <= 0x7A:
            out[i] = c - 0x20
        head = c in (0x2D, 0x20)
    return bytes(out)


_HEADER_LINES: dict[bytes, bytes | None] = {}


#: the bytes kc::strnrmspc takes for spaces: the controls, space and DEL
_SPACES = bytes(range(1, 0x21)) + b"\x7f"
_TO_SPACE = bytes.maketrans(_SPACES, b" " * len(_SPACES))


def _normalize_spaces(text: bytes) -> bytes:
    """kc::strnrmspc on a C string: up to its first NUL, every run of controls, spaces
    and DELs one space, none at either end."""
    return b" ".join(cstr(text).translate(_TO_SPACE).split())


def _header_prefix(name: bytes) -> bytes | None:
    """``Capitalized-Name: `` of a header name as kthttp send_result writes it (None:
    a name it drops), memoised."""
    prefix = _HEADER_LINES.get(name, b"")
    if prefix == b"":
        norm = _normalize_spaces(name).lower()
        prefix = _capitalize(norm) + b": " if norm and b":" not in norm and b" " not in norm else None
        if len(_HEADER_LINES) < 1024:
            _HEADER_LINES[name] = prefix
    return prefix


def encode_response(code: int, headers: Mapping[bytes, bytes], body: bytes, *, keep_alive: bool,
                    head_request: bool = False, now: float | None = None) -> bytes:
    """kthttp send_result: status line, Server, Date, Connection: close (when not keeping
    alive), Content-Length (not for HEAD or 304), then ``headers`` sorted by lower-case
    name and capitalised, blank line, body."""
    has_body = not head_request and code != 304
    parts = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
             % (code, _REASON_BYTES.get(code) or reason(code).encode(), SERVER_NAME, http_date(now))]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    if has_body:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    for name, value in sorted(headers.items()) if len(headers) > 1 else headers.items():
        prefix = _header_prefix(name)
        if prefix is not None:
            parts.append(prefix + _normalize_spaces(value) + b"\r\n")
    parts.append(b"\r\n")
    if has_body:
        parts.append(body)
    return b"".join(parts)


def encode_error_response(code: int, message: str, now: float | None = None) -> bytes:
    """kthttp send_error: a text/plain ``CODE Reason (message)`` answer that closes."""
    text = b"%d %s (%s)\n" % (code, reason(code).encode(), message.encode())
    return (b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nConnection: close\r\n"
            b"Content-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
            % (code, reason(code).encode(), SERVER_NAME, http_date(now), len(text))) + text
