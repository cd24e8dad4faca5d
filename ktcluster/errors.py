"""The ktcluster exception hierarchy.

Everything ktcluster raises on purpose derives from :class:`KyotoTycoonException`
(the name python-kyototycoon-ng users already catch).  Subclasses say what
happened, so callers can tell "the record is missing" from "the server is down"
from "we do not know whether the write happened"::

    KyotoTycoonException                  code, message
    +-- InvalidArgumentError              400: bad or missing parameter, no such DB/cursor
    |   +-- ArgumentError                 refused by the client before sending (also a ValueError)
    +-- LogicalInconsistencyError         450: no record, duplicate, cas mismatch...
    +-- ServerError                       500: the database failed
    |   +-- ScriptError                   binary play_script failed (0xBF: no detail)
    +-- NoImplementationError             501: unknown procedure or unsupported operation
    +-- KTTimeoutError                    any timeout
    |   +-- SignalTimeoutError            503: a WAIT condition was not signalled in time
    |   +-- SocketTimeoutError            the socket timed out (also a KTConnectionError)
    |   +-- DeadlineExceeded              a cluster call's deadline passed
    +-- KTConnectionError                 the connection failed or was closed
    |   +-- NodeDownError                 circuit breaker open: failed fast, nothing sent
    +-- PoolTimeoutError                  local congestion: no pooled connection became free in time
    +-- ProtocolError                     the peer sent bytes we cannot parse (or 0xBF and closed)
    +-- OutcomeUnknownError               a non-idempotent write may or may not have happened
    +-- PartialFailureError               a fanned-out call failed on some nodes (or values) only
    +-- ReplicationError                  the replication stream broke
        +-- ResyncRequiredError           the master no longer has the history asked for
    +-- ValueDecodeError                  a stored value the packer cannot decode (also a ValueError)

Transport errors carry ``request_sent``: False when the request provably never
left this process (connect failed, breaker open), which is what makes a retry of
a non-idempotent write safe.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "KyotoTycoonException",
    "InvalidArgumentError",
    "ArgumentError",
    "LogicalInconsistencyError",
    "ServerError",
    "ScriptError",
    "NoImplementationError",
    "KTTimeoutError",
    "SignalTimeoutError",
    "SocketTimeoutError",
    "PoolTimeoutError",
    "DeadlineExceeded",
    "KTConnectionError",
    "NodeDownError",
    "ProtocolError",
    "OutcomeUnknownError",
    "PartialFailureError",
    "ReplicationError",
    "ResyncRequiredError",
    "ValueDecodeError",
    "error_for_status",
]


class KyotoTycoonException(Exception):
    """Root of every ktcluster error.

    ``code`` is the HTTP status the server answered (None when there was no
    answer), ``message`` the server's ERROR text (or our own description),
    ``node`` the cluster node involved, when known.
    """

    def __init__(self, message: str = "", code: int | None = None, *, node: str | None = None,
                 request_sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.node = node
        self.request_sent = request_sent

    def __str__(self) -> str:
        parts = []
        if self.node:
            parts.append(f"[{self.node}]")
        if self.code is not None:
            parts.append(f"{self.code}:")
        parts.append(self.message)
        return " ".join(parts)


class InvalidArgumentError(KyotoTycoonException):
    """400: a missing or bad parameter, an unknown database or cursor."""


class ArgumentError(InvalidArgumentError, ValueError):
    """The client refused an argument before sending anything (a wrong type, a missing
    value...).  Also a ValueError: python-kyototycoon-ng raised ValueError there."""

    def __init__(self, message: str = "", code: int | None = None, **kw: Any) -> None:
        kw.setdefault("request_sent", False)
        super().__init__(message, code, **kw)


class LogicalInconsistencyError(KyotoTycoonException):
    """450: done but logically failed (no record, record duplication, status conflict)."""


class ServerError(KyotoTycoonException):
    """500 (or another 5xx): the server or its database failed."""


class ScriptError(ServerError):
    """A binary-protocol play_script failed: the server answered its error byte (0xBF).

    The procedure returned false, raised, or does not exist, or scripting is off;
    the binary protocol does not say which (over HTTP the same failure is a 450,
    500 or 501 with the server's message).  KT's own client reports it as an
    internal error, hence ``code`` 500.  The connection stays usable.
    """


class NoImplementationError(KyotoTycoonException):
    """501: unknown procedure, scripting disabled, or an operation the DB type lacks."""


class KTTimeoutError(KyotoTycoonException):
    """Something timed out; see the subclasses for what."""


class KTConnectionError(KyotoTycoonException):
    """The connection could not be made, broke, or was closed by the peer."""


class SignalTimeoutError(KTTimeoutError):
    """503: the WAIT condition was not signalled within WAITTIME."""


class SocketTimeoutError(KTTimeoutError, KTConnectionError):
    """A connect, send or receive did not finish in time; the connection is discarded."""


class PoolTimeoutError(KyotoTycoonException):
    """No connection of this client's pool to the node became free within ``pool_timeout``.

    Local congestion (more concurrent callers than ``pool_size``), not a slow or dead
    server: nothing was sent (``request_sent`` is False), the node's breaker does not
    count it, and it is deliberately not a :class:`KTTimeoutError`, so an application
    can answer it differently (shed load, 503) from a node that did not answer (504)."""

    def __init__(self, message: str = "", code: int | None = None, **kw: Any) -> None:
        kw.setdefault("request_sent", False)
        super().__init__(message, code, **kw)


class DeadlineExceeded(KTTimeoutError):
    """A call's deadline (``RetryPolicy.deadline``, a view's ``deadline``) passed before this
    part of it finished; ``request_sent`` is False only when it provably never started.
    ``node_wait`` is True when the deadline cut short a wait on the node itself (a connect,
    a send, a reply): the node did not answer in time, which its breaker counts."""

    def __init__(self, message: str = "", code: int | None = None, *, node_wait: bool = False,
                 **kw: Any) -> None:
        super().__init__(message, code, **kw)
        self.node_wait = node_wait


class NodeDownError(KTConnectionError):
    """The node's circuit breaker is open: the call failed fast and nothing was sent."""

    def __init__(self, message: str = "", code: int | None = None, **kw: Any) -> None:
        kw.setdefault("request_sent", False)
        super().__init__(message, code, **kw)


