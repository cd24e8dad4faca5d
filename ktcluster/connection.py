"""One TCP connection to a KT server: the thin I/O layer under the sans-IO protocol.

A :class:`Connection` owns one socket (connected lazily, TCP_NODELAY) and a
reusable receive buffer.  It sends a whole request (a large binary bulk request
may come as pieces, sent as they are encoded) and reads until the protocol
layer's decoder accepts the reply; decoding happens only on complete bytes, so a
decoder error can never leave the stream half-read.  A plain socket blocks with
kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) rather than Python's timeout mode,
which would add a ``poll`` before every send and receive.

Limits (what a slow or hostile server cannot stretch):

* ``timeout`` bounds each request's whole exchange -- sending it and receiving
  the complete reply -- not each send or receive: a server that trickles a valid
  reply byte by byte is cut off at ``timeout`` all the same
  (:class:`~ktcluster.errors.SocketTimeoutError`).  ``connect_timeout`` bounds the
  TCP connect.
* A request may carry the caller's :class:`~ktcluster.deadline.Deadline`:
  the connect and the exchange then also end by it, and a wait it cuts short
  raises :class:`~ktcluster.errors.DeadlineExceeded`.  Before every send and
  receive the socket's timeout becomes what is left, in steps of at most
  :data:`WAIT_STEP` (the kernel fires a long SO_RCVTIMEO late: 5 s ended 0.1-0.25 s
  past it, the timer wheel's granularity; a step ends within a few ms), re-armed
  only when that is shorter by more than :data:`REARM_SLACK`, so the usual request
  makes no extra system call.  A wait ends about 10-20 ms past its limit at most.
* ``max_size`` bounds a reply (default :data:`DEFAULT_MAX_REPLY_SIZE`): a reply
  that declares (Content-Length, a binary record size) or reaches more bytes is a
  :class:`~ktcluster.errors.ProtocolError`, raised before its body is read.
  Nothing is allocated before it arrives: the buffer grows as bytes come, at
  most doubling what has arrived.

Failure rules (what makes it safe to pool):

* Anything that goes wrong midway (a socket error, a timeout, a malformed reply,
  even a ``BaseException`` such as ``gevent.Timeout`` or ``KeyboardInterrupt``)
  marks the connection :attr:`~Connection.broken` and closes it.  A broken
  connection refuses further requests; its owner must drop it.
* Transport errors say whether the request may have reached the server:
  ``request_sent=False`` when the connect failed or the first ``send`` did not
  hand a single byte to the kernel, ``True`` otherwise -- including a reused
  connection that the server closes before answering: whether it closed before
  or after reading the request cannot be told afterwards.  What can be told is a
  close that already happened: :meth:`~Connection.is_alive` (one zero-timeout
  ``poll``) finds it before anything is sent, and the pool checks every
  connection it hands out again that way (a server restart leaves the pool's
  idle connections closed: they are replaced, not used).
* A ``Connection: close`` answer closes the socket after the reply; the next
  request reconnects (that is not an error).

The ``socket`` module is looked up at call time (or given as ``socket_module``),
so connections work with the standard library and under
``gevent.monkey.patch_all()``.  A Connection serves one caller at a time; the
pool hands it out exclusively.
"""

from __future__ import annotations

import _socket
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import EllipsisType, ModuleType, TracebackType
from typing import Any, TypeVar

from .address import format_address
from .concurrency import original
from .deadline import NO_DEADLINE, Deadline
from .errors import DeadlineExceeded, KTConnectionError, KyotoTycoonException, ProtocolError, SocketTimeoutError
from .protocol.binary import DATAMAXSIZ
from .protocol.framing import Incomplete
from .protocol.http import HTTPReply, ReadToEOF, ResponseHead
from .protocol.rpc import decode_answer, encode_call

