"""Regular expressions as Kyoto Cabinet reads them (POSIX, through glibc).

Shared by ``match_regex`` (:mod:`.storage`) and the Lua function ``kt.regex``
(:mod:`.scripting_lib`).  :class:`PosixRegex` is kc::Regex (kcregex.cc), which hands the
pattern to glibc's ``regcomp(REG_EXTENDED)`` in the C locale; the pattern is translated
into Python's :mod:`re` syntax with glibc's reading of it (see :func:`translate`).
Edit distance and UTF-8 decoding live in :mod:`ktcluster.protocol.kctext`.

Texts and patterns are C strings to Kyoto Cabinet: they end at their first NUL.
"""

from __future__ import annotations

import functools
import re

from ..protocol.kcnum import cstr

__all__ = ["RegexError", "PosixRegex", "compile_regex", "translate"]

#: glibc's RE_DUP_MAX: an interval bound above it does not compile.
RE_DUP_MAX = 0x7FFF


class RegexError(ValueError):
    """A pattern that glibc's regcomp refuses."""


# -- translation of a POSIX extended regular expression ----------------------------------------

#: the character classes of the C locale, as sets of bytes.
_CLASSES: dict[bytes, frozenset[int]] = {
    name: frozenset(c for c in range(256) if test(c)) for name, test in (
        (b"alpha", lambda c: bytes((c,)).isalpha()),
        (b"digit", lambda c: 0x30 <= c <= 0x39),
        (b"alnum", lambda c: bytes((c,)).isalnum()),
        (b"upper", lambda c: bytes((c,)).isupper()),
        (b"lower", lambda c: bytes((c,)).islower()),
        (b"space", lambda c: c in b" \t\n\r\f\v"),
        (b"blank", lambda c: c in b" \t"),
        (b"punct", lambda c: 0x21 <= c <= 0x7E and not bytes((c,)).isalnum()),
        (b"xdigit", lambda c: c in b"0123456789abcdefABCDEF"),
        (b"cntrl", lambda c: c < 0x20 or c == 0x7F),
        (b"print", lambda c: 0x20 <= c <= 0x7E),
        (b"graph", lambda c: 0x21 <= c <= 0x7E),
    )
}
_WORD = _CLASSES[b"alnum"] | {0x5F}
_ALL = frozenset(range(256))


def _byte_class(members: frozenset[int] | set[int]) -> bytes:
    """A Python character class matching exactly the bytes ``members``."""
    if not members:
        return rb"[^\x00-\xff]"
    parts = []
    values = sorted(members)
    start = prev = values[0]
    for c in values[1:] + [-1]:
        if c != prev + 1:
            parts.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
            start = c
        prev = c
    return b"[" + b"".join(parts) + b"]"


# pieces of a translated pattern: what a following repetition operator may apply to
_ATOM, _REPEATED, _ANCHOR, _BAR = range(4)

#: GNU backslash operators (glibc without RE_NO_GNU_OPS): translation and kind.
_GNU_OPERATORS = {
    ord("w"): (_byte_class(_WORD), _ATOM),
    ord("W"): (_byte_class(_ALL - _WORD), _ATOM),
    ord("s"): (_byte_class(_CLASSES[b"space"]), _ATOM),
    ord("S"): (_byte_class(_ALL - _CLASSES[b"space"]), _ATOM),
    ord("b"): (rb"\b", _ANCHOR),
    ord("B"): (rb"(?:(?<=\w)(?=\w)|(?<!\w)(?!\w))", _ANCHOR),   # true on an empty text too
    ord("<"): (rb"(?<!\w)(?=\w)", _ANCHOR),
    ord(">"): (rb"(?<=\w)(?!\w)", _ANCHOR),
    ord("`"): (rb"\A", _ANCHOR),
    ord("'"): (rb"\Z", _ANCHOR),
}
_INTERVAL = re.compile(rb"([0-9]*)(,([0-9]*))?")


