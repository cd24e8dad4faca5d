"""One server of a differential session: start it, run the steps, record masked answers.

:func:`run` starts a server (``command``: ``[ktserver]`` or ``[python, -m,
ktcluster.server]``) with the session's configuration in a fresh directory, runs the
steps in order (:func:`run_on` runs them on a server already running) and returns one
*transcript* per step: the bytes of the answer as read
with the protocol's framing, with what legitimately differs between two servers, or
two runs of one, replaced by placeholders:

* the ``Date`` header, the port in ``Location``; absolute expiry times (``xt`` fields and headers, get_bulk's
  records, replication payloads) and update-log time stamps;
* ``report``'s process and timing figures (``serv_*`` but the thread count, ``sys_*``,
  sizes), ``ulog_list``'s file sizes and time stamps, memcached ``stats``' process
  figures and sizes;
* ``status``'s size figures (``size``, ``realsize``, ``cusage``), and for the B+ tree
  types their page figures (``pnum``, ``lcnt``, ``icnt``, ``first``, ``last``,
  ``root``, ``frgcnt``): the file and page layout of each Kyoto Cabinet type is
  emulated, not reproduced byte for byte.

A connection the server closed is noted in the transcript and reopened for the next
step that uses it; a read that gets nothing for ``READ_TIMEOUT`` seconds is noted too.

Idling is where two correct servers can drift apart: the idle maintenance runs about
ten times a second, and how many times it ran in a pause decides where each database's
garbage collector stands and how far a .kch file is defragmented.  So every step that
lets a server idle (a pause, a blocked request, a replication handshake, which waits
for the update log to be written first) lasts at least 1.5 s, enough for the collector
to go through every record, and is followed by :func:`settle`: each database's
``status`` (so what the idle maintenance collected is compared), then a full
``vacuum``, which leaves the collector and the file in the same state on both servers.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from ktcluster.protocol.binary import (
    Incomplete,
    decode_get_bulk_reply,
    decode_play_script_reply,
    encode_get_bulk,
)
from ktcluster.protocol.http import parse_response_head
from ktcluster.protocol.replication import decode_log_entry, decode_stream_message, split_xt
from ktcluster.protocol.rpc import answer_fields
from ktcluster.testing import KTServer, free_port

from .steps import Session, Step

__all__ = ["run", "run_on", "server_argv", "READ_TIMEOUT"]

READ_TIMEOUT = 8.0
#: how long a half-closed throwaway connection may take to be closed by the server
CLOSE_TIMEOUT = 5.0
LUA_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz.lua")
_T = b"<T>"
#: requests sent after one that asks for no reply, to know when it has been served
_BINARY_PING = encode_get_bulk([])
_MEMCACHE_PING = b"version\r\n"
#: how long a replication handshake waits for the update log to be written (ktulog.h
#: writes it every 0.1 s) and the idle maintenance to settle
_ULOG_FLUSH = 1.5
_TIME_RANGE = range(10 ** 9, 10 ** 13)
_MASKED_REPORT = re.compile(rb"serv_(conn_count|task_count|current_time|running_term|proc_id)|sys_.*|db_total_size")
_MASKED_STATUS = {b"size", b"realsize", b"cusage"}
#: whether status's size figures are masked (python tests/difffuzz --compare-sizes: not)
MASK_SIZES = True
_PAGE_FIGURES = {b"pnum", b"lcnt", b"icnt", b"first", b"last", b"root", b"frgcnt"}
_MASKED_STATS = re.compile(rb"STAT (pid|uptime|time|curr_connections|bytes|db_size|db_realsize|db_cusage) [^\r]*")
_MASKED_TREE_STATS = re.compile(rb"STAT db_(pnum|lcnt|icnt|first|last|root|frgcnt) [^\r]*")
_DATE = re.compile(rb"(?im)^(date|x-kt-xt): [^\r\n]*")
_PORT = re.compile(rb"(?im)^(location: http://[^:/\r\n]*):\d+")


class Transcript(list):
    """The masked answers of a session's steps, one bytes object per step."""


def server_argv(session: Session, memc_port: int, libexec: str | None, timeout: float = 3) -> list[str]:
    """The options of a session's server (after -host/-port/-log, before the databases)."""
    args = ["-tout", f"{timeout:g}"]
    if session.ulog:
        args += ["-ulog", "ulog", "-sid", "1"]
    if session.lua:
        args += ["-scr", LUA_SCRIPT]
    if session.memcached:
        plugin = os.path.join(libexec, "ktplugservmemc.so") if libexec else "ktplugservmemc.so"
        args += ["-plsv", plugin, "-plex", f"port={memc_port}#tout={timeout:g}"]
    return args


class _Server(KTServer):
    """A KTServer whose program is given, not taken from $KT_SERVER_BIN."""

    def __init__(self, command: Sequence[str], *dbs: str, **kwargs: Any) -> None:
        super().__init__(*dbs, **kwargs)
        self.command = list(command)

    def argv(self) -> list[str]:
        argv = super().argv()
        program = argv.index("-host")
        return self.command + argv[program:]


