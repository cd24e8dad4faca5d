"""An embedded Kyoto Tycoon server: ``python -m ktcluster.server [options] [db ...]``.

It speaks ktserver 0.9.56b's protocols byte for byte on one port (HTTP TSV-RPC and
RESTful interface, the binary protocol, the 0xB1 replication stream of its update log)
and takes ktserver's command line, so tests, demos and benchmarks run without a real
Kyoto Tycoon.  The golden transcripts in ``tests/golden`` recorded from a real ktserver
are its specification.

Modules, from the bottom up:

* :mod:`.storage` -- the databases (TimedDB semantics over each Kyoto Cabinet type:
  order, expiry and lazy GC, cursors, capacity limits, update logging), with
  :mod:`.sortedlist`, :mod:`.hashing` and :mod:`.persistence` beneath it;
* :mod:`.ulog` -- the update log files, their time stamps and readers;
* :mod:`.config` -- the command line and database specs;
* :mod:`.server` -- listener, one thread per connection, first-byte dispatch, the HTTP
  loop, WAIT/SIGNAL conditions, counters;
* :mod:`.rpc`, :mod:`.rest`, :mod:`.binary`, :mod:`.replication` -- the protocol front
  ends on top of the databases (encoding/decoding lives in :mod:`ktcluster.protocol`);
* :mod:`.slave` -- the replication slave of ``-mhost``/``-rts`` (``server.slave``);
* :mod:`.memcached` -- the memcached plug-in of ``-plsv ktplugservmemc.so``
  (``server.plugins``).
"""
