"""One TCP connection to a KT server for asyncio: the thin I/O layer under the sans-IO protocol.

:class:`AsyncConnection` is :class:`ktcluster.connection.Connection` for an event loop:
the same requests (``request_http``, ``request_binary``), the same limits and the same
failure rules, which that module's docstring states; only how bytes move differs.

* The socket is an asyncio transport with a small protocol (:class:`_Stream`) that
  appends what arrives to a buffer and wakes the one task reading.  The reader
  decodes only complete bytes (:func:`ktcluster.connection.decode_step`: the
  decoders of :mod:`ktcluster.protocol` either answer or say how many bytes they
  need), so a decoder never sees a half reply and a reply never outgrows
  ``max_size``: reading pauses as soon as the buffer holds more than that (and
  between requests, at the first unsolicited byte).
* ``timeout`` (the connection's, or the request's) and the call's
  :class:`~ktcluster.deadline.Deadline` bound the whole exchange -- sending the
  request and receiving all of its reply -- with one ``asyncio.timeout_at``: a server
  that trickles its reply is cut off all the same
  (:class:`~ktcluster.errors.SocketTimeoutError`, or
  :class:`~ktcluster.errors.DeadlineExceeded` when the deadline was the limit).
  ``connect_timeout`` (capped by the deadline) bounds the connect.
* Cancellation: ``asyncio.CancelledError`` (a task cancelled, an enclosing
  ``asyncio.timeout``) at any await -- connecting, sending, receiving -- marks the
  connection broken and aborts it, then propagates unchanged: a request may be half
  sent or a reply half read, so the stream is never used again.  So does every other
  failure midway (``request_sent`` says whether a byte of the request left).
* :meth:`AsyncConnection.is_alive` checks an idle connection before reuse without
  waiting: a close or unsolicited bytes the loop has already seen, or one
  zero-timeout ``poll`` of the socket for what it has not yet read.

A connection belongs to the event loop that opened it; on another loop it is not
alive (the pool then replaces it).  It serves one task at a time; the pool
(:mod:`ktcluster.aio.pool`) hands it out exclusively.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from ..address import format_address
from ..connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_REPLY_SIZE,
    DEFAULT_TIMEOUT,
    OWN,
    Limit,
    connect_error,
    connect_limit,
    decode_step,
    too_large,
    transport_error,
)
from ..deadline import NO_DEADLINE, Deadline
from ..errors import KTConnectionError
from ..protocol.http import HTTPReply, ResponseHead

__all__ = ["AsyncConnection"]

T = TypeVar("T")

_monotonic = time.monotonic
# asyncio.timeout/timeout_at are Python 3.11's (ktcluster.aio refuses to import on 3.10)
_timeout: Callable[[float | None], AbstractAsyncContextManager[None]] = asyncio.timeout  # type: ignore[attr-defined,unused-ignore]
_timeout_at: Callable[[float | None], AbstractAsyncContextManager[None]] = asyncio.timeout_at  # type: ignore[attr-defined,unused-ignore]


class _Stream(asyncio.Protocol):
    """The bytes of one connection as they arrive, for the one task that reads them."""

    __slots__ = ("transport", "buffer", "limit", "closed", "error", "_waiter", "_paused", "_drained")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        #: how many bytes may be buffered before reading pauses (0 between requests)
        self.limit = 0
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False       # the peer does not read: our writes wait
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > self.limit:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> None:
        """Wait until more bytes arrive or the connection closes."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        """Wait until the transport's send buffer has room (it is paused)."""
        if self._paused and not self.closed:
            drained = self._drained = asyncio.get_running_loop().create_future()
            await drained

    def read_from(self, limit: int) -> None:
        """Allow up to ``limit`` buffered bytes (a request's reply is expected)."""
        self.limit = limit
        if len(self.buffer) <= limit and self.transport is not None:
            self.transport.resume_reading()


