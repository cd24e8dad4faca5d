"""ktcluster: a Kyoto Tycoon client for one server or a consistent-hashing cluster.

A drop-in for python-kyototycoon-ng: ``from ktcluster import KyotoTycoon,
KyotoTycoonException, KT_PACKER_PICKLE, ...``.  The cluster and what configures it
(``Cluster``, ``RetryPolicy``, ``RetryBudget``, ``HealthConfig``, ``OpClass``,
``Ring``...) and every error class (``NodeDownError``, ``OutcomeUnknownError``...)
are here too.  Names are imported lazily (PEP 562), so ``import ktcluster`` stays
cheap and loads nothing a program does not use (the cluster's gevent, uhashring
and tenacity, for instance).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "KyotoTycoon", "Cursor",
    "KT_PACKER_CUSTOM", "KT_PACKER_PICKLE", "KT_PACKER_JSON", "KT_PACKER_STRING", "KT_PACKER_BYTES",
    "MemcachePacker", "SimpleMemcachePacker",
    "KEEP", "ExpireAt",
    "Cluster", "RetryPolicy", "RetryBudget", "OpClass", "NO_RETRY", "HealthConfig", "BreakerState", "Ring", "RingDiff",
    "KyotoSlave", "OP_SET", "OP_REMOVE", "OP_CLEAR", "ReplicationStream", "Checkpoint",
    "KyotoTycoonException", "InvalidArgumentError", "ArgumentError", "LogicalInconsistencyError",
    "ServerError", "ScriptError", "NoImplementationError", "KTTimeoutError", "SignalTimeoutError",
    "SocketTimeoutError", "PoolTimeoutError", "DeadlineExceeded", "KTConnectionError", "NodeDownError",
    "ProtocolError", "OutcomeUnknownError", "PartialFailureError", "ReplicationError", "ResyncRequiredError",
    "ValueDecodeError",
]

#: public name -> module (relative to this package) that defines it; the rest of __all__
#: are the error classes of .errors
_EXPORTS = {
    "KyotoTycoon": "client",
    "Cursor": "cursor",
    "KT_PACKER_CUSTOM": "packers",
    "KT_PACKER_PICKLE": "packers",
    "KT_PACKER_JSON": "packers",
    "KT_PACKER_STRING": "packers",
    "KT_PACKER_BYTES": "packers",
    "MemcachePacker": "packers",
    "SimpleMemcachePacker": "packers",
    "KEEP": "expiry",
    "ExpireAt": "expiry",
    "Cluster": "cluster",
    "RetryPolicy": "retry",
    "RetryBudget": "retry",
    "OpClass": "retry",
    "NO_RETRY": "retry",
    "HealthConfig": "health",
    "BreakerState": "health",
    "Ring": "ring",
    "RingDiff": "ring",
    "KyotoSlave": "replication",
    "OP_SET": "replication",
    "OP_REMOVE": "replication",
    "OP_CLEAR": "replication",
    "ReplicationStream": "replication",
    "Checkpoint": "replication",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name, "errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'ktcluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .client import KyotoTycoon
    from .cluster import Cluster
    from .cursor import Cursor
    from .errors import (
        ArgumentError,
        DeadlineExceeded,
        InvalidArgumentError,
        KTConnectionError,
        KTTimeoutError,
        KyotoTycoonException,
        LogicalInconsistencyError,
        NodeDownError,
        NoImplementationError,
        OutcomeUnknownError,
        PartialFailureError,
        PoolTimeoutError,
        ProtocolError,
        ReplicationError,
        ResyncRequiredError,
        ScriptError,
        ServerError,
        SignalTimeoutError,
        SocketTimeoutError,
        ValueDecodeError,
    )
    from .expiry import KEEP, ExpireAt
    from .health import BreakerState, HealthConfig
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
    from .retry import NO_RETRY, OpClass, RetryBudget, RetryPolicy
    from .ring import Ring, RingDiff
