"""OpenTelemetry spans and metrics of a client's calls (extra ``ktcluster[otel]``).

    from ktcluster.observe.otel import Tracer

    cluster = Cluster(servers, observer=Tracer())     # the global providers, or pass yours

Spans follow the database-client semantic conventions:

* one span per call of the API (``cluster.get_bulk(...)``), named after the operation,
  kind CLIENT, a child of the caller's current span, with ``db.system.name``
  (``"kyototycoon"``), ``db.operation.name``, ``db.operation.batch.size`` (bulk calls)
  and, when it fails, ``error.type`` and an ERROR status;
* under it, one span per attempt on a node -- a shard of a bulk or fan-out call, a
  retry, a failover -- kind CLIENT, with ``server.address``/``server.port`` of the node,
  ``ktcluster.node``, ``ktcluster.retry``, ``ktcluster.outcome`` (``unknown``: a write
  that may or may not have happened), ``ktcluster.pool_wait``, the bytes sent and
  received, and ``error.type`` when it failed.

A shard runs in a fan-out thread or greenlet: its span's parent is given explicitly (the
call's span, kept in ``Call.marks``), not taken from a context variable, so the tree is
right whatever runs the shard.  Attempt spans are recorded when the attempt ends, with
its measured start and end times.

Metrics: ``db.client.operation.duration`` (seconds, per call; ``db.system.name``,
``db.operation.name``, ``error.type``) and ``ktcluster.attempt.duration`` (seconds, per
attempt, with the node's ``server.address``/``server.port`` and ``ktcluster.outcome``),
both with the bucket bounds of :data:`~ktcluster.observe.metrics.BOUNDS` as advice.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..address import parse_address
from .events import OK, Attempt, Call, Observer
from .metrics import BOUNDS

__all__ = ["Tracer", "SYSTEM"]

#: the ``db.system.name`` of Kyoto Tycoon
SYSTEM = "kyototycoon"


class Tracer(Observer):
    """An observer making OpenTelemetry spans and metrics; see the module docstring.
    ``tracer_provider``/``meter_provider``: None for the global ones."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None) -> None:
        self._tracer = trace.get_tracer("ktcluster", tracer_provider=tracer_provider)
        meter = metrics.get_meter("ktcluster", meter_provider=meter_provider)
        self._calls = meter.create_histogram("db.client.operation.duration", unit="s",
                                             description="Duration of database client operations.",
                                             explicit_bucket_boundaries_advisory=BOUNDS)
        self._attempts = meter.create_histogram("ktcluster.attempt.duration", unit="s",
                                                description="Duration of one attempt of an operation on a node.",
                                                explicit_bucket_boundaries_advisory=BOUNDS)
        self._servers: dict[str, tuple[str, int]] = {}

    def call_started(self, call: Call) -> None:
        attributes: dict[str, Any] = {"db.system.name": SYSTEM, "db.operation.name": call.operation}
        if call.records > 1 or call.operation.endswith("_bulk"):
            attributes["db.operation.batch.size"] = call.records
        call.marks[self] = self._tracer.start_span(call.operation, kind=SpanKind.CLIENT, attributes=attributes)

    def call_ended(self, call: Call, error: BaseException | None) -> None:
        span = call.marks.pop(self, None)
        attributes: dict[str, Any] = {"db.system.name": SYSTEM, "db.operation.name": call.operation}
        if error is not None:
            attributes["error.type"] = type(error).__name__
        self._calls.record(time.perf_counter() - call.started, attributes)
        if span is None:
            return
        if error is not None:
            span.set_attribute("error.type", attributes["error.type"])
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def attempt(self, event: Attempt) -> None:
        host, port = self._server(event.address)
        parent = event.call.root.marks.get(self)
        attributes: dict[str, Any] = {
            "db.system.name": SYSTEM, "db.operation.name": event.operation, "server.address": host,
            "server.port": port, "ktcluster.node": event.node, "ktcluster.retry": event.retry,
            "ktcluster.outcome": event.outcome, "ktcluster.pool_wait": event.pool_wait,
            "ktcluster.bytes_sent": event.sent, "ktcluster.bytes_received": event.received}
        if event.records != 1 or event.operation.endswith("_bulk"):
            attributes["db.operation.batch.size"] = event.records
        if event.error is not None:
            attributes["error.type"] = event.error
        start = int(event.wall * 1e9)
        span = self._tracer.start_span(event.operation, trace.set_span_in_context(parent) if parent else None,
                                       SpanKind.CLIENT, attributes, start_time=start)
        if event.outcome != OK:
            span.set_status(Status(StatusCode.ERROR, str(event.exception)))
        span.end(start + int(event.duration * 1e9))
        self._attempts.record(event.duration, {k: attributes[k] for k in (
            "db.system.name", "db.operation.name", "server.address", "server.port", "ktcluster.outcome")})

    def _server(self, address: str) -> tuple[str, int]:
        server = self._servers.get(address)
        if server is None:
            server = self._servers[address] = parse_address(address)
        return server