class ProtocolError(KyotoTycoonException):
    """The peer sent something that is not valid KT protocol, or answered a binary bulk
    request with its error byte (0xBF; the server then closes the connection)."""


class OutcomeUnknownError(KyotoTycoonException):
    """A non-idempotent operation failed after its request may have reached the server.

    It was not retried (a retry could apply it twice).  ``__cause__`` is the
    transport error.
    """


class PartialFailureError(KyotoTycoonException):
    """A call fanned out to several nodes failed on some of them, or a get_bulk read
    values that do not decode.

    ``results`` holds what the successful nodes returned (for get_bulk: the
    records found on them that decoded; for set_bulk/remove_bulk: the per-node
    counts), ``errors`` maps each failed node name to its exception,
    ``failed_keys`` lists the keys whose outcome is not known to be done (retry
    those), and ``key_errors`` maps each key whose value did not decode to its
    :class:`ValueDecodeError` (retrying cannot help those).
    """

    def __init__(self, message: str, results: Any, errors: dict[str, BaseException],
                 failed_keys: list[Any] | None = None, key_errors: dict[Any, ValueDecodeError] | None = None) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors
        self.failed_keys = failed_keys or []
        self.key_errors = key_errors or {}


class ReplicationError(KyotoTycoonException):
    """The replication stream could not be opened or broke."""


class ResyncRequiredError(ReplicationError):
    """The master's update log may no longer reach back to the requested timestamp.

    ``requested_ts`` is the position asked for, ``oldest_ts`` the first entry the
    master still has: entries between the two may have been purged.  Resuming
    from ``oldest_ts - 1`` accepts that gap; a full resync avoids it.
    """

    def __init__(self, message: str = "", code: int | None = None, *, requested_ts: int = 0,
                 oldest_ts: int = 0, **kw: Any) -> None:
        super().__init__(message, code, **kw)
        self.requested_ts = requested_ts
        self.oldest_ts = oldest_ts


class ValueDecodeError(KyotoTycoonException, ValueError):
    """A stored value that the client's packer cannot decode (a pickle, JSON or UTF-8
    error...): ``key`` names the record (None when unknown, e.g. a cursor's value),
    ``node`` the cluster node, ``raw`` holds the stored bytes and ``__cause__`` the
    packer's exception.  The connection is fine; retrying cannot help.  Also a
    ValueError, the class JSON and UTF-8 decoding errors belong to."""

    def __init__(self, message: str = "", code: int | None = None, *, key: Any = None, raw: bytes = b"",
                 **kw: Any) -> None:
        super().__init__(message, code, **kw)
        self.key = key
        self.raw = raw


_STATUS_ERRORS: dict[int, type[KyotoTycoonException]] = {
    400: InvalidArgumentError,
    450: LogicalInconsistencyError,
    501: NoImplementationError,
    503: SignalTimeoutError,
}


def error_for_status(code: int, message: str) -> KyotoTycoonException:
    """Map an HTTP status to an exception, following KT's RPCClient::call ranges."""
    cls = _STATUS_ERRORS.get(code)
    if cls is None:
        if 400 <= code < 450:
            cls = InvalidArgumentError
        elif 450 <= code < 500:
            cls = LogicalInconsistencyError
        else:
            cls = ServerError
    return cls(message, code)
