"""The Lua engine of ``-scr FILE``: ktserver's ScriptProcessor.

* :mod:`.engine` -- the pool of Lua states, the time limit, SIGUSR1's reload;
  :func:`create_engine` builds ``state.scripting`` (a :class:`~ktcluster.server.state.ScriptingHook`);
* ``kt.lua`` with :mod:`.kt` -- the ``kt`` module (``__kyototycoon__``): its Lua half and
  the Python primitives it calls (databases, cursors, the log, the clock);
* :mod:`.lib` -- the module's library functions (pack, codec, regex, ...), pure.
"""

from .engine import create_engine

__all__ = ["create_engine"]
