"""TSV-RPC bodies: KT's column encodings (colenc B/Q/U), TSV and form maps.

Pure functions over bytes.  The decoders reproduce Kyoto Cabinet's lenient
ones exactly (kcutil.h urldecode/quotedecode/basedecode: they stop at a NUL,
skip junk, never fail), because the embedded server must read requests as
ktserver does.  The client encodes with the same rules and decodes what the
server sends according to the response's Content-Type, strictly
(``decode_fields(..., strict=True)``): ktserver's encoders write canonical
fields only, and anything else is a ProtocolError, decoded in linear time at C
speed (the lenient decoders walk junk byte by byte in Python).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import unquote_to_bytes

from ..errors import ProtocolError

__all__ = [
    "TSV_CONTENT_TYPE",
    "url_encode",
    "url_decode",
    "quote_encode",
    "quote_decode",
    "base64_encode",
    "base64_decode",
    "choose_encoding",
    "colenc_of",
    "encode_map",
    "decode_fields",
    "parse_tsv",
    "parse_form",
    "dump_tsv",
]

TSV_CONTENT_TYPE = b"text/tab-separated-values"

# -- URL encoding -----------------------------------------------------------------------------

_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~")
_URL_SAFE_BYTES = bytes(sorted(_URL_SAFE))
_URL_TABLE = [chr(c).encode() if c in _URL_SAFE else b"%%%02x" % c for c in range(256)]
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


def url_encode(data: bytes) -> bytes:
    """kc::urlencode: keep ``[A-Za-z0-9_.~-]``, everything else ``%xx`` in lower-case hex."""
    if not data.translate(None, _URL_SAFE_BYTES):
        return data
    table = _URL_TABLE
    return b"".join([table[c] for c in data])


_URL_PLAIN = re.compile(rb"[^%+\x00-\x20\x7f-\xff]*")
# Well-formed escapes only (what ktserver's encoder writes): the stdlib decoder agrees.
_URL_CANONICAL = re.compile(rb"(?:[^%+\x00-\x20\x7f-\xff]|%[0-9A-Fa-f]{2})*")


def url_decode(data: bytes) -> bytes:
    """kc::urldecode: ``%XX`` (any case; bad hex digits count as 0), ``+`` is a space,
    raw bytes <= 0x20, 0x7F and >= 0x80 are dropped (KC compares a signed ``char``),
    a truncated escape ends the input.  The input ends at its first NUL (KC works on
    C strings)."""
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    if _URL_PLAIN.fullmatch(data):
        return data
    if _URL_CANONICAL.fullmatch(data):
        return unquote_to_bytes(data)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x25:  # '%'
            if i + 1 >= n:
                break
            num = _HEX.get(data[i + 1], 0)
            if i + 2 >= n:
                break
            d = data[i + 2]
            num = num * 16 + _HEX[d] if d in _HEX else num
            out.append(num & 0xFF)
            i += 3
        elif c == 0x2B:  # '+'
            out.append(0x20)
            i += 1
        elif c <= 0x20 or c >= 0x7F:
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


# -- quoted-printable -------------------------------------------------------------------------


def quote_encode(data: bytes) -> bytes:
    """kc::quoteencode: ``=XX`` (upper-case hex) for '=', control bytes and bytes > 0x7E."""
    return b"".join(b"=%02X" % c if c == 0x3D or c < 0x20 or c > 0x7E else bytes((c,)) for c in data)


def quote_decode(data: bytes) -> bytes:
    """kc::quotedecode: ``=XX``, soft line breaks; control bytes, 0x7F and bytes >= 0x80
    (a signed ``char`` in KC) are dropped; stops at NUL."""
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x3D:  # '='
            i += 1
            if i >= n:
                break
            c = data[i]
            if c == 0x0D:
                i += 1
                if i >= n:
                    break
                if data[i] == 0x0A:
                    i += 1
            elif c == 0x0A:
                i += 1
            else:
                num = _HEX.get(c, 0)
                i += 1
                if i >= n:
                    break
                d = data[i]
                num = num * 16 + _HEX[d] if d in _HEX else num
                out.append(num & 0xFF)
                i += 1
        elif c < 0x20 or c >= 0x7F:
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


# -- Base64 -----------------------------------------------------------------------------------

_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_B64_CANONICAL = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def base64_encode(data: bytes) -> bytes:
    """Standard Base64 with padding and no line breaks (kc::baseencode)."""
    return binascii.b2a_base64(data, newline=False)


def base64_decode(data: bytes) -> bytes:
    """kc::basedecode: non-alphabet bytes are skipped, decoding stops after the first
    group holding '=', an incomplete final group still yields 3 (garbage) bytes.
    Stops at NUL."""
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    if _B64_CANONICAL.fullmatch(data):
        return binascii.a2b_base64(data)
    out = bytearray()
    pos, n, eqcnt = 0, len(data), 0
    values = _B64_VALUES
    while pos < n and eqcnt == 0:
        bits = 0
        i = 0
        while pos < n and i < 4:
            c = data[pos]
            pos += 1
            v = values.get(c)
            if v is not None:
                bits = (bits << 6) | v
                i += 1
            elif c == 0x3D:
                bits <<= 6
                i += 1
                eqcnt += 1
        if i == 0 and pos >= n:
            continue
        if eqcnt == 0:
            out += bytes(((bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF))
        elif eqcnt == 1:
            out += bytes(((bits >> 16) & 0xFF, (bits >> 8) & 0xFF))
        elif eqcnt == 2:
            out.append((bits >> 16) & 0xFF)
    return bytes(out)


_ENCODERS = {b"B": base64_encode, b"Q": quote_encode, b"U": url_encode}
_DECODERS = {b"B": base64_decode, b"Q": quote_decode, b"U": url_decode}

# What quote_encode writes: printable ASCII except '=', and =XX escapes in upper-case hex.
_QUOTE_CANONICAL = re.compile(rb"(?:[\x20-\x3c\x3e-\x7e]|=[0-9A-F]{2})*")


def _strict(canonical: re.Pattern[bytes], decode: Callable[[bytes], bytes], name: str) -> Callable[[bytes], bytes]:
    """A decoder that accepts only what the matching encoder writes (``canonical``)."""
    def strict_decode(data: bytes) -> bytes:
        if canonical.fullmatch(data) is None:
            raise ProtocolError(f"a TSV field that is not valid {name}: {data[:40]!r}")
        return decode(data)
    return strict_decode


_STRICT_DECODERS = {
    b"B": _strict(_B64_CANONICAL, binascii.a2b_base64, "Base64"),
    b"Q": _strict(_QUOTE_CANONICAL, binascii.a2b_qp, "quoted-printable"),
    b"U": _strict(_URL_CANONICAL, unquote_to_bytes, "URL encoding"),
}

# -- choosing and reading the encoding --------------------------------------------------------

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_ULEN_CHEAP = bytes(_URL_SAFE | frozenset(b"!*'()"))


def choose_encoding(items: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """ktutil checkmapenc: None (raw TSV) unless some key or value holds a control
    byte or is longer than 255 bytes; then B if its estimated size is smaller than
    U's, else U.  Bytes >= 0x80 alone never force an encoding."""
    items = items if isinstance(items, list) else list(items)
    fields = [field for pair in items for field in pair]
    if (not fields or max(map(len, fields)) <= 255) and not _CONTROL.search(b" ".join(fields)):
        return None  # the usual case, decided without the size estimates below
    binary = False
    blen = ulen = 0
    for key, value in items:
        for field in (key, value):
            size = len(field)
            if size > 255:
                field = field[:255]
                size = 255
                binary = True
            blen += size * 6 // 4 + 3
            if not binary and _CONTROL.search(field):
                binary = True
            expensive = len(field.translate(None, _ULEN_CHEAP))
            ulen += size + 2 * expensive
    if not binary:
        return None
    return b"B" if blen < ulen else b"U"


