"""The RESTful interface: ``GET/HEAD/PUT/DELETE /[DB/]key`` (ktserver do_rest_*).

The path (query ignored) names the database and the key
(:func:`ktcluster.protocol.rest.parse_target`).  ``X-Kt-Xt`` on PUT is an absolute time
in any of ktutil strmktime's formats; GET/HEAD report it as an RFC 1123 date.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...protocol.http import RequestHead, encode_response, format_http_date
from ...protocol.kcnum import INT64MAX, strmktime
from ...protocol.rest import parse_target
from ..db.storage import DUPREC, NOREC, XTMAX, DBError
from ..state import Counter

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["handle"]

_NO_RECORD = b"DB: 7: no record: no record"


def handle(session: Session, head: RequestHead, body: bytes) -> bytes:
    """Answer one HTTP request outside ``/rpc/``."""
    expr, key = parse_target(head.path)
    db = session.state.db_by_expr(expr)
    keep = head.keep_alive
    method = head.method
    if db is None:
        return encode_response(400, {}, b"no such database\n", keep_alive=keep, head_request=method == b"HEAD")
    counts = session.counts
    headers: dict[bytes, bytes] = {}
    if method == b"GET" or method == b"HEAD":
        counts[Counter.GET] += 1
        got = db.get(key)
        if got is None:
            counts[Counter.GET_MISS] += 1
            headers[b"x-kt-error"] = _NO_RECORD
            if method == b"HEAD":
                headers[b"content-length"] = b"0"
            return encode_response(404, headers, b"", keep_alive=keep, head_request=method == b"HEAD")
        value, xt = got
        if xt < XTMAX:
            headers[b"x-kt-xt"] = format_http_date(xt)
        if method == b"HEAD":
            headers[b"content-length"] = b"%d" % len(value)
            return encode_response(200, headers, b"", keep_alive=keep, head_request=True)
        return encode_response(200, headers, value, keep_alive=keep)
    if method == b"PUT":
        mode = head.headers.get(b"x-kt-mode", b"").lower()
        text = head.headers.get(b"x-kt-xt")
        xt = strmktime(text) if text is not None else -1
        xt = -xt if 0 < xt < XTMAX else INT64MAX
        counts[Counter.SET] += 1
        try:
            if mode == b"add":
                db.add(key, body, xt)
            elif mode == b"replace":
                db.replace(key, body, xt)
            else:
                db.set(key, body, xt)
        except DBError as exc:
            counts[Counter.SET_MISS] += 1
            return _error(session, exc, (DUPREC, NOREC), 450, keep)
        headers[b"location"] = b"http://" + session.state.name.encode() + head.target
        return encode_response(201, headers, b"", keep_alive=keep)
    if method == b"DELETE":
        counts[Counter.REMOVE] += 1
        try:
            db.remove(key)
        except DBError as exc:
            counts[Counter.REMOVE_MISS] += 1
            return _error(session, exc, (NOREC,), 404, keep)
        return encode_response(204, headers, b"", keep_alive=keep)
    return encode_response(501, headers, b"", keep_alive=keep)


def _error(session: Session, exc: DBError, expected: tuple[int, ...], code: int, keep: bool) -> bytes:
    if exc.code not in expected:
        code = 500
        session.state.log_db_error(exc)
    return encode_response(code, {b"x-kt-error": str(exc).encode()}, b"", keep_alive=keep)