__all__ = ["Connection", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "DEFAULT_MAX_REPLY_SIZE", "REARM_SLACK",
           "WAIT_STEP", "OWN", "Limit", "Sent", "decode_step", "too_large", "connect_limit", "connect_error",
           "transport_error"]

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0
#: the largest reply accepted by default: one record of KT's largest size (256 MiB, its
#: limit for a value and for a request body) with room for its framing.
DEFAULT_MAX_REPLY_SIZE = DATAMAXSIZ + (1 << 20)
#: a socket timeout is re-armed before a send or receive when the time left is shorter
#: than it by more than this (seconds): how far past its limit a wait may end.
REARM_SLACK = 0.01
#: the longest single wait of a send or receive (seconds); a longer one is made of steps,
#: because the kernel's timers for long socket timeouts are coarse.
WAIT_STEP = 0.25

#: a request's ``timeout`` when it keeps the connection's own
OWN: EllipsisType = ...
#: a request's limit: seconds, None (none), or OWN
Limit = float | None | EllipsisType
#: what :meth:`Connection.send_request` returns: the exchange's end (monotonic, None:
#: none) and whether the caller's deadline set it
Sent = tuple[float | None, bool]

#: size of the receive buffer kept between requests; larger replies grow it temporarily.
_BUFSIZE = 65536

_monotonic = time.monotonic


def _kernel_timeout(timeout: float | None) -> bytes:
    """SO_RCVTIMEO/SO_SNDTIMEO value for ``timeout`` seconds (None: none)."""
    if timeout is None:
        seconds = micros = 0
    else:
        seconds = int(timeout)
        micros = max(1, int((timeout - seconds) * 1e6)) if seconds == 0 else int((timeout - seconds) * 1e6)
    if sys.platform == "win32":
        return struct.pack("@I", seconds * 1000 + micros // 1000)
    return struct.pack("@ll", seconds, micros)


def open_socket(host: str, port: int, limit: float | None, *, socket_module: ModuleType | None = None,
                by_deadline: bool = False) -> Any:
    """A TCP connection to ``host:port`` (TCP_NODELAY), made within ``limit`` seconds, its
    failures as ktcluster errors, all ``request_sent=False``: SocketTimeoutError (or
    DeadlineExceeded when ``by_deadline``: the limit is the caller's deadline), or
    KTConnectionError."""
    mod = socket_module or socket
    address = format_address(host, port)
    try:
        sock = mod.create_connection((host, port), timeout=limit)
    except (TimeoutError, mod.timeout) as exc:
        raise connect_error(exc, address, timed_out=True, by_deadline=by_deadline) from exc
    except OSError as exc:
        raise connect_error(exc, address, timed_out=False) from exc
    try:
        sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_NODELAY, 1)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise KTConnectionError(f"connecting to {address} failed: {exc}", request_sent=False) from exc
        raise
    return sock


