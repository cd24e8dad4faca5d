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
* ``replace`` and ``remove`` return False when the server answers with an error
  status (a missing record, a database it does not have...), as ng did; transport
  errors raise.  (A Cluster's replace and remove raise for every error but a
  missing record.)
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
a connection out of a bounded :class:`~ktcluster.pool.ConnectionPool` (through the
server's :class:`~ktcluster.transport.Transport`).  A :class:`~ktcluster.cursor.Cursor`
holds its own connection (server cursors live on a connection).

Each method is a thin front on an operation of :mod:`ktcluster.ops`, which builds the
requests and reads the answers (sans-IO); :meth:`Transport.run
<ktcluster.transport.Transport.run>` carries them.

Views: :meth:`KyotoTycoon.with_options` (WAIT/SIGNAL, a socket ``timeout``, a
``deadline``) and :meth:`KyotoTycoon.with_protocol` (binary or HTTP) return views
of a client that share its pool and packer; a view of a view merges their options,
and closing a view leaves the shared pool open.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .address import parse_address
from .connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE, OWN, Limit
from .deadline import NO_DEADLINE, Deadline
from .errors import ArgumentError, KTConnectionError, KyotoTycoonException
from .expiry import Expire
from .keys import DB, Key, KeyT, decode_key, keep_bytes, key_bytes
from .observe.events import Call, Observer, observed
from .ops import BINARY, HTTP, KEEP_RETRIES, DBReport, Op, Operation, Report, Session, Status
from .packers import KT_PACKER_PICKLE, make_packer
from .pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, ConnectionPool
from .transport import Transport, TransportBase

if TYPE_CHECKING:
    from .cursor import Cursor
    from .retry import OpClass

from . import ops

__all__ = ["KyotoTycoon", "ClientCore", "Report", "DBReport", "Status", "KEEP_RETRIES", "DeadlineOption"]

T = TypeVar("T")
TR = TypeVar("TR", bound=TransportBase)
C = TypeVar("C", bound="ClientCore[Any]")

#: an observed operation's (name, retry class, records) by its name
_OBSERVED: dict[str, tuple[str, OpClass, int]] = {}


def _observed_as(name: str) -> tuple[str, OpClass, int]:
    from .retry import op_class  # not at import: the client alone does not load tenacity

    found = _OBSERVED[name] = (name, op_class(name), 0 if name.endswith("_bulk") else 1)
    return found

#: ``with_options(deadline=...)``: a time.monotonic() value, or a function returning one
#: (or None) when a call starts
DeadlineOption = float | Callable[[], "float | None"]


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{what} must be a finite number of seconds, not {value!r}")
    return float(value)


def _ng_false(op: Operation[bool]) -> Op[bool]:
    """ng's replace/remove: False for any error the server answers (it checked one status)."""
    try:
        return (yield from ops.steps(op))
    except KyotoTycoonException as exc:
        if exc.code is None:
            raise
        return False


class ClientCore(Generic[TR]):
    """A single-server client without its I/O: the constructor's options, ``open``, the
    views (:meth:`with_options`, :meth:`with_protocol`), the session operations run in, and
    the limits of a call.  :class:`KyotoTycoon` drives the operations over a blocking
    :class:`~ktcluster.transport.Transport`, :class:`ktcluster.aio.KyotoTycoon` over an
    asyncio one; ``_new_transport`` is what tells them apart here."""


    def __init__(self, binary: bool = False, pack_type: int = KT_PACKER_PICKLE, custom_packer: Any = None,
                 exceptions: bool = True, *, pool_size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float | None = DEFAULT_POOL_TIMEOUT,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT, decode_keys: bool = True,
                 idle_timeout: float | None = 300.0, max_lifetime: float | None = 3600.0,
                 max_reply_size: int = DEFAULT_MAX_REPLY_SIZE, socket_module: ModuleType | None = None,
                 observer: Observer | None = None) -> None:
        if not exceptions:
            # ng: "Relying on separate error states is bad form and should be avoided..."
            raise DeprecationWarning("not raising exceptions on error has been removed")
        packer = make_packer(pack_type, custom_packer)
        if isinstance(max_reply_size, bool) or not isinstance(max_reply_size, int) or max_reply_size < 1:
            raise ArgumentError(f"max_reply_size must be a positive number of bytes, not {max_reply_size!r}")
        self.max_reply_size = max_reply_size
        self.binary = bool(binary)
        self.pack_type = pack_type
        self.packer = packer
        self.decode_keys = decode_keys
        self.observer = observer
        self._pool_options = dict(size=pool_size, pool_timeout=pool_timeout, connect_timeout=connect_timeout,
                                  idle_timeout=idle_timeout, max_lifetime=max_lifetime,
                                  max_reply_size=max_reply_size, socket_module=socket_module)
        self._transport: TR | None = None
        #: False for a view: it shares the transport (pool) of the client it came from.
        self._owns_pool = True
        self._wire = BINARY if self.binary else HTTP
        #: a view's options: (WAIT name, WAITTIME or None), (SIGNAL name, broadcast), the
        #: exchange timeout, the deadline (see with_options)
        self._wait: tuple[bytes, float | None] | None = None
        self._signal: tuple[bytes, bool] | None = None
        self._timeout: float | None = None
        self._deadline: DeadlineOption | None = None
        self._signaled: list[int | None] = [None]
        self._derive()

    def _derive(self) -> None:
        """The session and the call limits that follow from the options."""
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
                options.append((b"SIGNALBROAD", b""))
        transport = self._transport
        self._session = Session(self.packer, decode_key if self.decode_keys else keep_bytes,
                                transport.host_header if transport else b"localhost", self._wire, tuple(options),
                                self.max_reply_size, None,
                                transport.db_names if transport else None, self._signaled)
        #: (extra WAIT time, whether calls need limits of their own: None is the fast path)
        limited = self._timeout is not None or self._deadline is not None or extra
        self._extra: float | None = extra if limited else None

    # -- connection management --------------------------------------------------------------------

    def __repr__(self) -> str:
        where = self._transport.address if self._transport else "not open"
        return f"<{type(self).__name__} {where} {'binary' if self.binary else 'http'}>"

    @property
    def atomic(self) -> bool:
        """ng's default for the ``atomic`` argument of the bulk methods (HTTP: True)."""
        return self._session.atomic

    @property
    def signaled(self) -> int | None:
        """How many waiters the last call through a ``with_options(signal=...)`` view woke."""
        return self._signaled[0]

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
        if self._transport is not None and self._owns_pool:
            self._transport.close()
        self._transport = self._new_transport(host, port, timeout)
        self._owns_pool = True
        self._derive()
        return True

    @classmethod
    def _over(cls: type[C], transport: TR, *, wire: str, **options: Any) -> C:
        """A client of an existing transport (a cluster node's): ``wire`` is ops.HTTP,
        ops.BINARY or ops.AUTO; ``options`` are the constructor's."""
        client = cls(**options)
        client._transport = transport
        client._owns_pool = False
        client._wire = wire
        client._derive()
        return client

    def connect(self: C, *args: Any, **kwargs: Any) -> C:
        """``open()`` returning self (for ``with KyotoTycoon().connect(host, port) as kt``)."""
        self.open(*args, **kwargs)
        return self

    def close(self) -> bool:
        """Close the pooled connections (those in use close when they come back).  The
        object stays usable: a later call reconnects, as ng's HTTP client did.

        A view (:meth:`with_options`, :meth:`with_protocol`) does not own the pool it
        shares: closing it (or leaving its ``with`` block) leaves the pool alone; close
        the client that opened it."""
        if self._transport is not None and self._owns_pool:
            self._transport.close()
        return True

    @property
    def transport(self) -> TR:
        """The server's transport (after ``open``)."""
        if self._transport is None:
            raise KTConnectionError("KyotoTycoon is not open: call open(host, port) first", request_sent=False)
        return self._transport

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (after ``open``)."""
        return self.transport.pool

    def _view(self: C) -> C:
        view = object.__new__(type(self))   # a shallow copy (copy.copy takes several times longer)
        view.__dict__.update(self.__dict__)
        view._owns_pool = False
        view._signaled = [None]
        return view

    def with_options(self: C, *, wait: str | bytes | None = None, wait_time: float | None = None,
                     signal: str | bytes | None = None, signal_broadcast: bool | None = None,
                     timeout: float | None = None, deadline: DeadlineOption | None = None) -> C:
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
        view._derive()
        return view

    def with_protocol(self: C, *, binary: bool) -> C:
        """A view of this client that speaks KT's binary protocol (``binary=True``) or HTTP,
        sharing its pool, packer and options; its ``atomic`` default is ng's for that
        protocol (HTTP: atomic bulk calls)."""
        view = self._view()
        view.binary = bool(binary)
        view._wire = BINARY if view.binary else HTTP
        view._derive()
        return view

    def _new_transport(self, host: str, port: int, timeout: float | None) -> TR:
        raise NotImplementedError

    def _limits(self) -> tuple[Deadline, Limit]:
        """A call's deadline and exchange limit under this view's options (when ``_extra``
        is not None: a call without options takes the transport's fast path)."""
        deadline = self._deadline
        if callable(deadline):
            deadline = deadline()
        timeout: Limit = OWN
        base = self.transport.pool.timeout if self._timeout is None else self._timeout
        if base is not None and (self._extra or self._timeout is not None):
            timeout = base + (self._extra or 0.0)
        return NO_DEADLINE if deadline is None else Deadline(deadline), timeout


class KyotoTycoon(ClientCore[Transport]):
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
    * ``socket_module`` -- a socket module to use instead of ``socket``;
    * ``observer`` -- an :class:`~ktcluster.observe.Observer` told of every call (one
      attempt each, named by its operation; cursors are not observed).

    The default packer unpickles, as ng's did, and unpickling runs code: anyone who
    can write to the server can run code in this process.  Use ``KT_PACKER_BYTES``
    (or STRING, JSON) unless every writer is trusted; see :mod:`ktcluster.packers`.
    """


    def __enter__(self) -> KyotoTycoon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


    def signal(self, name: str | bytes, *, broadcast: bool = False) -> int:
        """Wake one (``broadcast``: every) call waiting on condition ``name``; returns how
        many were waiting (a signal nobody waits for is lost)."""
        view = self.with_options(signal=name, signal_broadcast=broadcast)
        view._run(ops.void(view._session))
        return view.signaled or 0

    def wait(self, name: str | bytes, timeout: float = 30.0) -> None:
        """Block until condition ``name`` is signalled, or raise
        :class:`~ktcluster.errors.SignalTimeoutError` after ``timeout`` seconds."""
        view = self.with_options(wait=name, wait_time=timeout)
        view._run(ops.void(view._session))

    def _run(self, op: Operation[T], operation: str | None = None) -> T:
        """Carry ``op`` to the server under this view's limits (``operation``: its name for
        the observer, when it is not the name of the generator's function)."""
        transport = self._transport or self.transport
        if self._extra is None and self.observer is None:
            return transport.run(op)
        limit, timeout = self._limits()
        if self.observer is None:
            return transport.run(op, limit, timeout)
        code = operation or str(getattr(op, "__name__", "call"))  # a generator's: its function's name
        name, cls, records = _OBSERVED.get(code) or _observed_as(code)

        def attempt(call: Call | None) -> T:
            event = call.attempt(transport.address, transport.address, 0)  # type: ignore[union-attr]
            return event.measure(lambda: transport.run(op, limit, timeout, event))

        return observed(self.observer, name, cls, records, attempt)

    def _new_transport(self, host: str, port: int, timeout: float | None) -> Transport:
        return Transport(host, port, timeout=timeout, **self._pool_options)  # type: ignore[arg-type]

    # -- server information -----------------------------------------------------------------------

    def report(self, *, typed: bool = False) -> dict[str, Any]:
        """The server's report: ``{name: text}`` as in ng, or with ``typed`` numbers as
        int/float and every ``db_N`` as ``{"count", "size", "path"}``."""
        return self._run(ops.report(self._session, typed))

    def status(self, db: DB = 0, *, typed: bool = False) -> dict[str, Any]:
        """One database's status: ``{name: text}`` as in ng (``typed``: numbers converted)."""
        return self._run(ops.status(self._session, db, typed))

    def count(self, db: DB = 0) -> int:
        """Number of records in the database (expired ones not yet collected included)."""
        return self._run(ops.status_field(self._session, "count", b"count", db))

    def size(self, db: DB = 0) -> int:
        """Size of the database in bytes."""
        return self._run(ops.status_field(self._session, "size", b"size", db))

    def clear(self, db: DB = 0) -> bool:
        """Remove every record of the database."""
        return self._run(ops.clear(self._session, db))

    def vacuum(self, db: DB = 0, *, step: int | None = None) -> bool:
        """Remove expired records (``step``: only that many, else a full scan)."""
        return self._run(ops.vacuum(self._session, db, step))

    def synchronize(self, hard: bool = False, command: str | None = None, db: DB = 0) -> bool:
        """Flush the database to its file (``hard``: to the device); ``command`` runs a
        server-side post-processing command from ktserver's ``-cmd`` directory."""
        return self._run(ops.synchronize(self._session, hard, command, db))

    # -- single records ---------------------------------------------------------------------------

    def get(self, key: Key, db: DB = 0) -> Any:
        """The unpacked value of a record, or None when it does not exist."""
        return self._run(ops.get(self._session, key, db), "get")

    def get_with_expiry(self, key: Key, db: DB = 0) -> tuple[Any, int | None] | None:
        """``(value, expires)`` of a record, where ``expires`` is the absolute epoch second
        after which it is gone (None: never); None when the record does not exist."""
        return self._run(ops.get_with_expiry(self._session, key, db))

    def get_int(self, key: Key, db: DB = 0) -> int:
        """The value of a record written by ``increment`` (an 8-byte big-endian integer).

        A missing record raises LogicalInconsistencyError (ng raised
        KyotoTycoonException); so does a value that is not 8 bytes long."""
        return self._run(ops.get_int(self._session, key, db))

    def check(self, key: Key, db: DB = 0) -> bool:
        """Does the record exist?"""
        return self._run(ops.check(self._session, key, db))

    def seize(self, key: Key, db: DB = 0) -> Any:
        """Read a record's value and remove the record atomically; None when it is missing."""
        return self._run(ops.seize(self._session, key, db))

    def set(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        """Store a record (creating or overwriting it).  Returns True.

        ``expire``: see :mod:`ktcluster.expiry` (None: never; seconds from now;
        a datetime or ExpireAt; KEEP).  In binary mode returns False when the
        server skipped the record (a DB index it does not have), as ng did."""
        return self._run(ops.set_record(self._session, key, value, expire, db), "set")

    def add(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        """Store a record that does not exist yet.  Returns True; an existing record
        raises LogicalInconsistencyError (ng raised KyotoTycoonException, its base).
        ``expire=KEEP`` means no expiry here (a new record has none to keep)."""
        return self._run(ops.add(self._session, key, value, expire, db))

    def replace(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        """Overwrite an existing record.  True, or False when the server refuses (no such
        record, no such database...: ng's answer to every error status)."""
        return self._run(_ng_false(ops.replace(self._session, key, value, expire, db)), "replace")

    def append(self, key: Key, value: Any, expire: Expire = None, db: DB = 0) -> bool:
        """Append to a record's string (or bytes) value, creating it when missing.

        With the bytes and string packers the server appends (atomic, one round
        trip).  With other packers it is ng's read-modify-cas on the unpacked value
        (which must be str or bytes), retried when the record changed meanwhile."""
        return self._run(ops.append(self._session, key, value, expire, db))

    def touch(self, key: Key, expire: Expire = None, db: DB = 0) -> bool:
        """Give an existing record a new expiry without changing its value (KT has no
        native touch: a cas of the value onto itself, retried on concurrent change).
        True, or False when the record does not exist."""
        return self._run(ops.touch(self._session, key, expire, db))

    def increment(self, key: Key, delta: int = 1, expire: Expire = None, db: DB = 0, *,
                  orig: int | str | None = None) -> int:
        """Add ``delta`` to an integer record (8-byte big-endian; created as
        ``orig + delta``, orig defaulting to 0) and return the new value.

        ``orig='try'`` fails on a missing record, ``orig='set'`` stores ``delta``
        whatever the current value.  A record that is not an 8-byte integer raises
        LogicalInconsistencyError.  Unlike ng, ``expire`` and ``orig`` are honoured;
        like every KT write, no ``expire`` clears an existing expiry."""
        return self._run(ops.increment(self._session, key, delta, expire, db, orig))

    def increment_double(self, key: Key, delta: float = 1.0, expire: Expire = None, db: DB = 0, *,
                         orig: float | str | None = None) -> float:
        """Add ``delta`` to a decimal record (KT's 16-byte fixed-point format) and return
        the new value; ``orig`` as for increment.  Sent with full precision (ng: 6 digits)."""
        return self._run(ops.increment_double(self._session, key, delta, expire, db, orig))

    def cas(self, key: Key, old_val: Any = None, new_val: Any = None, expire: Expire = None, db: DB = 0) -> bool:
        """Compare and swap: if the record's value is ``old_val`` (None: the record must
        not exist), store ``new_val`` (None: remove the record).  True, or
        LogicalInconsistencyError on a mismatch (as ng raised)."""
        return self._run(ops.cas(self._session, key, old_val, new_val, expire, db))

    def remove(self, key: Key, db: DB = 0) -> bool:
        """Remove a record: True, or False when the server refuses (no such record, no such
        database...: ng's answer to every error status)."""
        return self._run(_ng_false(ops.remove(self._session, key, db)), "remove")

    # -- bulk -------------------------------------------------------------------------------------

    def set_bulk(self, kv_dict: Mapping[KeyT, Any], expire: Expire = None, atomic: bool | None = None,
                 db: DB = 0) -> int:
        """Store several records; returns how many were stored.  ``atomic`` (HTTP
        only; the default in HTTP mode, as in ng) makes it all-or-nothing."""
        return self._run(ops.set_bulk(self._session, kv_dict, expire, atomic, db))

    def remove_bulk(self, keys: Iterable[KeyT], atomic: bool | None = None, db: DB = 0) -> int:
        """Remove several records; returns how many existed."""
        return self._run(ops.remove_bulk(self._session, keys, atomic, db))

    def get_bulk(self, keys: Iterable[KeyT], atomic: bool | None = None, db: DB = 0) -> dict[KeyT, Any]:
        """Read several records: ``{key: value}`` for those that exist, in request order,
        keyed by the caller's own key objects (str or bytes).

        When some values do not decode, :class:`~ktcluster.errors.PartialFailureError`
        is raised: its ``results`` hold the records that did, its ``key_errors`` map each
        other key to its :class:`~ktcluster.errors.ValueDecodeError`."""
        return self._run(ops.get_bulk(self._session, keys, atomic, db))

    # -- matching ---------------------------------------------------------------------------------

    def match_prefix(self, prefix: Any, limit: int | None = None, db: DB = 0) -> list[Any]:
        """Keys starting with ``prefix``, in the server's order (``limit``: at most that many)."""
        return self._run(ops.match_prefix(self._session, prefix, limit, db))

    def match_regex(self, regex: Any, limit: int | None = None, db: DB = 0) -> list[Any]:
        """Keys matching a POSIX extended regular expression, in the server's order."""
        return self._run(ops.match_regex(self._session, regex, limit, db))

    def match_similar(self, origin: Any, distance: int | None = 0, limit: int | None = None, db: DB = 0, *,
                      utf: bool | None = None) -> list[Any]:
        """Keys within Levenshtein ``distance`` of ``origin``, nearest first.  Distances
        count characters (``utf``; the default for a str origin, as ng always did) or
        bytes (the default for a bytes origin)."""
        return self._run(ops.match_similar(self._session, origin, distance, limit, db, utf))

    # -- cursors and scripts ----------------------------------------------------------------------

    def cursor(self) -> Cursor:
        """A new cursor (it takes a connection from the pool on first use and keeps it
        until ``delete()``/``close()``, the end of a ``with`` block, or garbage collection)."""
        from .cursor import Cursor

        self._session.http_only("cursor")
        return Cursor(self.transport, self._session.derive(options=()))

    def play_script(self, name: str | bytes, kv_dict: Mapping[Any, Any] | None = None) -> dict[Any, bytes]:
        """Call a procedure of the server's Lua script.  Keys and values pass unpacked
        (values must be bytes or str); returns ``{key: bytes}``.  A failure raises the
        error of the server's status over HTTP, and
        :class:`~ktcluster.errors.ScriptError` (no detail) over the binary protocol."""
        return self._run(ops.play_script(self._session, name, kv_dict))
