"""Records as the CLI moves them: raw bytes, with their absolute expiry.

* :func:`scan` walks one node's database with a server-side cursor, a batch at a
  time, reading key, value and expiry together (``cur_get``): what ``dump`` and
  ``rebalance`` need, and it works on every database type of a real ktserver.
* :func:`to_json` / :func:`from_json` are the JSON-lines form ``dump`` writes and
  ``load`` reads: ``{"key": ..., "value": ..., "expires": ...}`` with text as
  UTF-8, ``key_b64``/``value_b64`` for bytes that are not, and ``expires`` in
  epoch seconds (absent or null: never).
* :func:`read_input` reads a JSON-lines or TSV file and reports the byte offset
  after every record, so ``load`` can resume exactly where it stopped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from typing import IO, Any

from ..client import KyotoTycoon
from ..packers import KT_PACKER_BYTES

__all__ = ["Record", "scan", "put_bytes", "to_json", "from_json", "read_input", "InputError"]

#: ``(key, value, expires)``: expires is epoch seconds, or None for never.
Record = tuple[bytes, bytes, int | None]

class InputError(Exception):
    """A line of an input file cannot be read (its message names the file and line)."""


def scan(host: str, port: int, *, db: int | str = 0, batch: int = 1000, start_after: bytes | None = None,
         timeout: float = 30.0) -> Iterator[list[Record]]:
    """Every record of one node's database, in the database's order, ``batch`` at a time.

    ``start_after``: resume after this key.  A tree database resumes at the next key
    even when this one is gone; a hash database has no order to find it by, so there
    :class:`LookupError` is raised before anything is read.  Not a snapshot: records
    written or removed during the scan may or may not be seen.
    """
    kt = KyotoTycoon(pack_type=KT_PACKER_BYTES, decode_keys=False, pool_size=1, connect_timeout=timeout)
    kt.open(host, port, timeout=timeout)
    try:
        with kt.cursor() as cur:
            if not cur.jump(start_after, db=db):
                if start_after is not None:
                    raise LookupError(start_after)
                return  # an empty database
            if start_after is not None:
                current = cur.get_with_expiry()
                if current is not None and current[0] == start_after and not cur.step():
                    return  # it was the last record
            records: list[Record] = []
            while (record := cur.get_with_expiry(step=True)) is not None:
                records.append(record)
                if len(records) >= batch:
                    yield records
                    records = []
            if records:
                yield records
    finally:
        kt.close()


def put_bytes(out: dict[str, Any], name: str, data: bytes) -> None:
    """``out[name]``: ``data`` as text when it is UTF-8, else ``out[name + "_b64"]`` in base64."""
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name + "_b64"] = base64.b64encode(data).decode("ascii")


def to_json(key: bytes, value: bytes, expires: int | None) -> str:
    """One JSON line (without the newline)."""
    out: dict[str, Any] = {}
    put_bytes(out, "key", key)
    put_bytes(out, "value", value)
    if expires is not None:
        out["expires"] = expires
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _field(obj: dict[str, Any], name: str) -> bytes | None:
    if name in obj:
        value = obj[name]
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if name == "value":  # numbers, objects...: stored as their JSON text
            return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        raise ValueError(f"{name!r} must be a string")
    encoded = obj.get(name + "_b64")
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise ValueError(f"{name + '_b64'!r} must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(f"{name + '_b64'!r} is not valid base64") from None


def _expires(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"'expires' must be epoch seconds, not {value!r}")
    return math.ceil(value)


def from_json(line: bytes) -> Record:
    """Parse one JSON line (ValueError with a short reason when it is not a record)."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    key = _field(obj, "key")
    value = _field(obj, "value")
    if key is None:
        raise ValueError("no 'key' (or 'key_b64')")
    if value is None:
        raise ValueError("no 'value' (or 'value_b64')")
    return key, value, _expires(obj.get("expires"))


def from_tsv(line: bytes) -> Record:
    """``key<TAB>value[<TAB>expires]`` (bytes taken as they are)."""
    fields = line.split(b"\t")
    if len(fields) not in (2, 3):
        raise ValueError(f"expected key<TAB>value[<TAB>expires], found {len(fields)} field(s)")
    expires = None
    if len(fields) == 3 and fields[2].strip():
        try:
            expires = _expires(float(fields[2]))
        except ValueError:
            raise ValueError(f"bad expires {fields[2][:40]!r}") from None
    return fields[0], fields[1], expires


def read_input(stream: IO[bytes], name: str, fmt: str, offset: int = 0, line_no: int = 0
               ) -> Iterator[tuple[Record, int, int]]:
    """``(record, line number, byte offset after its line)`` for each record of ``stream``
    (already positioned at ``offset``).  Blank lines are skipped; a bad line raises
    :class:`InputError`."""
    parse = from_json if fmt == "jsonl" else from_tsv
    for raw in stream:
        line_no += 1
        offset += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            record = parse(line)
        except ValueError as exc:
            raise InputError(f"{name}:{line_no}: {exc}") from None
        yield record, line_no, offset
