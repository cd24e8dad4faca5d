"""The hash functions that decide the record order of Kyoto Cabinet's hash databases.

A hash database iterates its records in bucket order, so the embedded server must hash
keys exactly as the real one to hand out the same cursor walks and ``match_*`` ranks:

* :func:`murmur` -- kc::hashmurmur (StashDB ``:``, CacheDB ``*``, DirDB file names);
* :func:`tr1_fnv` -- the ``std::tr1::hash<std::string>`` of the libstdc++ that ktserver
  was built with (ProtoHashDB ``-``, a ``tr1::unordered_map``);
* :func:`hashpath` -- kc::hashpath, the file name DirDB (``.kcd``) gives a record;
* :func:`fnv` -- kc::hashfnv (a part of hashpath, and the Lua ``kt.hash_fnv``).
"""

from __future__ import annotations

__all__ = ["murmur", "tr1_fnv", "hashpath", "fnv"]

_M64 = (1 << 64) - 1
_MUL = 0xC6A4A7935BD1E995


def murmur(data: bytes) -> int:
    """kc::hashmurmur: a 64-bit MurmurHash2 variant (seed 19780211)."""
    size = len(data)
    mul = _MUL
    h = (19780211 ^ (size * mul)) & _M64
    end8 = size - size % 8
    if end8:
        from_bytes = int.from_bytes
        for i in range(0, end8, 8):
            num = (from_bytes(data[i:i + 8], "little") * mul) & _M64
            num = ((num ^ (num >> 47)) * mul) & _M64
            h = ((h * mul) & _M64) ^ num
    if size > end8:
        h = ((h ^ int.from_bytes(data[end8:], "little")) * mul) & _M64
    h ^= h >> 47
    h = (h * mul) & _M64
    return h ^ (h >> 47)


def tr1_fnv(data: bytes) -> int:
    """libstdc++ ``tr1::hash<std::string>``: 64-bit FNV-1a over *signed* chars."""
    h = 14695981039346656037
    for c in data:
        h = ((h ^ (c if c < 0x80 else c + 0xFFFFFFFFFFFFFF00)) * 1099511628211) & _M64
    return h


_HEXDIGITS = b"0123456789abcdefghijklmnopqrstuvwxyz"


def fnv(data: bytes) -> int:
    """kc::hashfnv: 64-bit FNV-1a with Kyoto Cabinet's multiplier (109951162811)."""
    h = 14695981039346656037
    for c in data:
        h = ((h ^ c) * 109951162811) & _M64
    return h


def _fold(h: int) -> int:
    return (((h & 0xFFFF000000000000) >> 48) | ((h & 0x0000FFFF00000000) >> 16)) ^ \
        (((h & 0x000000000000FFFF) << 16) | ((h & 0x00000000FFFF0000) >> 16))


def hashpath(data: bytes) -> str:
    """kc::hashpath: the hex of a key up to 10 bytes, otherwise a length/checksum prefix
    and 16 hash digits.  DirDB names each record file so."""
    size = len(data)
    if size <= 10:
        return data.hex() if size else "0"
    out = bytearray()
    out.append(ord("f") + 1 + (size & 0x0F))
    for i in (0, 3, 6):
        num = (data[i] ^ data[i + 1] ^ data[i + 2] ^ data[size - i - 1] ^ data[size - i - 2]
               ^ data[size - i - 3]) % 36
        out.append(_HEXDIGITS[num])
    h = murmur(data)
    inc = _fold(fnv(data))
    for _ in range(8):
        least = h >> 56
        num = least >> 4
        if inc & 1:
            num += 0x10
        inc >>= 1
        out.append(_HEXDIGITS[num])
        num = least & 0x0F
        if inc & 1:
            num += 0x10
        inc >>= 1
        out.append(_HEXDIGITS[num])
        h = (h << 8) & _M64
    return out.decode()
