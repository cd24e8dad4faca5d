"""One replication connection to a master: connect, handshake, then read its messages.

:class:`Link` sends the 15-byte handshake, checks the master's accept byte, and then
hands back the decoded items of the stream (:func:`~ktcluster.protocol.replication.decode_log_stream`),
acknowledging every heartbeat.  Each message must arrive whole within ``timeout``
(a master trickling a record is cut off) and be at most ``max_size`` bytes (a larger
one is a ProtocolError before its bytes are read).  Errors are ktcluster's transport
errors; :meth:`Link.close` may be called from another thread and ends a blocked read.
"""

from __future__ import annotations

import contextlib
import socket
import time

from ..address import format_address
from ..connection import open_socket
from ..errors import KTConnectionError, SocketTimeoutError
from ..protocol.framing import Incomplete
from ..protocol.replication import (
    ACK,
    LogRecord,
    decode_accept,
    decode_log_stream,
    decode_stream_message,
    encode_handshake,
)

__all__ = ["Link", "CHUNK"]

#: the most bytes read at once (a reader hands on what one read completes)
CHUNK = 256 * 1024


def _bytes_needed(buf: bytes, max_size: int) -> int:
    """How many bytes the first message in ``buf`` needs (``buf`` holds no complete message)."""
    try:
        decode_stream_message(buf, 0, max_size)
    except Incomplete as inc:
        return inc.needed
    raise AssertionError("a complete message was left undecoded")


class Link:
    """One replication connection: connect, handshake, then read messages (acknowledging
    heartbeats), each within ``timeout`` and ``max_size``."""

    __slots__ = ("address", "_sock", "_buf", "_timeout", "_max_size")

    def __init__(self, host: str, port: int, timeout: float, max_size: int) -> None:
        self.address = format_address(host, port)
        self._buf = b""
        self._timeout = timeout
        self._max_size = max_size
        self._sock = open_socket(host, port, timeout)

    def handshake(self, ts: int, sid: int, flags: int) -> None:
        """Ask for the entries after ``ts``; raise unless the master accepts."""
        self._send(encode_handshake(ts, sid, flags))
        end = time.monotonic() + self._timeout
        while not self._buf:
            self._buf = self._recv(end)
        used = decode_accept(self._buf)
        self._buf = self._buf[used:]

    def read(self) -> list[LogRecord | int]:
        """The next items of :func:`decode_log_stream` (at least one, complete within the
        timeout); heartbeats are acknowledged."""
        buf = self._buf
        end = time.monotonic() + self._timeout
        while True:
            items, pos, heartbeats = decode_log_stream(buf, 0, self._max_size)
            if items:
                self._buf = buf[pos:]
                if heartbeats:
                    self._send(ACK * heartbeats)
                return items
            need = _bytes_needed(buf, self._max_size)
            chunks = [buf]
            have = len(buf)
            while have < need:
                chunk = self._recv(end)
                chunks.append(chunk)
                have += len(chunk)
            buf = b"".join(chunks)

    def _recv(self, end: float) -> bytes:
        left = end - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            data = self._sock.recv(CHUNK)
        except TimeoutError as exc:
            raise SocketTimeoutError(f"no complete message from {self.address} within {self._timeout} s") from exc
        except OSError as exc:
            raise KTConnectionError(f"reading from {self.address} failed: {exc}") from exc
        if not data:
            raise KTConnectionError(f"{self.address} closed the replication stream")
        return data

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise SocketTimeoutError(f"sending to {self.address} timed out") from exc
        except OSError as exc:
            raise KTConnectionError(f"sending to {self.address} failed: {exc}") from exc

    def close(self) -> None:
        """Close the socket; a read blocked in another thread returns at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
