"""pytest fixtures for apps that use ktcluster (registered through the ``pytest11`` entry point).

* ``kt_server``: a fresh KT server (one in-memory hash DB) for the test.
* ``kt_cluster``: three fresh servers with update logs (sids 1..3).
* ``kt_server_factory``: call it with KTServer arguments to start more; all are
  stopped after the test.

They start the embedded server, or ``$KT_SERVER_BIN`` when it is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .testing import KTServer, start_cluster


@pytest.fixture
def kt_server_factory() -> Iterator[Callable[..., KTServer]]:
    """Start servers on demand: ``kt_server_factory(":", args=["-ulog", "ulog", "-sid", "1"])``."""
    started: list[KTServer] = []

    def factory(*dbs: str, **kwargs: Any) -> KTServer:
        srv = KTServer(*dbs, **kwargs).start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.cleanup()


@pytest.fixture
def kt_server(kt_server_factory: Callable[..., KTServer]) -> KTServer:
    """One running server with a single ``:`` (in-memory hash) database."""
    return kt_server_factory()


@pytest.fixture
def kt_cluster() -> Iterator[list[KTServer]]:
    """Three running servers, each with an update log (``-ulog ulog -sid N``)."""
    with start_cluster(3, ulog=True) as servers:
        yield servers
