"""An embedded Kyoto Tycoon server: ``python -m ktcluster.server [options] [db ...]``.

It speaks ktserver 0.9.56b's protocols byte for byte on one port (HTTP TSV-RPC and
RESTful interface, the binary protocol, the 0xB1 replication stream of its update log)
and takes ktserver's command line, so tests, demos and benchmarks run without a real
Kyoto Tycoon.  The golden transcripts in ``tests/golden`` recorded from a real ktserver
are its specification.

The folder is layered: a module imports only from its own layer and those listed before
it (``tests/test_server_layers.py`` checks this, and that no import circle is left):

* :mod:`.db` -- the databases (``Database``: Kyoto Cabinet's record stores with TimedDB
  semantics, their cursors, files and regular expressions) and :mod:`.db.ulog`, the
  update log; nothing there knows of sockets or requests;
* :mod:`.config` (the command line) and :mod:`.log` (ktserver's log lines);
* :mod:`.state` -- what the front ends share, one ``ServerState`` per server: the
  configuration, the databases and how a request names one, the update log, the
  WAIT/SIGNAL conditions, the operation counters, the ``stopping`` event, the parts the
  command line adds (typed hooks: ``scripting``, ``slave``, ``plugins``), and the return
  values and HTTP statuses every front end answers with;
* the connections: :mod:`.netio` (buffered blocking sockets and listeners, ktserver's
  timeouts), :mod:`.thserv` (ktserver's threaded server: connections in a poller, ``-th``
  worker threads, the idle and timer events) and :mod:`.session` (one connection: its
  buffer, cursors, counters, HTTP framing);
* the front ends, which import the state and the session, never the process:
  :mod:`.frontends` -- :mod:`~.frontends.rpc`, :mod:`~.frontends.rest`,
  :mod:`~.frontends.binary`, :mod:`~.frontends.replication` (the master),
  :mod:`~.frontends.slave` (``-mhost``/``-rts``), :mod:`~.frontends.memcached` (the
  ``-plsv ktplugservmemc.so`` plug-in, a second threaded server) -- and
  :mod:`.scripting`, the Lua engine of ``-scr`` (the pool of states, the ``kt`` module
  in ``kt.lua`` and :mod:`.scripting.kt`, and :mod:`.scripting.lib`, its library);
* the process: :mod:`.server` (``Server``: the listener, the dispatch of each request to
  its front end by its first byte, the idle and timer work, start and stop) and
  :mod:`.__main__` (signals, daemon, exit status).

Encoding and decoding live in :mod:`ktcluster.protocol`, shared with the client.
"""
