"""The sans-IO protocol layer shared by the client and the embedded server.

Every module here is pure functions over bytes: no sockets, no clocks (except
the HTTP Date header), no threads.  ``tsv`` holds KT's column encodings and TSV
maps, ``http`` the HTTP/1.x framing, ``rpc`` the TSV-RPC messages, ``binary``
the binary protocol, ``replication`` the 0xB1 stream and update-log entries,
``memcache`` the memcached text protocol of KT's plug-in; ``framing`` the
:class:`~ktcluster.protocol.framing.Incomplete` signal every decoder raises when it
needs more bytes.
"""