def translate(regex: bytes, notbol: bool = False) -> bytes:
    """Python's spelling of a POSIX extended regular expression as glibc reads it
    (compile it with ``re.DOTALL``); :class:`RegexError` where regcomp fails.

    glibc's reading, where it differs from Python's: a repetition operator after a
    repeated atom repeats it again (``a*?`` is ``(a*)?``, greedy; ``a{2}{3}`` is
    ``a{6}``), and one with nothing to repeat (at the start, after ``(``, ``|`` or an
    anchor) is an error; ``{,n}`` means ``{0,n}``, bounds stop at 32767; ``$`` is
    the end of the text only; an unmatched ``)`` is a literal; ``(?`` is an error;
    ``\\1``-``\\9`` are back references, ``\\w \\W \\s \\S \\b \\B \\< \\> \\` \\'``
    GNU operators, any other escaped byte is literal; in a bracket expression a
    backslash is literal and ``[:class:]``, ``[.c.]``, ``[=c=]`` are understood, with
    the C locale's bytes and ranges.  ``notbol``: ``^`` never matches (REG_NOTBOL).

    What no translation gives: glibc picks the leftmost-*longest* match and POSIX's
    subexpression rules, Python the first match its backtracking finds.  Whether a
    text matches is the same, but where alternatives or optional parts could match
    in more than one way the extent of a match and its groups may differ (``a|ab``
    on "ab": glibc "ab", Python "a"), which shows in ``kt.regex`` replacements.
    """
    regex = cstr(regex)
    pieces: list[bytes] = []   # of the group being read
    kinds: list[int] = []
    enclosing: list[tuple[list[bytes], list[int], int]] = []
    opened = 0
    closed: set[int] = set()
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        i += 1
        if c == 0x28:    # (
            opened += 1
            enclosing.append((pieces, kinds, opened))
            pieces, kinds = [], []
            continue
        if c == 0x29 and enclosing:   # ) closing a group (an unmatched one is a literal)
            body = b"".join(pieces)
            pieces, kinds, number = enclosing.pop()
            closed.add(number)
            piece, kind = b"(" + body + b")", _ATOM
        elif c == 0x7C:  # |
            piece, kind = b"|", _BAR
        elif c in b"*+?":
            _repeat(pieces, kinds, bytes((c,)))
            continue
        elif c == 0x7B:  # {
            quantifier, i = _interval(regex, i)
            _repeat(pieces, kinds, quantifier)
            continue
        elif c == 0x5B:  # [
            members, i = _bracket(regex, i)
            piece, kind = _byte_class(members), _ATOM
        elif c == 0x5C:  # backslash
            if i >= n:
                raise RegexError("trailing backslash")
            c = regex[i]
            i += 1
            if 0x31 <= c <= 0x39:
                if c - 0x30 not in closed:
                    raise RegexError("back reference to a group not closed yet")
                piece, kind = b"(?:\\%c)" % c, _ATOM
            else:
                piece, kind = _GNU_OPERATORS.get(c) or (re.escape(bytes((c,))), _ATOM)
        elif c == 0x5E:  # ^
            piece, kind = (rb"(?!)" if notbol else rb"\A"), _ANCHOR
        elif c == 0x24:  # $
            piece, kind = rb"\Z", _ANCHOR
        elif c == 0x2E:  # .
            piece, kind = b".", _ATOM
        else:
            piece, kind = re.escape(bytes((c,))), _ATOM
        pieces.append(piece)
        kinds.append(kind)
    if enclosing:
        raise RegexError("unmatched (")
    return b"".join(pieces)


def _repeat(pieces: list[bytes], kinds: list[int], quantifier: bytes) -> None:
    """Apply a repetition operator to the last piece (again, if it is repeated already)."""
    if not kinds or kinds[-1] in (_ANCHOR, _BAR):
        raise RegexError("repetition operator without an operand")
    if kinds[-1] == _REPEATED:
        pieces[-1] = b"(?:" + pieces[-1] + b")"
    pieces[-1] += quantifier
    kinds[-1] = _REPEATED


def _interval(regex: bytes, i: int) -> tuple[bytes, int]:
    """The interval ``{...}`` whose body starts at ``i``: (Python quantifier, position after)."""
    end = regex.find(b"}", i)
    match = _INTERVAL.fullmatch(regex, i, end) if end >= 0 else None
    if match is None or not (match[1] or match[2]):
        raise RegexError("invalid interval")
    low = int(match[1] or 0)
    high = low if match[2] is None else int(match[3]) if match[3] else None
    if low > RE_DUP_MAX or (high is not None and (high > RE_DUP_MAX or high < low)):
        raise RegexError("invalid interval bounds")
    if high == low:
        return b"{%d}" % low, end + 1
    return (b"{%d,}" % low if high is None else b"{%d,%d}" % (low, high)), end + 1


