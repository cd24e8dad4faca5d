"""Fork safety: objects that must start clean in a child process.

A pool or a worker pool used before ``os.fork()`` (gunicorn ``--preload``,
multiprocessing's fork start method) holds sockets shared with the parent and
threads that do not exist in the child.  Such an object calls :func:`register`
once; in every forked child its ``_after_fork_in_child()`` runs before the child
does anything else (``os.register_at_fork``), and must only reset state: drop what
belongs to the parent, create fresh locks.  The parent is never affected.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["register"]


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_REGISTERED: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Reset ``obj`` (``obj._after_fork_in_child()``) in every child forked from now on."""
    _REGISTERED.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_REGISTERED):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