def colenc_of(content_type: bytes) -> bytes | None:
    """The colenc letter (b'B', b'Q' or b'U') of a TSV Content-Type, or None.

    ktrpc.h: after the MIME type, tokens are separated by spaces and ';'; a token
    ``colenc=X`` (case-insensitive name, optional opening quote) sets the
    encoding when X is b/q/u in any case; the last such token wins."""
    if content_type[:len(TSV_CONTENT_TYPE)].lower() != TSV_CONTENT_TYPE:
        return None
    enc = None
    for token in re.split(rb"[ ;]+", content_type[len(TSV_CONTENT_TYPE):]):
        if token[:7].lower() == b"colenc=":
            value = token[7:]
            if value[:1] == b'"':
                value = value[1:]
            letter = value[:1].upper()
            if letter in _DECODERS:
                enc = letter
    return enc


# -- maps -------------------------------------------------------------------------------------


def encode_map(items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
               colenc: bytes | None = None, *, sort: bool = False) -> bytes:
    """Serialise records as TSV lines ``key\\tvalue\\n``, each field encoded with
    ``colenc`` (None = raw).  ``sort`` orders lines by the encoded key, as
    ktserver's std::map output does."""
    pairs = items.items() if isinstance(items, Mapping) else items
    if colenc is not None:
        enc = _ENCODERS[colenc]
        pairs = [(enc(k), enc(v)) for k, v in pairs]
    if sort:
        pairs = sorted(pairs)
    lines = b"\n".join(map(b"\t".join, pairs))  # every line holds a TAB: empty only without pairs
    return lines + b"\n" if lines else b""