class Connection:
    """One keep-alive TCP connection to ``host:port``; see the module docstring.

    ``connect_timeout`` bounds the TCP connect, ``timeout`` each request's whole
    exchange after that (None: no limit).  ``created_at`` and ``last_used`` are
    ``time.monotonic()`` values (the socket's connect time and the end of the
    last complete request); ``generation`` counts (re)connects, so a holder of
    per-connection server state (cursors) can tell that the socket changed.
    ``sent`` and ``received`` count the bytes handed to and read from the socket
    (what an observer's attempt events report, :mod:`ktcluster.observe`).
    """

    __slots__ = ("host", "port", "connect_timeout", "timeout", "broken", "created_at", "last_used",
                 "generation", "_address", "_socket_module", "_sock", "_native", "_poller", "_view", "_host_header",
                 "_applied", "sent", "received", "__weakref__")

    def __init__(self, host: str, port: int, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 timeout: float | None = DEFAULT_TIMEOUT, socket_module: ModuleType | None = None) -> None:
        self.host = host
        self.port = int(port)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.broken = False
        self.created_at = self.last_used = time.monotonic()
        self.generation = 0
        self._socket_module = socket_module
        self._sock: Any = None
        self._native = False
        self._poller: Any = None
        self._view = memoryview(bytearray(_BUFSIZE))
        self._address = format_address(host, self.port)
        self._host_header = self._address.encode()
        self._applied: float | None = None  # the socket's current send/receive timeout
        self.sent = self.received = 0

    def __repr__(self) -> str:
        state = "broken" if self.broken else ("open" if self._sock is not None else "idle")
        return f"<Connection {self.address} {state}>"

    @property
    def address(self) -> str:
        """``"host:port"`` (``"[v6]:port"``)."""
        return self._address

    @property
    def host_header(self) -> bytes:
        """The value to send in the Host header (KT ignores it, HTTP/1.1 requires it)."""
        return self._host_header

    @property
    def connected(self) -> bool:
        """True while a socket is open."""
        return self._sock is not None

    # -- socket management ------------------------------------------------------------------------

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self, timeout: float | None = None) -> None:
        """Open the socket now (requests do it lazily).  ``timeout`` caps ``connect_timeout``
        for this connect (a caller with little time left)."""
        if self.broken:
            raise KTConnectionError(f"connection to {self.address} is broken and cannot be reused",
                                    request_sent=False)
        if self._sock is None:
            limit = self.connect_timeout
            if timeout is not None and (limit is None or timeout < limit):
                limit = timeout
            self._connect(limit)

    def _connect(self, limit: float | None, by_deadline: bool = False) -> Any:
        mod = self._socket_module or socket
        try:
            sock = open_socket(self.host, self.port, limit, socket_module=mod, by_deadline=by_deadline)
        except BaseException:
            self.broken = True
            raise
        try:
            # A native socket in Python's timeout mode polls before every send and recv; a
            # blocking one with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) saves those calls.
            # Other sockets (gevent's) keep their own timeout handling.
            self._native = isinstance(sock, _socket.socket) and (self.timeout is None or self.timeout > 0)
            if self._native:
                sock.settimeout(None)
            self._apply(sock, None if self.timeout is None else min(self.timeout, WAIT_STEP))
            poll = original("select", "poll")
            if poll is not None:
                self._poller = poll()
                self._poller.register(sock.fileno(), select.POLLIN)
        except BaseException:
            sock.close()
            self.broken = True
            raise
        self._sock = sock
        self.generation += 1
        self.created_at = self.last_used = time.monotonic()
        return sock

    def set_timeout(self, timeout: float | None) -> None:
        """Change the limit of each exchange (e.g. around a request expected to block)."""
        self.timeout = timeout
        if self._sock is not None:
            if self._native and timeout is not None and timeout <= 0:
                self._native = False
            step = None if timeout is None else min(timeout, WAIT_STEP)
            if step != self._applied:
                self._apply(self._sock, step)

    def _apply(self, sock: Any, timeout: float | None) -> None:
        """Set the socket's send/receive timeout."""
        if self._native:
            value = _kernel_timeout(timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        else:
            sock.settimeout(timeout)
        self._applied = timeout

    def _arm(self, sock: Any, end: float | None) -> None:
        """Before a send or receive: the socket's timeout becomes the time left until
        ``end``, at most WAIT_STEP (None: no limit); TimeoutError when none is left."""
        applied = self._applied
        if end is None:
            if applied is not None:
                self._apply(sock, None)
            return
        left = end - _monotonic()
        if left > WAIT_STEP:  # the usual case: more than a step left (a step armed already)
            if applied != WAIT_STEP:
                self._apply(sock, WAIT_STEP)
            return
        if left <= 0:
            raise TimeoutError("no time left")
        if applied is None or left > applied or applied - left > REARM_SLACK:
            self._apply(sock, left)

    def close(self) -> None:
        """Close the socket.  The connection may connect again later unless it is broken."""
        sock, self._sock = self._sock, None
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _fail(self) -> None:
        self.broken = True
        self.close()

    def is_alive(self) -> bool:
        """Cheap idle check before reusing the connection: False (and the connection is
        broken) when the peer closed or reset it, or sent bytes nobody asked for.  An
        unconnected, unbroken connection counts as alive.

        One zero-timeout ``poll`` (a non-blocking MSG_PEEK where there is no poll).  A
        close seen here happened before anything was sent, so a request that finds it
        provably never reached the server."""
        if self.broken:
            return False
        sock = self._sock
        if sock is None:
            return True
        poller = self._poller
        if poller is not None:
            try:
                ready = poller.poll(0)
            except OSError:
                ready = True
            except BaseException:
                self._fail()
                raise
            if not ready:
                return True
            self._fail()  # EOF, a reset, or unsolicited bytes: the stream is not usable
            return False
        try:
            self._peek(sock)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._fail()
            return False
        except BaseException:
            self._fail()
            raise
        # EOF, or unsolicited bytes: either way the stream is not usable.
        self._fail()
        return False

    # -- requests ---------------------------------------------------------------------------------

    def request_http(self, data: bytes, head: bool = False, deadline: Deadline = NO_DEADLINE,
                     max_size: int = DEFAULT_MAX_REPLY_SIZE, timeout: Limit = OWN) -> tuple[ResponseHead, bytes]:
        """Send one HTTP request and read its response: (head, body).  ``head`` is True for
        a HEAD request (the answer has no body whatever its Content-Length says).
        ``deadline`` and ``max_size``: see the module docstring; ``timeout``: this
        exchange's limit instead of the connection's (:data:`OWN`)."""
        return self.read_http(self.send_request(data, deadline, timeout), head, max_size)

    def request_binary(self, data: bytes | Iterable[bytes], decode: Callable[[bytes], tuple[T, int]],
                       noreply: bool = False, deadline: Deadline = NO_DEADLINE,
                       max_size: int = DEFAULT_MAX_REPLY_SIZE, timeout: Limit = OWN) -> T:
        """Send one binary-protocol request and decode its reply with a
        ``protocol.binary`` decoder; with ``noreply`` nothing is read and None comes back.

        ``data`` may also be an iterable of pieces (``protocol.binary.*_chunks``): each is
        sent as soon as it is produced, so the server works on the first records while
        the rest are encoded.  The pieces must not fail midway (encode and check the
        records first): a request cut short breaks the connection."""
        sent = self.send_request(data, deadline, timeout)  # positional: the hot path
        if noreply:
            self.last_used = time.monotonic()
            return None  # type: ignore[return-value]
        return self.read_reply(sent, decode, max_size)

    # -- an exchange in two halves (a caller with several connections in flight) -------------------

    def send_request(self, data: bytes | Iterable[bytes], deadline: Deadline = NO_DEADLINE,
                     timeout: Limit = OWN) -> Sent:
        """The first half of an exchange: connect if needed and send ``data``.  Read the
        answer with :meth:`read_reply` or :meth:`read_http`, passing what this returns
        (when the exchange must end: its limit and the deadline).  Between the two halves
        the caller may wait for :meth:`fileno` to become readable; nothing is buffered
        here that a ``poll`` would not see."""
        sock = self._sock
        if sock is None or self.broken:
            sock = self._connect(*connect_limit(self.address, self.broken, deadline, self.connect_timeout))
        end, by_deadline = sent = deadline.end(self.timeout if timeout is OWN else timeout)
        if isinstance(data, bytes):
            self._send_piece(sock, data, end, by_deadline, True)
        else:
            self._send_pieces(sock, data, end, by_deadline)
        return sent

    def read_reply(self, sent: Sent, decode: Callable[[bytes], tuple[T, int]],
                   max_size: int = DEFAULT_MAX_REPLY_SIZE) -> T:
        """The second half of an exchange: read and decode the reply to the request that
        :meth:`send_request` sent (a failure breaks the connection)."""
        end, by_deadline = sent
        try:
            sock = self._sock
            view = self._view
            size = len(view)
            filled = 0
            needed = 1
            parsed_at = 0  # bytes held at the last failed decode attempt
            while True:
                if filled == size:
                    # A large reply: continue in a bigger private buffer (ours stays small), at most
                    # twice what arrived, no larger than the reply needs or may be.
                    size = min(2 * size, needed if needed > filled else 2 * size, max_size + 1)
                    grown = memoryview(bytearray(size))
                    grown[:filled] = view[:filled]
                    view = grown
                self._arm(sock, end)
                try:
                    n = sock.recv_into(view[filled:])
                except (TimeoutError, BlockingIOError):
                    if end is None or end <= _monotonic():
                        raise
                    continue  # one step of a longer wait ended: wait on
                if not n:
                    at_eof = getattr(decode, "at_eof", None)
                    if at_eof is not None and filled:
                        data = bytes(view[:filled])
                        del view
                        result = at_eof(data)
                        break
                    raise KTConnectionError(
                        f"{self.address} closed the connection "
                        + ("before replying" if not filled else f"after {filled} bytes of its reply"))
                filled += n
                self.received += n
                if filled > max_size:
                    raise too_large(self.address, f"sent more than {max_size} bytes", max_size)
                if filled >= needed and (filled >= 2 * parsed_at or not self._more_pending(sock)):
                    data = bytes(view[:filled])
                    private = view is not self._view
                    if private:
                        view = self._view  # a large reply: only its copy is held while it is decoded
                    done, result, needed = decode_step(decode, data, max_size, self._address)
                    if done:
                        break
                    parsed_at = filled
                    if private:
                        view = memoryview(bytearray(size))
                        view[:filled] = data
                    del data
        except BaseException as exc:
            self._fail()
            err = self._transport_error(exc, "receiving from", request_sent=True, by_deadline=by_deadline)
            if err is exc:
                raise
            raise err from exc
        self.last_used = _monotonic()
        return result

    def read_http(self, sent: Sent, head: bool = False,
                  max_size: int = DEFAULT_MAX_REPLY_SIZE) -> tuple[ResponseHead, bytes]:
        """:meth:`read_reply` for an HTTP request: ``(head, body)``."""
        head_obj, body = self.read_reply(sent, HTTPReply(head), max_size)
        if not head_obj.keep_alive:
            self.close()
        return head_obj, body

    def fileno(self) -> int:
        """The socket's descriptor (-1 when not connected)."""
        sock = self._sock
        return -1 if sock is None else sock.fileno()

    def call(self, procedure: bytes | str, params: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]] = (),
             *, query: bytes = b"", deadline: Deadline = NO_DEADLINE,
             max_size: int = DEFAULT_MAX_REPLY_SIZE) -> dict[bytes, bytes]:
        """One TSV-RPC call: the output map, or the typed error for the server's status."""
        if isinstance(procedure, str):
            procedure = procedure.encode()
        pairs = list(params.items() if isinstance(params, Mapping) else params)
        head, body = self.request_http(encode_call(procedure, pairs, self._host_header, query),
                                       deadline=deadline, max_size=max_size)
        return decode_answer(head, body, max_size=max_size)

    # -- I/O core ---------------------------------------------------------------------------------

    def _send_pieces(self, sock: Any, data: Iterable[bytes], end: float | None, by_deadline: bool) -> None:
        """Hand the request's pieces to the kernel by ``end``, each as it is produced.  Pieces
        that fail before the first one was sent leave the connection usable and raise as they are."""
        first = True
        try:
            for piece in data:
                self._send_piece(sock, piece, end, by_deadline, first)
                first = False
        except BaseException:
            if not first:
                self._fail()  # the request was cut short: the stream is out of sync
            raise

    def _send_piece(self, sock: Any, data: bytes, end: float | None, by_deadline: bool, first: bool) -> None:
        """Send all of ``data`` by ``end``, waiting (in steps) for room in the socket's buffer;
        an error before a byte of the request left says request_sent=False."""
        sent = 0
        size = len(data)
        rest: bytes | memoryview = data
        try:
            while True:
                self._arm(sock, end)
                try:
                    n = sock.send(rest)
                except (TimeoutError, BlockingIOError):
                    if end is None or end <= _monotonic():
                        raise
                    continue  # one step of a longer wait ended: wait on
                self.sent += n
                sent += n
                if sent == size:
                    return
                rest = memoryview(data)[sent:]
        except BaseException as exc:
            self._fail()
            err = self._transport_error(exc, "sending to", request_sent=not first or sent > 0,
                                        by_deadline=by_deadline)
            if err is exc:
                raise
            raise err from exc

    def _more_pending(self, sock: Any) -> bool:
        """Are more reply bytes already waiting?  Used to avoid re-decoding a large reply after
        every small recv (the decoder restarts from the first byte each time)."""
        try:
            return bool(self._peek(sock))
        except (BlockingIOError, InterruptedError):
            return False

    def _peek(self, sock: Any) -> bytes:
        """One byte the peer sent, left in the socket; BlockingIOError when there is none."""
        if self._native:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        sock.settimeout(0.0)
        try:
            return sock.recv(1, (self._socket_module or socket).MSG_PEEK)
        finally:
            sock.settimeout(self._applied)

    def _transport_error(self, exc: BaseException, what: str, *, request_sent: bool,
                         by_deadline: bool = False) -> BaseException:
        mod = self._socket_module or socket
        timed_out = isinstance(exc, (TimeoutError, mod.timeout)) or (self._native and isinstance(exc, BlockingIOError))
        return transport_error(exc, what, self.address, self.timeout, timed_out=timed_out,
                               request_sent=request_sent, by_deadline=by_deadline)


