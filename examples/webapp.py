"""What the example web apps (gevent_app.py, asgi_app.py) share: their command line and
how they answer a ktcluster error.

:func:`arguments` parses ``--listen host:port``, ``--timeout``, ``--pool-size``,
``--pool-timeout`` and the KT servers into the listen address and the Cluster's options.

:func:`http_error` maps an error to ``(status, JSON body, extra headers)``, or None for
an error the app does not map (the framework's 500)::

    PoolTimeoutError       503 + Retry-After: 1   local congestion: every pooled connection to the
                                                  node stayed busy for pool_timeout; nothing was sent
    KTConnectionError      503                    the node is down or unreachable (NodeDownError:
                                                  its breaker is open; nothing was sent)
    KTTimeoutError         504                    the node did not answer in time (or the call's
                                                  deadline passed)
    OutcomeUnknownError    504                    a write (increment) may or may not have happened
    PartialFailureError    502                    a bulk call failed on some nodes:
                                                  ``{"results": ..., "failed_keys": [...]}``
"""

from __future__ import annotations

import argparse
from typing import Any

from ktcluster import KT_PACKER_BYTES
from ktcluster.cluster import DEFAULT_NODE_TIMEOUT
from ktcluster.errors import (
    KTConnectionError,
    KTTimeoutError,
    OutcomeUnknownError,
    PartialFailureError,
    PoolTimeoutError,
)
from ktcluster.pool import DEFAULT_POOL_SIZE

Headers = list[tuple[str, str]]


def arguments(description: str, argv: list[str] | None = None) -> tuple[str, int, list[str], dict[str, Any]]:
    """``(host, port, servers, Cluster options)`` from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on")
    parser.add_argument("--timeout", type=float, default=2.0, help="socket timeout towards KT (seconds)")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="connections per KT node")
    parser.add_argument("--pool-timeout", type=float, default=DEFAULT_NODE_TIMEOUT,
                        help="longest wait for a free pooled connection (seconds)")
    parser.add_argument("servers", nargs="+", help="KT servers, host:port")
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    options = dict(pack_type=KT_PACKER_BYTES, timeout=args.timeout, pool_size=args.pool_size,
                   pool_timeout=args.pool_timeout)
    return host, int(port), args.servers, options


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], Headers] | None:
    """The response to ``exc`` (see the module docstring)."""
    if isinstance(exc, PartialFailureError):
        results = exc.results
        if isinstance(results, dict) and all(isinstance(v, bytes) for v in results.values()):
            results = {k: v.decode() for k, v in results.items()}
        return 502, {"error": str(exc), "results": results, "failed_keys": exc.failed_keys}, []
    if isinstance(exc, PoolTimeoutError):
        return 503, {"error": str(exc)}, [("Retry-After", "1")]
    if isinstance(exc, (OutcomeUnknownError, KTTimeoutError)):
        return 504, {"error": str(exc)}, []
    if isinstance(exc, KTConnectionError):  # NodeDownError included
        return 503, {"error": str(exc)}, []
    return None
