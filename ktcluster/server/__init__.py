"""An embedded Kyoto Tycoon server: ``python -m ktcluster.server [options] [db ...]``.

It speaks ktserver 0.9.56b's protocols byte for byte on one port (HTTP TSV-RPC and
RESTful interface, the binary protocol, the 0xB1 replication stream of its update log)
and takes ktserver's command line, so tests, demos and benchmarks run without a real
Kyoto Tycoon.  The golden transcripts in ``tests/golden`` recorded from a real ktserver
are its specification.

Modules, from the bottom up:

* the databases: :mod:`.storage` (``Database``: TimedDB semantics -- expiry and lazy
  GC, update logging, the public API) over :mod:`.stores` (the records of each Kyoto
  Cabinet type in its order, its ``size`` and ``status``) and :mod:`.cursors` (each
  type's cursor rules); beneath them :mod:`.kcdb` (error codes, visitor answers),
  :mod:`.dbspec` (``path#param=value`` specs, ``#rcomp`` comparators),
  :mod:`.increments` (the increment record formats), :mod:`.textmatch` (POSIX regular
  expressions in linear time), :mod:`.hashing` (the hash functions that order records),
  :mod:`.sortedlist` and :mod:`.persistence` (the files);
* :mod:`.ulog` -- the update log files, their time stamps and readers;
* :mod:`.config` -- the command line;
* :mod:`.netio` -- buffered blocking sockets and listeners (ktserver's timeouts);
* :mod:`.thserv` -- ktserver's threaded server: connections in a poller, ``-th``
  worker threads, the idle and timer events;
* :mod:`.server` -- the server: databases, first-byte dispatch, the HTTP loop,
  WAIT/SIGNAL conditions, counters, the log, the idle maintenance;
* :mod:`.rpc`, :mod:`.rest`, :mod:`.binary`, :mod:`.replication` -- the protocol front
  ends on top of the databases (encoding/decoding lives in :mod:`ktcluster.protocol`);
* :mod:`.slave` -- the replication slave of ``-mhost``/``-rts`` (``server.slave``);
* :mod:`.memcached` -- the memcached plug-in of ``-plsv ktplugservmemc.so``
  (``server.plugins``);
* :mod:`.scripting` (the pool of Lua states), :mod:`.scripting_kt` with
  ``scripting_kt.lua`` (the ``kt`` module) and :mod:`.scripting_lib` (its library
  functions) -- the Lua engine of ``-scr`` (``server.scripting``).
"""