def _bracket(regex: bytes, i: int) -> tuple[set[int], int]:
    """The bytes a bracket expression whose body starts at ``i`` matches, and the position
    after it (glibc parse_bracket_exp: a ``]`` first is literal, a ``-`` is literal first
    or last, ranges between characters or collating symbols only)."""
    n = len(regex)
    negate = regex[i:i + 1] == b"^"
    if negate:
        i += 1
    members: set[int] = set()
    first = True
    while True:
        if i >= n:
            raise RegexError("unterminated [")
        if regex[i] == 0x5D and not first:
            i += 1
            break
        start, start_set, i = _bracket_element(regex, i, first)
        first = False
        if start >= 0 and regex[i:i + 1] == b"-" and regex[i + 1:i + 2] not in (b"]", b""):
            end, _, i = _bracket_element(regex, i + 1, True)
            if end < 0 or start > end:
                raise RegexError("invalid range")
            members.update(range(start, end + 1))
        else:
            members |= start_set
    return (set(_ALL) - members if negate else members), i


def _bracket_element(regex: bytes, i: int, hyphen_ok: bool) -> tuple[int, frozenset[int], int]:
    """One element of a bracket expression at ``i``: (its byte, or -1 when it cannot end a
    range (a class or an equivalence class), the bytes it stands for, position after)."""
    c = regex[i]
    if c == 0x5B and regex[i + 1:i + 2] in (b":", b".", b"="):
        delim = regex[i + 1:i + 2]
        end = regex.find(delim + b"]", i + 2)
        if end < 0:
            raise RegexError("unterminated [")
        name = regex[i + 2:end]
        if delim == b":":
            if name not in _CLASSES:
                raise RegexError("unknown character class")
            return -1, _CLASSES[name], end + 2
        if len(name) != 1:
            raise RegexError("unknown collating element")
        return (name[0] if delim == b"." else -1), frozenset(name), end + 2
    if c == 0x2D and not hyphen_ok and regex[i + 1:i + 2] != b"]":
        raise RegexError("invalid range")
    return c, frozenset((c,)), i + 1


# -- compiled patterns -----------------------------------------------------------------------


class PosixRegex:
    """A pattern as kc::Regex uses it: :meth:`search` (``match``) and :meth:`replace`."""

    def __init__(self, regex: bytes) -> None:
        regex = cstr(regex)
        self._empty = not regex
        try:
            self._first = re.compile(translate(regex), re.DOTALL)
            # later matches of a replacement start at a fresh text with REG_NOTBOL
            self._later = re.compile(translate(regex, notbol=True), re.DOTALL) if b"^" in regex else self._first
        except (re.error, RecursionError, OverflowError) as exc:
            raise RegexError(str(exc)) from None

    def search(self, text: bytes) -> bool:
        """Whether the pattern matches somewhere in ``text``."""
        return self._first.search(cstr(text)) is not None

    def replace(self, text: bytes, alt: bytes) -> bytes:
        """kc::Regex::replace: every match from left to right replaced by ``alt``, in which
        ``$0``-``$9`` stand for the (sub)matches, ``$&`` for the match and ``$x`` for x.
        Each match after the first is searched for in the rest of the text on its own
        (so ``^`` no longer matches and ``\\``` does), as glibc's regexec sees it; an
        empty match at the start of the rest ends the replacement.  An empty pattern
        leaves the text alone."""
        text, alt = cstr(text), cstr(alt)
        if self._empty or self._first.search(text) is None:
            return text
        out = []
        pattern = self._first
        pos, n = 0, len(text)
        while pos < n:
            rest = text[pos:]
            match = pattern.search(rest)
            if match is None:
                break
            out.append(rest[:match.start()])
            out.append(_expand(alt, match))
            pos += match.end()
            if match.end() < 1:
                break
            pattern = self._later
        out.append(text[pos:])
        return b"".join(out)


def _expand(alt: bytes, match: re.Match[bytes]) -> bytes:
    """``alt`` with its ``$`` references to ``match`` filled in."""
    out = bytearray()
    groups = match.re.groups
    i, n = 0, len(alt)
    while i < n:
        c = alt[i]
        i += 1
        if c != 0x24:
            out.append(c)
        elif i < n:
            ref = alt[i]
            i += 1
            if 0x30 <= ref <= 0x39:
                if ref - 0x30 <= groups and match.group(ref - 0x30) is not None:
                    out += match.group(ref - 0x30)
            elif ref == 0x26:
                out += match.group(0)
            else:
                out.append(ref)
    return bytes(out)


@functools.lru_cache(maxsize=256)
def compile_regex(regex: bytes) -> PosixRegex:
    """A (cached) :class:`PosixRegex`; RegexError if glibc would not compile it."""
    return PosixRegex(regex)
