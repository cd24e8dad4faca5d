"""Which concurrency this process runs under: threads, or gevent's greenlets.

ktcluster takes no option for gevent: it looks at whether ``gevent.monkey.patch_all()``
has patched the standard library, at the moment it needs to know (so a client created
after patching blocks greenlets, not threads).

* :func:`gevent_active` -- ``socket`` is patched: blocking calls block a greenlet, and
  fan-outs run as greenlets.
* :func:`original` -- a standard-library function as it was before patching (a
  zero-timeout ``poll`` never blocks, so the original is right under gevent too, and
  does not go through the hub).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["gevent_active", "original"]


def _monkey() -> Any:
    return sys.modules.get("gevent.monkey")


def gevent_active() -> bool:
    """True when gevent has monkey-patched ``socket`` (then blocking calls only block a greenlet)."""
    monkey = _monkey()
    return monkey is not None and monkey.is_module_patched("socket")


def original(module: str, name: str) -> Any:
    """``module.name`` as the standard library defines it, even after monkey-patching
    (None where the platform has none)."""
    monkey = _monkey()
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name, None)
