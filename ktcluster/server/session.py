"""One client connection of the server: its socket and read buffer, its cursors, its
counters, and the framing of its HTTP requests.

A :class:`Session` is what every front end gets: ``session.state`` (the
:class:`~.state.ServerState` it serves), ``session.cursors`` (the RPC ``CUR`` cursors,
private to the connection), ``session.counts`` (its ``cnt_*`` counters, indexed by
:class:`~.state.Counter`), and the buffered reads and writes of
:class:`~.netio.BufferedSocket`.  Which front end serves a request is the process's
decision (:mod:`.server`).
"""

from __future__ import annotations

import socket
from typing import Any

from ..protocol.framing import Incomplete
from ..protocol.http import (
    BadRequest,
    HTTPError,
    IncompleteChunkEnd,
    RequestHead,
    encode_error_response,
    parse_request_head,
    read_request_body,
)
from .db.storage import Cursor
from .netio import BufferedSocket
from .state import ServerState

__all__ = ["Session", "HEAD_MAX"]

#: the largest request head we buffer before giving up on a client (ktserver has no limit,
#: but each of its lines is at most 8191 bytes; this bounds memory per connection)
HEAD_MAX = 1 << 20


class Session(BufferedSocket):
    """One client connection (see the module doc); :meth:`close` retires its counters
    into the server's totals."""

    def __init__(self, state: ServerState, sock: socket.socket, addr: Any) -> None:
        super().__init__(sock)
        self.state = state
        self.addr = addr
        self.cursors: dict[int, Cursor] = {}
        self.counts = state.counts.open()

    def read_http_request(self) -> tuple[RequestHead, bytes] | None:
        """The HTTP request whose bytes have begun to arrive: its head and body (b"" if
        it has none).  None when the connection is to close: the head is malformed,
        too long or cut short, or the body did not arrive (after ktserver's error
        answer: 400 when it does not arrive or a chunk is malformed, 413 when too
        large)."""
        while True:
            try:
                head = parse_request_head(self.buf, self.pos)
                break
            except Incomplete:
                if len(self.buf) - self.pos > HEAD_MAX or not self.fill():
                    return None
            except BadRequest:
                return None
        self.pos = head.body_start
        while True:
            try:
                body, self.pos = read_request_body(self.buf, head)
                return head, body
            except Incomplete as exc:
                if not self.ensure(exc.needed - self.pos):
                    chunk_end = isinstance(exc, IncompleteChunkEnd)
                    self.send(encode_error_response(400, "invalid chunk" if chunk_end else "receiving data failed"))
                    return None
                head = head._replace(body_start=self.pos)   # the buffer was refilled from pos
            except HTTPError as exc:
                self.send(encode_error_response(exc.code, exc.message))
                return None

    def close(self) -> None:
        self.cursors.clear()
        self.state.counts.close(self.counts)
        super().close()
