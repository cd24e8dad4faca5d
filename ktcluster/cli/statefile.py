"""The small JSON state files that make ``load`` and ``rebalance`` resumable."""

from __future__ import annotations

import json
from typing import Any

from ..atomicfile import write_atomic

__all__ = ["save_state", "load_state"]


def save_state(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file, fsync, rename): a crash leaves
    the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(data, sort_keys=True))


def load_state(path: str, kind: str) -> dict[str, Any] | None:
    """The state saved at ``path`` (None when there is none); ValueError when the file
    is not a ``kind`` state file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a {kind} checkpoint ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise ValueError(f"{path} is not a {kind} checkpoint")
    return data
