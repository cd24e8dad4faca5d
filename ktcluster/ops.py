"""Every KT operation as a sans-IO generator: requests out, answers in, result returned.

An operation (``get``, ``set_bulk``, ``increment``...) is a generator function taking a
:class:`Session` and the caller's arguments.  It checks the arguments, yields each
request it needs as a value -- :class:`Http` (answered with ``(ResponseHead, body)``)
or :class:`Binary` (answered with its decoder's result) -- and returns the operation's
result, or raises its typed error.  It does no I/O and keeps no state between calls:
a driver sends the requests (:meth:`ktcluster.transport.Transport.run`; an asyncio
driver is the same loop with ``await``), so one implementation serves every front end,
and a retry simply starts the generator again.

An operation that is one binary request whose decoder gives the result (``set`` and
``remove`` of one record in a numbered database, and ``get`` with a packer that leaves
values as they are stored) is that :class:`Binary` request itself, not a generator of
it: the hot path then costs a driver one exchange and no generator.  ``get``,
``set_record`` and ``remove`` are plain functions returning either form (an
:data:`Operation`), raising nothing themselves; :func:`steps` makes a generator of
either, for a driver without that shortcut.

Most operations make one request; a few make more (a database name resolved for the
binary protocol, a read-modify-cas loop for ``append`` and ``expire=KEEP``).

Which wire an operation uses follows the session (see :class:`Session`):

* HTTP: get / get_int / check / remove / set, add, replace without expiry use KT's
  REST interface (the value is the raw HTTP body); everything else TSV-RPC;
* binary: get/set/remove and the bulk forms use KT's binary protocol (0xBA/0xB8/0xB9),
  play_script 0xB4; in ng's strict mode (``KyotoTycoon(binary=True)``) the other
  operations raise NotImplementedError, in the cluster's mode they use HTTP.

Calls carrying WAIT/SIGNAL options always use TSV-RPC (REST and binary cannot).
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, TypedDict, TypeVar

from .errors import (
    ArgumentError,
    InvalidArgumentError,
    LogicalInconsistencyError,
    PartialFailureError,
    ProtocolError,
    ScriptError,
    ValueDecodeError,
)
from .expiry import KEEP, Expire, binary_xt, expires_at, xt_of
from .keys import db_param, key_bytes, key_list, keys_bytes, record_map
from .protocol import binary as _bin
from .protocol import rest as _rest
from .protocol.rpc import FIELD_COST, answer_float, answer_int, answer_value, decode_answer, encode_call, parse_int

__all__ = ["Http", "Binary", "Op", "Operation", "steps", "Session", "HTTP", "BINARY", "AUTO", "KEEP_RETRIES",
           "DBReport", "Report", "Status"]

T = TypeVar("T")

#: how often a KEEP write or touch retries its cas when the record keeps changing.
KEEP_RETRIES = 16

#: the wires: HTTP only; ng's binary mode (binary where KT has an opcode, NotImplementedError
#: elsewhere); the cluster's (binary where KT has an opcode, HTTP elsewhere).
HTTP, BINARY, AUTO = "http", "binary", "auto"

_FLAG = b""  # the value of a presence-only RPC parameter (atomic, step, utf...)
_INT64 = struct.Struct(">q")
#: fields an RPC answer may hold besides its records (num, SIGNALED...)
_EXTRA_FIELDS = 4


# (slotted dataclasses, not NamedTuples: one is made per request, and a NamedTuple's
# constructor is a Python function around tuple.__new__, half again as dear)


@dataclass(slots=True)
class Http:
    """An HTTP request to send; answered with ``(ResponseHead, body)``.  ``head``: a HEAD
    request (no body whatever Content-Length says)."""

    data: bytes
    head: bool = False


@dataclass(slots=True)
class Binary:
    """A binary-protocol request (bytes, or pieces sent as produced); answered with what
    ``decode`` returns (nothing is read with ``noreply``)."""

    data: bytes | Iterable[bytes]
    decode: Callable[[bytes], tuple[Any, int]]
    noreply: bool = False


Request = Http | Binary
#: an operation's steps: a generator of requests returning the result
Op = Generator[Request, Any, T]
#: what an operation function returns: its steps, or one Binary request whose decoder gives
#: the result (see the module docstring)
Operation = Op[T] | Binary


def steps(op: Operation[T]) -> Op[T]:
    """``op`` as a generator (a one-request operation becomes the generator of its request)."""
    return _one(op) if type(op) is Binary else op  # type: ignore[return-value]


def _one(request: Binary) -> Generator[Request, Any, Any]:
    return (yield request)


class Session:
    """What an operation needs besides I/O; one per client view, never changed.

    ``packer``: the value packer; ``key_out``: how returned keys come back (str or
    bytes); ``host``: the Host header; ``wire``: :data:`HTTP`, :data:`BINARY` (ng's) or
    :data:`AUTO` (the cluster's); ``options``: the WAIT/SIGNAL parameters of every RPC;
    ``atomic``: ng's default for bulk calls; ``db_names``: the server's DB name -> index
    map (shared by every view of one server); ``signaled``: where the SIGNALED count of
    the last call is kept (a one-item list shared with the view).
    """

    __slots__ = ("packer", "pack", "unpack", "raw_values", "concatenates", "key_out", "host", "wire", "options",
                 "max_reply_size", "atomic", "db_names", "signaled", "fast", "strict")

    def __init__(self, packer: Any, key_out: Callable[[bytes], Any], host: bytes, wire: str = HTTP,
                 options: tuple[tuple[bytes, bytes], ...] = (), max_reply_size: int = 1 << 30,
                 atomic: bool | None = None, db_names: dict[bytes, int] | None = None,
                 signaled: list[int | None] | None = None) -> None:
        from .packers import BytesPacker

        self.packer = packer
        self.pack = packer.pack
        self.unpack = packer.unpack
        self.raw_values = isinstance(packer, BytesPacker)  # unpack is the identity
        self.concatenates = bool(getattr(packer, "concatenates", False))
        self.key_out = key_out
        self.host = host
        self.wire = wire
        self.options = options
        self.max_reply_size = max_reply_size
        self.atomic = wire == HTTP if atomic is None else atomic
        self.db_names = {} if db_names is None else db_names
        self.signaled: list[int | None] = [None] if signaled is None else signaled
        #: binary requests where KT has an opcode (not with options: only RPC carries them)
        self.fast = wire != HTTP and not options
        #: ng's binary mode: HTTP-only operations raise NotImplementedError
        self.strict = wire == BINARY

    def derive(self, **changes: Any) -> Session:
        """The same session with some fields changed (the DB name cache stays shared)."""
        fields = {name: getattr(self, name) for name in ("packer", "key_out", "host", "wire", "options",
                                                          "max_reply_size", "db_names")}
        fields["atomic"] = None if "wire" in changes else self.atomic
        fields.update(changes)
        return Session(**fields)

    def value(self, key: Any, raw: bytes) -> Any:
        """``raw`` unpacked: ValueDecodeError, naming ``key``, when the packer cannot."""
        if self.raw_values:
            return raw
        try:
            return self.unpack(raw)
        except Exception as exc:
            what = "the value at the cursor" if key is None else f"the value of {key!r}"
            raise ValueDecodeError(f"{what} does not decode with {type(self.packer).__name__}: {str(exc)[:200]}",
                                   key=key, raw=raw) from exc

    def http_only(self, what: str) -> None:
        """ng's binary mode refuses the operations KT has no binary opcode for."""
        if self.strict:
            raise NotImplementedError(f"{what} is supported under the HTTP protocol only")


# -- helpers -------------------------------------------------------------------------------------


def _too_large() -> NoReturn:
    """ktserver drops a binary connection whose record is over its limit: refuse it first
    (the error would otherwise look like a network failure, and be retried)."""
    raise ArgumentError(f"a value is larger than the binary protocol's limit of {_bin.DATAMAXSIZ} bytes")


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


def _expires(out: Mapping[bytes, bytes]) -> int | None:
    """The absolute expiry of an RPC answer's optional ``xt`` field (None: none)."""
    xt = out.get(b"xt")
    return None if xt is None else expires_at(parse_int(xt, "xt"))


def _orig_param(orig: Any) -> bytes:
    if isinstance(orig, (str, bytes)):
        text = orig.encode() if isinstance(orig, str) else orig
        if text not in (b"try", b"set"):
            raise ArgumentError(f"orig must be a number, 'try' or 'set', not {orig!r}")
        return text
    return b"%d" % _number(orig, "orig")


def xt_params(params: list[tuple[bytes, bytes]], xt: int | None) -> list[tuple[bytes, bytes]]:
    """``params`` with an ``xt`` field when ``xt`` is not None."""
    if xt is not None:
        params.append((b"xt", b"%d" % xt))
    return params


def _checked_count(count: int, sent: int) -> int:
    """A bulk write's count, which cannot exceed the records sent."""
    if count > sent:
        raise ProtocolError(f"the server counts {count} records of a request of {sent}")
    return count


def _count_decoder(magic: int, sent: int) -> Callable[[bytes], tuple[int, int]]:
    """The decoder of a set_bulk/remove_bulk reply to ``sent`` records (it cannot count more)."""
    return partial(_bin.decode_count_reply, magic=magic, max_hits=sent)


def _decode_one_record(buf: bytes) -> tuple[list[tuple[int, bytes, bytes, int]], int]:
    """The decoder of the reply to a get_bulk of one key."""
    return _bin.decode_get_bulk_reply(buf, 1)


_DB_REPORT_KEY = re.compile(rb"db_(\d+)")
_DB_REPORT_PATH = re.compile(rb" path=(.*)\Z", re.S)


def check_atomic(s: Session, atomic: bool | None) -> bool:
    """A bulk call's ``atomic``: the session's default when None; ArgumentError on the binary
    protocol, which has no atomic bulk calls."""
    atomic = s.atomic if atomic is None else bool(atomic)
    if atomic and s.wire == BINARY:
        raise ArgumentError("atomic supported under the HTTP protocol only")
    return atomic


def check_db(s: Session, db: Any) -> None:
    """ArgumentError for a database argument no server could take (checked before a
    cluster call fans out; a name is resolved by each server)."""
    if type(db) is int and s.wire != HTTP and not 0 <= db < 65536:
        raise ArgumentError(f"database index must be in 0..65535, not {db}")
    db_param(db)


# -- the wire ------------------------------------------------------------------------------------


def rpc(s: Session, procedure: bytes, params: list[tuple[bytes, bytes]], db: Any = 0,
        max_fields: int | None = None) -> Op[dict[bytes, bytes]]:
    """One TSV-RPC call with ``DB`` and the session's options: its output map, or the typed
    error of the server's status.  ``max_fields``: the most fields the answer can hold
    (None: as many as ``max_reply_size`` allows)."""
    if db != 0 or type(db) is not int:
        params.append((b"DB", db_param(db)))
    if s.options:
        params.extend(s.options)
    head, body = yield Http(encode_call(procedure, params, s.host))
    out = decode_answer(head, body, max_size=s.max_reply_size, max_fields=max_fields)
    if s.options:
        signaled = out.get(b"SIGNALED")
        if signaled is not None:
            s.signaled[0] = parse_int(signaled, "SIGNALED")
    return out


def _found(s: Session, procedure: bytes, params: list[tuple[bytes, bytes]], db: Any = 0) -> Op[bool]:
    """True when the call succeeds, False when the server answers 450 (no such record)."""
    try:
        yield from rpc(s, procedure, params, db)
    except LogicalInconsistencyError:
        return False
    return True


def db_index(s: Session, db: Any) -> Op[int]:
    """The index the binary protocol needs; a name is resolved once through ``report``
    (ktserver's rule: a name is the DB path after its last '/'; the highest index wins)."""
    if type(db) is int:
        if not 0 <= db < 65536:
            raise ArgumentError(f"database index must be in 0..65535, not {db}")
        return db
    name = db_param(db)
    if name[:1].isdigit():
        return int(re.match(rb"\d+", name).group())  # type: ignore[union-attr]
    index = s.db_names.get(name)
    if index is None:
        head, body = yield Http(encode_call(b"report", [], s.host))  # without the view's options
        names: dict[bytes, int] = {}
        for rkey, value in decode_answer(head, body, max_size=s.max_reply_size).items():
            m = _DB_REPORT_KEY.fullmatch(rkey)
            path = _DB_REPORT_PATH.search(value)
            if m and path:
                dbname = path.group(1).rsplit(b"/", 1)[-1]
                names[dbname] = max(int(m.group(1)), names.get(dbname, -1))
        s.db_names.clear()
        s.db_names.update(names)
        index = names.get(name)
        if index is None:
            raise InvalidArgumentError("no such database")
    return index


def _target(s: Session, key: bytes, db: Any) -> bytes | None:
    """The REST target for a key, or None when REST cannot carry this call."""
    if s.options:
        return None
    if db == 0 and type(db) is int:
        target = b"/0/" + _rest.quote_path(key)
    else:
        target = _rest.rest_target(db_param(db), key)
    return target if len(target) <= _rest.MAX_TARGET else None


def read_raw(s: Session, key: bytes, db: Any) -> Op[tuple[bytes, int | None] | None]:
    """(stored bytes, absolute expiry or None) of a record over RPC, or None when it is missing."""
    try:
        out = yield from rpc(s, b"get", [(b"key", key)], db)
    except LogicalInconsistencyError:
        return None
    return answer_value(out, b"value"), _expires(out)


def _get_one(kb: bytes, dbidx: int) -> Binary:
    """The binary request that reads one record (its answer goes to :func:`_one_record`)."""
    return Binary(_bin.encode_key_one(_bin.MAGIC_GET_BULK, dbidx, kb), _decode_one_record)


def _one_record(kb: bytes, recs: list[tuple[int, bytes, bytes, int]]) -> tuple[bytes, int] | None:
    """(stored value, xt) from the answer to :func:`_get_one`, or None."""
    if not recs:
        return None
    _, key, value, xt = recs[0]
    if key != kb:
        raise ProtocolError(f"get_bulk answered key {key[:80]!r} for {kb[:80]!r}")
    return value, xt


# -- server information ----------------------------------------------------------------------------


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


def _text_map(out: dict[bytes, bytes], typed: bool) -> dict[str, Any]:
    result = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in out.items()}
    return {k: _typed_value(k, v) for k, v in result.items()} if typed else result


def report(s: Session, typed: bool) -> Op[dict[str, Any]]:
    s.http_only("report")
    return _text_map((yield from rpc(s, b"report", [])), typed)


def status(s: Session, db: Any, typed: bool) -> Op[dict[str, Any]]:
    s.http_only("status")
    return _text_map((yield from rpc(s, b"status", [], db)), typed)


def status_field(s: Session, what: str, field: bytes, db: Any) -> Op[int]:
    """count/size: one number of a database's status."""
    s.http_only(what)
    return answer_int((yield from rpc(s, b"status", [], db)), field)


def clear(s: Session, db: Any) -> Op[bool]:
    s.http_only("clear")
    yield from rpc(s, b"clear", [], db)
    return True


def vacuum(s: Session, db: Any, step: int | None) -> Op[bool]:
    s.http_only("vacuum")
    yield from rpc(s, b"vacuum", [] if step is None else [(b"step", b"%d" % _number(step, "step"))], db)
    return True


def synchronize(s: Session, hard: bool, command: str | None, db: Any) -> Op[bool]:
    s.http_only("synchronize")
    params = [(b"hard", _FLAG)] if hard else []
    if command is not None:
        params.append((b"command", key_bytes(command)))
    yield from rpc(s, b"synchronize", params, db)
    return True


def void(s: Session) -> Op[dict[bytes, bytes]]:
    """The ``void`` procedure (a liveness check; it carries WAIT/SIGNAL options)."""
    return (yield from rpc(s, b"void", []))


# -- single records --------------------------------------------------------------------------------


def get(s: Session, key: Any, db: Any) -> Operation[Any]:
    if s.fast and s.raw_values and type(db) is int and 0 <= db < 65536:
        # one request (see the module docstring); only for values that need no unpacking:
        # an unpacking error in a decoder would cost the connection
        try:
            kb = key.encode("utf-8", "surrogateescape") if type(key) is str else key_bytes(key)
        except Exception as exc:
            return _failed(exc)
        return Binary(_bin.encode_key_one(_bin.MAGIC_GET_BULK, db, kb), partial(_decode_stored, kb))
    return _get(s, key, db)


def _decode_stored(kb: bytes, buf: bytes) -> tuple[bytes | None, int]:
    """The decoder of a one-request get: (the stored value of ``kb``, or None; bytes consumed)."""
    recs, used = _decode_one_record(buf)
    brec = _one_record(kb, recs)
    return None if brec is None else brec[0], used


def _get(s: Session, key: Any, db: Any) -> Op[Any]:
    kb = key_bytes(key)
    if s.fast:
        brec = _one_record(kb, (yield _get_one(kb, (yield from db_index(s, db)))))
        return None if brec is None else s.value(key, brec[0])
    target = _target(s, kb, db)
    if target is None:
        rec = yield from read_raw(s, kb, db)
        return None if rec is None else s.value(key, rec[0])
    head, body = yield Http(_rest.encode_get(target, s.host))
    if head.status == 200:
        return s.value(key, body)
    if head.status == 404:
        return None
    raise _rest.rest_error(head, body)


def get_with_expiry(s: Session, key: Any, db: Any) -> Op[tuple[Any, int | None] | None]:
    kb = key_bytes(key)
    if s.fast:
        brec = _one_record(kb, (yield _get_one(kb, (yield from db_index(s, db)))))
        return None if brec is None else (s.value(key, brec[0]), expires_at(brec[1]))
    rec = yield from read_raw(s, kb, db)
    return None if rec is None else (s.value(key, rec[0]), rec[1])


def get_int(s: Session, key: Any, db: Any) -> Op[int]:
    s.http_only("get_int")
    kb = key_bytes(key)
    target = _target(s, kb, db)
    if target is None:
        rec = yield from read_raw(s, kb, db)
        if rec is None:
            raise LogicalInconsistencyError("DB: 7: no record: no record", 450)
        raw = rec[0]
    else:
        head, raw = yield Http(_rest.encode_get(target, s.host))
        if head.status != 200:
            raise _rest.rest_error(head, raw)
    if len(raw) != 8:
        raise LogicalInconsistencyError(f"the value of {key!r} is {len(raw)} bytes, not an 8-byte integer")
    return _INT64.unpack(raw)[0]


def _on_record(s: Session, procedure: bytes, kb: bytes, db: Any, rest_request: Callable[[bytes, bytes], bytes],
               done: int, *, head: bool = False) -> Op[bool]:
    """check/remove over HTTP: True, or False when the record is missing (RPC 450, REST
    404).  REST when a target can carry the call (``done``: its success status)."""
    target = _target(s, kb, db)
    if target is None:
        return (yield from _found(s, procedure, [(b"key", kb)], db))
    answer, body = yield Http(rest_request(target, s.host), head)
    if answer.status == done:
        return True
    if answer.status == 404:
        return False
    raise _rest.rest_error(answer, body)


def check(s: Session, key: Any, db: Any) -> Op[bool]:
    s.http_only("check")
    return (yield from _on_record(s, b"check", key_bytes(key), db, _rest.encode_head, 200, head=True))


def remove(s: Session, key: Any, db: Any) -> Operation[bool]:
    if s.fast and type(db) is int and 0 <= db < 65536:  # one request (see the module docstring)
        try:
            kb = key_bytes(key)
        except Exception as exc:
            return _failed(exc)
        return _remove_one(kb, db)
    return _remove(s, key, db)


def _remove(s: Session, key: Any, db: Any) -> Op[bool]:
    kb = key_bytes(key)
    if s.fast:
        return (yield _remove_one(kb, (yield from db_index(s, db))))
    return (yield from _on_record(s, b"remove", kb, db, _rest.encode_delete, 204))


def _remove_one(kb: bytes, dbidx: int) -> Binary:
    """The binary request that removes one record (answered with whether it existed)."""
    return Binary(_bin.encode_key_one(_bin.MAGIC_REMOVE_BULK, dbidx, kb), _bin.decode_remove_one)


def seize(s: Session, key: Any, db: Any) -> Op[Any]:
    s.http_only("seize")
    try:
        out = yield from rpc(s, b"seize", [(b"key", key_bytes(key))], db)
    except LogicalInconsistencyError:
        return None
    return s.value(key, answer_value(out, b"value"))


def _put(s: Session, mode: bytes, key: Any, value: Any, expire: Expire, db: Any) -> Op[bool]:
    """set/add/replace over HTTP: True, or the error.  REST when there is no expiry."""
    kb = key_bytes(key)
    packed = s.pack(value)
    xt = xt_of(expire)
    target = _target(s, kb, db) if xt is None else None
    if target is None:
        name = b"set" if mode == _rest.MODE_SET else mode
        yield from rpc(s, name, xt_params([(b"key", kb), (b"value", packed)], xt), db)
        return True
    head, body = yield Http(_rest.encode_put(target, packed, s.host, mode))
    if head.status == 201:
        return True
    raise _rest.rest_error(head, body)


def set_record(s: Session, key: Any, value: Any, expire: Expire, db: Any) -> Operation[bool]:
    if expire is KEEP:
        return write_keeping(s, key, db, lambda raw: s.pack(value), create=True)
    if s.fast and type(db) is int and 0 <= db < 65536:  # one request (see the module docstring)
        try:
            return _set_one(s, key, value, expire, db)
        except Exception as exc:
            return _failed(exc)
    return _set(s, key, value, expire, db)


def _set(s: Session, key: Any, value: Any, expire: Expire, db: Any) -> Op[bool]:
    if not s.fast:
        return (yield from _put(s, _rest.MODE_SET, key, value, expire, db))
    return (yield _set_one(s, key, value, expire, (yield from db_index(s, db))))


def _set_one(s: Session, key: Any, value: Any, expire: Expire, dbidx: int) -> Binary:
    """The binary request that sets one record (answered with whether it was stored)."""
    kb = key.encode("utf-8", "surrogateescape") if type(key) is str else key_bytes(key)
    xt = _bin.XT_NONE if expire is None else binary_xt(xt_of(expire))
    packed = s.pack(value)
    if len(packed) > _bin.DATAMAXSIZ:
        _too_large()
    return Binary(_bin.encode_set_one(dbidx, kb, packed, xt), _bin.decode_set_one)


def _failed(exc: Exception) -> Op[Any]:
    """An operation that raises ``exc`` when driven: a one-request operation's argument
    error, raised where every other operation raises its own (in the driver, observed)."""
    raise exc
    yield  # a generator


def add(s: Session, key: Any, value: Any, expire: Expire, db: Any) -> Op[bool]:
    s.http_only("add")
    return (yield from _put(s, _rest.MODE_ADD, key, value, None if expire is KEEP else expire, db))


def replace(s: Session, key: Any, value: Any, expire: Expire, db: Any) -> Op[bool]:
    s.http_only("replace")
    if expire is KEEP:
        return (yield from write_keeping(s, key, db, lambda raw: s.pack(value), create=False))
    try:
        return (yield from _put(s, _rest.MODE_REPLACE, key, value, expire, db))
    except LogicalInconsistencyError:
        return False


def append(s: Session, key: Any, value: Any, expire: Expire, db: Any) -> Op[bool]:
    s.http_only("append")
    if not isinstance(value, (str, bytes)):
        raise ArgumentError("value is not a string or bytes type")
    if s.concatenates and expire is not KEEP:
        yield from rpc(s, b"append", xt_params([(b"key", key_bytes(key)), (b"value", s.pack(value))],
                                               xt_of(expire)), db)
        return True

    def appended(raw: bytes | None) -> bytes:
        if raw is None:
            return s.pack(value)
        if s.concatenates:
            return raw + s.pack(value)
        data = s.value(key, raw)
        if not isinstance(data, (str, bytes)):
            raise LogicalInconsistencyError("stored value is not a string or bytes type")
        if isinstance(data, bytes):
            return s.pack(data + (value.encode("utf-8") if isinstance(value, str) else value))
        return s.pack(data + (value.decode("utf-8") if isinstance(value, bytes) else value))

    if expire is KEEP:
        return (yield from write_keeping(s, key, db, appended, create=True))
    return (yield from write_keeping(s, key, db, appended, create=True, xt=xt_of(expire)))


def write_keeping(s: Session, key: Any, db: Any, new_value: Callable[[bytes | None], bytes], *, create: bool,
                  xt: int | None | object = KEEP) -> Op[bool]:
    """Write ``new_value(old_raw_or_None)`` with a cas against what was read, so no
    concurrent change is lost (KEEP emulation: KT has no "keep the expiry" write); the
    expiry is the record's own (``xt`` KEEP) or ``xt``.  False when the record is missing
    and ``create`` is not set."""
    kb = key_bytes(key)
    for _ in range(KEEP_RETRIES):
        rec = yield from read_raw(s, kb, db)
        if rec is None:
            if not create:
                return False
            params = [(b"key", kb), (b"nval", new_value(None))]
            if xt is not KEEP:
                xt_params(params, xt)  # type: ignore[arg-type]
        else:
            raw, expires = rec
            params = [(b"key", kb), (b"oval", raw), (b"nval", new_value(raw))]
            xt_params(params, (None if expires is None else -expires) if xt is KEEP else xt)  # type: ignore[arg-type]
        try:
            yield from rpc(s, b"cas", params, db)
        except LogicalInconsistencyError:
            continue
        return True
    raise LogicalInconsistencyError(f"{key!r} changed concurrently {KEEP_RETRIES} times; gave up")


def touch(s: Session, key: Any, expire: Expire, db: Any) -> Op[bool]:
    s.http_only("touch")
    if expire is KEEP:
        return (yield from _on_record(s, b"check", key_bytes(key), db, _rest.encode_head, 200, head=True))
    return (yield from write_keeping(s, key, db, lambda raw: raw, create=False, xt=xt_of(expire)))  # type: ignore


def _current_xt(s: Session, kb: bytes, db: Any) -> Op[int | None]:
    """For KEEP on increment/cas: the record's expiry as an absolute xt, None if none/missing."""
    try:
        out = yield from rpc(s, b"check", [(b"key", kb)], db)
    except LogicalInconsistencyError:
        return None
    expires = _expires(out)
    return None if expires is None else -expires


def _xt_or_kept(s: Session, kb: bytes, expire: Expire, db: Any) -> Op[int | None]:
    return (yield from _current_xt(s, kb, db)) if expire is KEEP else xt_of(expire)


def increment(s: Session, key: Any, delta: Any, expire: Expire, db: Any, orig: Any) -> Op[int]:
    s.http_only("increment")
    kb = key_bytes(key)
    params = [(b"key", kb), (b"num", b"%d" % _number(delta, "delta"))]
    if orig is not None:
        params.append((b"orig", _orig_param(orig)))
    xt = yield from _xt_or_kept(s, kb, expire, db)
    return answer_int((yield from rpc(s, b"increment", xt_params(params, xt), db)), b"num")


def increment_double(s: Session, key: Any, delta: Any, expire: Expire, db: Any, orig: Any) -> Op[float]:
    s.http_only("increment_double")
    kb = key_bytes(key)
    params = [(b"key", kb), (b"num", repr(float(delta)).encode())]
    if orig is not None:
        params.append((b"orig", orig.encode() if isinstance(orig, str) else
                       orig if isinstance(orig, bytes) else repr(float(orig)).encode()))
    xt = yield from _xt_or_kept(s, kb, expire, db)
    return answer_float((yield from rpc(s, b"increment_double", xt_params(params, xt), db)), b"num")


def cas(s: Session, key: Any, old_val: Any, new_val: Any, expire: Expire, db: Any) -> Op[bool]:
    s.http_only("cas")
    if old_val is None and new_val is None:
        raise ArgumentError("old value and/or new value must be specified")
    kb = key_bytes(key)
    params = [(b"key", kb)]
    if old_val is not None:
        params.append((b"oval", s.pack(old_val)))
    if new_val is not None:
        params.append((b"nval", s.pack(new_val)))
    xt = yield from _xt_or_kept(s, kb, expire, db)
    yield from rpc(s, b"cas", xt_params(params, xt), db)
    return True


# -- bulk ------------------------------------------------------------------------------------------
#
# The bulk operations come in two layers: set_bulk/remove_bulk/get_bulk take the caller's
# arguments as KyotoTycoon does; the *_encoded forms take keys already encoded (and
# values already packed), which is what a cluster hands each shard after checking and
# encoding a whole call once.


def packed_values(s: Session, values: Sequence[Any]) -> list[bytes]:
    """set_bulk's values packed (bytes pass as they are with the bytes packer)."""
    if s.raw_values and set(map(type, values)) == {bytes}:
        return list(values)
    pack = s.pack
    return [pack(v) for v in values]


def set_bulk_args(s: Session, kv_dict: Mapping[Any, Any], expire: Expire, atomic: bool | None
                  ) -> tuple[bool, int | None]:
    """set_bulk's arguments checked: (atomic, xt)."""
    atomic = check_atomic(s, atomic)
    if expire is KEEP:
        raise ArgumentError("expire=KEEP is not supported by set_bulk")
    record_map(kv_dict)
    return atomic, xt_of(expire)


def set_bulk(s: Session, kv_dict: Mapping[Any, Any], expire: Expire, atomic: bool | None, db: Any) -> Op[int]:
    atomic, xt = set_bulk_args(s, kv_dict, expire, atomic)
    if not kv_dict:
        return 0
    return (yield from set_bulk_encoded(s, keys_bytes(kv_dict), packed_values(s, list(kv_dict.values())), xt,
                                        atomic, db))


def set_bulk_encoded(s: Session, kbs: list[bytes], values: list[bytes], xt: int | None, atomic: bool,
                     db: Any) -> Op[int]:
    """Store records whose keys are encoded and values packed; returns how many were stored."""
    if s.fast and not atomic:
        dbidx = yield from db_index(s, db)
        bxt = binary_xt(xt)
        if max(map(len, values)) > _bin.DATAMAXSIZ:
            _too_large()
        return (yield Binary(_bin.set_bulk_request(dbidx, kbs, values, bxt),
                             _count_decoder(_bin.MAGIC_SET_BULK, len(kbs))))
    params = [(b"atomic", _FLAG)] if atomic else []
    xt_params(params, xt)
    params += zip([b"_" + kb for kb in kbs], values, strict=True)
    return _checked_count(answer_int((yield from rpc(s, b"set_bulk", params, db)), b"num"), len(kbs))


def remove_bulk(s: Session, keys: Iterable[Any], atomic: bool | None, db: Any) -> Op[int]:
    atomic = check_atomic(s, atomic)
    kbs = keys_bytes(keys)
    if not kbs:
        return 0
    return (yield from remove_bulk_encoded(s, kbs, atomic, db))


def remove_bulk_encoded(s: Session, kbs: list[bytes], atomic: bool, db: Any) -> Op[int]:
    """Remove records by encoded key; returns how many existed."""
    if s.fast and not atomic:
        request = _bin.remove_bulk_request((yield from db_index(s, db)), kbs)
        return (yield Binary(request, _count_decoder(_bin.MAGIC_REMOVE_BULK, len(kbs))))
    params = [(b"atomic", _FLAG)] if atomic else []
    params += zip([b"_" + kb for kb in kbs], itertools.repeat(_FLAG))
    return _checked_count(answer_int((yield from rpc(s, b"remove_bulk", params, db)), b"num"), len(kbs))


def get_bulk(s: Session, keys: Iterable[Any], atomic: bool | None, db: Any) -> Op[dict[Any, Any]]:
    atomic = check_atomic(s, atomic)
    keys = key_list(keys)
    if not keys:
        return {}
    return bulk_values(s, keys, (yield from get_bulk_encoded(s, keys_bytes(keys), atomic, db)))


def get_bulk_encoded(s: Session, kbs: list[bytes], atomic: bool, db: Any) -> Op[list[bytes | None]]:
    """The stored values of encoded keys, in their order (None: no such record)."""
    if s.fast and not atomic:
        request = _bin.get_bulk_request((yield from db_index(s, db)), kbs)
        asked = len(kbs)
        found = yield Binary(request, lambda buf: _bin.decode_get_bulk_values(buf, asked))
    else:
        kbs = [b"_" + kb for kb in kbs]  # the answer's keys carry the same prefix
        params = [(b"atomic", _FLAG)] if atomic else []
        params += zip(kbs, itertools.repeat(_FLAG))
        found = yield from rpc(s, b"get_bulk", params, db, max_fields=len(kbs) + _EXTRA_FIELDS)
    return list(map(found.get, kbs))


def bulk_values(s: Session, keys: Sequence[Any], raws: Iterable[bytes | None]) -> dict[Any, Any]:
    """get_bulk's result: ``{key: value}`` of the records found, keyed by the caller's own
    key objects, in their order.  Values that do not decode: PartialFailureError with
    the others in ``results`` and a ValueDecodeError per bad key in ``key_errors``."""
    if s.raw_values:
        return {key: raw for key, raw in zip(keys, raws, strict=True) if raw is not None}
    records = [(key, raw) for key, raw in zip(keys, raws, strict=True) if raw is not None]
    unpack = s.unpack
    try:
        return {key: unpack(raw) for key, raw in records}
    except Exception:  # noqa: BLE001 - some value does not decode: find which, keep the others
        pass
    good: dict[Any, Any] = {}
    bad: dict[Any, ValueDecodeError] = {}
    for key, raw in records:
        try:
            good[key] = s.value(key, raw)
        except ValueDecodeError as exc:
            bad[key] = exc
    if not bad:
        return good
    named = ", ".join(repr(key) for key in list(bad)[:5]) + (", ..." if len(bad) > 5 else "")
    raise PartialFailureError(f"get_bulk: {len(bad)} of {len(records)} values do not decode ({named})",
                              good, {}, [], bad)


# -- matching --------------------------------------------------------------------------------------


def _match(s: Session, procedure: bytes, params: list[tuple[bytes, bytes]], limit: int | None,
           db: Any) -> Op[list[Any]]:
    if limit:  # ng: None or 0 means no limit
        params.append((b"max", b"%d" % _number(limit, "limit")))
    out = yield from rpc(s, procedure, params, db)
    ranked = sorted((parse_int(rank, "rank"), k[1:]) for k, rank in out.items() if k[:1] == b"_")
    key_out = s.key_out
    return [key_out(k) for _, k in ranked]


def match_prefix(s: Session, prefix: Any, limit: int | None, db: Any) -> Op[list[Any]]:
    s.http_only("match_prefix")
    if prefix is None:
        raise ArgumentError("no key prefix specified")
    return (yield from _match(s, b"match_prefix", [(b"prefix", key_bytes(prefix))], limit, db))


def match_regex(s: Session, regex: Any, limit: int | None, db: Any) -> Op[list[Any]]:
    s.http_only("match_regex")
    if regex is None:
        raise ArgumentError("no regular expression specified")
    return (yield from _match(s, b"match_regex", [(b"regex", key_bytes(regex))], limit, db))


def match_similar(s: Session, origin: Any, distance: int | None, limit: int | None, db: Any,
                  utf: bool | None) -> Op[list[Any]]:
    s.http_only("match_similar")
    if origin is None:
        raise ArgumentError("no origin string specified")
    params = [(b"origin", key_bytes(origin))]
    if utf if utf is not None else isinstance(origin, str):
        params.append((b"utf", _FLAG))
    if distance is not None and distance >= 0:
        params.append((b"range", b"%d" % _number(distance, "distance")))
    return (yield from _match(s, b"match_similar", params, limit, db))


# -- scripts ---------------------------------------------------------------------------------------


def play_script(s: Session, name: str | bytes, kv_dict: Mapping[Any, Any] | None) -> Op[dict[Any, bytes]]:
    records = []
    for k, v in (kv_dict or {}).items():
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif not isinstance(v, bytes):
            raise ArgumentError("value must be a byte sequence")
        records.append((key_bytes(k), v))
    nb = key_bytes(name)
    key_out = s.key_out
    if s.fast:
        most = max(0, s.max_reply_size // FIELD_COST)
        out = yield Binary(_bin.encode_play_script(nb, records), lambda buf: _bin.decode_play_script_reply(buf, most))
        if out is None:
            raise ScriptError(f"play_script {nb!r} failed: the server answered 0xBF (the procedure failed "
                              "or does not exist, or scripting is off; call it over HTTP for the reason)", 500)
        return {key_out(k): v for k, v in out}
    params = [(b"name", nb)] + [(b"_" + k, v) for k, v in records]
    out = yield from rpc(s, b"play_script", params)
    return {key_out(k[1:]): v for k, v in out.items() if k[:1] == b"_"}


# -- cursors ---------------------------------------------------------------------------------------
#
# A cursor's operations run on the connection that holds the server's cursor (see
# ktcluster.cursor); ``cur`` is the cursor id.


def cursor_call(s: Session, procedure: bytes, cur: int, params: list[tuple[bytes, bytes]],
                db: Any = None) -> Op[dict[bytes, bytes]]:
    params.insert(0, (b"CUR", b"%d" % cur))
    if db is not None and (db != 0 or type(db) is not int):
        params.append((b"DB", db_param(db)))
    head, body = yield Http(encode_call(procedure, params, s.host))
    return decode_answer(head, body, max_size=s.max_reply_size)


def cursor_move(s: Session, procedure: bytes, cur: int, key: Any = None, db: Any = None) -> Op[bool]:
    """jump/jump_back/step/step_back: False when there is no record to move to (450)."""
    params = [] if key is None else [(b"key", key_bytes(key))]
    try:
        yield from cursor_call(s, procedure, cur, params, db)
    except LogicalInconsistencyError:
        return False
    return True


def cursor_set_value(s: Session, cur: int, value: Any, step: bool, expire: Expire) -> Op[bool]:
    if expire is KEEP:
        raise ArgumentError("expire=KEEP is not supported by Cursor.set_value")
    params = [(b"value", s.pack(value))]
    if step:
        params.append((b"step", _FLAG))
    yield from cursor_call(s, b"cur_set_value", cur, xt_params(params, xt_of(expire)))
    return True


def cursor_get_key(s: Session, cur: int, step: bool) -> Op[Any]:
    out = yield from cursor_call(s, b"cur_get_key", cur, [(b"step", _FLAG)] if step else [])
    return s.key_out(answer_value(out, b"key"))


def cursor_get_value(s: Session, cur: int, step: bool) -> Op[Any]:
    out = yield from cursor_call(s, b"cur_get_value", cur, [(b"step", _FLAG)] if step else [])
    return s.value(None, answer_value(out, b"value"))


def cursor_get(s: Session, cur: int, step: bool) -> Op[tuple[Any, Any, int | None] | None]:
    try:
        out = yield from cursor_call(s, b"cur_get", cur, [(b"step", _FLAG)] if step else [])
    except LogicalInconsistencyError:
        return None
    key = s.key_out(answer_value(out, b"key"))
    return key, s.value(key, answer_value(out, b"value")), _expires(out)


def cursor_seize(s: Session, cur: int) -> Op[dict[str, Any]]:
    out = yield from cursor_call(s, b"cur_seize", cur, [])
    key = s.key_out(answer_value(out, b"key"))
    return {"key": key, "value": s.value(key, answer_value(out, b"value"))}

