"""The small JSON state files that make ``load`` and ``rebalance`` resumable."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

__all__ = ["save_state", "load_state"]


def save_state(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file, fsync, rename): a crash leaves
    the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".ktcluster-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
