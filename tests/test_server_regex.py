"""POSIX extended regular expressions as ktserver reads them (glibc's regcomp with
REG_EXTENDED, C locale): RPC ``match_regex`` and the Lua ``kt.regex`` (match and
replace), for a table of patterns whose answers were recorded from ktserver, glibc's
leftmost-longest matches included.  Runs against the embedded server or $KT_SERVER_BIN.
"""

from __future__ import annotations

import os

import pytest
from server_wire import Wire

from ktcluster.testing import KTServer

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "regex.lua")

KEYS = [b"", b"a", b"aa", b"aaa", b"ab", b"b", b"ba\n", b"a)", b"-", b"]", b"x y", b"(("]
ALL = sorted(KEYS)

#: (pattern, text, alt, kt.regex(text, pattern, alt), kt.regex(text, pattern), the keys
#: match_regex finds among KEYS or None for "compilation failed"), recorded from ktserver
CASES = [
    (b'a*?', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a+?', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a??', b'aaa', b'<$0>', b'<a><a><a>', True, ALL),
    (b'a{1,2}?', b'aaa', b'<$0>', b'<aa><a>', True, ALL),
    (b'a**', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a*+', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a+*', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a?*', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a{2}{1}', b'aaa', b'<$0>', b'<aa>a', True, [b'aa', b'aaa']),
    (b'a{1,2}{3}', b'aaaaaaa', b'<$0>', b'<aaaaaa>a', True, [b'aaa']),
    (b'x{2}*', b'xxxxx', b'<$0>', b'<xxxx><>x', True, ALL),
    (b'(a)*?', b'aaa', b'<$0>', b'<aaa>', True, ALL),
    (b'a{,2}', b'aaa', b'<$0>', b'<aa><a>', True, ALL),
    (b'a{,}', b'aa', b'<$0>', b'<aa>', True, ALL),
    (b'a{0}', b'aa', b'<$0>', b'<>aa', True, ALL),
    (b'a{32767}', b'a', b'<$0>', b'a', False, []),
    (b'a{32768}', b'a', b'<$0>', b'a', False, None),
    (b'a{1,32768}', b'a', b'<$0>', b'a', False, None),
    (b'a{99999999999}', b'a', b'<$0>', b'a', False, None),
    (b'a{2,1}', b'aa', b'<$0>', b'aa', False, None),
    (b'a{}', b'a{}', b'<$0>', b'a{}', False, None),
    (b'a{ 1}', b'a', b'<$0>', b'a', False, None),
    (b'a{x}', b'a{x}', b'<$0>', b'a{x}', False, None),
    (b'{1}a', b'a', b'<$0>', b'a', False, None),
    (b'*a', b'a', b'<$0>', b'a', False, None),
    (b'(*a)', b'a', b'<$0>', b'a', False, None),
    (b'a|*b', b'b', b'<$0>', b'b', False, None),
    (b'^*a', b'a', b'<$0>', b'a', False, None),
    (b'\\b*', b'a', b'<$0>', b'a', False, None),
    (b'(?:a)', b'a', b'<$0>', b'a', False, None),
    (b'(?i)a', b'a', b'<$0>', b'a', False, None),
    (b'a$', b'ba\n', b'<$0>', b'ba\n', False, [b'a', b'aa', b'aaa']),
    (b'a$', b'ba', b'<$0>', b'b<a>', True, [b'a', b'aa', b'aaa']),
    (b'^a', b'aaa', b'<$0>', b'<a>aa', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b'(^a)', b'aa', b'<$0>', b'<a>a', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b'\\`a', b'aa', b'<$0>', b'<a><a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b"a\\'", b'aa', b'<$0>', b'a<a>', True, [b'a', b'aa', b'aaa']),
    (b'\\<a', b'aa', b'<$0>', b'<a><a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b'\\<a', b'ba a', b'<$0>', b'ba <a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b'a\\>', b'ab a', b'<$0>', b'ab <a>', True, [b'a', b'a)', b'aa', b'aaa', b'ba\n']),
    (b'\\>', b'ab', b'<$0>', b'ab<>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'b', b'ba\n', b'x y']),
    (b'\\ba', b'aa', b'<$0>', b'<a><a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab']),
    (b'\\B', b'', b'<$0>', b'', True, [b'', b'((', b'-', b']', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'\\Ba', b'ba a', b'<$0>', b'b<a> a', True, [b'aa', b'aaa', b'ba\n']),
    (b'$', b'ab', b'<$0>', b'ab<>', True, ALL),
    (b'(a)\\1', b'xaay', b'<$0>', b'x<aa>y', True, [b'aa', b'aaa']),
    (b'(a)\\1*', b'aaaa', b'<$0>', b'<aaaa>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'(a)\\2', b'aa', b'<$0>', b'aa', False, None),
    (b'(a\\1)', b'aa', b'<$0>', b'aa', False, None),
    (b'\\0', b'0', b'<$0>', b'<0>', True, []),
    (b'a)', b'a)b', b'<$0>', b'<a)>b', True, [b'a)']),
    (b'a|b)', b'b)', b'<$0>', b'<b)>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'()', b'ab', b'<$0>', b'<>ab', True, ALL),
    (b'(ab){2}', b'ababab', b'<$0>', b'<abab>ab', True, []),
    (b'(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)', b'abcdefghij', b'$9$10', b'ia0', True, []),
    (b'\\(*', b'((', b'<$0>', b'<((>', True, ALL),
    (b'[[.a.]]', b'a', b'<$0>', b'<a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'[[=a=]]', b'a', b'<$0>', b'<a>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'[[.-.]]', b'-', b'<$0>', b'<->', True, [b'-']),
    (b'[[.].]]', b']', b'<$0>', b'<]>', True, [b']']),
    (b'[[.hyphen.]]', b'-', b'<$0>', b'-', False, None),
    (b'[[=ab=]]', b'a', b'<$0>', b'a', False, None),
    (b'[a-[.z.]]', b'q', b'<$0>', b'<q>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'b', b'ba\n', b'x y']),
    (b'[[:alpha:]]+', b'12ab3', b'<$0>', b'12<ab>3', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'b', b'ba\n', b'x y']),
    (b'[[:word:]]', b'a', b'<$0>', b'a', False, None),
    (b'[[:alpha:]-z]', b'-', b'<$0>', b'-', False, None),
    (b'[[=a=]-z]', b'q', b'<$0>', b'q', False, None),
    (b'[]a]+', b']a]', b'<$0>', b'<]a]>', True, [b']', b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'[^]a]+', b']xa', b'<$0>', b']<x>a', True, [b'((', b'-', b'a)', b'ab', b'b', b'ba\n', b'x y']),
    (b'[a-c-e]', b'-', b'<$0>', b'-', False, None),
    (b'[--a]', b'-a', b'<$0>', b'<-><a>', True, [b'-', b']', b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'[a--]', b'-', b'<$0>', b'-', False, None),
    (b'[!--]', b'#', b'<$0>', b'<#>', True, [b'((', b'-', b'a)']),
    (b'[\\d]', b'\\d', b'<$0>', b'<\\><d>', True, []),
    (b'[]', b']', b'<$0>', b']', False, None),
    (b'[[:alpha:]', b'a', b'<$0>', b'a', False, None),
    (b'[^a]', b'a\nb', b'<$0>', b'a<\n><b>', True, [b'((', b'-', b']', b'a)', b'ab', b'b', b'ba\n', b'x y']),
    (b'\\d', b'd1', b'<$0>', b'<d>1', True, []),
    (b'\\w+', b'ab_1 x', b'<$0>', b'<ab_1> <x>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'b', b'ba\n', b'x y']),
    (b'\\W+', b'a  b', b'<$0>', b'a<  >b', True, [b'((', b'-', b']', b'a)', b'ba\n', b'x y']),
    (b'\\s', b'a b', b'<$0>', b'a< >b', True, [b'ba\n', b'x y']),
    (b'a\\', b'a', b'<$0>', b'a', False, None),
    (b'.', b'a\nb', b'<$0>', b'<a><\n><b>', True, ALL[1:]),
    (b'(o)', b'hello world', b'[$1$&$$]', b'hell[oo$] w[oo$]rld', True, []),
    (b'x*', b'abc', b'-', b'-abc', True, ALL),
    (b'', b'abc', b'-', b'abc', True, ALL),
    # an optional iteration that would match nothing is not taken: $1 keeps what came before
    (b'(a*){1,2}', b'aabd', b'[$1|$2]', b'[aa|][|]bd', True, ALL),
    (b'(b|){1,2}', b'b d', b'[$1|$2]', b'[b|][|] d', True, ALL),
    (b'(a*){1,2}[ab]+', b'ab dc bd ', b'[$1|$2]', b'[a|] dc [|]d ', True,
     [b'a', b'a)', b'aa', b'aaa', b'ab', b'b', b'ba\n']),
    # a repetition's first iteration may match nothing, and then sets its groups
    (b'()*\\1', b'ab', b'<$0>', b'<>ab', True, ALL),
    (b'(a|())*\\2', b'xa', b'[$1|$2]', b'[|]xa', True, ALL),
    (b'(a)?\\1b', b'b', b'<$0>', b'b', False, []),
    # glibc's match is the leftmost-longest one
    (b'a||b', b'b', b'<$0>', b'<b>', True, ALL),
    (b'(a|ab)c?', b'abc', b'<$0>', b'<abc>', True, [b'a', b'a)', b'aa', b'aaa', b'ab', b'ba\n']),
    (b'(a*)*', b'aa', b'[$1]', b'[aa]', True, ALL),
]


@pytest.fixture(scope="module")
def wire():
    with KTServer(":", args=["-scr", SCRIPT]) as srv, Wire(srv.host, srv.port) as conn:
        for key in KEYS:
            assert conn.set(key, b"") == 200
        yield conn


def kt_regex(wire: Wire, text: bytes, pattern: bytes, alt: bytes | None = None) -> bytes:
    fields = [(b"name", b"regex"), (b"_text", text), (b"_pattern", pattern)]
    if alt is not None:
        fields.append((b"_alt", alt))
    status, out = wire.rpc("play_script", fields)
    assert status == 200
    return out[b"_result"]


def match_regex(wire: Wire, pattern: bytes) -> list[bytes] | None:
    status, out = wire.rpc("match_regex", [(b"regex", pattern)])
    if status == 450:
        assert out[b"ERROR"] == b"DB: 8: logical inconsistency: compilation failed"
        return None
    assert status == 200
    return sorted(key[1:] for key in out if key[:1] == b"_")


def check(wire: Wire, case: tuple) -> None:
    pattern, text, alt, replaced, matches, keys = case
    assert kt_regex(wire, text, pattern, alt) == replaced
    assert kt_regex(wire, text, pattern) == (b"true" if matches else b"false")
    assert match_regex(wire, pattern) == keys


@pytest.mark.parametrize("case", CASES, ids=[repr(case[0])[2:-1] for case in CASES])
def test_pattern(wire, case):
    check(wire, case)
