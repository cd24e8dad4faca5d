"""Blocking socket I/O for the server's connections and listeners.

Shared by the server's sessions (:mod:`.session`), the memcached plug-in
(:mod:`.frontends.memcached`), both served by :mod:`.thserv`, and the replication slave
(:mod:`.frontends.slave`); the bytes themselves are encoded and decoded by
:mod:`ktcluster.protocol`.

Timeouts are ktserver's: the socket timeout (``-tout``) bounds every read *inside* a
request; between requests a connection waits in :mod:`.thserv`'s poller, without a
timeout.  Large reads are collected in pieces and joined once, never preallocated, so
memory follows what actually arrives (a client announcing 256 MiB and sending nothing
costs nothing).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

from ..protocol.framing import Incomplete
from ..protocol.kcnum import atoi

__all__ = ["BufferedSocket", "open_listener", "RECV_SIZE"]

#: bytes asked of one recv()
RECV_SIZE = 65536
#: the most asked of one recv() while collecting a large block
_RECV_MAX = 1 << 20


class BufferedSocket:
    """A connected socket and the bytes read from it: ``buf[pos:]`` is unread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def begin_request(self) -> bool:
        """Make the first byte of the next request available.  The poller saw bytes (or
        the end) arrive, so one read gets them; False when the connection is done."""
        return self.pos < len(self.buf) or self.fill()

    def peer_closed(self) -> bool:
        """Whether the peer has closed the connection (or it failed), found without
        waiting and without consuming what the peer sent."""
        try:
            if not select.select([self.sock], [], [], 0)[0]:
                return False
            return not self.sock.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def fill(self) -> bool:
        """Read more bytes (waiting at most the socket timeout); False on EOF, timeout or
        error."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError:
            return False
        if not data:
            return False
        if self.pos:
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        else:
            self.buf += data
        return True

    def ensure(self, size: int) -> bool:
        """Make ``size`` unread bytes available (False if they never come)."""
        have = len(self.buf) - self.pos
        if have >= size:
            return True
        parts = [self.buf[self.pos:]]
        recv = self.sock.recv
        try:
            while have < size:
                data = recv(max(RECV_SIZE, min(size - have, _RECV_MAX)))
                if not data:
                    break
                parts.append(data)
                have += len(data)
        except OSError:
            pass
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= size

    def read(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes, or None if the connection fails first."""
        pos = self.pos
        end = pos + size
        if end > len(self.buf):
            if not self.ensure(size):
                return None
            pos, end = 0, size
        self.pos = end
        return self.buf[pos:end]

    def decode(self, decoder: Callable[[bytes, int], tuple[Any, ...]]) -> Any:
        """Run a :mod:`ktcluster.protocol` decoder at the read position --
        ``decoder(buf, pos)``, which returns its results with the new position last and
        raises Incomplete for want of bytes -- reading as much as it needs.  Its result
        (a tuple if several), or None when the connection fails first; a ProtocolError
        it raises propagates."""
        while True:
            try:
                result = decoder(self.buf, self.pos)
            except Incomplete as exc:
                if not self.ensure(exc.needed - self.pos):
                    return None
                continue
            self.pos = result[-1]
            return result[0] if len(result) == 2 else result[:-1]

    def send(self, data: bytes) -> bool:
        """Send everything; False if the connection failed."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def shutdown(self) -> None:
        """End the connection from another thread: blocked reads return at once."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def invalid_address(host: str, port: int) -> bool:
    """What kt::ServerSocket::open refuses as an "invalid address expression" (ktsocket.cc):
    an address whose first number is 0 (``0.0.0.0``), or a port outside 1..32767.  No
    host ("") binds every address."""
    return bool(host and atoi(host.encode()) < 1) or not 1 <= port <= 32767


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host`` (an IPv4 address, "" = every interface);
    OSError if it cannot bind."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host or "0.0.0.0", port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener
