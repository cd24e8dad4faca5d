"""``KyotoTycoon``: the client for one KT server, a drop-in for python-kyototycoon-ng 0.7.5.

Change ``from kyototycoon import ...`` to ``from ktcluster import ...``: the class,
constructor, method names, arguments, defaults, return values and exception
root (:class:`~ktcluster.errors.KyotoTycoonException`) are ng's.  Errors are
subclasses of it that say what happened (and carry the server's text and status);
where ng raised ValueError, ktcluster raises ArgumentError, which is both.

Differences from python-kyototycoon-ng 0.7.5, all where ng is broken or silent:

* Answers the server encodes in Base64 (binary-looking or >255-byte values, e.g.
  most pickles in get_bulk) decode; ng crashes on Python >= 3.9 (decodestring).
* Keys may be bytes or str with any content (TAB, LF, NUL, non-UTF-8, empty, and
  long keys, which go over RPC instead of REST); ng only took UTF-8-encodable str.
  ``Cursor.jump("")`` jumps to the empty key; ng treated "" like None (first record).
* ``expire`` is measured on the server's clock (ng added the client's clock for
  REST writes); ``increment``/``increment_double`` honour ``expire`` and take
  ``orig`` (ng ignored both); ``increment_double`` sends full precision (ng: %f);
  ``expire=0`` means "at the end of this second" everywhere (ng's cas and
  cur_set_value read 0 as "never").  See :mod:`ktcluster.expiry`.
* ``replace`` and ``remove`` return False only when the record is missing; other
  failures (bad DB, server error) raise instead of returning False.
* ``append`` with pickle/JSON/custom packers retries its cas when the record
  changes meanwhile (ng raised) and reads from the given ``db`` (ng read DB 0);
  with the bytes/string packers the server appends (same result, one round trip).
* ``match_*`` keep the server's order (DB order; nearest first for similar);
  ng returned them sorted by encoded key.
* ``Cursor.get`` returns ``(None, None)`` on an invalid cursor, as ng intended
  (it tested for 404; KT answers 450, so ng raised).  Cursors hold their own
  connection, so concurrent calls cannot move them; switching ``db`` in
  jump/jump_back uses a new server cursor (KT would silently stay on the old DB).
* ``get_int`` on a missing or non-8-byte record raises LogicalInconsistencyError
  (ng: KyotoTycoonException, or struct.error).
* Binary mode resolves DB names to indexes (ng could only use indexes there).
* Bulk calls take a collection of keys (set_bulk a mapping): one str or bytes raises
  ArgumentError (ng took its characters for keys: ``remove_bulk("ab")`` removed "a"
  and "b").  ``open`` refuses a bad port or timeout at once (ng failed on first use).
* One instance is safe to share between threads and greenlets (ng's was not).

How requests travel (``binary=False``, the default):

* get / get_int / check / remove / set, add, replace without expiry: KT's REST
  interface (the value is the raw HTTP body: the cheapest HTTP path);
* everything else: TSV-RPC (``POST /rpc/NAME``), bodies raw when they can be and
  Base64 otherwise, answers decoded by their ``colenc`` (B, U and Q);
* with ``binary=True``: get/set/remove and the bulk forms use the binary
  protocol (0xBA/0xB8/0xB9), play_script uses 0xB4, and the rest raises
  NotImplementedError as in ng.

One instance is safe to share between threads and greenlets: every call checks
a connection out of a bounded :class:`~ktcluster.pool.ConnectionPool`.  A
:class:`Cursor` holds its own connection (server cursors live on a connection).

Views: :meth:`KyotoTycoon.with_options` (WAIT/SIGNAL, a socket ``timeout``, a
``deadline``) and :meth:`KyotoTycoon.with_protocol` (binary or HTTP) return views
of a client that share its pool and packer; a view of a view merges their options,
and closing a view leaves the shared pool open.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType, TracebackType
from typing import Any, NoReturn, TypedDict, TypeVar

from .address import format_address, parse_address
from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE, Connection
from .errors import (
    ArgumentError,
    DeadlineExceeded,
    InvalidArgumentError,
    KTConnectionError,
    KyotoTycoonException,
    LogicalInconsistencyError,
    PartialFailureError,
    PoolTimeoutError,
    ProtocolError,
    ScriptError,
    ValueDecodeError,
)
from .expiry import KEEP, Expire, binary_xt, expires_at, xt_of
from .packers import KT_PACKER_PICKLE, BytesPacker, make_packer
from .pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, ConnectionPool, server_answered
from .protocol import binary as _bin
from .protocol import rest as _rest
from .protocol.http import ResponseHead
from .protocol.rpc import FIELD_COST, answer_float, answer_int, answer_value, decode_answer, encode_call, parse_int

__all__ = ["KyotoTycoon", "Cursor", "Report", "DBReport", "Status", "KEEP_RETRIES"]

#: how often a KEEP write or touch retries its cas when the record keeps changing.
KEEP_RETRIES = 16

T = TypeVar("T")

#: a time.monotonic() value, or a function returning one (or None) when a call starts
Deadline = float | Callable[[], "float | None"]

_FLAG = b""  # the value of a presence-only RPC parameter (atomic, step, utf...)
_INT64 = struct.Struct(">q")
#: fields an RPC answer may hold besides its records (num, SIGNALED...)
_EXTRA_FIELDS = 4


def _count_decoder(magic: int, sent: int) -> Callable[[bytes], tuple[int, int]]:
    """The decoder of a set_bulk/remove_bulk reply to ``sent`` records (it cannot count more)."""
    return lambda buf: _bin.decode_count_reply(buf, magic, sent)


def _decode_one_record(buf: bytes) -> tuple[list[tuple[int, bytes, bytes, int]], int]:
    """The reply to a get_bulk of one key."""
    return _bin.decode_get_bulk_reply(buf, 1)


_SET_ONE = _count_decoder(_bin.MAGIC_SET_BULK, 1)
_REMOVE_ONE = _count_decoder(_bin.MAGIC_REMOVE_BULK, 1)


def _checked_count(count: int, sent: int) -> int:
    """A bulk write's count, which cannot exceed the records sent."""
    if count > sent:
        raise ProtocolError(f"the server counts {count} records of a request of {sent}")
    return count


def key_bytes(key: Any) -> bytes:
    """A key as bytes: str is UTF-8 encoded (lone surrogates from non-UTF-8 keys read
    back as str round-trip through ``surrogateescape``), bytes-like is copied."""
    kind = type(key)
    if kind is str:
        return key.encode("utf-8", "surrogateescape")
    if kind is bytes:
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, str):
        return str(key).encode("utf-8", "surrogateescape")
    raise ArgumentError(f"keys must be str or bytes, not {kind.__name__}")


def key_list(keys: Iterable[Any]) -> list[Any] | tuple[Any, ...]:
    """The keys of a bulk call as a list: ArgumentError for one str or bytes (its
    characters would be taken for keys) or anything that is not a collection."""
    if isinstance(keys, (list, tuple)):
        return keys
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, Iterable):
        raise ArgumentError(f"keys must be a collection of keys, not {type(keys).__name__}")
    return list(keys)


