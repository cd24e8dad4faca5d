"""A differential fuzzer: the same random requests to a real ktserver and to the embedded
server, their answers compared byte for byte after masking what legitimately differs.

* :mod:`.steps` -- what is sent: seeded random sessions of steps over every protocol
  (TSV-RPC in every input encoding, REST, the binary protocol, Lua through both,
  replication handshakes, memcached, malformed HTTP on throwaway connections) and
  pauses that let the servers' idle maintenance run.
* :mod:`.runner` -- one server of a session: its command line, its connections, each
  step's answer read with the protocol's framing and *masked*: the Date header, time
  stamps and absolute expiry times, process figures of ``report`` and memcached
  ``stats``, and the size figures of ``status`` (``size``, ``realsize``, ``cusage``:
  the file layout each Kyoto Cabinet type reports is emulated, not reproduced).
* :mod:`.campaign` -- sessions run on both servers and compared; a divergence is shrunk
  (fewer steps, on fresh servers, while it persists) and reported minimal.

Run a campaign by hand (``python tests/difffuzz --help``); ``tests/test_difffuzz.py``
runs a short seeded one when ``KT_SERVER_BIN`` is set.
"""
