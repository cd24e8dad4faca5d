"""``Checkpoint``: where a merged replication stream stands, to resume it exactly."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..atomicfile import write_atomic
from ..errors import ArgumentError

__all__ = ["Checkpoint"]


@dataclass
class Checkpoint:
    """Each master's position in a merged stream: every record of the master up to
    that KT timestamp has been yielded.  Masters not listed start from their
    oldest entry when resumed (nothing is lost)."""

    positions: dict[str, int] = field(default_factory=dict)

    VERSION = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (timestamps are ints up to 2**64)."""
        return {"version": self.VERSION, "positions": dict(self.positions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Parse :meth:`to_dict` output; anything else raises ArgumentError."""
        try:
            if data.get("version") != cls.VERSION:
                raise ValueError(f"unknown checkpoint version {data.get('version')!r}")
            positions = {}
            for node, ts in data["positions"].items():
                if not isinstance(node, str) or isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
                    raise ValueError(f"bad position {node!r}: {ts!r}")
                positions[node] = ts
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ArgumentError(f"not a replication checkpoint: {exc}") from exc
        return cls(positions)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ArgumentError(f"not a replication checkpoint: {exc}") from exc
        if not isinstance(data, dict):
            raise ArgumentError("not a replication checkpoint: not a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, fsync, rename): a crash leaves the old or the new one."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())
