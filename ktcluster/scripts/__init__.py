"""Lua procedures for ``ktserver -scr`` (and the embedded server), ready to use.

* ``counters.lua`` -- decimal counters (``incr``, ``decr``) and a rate limiter;
* ``queue.lua`` -- FIFO queues (``qpush``, ``qpop``, ``qpeek``, ``qlen``) and priority
  queues (``pqpush``, ``pqpop``);
* ``hash.lua`` -- records of fields (``hset``, ``hget``, ``hgetall``, ``hdel``, ``hincr``,
  ``hlen``);
* ``ttl.lua`` -- expiration times (``touch``, ``ttl``, ``persist``, ``getex``).

Each file's header documents its procedures' inputs and outputs; call them with
``KyotoTycoon.play_script(name, {...})``.  A server loads one script file, so
:func:`bundle` joins several (their procedure names do not clash)::

    with open("app.lua", "w") as f:
        f.write(bundle("counters", "queue"))
    # ktserver -scr app.lua   (or KTServer(args=["-scr", "app.lua"]))
"""

from __future__ import annotations

import os

__all__ = ["NAMES", "path", "bundle"]

#: the scripts of the library.
NAMES = ("counters", "queue", "hash", "ttl")
_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """The file of script ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"no script {name!r}: choose from {', '.join(NAMES)}")
    return os.path.join(_DIR, f"{name}.lua")


def bundle(*names: str) -> str:
    """One script holding the procedures of ``names`` (default: all of them)."""
    parts = []
    for name in names or NAMES:
        with open(path(name), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)
