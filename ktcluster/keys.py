"""Keys and databases as callers give them, and as they travel.

* A **key** is ``str`` or bytes-like (:data:`Key`).  On the wire and on the ring it is
  bytes: ``str`` as UTF-8, with ``surrogateescape`` so that a key that was not UTF-8
  and came back as ``str`` (``decode_keys=True``) round-trips; bytes-like as its bytes.
  So ``"a"`` and ``b"a"`` are the same key.
* A bulk call takes a **collection** of keys (set_bulk a mapping of key -> value): one
  ``str`` or ``bytes`` is refused (its characters would be taken for keys).
* A **database** is an index (``int``) or a name (``str``/``bytes``: the DB path after
  its last ``/``, as ktserver names them) (:data:`DB`).

Every function raises :class:`~ktcluster.errors.ArgumentError` for what it refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import ArgumentError

__all__ = ["Key", "KeyT", "DB", "key_bytes", "keys_bytes", "key_list", "record_map", "decode_key", "keep_bytes",
           "db_param"]

Key = str | bytes | bytearray | memoryview
#: the caller's key type, kept through a bulk call (get_bulk answers with the caller's key objects)
KeyT = TypeVar("KeyT", bound=Key)
DB = int | str | bytes


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


def keys_bytes(keys: Iterable[Any]) -> list[bytes]:
    """:func:`key_bytes` of many keys (fast when they are all plain UTF-8 str)."""
    keys = key_list(keys)
    try:
        return list(map(str.encode, keys))
    except (TypeError, UnicodeEncodeError):
        return [key_bytes(key) for key in keys]


def record_map(kv_dict: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """The records of set_bulk: ArgumentError unless they are a mapping of key -> value."""
    if not isinstance(kv_dict, Mapping):
        raise ArgumentError(f"records must be a mapping of key -> value, not {type(kv_dict).__name__}")
    return kv_dict


def decode_key(key: bytes) -> str:
    """A key the server handed back, as str (``decode_keys=True``): bytes that are not
    UTF-8 decode with ``surrogateescape``, so :func:`key_bytes` gives them back."""
    return key.decode("utf-8", "surrogateescape")


def keep_bytes(key: bytes) -> bytes:
    """A key the server handed back, as bytes (``decode_keys=False``)."""
    return key


def db_param(db: Any) -> bytes:
    """The RPC ``DB`` value of a database: its index or its name."""
    if type(db) is int:
        if db < 0:
            raise ArgumentError(f"database index must be >= 0, not {db}")
        return b"%d" % db
    if isinstance(db, str):
        return db.encode("utf-8")
    if isinstance(db, bytes):
        return db
    raise ArgumentError(f"db must be an index or a name, not {db!r}")
