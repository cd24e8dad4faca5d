"""ktcluster: a Kyoto Tycoon client for one server or a consistent-hashing cluster.

A drop-in for python-kyototycoon-ng: ``from ktcluster import KyotoTycoon,
KyotoTycoonException, KT_PACKER_PICKLE, ...``.  Names are imported lazily (PEP
562), so ``import ktcluster`` stays cheap and loads nothing a program does not use
(the cluster's gevent and uhashring, for instance).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "KyotoTycoon", "Cursor",
    "KyotoTycoonException",
    "KT_PACKER_CUSTOM", "KT_PACKER_PICKLE", "KT_PACKER_JSON", "KT_PACKER_STRING", "KT_PACKER_BYTES",
    "MemcachePacker", "SimpleMemcachePacker",
    "KEEP", "ExpireAt",
    "KyotoSlave", "OP_SET", "OP_REMOVE", "OP_CLEAR", "ReplicationStream", "Checkpoint",
]

#: public name -> module (relative to this package) that defines it
_EXPORTS = {
    "KyotoTycoon": "client",
    "Cursor": "client",
    "KyotoTycoonException": "errors",
    "KT_PACKER_CUSTOM": "packers",
    "KT_PACKER_PICKLE": "packers",
    "KT_PACKER_JSON": "packers",
    "KT_PACKER_STRING": "packers",
    "KT_PACKER_BYTES": "packers",
    "MemcachePacker": "packers",
    "SimpleMemcachePacker": "packers",
    "KEEP": "expiry",
    "ExpireAt": "expiry",
    "KyotoSlave": "replication",
    "OP_SET": "replication",
    "OP_REMOVE": "replication",
    "OP_CLEAR": "replication",
    "ReplicationStream": "replication",
    "Checkpoint": "replication",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ktcluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .client import Cursor, KyotoTycoon
    from .errors import KyotoTycoonException
    from .expiry import KEEP, ExpireAt
    from .packers import (
        KT_PACKER_BYTES,
        KT_PACKER_CUSTOM,
        KT_PACKER_JSON,
        KT_PACKER_PICKLE,
        KT_PACKER_STRING,
        MemcachePacker,
        SimpleMemcachePacker,
    )
    from .replication import OP_CLEAR, OP_REMOVE, OP_SET, Checkpoint, KyotoSlave, ReplicationStream