def dump_tsv(output: Mapping[bytes, bytes]) -> tuple[bytes, bytes]:
    """ktserver's response body for an output map: (Content-Type, body).

    The encoding is chosen with :func:`choose_encoding`; lines are sorted by
    encoded key."""
    colenc = choose_encoding(output.items())
    ctype = TSV_CONTENT_TYPE if colenc is None else TSV_CONTENT_TYPE + b"; colenc=" + colenc
    return ctype, encode_map(output, colenc, sort=True)


def parse_tsv(body: bytes) -> list[tuple[bytes, bytes]]:
    """ktutil tsvtomap without the map: the (key, value) lines in order.

    Lines split on LF, one trailing CR dropped, key before the first TAB,
    value after it; lines without a TAB are ignored."""
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    strip_cr = b"\r" in body
    for line in body.split(b"\n"):
        if strip_cr and line.endswith(b"\r"):
            line = line[:-1]
        key, tab, value = line.partition(b"\t")
        if tab:
            append((key, value))
    return out


def decode_fields(pairs: Iterable[tuple[bytes, bytes]], colenc: bytes | None, *,
                  strict: bool = False) -> list[tuple[bytes, bytes]]:
    """Decode each key and value with the colenc letter (None or unknown: unchanged).
    ``strict``: a field its encoder would not have written is a ProtocolError (KC's
    decoders skip junk instead)."""
    dec = (_STRICT_DECODERS if strict else _DECODERS).get(colenc) if colenc else None
    if dec is None:
        return list(pairs)
    return [(dec(k), dec(v)) for k, v in pairs]


def parse_form(data: bytes) -> list[tuple[bytes, bytes]]:
    """ktutil wwwformtomap: pairs split on '&' or ';', leading bytes 0x01-0x20 skipped,
    split at the first '=', both sides URL-decoded (C-string semantics)."""
    out = []
    for part in re.split(rb"[&;]", data):
        stripped = part.lstrip(bytes(range(1, 0x21)))
        if not stripped:
            continue
        nul = stripped.find(b"\0")
        if nul >= 0:
            stripped = stripped[:nul]
        key, _, value = stripped.partition(b"=")
        out.append((url_decode(key), url_decode(value)))
    return out
