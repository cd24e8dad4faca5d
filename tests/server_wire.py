"""A minimal blocking client for the server tests: raw sockets plus the protocol layer, so
that the server tests do not depend on the client library."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from golden_replay import libexec_dir

from ktcluster.protocol.binary import (
    MAGIC_SET_BULK,
    Incomplete,
    decode_count_reply,
    decode_get_bulk_reply,
    encode_get_bulk,
    encode_set_bulk,
)
from ktcluster.protocol.http import ResponseHead, parse_response_head
from ktcluster.protocol.replication import (
    ACK,
    LogEntry,
    decode_log_entry,
    decode_stream_message,
    encode_handshake,
)
from ktcluster.protocol.rpc import answer_fields, encode_call
from ktcluster.testing import using_real_server

__all__ = ["Wire", "NOBODY", "connect", "update_log", "memcached_plugin", "proc_status", "rss", "cpu_seconds"]

#: a sid no server uses: a replication stream for it carries every entry
NOBODY = 65535


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A connection to ``port``, retried while it is refused for up to ``timeout`` seconds
    (a plug-in starts listening a moment after the server's main port)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Wire:
    """One connection to a server under test."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def recv_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def decode(self, decoder: Callable[..., tuple[Any, int]], *args: Any) -> Any:
        """Run a protocol decoder (``decoder(buf, *args)`` -> (value, bytes used)) over
        what was received, receiving more while it is Incomplete; its value."""
        while True:
            try:
                value, used = decoder(self.buf, *args)
                break
            except Incomplete:
                self._fill()
        self.buf = self.buf[used:]
        return value

    def response(self, head_request: bool = False) -> tuple[ResponseHead, bytes]:
        """The next HTTP response: (head, body)."""
        head = self.decode(lambda buf: (parse_response_head(buf, 0, head_request=head_request), 0))
        end = head.body_start + (head.length or 0)
        while len(self.buf) < end:
            self._fill()
        body, self.buf = self.buf[head.body_start:end], self.buf[end:]
        return head, body

    def http(self, request: bytes, head_request: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one raw HTTP request; (status, headers, body)."""
        self.sock.sendall(request)
        head, body = self.response(head_request)
        return head.status, head.headers, body

    def rpc(self, name: str, fields: list[tuple[bytes, bytes]] | None = None,
            **params: bytes | str | int) -> tuple[int, dict[bytes, bytes]]:
        """Call a procedure with ``fields`` and/or keyword parameters; (HTTP status,
        decoded output map)."""
        fields = list(fields or [])
        for key, value in params.items():
            fields.append((key.encode(), value if isinstance(value, bytes) else str(value).encode()))
        self.sock.sendall(encode_call(name.encode(), fields))
        head, body = self.response()
        return head.status, dict(answer_fields(head, body))

    def pipelined(self, calls: list[tuple[str, list[tuple[bytes, bytes]]]]) -> list[tuple[int, dict[bytes, bytes]]]:
        """Send several calls in one write (no idle gap in which the server's idle
        maintenance could run), then read the answers: (HTTP status, output map) each."""
        self.sock.sendall(b"".join(encode_call(name.encode(), fields) for name, fields in calls))
        out = []
        for _ in calls:
            head, body = self.response()
            out.append((head.status, dict(answer_fields(head, body))))
        return out

    def get(self, key: bytes, db: int = 0) -> bytes | None:
        status, out = self.rpc("get", [(b"key", key)], DB=db)
        return out[b"value"] if status == 200 else None

    def set(self, key: bytes, value: bytes, xt: int | None = None, db: int = 0) -> int:
        params: dict[str, int] = {"DB": db} if xt is None else {"DB": db, "xt": xt}
        return self.rpc("set", [(b"key", key), (b"value", value)], **params)[0]

    def binary_set(self, records: list[tuple[int, bytes, bytes, int]]) -> int:
        """0xB8 set_bulk of (dbidx, key, value, xt) records; the hit count."""
        self.sock.sendall(encode_set_bulk(records))
        return self.decode(decode_count_reply, MAGIC_SET_BULK)

    def binary_get(self, records: list[tuple[int, bytes]]) -> list[tuple[int, bytes, bytes, int]]:
        """0xBA get_bulk of (dbidx, key) records; the records found."""
        self.sock.sendall(encode_get_bulk(records))
        return self.decode(decode_get_bulk_reply)

    def replication(self, ts: int, sid: int, flags: int = 0) -> None:
        """Send the 0xB1 handshake."""
        self.sock.sendall(encode_handshake(ts, sid, flags))


def update_log(host: str, port: int, ts: int = 0, sid: int = NOBODY) -> list[tuple[int, LogEntry]]:
    """(time stamp, entry) of what a master's replication stream carries for ``sid`` after
    ``ts``, up to its first heartbeat (the end of its update log)."""
    with Wire(host, port) as wire:
        wire.replication(ts, sid)
        assert wire.recv_exact(1) == ACK
        out = []
        while True:
            message = wire.decode(decode_stream_message)
            if message.is_nop:
                return out
            if message.payload:
                out.append((message.ts, decode_log_entry(message.payload)))


def memcached_plugin() -> str:
    """The -plsv argument of the memcached plug-in of the server under test."""
    return os.path.join(libexec_dir(), "ktplugservmemc.so") if using_real_server() else "ktplugservmemc.so"


def proc_status(pid: int, field: str) -> int:
    """A number of /proc/PID/status (``VmRSS`` in kB, ``Threads``...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss(pid: int) -> int:
    """The resident memory of a process, in bytes."""
    return proc_status(pid, "VmRSS") * 1024


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
