"""Test helper: run one function in several threads at once (greenlets under gevent
monkey-patching) and fail with every error they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(worker: Callable[[int], object], n: int, timeout: float = 60) -> None:
    """Run ``worker(0)`` ... ``worker(n - 1)`` at once; assert that all of them finished
    within ``timeout`` seconds and none raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not [t for t in threads if t.is_alive()], "worker threads still running"
    assert not errors, errors
