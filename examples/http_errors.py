"""How the example web apps (gevent_app.py, asgi_app.py) answer a ktcluster error.

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

from typing import Any

from ktcluster.errors import (
    KTConnectionError,
    KTTimeoutError,
    OutcomeUnknownError,
    PartialFailureError,
    PoolTimeoutError,
)

Headers = list[tuple[str, str]]


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
