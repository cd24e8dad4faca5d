"""A minimal blocking client for the server tests: raw sockets plus the protocol layer, so
that the server tests do not depend on the client library."""

from __future__ import annotations

import socket
import struct

from ktcluster.protocol.binary import (
    MAGIC_SET_BULK,
    Incomplete,
    decode_count_reply,
    decode_get_bulk_reply,
    encode_get_bulk,
    encode_set_bulk,
)
from ktcluster.protocol.http import ResponseHead, parse_response_head
from ktcluster.protocol.rpc import answer_fields, encode_call

__all__ = ["Wire"]


class Wire:
    """One connection to a server under test."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def recv_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _response(self, head_request: bool = False) -> tuple[ResponseHead, bytes]:
        while True:
            try:
                head = parse_response_head(self.buf, 0, head_request=head_request)
                break
            except Incomplete:
                self._fill()
        end = head.body_start + (head.length or 0)
        while len(self.buf) < end:
            self._fill()
        body, self.buf = self.buf[head.body_start:end], self.buf[end:]
        return head, body

    def http(self, request: bytes, head_request: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one raw HTTP request; (status, headers, body)."""
        self.sock.sendall(request)
        head, body = self._response(head_request)
        return head.status, head.headers, body

    def rpc(self, name: str, fields: list[tuple[bytes, bytes]] | None = None,
            **params: bytes | str | int) -> tuple[int, dict[bytes, bytes]]:
        """Call a procedure with ``fields`` and/or keyword parameters; (HTTP status,
        decoded output map)."""
        fields = list(fields or [])
        for key, value in params.items():
            fields.append((key.encode(), value if isinstance(value, bytes) else str(value).encode()))
        self.sock.sendall(encode_call(name.encode(), fields))
        head, body = self._response()
        return head.status, dict(answer_fields(head, body))

    def get(self, key: bytes, db: int = 0) -> bytes | None:
        status, out = self.rpc("get", [(b"key", key)], DB=db)
        return out[b"value"] if status == 200 else None

    def set(self, key: bytes, value: bytes, xt: int | None = None, db: int = 0) -> int:
        params: dict[str, int] = {"DB": db} if xt is None else {"DB": db, "xt": xt}
        return self.rpc("set", [(b"key", key), (b"value", value)], **params)[0]

    def binary_set(self, records: list[tuple[int, bytes, bytes, int]]) -> int:
        """0xB8 set_bulk of (dbidx, key, value, xt) records; the hit count."""
        self.sock.sendall(encode_set_bulk(records))
        return decode_count_reply(self.recv_exact(5), MAGIC_SET_BULK)[0]

    def binary_get(self, records: list[tuple[int, bytes]]) -> list[tuple[int, bytes, bytes, int]]:
        """0xBA get_bulk of (dbidx, key) records; the records found."""
        self.sock.sendall(encode_get_bulk(records))
        while True:
            try:
                found, used = decode_get_bulk_reply(self.buf)
                self.buf = self.buf[used:]
                return found
            except Incomplete:
                self._fill()

    def replication(self, ts: int, sid: int, flags: int = 0) -> None:
        """Send the 0xB1 handshake."""
        self.sock.sendall(struct.pack(">BIQH", 0xB1, flags, ts, sid))
