"""Observability: what a client did, per attempt, for metrics, traces and logs.

Give an :class:`Observer` to a client -- ``Cluster(..., observer=...)``, and the same
keyword on :class:`~ktcluster.client.KyotoTycoon`, :class:`~ktcluster.replication.KyotoSlave`
and :class:`~ktcluster.replication.ReplicationStream` -- and it receives the events of
:mod:`ktcluster.observe.events`: every call, every attempt of it on a node, breaker
transitions, pool exhaustions, replication lag and exclusions.  Shipped observers:

* :class:`Metrics` (:mod:`ktcluster.observe.metrics`): counters and log-scale histograms
  per node x operation; ``Cluster.stats()`` includes its snapshot as plain data;
* :class:`ktcluster.observe.prometheus.Collector` (extra ``ktcluster[prometheus]``):
  those metrics for ``prometheus_client``;
* :class:`ktcluster.observe.otel.Tracer` (extra ``ktcluster[otel]``): OpenTelemetry spans
  per call and per shard attempt, and metrics;
* :class:`Tee`: several observers as one.

How the events are made (and why so).  There is one thing carried from a call down to
the socket, its :class:`~ktcluster.deadline.Deadline`, and no other call context (no
ContextVar, no thread-local): what an event needs is passed explicitly or read where it
already is.  The cluster's attempt loop (``Cluster._execute`` -> ``_guarded``) knows the
operation, its class, the records, the node and the retry number: it creates the
:class:`Attempt` event and passes it down as an argument of ``Transport.run``, next to
the deadline.  The transport knows the wait for the pool and, through the connection's
byte counters, what was sent and received: it adds them to the event it was handed
(:meth:`Attempt.waiting`, ``using``, ``used``).  When the attempt ends, the loop
completes it (duration, outcome) and gives it to the observer.  Without an observer
the argument is None and each hook is one ``is not None`` test: the cost of not
observing is a few of those per call (benchmarks/observe.py measures it), and
the event path has no blocking call, so an asyncio front end can reuse it as it is.
"""

from .events import (
    ERROR,
    OK,
    UNKNOWN,
    Attempt,
    BreakerChange,
    Call,
    Exclusion,
    Observer,
    PoolExhausted,
    ReplicationLag,
    Tee,
)
from .metrics import BOUNDS, Histogram, Metrics, find_metrics

__all__ = ["Observer", "Call", "Attempt", "BreakerChange", "PoolExhausted", "ReplicationLag", "Exclusion",
           "Tee", "Metrics", "Histogram", "BOUNDS", "find_metrics", "OK", "ERROR", "UNKNOWN"]