def record_map(kv_dict: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """The records of set_bulk: ArgumentError unless they are a mapping of key -> value."""
    if not isinstance(kv_dict, Mapping):
        raise ArgumentError(f"records must be a mapping of key -> value, not {type(kv_dict).__name__}")
    return kv_dict


def keys_bytes(keys: Iterable[Any]) -> list[bytes]:
    """:func:`key_bytes` of many keys (fast when they are all plain UTF-8 str)."""
    keys = key_list(keys)
    try:
        return [key.encode() for key in keys]
    except (AttributeError, UnicodeEncodeError):
        return [key_bytes(key) for key in keys]


def _too_large() -> NoReturn:
    """ktserver drops a binary connection whose record is over its limit: refuse it first
    (the error would otherwise look like a network failure, and be retried)."""
    raise ArgumentError(f"a value is larger than the binary protocol's limit of {_bin.DATAMAXSIZ} bytes")


def _decode_key(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _keep_bytes(key: bytes) -> bytes:
    return key


def _number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return int(value.__index__())
        except (AttributeError, TypeError):
            raise ArgumentError(f"{what} must be an integer, not {value!r}") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ArgumentError(f"{what} must be a finite number, not {value!r}")
        return int(value)  # ng formatted with %d, which truncates
    return value


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{what} must be a finite number of seconds, not {value!r}")
    return float(value)


def _expires(out: Mapping[bytes, bytes]) -> int | None:
    """The absolute expiry of an RPC answer's optional ``xt`` field (None: none)."""
    xt = out.get(b"xt")
    return None if xt is None else expires_at(parse_int(xt, "xt"))


def _found(call: Callable[[], object]) -> bool:
    """True when ``call`` succeeds, False when the server answers 450 (no such record)."""
    try:
        call()
    except LogicalInconsistencyError:
        return False
    return True


def _orig_param(orig: Any) -> bytes:
    if isinstance(orig, (str, bytes)):
        text = orig.encode() if isinstance(orig, str) else orig
        if text not in (b"try", b"set"):
            raise ArgumentError(f"orig must be a number, 'try' or 'set', not {orig!r}")
        return text
    return b"%d" % _number(orig, "orig")


class DBReport(TypedDict):
    """One ``db_N`` entry of a typed report."""

    count: int
    size: int
    path: str


Report = dict[str, Any]
"""``report(typed=True)``: numbers as int/float, ``db_N`` as :class:`DBReport`, the rest str."""

Status = dict[str, Any]
"""``status(typed=True)``: numbers as int/float, the rest str."""

_INT_RE = re.compile(r"-?\d+\Z")
_FLOAT_RE = re.compile(r"-?\d+\.\d+\Z")
_DB_REPORT_RE = re.compile(r"count=(-?\d+) size=(-?\d+) path=(.*)\Z", re.S)


def _typed_value(name: str, value: str) -> Any:
    if _INT_RE.match(value):
        return int(value)
    if _FLOAT_RE.match(value):
        return float(value)
    if name.startswith("db_"):
        m = _DB_REPORT_RE.match(value)
        if m:
            return DBReport(count=int(m.group(1)), size=int(m.group(2)), path=m.group(3))
    return value


class KyotoTycoon:
    """Client for one KT server; see the module docstring.

    ``binary``, ``pack_type``, ``custom_packer`` and ``exceptions`` are ng's.  The
    keyword-only options are ktcluster's:

    * ``pool_size`` -- most connections open at once (cursors count too);
    * ``pool_timeout`` -- how long a call waits for a free connection before
      :class:`~ktcluster.errors.PoolTimeoutError` (None: forever);
    * ``connect_timeout`` -- the TCP connect limit (``open``'s ``timeout`` bounds
      each request's whole exchange after that);
    * ``decode_keys`` -- keys the server hands back (match_*, cursors,
      play_script) come as str (True, ng's behaviour; bytes that are not UTF-8
      decode with ``surrogateescape``) or as bytes (False).  get_bulk always
      answers with the caller's own key objects;
    * ``idle_timeout``, ``max_lifetime`` -- when pooled connections are retired;
    * ``max_reply_size`` -- the largest reply accepted (bytes; an RPC answer's fields
      count :data:`~ktcluster.protocol.rpc.FIELD_COST` bytes each on top): a reply
      that declares or sends more raises :class:`~ktcluster.errors.ProtocolError`
      before it is read (default 257 MiB: one record of KT's largest size);
    * ``socket_module`` -- a socket module to use instead of ``socket``.

    The default packer unpickles, as ng's did, and unpickling runs code: anyone who
    can write to the server can run code in this process.  Use ``KT_PACKER_BYTES``
    (or STRING, JSON) unless every writer is trusted; see :mod:`ktcluster.packers`.
    """

    def __init__(self, binary: bool = False, pack_type: int = KT_PACKER_PICKLE, custom_packer: Any = None,
                 exceptions: bool = True, *, pool_size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT, decode_keys: bool = True,
                 idle_timeout: float | None = 300.0, max_lifetime: float | None = 3600.0,
                 max_reply_size: int = DEFAULT_MAX_REPLY_SIZE, socket_module: ModuleType | None = None) -> None:
        if not exceptions:
            # ng: "Relying on separate error states is bad form and should be avoided..."
            raise DeprecationWarning("not raising exceptions on error has been removed")
        packer = make_packer(pack_type, custom_packer)
        if isinstance(max_reply_size, bool) or not isinstance(max_reply_size, int) or max_reply_size < 1:
            raise ArgumentError(f"max_reply_size must be a positive number of bytes, not {max_reply_size!r}")
        self.max_reply_size = max_reply_size
        self.binary = bool(binary)
        #: ng's default for the ``atomic`` argument of the bulk methods.
        self.atomic = not self.binary
        self.pack_type = pack_type
        self.packer = packer
        self._pack = packer.pack
        self._unpack = packer.unpack
        self._concatenates = bool(getattr(packer, "concatenates", False))
        self._raw_values = isinstance(packer, BytesPacker)  # unpack is the identity
        self._key_out = _decode_key if decode_keys else _keep_bytes
        self.decode_keys = decode_keys
        self._pool_options = dict(size=pool_size, pool_timeout=pool_timeout, connect_timeout=connect_timeout,
                                  idle_timeout=idle_timeout, max_lifetime=max_lifetime,
                                  socket_module=socket_module)
        self._pool: ConnectionPool | None = None
        self._host = b"localhost"
        self._db_indexes: dict[bytes, int] = {}
        #: False for a view: it shares the pool of the client it came from.
        self._owns_pool = True
        #: a view's options: (WAIT name, WAITTIME or None), (SIGNAL name, broadcast), socket
        #: timeout, deadline (see with_options).
        self._wait: tuple[bytes, float | None] | None = None
        self._signal: tuple[bytes, bool] | None = None
        self._timeout: float | None = None
        self._deadline: Deadline | None = None
        #: derived from them: the extra RPC parameters, and (timeout, deadline, WAIT time) when
        #: a call needs limits of its own (None: the pool's, the fast path).
        self._options: tuple[tuple[bytes, bytes], ...] = ()
        self._limits: tuple[float | None, Deadline | None, float] | None = None
        #: SIGNALED count of the last call made through a with_options(signal=...) view.
        self.signaled: int | None = None

    # -- connection management --------------------------------------------------------------------

    def __enter__(self) -> KyotoTycoon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._pool.address if self._pool else "not open"
        return f"<KyotoTycoon {where} {'binary' if self.binary else 'http'}>"

    def open(self, host: str = "127.0.0.1", port: int = 1978, timeout: float | None = 30) -> bool:
        """Set the server to talk to; connections open lazily, on first use.  ``timeout``
        bounds each request's whole exchange, sending it and receiving the complete reply
        (seconds; None: none): a server trickling its reply cannot stretch a call past it.
        Returns True.  (On a view, it gives the view a pool of its own.)  A bad address or
        timeout is an ArgumentError."""
        try:
            host, port = parse_address((host, int(port)))
        except (TypeError, ValueError):
            raise ArgumentError(f"bad address {host!r}, port {port!r}") from None
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ArgumentError(f"timeout must be positive seconds or None, not {timeout!r}")
        if self._pool is not None and self._owns_pool:
            self._pool.close()
        self._pool = ConnectionPool(host, port, timeout=timeout, **self._pool_options)  # type: ignore[arg-type]
        self._owns_pool = True
        self._host = format_address(host, port).encode()
        self._db_indexes = {}
        return True

    def connect(self, *args: Any, **kwargs: Any) -> KyotoTycoon:
        """``open()`` returning self (for ``with KyotoTycoon().connect(host, port) as kt``)."""
        self.open(*args, **kwargs)
        return self

    def close(self) -> bool:
        """Close the pooled connections (those in use close when they come back).  The
        object stays usable: a later call reconnects, as ng's HTTP client did.

        A view (:meth:`with_options`, :meth:`with_protocol`) does not own the pool it
        shares: closing it (or leaving its ``with`` block) leaves the pool alone; close
        the client that opened it."""
        if self._pool is not None and self._owns_pool:
            self._pool.close()
        return True

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (after ``open``)."""
        if self._pool is None:
            raise KTConnectionError("KyotoTycoon is not open: call open(host, port) first", request_sent=False)
        return self._pool

    def _view(self) -> KyotoTycoon:
        view = object.__new__(type(self))   # a shallow copy (copy.copy takes several times longer)
        view.__dict__.update(self.__dict__)
        view._owns_pool = False
        view.signaled = None
        return view

    def with_options(self, *, wait: str | bytes | None = None, wait_time: float | None = None,
                     signal: str | bytes | None = None, signal_broadcast: bool | None = None,
                     timeout: float | None = None, deadline: Deadline | None = None) -> KyotoTycoon:
        """A view of this client whose calls carry extra options.  It shares this client's
        pool, packer and protocol; options not given are kept from this client (a view
        of a view has both views' options, the newer winning).

        ``wait``: block before the operation until another call signals that name
        (``wait_time`` seconds, default 30, then
        :class:`~ktcluster.errors.SignalTimeoutError` and the operation does not
        run).  ``signal``: after the operation, whatever its result, wake one waiter
        of that name (all of them with ``signal_broadcast``); the view's
        ``signaled`` attribute then holds how many were waiting.  Calls carrying
        these use TSV-RPC (REST and binary cannot).

        ``timeout``: the limit of each of the view's exchanges (sending a request and
        receiving its reply), instead of ``open()``'s; a WAIT may block ``wait_time`` longer.

        ``deadline``: a ``time.monotonic()`` value by which the view's calls must be
        done: the wait for a pooled connection, the connect and the socket timeout
        are capped at the time left (threads cannot otherwise be interrupted in a
        blocked socket).  A wait cut short by it, or a call started after it, raises
        :class:`~ktcluster.errors.DeadlineExceeded` (``request_sent`` says whether
        the request left).  It may also be a function, called as each call starts,
        that returns the deadline or None (none): one view then serves calls with
        different deadlines, e.g. ``deadline=some_context_var.get``.

        Cursors keep their own connection and the client's limits."""
        view = self._view()
        if wait is not None:
            view._wait = (key_bytes(wait), None if wait_time is None else float(wait_time))
        elif wait_time is not None:
            if self._wait is None:
                raise ArgumentError("wait_time needs wait")
            view._wait = (self._wait[0], float(wait_time))
        if signal is not None:
            view._signal = (key_bytes(signal), bool(signal_broadcast))
        elif signal_broadcast is not None:
            if self._signal is None:
                raise ArgumentError("signal_broadcast needs signal")
            view._signal = (self._signal[0], bool(signal_broadcast))
        if timeout is not None:
            view._timeout = _seconds(timeout, "timeout")
            if not view._timeout > 0:
                raise ArgumentError(f"timeout must be positive, not {timeout!r}")
        if deadline is not None:
            view._deadline = deadline if callable(deadline) else _seconds(deadline, "deadline")
        view._derive_options()
        return view

    def _derive_options(self) -> None:
        options: list[tuple[bytes, bytes]] = []
        extra = 0.0
        if self._wait is not None:
            name, wait_time = self._wait
            options.append((b"WAIT", name))
            if wait_time is not None:
                options.append((b"WAITTIME", repr(wait_time).encode()))
            extra = 30.0 if wait_time is None or not wait_time > 0 else wait_time
        if self._signal is not None:
            options.append((b"SIGNAL", self._signal[0]))
            if self._signal[1]:
                options.append((b"SIGNALBROAD", _FLAG))
        self._options = tuple(options)
        limited = self._timeout is not None or self._deadline is not None or extra
        self._limits = (self._timeout, self._deadline, extra) if limited else None

    def with_protocol(self, *, binary: bool) -> KyotoTycoon:
        """A view of this client that speaks KT's binary protocol (``binary=True``) or HTTP,
        sharing its pool, packer and options; its ``atomic`` default is ng's for that
        protocol (HTTP: atomic bulk calls)."""
        view = self._view()
        view.binary = bool(binary)
        view.atomic = not view.binary
        return view

    def signal(self, name: str | bytes, *, broadcast: bool = False) -> int:
        """Wake one (``broadcast``: every) call waiting on condition ``name``; returns how
        many were waiting (a signal nobody waits for is lost)."""
        view = self.with_options(signal=name, signal_broadcast=broadcast)
        view._rpc(b"void", [])
        return view.signaled or 0

    def wait(self, name: str | bytes, timeout: float = 30.0) -> None:
        """Block until condition ``name`` is signalled, or raise
        :class:`~ktcluster.errors.SignalTimeoutError` after ``timeout`` seconds."""
        self.with_options(wait=name, wait_time=timeout)._rpc(b"void", [])

    # -- transport helpers ------------------------------------------------------------------------

    def _http(self, request: bytes, head: bool = False) -> tuple[ResponseHead, bytes]:
        max_size = self.max_reply_size
        if self._limits is not None:
            return self._limited(lambda conn, deadline: conn.request_http(request, head=head, deadline=deadline,
                                                                          max_size=max_size))
        pool = self._pool or self.pool
        conn = pool.checkout()
        try:
            result = conn.request_http(request, head=head, max_size=max_size)
        except BaseException:
            pool.checkin(conn, discard=True)
            raise
        pool.checkin(conn)
        return result

    def _rpc(self, procedure: bytes, params: list[tuple[bytes, bytes]], db: Any = 0,
             max_fields: int | None = None) -> dict[bytes, bytes]:
        """One RPC call with DB and this view's options; typed errors on failure.
        ``max_fields``: the most fields the answer can hold (None: as many as
        ``max_reply_size`` allows)."""
        if db != 0 or type(db) is not int:
            params.append((b"DB", self._db_param(db)))
        if self._options:
            params.extend(self._options)
            out = self._answer(procedure, params, max_fields)
            signaled = out.get(b"SIGNALED")
            if signaled is not None:
                self.signaled = parse_int(signaled, "SIGNALED")
            return out
        return self._answer(procedure, params, max_fields)

    def _answer(self, procedure: bytes, params: list[tuple[bytes, bytes]],
                max_fields: int | None = None) -> dict[bytes, bytes]:
        head, body = self._http(encode_call(procedure, params, self._host))
        return decode_answer(head, body, max_size=self.max_reply_size, max_fields=max_fields)

    def _limited(self, exchange: Callable[[Connection, float | None], T]) -> T:
        """One exchange under this view's limits (see with_options): the deadline caps the
        wait for a connection and goes down to the connection with the request."""
        timeout, deadline, extra = self._limits  # type: ignore[misc]
        if callable(deadline):
            deadline = deadline()
        pool = self._pool or self.pool
        if deadline is None:
            conn = pool.checkout()
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the call's deadline passed before it started", request_sent=False)
            wait = pool.pool_timeout
            try:
                conn = pool.checkout(left if wait is None or left < wait else wait)
            except PoolTimeoutError as exc:
                if wait is not None and wait <= left:
                    raise  # the pool's own limit fired
                raise DeadlineExceeded(f"the call's deadline passed: {exc.message}", request_sent=False) from exc
        base = conn.timeout
        limit = base if timeout is None else timeout
        if limit is not None:
            limit += extra
        try:
            if limit == base:
                result = exchange(conn, deadline)
            else:
                conn.set_timeout(limit)
                result = exchange(conn, deadline)
                conn.set_timeout(base)
        except BaseException:
            pool.checkin(conn, discard=True)
            raise
        pool.checkin(conn)
        return result

    def _binary(self, request: bytes | Iterable[bytes], decode: Any, noreply: bool = False) -> Any:
        max_size = self.max_reply_size
        if self._limits is not None:
            return self._limited(lambda conn, deadline: conn.request_binary(request, decode, noreply=noreply,
                                                                            deadline=deadline, max_size=max_size))
        pool = self._pool or self.pool
        conn = pool.checkout()
        try:
            result = conn.request_binary(request, decode, noreply=noreply, max_size=max_size)
        except BaseException:
            pool.checkin(conn, discard=True)
            raise
        pool.checkin(conn)
        return result

    def _value(self, key: Any, raw: bytes) -> Any:
        """``raw`` unpacked: ValueDecodeError, naming ``key``, when the packer cannot."""
        try:
            return self._unpack(raw)
        except Exception as exc:
            what = "the value at the cursor" if key is None else f"the value of {key!r}"
            raise ValueDecodeError(f"{what} does not decode with {type(self.packer).__name__}: {str(exc)[:200]}",
                                   key=key, raw=raw) from exc

    @staticmethod
    def _db_param(db: Any) -> bytes:
        """The RPC ``DB`` value: an index or a database name."""
        if type(db) is int:
            if db < 0:
                raise ArgumentError(f"database index must be >= 0, not {db}")
            return b"%d" % db
        if isinstance(db, str):
            return db.encode("utf-8")
        if isinstance(db, bytes):
            return db
        raise ArgumentError(f"db must be an index or a name, not {db!r}")

    def _db_index(self, db: Any) -> int:
        """The index the binary protocol needs; names are resolved once through ``report``."""
        if type(db) is int:
            if not 0 <= db < 65536:
                raise ArgumentError(f"database index must be in 0..65535, not {db}")
            return db
        name = self._db_param(db)
        if name[:1].isdigit():
            return int(re.match(rb"\d+", name).group())  # type: ignore[union-attr]
        index = self._db_indexes.get(name)
        if index is None:
            # ktserver's rule: a name is the DB path after its last '/'; the highest index wins.
            names: dict[bytes, int] = {}
            report = self._answer(b"report", [])  # without view options
            for rkey, value in report.items():
                m = re.fullmatch(rb"db_(\d+)", rkey)
                path = re.search(rb" path=(.*)\Z", value, re.S)
                if m and path:
                    dbname = path.group(1).rsplit(b"/", 1)[-1]
                    names[dbname] = max(int(m.group(1)), names.get(dbname, -1))
            self._db_indexes = names
            index = names.get(name)
            if index is None:
                raise InvalidArgumentError("no such database")
        return index

    def _target(self, key: bytes, db: Any) -> bytes | None:
        """The REST target for a key, or None when REST cannot carry this call."""
        if self._options:
            return None
        if db == 0 and type(db) is int:
            target = b"/0/" + _rest.quote_path(key)
        else:
            target = _rest.rest_target(self._db_param(db), key)
        return target if len(target) <= _rest.MAX_TARGET else None

    def _read_raw(self, key: bytes, db: Any) -> tuple[bytes, int | None] | None:
        """(stored bytes, absolute expiry or None) of a record, or None when it is missing."""
        try:
            out = self._rpc(b"get", [(b"key", key)], db)
        except LogicalInconsistencyError:
            return None
        return answer_value(out, b"value"), _expires(out)

    @staticmethod
    def _xt_params(params: list[tuple[bytes, bytes]], xt: int | None) -> list[tuple[bytes, bytes]]:
        if xt is not None:
            params.append((b"xt", b"%d" % xt))
        return params

    def _not_binary(self, what: str) -> None:
        if self.binary:
            raise NotImplementedError(f"{what} is supported under the HTTP protocol only")

    # -- server information -----------------------------------------------------------------------

    def report(self, *, typed: bool = False) -> dict[str, Any]:
        """The server's report: ``{name: text}`` as in ng, or with ``typed`` numbers as
        int/float and every ``db_N`` as ``{"count", "size", "path"}``."""
        self._not_binary("report")
        out = self._rpc(b"report", [])
        result = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in out.items()}
        if typed:
            return {k: _typed_value(k, v) for k, v in result.items()}
        return result

    def status(self, db: Any = 0, *, typed: bool = False) -> dict[str, Any]:
        """One database's status: ``{name: text}`` as in ng (``typed``: numbers converted)."""
        self._not_binary("status")
        out = self._rpc(b"status", [], db)
        result = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in out.items()}
        if typed:
            return {k: _typed_value(k, v) for k, v in result.items()}
        return result

    def count(self, db: Any = 0) -> int:
        """Number of records in the database (expired ones not yet collected included)."""
        self._not_binary("count")
        return answer_int(self._rpc(b"status", [], db), b"count")

    def size(self, db: Any = 0) -> int:
        """Size of the database in bytes."""
        self._not_binary("size")
        return answer_int(self._rpc(b"status", [], db), b"size")

    def clear(self, db: Any = 0) -> bool:
        """Remove every record of the database."""
        self._not_binary("clear")
        self._rpc(b"clear", [], db)
        return True

    def vacuum(self, db: Any = 0, *, step: int | None = None) -> bool:
        """Remove expired records (``step``: only that many, else a full scan)."""
        self._not_binary("vacuum")
        params = [] if step is None else [(b"step", b"%d" % _number(step, "step"))]
        self._rpc(b"vacuum", params, db)
        return True

    def synchronize(self, hard: bool = False, command: str | None = None, db: Any = 0) -> bool:
        """Flush the database to its file (``hard``: to the device); ``command`` runs a
        server-side post-processing command from ktserver's ``-cmd`` directory."""
        self._not_binary("synchronize")
        params = [(b"hard", _FLAG)] if hard else []
        if command is not None:
            params.append((b"command", key_bytes(command)))
        self._rpc(b"synchronize", params, db)
        return True

    # -- single records ---------------------------------------------------------------------------

    def get(self, key: Any, db: Any = 0) -> Any:
        """The unpacked value of a record, or None when it does not exist."""
        kb = key.encode("utf-8", "surrogateescape") if type(key) is str else key_bytes(key)
        if self.binary and not self._options:
            brec = self._read_binary(kb, db if db == 0 and type(db) is int else self._db_index(db))
            return None if brec is None else self._value(key, brec[0])
        target = self._target(kb, db)
        if target is None:
            rec = self._read_raw(kb, db)
            return None if rec is None else self._value(key, rec[0])
        head, body = self._http(_rest.encode_get(target, self._host))
        if head.status == 200:
            return self._value(key, body)
        if head.status == 404:
            return None
        raise _rest.rest_error(head, body)

    def get_with_expiry(self, key: Any, db: Any = 0) -> tuple[Any, int | None] | None:
        """``(value, expires)`` of a record, where ``expires`` is the absolute epoch second
        after which it is gone (None: never); None when the record does not exist."""
        kb = key_bytes(key)
        if self.binary and not self._options:
            brec = self._read_binary(kb, self._db_index(db))
            return None if brec is None else (self._value(key, brec[0]), expires_at(brec[1]))
        rec = self._read_raw(kb, db)
        return None if rec is None else (self._value(key, rec[0]), rec[1])

    def _read_binary(self, kb: bytes, dbidx: int) -> tuple[bytes, int] | None:
        """(stored value, xt) of a record read with the binary protocol, or None."""
        recs = self._binary(_bin.encode_get_bulk(((dbidx, kb),)), _decode_one_record)
        if not recs:
            return None
        _, key, value, xt = recs[0]
        if key != kb:
            raise ProtocolError(f"get_bulk answered key {key[:80]!r} for {kb[:80]!r}")
        return value, xt

    def get_int(self, key: Any, db: Any = 0) -> int:
        """The value of a record written by ``increment`` (an 8-byte big-endian integer).

        A missing record raises LogicalInconsistencyError (ng raised
        KyotoTycoonException); so does a value that is not 8 bytes long."""
        self._not_binary("get_int")
        kb = key_bytes(key)
        target = self._target(kb, db)
        if target is None:
            rec = self._read_raw(kb, db)
            if rec is None:
                raise LogicalInconsistencyError("DB: 7: no record: no record", 450)
            raw = rec[0]
        else:
            head, raw = self._http(_rest.encode_get(target, self._host))
            if head.status != 200:
                raise _rest.rest_error(head, raw)
        if len(raw) != 8:
            raise LogicalInconsistencyError(f"the value of {key!r} is {len(raw)} bytes, not an 8-byte integer")
        return _INT64.unpack(raw)[0]

    def check(self, key: Any, db: Any = 0) -> bool:
        """Does the record exist?"""
        self._not_binary("check")
        return self._on_record(b"check", key_bytes(key), db, _rest.encode_head, 200, head=True)

    def _on_record(self, procedure: bytes, kb: bytes, db: Any, rest_request: Callable[[bytes, bytes], bytes],
                   done: int, *, head: bool = False) -> bool:
        """check/remove over HTTP: True, or False when the record is missing (RPC 450, REST
        404).  REST when a target can carry the call (``done``: its success status)."""
        target = self._target(kb, db)
        if target is None:
            return _found(lambda: self._rpc(procedure, [(b"key", kb)], db))
        answer, body = self._http(rest_request(target, self._host), head=head)
        if answer.status == done:
            return True
        if answer.status == 404:
            return False
        raise _rest.rest_error(answer, body)

    def seize(self, key: Any, db: Any = 0) -> Any:
        """Read a record's value and remove the record atomically; None when it is missing."""
        self._not_binary("seize")
        try:
            out = self._rpc(b"seize", [(b"key", key_bytes(key))], db)
        except LogicalInconsistencyError:
            return None
        return self._value(key, answer_value(out, b"value"))

    def _put(self, mode: bytes, key: Any, value: Any, expire: Expire, db: Any) -> bool:
        """set/add/replace over HTTP: True, or the error.  REST when there is no expiry."""
        kb = key_bytes(key)
        packed = self._pack(value)
        xt = xt_of(expire)
        target = self._target(kb, db) if xt is None else None
        if target is None:
            name = b"set" if mode == _rest.MODE_SET else mode
            self._rpc(name, self._xt_params([(b"key", kb), (b"value", packed)], xt), db)
            return True
        head, body = self._http(_rest.encode_put(target, packed, self._host, mode))
        if head.status == 201:
            return True
        raise _rest.rest_error(head, body)

    def set(self, key: Any, value: Any, expire: Expire = None, db: Any = 0) -> bool:
        """Store a record (creating or overwriting it).  Returns True.

        ``expire``: see :mod:`ktcluster.expiry` (None: never; seconds from now;
        a datetime or ExpireAt; KEEP).  In binary mode returns False when the
        server skipped the record (a DB index it does not have), as ng did."""
        if expire is KEEP:
            return self._write_keeping(key, db, lambda raw: self._pack(value), create=True)
        if self.binary and not self._options:
            dbidx = db if db == 0 and type(db) is int else self._db_index(db)
            kb = key.encode("utf-8", "surrogateescape") if type(key) is str else key_bytes(key)
            xt = _bin.XT_NONE if expire is None else binary_xt(xt_of(expire))
            packed = self._pack(value)
            if len(packed) > _bin.DATAMAXSIZ:
                _too_large()
            return self._binary(_bin.encode_set_bulk(((dbidx, kb, packed, xt),)), _SET_ONE) > 0
        return self._put(_rest.MODE_SET, key, value, expire, db)

    def add(self, key: Any, value: Any, expire: Expire = None, db: Any = 0) -> bool:
        """Store a record that does not exist yet.  Returns True; an existing record
        raises LogicalInconsistencyError (ng raised KyotoTycoonException, its base).
        ``expire=KEEP`` means no expiry here (a new record has none to keep)."""
        self._not_binary("add")
        return self._put(_rest.MODE_ADD, key, value, None if expire is KEEP else expire, db)

    def replace(self, key: Any, value: Any, expire: Expire = None, db: Any = 0) -> bool:
        """Overwrite an existing record.  True, or False when it does not exist (other
        failures raise; ng returned False for those too)."""
        self._not_binary("replace")
        if expire is KEEP:
            return self._write_keeping(key, db, lambda raw: self._pack(value), create=False)
        try:
            return self._put(_rest.MODE_REPLACE, key, value, expire, db)
        except LogicalInconsistencyError:
            return False

    def append(self, key: Any, value: Any, expire: Expire = None, db: Any = 0) -> bool:
        """Append to a record's string (or bytes) value, creating it when missing.

        With the bytes and string packers the server appends (atomic, one round
        trip).  With other packers it is ng's read-modify-cas on the unpacked value
        (which must be str or bytes), retried when the record changed meanwhile."""
        self._not_binary("append")
        if not isinstance(value, (str, bytes)):
            raise ArgumentError("value is not a string or bytes type")
        if self._concatenates and expire is not KEEP:
            self._rpc(b"append", self._xt_params([(b"key", key_bytes(key)), (b"value", self._pack(value))],
                                                 xt_of(expire)), db)
            return True

        def appended(raw: bytes | None) -> bytes:
            if raw is None:
                return self._pack(value)
            if self._concatenates:
                return raw + self._pack(value)
            data = self._value(key, raw)
            if not isinstance(data, (str, bytes)):
                raise LogicalInconsistencyError("stored value is not a string or bytes type")
            tail = value
            if type(data) is not type(tail):
                tail = tail.encode("utf-8") if isinstance(data, bytes) else tail.decode("utf-8")  # type: ignore
            return self._pack(data + tail)

        if expire is KEEP:
            return self._write_keeping(key, db, appended, create=True)
        return self._write_keeping(key, db, appended, create=True, xt=xt_of(expire))

    def _write_keeping(self, key: Any, db: Any, new_value: Any, *, create: bool,
                       xt: int | None | object = KEEP) -> bool:
        """Write ``new_value(old_raw_or_None)`` with a cas against what was read, so no
        concurrent change is lost; the expiry is the record's own (``xt`` KEEP) or ``xt``.
        False when the record is missing and ``create`` is not set."""
        kb = key_bytes(key)
        for _ in range(KEEP_RETRIES):
            rec = self._read_raw(kb, db)
            if rec is None:
                if not create:
                    return False
                params = [(b"key", kb), (b"nval", new_value(None))]
                if xt is not KEEP:
                    self._xt_params(params, xt)  # type: ignore[arg-type]
            else:
                raw, expires = rec
                params = [(b"key", kb), (b"oval", raw), (b"nval", new_value(raw))]
                if xt is KEEP:
                    self._xt_params(params, None if expires is None else -expires)
                else:
                    self._xt_params(params, xt)  # type: ignore[arg-type]
            try:
                self._rpc(b"cas", params, db)
            except LogicalInconsistencyError:
                continue
            return True
        raise LogicalInconsistencyError(f"{key!r} changed concurrently {KEEP_RETRIES} times; gave up")

    def touch(self, key: Any, expire: Expire = None, db: Any = 0) -> bool:
        """Give an existing record a new expiry without changing its value (KT has no
        native touch: a cas of the value onto itself, retried on concurrent change).
        True, or False when the record does not exist."""
        self._not_binary("touch")
        if expire is KEEP:
            return self.check(key, db)
        return self._write_keeping(key, db, lambda raw: raw, create=False, xt=xt_of(expire))

    def _current_xt(self, kb: bytes, db: Any) -> int | None:
        """For KEEP on increment/cas: the record's expiry as an absolute xt, None if none/missing."""
        try:
            out = self._rpc(b"check", [(b"key", kb)], db)
        except LogicalInconsistencyError:
            return None
        expires = _expires(out)
        return None if expires is None else -expires

    def increment(self, key: Any, delta: int = 1, expire: Expire = None, db: Any = 0, *,
                  orig: int | str | None = None) -> int:
        """Add ``delta`` to an integer record (8-byte big-endian; created as
        ``orig + delta``, orig defaulting to 0) and return the new value.

        ``orig='try'`` fails on a missing record, ``orig='set'`` stores ``delta``
        whatever the current value.  A record that is not an 8-byte integer raises
        LogicalInconsistencyError.  Unlike ng, ``expire`` and ``orig`` are honoured;
        like every KT write, no ``expire`` clears an existing expiry."""
        self._not_binary("increment")
        kb = key_bytes(key)
        params = [(b"key", kb), (b"num", b"%d" % _number(delta, "delta"))]
        if orig is not None:
            params.append((b"orig", _orig_param(orig)))
        xt = self._current_xt(kb, db) if expire is KEEP else xt_of(expire)
        return answer_int(self._rpc(b"increment", self._xt_params(params, xt), db), b"num")

    def increment_double(self, key: Any, delta: float = 1.0, expire: Expire = None, db: Any = 0, *,
                         orig: float | str | None = None) -> float:
        """Add ``delta`` to a decimal record (KT's 16-byte fixed-point format) and return
        the new value; ``orig`` as for increment.  Sent with full precision (ng: 6 digits)."""
        self._not_binary("increment_double")
        kb = key_bytes(key)
        params = [(b"key", kb), (b"num", repr(float(delta)).encode())]
        if orig is not None:
            params.append((b"orig", orig.encode() if isinstance(orig, str) else
                           orig if isinstance(orig, bytes) else repr(float(orig)).encode()))
        xt = self._current_xt(kb, db) if expire is KEEP else xt_of(expire)
        return answer_float(self._rpc(b"increment_double", self._xt_params(params, xt), db), b"num")

    def cas(self, key: Any, old_val: Any = None, new_val: Any = None, expire: Expire = None, db: Any = 0) -> bool:
        """Compare and swap: if the record's value is ``old_val`` (None: the record must
        not exist), store ``new_val`` (None: remove the record).  True, or
        LogicalInconsistencyError on a mismatch (as ng raised)."""
        self._not_binary("cas")
        if old_val is None and new_val is None:
            raise ArgumentError("old value and/or new value must be specified")
        kb = key_bytes(key)
        params = [(b"key", kb)]
        if old_val is not None:
            params.append((b"oval", self._pack(old_val)))
        if new_val is not None:
            params.append((b"nval", self._pack(new_val)))
        xt = self._current_xt(kb, db) if expire is KEEP else xt_of(expire)
        self._rpc(b"cas", self._xt_params(params, xt), db)
        return True

    def remove(self, key: Any, db: Any = 0) -> bool:
        """Remove a record: True, or False when it did not exist."""
        kb = key_bytes(key)
        if self.binary and not self._options:
            return self._binary(_bin.encode_remove_bulk(((self._db_index(db), kb),)), _REMOVE_ONE) > 0
        return self._on_record(b"remove", kb, db, _rest.encode_delete, 204)

    # -- bulk -------------------------------------------------------------------------------------

    def _check_atomic(self, atomic: bool | None) -> bool:
        atomic = self.atomic if atomic is None else bool(atomic)
        if atomic and self.binary:
            raise ArgumentError("atomic supported under the HTTP protocol only")
        return atomic

    def set_bulk(self, kv_dict: Mapping[Any, Any], expire: Expire = None, atomic: bool | None = None,
                 db: Any = 0) -> int:
        """Store several records; returns how many were stored.  ``atomic`` (HTTP
        only; the default in HTTP mode, as in ng) makes it all-or-nothing."""
        atomic = self._check_atomic(atomic)
        if expire is KEEP:
            raise ArgumentError("expire=KEEP is not supported by set_bulk")
        if not record_map(kv_dict):
            return 0
        xt = xt_of(expire)
        kbs = keys_bytes(kv_dict)
        values = list(kv_dict.values())
        if not self._raw_values or set(map(type, values)) != {bytes}:
            pack = self._pack
            values = [pack(v) for v in values]
        if self.binary and not self._options:
            dbidx = self._db_index(db)
            bxt = binary_xt(xt)
            if max(map(len, values)) > _bin.DATAMAXSIZ:
                _too_large()
            recs = [(dbidx, kb, v, bxt) for kb, v in zip(kbs, values, strict=True)]
            request = _bin.set_bulk_chunks(recs) if len(recs) > _bin.CHUNK_RECORDS else _bin.encode_set_bulk(recs)
            return self._binary(request, _count_decoder(_bin.MAGIC_SET_BULK, len(recs)))
        params = [(b"atomic", _FLAG)] if atomic else []
        self._xt_params(params, xt)
        params += zip([b"_" + kb for kb in kbs], values, strict=True)
        return _checked_count(answer_int(self._rpc(b"set_bulk", params, db), b"num"), len(kbs))

    def remove_bulk(self, keys: Iterable[Any], atomic: bool | None = None, db: Any = 0) -> int:
        """Remove several records; returns how many existed."""
        atomic = self._check_atomic(atomic)
        kbs = keys_bytes(keys)
        if not kbs:
            return 0
        if self.binary and not self._options:
            recs = list(zip(itertools.repeat(self._db_index(db)), kbs))
            request = _bin.remove_bulk_chunks(recs) if len(recs) > _bin.CHUNK_RECORDS else _bin.encode_remove_bulk(recs)
            return self._binary(request, _count_decoder(_bin.MAGIC_REMOVE_BULK, len(recs)))
        params = [(b"atomic", _FLAG)] if atomic else []
        params += zip([b"_" + kb for kb in kbs], itertools.repeat(_FLAG))
        return _checked_count(answer_int(self._rpc(b"remove_bulk", params, db), b"num"), len(kbs))

    def get_bulk(self, keys: Iterable[Any], atomic: bool | None = None, db: Any = 0) -> dict[Any, Any]:
        """Read several records: ``{key: value}`` for those that exist, in request order,
        keyed by the caller's own key objects (str or bytes).

        When some values do not decode, :class:`~ktcluster.errors.PartialFailureError`
        is raised: its ``results`` hold the records that did, its ``key_errors`` map each
        other key to its :class:`~ktcluster.errors.ValueDecodeError`."""
        atomic = self._check_atomic(atomic)
        keys = key_list(keys)
        if not keys:
            return {}
        kbs = keys_bytes(keys)
        if self.binary and not self._options:
            recs = list(zip(itertools.repeat(self._db_index(db)), kbs))
            request = _bin.get_bulk_chunks(recs) if len(recs) > _bin.CHUNK_RECORDS else _bin.encode_get_bulk(recs)
            asked = len(recs)
            found = self._binary(request, lambda buf: _bin.decode_get_bulk_values(buf, asked))
        else:
            kbs = [b"_" + kb for kb in kbs]  # the answer's keys carry the same prefix
            params = [(b"atomic", _FLAG)] if atomic else []
            params += zip(kbs, itertools.repeat(_FLAG))
            found = self._rpc(b"get_bulk", params, db, max_fields=len(kbs) + _EXTRA_FIELDS)
        values = map(found.get, kbs)
        if self._raw_values:
            return {key: value for key, value in zip(keys, values, strict=True) if value is not None}
        records = [(key, value) for key, value in zip(keys, values, strict=True) if value is not None]
        unpack = self._unpack
        try:
            return {key: unpack(value) for key, value in records}
        except Exception:  # noqa: BLE001 - some value does not decode: find which, keep the others
            return self._decode_each(records)

    def _decode_each(self, records: list[tuple[Any, bytes]]) -> dict[Any, Any]:
        """get_bulk's values one by one: PartialFailureError with the good ones and a
        ValueDecodeError per bad key (if there is one)."""
        good: dict[Any, Any] = {}
        bad: dict[Any, ValueDecodeError] = {}
        for key, raw in records:
            try:
                good[key] = self._value(key, raw)
            except ValueDecodeError as exc:
                bad[key] = exc
        if not bad:
            return good
        named = ", ".join(repr(key) for key in list(bad)[:5]) + (", ..." if len(bad) > 5 else "")
        raise PartialFailureError(f"get_bulk: {len(bad)} of {len(records)} values do not decode ({named})",
                                  good, {}, [], bad)

    # -- matching ---------------------------------------------------------------------------------

    def _match(self, procedure: bytes, params: list[tuple[bytes, bytes]], limit: int | None, db: Any) -> list[Any]:
        if limit:  # ng: None or 0 means no limit
            params.append((b"max", b"%d" % _number(limit, "limit")))
        out = self._rpc(procedure, params, db)
        ranked = sorted((parse_int(rank, "rank"), k[1:]) for k, rank in out.items() if k[:1] == b"_")
        key_out = self._key_out
        return [key_out(k) for _, k in ranked]

    def match_prefix(self, prefix: Any, limit: int | None = None, db: Any = 0) -> list[Any]:
        """Keys starting with ``prefix``, in the server's order (``limit``: at most that many)."""
        self._not_binary("match_prefix")
        if prefix is None:
            raise ArgumentError("no key prefix specified")
        return self._match(b"match_prefix", [(b"prefix", key_bytes(prefix))], limit, db)

    def match_regex(self, regex: Any, limit: int | None = None, db: Any = 0) -> list[Any]:
        """Keys matching a POSIX extended regular expression, in the server's order."""
        self._not_binary("match_regex")
        if regex is None:
            raise ArgumentError("no regular expression specified")
        return self._match(b"match_regex", [(b"regex", key_bytes(regex))], limit, db)

    def match_similar(self, origin: Any, distance: int | None = 0, limit: int | None = None, db: Any = 0, *,
                      utf: bool | None = None) -> list[Any]:
        """Keys within Levenshtein ``distance`` of ``origin``, nearest first.  Distances
        count characters (``utf``; the default for a str origin, as ng always did) or
        bytes (the default for a bytes origin)."""
        self._not_binary("match_similar")
        if origin is None:
            raise ArgumentError("no origin string specified")
        params = [(b"origin", key_bytes(origin))]
        if utf if utf is not None else isinstance(origin, str):
            params.append((b"utf", _FLAG))
        if distance is not None and distance >= 0:
            params.append((b"range", b"%d" % _number(distance, "distance")))
        return self._match(b"match_similar", params, limit, db)

    # -- cursors and scripts ----------------------------------------------------------------------

    def cursor(self) -> Cursor:
        """A new cursor (it takes a connection from the pool on first use and keeps it
        until ``delete()``/``close()``, the end of a ``with`` block, or garbage collection)."""
        self._not_binary("cursor")
        return Cursor(self)

    def play_script(self, name: str | bytes, kv_dict: Mapping[Any, Any] | None = None) -> dict[Any, bytes]:
        """Call a procedure of the server's Lua script.  Keys and values pass unpacked
        (values must be bytes or str); returns ``{key: bytes}``.  A failure raises the
        error of the server's status over HTTP, and
        :class:`~ktcluster.errors.ScriptError` (no detail) over the binary protocol."""
        records = []
        for k, v in (kv_dict or {}).items():
            if isinstance(v, str):
                v = v.encode("utf-8")
            elif not isinstance(v, bytes):
                raise ArgumentError("value must be a byte sequence")
            records.append((key_bytes(k), v))
        nb = key_bytes(name)
        key_out = self._key_out
        if self.binary and not self._options:
            most = max(0, self.max_reply_size // FIELD_COST)
            out = self._binary(_bin.encode_play_script(nb, records),
                               lambda buf: _bin.decode_play_script_reply(buf, most))
            if out is None:
                raise ScriptError(f"play_script {nb!r} failed: the server answered 0xBF (the procedure failed "
                                  "or does not exist, or scripting is off; call it over HTTP for the reason)", 500)
            return {key_out(k): v for k, v in out}
        params = [(b"name", nb)] + [(b"_" + k, v) for k, v in records]
        out = self._rpc(b"play_script", params)
        return {key_out(k[1:]): v for k, v in out.items() if k[:1] == b"_"}


class Cursor:
    """A server-side cursor (ng's API), holding its own pooled connection.

    KT keeps cursors per connection, so the cursor checks a connection out on first
    use and keeps it until :meth:`delete` (or :meth:`close`, the end of a ``with``
    block, garbage collection).  Concurrent calls on the client cannot move it.  If
    that connection fails, the server forgets the position: the error propagates,
    and every later call other than jump/jump_back raises KTConnectionError until
    the cursor is positioned again.
    """

    def __init__(self, kt: KyotoTycoon) -> None:
        self._kt = kt
        self._pack = kt._pack
        self._value = kt._value
        self._key_out = kt._key_out
        self._conn: Connection | None = None
        self._generation = 0
        self._ids = itertools.count(1)
        self.cursor_id = next(self._ids)
        self._db: Any = None

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.delete()
        else:
            self.close()

    def __del__(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        pool = self._kt._pool if conn is not None else None
        if pool is not None:
            try:
                pool.checkin(conn, discard=True)  # closing it frees the server's cursor
            except Exception:  # noqa: BLE001 - nothing can be reported from a finalizer (e.g. at exit)
                pass

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair of DB 0 from the first record on, in the DB's order."""
        return self.items()

    def items(self, db: Any = 0) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair of database ``db`` from its first record on, in the DB's
        order (iterating the cursor does this for DB 0)."""
        if not self.jump(db=db):
            return
        while True:
            key, value = self.get()
            if key is None:
                return
            yield key, value
            if not self.step():
                return

    def _call(self, procedure: bytes, params: list[tuple[bytes, bytes]], *, positioning: bool = False,
              db: Any = None) -> dict[bytes, bytes]:
        conn = self._conn
        if conn is not None and (conn.broken or conn.generation != self._generation):
            self._release(discard=True)
            if not positioning:
                raise KTConnectionError("the cursor's connection was lost with its position; jump() again",
                                        request_sent=False)
            conn = None
        elif conn is None and self._generation and not positioning:
            raise KTConnectionError("the cursor is not positioned (its connection was released); jump() first",
                                    request_sent=False)
        if conn is None:
            conn = self._conn = self._kt.pool.checkout()
        params.insert(0, (b"CUR", b"%d" % self.cursor_id))
        if db is not None and (db != 0 or type(db) is not int):
            params.append((b"DB", self._kt._db_param(db)))
        try:
            out = conn.call(procedure, params, max_size=self._kt.max_reply_size)
        except BaseException as exc:
            if server_answered(exc):
                self._generation = conn.generation
            else:
                self._release(discard=True)
            raise
        self._generation = conn.generation
        return out

    def _release(self, *, discard: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._kt.pool.checkin(conn, discard=discard)

    def _jump(self, procedure: bytes, key: Any, db: Any) -> bool:
        if self._db is not None and self._db != db and self._conn is not None:
            # The server binds a cursor to the DB it was created on: use a fresh one.
            self.cursor_id = next(self._ids)
        self._db = db
        params = [] if key is None else [(b"key", key_bytes(key))]
        return _found(lambda: self._call(procedure, params, positioning=True, db=db))

    def jump(self, key: Any = None, db: Any = 0) -> bool:
        """Position on ``key`` (None: the first record); False when there is no such record
        (tree DBs: no record at or after it).  ``db`` selects the database."""
        return self._jump(b"cur_jump", key, db)

    def jump_back(self, key: Any = None, db: Any = 0) -> bool:
        """Position on ``key`` (None: the last record) for a backward scan; tree DBs only
        (hash DBs raise NoImplementationError).  False when there is no such record."""
        return self._jump(b"cur_jump_back", key, db)

    def step(self) -> bool:
        """Move to the next record; False past the last one."""
        return _found(lambda: self._call(b"cur_step", []))

    def step_back(self) -> bool:
        """Move to the previous record (tree DBs only); False before the first one."""
        return _found(lambda: self._call(b"cur_step_back", []))

    def set_value(self, value: Any, step: bool = False, expire: Expire = None) -> bool:
        """Overwrite the current record's value (then move on with ``step``).  True;
        LogicalInconsistencyError when the cursor is not on a record.  ``expire=KEEP``
        is not supported here."""
        if expire is KEEP:
            raise ArgumentError("expire=KEEP is not supported by Cursor.set_value")
        params = [(b"value", self._pack(value))]
        if step:
            params.append((b"step", _FLAG))
        self._call(b"cur_set_value", KyotoTycoon._xt_params(params, xt_of(expire)))
        return True

    def remove(self) -> bool:
        """Remove the current record (the cursor moves to the next one).  True;
        LogicalInconsistencyError when the cursor is not on a record."""
        self._call(b"cur_remove", [])
        return True

    def get_key(self, step: bool = False) -> Any:
        """The current record's key (str or bytes, per the client's ``decode_keys``)."""
        out = self._call(b"cur_get_key", [(b"step", _FLAG)] if step else [])
        return self._key_out(answer_value(out, b"key"))

    def get_value(self, step: bool = False) -> Any:
        """The current record's unpacked value."""
        out = self._call(b"cur_get_value", [(b"step", _FLAG)] if step else [])
        return self._value(None, answer_value(out, b"value"))

    def get(self, step: bool = False) -> tuple[Any, Any]:
        """``(key, value)`` of the current record, or ``(None, None)`` when the cursor is
        not on a record (what ng meant: it tested for 404, but KT answers 450)."""
        record = self.get_with_expiry(step)
        return (None, None) if record is None else record[:2]

    def get_with_expiry(self, step: bool = False) -> tuple[Any, Any, int | None] | None:
        """``(key, value, expires)`` of the current record, ``expires`` as for
        :meth:`KyotoTycoon.get_with_expiry`; None when the cursor is not on a record."""
        try:
            out = self._call(b"cur_get", [(b"step", _FLAG)] if step else [])
        except LogicalInconsistencyError:
            return None
        key = self._key_out(answer_value(out, b"key"))
        return key, self._value(key, answer_value(out, b"value")), _expires(out)

    def seize(self) -> dict[str, Any]:
        """Read and remove the current record: ``{"key": ..., "value": ...}``."""
        out = self._call(b"cur_seize", [])
        key = self._key_out(answer_value(out, b"key"))
        return {"key": key, "value": self._value(key, answer_value(out, b"value"))}

    def delete(self) -> bool:
        """Delete the server-side cursor and give the connection back to the pool."""
        conn = self._conn
        if conn is None:
            self._generation = 0
            return True
        try:
            if not conn.broken and conn.generation == self._generation:
                conn.call(b"cur_delete", [(b"CUR", b"%d" % self.cursor_id)])
        except BaseException as exc:
            self._release(discard=not server_answered(exc))
            self._generation = 0
            if isinstance(exc, KyotoTycoonException):
                return True  # the cursor is gone either way
            raise
        self._release()
        self._generation = 0
        return True

    def close(self) -> None:
        """Release the cursor's connection without talking to the server (closing the
        connection frees the server-side cursor)."""
        self._release(discard=True)
        self._generation = 0
