"""``ktcluster tail``: the merged replication stream of the masters as JSON lines."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from ..address import Servers
from ..errors import ArgumentError
from ..replication import OP_CLEAR, OP_REMOVE, OP_SET, XT_NEVER, Checkpoint, Record, ReplicationStream
from .records import put_bytes

__all__ = ["tail", "record_to_json"]

_OP_NAMES = {OP_SET: "set", OP_REMOVE: "remove", OP_CLEAR: "clear"}


def record_to_json(rec: Record) -> str:
    """One JSON line for a record: ``key``/``value`` as UTF-8 text, or ``key_b64``/``value_b64``
    (base64) when not valid UTF-8; ``op`` by name; ``expires`` epoch seconds or null."""
    out: dict[str, Any] = {"node": rec.get("node"), "ts": rec["ts"], "sid": rec["sid"], "db": rec["db"],
                           "op": _OP_NAMES[rec["op"]]}
    if "key" in rec:
        put_bytes(out, "key", rec["key"])
    if "value" in rec:
        put_bytes(out, "value", rec["value"])
        out["expires"] = None if rec["expires"] >= XT_NEVER else rec["expires"]
    return json.dumps(out, separators=(",", ":"))


def tail(masters: Servers, sid: int = 65535, *,
         since: float | None = None, checkpoint_file: str | None = None,
         origin_sids: Mapping[str, int] | None = None, idle_timeout: float = 5.0, count: int | None = None,
         out: IO[str] | None = None, err: IO[str] | None = None, save_interval: float = 1.0) -> int:
    """``ktcluster tail``: print the merged stream as JSON lines; returns the number printed.

    With ``checkpoint_file``, resume from it when it exists (``since`` applies
    otherwise) and save it atomically after printed lines are flushed -- every
    ``save_interval`` seconds and on exit -- so a restart re-prints at most the
    lines of the last interval.  Idle/rejoin events go to ``err`` as JSON lines.
    Stops after ``count`` records, or on KeyboardInterrupt."""
    out = out or sys.stdout
    err = err or sys.stderr
    start: float | Checkpoint | None = since
    if checkpoint_file and os.path.exists(checkpoint_file):
        start = Checkpoint.load(checkpoint_file)
    elif checkpoint_file and not os.path.isdir(os.path.dirname(os.path.abspath(checkpoint_file))):
        raise ArgumentError(f"no directory for the checkpoint file {checkpoint_file!r}")

    def on_idle(node: str, excluded: bool) -> None:
        err.write(json.dumps({"event": "idle" if excluded else "rejoined", "node": node}) + "\n")
        err.flush()

    stream = ReplicationStream(masters, sid, start, origin_sids=origin_sids, idle_timeout=idle_timeout,
                               on_idle=on_idle)

    def save() -> None:
        out.flush()  # first: the checkpoint must not cover lines still in a buffer
        if checkpoint_file:
            stream.checkpoint().save(checkpoint_file)

    printed = 0
    unwritten = False  # a record was yielded (so the checkpoint covers it) but not written
    next_save = time.monotonic() + save_interval
    try:
        with stream:
            if count is not None and count <= 0:
                return 0
            for rec in stream:
                unwritten = True
                out.write(record_to_json(rec) + "\n")
                unwritten = False
                printed += 1
                if count is not None and printed >= count:
                    break
                if time.monotonic() >= next_save:
                    save()
                    next_save = time.monotonic() + save_interval
    except KeyboardInterrupt:
        pass
    finally:
        if not unwritten:
            save()
    return printed
