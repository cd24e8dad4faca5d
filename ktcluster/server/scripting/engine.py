"""Lua scripting for the embedded server (``-scr FILE``), as ktserver's ScriptProcessor.

Each global function of the script is a procedure: ``play_script`` (RPC or binary 0xB4)
calls it as ``f(inmap, outmap)``; its first result, converted as ``lua_tointeger``
does, is the return value (``kt.RVSUCCESS`` = 0...), and ``outmap``'s string, number
and boolean entries are the output.  A procedure that raises answers RVEINTERNAL and is
logged as ``[SCRIPT]: name: message``; a missing one answers RVENOIMPL.  The ``kt``
module (``__kyototycoon__``) is ktserver's: :mod:`.kt` and
``kt.lua`` implement it.

Design:

* **Runtimes.**  ktserver gives each of its ``-th`` worker threads a Lua state of its
  own (``kt.thid`` = the worker's index, globals private to the state).  The embedded
  server keeps a pool of at most ``-th`` Lua 5.1 states (``lupa.lua51``, like
  ktserver's build): a call takes an idle state (creating one, with the lowest free
  ``thid``, while fewer than ``-th`` exist), and since no more than ``-th`` workers call
  at once it never waits (``kt.thid`` numbers the state, not the worker).  States are created on first
  need, each running the script's top level once, as every ktserver worker does at
  start; the first one is made at start-up so that a broken script is logged then.
* **Concurrency.**  lupa releases the GIL while Lua code runs, so scripts run in
  parallel with the server's other threads (and with each other); the GIL is taken
  again only when the script calls into the ``kt`` module.
* **Time limit.**  A count hook (every 1000 Lua instructions, on coroutines too) ends a
  call that runs past the request timeout ``-tout`` with a Lua error: the caller gets
  what ktserver gives for a failing script (RVEINTERNAL: HTTP 500 / 0xBF), the log says
  why.  Once the time is up every instruction fails, so a script's ``pcall`` cannot
  swallow it; ``kt.sleep`` is cut short too.  (ktserver has no limit: a runaway script
  holds its worker forever.)  Code stuck inside one long C call (a huge
  ``string.rep``) is beyond the reach of the hook.
* **SIGUSR1** (:meth:`ScriptEngine.reload`) rereads the script: idle states are dropped,
  busy ones finish their call and are dropped when they come back.
* **No Lua runtime.**  ``-scr`` without the ``lua`` extra (lupa) refuses to start with a
  message saying what to install, rather than serving a server whose every script call
  answers 501: a user who asked for a script wants it run.
"""

from __future__ import annotations

import os
import threading
import time
from types import ModuleType
from typing import Any

from ..config import LOG_ERROR, ConfigError
from ..state import KT_VERSION, RV_INTERNAL, ServerState
from .kt import KtHost, lua_pairs
from .lib import c_int64

__all__ = ["ScriptEngine", "create_engine", "HOOK_COUNT"]

#: Lua instructions between two looks at the clock.
HOOK_COUNT = 1000
_MODULE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kt.lua")


def create_engine(state: ServerState, path: str) -> ScriptEngine:
    """``state.scripting`` for ``-scr PATH``; ConfigError when Lua is missing."""
    try:
        import lupa.lua51 as lua51
    except ImportError:
        state.log(LOG_ERROR, "the scripting extension needs lupa (Lua 5.1)")
        raise ConfigError(f"{path}: -scr needs a Lua runtime: install the 'lua' extra "
                          "(pip install 'ktcluster[lua]', which brings lupa)") from None
    return ScriptEngine(state, path, lua51)


def _return_value(num: float) -> int:
    """``(ReturnValue)lua_tointeger(...)``: truncated to int64, then to a 32-bit enum."""
    value = c_int64(num) & 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