# -- what every front end's connection shares (ktcluster.aio.connection too) -----------------------


def decode_step(decode: Callable[[bytes], tuple[T, int]], data: bytes, max_size: int,
                address: str) -> tuple[bool, Any, int]:
    """One attempt to decode the reply from the bytes received so far: ``(True, reply, 0)``,
    or ``(False, None, needed)`` with the total length to wait for (``sys.maxsize``: the
    reply ends at EOF).  ProtocolError when the reply declares more than ``max_size`` bytes
    or is followed by bytes nobody asked for; a decoder's own error passes through."""
    filled = len(data)
    try:
        result, used = decode(data)
    except ReadToEOF:
        return False, None, sys.maxsize  # complete at EOF only (at_eof)
    except Incomplete as inc:
        needed = max(inc.needed, filled + 1)
        if needed > max_size:
            raise too_large(address, f"declares a reply of at least {needed} bytes", max_size) from None
        return False, None, needed
    if used != filled:
        raise ProtocolError(f"{filled - used} unexpected bytes after the reply from {address}")
    return True, result, 0


def too_large(address: str, what: str, max_size: int) -> ProtocolError:
    return ProtocolError(f"{address} {what}: over the limit of {max_size} bytes (max_reply_size)")


def connect_limit(address: str, broken: bool, deadline: Deadline, connect_timeout: float | None
                  ) -> tuple[float | None, bool]:
    """Before a request connects: the connect's limit and whether the deadline is that limit;
    KTConnectionError for a broken connection, DeadlineExceeded when the deadline passed."""
    if broken:
        raise KTConnectionError(f"connection to {address} is broken and cannot be reused", request_sent=False)
    limit, bound = deadline.cap(connect_timeout)
    if limit is not None and limit <= 0:
        raise DeadlineExceeded(f"the call's deadline passed before connecting to {address}", request_sent=False)
    return limit, bound


