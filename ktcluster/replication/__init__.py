"""Replication consumers: one master's update log, or every master's log merged into one stream.

:class:`KyotoSlave` reads one master's update log (the 0xB1 replication
protocol) and is a drop-in for python-kyototycoon-ng's ``KyotoSlave``: same
constructor, ``consume(timestamp)`` in seconds, same dict keys and value types
(``value`` without the 5-byte expiry prefix, ``expires`` the absolute epoch
second, ``0xFFFFFFFFFF`` for "never").  Every dict also carries ``ts``, the
record's KT timestamp, so a consumer can resume exactly after it with
``consume(ts=...)``.  Deliberate differences from ng:

* size-0 "dummy" records (sent every 256 entries the sid filter skipped) and
  heartbeats advance the position instead of crashing the decoder;
* SET values of ``ktopts=p`` databases (stored without an expiry prefix) are
  returned whole with ``expires`` = ``0xFFFFFFFFFF`` -- ng cuts 5 bytes off them.
  The master's ``status`` RPC tells which databases are ``ktopts=p``;
* a closed or broken connection raises :class:`~ktcluster.errors.KTConnectionError`
  (ng: ``IOError``), a refusal (no update log) :class:`~ktcluster.errors.ReplicationError`,
  and garbage :class:`~ktcluster.errors.ProtocolError` -- all KyotoTycoonException;
* a master cannot exhaust the consumer: a log entry announced larger than
  ``max_record_size`` (default 257 MiB) is a ProtocolError before its bytes are
  read, sizes inside an entry are read in linear time and at most 10 bytes long,
  and ``timeout`` bounds the arrival of each message (a master trickling a record
  is cut off);
  a bad ``sid`` raises :class:`~ktcluster.errors.ArgumentError`, a ``ValueError`` as in ng;
* ``close()`` ends ``consume()`` cleanly, from any thread;
* op codes other than SET/REMOVE/CLEAR (KT never writes them) are skipped, as
  ktserver's own slave does, instead of raising;
* with ``reconnect=True`` a broken connection is reopened with backoff after
  the last timestamp seen.

:class:`ReplicationStream` merges several masters (a sharded cluster) into one
stream ordered by ``(ts, node)``.  What it guarantees, and what it cannot:

* **Every record, once.**  A master's records are delivered in its log order,
  none skipped, none repeated -- also across reconnects and master restarts
  (the reader resumes after the last timestamp it received).
* **Checkpoints.**  :meth:`ReplicationStream.checkpoint` (any time, JSON-
  serialisable) holds each master's position: every record of that master up to
  it has been yielded, *including the record just yielded*.  Resuming from a
  checkpoint re-delivers nothing and loses nothing.  Save it after processing a
  record: a crash between processing and saving re-delivers what came after the
  last save, so delivery is at-least-once across crashes; consumers should be
  idempotent.
* **Order.**  A record is released only when every live master's stream has
  passed its timestamp (the master's heartbeats carry ``max(now - 1 s, last ts)``
  as a watermark), so the merged stream is non-decreasing in ``ts``.  The order
  is that of KT timestamps, i.e. of each master's wall clock at write time:
  between masters it is exact only up to their clock skew, and it says nothing
  about causality.  An idle master holds the stream back by about 1.1 s (KT's
  heartbeat lag); a master whose clock is behind holds it back by the skew.
* **Idle / unreachable masters.**  A master from which nothing (record or
  heartbeat) arrived for ``idle_timeout`` seconds stops holding the stream back
  ("excluded"; see :attr:`ReplicationStream.excluded` and ``on_idle``).  Its
  records are still delivered when they come -- possibly out of global order
  (counted in :attr:`ReplicationStream.late_records`) -- and it rejoins the
  ordering once its stream has caught up with what was already yielded.
* **Lost history.**  KT never says that a requested position predates its
  oldest update-log file (it silently starts at the oldest remaining file).  On
  every (re)connection from a known position the master's ``ulog_list`` is
  checked; if files were removed and the position precedes the oldest entry
  still there, :class:`~ktcluster.errors.ResyncRequiredError` is raised (its
  ``oldest_ts``: resuming from ``oldest_ts - 1`` accepts the gap).  This can
  report a gap that is not one (a position between the last removed and the
  first kept entry: KT keeps no trace of where removed files ended), but it
  never misses files removed by ``ulog_remove`` (always the oldest).  Not
  detected: files deleted by hand from the middle of the log, and a wiped
  update-log directory (it looks like a new master).
* **Heartbeat trust.**  Like ktserver's own slave, positions advance with the
  master's heartbeats, which assume the master flushes its log within 1 s.
* **Dual-master pairs.**  A master's log also holds entries it replicated from
  its partner; give each master's ``-sid`` in ``origin_sids`` and only entries
  written on that master are read from it (KT's WHITESID), so each write
  appears once.

Per master, at most ``max_buffer`` bytes of stream (plus one record) wait in
memory; a full buffer stops reading that master's socket (backpressure).
Readers are threads (greenlets under ``gevent.monkey.patch_all()``); they stop
on :meth:`~ReplicationStream.close`, when the ``with`` block or the iteration
ends.
"""

from .checkpoint import Checkpoint
from .slave import OP_CLEAR, OP_REMOVE, OP_SET, XT_NEVER, KyotoSlave, Record, ts_from_seconds
from .stream import ReplicationStream

__all__ = [
    "OP_SET", "OP_REMOVE", "OP_CLEAR", "XT_NEVER",
    "KyotoSlave", "Checkpoint", "ReplicationStream", "ts_from_seconds", "Record",
]