class AsyncConnection:
    """One keep-alive TCP connection to ``host:port`` on an event loop; see the module
    docstring.  The attributes are :class:`~ktcluster.connection.Connection`'s."""

    __slots__ = ("host", "port", "connect_timeout", "timeout", "broken", "created_at", "last_used",
                 "generation", "_stream", "_loop", "_poller", "_address", "__weakref__")

    def __init__(self, host: str, port: int, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 timeout: float | None = DEFAULT_TIMEOUT, socket_module: Any = None) -> None:
        self.host = host
        self.port = int(port)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.broken = False
        self.created_at = self.last_used = _monotonic()
        self.generation = 0
        self._stream: _Stream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Any = None
        self._address = format_address(host, self.port)

    def __repr__(self) -> str:
        state = "broken" if self.broken else ("open" if self._stream is not None else "idle")
        return f"<AsyncConnection {self._address} {state}>"

    @property
    def address(self) -> str:
        return self._address

    @property
    def connected(self) -> bool:
        return self._stream is not None

    # -- the socket -------------------------------------------------------------------------------

    async def connect(self, timeout: float | None = None) -> None:
        """Open the socket now (requests do it lazily); ``timeout`` caps ``connect_timeout``."""
        await self._connect(Deadline.after(timeout))

    async def _connect(self, deadline: Deadline) -> _Stream:
        if self._stream is not None and not self.broken:
            return self._stream
        limit, bound = connect_limit(self._address, self.broken, deadline, self.connect_timeout)
        loop = asyncio.get_running_loop()
        try:
            async with _timeout(limit):
                _, stream = await loop.create_connection(_Stream, self.host, self.port)
        except BaseException as exc:
            self.broken = True
            if isinstance(exc, TimeoutError):
                raise connect_error(exc, self._address, timed_out=True, by_deadline=bound) from exc
            if isinstance(exc, OSError):
                raise connect_error(exc, self._address, timed_out=False) from exc
            raise
        self._stream = stream
        self._loop = loop
        sock = stream.transport.get_extra_info("socket")  # type: ignore[union-attr]
        self._poller = select.poll() if hasattr(select, "poll") and sock is not None else None
        if self._poller is not None:
            self._poller.register(sock.fileno(), select.POLLIN)
        self.generation += 1
        self.created_at = self.last_used = _monotonic()
        return stream

    def close(self) -> None:
        """Close the socket (a broken connection's at once, dropping what is unsent)."""
        stream, self._stream = self._stream, None
        self._poller = None
        if stream is not None and stream.transport is not None:
            try:
                if self.broken:
                    stream.transport.abort()
                else:
                    stream.transport.close()
            except RuntimeError:
                pass  # its loop is closed: the transport's finalizer closes the socket

    def _fail(self) -> None:
        self.broken = True
        self.close()

    def is_alive(self) -> bool:
        """False (and the connection is broken) when the peer closed it or sent bytes nobody
        asked for, or when it belongs to another event loop; see the module docstring."""
        if self.broken:
            return False
        stream = self._stream
        if stream is None:
            return True
        alive = not stream.closed and not stream.buffer
        if alive:
            try:
                alive = self._loop is asyncio.get_running_loop()
            except RuntimeError:
                alive = False
        if alive and self._poller is not None:
            try:
                alive = not self._poller.poll(0)
            except OSError:
                alive = False
        if not alive:
            self._fail()
        return alive

    # -- requests ---------------------------------------------------------------------------------

    async def request_http(self, data: bytes, *, head: bool = False, deadline: Deadline = NO_DEADLINE,
                           max_size: int = DEFAULT_MAX_REPLY_SIZE,
                           timeout: Limit = OWN) -> tuple[ResponseHead, bytes]:
        """Send one HTTP request and read its response: ``(head, body)``; see
        :meth:`Connection.request_http <ktcluster.connection.Connection.request_http>`."""
        head_obj, body = await self._exchange(data, HTTPReply(head), deadline, max_size, timeout)
        if not head_obj.keep_alive:
            self.close()
        return head_obj, body

    async def request_binary(self, data: bytes | Iterable[bytes], decode: Callable[[bytes], tuple[T, int]], *,
                             noreply: bool = False, deadline: Deadline = NO_DEADLINE,
                             max_size: int = DEFAULT_MAX_REPLY_SIZE, timeout: Limit = OWN) -> T:
        """Send one binary-protocol request and decode its reply; see
        :meth:`Connection.request_binary <ktcluster.connection.Connection.request_binary>`."""
        return await self._exchange(data, None if noreply else decode, deadline, max_size, timeout)

    async def _exchange(self, data: bytes | Iterable[bytes], decode: Callable[[bytes], tuple[T, int]] | None,
                        deadline: Deadline, max_size: int, timeout: Limit) -> T:
        # A request in pieces: the first is produced here, so pieces that fail before any
        # was sent raise as they are and leave the connection usable.
        rest: Iterable[bytes] = ()
        if not isinstance(data, bytes):
            rest = iter(data)
            data = next(rest, b"")
        stream = await self._connect(deadline)
        end, by_deadline = deadline.end(self.timeout if timeout is OWN else timeout)
        loop = self._loop
        transport = stream.transport
        sent = False
        try:
            async with _timeout_at(None if end is None else loop.time() + (end - _monotonic())):  # type: ignore[union-attr]
                if stream.closed or transport is None:
                    raise KTConnectionError(f"{self._address} closed the connection", request_sent=False)
                transport.write(data)
                sent = True
                for piece in rest:
                    await stream.drain()
                    transport.write(piece)
                await stream.drain()
                result = None if decode is None else await self._receive(stream, decode, max_size)
        except BaseException as exc:
            self._fail()
            err = transport_error(exc, "receiving from" if sent else "sending to", self._address, self.timeout,
                                  timed_out=isinstance(exc, TimeoutError), request_sent=sent,
                                  by_deadline=by_deadline)
            if err is exc:
                raise
            raise err from exc
        self.last_used = _monotonic()
        return result  # type: ignore[return-value]

    async def _receive(self, stream: _Stream, decode: Callable[[bytes], tuple[T, int]], max_size: int) -> T:
        buffer = stream.buffer
        stream.read_from(max_size)
        needed = 1
        parsed_at = 0  # bytes held at the last failed decode attempt
        try:
            while True:
                filled = len(buffer)
                if filled > max_size:
                    raise too_large(self._address, f"sent more than {max_size} bytes", max_size)
                if filled >= needed and (filled >= 2 * parsed_at or stream.closed or not self._more_pending()):
                    done, result, needed = decode_step(decode, bytes(buffer), max_size, self._address)
                    if done:
                        del buffer[:]
                        return result
                    parsed_at = filled
                if stream.closed:
                    at_eof = getattr(decode, "at_eof", None)
                    if at_eof is not None and filled:
                        data = bytes(buffer)
                        del buffer[:]
                        return at_eof(data)
                    raise KTConnectionError(
                        f"{self._address} closed the connection "
                        + ("before replying" if not filled else f"after {filled} bytes of its reply"))
                await stream.more()
        finally:
            stream.read_from(0)

    def _more_pending(self) -> bool:
        """Are more reply bytes waiting in the socket?  (Not to re-decode a large reply
        after every small read: the decoder restarts from the first byte each time.)"""
        try:
            return self._poller is not None and bool(self._poller.poll(0))
        except OSError:
            return False