def connect_error(exc: BaseException, address: str, *, timed_out: bool, by_deadline: bool = False
                  ) -> KyotoTycoonException:
    """The error of a connect that failed (``timed_out``: its limit fired), request_sent=False:
    DeadlineExceeded when the limit was the caller's deadline, else SocketTimeoutError, or
    KTConnectionError."""
    if timed_out:
        if by_deadline:
            return DeadlineExceeded(f"the call's deadline passed while connecting to {address}",
                                    request_sent=False, node_wait=True)
        return SocketTimeoutError(f"connecting to {address} timed out", request_sent=False)
    return KTConnectionError(f"connecting to {address} failed: {exc}", request_sent=False)


def transport_error(exc: BaseException, what: str, address: str, timeout: float | None, *, timed_out: bool,
                    request_sent: bool, by_deadline: bool = False) -> BaseException:
    """The ktcluster error for a low-level failure ``what``-ing ``address`` (``timed_out``: a
    wait's limit fired); other BaseExceptions (an interruption, a cancellation) pass
    through.  A timeout is the caller's DeadlineExceeded when its deadline was the limit."""
    if isinstance(exc, KyotoTycoonException):
        return exc
    if timed_out:
        if by_deadline:
            return DeadlineExceeded(f"the call's deadline passed while {what} {address}",
                                    request_sent=request_sent, node_wait=True)
        return SocketTimeoutError(f"{what} {address} timed out (the exchange's limit is {timeout} s)",
                                  request_sent=request_sent)
    if isinstance(exc, OSError):
        return KTConnectionError(f"{what} {address} failed: {exc}", request_sent=request_sent)
    return exc