class _LuaState:
    """One Lua state with the kt module and the script loaded."""

    def __init__(self, engine: ScriptEngine, thid: int, generation: int, script: bytes | None) -> None:
        self.thid = thid
        self.generation = generation
        self._engine = engine
        lupa = engine.lupa
        runtime = lupa.LuaRuntime(encoding=None, unpack_returned_tuples=True, register_eval=False,
                                  register_builtins=False)
        host = KtHost(engine.state, runtime.table_from)
        self._host = host
        names = sorted((db.name.encode("utf-8", "surrogateescape"), index + 1)
                       for index, db in enumerate(engine.state.dbs))
        info = runtime.table_from({
            b"thid": thid,
            b"version": KT_VERSION.split(b" ")[0],
            b"dbs": runtime.table_from(host.server_handles()),
            b"names": runtime.table_from([part for item in names for part in item]),
            b"count": HOOK_COUNT,
        })
        funcs = runtime.execute(engine.module_source, runtime.table_from(host.primitives()), info)
        host.bind(funcs[b"visit_full"], funcs[b"visit_empty"], funcs[b"file_process"])
        self._load = funcs[b"load"]
        self._call = funcs[b"call"]
        self._finish = funcs[b"finish"]
        self._new_table = funcs[b"new_table"]
        if script is not None:
            ok, message = self._run(self._load, script)
            if not ok:
                engine.log_failure(b"(init)", message, host.timed_out)
                engine.state.log(LOG_ERROR, f"could not load a script file: {engine.path}")

    def _run(self, func: Any, *args: Any) -> tuple[Any, Any]:
        """``func(*args, coarse deadline)`` under the deadline: its two results, or
        (None, message) when the time limit escaped every pcall."""
        host = self._host
        timeout = self._engine.state.config.timeout
        host.timed_out = False
        coarse = None
        if timeout > 0:
            host.deadline = time.monotonic() + timeout
            coarse = int(time.time() + timeout)
        try:
            result = func(*args, coarse)
        except self._engine.lupa.LuaError as exc:
            result = (None, str(exc).encode("utf-8", "replace"))
        finally:
            host.deadline = None
            self._finish()
        if not isinstance(result, tuple):
            result = (result, None)
        return result[0], result[1]

    def call(self, name: bytes, inmap: dict[bytes, bytes]) -> tuple[int, dict[bytes, bytes]]:
        table = self._new_table()
        for key in sorted(inmap):
            table[key] = inmap[key]
        rv, out = self._run(self._call, name, table)
        if rv is None:
            self._engine.log_failure(name, out, self._host.timed_out)
            return RV_INTERNAL, {}
        outmap = dict(lua_pairs(out, len(out)))
        return _return_value(rv), dict(sorted(outmap.items()))


class ScriptEngine:
    """``state.scripting``: a pool of Lua states running one script."""

    def __init__(self, state: ServerState, path: str, lupa: ModuleType) -> None:
        self.state = state
        self.path = path
        self.lupa = lupa
        with open(_MODULE_SOURCE, "rb") as f:
            self.module_source = f.read()
        self._size = max(1, state.config.threads)
        self._cond = threading.Condition()
        self._idle: list[_LuaState] = []
        self._thids: set[int] = set()  # of the states of this generation that exist
        self._generation = 0
        self._script = self._read()
        self._prime()

    def _read(self) -> bytes | None:
        """The script as luaL_loadstring sees it (up to a NUL), or None if unreadable."""
        try:
            with open(self.path, "rb") as f:
                script = f.read()
        except OSError:
            self.state.log(LOG_ERROR, f"could not load a script file: {self.path}")
            return None
        nul = script.find(b"\0")
        return script if nul < 0 else script[:nul]

    def _prime(self) -> None:
        """Create one state now, so that a script that does not load is logged at once."""
        with self._cond:
            if len(self._thids) >= self._size:
                return
        self._checkin(self._checkout())

    def log_failure(self, name: bytes, message: Any, timed_out: bool) -> None:
        if timed_out:
            text = f"the procedure ran past the request timeout ({self.state.config.timeout:g} s)"
        elif isinstance(message, bytes):
            text = message.decode("utf-8", "replace")
        else:
            text = "(null)" if message is None else str(message)
        self.state.log(LOG_ERROR, f"[SCRIPT]: {name.decode('utf-8', 'replace')}: {text}")

    def _checkout(self) -> _LuaState:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if len(self._thids) < self._size:
                    thid = min(set(range(self._size)) - self._thids)
                    self._thids.add(thid)
                    generation, script = self._generation, self._script
                    break
                self._cond.wait()
        try:
            return _LuaState(self, thid, generation, script)
        except BaseException:
            with self._cond:
                if generation == self._generation:
                    self._thids.discard(thid)
                self._cond.notify()
            raise

    def _checkin(self, state: _LuaState) -> None:
        with self._cond:
            if state.generation == self._generation:
                self._idle.append(state)
            self._cond.notify()

    def call(self, name: bytes, inmap: dict[bytes, bytes]) -> tuple[int, dict[bytes, bytes]]:
        """Run procedure ``name``: (return value, output records sorted by key)."""
        state = self._checkout()
        try:
            return state.call(name, inmap)
        finally:
            self._checkin(state)

    def reload(self) -> None:
        """Reread the script (SIGUSR1): later calls run in fresh states."""
        with self._cond:
            self._generation += 1
            self._idle.clear()
            self._thids = set()
            self._script = self._read()
            self._cond.notify_all()
        self._prime()
