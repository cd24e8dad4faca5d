"""The databases: Kyoto Cabinet's record stores and TimedDB, and the update log.

From the top: :mod:`.storage` (``Database``: TimedDB semantics -- expiry and lazy GC,
update logging, the public API) over :mod:`.stores` (the records of each Kyoto Cabinet
type in its order, its ``size`` and ``status``) and :mod:`.cursors` (each type's cursor
rules); beneath them :mod:`.kcdb` (error codes, visitor answers), :mod:`.dbspec`
(``path#param=value`` specs, ``#rcomp`` comparators), :mod:`.increments` (the increment
record formats), :mod:`.textmatch` (POSIX regular expressions in linear time),
:mod:`.hashing` (the hash functions that order records), :mod:`.sortedlist` and
:mod:`.persistence` (the files).  :mod:`.ulog` is the update log (``-ulog``): its files,
their time stamps and readers.  Nothing here knows of sockets, requests or the server.
"""
