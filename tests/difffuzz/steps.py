"""What the fuzzer sends: seeded random sessions of steps.

A :class:`Session` is a server configuration (databases, update log, Lua script,
memcached plug-in) and a list of :class:`Step`.  Each step is bytes to send and how to
read the answer; all randomness is drawn here, from ``random.Random(seed)``, so a
session is reproduced from its seed and configuration alone, and any sub-list of its
steps is a valid session (which is what shrinking needs).

Requests stay within what both servers answer deterministically: records expire long
ago (absolute ``xt`` in the past) or far in the future, never within the session; waits
end by timing out (a signal could race them); a request sent without asking for a reply
is followed by one that gets a reply on the same connection, so that the next step
cannot overtake it; keys come from a small pool so requests collide.  Everything else is
fair game, malformed HTTP included.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field

from ktcluster.protocol import binary, rest
from ktcluster.protocol.replication import FLAG_WHITESID, encode_handshake
from ktcluster.protocol.tsv import encode_map, quote_encode, url_encode

__all__ = ["Step", "Session", "generate", "DB_TYPES", "LUA_PROCEDURES", "IDLING"]

#: the database specs a campaign goes through (every type, and the options that change
#: how a type orders, expires or evicts records).  ProtoHashDB ("-") is left out: it
#: iterates in std::unordered_map's order, which depends on the C++ library ktserver was
#: built with (the embedded server reproduces the build of the golden transcripts, see
#: tests/test_golden.py), so two real ktservers disagree on it too.
DB_TYPES = [":", "+", "*", "%", "casket.kch", "casket.kct", "casket.kcd", "casket.kcf",
            ":#ktopts=p", "casket.kct#ktopts=p", "*#capcnt=12", ":#ktcapcnt=10", "+#ktcapsiz=400",
            "casket.kch#ktcapcnt=10", "casket.kct#rcomp=decimal", "%#rcomp=lexdesc", ":#bnum=7", "*#bnum=7"]
#: the kinds of step that let the servers idle
IDLING = ("pause", "block", "repl")
#: the B+ tree types: their sessions stay within one leaf page (see _Generator)
_PAGED = (".kct", ".kcf", "%")
#: the procedures of fuzz.lua
LUA_PROCEDURES = [b"echo", b"put", b"fetch", b"walk", b"incr", b"fail", b"nosuch"]
#: how long a pause lets the servers idle, and how long a blocked request waits: long
#: enough for the idle maintenance to go through every database (see runner.settle)
PAUSE = (1.5, 2.0)

_KEYS = [b"", b"a", b"ab", b"abc", b"b", b"k1", b"k10", b"k2", b"k20", b"key", b"x", b"y", b"z", b"zz", b"0", b"1",
         b"12", b"a b", b"tab\there", b"nl\nkey", b"\x00nul", b"\xff\xfe", b"%2F", b"/slash", b"long" * 20,
         b"k3", b"k30", b"k300", b"m", b"mm"]
_MEMC_KEYS = [k for k in _KEYS if k and all(0x20 < c < 0x7F for c in k)]
_REGEX_ATOMS = [b"a", b"b", b"k", b"1", b"0", b"z", b".", b"[a-k]", b"[^a]", b"[[:digit:]]", b"\\w", b"\\W", b"\\b",
                b"\\<", b"\\>", b"^", b"$", b"(a|b)", b"(k|kk)", b"()", b"\\(", b"[", b"\\1", b"(a*)", b"x"]
_REGEX_OPS = [b"", b"", b"", b"*", b"+", b"?", b"{2}", b"{1,3}", b"{,2}", b"*?", b"{2,1}"]


@dataclass(frozen=True)
class Step:
    """One thing to do.  ``kind``: ``http`` (``data`` holds ``len(heads)`` pipelined
    requests; ``heads[i]`` is True for a HEAD request), ``binary`` (``reply``: the magic
    of the answer, or "" for none), ``memcache`` (``reply``: "line", "values", "stats",
    or "" for none), ``raw`` (sent on a fresh connection that is then half-closed; the
    answer is everything up to the server's close), ``repl`` (a replication handshake
    on a fresh connection; the answer is the stream up to its first heartbeat),
    ``block`` (a request that waits on a fresh connection until it times out) or
    ``pause`` (``seconds`` of silence); these three let the servers idle, and are
    followed by a settling (see runner.settle).  ``conn`` picks a persistent connection.
    ``label`` says what it is, for reports."""

    kind: str
    label: str
    data: bytes = b""
    conn: int = 0
    heads: tuple[bool, ...] = ()
    reply: str = ""
    seconds: float = 0.0


@dataclass
class Session:
    """A server configuration and the steps to run on it."""

    seed: int
    dbs: list[str]
    ulog: bool = True
    lua: bool = True
    memcached: bool = True
    steps: list[Step] = field(default_factory=list)

    def with_steps(self, steps: list[Step]) -> Session:
        return Session(self.seed, self.dbs, self.ulog, self.lua, self.memcached, steps)


def generate(seed: int, dbs: list[str], count: int, *, ulog: bool = True, lua: bool = True,
             memcached: bool = True) -> Session:
    """A session of ``count`` steps on databases ``dbs``."""
    gen = _Generator(random.Random(seed), dbs, ulog, lua, memcached)
    return Session(seed, dbs, ulog, lua, memcached, [gen.step() for _ in range(count)])


class _Generator:
    """The random choices.  In a session with a B+ tree database (``_PAGED``) values stay
    short and keys come from a fixed pool, so that its records fit in one 8 KiB leaf
    page: where a B+ tree cursor lands after a removal depends on ktserver's leaf pages,
    which the embedded server does not emulate (see docs/embedded-server.md)."""

    def __init__(self, rng: random.Random, dbs: list[str], ulog: bool, lua: bool, memcached: bool) -> None:
        self.rng = rng
        self.dbs = dbs
        self.paged = any(spec.split("#")[0].endswith(_PAGED) for spec in dbs)
        self.random_keys = [rng.randbytes(rng.randrange(1, 12)) for _ in range(12)]
        self.ulog = ulog
        self.lua = lua
        self.memcached = memcached
        kinds = [("rpc", 55), ("rest", 12), ("binary", 12), ("raw", 5), ("pipeline", 5), ("pause", 0.4),
                 ("block", 0.3)]
        if memcached:
            kinds.append(("memcache", 7))
        if ulog:
            kinds.append(("repl", 0.4))
        self.kinds = [k for k, _ in kinds]
        self.weights = [w for _, w in kinds]

    # -- values ------------------------------------------------------------------------------

    def key(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.93:
            return rng.choice(_KEYS)
        return rng.choice(self.random_keys) if self.paged else rng.randbytes(rng.randrange(1, 12))

    def value(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return rng.choice([b"v", b"", b"value", b"1", b"-3", b"\x00\x00\x00\x00\x00\x00\x00\x05", b"a\tb\nc"])
        if r < 0.9 or self.paged:
            return rng.randbytes(rng.randrange(0, 40))
        return rng.randbytes(rng.choice((300, 3000, 70000)))

    def xt(self) -> bytes | None:
        """None, or an xt whose expiry cannot fall within the session: long ago
        (negative = absolute) or far ahead."""
        rng = self.rng
        if rng.random() < 0.6:
            return None
        return rng.choice([b"-1", b"-100", b"-1000000000", b"100000", b"99999999", b"9223372036854775807",
                           b"86400", b"-9999999999", b" -7", b"-1e3"])

    def db(self) -> bytes | None:
        rng = self.rng
        r = rng.random()
        if r < 0.65:
            return None
        if r < 0.95:
            index = rng.randrange(len(self.dbs))
            return b"%d" % index if rng.random() < 0.7 else self.dbs[index].encode()
        return rng.choice([b"7", b"nosuch", b"", b"4294967296", b"-1"])

    def regex(self) -> bytes:
        """A pattern of 1-4 atoms, each with an operator.  ``^`` stands only first and ``$``
        only last (elsewhere another atom is drawn): glibc lets them match next to a
        newline in some patterns and not in others, by its automaton's internals, which
        the embedded server does not follow (docs/embedded-server.md)."""
        rng = self.rng
        count = rng.randrange(1, 5)
        pieces = []
        for i in range(count):
            atom = rng.choice(_REGEX_ATOMS)
            while (atom == b"^" and i > 0) or (atom == b"$" and i < count - 1):
                atom = rng.choice(_REGEX_ATOMS)
            pieces.append(atom + rng.choice(_REGEX_OPS))
        out = b"".join(pieces)
        return out if rng.random() < 0.9 else out + b")" if rng.random() < 0.5 else b"(" + out

    # -- steps -------------------------------------------------------------------------------

    def step(self) -> Step:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        return getattr(self, "_" + kind)()

    def _rpc(self) -> Step:
        name, params = self.rpc_call()
        request, head = self.encode_rpc(name, params)
        return Step("http", f"rpc {name.decode()} {_show(params)}", request, self.rng.randrange(3), (head,))

    def _pipeline(self) -> Step:
        requests, heads, labels = [], [], []
        for _ in range(self.rng.randrange(2, 5)):
            if self.rng.random() < 0.7:
                name, params = self.rpc_call()
                request, head = self.encode_rpc(name, params)
                labels.append(f"{name.decode()} {_show(params)}")
            else:
                request, head, label = self.rest_request()
                labels.append(label)
            requests.append(request)
            heads.append(head)
        return Step("http", "pipelined: " + " | ".join(labels), b"".join(requests), self.rng.randrange(3),
                    tuple(heads))

    def _rest(self) -> Step:
        request, head, label = self.rest_request()
        return Step("http", label, request, self.rng.randrange(3), (head,))

    def rpc_call(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        rng = self.rng
        names = ["set", "get", "remove", "add", "replace", "append", "increment", "increment_double", "cas", "check",
                 "seize", "set_bulk", "remove_bulk", "get_bulk", "match_prefix", "match_regex", "match_similar",
                 "status", "clear", "vacuum", "echo", "void", "report", "cur_jump", "cur_jump_back", "cur_step",
                 "cur_step_back", "cur_get", "cur_get_key", "cur_get_value", "cur_set_value", "cur_remove",
                 "cur_seize", "cur_delete", "synchronize", "nosuch"]
        weights = [12, 10, 5, 3, 3, 3, 3, 2, 3, 3, 2, 4, 3, 4, 4, 3, 2, 3, 0.4, 1, 1, 1, 0.5, 3, 1.5, 3, 1.5, 2, 1.5,
                   1.5, 1.5, 1.5, 1, 0.7, 0.5, 0.3]
        if self.lua:
            names.append("play_script")
            weights.append(3)
        if self.ulog:
            names.append("ulog_list")
            weights.append(0.5)
        name = rng.choices(names, weights)[0]
        params: list[tuple[bytes, bytes]] = []

        def put(key: bytes, value: bytes | None) -> None:
            if value is not None:
                params.append((key, value))

        if name in ("set", "add", "replace", "append", "cas", "increment", "increment_double", "get", "check",
                    "seize", "remove"):
            put(b"key", self.key() if rng.random() < 0.97 else None)
        if name in ("set", "add", "replace", "append"):
            put(b"value", self.value() if rng.random() < 0.97 else None)
        if name == "cas":
            put(b"oval", self.value() if rng.random() < 0.6 else None)
            put(b"nval", self.value() if rng.random() < 0.6 else None)
        if name == "increment":
            put(b"num", rng.choice([b"1", b"-1", b"0", b"100", b"9223372036854775807", b"x", b"-5"]))
            put(b"orig", rng.choice([None, None, b"try", b"set", b"10", b"-3"]))
        if name == "increment_double":
            put(b"num", rng.choice([b"1", b"0.5", b"-2.25", b"1e308", b"1e120", b"nan", b"-inf", b"1e-9", b"x"]))
            put(b"orig", rng.choice([None, None, b"try", b"set", b"1.5"]))
        if name in ("set", "add", "replace", "append", "cas", "increment", "increment_double", "set_bulk",
                    "cur_set_value"):
            put(b"xt", self.xt())
        if name in ("set_bulk", "remove_bulk", "get_bulk"):
            for _ in range(rng.randrange(0, 6)):
                params.append((b"_" + self.key(), self.value() if name == "set_bulk" else b""))
            put(b"atomic", b"" if rng.random() < 0.3 else None)
        if name == "match_prefix":
            put(b"prefix", rng.choice([b"", b"a", b"k", b"k1", b"z", b"q"]))
        if name == "match_regex":
            put(b"regex", self.regex())
        if name == "match_similar":
            put(b"origin", rng.choice([b"a", b"k1", b"key", b"zz", b""]))
            put(b"range", rng.choice([None, b"0", b"1", b"2", b"5"]))
            put(b"utf", b"" if rng.random() < 0.2 else None)
        if name.startswith("match_"):
            put(b"max", rng.choice([None, None, None, b"0", b"1", b"3", b"-1"]))
        if name == "vacuum":
            put(b"step", rng.choice([None, b"1", b"2", b"10"]))
        if name == "echo":
            params += [(self.key() or b"e", self.value()) for _ in range(rng.randrange(0, 3))]
        if name.startswith("cur_"):
            put(b"CUR", rng.choice([b"1", b"1", b"2", b"3", b"9223372036854775808"]))
            if name in ("cur_jump", "cur_jump_back"):
                put(b"key", self.key() if rng.random() < 0.5 else None)
            if name in ("cur_get", "cur_get_key", "cur_get_value", "cur_set_value"):
                put(b"step", b"" if rng.random() < 0.4 else None)
            if name == "cur_set_value":
                put(b"value", self.value())
        if name == "play_script":
            put(b"name", rng.choice(LUA_PROCEDURES))
            params += [(b"_key", self.key()), (b"_value", self.value())][:rng.randrange(0, 3)]
        if name == "synchronize":
            put(b"hard", b"" if rng.random() < 0.3 else None)
        if name not in ("void", "echo", "report", "play_script", "ulog_list"):
            put(b"DB", self.db())
        if rng.random() < 0.03:
            params.append((b"SIGNAL", b"nobody"))
        rng.shuffle(params)
        return name.encode(), params

    def encode_rpc(self, name: bytes, params: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
        """The request in one of the input encodings ktserver reads: (bytes, HEAD?)."""
        rng = self.rng
        how = rng.choice(["tsv", "tsv", "B", "U", "Q", "get", "form", "head"])
        raw_ok = all(b"\t" not in k and b"\n" not in k and b"\n" not in v and not v.endswith(b"\r") for k, v in params)
        if how == "tsv" and not raw_ok:
            how = "B"
        if how in ("get", "head"):
            query = b"&".join(url_encode(k) + b"=" + url_encode(v) for k, v in params)
            method = b"GET" if how == "get" else b"HEAD"
            return (b"%s /rpc/%s%s HTTP/1.1\r\nHost: fuzz\r\n\r\n"
                    % (method, name, b"?" + query if query else b""), how == "head")
        if how == "form":
            body = b"&".join(url_encode(k) + b"=" + url_encode(v) for k, v in params)
            ctype = b"application/x-www-form-urlencoded"
        elif how == "tsv":
            body, ctype = encode_map(params), b"text/tab-separated-values"
        else:
            enc = {"B": lambda d: base64.b64encode(d), "U": url_encode, "Q": quote_encode}[how]
            body = b"".join(enc(k) + b"\t" + enc(v) + b"\n" for k, v in params)
            ctype = b"text/tab-separated-values; colenc=" + how.encode()
        return (b"POST /rpc/%s HTTP/1.1\r\nHost: fuzz\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (name, ctype, len(body), body), False)

    def rest_request(self) -> tuple[bytes, bool, str]:
        rng = self.rng
        key = self.key()
        db = self.db()
        target = rest.rest_target(db or b"", key) if db is not None else b"/" + rest.quote_path(key)
        method = rng.choice(["GET", "GET", "HEAD", "PUT", "PUT", "DELETE", "POST"])
        if method == "PUT":
            value = self.value()
            headers = b""
            if rng.random() < 0.4:
                headers += b"X-Kt-Mode: %s\r\n" % rng.choice([b"set", b"add", b"replace", b"bogus"])
            xt = self.xt()
            if xt is not None:
                headers += b"X-Kt-Xt: %s\r\n" % xt
            return (b"PUT %s HTTP/1.1\r\nHost: fuzz\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (target, headers, len(value), value), False, f"rest PUT {target!r} {_show([(b'', value)])}")
        return (b"%s %s HTTP/1.1\r\nHost: fuzz\r\n\r\n" % (method.encode(), target), method == "HEAD",
                f"rest {method} {target!r}")

    def _binary(self) -> Step:
        rng = self.rng
        op = rng.choice(["set", "set", "get", "get", "remove"] + (["script"] if self.lua else []))
        dbidx = lambda: rng.choice([0, 0, 0, 1, 9])  # noqa: E731
        noreply = rng.random() < 0.2
        flags = binary.FLAG_NOREPLY if noreply else 0
        count = rng.randrange(0, 5)
        if op == "set":
            records = [(dbidx(), self.key(), self.value(), rng.choice([binary.XT_NONE, binary.XT_NONE, -1, 100000]))
                       for _ in range(count)]
            return Step("binary", f"binary set_bulk {records!r:.300} noreply={noreply}",
                        binary.encode_set_bulk(records, flags), rng.randrange(3),
                        reply="" if noreply else "\xb8")
        if op == "remove":
            keys = [(dbidx(), self.key()) for _ in range(count)]
            return Step("binary", f"binary remove_bulk {keys!r} noreply={noreply}",
                        binary.encode_remove_bulk(keys, flags), rng.randrange(3), reply="" if noreply else "\xb9")
        if op == "get":
            keys = [(dbidx(), self.key()) for _ in range(count)]
            return Step("binary", f"binary get_bulk {keys!r}", binary.encode_get_bulk(keys), rng.randrange(3),
                        reply="\xba")
        name = rng.choice(LUA_PROCEDURES)
        records = [(b"key", self.key()), (b"value", self.value())][:rng.randrange(0, 3)]
        return Step("binary", f"binary play_script {name!r} {records!r:.200} noreply={noreply}",
                    binary.encode_play_script(name, records, flags), rng.randrange(3),
                    reply="" if noreply else "\xb4")

    def _memcache(self) -> Step:
        rng = self.rng
        key = rng.choice(_MEMC_KEYS)
        noreply = b" noreply" if rng.random() < 0.15 else b""
        cmd = rng.choice(["set", "set", "add", "replace", "get", "get", "gets", "delete", "incr", "decr", "stats",
                          "version", "flush_all", "bogus"])
        if cmd in ("set", "add", "replace"):
            value = self.value()[:200] if rng.random() < 0.8 else str(rng.randrange(100)).encode()
            exptime = rng.choice([b"0", b"0", b"100000", b"-1"])
            data = b"%s %s %d %s %d%s\r\n%s\r\n" % (cmd.encode(), key, rng.randrange(5), exptime, len(value),
                                                    noreply, value)
            return Step("memcache", f"memcache {data!r:.120}", data, reply="" if noreply else "line")
        if cmd in ("get", "gets"):
            keys = b" ".join(rng.choice(_MEMC_KEYS) for _ in range(rng.randrange(1, 4)))
            return Step("memcache", f"memcache {cmd} {keys!r}", b"%s %s\r\n" % (cmd.encode(), keys), reply="values")
        if cmd in ("incr", "decr"):
            data = b"%s %s %s%s\r\n" % (cmd.encode(), key, rng.choice([b"1", b"10", b"x", b"18446744073709551615"]),
                                        noreply)
        elif cmd == "delete":
            data = b"delete %s%s\r\n" % (key, noreply)
        elif cmd == "flush_all":
            data = b"flush_all%s\r\n" % noreply
        else:
            data = cmd.encode() + b"\r\n"
            noreply = b""
        return Step("memcache", f"memcache {data!r}", data, reply="stats" if cmd == "stats" else
                    "" if noreply else "line")

    def _raw(self) -> Step:
        """A malformed request on a throwaway connection (half-closed after it)."""
        rng = self.rng
        if rng.random() < 0.6:
            name, params = self.rpc_call()
            request, _ = self.encode_rpc(name, params)
        else:
            request, _, _ = self.rest_request()
        mutation = rng.choice(["truncate", "insert", "replace", "version", "method", "length", "junk", "chunked"])
        if mutation == "truncate":
            request = request[:rng.randrange(len(request))]
        elif mutation == "insert":
            at = rng.randrange(len(request) + 1)
            request = request[:at] + rng.choice([b"\r\n", b"\n", b" ", b"\t", b"\x00", rng.randbytes(3)]) + request[at:]
        elif mutation == "replace":
            at = rng.randrange(len(request))
            request = request[:at] + rng.randbytes(1) + request[at + 1:]
        elif mutation == "version":
            request = request.replace(b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]), 1)
        elif mutation == "method":
            request = rng.choice([b"PATCH", b"OPTIONS", b"get", b"POSTX"]) + request[request.index(b" "):]
        elif mutation == "length":
            request = request.replace(b"\r\n\r\n", b"\r\nContent-Length: %s\r\n\r\n"
                                      % rng.choice([b"5", b"-1", b"99999999999", b"x", b"0"]), 1)
        elif mutation == "chunked":
            request = (b"POST /rpc/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: "
                       b"text/tab-separated-values\r\n\r\n" + rng.choice([b"5\r\na\tb\n\r\n0\r\n\r\n", b"zz\r\n",
                                                                        b"3\r\nabc", b"2\r\na\tb\r\n0\r\n\r\n"]))
        else:
            request = bytes([rng.choice([0x00, 0xB8, 0xBA, 0xB9, 0xB4, 0xBB, 0x80])]) + rng.randbytes(
                rng.randrange(0, 30))
        return Step("raw", f"raw ({mutation}) {request!r:.200}", request)

    def _pause(self) -> Step:
        seconds = round(self.rng.uniform(*PAUSE), 2)
        return Step("pause", f"pause {seconds} s", seconds=seconds)

    def _block(self) -> Step:
        seconds = round(self.rng.uniform(*PAUSE), 2)
        return Step("block", f"a request waiting {seconds} s on a fresh connection",
                    b"GET /rpc/void?WAIT=fuzz&WAITTIME=%s HTTP/1.1\r\n\r\n" % str(seconds).encode(), seconds=seconds)

    def _repl(self) -> Step:
        rng = self.rng
        sid = rng.choice([2, 1, 65535])
        flags = FLAG_WHITESID if rng.random() < 0.3 else 0
        return Step("repl", f"replication from 0, sid {sid}, flags {flags}", encode_handshake(0, sid, flags))


def _show(params: list[tuple[bytes, bytes]]) -> str:
    text = " ".join(f"{k!r}={v!r}" if len(v) < 60 else f"{k!r}=<{len(v)} bytes>" for k, v in params)
    return text[:300]
