"""ktcluster for asyncio: the same clients, with ``async``/``await``.

    from ktcluster.aio import Cluster, KyotoTycoon

* :class:`KyotoTycoon` -- :class:`ktcluster.KyotoTycoon` for asyncio (the same
  methods, arguments, results and errors, awaited), over a pool of asyncio
  connections shared by every task (:mod:`ktcluster.aio.pool`); its ``cursor()`` is
  an :class:`~ktcluster.aio.cursor.AsyncCursor`.
* :class:`Cluster` -- :class:`ktcluster.Cluster` for asyncio: the same ring, retries,
  breakers, failover, deadlines and partial failures (:mod:`ktcluster.aio.cluster`).
* :class:`ReplicationStream`, :class:`KyotoSlave` -- the replication consumers for
  ``async for``, with the same records, checkpoints and guarantees
  (:mod:`ktcluster.aio.replication`).

Everything but the I/O is the blocking front end's own code: the operations and
codecs (:mod:`ktcluster.ops`, :mod:`ktcluster.protocol`), the pool's bookkeeping,
the deadline's rules, the cluster's decisions.  Cancellation (``task.cancel()``, ``asyncio.timeout``) is
safe at any await: see :mod:`ktcluster.aio.connection` and :mod:`ktcluster.aio.pool`.
Needs Python 3.11 or later (``asyncio.timeout``).
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover - the package supports 3.10 elsewhere
    raise ImportError("ktcluster.aio needs Python 3.11 or later (asyncio.timeout)")

from .client import KyotoTycoon  # noqa: E402
from .cluster import Cluster  # noqa: E402
from .replication import KyotoSlave, ReplicationStream  # noqa: E402

__all__ = ["KyotoTycoon", "Cluster", "ReplicationStream", "KyotoSlave"]
