"""Value packers: how Python values become the bytes stored in KT, and back.

The ``KT_PACKER_*`` constants and the memcached packers are those of
python-kyototycoon-ng 0.7.5, byte for byte (pickle protocol 2, compact JSON,
UTF-8 strings, raw bytes, flags as the value's last 4 big-endian bytes), so data
written by either library reads back with the other.

A packer is any object with ``pack(value) -> bytes`` and ``unpack(bytes) -> value``
(pass it as ``custom_packer`` with ``KT_PACKER_CUSTOM``).

**Security.**  KT has no authentication: whoever reaches a server's port can
store any bytes under any key.  With ``KT_PACKER_PICKLE`` every read unpickles
those bytes, and unpickling runs code -- one crafted record runs code in every
process that reads it.  Use pickle only when every client of every server is
trusted.  ``KyotoTycoon`` keeps python-kyototycoon-ng's pickle default (a
drop-in must read what ng wrote); ``Cluster`` defaults to ``KT_PACKER_BYTES``
(bytes in and out, ``str`` stored as UTF-8, as redis-py does) and unpickles only
when asked.  A value that does not decode raises
:class:`~ktcluster.errors.ValueDecodeError`; one the packer cannot store
(``set("k", 5)`` with the string or bytes packer) raises
:class:`~ktcluster.errors.ArgumentError` before anything is sent.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from typing import Any, Protocol

from .connection import DEFAULT_MAX_REPLY_SIZE
from .errors import ArgumentError, InvalidArgumentError, KyotoTycoonException

__all__ = [
    "KT_PACKER_CUSTOM", "KT_PACKER_PICKLE", "KT_PACKER_JSON", "KT_PACKER_STRING", "KT_PACKER_BYTES",
    "Packer", "PicklePacker", "JSONPacker", "StringPacker", "BytesPacker",
    "MemcachePacker", "SimpleMemcachePacker", "make_packer",
]

KT_PACKER_CUSTOM = 0
KT_PACKER_PICKLE = 1
KT_PACKER_JSON = 2
KT_PACKER_STRING = 3
KT_PACKER_BYTES = 4

_FLAGS = struct.Struct(">I")


class Packer(Protocol):
    """What ``custom_packer`` must provide."""

    def pack(self, data: Any) -> bytes: ...

    def unpack(self, data: bytes) -> Any: ...


class PicklePacker:
    """pickle protocol 2 (ng's choice: readable by Python 2 and 3).

    **Unpickling runs code**: anyone who can write to the KT server (KT has no
    authentication) can run code in every process that reads through this packer.
    Use it only when every writer is trusted."""

    concatenates = False

    @staticmethod
    def pack(data: Any) -> bytes:
        return pickle.dumps(data, 2)

    unpack = staticmethod(pickle.loads)


class JSONPacker:
    """Compact UTF-8 JSON."""

    concatenates = False

    @staticmethod
    def pack(data: Any) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def unpack(data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


class StringPacker:
    """``str`` values stored as UTF-8."""

    #: pack(a) + pack(b) == pack(a + b): append can run on the server.
    concatenates = True

    @staticmethod
    def pack(data: str) -> bytes:
        if not isinstance(data, str):
            raise ArgumentError(f"KT_PACKER_STRING stores str, not {type(data).__name__}")
        return data.encode("utf-8")

    @staticmethod
    def unpack(data: bytes) -> str:
        return data.decode("utf-8")


class BytesPacker:
    """Raw bytes (a ``str`` is stored as its UTF-8 encoding, a bytearray/memoryview as bytes)."""

    concatenates = True

    @staticmethod
    def pack(data: bytes | bytearray | memoryview | str) -> bytes:
        if type(data) is bytes:
            return data
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        raise ArgumentError(f"KT_PACKER_BYTES stores bytes or str, not {type(data).__name__}")

    @staticmethod
    def unpack(data: bytes) -> bytes:
        return data


class SimpleMemcachePacker:
    """``(value_bytes, flags)`` pairs stored the way KT's memcached plug-in does with
    ``opts=f``: the flags as the value's last 4 bytes, big-endian."""

    concatenates = False

    def pack(self, data: tuple[bytes, int]) -> bytes:
        """Pack a ``(value, flags)`` pair."""
        value, flags = data
        if not 0 <= flags < 2 ** 32:
            raise ValueError("flags must fit in a 32-bit unsigned integer")
        return bytes(value) + _FLAGS.pack(flags)

    def unpack(self, data: bytes) -> tuple[bytes, int]:
        """Return the ``(value, flags)`` pair; a value shorter than 4 bytes has flags 0
        (as the plug-in reads it)."""
        if len(data) < 4:
            return data, 0
        return data[:-4], _FLAGS.unpack(data[-4:])[0]


class MemcachePacker:
    """Byte values shared with memcached clients through KT's plug-in (``opts=f``).

    Flags are ignored on read and zeroed on write, except the gzip flag: with
    ``gzip_enabled``, values of at least ``gzip_threshold`` bytes are gzipped on
    write with bit ``gzip_flag`` (1..32) set, and values carrying that bit are
    decompressed on read -- to at most ``max_size`` bytes (default 257 MiB, like a
    reply): a value that inflates to more (a decompression bomb) is a ValueError,
    which the client reports as a ValueDecodeError.  Use
    :class:`SimpleMemcachePacker` to control the flags.
    """

    concatenates = False

    def __init__(self, gzip_enabled: bool = False, gzip_threshold: int = 128, gzip_flag: int = 1, *,
                 max_size: int = DEFAULT_MAX_REPLY_SIZE) -> None:
        if not 1 <= gzip_flag <= 32:
            raise ValueError("gzip flag must be an integer between 1 and 32")
        self.max_size = max_size
        self.gzip_enabled = gzip_enabled
        self.gzip_threshold = gzip_threshold
        self.gzip_flag = gzip_flag
        self._gzip_bit = 1 << (gzip_flag - 1)
        self._gzip_flag_bytes = _FLAGS.pack(self._gzip_bit)

    def pack(self, data: bytes) -> bytes:
        """The value plus a flags suffix (gzipped first when enabled and large enough)."""
        if not self.gzip_enabled or len(data) < self.gzip_threshold:
            return bytes(data) + b"\0\0\0\0"
        return gzip.compress(data) + self._gzip_flag_bytes

    def unpack(self, data: bytes) -> bytes:
        """The value without its flags suffix, decompressed when its gzip bit is set."""
        if len(data) < 4:
            return data
        stored, flags = data[:-4], _FLAGS.unpack(data[-4:])[0]
        if self.gzip_enabled and flags & self._gzip_bit:
            return _gunzip(stored, self.max_size)
        return stored


def _gunzip(data: bytes, max_size: int) -> bytes:
    """gzip.decompress (every member) that refuses to inflate past ``max_size`` bytes."""
    out: list[bytes] = []
    size = 0
    while data:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = member.decompress(data, max_size - size + 1)
        size += len(chunk)
        if size > max_size or member.unconsumed_tail:
            raise ValueError(f"a gzipped value inflates to more than {max_size} bytes")
        if not member.eof:
            raise EOFError("a gzipped value ends before its end-of-stream marker")
        out.append(chunk)
        data = member.unused_data.lstrip(b"\0")  # members may be padded with NULs, as gzip reads them
    return b"".join(out)


_BUILTIN = {
    KT_PACKER_PICKLE: PicklePacker,
    KT_PACKER_JSON: JSONPacker,
    KT_PACKER_STRING: StringPacker,
    KT_PACKER_BYTES: BytesPacker,
}


def make_packer(pack_type: int = KT_PACKER_PICKLE, custom_packer: Any = None) -> Any:
    """The packer for ng's ``pack_type``/``custom_packer`` arguments, with ng's errors."""
    if pack_type != KT_PACKER_CUSTOM and custom_packer is not None:
        raise InvalidArgumentError('custom packer object supported for "KT_PACKER_CUSTOM" only')
    if pack_type == KT_PACKER_CUSTOM:
        if custom_packer is None:
            raise InvalidArgumentError('"KT_PACKER_CUSTOM" requires a packer object')
        if not callable(getattr(custom_packer, "pack", None)) or not callable(getattr(custom_packer, "unpack", None)):
            raise InvalidArgumentError("a custom packer needs callable pack() and unpack() methods")
        return custom_packer
    cls = _BUILTIN.get(pack_type)
    if cls is None:
        raise KyotoTycoonException("unsupported pack type specified")
    return cls()