def run(session: Session, command: Sequence[str], libexec: str | None = None) -> Transcript:
    """Run ``session`` on a fresh server started with ``command``; its transcript."""
    memc_port = free_port()
    server = _Server(command, *session.dbs, args=server_argv(session, memc_port, libexec))
    server.start()
    try:
        return run_on(server, memc_port, session)
    finally:
        server.cleanup()


def run_on(server: KTServer, memc_port: int, session: Session) -> Transcript:
    """Run ``session``'s steps on a running server (started with :func:`server_argv`'s
    options and the session's databases); its transcript."""
    runner = _Runner(server, memc_port, len(session.dbs))
    try:
        if session.memcached:
            runner.wait_for_memcached()
        return Transcript(runner.step(step) for step in session.steps)
    finally:
        runner.close()


class _Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.closed = False

    def fill(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise _Timeout() from None
        except OSError:
            data = b""
        if not data:
            self.closed = True
            raise _Closed()
        self.buf += data

    def take(self, decoder: Callable[[bytes], tuple[Any, int]]) -> Any:
        """Run ``decoder(buf) -> (value, bytes used)`` over what was received, receiving
        more while it raises Incomplete."""
        while True:
            try:
                value, used = decoder(self.buf)
            except Incomplete:
                self.fill()
                continue
            self.buf = self.buf[used:]
            return value

    def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self.fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def line(self) -> bytes:
        def decoder(buf: bytes) -> tuple[bytes, int]:
            end = buf.find(b"\r\n")
            if end < 0:
                raise Incomplete(len(buf) + 1)
            return buf[:end + 2], end + 2
        return self.take(decoder)

    def close(self) -> None:
        self.sock.close()


class _Timeout(Exception):
    pass


class _Closed(Exception):
    pass


class _Runner:
    def __init__(self, server: KTServer, memc_port: int, dbs: int) -> None:
        self.server = server
        self.dbs = dbs
        self.memc_port = memc_port
        self.conns: dict[Any, _Conn] = {}

    def wait_for_memcached(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.memc_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)

    def conn(self, name: Any, port: int) -> _Conn:
        conn = self.conns.get(name)
        if conn is None or conn.closed:
            conn = self.conns[name] = _Conn(port)
        return conn

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def step(self, step: Step) -> bytes:
        """The masked answer to ``step`` (a server that cannot be reached any more, a
        crashed one, answers that)."""
        try:
            return self._step(step)
        except OSError as exc:
            return b"<cannot connect: %s>" % type(exc).__name__.encode()

    def _step(self, step: Step) -> bytes:
        if step.kind == "pause":
            time.sleep(step.seconds)
            return self.settle()
        if step.kind in ("raw", "block", "repl"):
            if step.kind == "repl":
                time.sleep(_ULOG_FLUSH)
            conn = _Conn(self.server.port)
            try:
                answer = self._fresh(conn, step)
            finally:
                conn.close()
            return answer if step.kind == "raw" else answer + b"\n" + self.settle()
        port = self.memc_port if step.kind == "memcache" else self.server.port
        conn = self.conn((step.kind == "memcache", step.conn), port)
        try:
            conn.sock.sendall(step.data)
        except OSError:
            conn.closed = True
            return b"<send failed>"
        out: list[bytes] = []
        try:
            if step.kind == "http":
                for head in step.heads:
                    out.append(_http(conn, head))
            elif step.kind == "binary":
                if not step.reply:   # no reply asked: make sure it has been served
                    conn.sock.sendall(_BINARY_PING)
                out.append(_binary(conn, ord(step.reply or "\xba")))
            else:
                if not step.reply:
                    conn.sock.sendall(_MEMCACHE_PING)
                out.append(_memcache(conn, step.reply or "line"))
        except _Timeout:
            out.append(b"<no answer in time: %r>" % conn.buf)
            conn.closed = True
            conn.close()
        except _Closed:
            out.append(b"<closed after %r>" % conn.buf)
        return b"\n".join(out)

    def settle(self) -> bytes:
        """After idling: each database's status, then a full vacuum of each (see the
        module doc); their answers."""
        conn = self.conn((False, 0), self.server.port)
        out = []
        for index in range(self.dbs):
            for name in (b"status", b"vacuum"):
                conn.sock.sendall(b"GET /rpc/%s?DB=%d HTTP/1.1\r\n\r\n" % (name, index))
                try:
                    out.append(_http(conn, False))
                except (_Timeout, _Closed):
                    conn.closed = True
                    out.append(b"<settling failed>")
        return b"\n".join(out)

    def _fresh(self, conn: _Conn, step: Step) -> bytes:
        conn.sock.sendall(step.data)
        if step.kind == "raw":
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.sock.settimeout(CLOSE_TIMEOUT)
            try:
                while True:
                    conn.fill()
            except _Timeout:
                end = b"<left open>"
            except _Closed:
                end = b"<closed>"
            return _masked_stream(conn.buf, step.data.startswith(b"HEAD")) + end
        try:
            if step.kind == "block":
                return _http(conn, False)
            return _replication(conn)
        except _Timeout:
            return b"<no answer in time: %r>" % conn.buf
        except _Closed:
            return b"<closed after %r>" % conn.buf


# -- reading and masking answers ------------------------------------------------------------------


def _unvolatile(data: bytes) -> bytes:
    """The Date headers and Location ports of raw HTTP answers masked."""
    return _PORT.sub(rb"\1:<P>", _DATE.sub(rb"\1: <D>", data))


def _mask_time(value: bytes) -> bytes:
    return _T if value.isdigit() and int(value) in _TIME_RANGE else value


def _http(conn: _Conn, head_request: bool) -> bytes:
    head = conn.take(lambda buf: (parse_response_head(buf, 0, head_request=head_request), 0))
    size = 0 if head_request else int(head.headers.get(b"content-length", b"0"))
    raw = conn.exactly(head.body_start + size)
    if not head.keep_alive:
        conn.closed = True
    return _masked_http(raw, head)


def _masked_stream(data: bytes, head_request: bool) -> bytes:
    """The HTTP answers in ``data`` masked, and what follows them as it is."""
    out = []
    while data:
        try:
            head = parse_response_head(data, 0, head_request=head_request)
            end = head.body_start + (0 if head_request else int(head.headers.get(b"content-length", b"0")))
        except Exception:   # not (or no longer) an HTTP answer
            end = len(data) + 1
        if end > len(data):
            out.append(_unvolatile(data))
            break
        out.append(_masked_http(data[:end], head))
        data = data[end:]
    return b"".join(out)


def _masked_http(raw: bytes, head: Any) -> bytes:
    """One HTTP answer, masked."""
    head_bytes, body = raw[:head.body_start], raw[head.body_start:]
    head_bytes = _unvolatile(head_bytes)
    ctype = head.headers.get(b"content-type", b"")
    if not ctype.startswith(b"text/tab-separated-values") or not body:
        return head_bytes + body
    fields = answer_fields(head, body)
    tree = any(key == b"pnum" for key, _ in fields)
    masked = [(key, _mask_field(key, value, tree)) for key, value in fields]
    if masked == fields:
        return head_bytes + body
    head_bytes = re.sub(rb"(?im)^content-length: \d+", b"Content-Length: <L>", head_bytes)
    return head_bytes + b"<fields %r>" % masked


def _mask_field(key: bytes, value: bytes, tree: bool) -> bytes:
    if key == b"xt":
        return _mask_time(value)
    if (_MASKED_REPORT.fullmatch(key) or (MASK_SIZES and key in _MASKED_STATUS)
            or (tree and key in _PAGE_FIGURES)):
        return b"<V>"
    if key.startswith(b"db_") and b" size=" in value:   # report's db_N
        return re.sub(rb"size=\d+", b"size=<V>", value)
    if re.fullmatch(rb"\d{10}\.ulog|.*/\d{10}\.ulog", key):   # ulog_list
        return b"<V>"
    return value


def _binary(conn: _Conn, magic: int) -> bytes:
    first = conn.exactly(1)
    if first[0] != magic:
        return b"<magic %r>" % first
    conn.buf = first + conn.buf
    if magic == 0xBA:
        records = conn.take(decode_get_bulk_reply)
        return b"get_bulk %r" % [(db, k, v, _T if xt in _TIME_RANGE else xt) for db, k, v, xt in records]
    if magic == 0xB4:
        return b"play_script %r" % (conn.take(decode_play_script_reply),)
    return conn.exactly(5)


def _memcache(conn: _Conn, reply: str) -> bytes:
    out = [conn.line()]
    if reply == "values":
        while out[-1].startswith(b"VALUE "):
            size = int(out[-1].split()[3])
            out.append(conn.exactly(size + 2))
            out.append(conn.line())
    elif reply == "stats":
        while out[-1].startswith(b"STAT "):
            out.append(conn.line())
    text = _MASKED_STATS.sub(rb"STAT \1 <V>", b"".join(out))
    return _MASKED_TREE_STATS.sub(rb"STAT db_\1 <V>", text) if b"STAT db_pnum " in text else text


def _replication(conn: _Conn) -> bytes:
    first = conn.exactly(1)
    out = [first]
    if first != b"\xb1":
        return first
    while True:
        message = conn.take(lambda buf: decode_stream_message(buf, 0))
        if message.is_nop:
            return b"".join(out) + b"<nop>"
        if not message.payload:
            out.append(b"<dummy>")
            continue
        entry = decode_log_entry(message.payload)
        value = entry.value
        if entry.op == 0xA1 and len(value) >= 5:
            xt, rest = split_xt(value)
            if xt in _TIME_RANGE:
                value = _T + rest
        out.append(b"%r" % (entry._replace(value=value),))
