"""The server's front ends: each serves a protocol on top of the shared state
(:mod:`ktcluster.server.state`) and one connection (:mod:`ktcluster.server.session`);
encoding and decoding are :mod:`ktcluster.protocol`'s.

* :mod:`.rpc` (HTTP TSV-RPC under ``/rpc/``) and :mod:`.rest` (the RESTful interface);
* :mod:`.binary` (the binary protocol), which hands 0xB1 to :mod:`.replication` (the
  replication master, streaming the update log);
* :mod:`.slave` -- the replication slave of ``-mhost``/``-rts`` (``state.slave``);
* :mod:`.memcached` -- the memcached plug-in of ``-plsv ktplugservmemc.so``, a second
  listener (``state.plugins``).

None of them imports the process (:mod:`ktcluster.server.server`).
"""
