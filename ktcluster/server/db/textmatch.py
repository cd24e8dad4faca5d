"""Regular expressions as Kyoto Cabinet reads them (POSIX, through glibc), matched in time
linear in the text.

Shared by ``match_regex`` (:mod:`.storage`) and the Lua function ``kt.regex``
(:mod:`ktcluster.server.scripting.lib`).  :class:`PosixRegex` is kc::Regex (kcregex.cc), which hands the
pattern to glibc's ``regcomp(REG_EXTENDED)`` in the C locale:

* :func:`parse` reads a pattern as glibc does, into a tree (its rules are in its doc);
  what glibc refuses raises :class:`RegexError`.
* **Whether a text matches, and which part**: a Thompson automaton of the tree, run as a
  deterministic automaton built lazily, one state per set of positions reached.  Each
  byte of the text costs one table look-up once its state exists, so no pattern makes a
  search slow (``^(a|a)*$`` included), and the match is glibc's leftmost-*longest* one
  (the longest match at the leftmost position where one starts, found by running the
  reversed pattern backwards, then the pattern forwards).
* **Back references and subexpressions** (``\\1``-``\\9`` in a pattern; ``$1``-``$9``
  in a replacement) are beyond an automaton: a backtracking matcher over the tree finds
  them, trying alternatives in order and repetitions greedily.  Only patterns with back
  references search with it; it can be slow on them, like glibc, but it is plain
  Python, so other requests are served meanwhile.  Its subexpressions may differ from
  glibc's POSIX rules (``(a|ab)(c|bcd)`` on "abcd"), the whole match never does.

Texts and patterns are C strings to Kyoto Cabinet: they end at their first NUL.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from typing import Any

from ...protocol.kcnum import cstr

__all__ = ["RegexError", "PosixRegex", "compile_regex", "parse"]

#: glibc's RE_DUP_MAX: an interval bound above it does not compile.
RE_DUP_MAX = 0x7FFF
#: the most automaton states a pattern may need (``a{32767}`` needs 32,767; nested
#: intervals multiply): a larger pattern is refused as if glibc had run out of memory
STATE_MAX = 1 << 18
#: deterministic states kept per automaton before the cache starts over
_DFA_MAX = 4096


class RegexError(ValueError):
    """A pattern that glibc's regcomp refuses."""


# -- the tree -----------------------------------------------------------------------------------
#
# A node is a tuple whose first item is its kind:
#   (SET, bytes)            one byte among those flagged in a 256-byte table
#   (CAT, [node...])        a sequence; (ALT, [node...]) alternatives, in order
#   (REP, node, min, max)   repetition, max -1 = unbounded
#   (GROUP, number, node)   a parenthesised subexpression
#   (ASSERT, test)          a zero-width test of the context (see _CONTEXT_TESTS)
#   (BACKREF, number)       what group ``number`` matched

SET, CAT, ALT, REP, GROUP, ASSERT, BACKREF = range(7)
Node = tuple[Any, ...]

# the context of a position: bits of these
_AT_START, _AT_END, _PREV_WORD, _NEXT_WORD = 1, 2, 4, 8

#: the zero-width tests: glibc's anchors and GNU operators, by the context they need
_CONTEXT_TESTS: dict[str, Callable[[int], bool]] = {
    "start": lambda c: bool(c & _AT_START),                     # ^ and \`
    "end": lambda c: bool(c & _AT_END),                         # $ and \'
    "never": lambda c: False,                                   # ^ under REG_NOTBOL
    "word-boundary": lambda c: bool(c & _PREV_WORD) != bool(c & _NEXT_WORD),   # \b
    "not-word-boundary": lambda c: bool(c & _PREV_WORD) == bool(c & _NEXT_WORD),   # \B
    "word-start": lambda c: not c & _PREV_WORD and bool(c & _NEXT_WORD),        # \<
    "word-end": lambda c: bool(c & _PREV_WORD) and not c & _NEXT_WORD,          # \>
}

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
#: whether each byte is a word character
_IS_WORD = bytes(c in _WORD for c in range(256))


def _set(members: frozenset[int] | set[int]) -> Node:
    return (SET, bytes(c in members for c in range(256)))


# pieces of a group being read: what a following repetition operator may apply to
_ATOM, _REPEATED, _ANCHOR, _BAR = range(4)

#: GNU backslash operators (glibc without RE_NO_GNU_OPS)
_GNU_OPERATORS: dict[int, tuple[Node, int]] = {
    ord("w"): (_set(_WORD), _ATOM),
    ord("W"): (_set(_ALL - _WORD), _ATOM),
    ord("s"): (_set(_CLASSES[b"space"]), _ATOM),
    ord("S"): (_set(_ALL - _CLASSES[b"space"]), _ATOM),
    ord("b"): ((ASSERT, "word-boundary"), _ANCHOR),
    ord("B"): ((ASSERT, "not-word-boundary"), _ANCHOR),
    ord("<"): ((ASSERT, "word-start"), _ANCHOR),
    ord(">"): ((ASSERT, "word-end"), _ANCHOR),
    ord("`"): ((ASSERT, "start"), _ANCHOR),
    ord("'"): ((ASSERT, "end"), _ANCHOR),
}
_INTERVAL = re.compile(rb"([0-9]*)(,([0-9]*))?")


def parse(regex: bytes, notbol: bool = False) -> tuple[Node, int]:
    """The tree of a POSIX extended regular expression as glibc reads it, and its number
    of groups; :class:`RegexError` where regcomp fails.

    glibc's reading, where it differs from other engines: a repetition operator after a
    repeated atom repeats it again (``a*?`` is ``(a*)?``, greedy; ``a{2}{3}`` is
    ``a{6}``), and one with nothing to repeat (at the start, after ``(``, ``|`` or an
    anchor) is an error; ``{,n}`` means ``{0,n}``, bounds stop at 32767; ``$`` is the
    end of the text only; an unmatched ``)`` is a literal; ``(?`` is an error;
    ``\\1``-``\\9`` are back references, ``\\w \\W \\s \\S \\b \\B \\< \\> \\` \\'``
    GNU operators, any other escaped byte is literal; in a bracket expression a
    backslash is literal and ``[:class:]``, ``[.c.]``, ``[=c=]`` are understood, with
    the C locale's bytes and ranges.  ``notbol``: ``^`` never matches (REG_NOTBOL).
    """
    regex = cstr(regex)
    pieces: list[Node] = []   # of the group being read
    kinds: list[int] = []
    enclosing: list[tuple[list[Node], list[int], int]] = []
    opened = 0
    closed: set[int] = set()
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        i += 1
        piece: Node
        if c == 0x28:    # (
            if regex[i:i + 1] == b"?":
                raise RegexError("invalid preceding regular expression")
            opened += 1
            enclosing.append((pieces, kinds, opened))
            pieces, kinds = [], []
            continue
        if c == 0x29 and enclosing:   # ) closing a group (an unmatched one is a literal)
            body = _alternatives(pieces, kinds)
            pieces, kinds, number = enclosing.pop()
            closed.add(number)
            piece, kind = (GROUP, number, body), _ATOM
        elif c == 0x7C:  # |
            piece, kind = (ALT, []), _BAR
        elif c in b"*+?":
            _repeat(pieces, kinds, (0, -1) if c == 0x2A else (1, -1) if c == 0x2B else (0, 1))
            continue
        elif c == 0x7B:  # {
            bounds, i = _interval(regex, i)
            _repeat(pieces, kinds, bounds)
            continue
        elif c == 0x5B:  # [
            members, i = _bracket(regex, i)
            piece, kind = _set(members), _ATOM
        elif c == 0x5C:  # backslash
            if i >= n:
                raise RegexError("trailing backslash")
            c = regex[i]
            i += 1
            if 0x31 <= c <= 0x39:
                if c - 0x30 not in closed:
                    raise RegexError("back reference to a group not closed yet")
                piece, kind = (BACKREF, c - 0x30), _ATOM
            else:
                piece, kind = _GNU_OPERATORS.get(c) or (_set({c}), _ATOM)
        elif c == 0x5E:  # ^
            piece, kind = (ASSERT, "never" if notbol else "start"), _ANCHOR
        elif c == 0x24:  # $
            piece, kind = (ASSERT, "end"), _ANCHOR
        elif c == 0x2E:  # .
            piece, kind = _set(_ALL), _ATOM
        else:
            piece, kind = _set({c}), _ATOM
        pieces.append(piece)
        kinds.append(kind)
    if enclosing:
        raise RegexError("unmatched (")
    return _alternatives(pieces, kinds), opened


def _alternatives(pieces: list[Node], kinds: list[int]) -> Node:
    """The node of a group's pieces: a sequence, or alternatives of sequences at ``|``."""
    branches: list[Node] = [(CAT, [])]
    for piece, kind in zip(pieces, kinds, strict=True):
        if kind == _BAR:
            branches.append((CAT, []))
        else:
            branches[-1][1].append(piece)
    return branches[0] if len(branches) == 1 else (ALT, branches)


def _repeat(pieces: list[Node], kinds: list[int], bounds: tuple[int, int]) -> None:
    """Apply a repetition operator to the last piece (again, if it is repeated already)."""
    if not kinds or kinds[-1] in (_ANCHOR, _BAR):
        raise RegexError("repetition operator without an operand")
    pieces[-1] = (REP, pieces[-1], bounds[0], bounds[1])
    kinds[-1] = _REPEATED


def _interval(regex: bytes, i: int) -> tuple[tuple[int, int], int]:
    """The interval ``{...}`` whose body starts at ``i``: ((min, max or -1), position after)."""
    end = regex.find(b"}", i)
    match = _INTERVAL.fullmatch(regex, i, end) if end >= 0 else None
    if match is None or not (match[1] or match[2]):
        raise RegexError("invalid interval")
    low = int(match[1] or 0)
    high = low if match[2] is None else int(match[3]) if match[3] else -1
    if low > RE_DUP_MAX or high > RE_DUP_MAX or (high != -1 and high < low):
        raise RegexError("invalid interval bounds")
    return (low, high), end + 1


def _bracket(regex: bytes, i: int) -> tuple[frozenset[int], int]:
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
    return (_ALL - members if negate else frozenset(members)), i


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


_MIRRORED_TESTS = {"start": "end", "end": "start", "word-start": "word-end", "word-end": "word-start"}


def _reversed(node: Node) -> Node:
    """The tree matching the reversed texts (read backwards, the start is the end and a
    word's start its end)."""
    kind = node[0]
    if kind == CAT:
        return (CAT, [_reversed(child) for child in reversed(node[1])])
    if kind == ALT:
        return (ALT, [_reversed(child) for child in node[1]])
    if kind == REP:
        return (REP, _reversed(node[1]), node[2], node[3])
    if kind == GROUP:
        return (GROUP, node[1], _reversed(node[2]))
    if kind == ASSERT:
        return (ASSERT, _MIRRORED_TESTS.get(node[1], node[1]))
    return node


def _has_backref(node: Node) -> bool:
    kind = node[0]
    if kind == BACKREF:
        return True
    if kind in (CAT, ALT):
        return any(_has_backref(child) for child in node[1])
    if kind == REP:
        return _has_backref(node[1])
    if kind == GROUP:
        return _has_backref(node[2])
    return False


def _context(text: bytes, pos: int) -> int:
    """The context bits of position ``pos`` of ``text``."""
    ctx = _AT_START if pos == 0 else (_PREV_WORD if _IS_WORD[text[pos - 1]] else 0)
    if pos == len(text):
        return ctx | _AT_END
    return ctx | (_NEXT_WORD if _IS_WORD[text[pos]] else 0)


# -- the program ----------------------------------------------------------------------------------

_BYTE, _SPLIT, _TEST, _MATCH, _SAVE, _BACKREF, _ENTER, _CHECK = range(8)


class _Program:
    """A tree compiled to a Thompson automaton, as instructions: ``_BYTE`` (consume a byte
    flagged in ``arg``), ``_SPLIT`` (go on at ``out``, or else at ``out2``: the order is
    the backtracking priority), ``_TEST`` (a zero-width test of the context), ``_MATCH``,
    ``_SAVE`` (record the position in capture slot ``arg``: group g's start is slot 2g,
    its end 2g+1, group 0 the whole match), ``_BACKREF`` (consume what group ``arg``
    matched), and ``_ENTER``/``_CHECK`` around the optional iterations of a repetition
    but its first (numbered ``arg``): the matchers of subexpressions refuse such an
    iteration if it consumed nothing, as glibc does (``(a*){1,2}`` on "aa" leaves
    ``$1`` = "aa", while ``()*\\1`` matches: its first iteration sets the group).  The
    automaton treats the last four as no-ops (refusing an empty iteration changes no
    match).  ``slots`` is the number of capture slots, ``loops`` of optional
    iterations."""

    def __init__(self, tree: Node, groups: int) -> None:
        if _size(tree) > STATE_MAX:
            raise RegexError("regular expression too big")
        self.ops: list[int] = []
        self.args: list[Any] = []
        self.outs: list[int] = []
        self.outs2: list[int] = []
        self.slots = 2 * (groups + 1)
        self.loops = 0
        end = self._add(_SAVE, 1, self._add(_MATCH))
        self.start = self._add(_SAVE, 0, self._compile(tree, end))

    def _add(self, op: int, arg: Any = None, out: int = -1, out2: int = -1) -> int:
        self.ops.append(op)
        self.args.append(arg)
        self.outs.append(out)
        self.outs2.append(out2)
        return len(self.ops) - 1

    def _new_loop(self) -> int:
        self.loops += 1
        return self.loops - 1

    def _compile(self, node: Node, after: int) -> int:
        """The instructions of ``node`` followed by ``after``: its first one (built from the
        end backwards)."""
        kind = node[0]
        if kind == SET:
            return self._add(_BYTE, node[1], after)
        if kind == CAT:
            for child in reversed(node[1]):
                after = self._compile(child, after)
            return after
        if kind == ALT:
            starts = [self._compile(child, after) for child in node[1]]
            state = starts[-1]
            for start in reversed(starts[:-1]):
                state = self._add(_SPLIT, None, start, state)
            return state
        if kind == GROUP:
            number = node[1]
            body = self._compile(node[2], self._add(_SAVE, 2 * number + 1, after))
            return self._add(_SAVE, 2 * number, body)
        if kind == ASSERT:
            return self._add(_TEST, _CONTEXT_TESTS[node[1]], after)
        if kind == BACKREF:
            return self._add(_BACKREF, node[1], after)
        # the optional iterations after the first one are refused if they consume nothing
        child, low, high = node[1], node[2], node[3]
        if high < 0:   # a loop
            loop = self._add(_SPLIT, None, -1, after)
            number = self._new_loop()
            body = self._compile(child, self._add(_CHECK, number, loop))
            self.outs[loop] = self._add(_ENTER, number, body)
            state = loop
            optional = 1 if low == 0 else 0   # an optional first iteration, before the loop
        else:
            state = after
            optional = high - low
        for copy in range(optional):   # the optional copies, the last first
            if copy == optional - 1 and low == 0:
                state = self._add(_SPLIT, None, self._compile(child, state), after)
            else:
                number = self._new_loop()
                body = self._compile(child, self._add(_CHECK, number, state))
                state = self._add(_SPLIT, None, self._add(_ENTER, number, body), after)
        for _ in range(low):
            state = self._compile(child, state)
        return state


def _size(node: Node) -> int:
    """About how many instructions ``node`` compiles to."""
    kind = node[0]
    if kind in (CAT, ALT):
        return sum(_size(child) for child in node[1]) + len(node[1])
    if kind == REP:
        return (_size(node[1]) + 3) * max(node[2], node[3] + 1, 2)
    if kind == GROUP:
        return _size(node[2]) + 2
    return 1


# -- the automaton: whether and where a pattern matches, in linear time ------------------------------

_DEAD = -1      # a transition to "no match can follow"
_UNKNOWN = -2   # a transition not computed yet


class _Cache:
    """The deterministic states built so far: ``ids`` (kernel, past context) -> id,
    ``states`` id -> (kernel, past), ``step[id][byte]`` the next state, ``accept[id][byte]``
    whether a match ends before that byte (256: before the end of the text)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[frozenset[int], int], int] = {}
        self.states: list[tuple[frozenset[int], int]] = []
        self.step: list[list[int]] = []
        self.accept: list[list[int]] = []
        self.lock = threading.Lock()


class _Automaton:
    """A :class:`_Program` without back references run as a lazily built deterministic
    automaton.

    A deterministic state is the set of instructions reached after some byte (its
    *kernel*) plus what the next position's context needs from the past: whether that
    byte was a word character, or whether there was none (the start).  A searching
    automaton adds the program's start at every position (a match may begin anywhere);
    an anchored one only at the first.  The cache is shared by the threads; once it
    holds _DFA_MAX states, later runs start a new one.
    """

    def __init__(self, program: _Program, search: bool) -> None:
        self._program = program
        self._search = search
        self._cache = _Cache()

    def _state(self, cache: _Cache, kernel: frozenset[int], ctx: int) -> int:
        """The id of the state of ``kernel`` seen from a position with context ``ctx``
        (only its start and previous-byte bits matter)."""
        key = (kernel, ctx & (_AT_START | _PREV_WORD))
        with cache.lock:
            found = cache.ids.get(key)
            if found is not None:
                return found
            sid = cache.ids[key] = len(cache.states)
            cache.states.append(key)
            cache.step.append([_UNKNOWN] * 256)
            cache.accept.append([_UNKNOWN] * 257)
        if sid >= _DFA_MAX and self._cache is cache:
            self._cache = _Cache()
        return sid

    def _advance(self, cache: _Cache, sid: int, byte: int) -> tuple[int, bool]:
        """Compute and remember the move of state ``sid`` over ``byte`` (256: the end of
        the text): (the next state or _DEAD, whether a match ends before the byte)."""
        kernel, past = cache.states[sid]
        ctx = past | (_AT_END if byte == 256 else _NEXT_WORD if _IS_WORD[byte] else 0)
        matched, consuming = self._closure(kernel, ctx)
        cache.accept[sid][byte] = matched
        if byte == 256:
            return _DEAD, matched
        program = self._program
        args, outs = program.args, program.outs
        nxt = frozenset(outs[s] for s in consuming if args[s][byte])
        target = self._state(cache, nxt, _PREV_WORD if _IS_WORD[byte] else 0) if nxt or self._search else _DEAD
        cache.step[sid][byte] = target
        return target, matched

    def _closure(self, kernel: frozenset[int], ctx: int) -> tuple[bool, list[int]]:
        """(whether the match is reached, the byte-consuming instructions reached) from
        ``kernel`` (plus the start when searching) without consuming a byte."""
        program = self._program
        ops, args, outs, outs2 = program.ops, program.args, program.outs, program.outs2
        stack = list(kernel)
        if self._search:
            stack.append(program.start)
        seen: set[int] = set()
        consuming: list[int] = []
        matched = False
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            op = ops[s]
            if op == _BYTE:
                consuming.append(s)
            elif op == _SPLIT:
                stack.append(outs2[s])
                stack.append(outs[s])
            elif op == _TEST:
                if args[s](ctx):
                    stack.append(outs[s])
            elif op == _MATCH:
                matched = True
            else:
                stack.append(outs[s])
        return matched, consuming

    def _initial(self, cache: _Cache, text: bytes, pos: int) -> int:
        kernel = frozenset() if self._search else frozenset((self._program.start,))
        return self._state(cache, kernel, _context(text, pos))

    def matches(self, text: bytes) -> bool:
        """Whether a match ends anywhere in ``text`` (a searching automaton)."""
        return self.last_end(text, 0, first=True) >= 0

    def last_end(self, text: bytes, start: int, first: bool = False) -> int:
        """Reading ``text`` from ``start``, the last position where a match ends (the
        first one if ``first``), or -1."""
        cache = self._cache
        step, accept = cache.step, cache.accept
        sid = self._initial(cache, text, start)
        last = -1
        matched: int
        for pos in range(start, len(text)):
            byte = text[pos]
            nxt = step[sid][byte]
            if nxt == _UNKNOWN:
                nxt, matched = self._advance(cache, sid, byte)
            else:
                matched = accept[sid][byte]
            if matched:
                if first:
                    return pos
                last = pos
            if nxt == _DEAD:
                return last
            sid = nxt
        matched = accept[sid][256]
        if self._advance(cache, sid, 256)[1] if matched == _UNKNOWN else matched:
            last = len(text)
        return last


# -- subexpressions and back references ----------------------------------------------------------

Captures = tuple[int, ...]


def _captures(program: _Program, text: bytes, start: int, end: int) -> Captures | None:
    """The capture slots of the match of ``text[start:end]`` the backtracking order finds
    first (a Pike machine: every thread at once, in priority order, so linear in the
    text; for programs without back references)."""
    ops, args, outs = program.ops, program.args, program.outs
    threads = _follow(program, text, start, [(program.start, (-1,) * (program.slots + program.loops))])
    for pos in range(start, end):
        byte = text[pos]
        moved = [(outs[pc], caps) for pc, caps in threads if ops[pc] == _BYTE and args[pc][byte]]
        if not moved:
            return None
        threads = _follow(program, text, pos + 1, moved)
    for pc, caps in threads:
        if ops[pc] == _MATCH:
            return caps[:program.slots]
    return None


Threads = list[tuple[int, Captures]]


def _follow(program: _Program, text: bytes, pos: int, threads: Threads) -> Threads:
    """The threads of ``threads`` (in priority order) followed through the instructions
    that consume nothing, up to a byte or the match; a later thread reaching an
    instruction already reached is dropped (but at a ``_CHECK``, whose outcome is the
    thread's own: a thread's captures end with the start of each optional iteration)."""
    ops, args, outs, outs2 = program.ops, program.args, program.outs, program.outs2
    base = program.slots
    ctx = _context(text, pos)
    out: Threads = []
    seen: set[int] = set()
    for thread in threads:
        stack = [thread]
        while stack:
            pc, caps = stack.pop()
            op = ops[pc]
            if op == _CHECK:
                if caps[base + args[pc]] != pos:
                    stack.append((outs[pc], caps))
                continue
            if pc in seen:
                continue
            seen.add(pc)
            if op == _BYTE or op == _MATCH:
                out.append((pc, caps))
            elif op == _SPLIT:
                stack.append((outs2[pc], caps))
                stack.append((outs[pc], caps))
            elif op == _TEST:
                if args[pc](ctx):
                    stack.append((outs[pc], caps))
            elif op == _SAVE or op == _ENTER:
                slot = args[pc] if op == _SAVE else base + args[pc]
                stack.append((outs[pc], caps[:slot] + (pos,) + caps[slot + 1:]))
            else:
                stack.append((outs[pc], caps))
    return out


def _backtrack(program: _Program, text: bytes, start: int) -> Captures | None:
    """The first match starting at ``start`` in backtracking order (alternatives in order,
    repetitions greedy, an iteration that consumes nothing refused): its capture slots.
    Back references need it; it can take exponential time, in plain Python."""
    ops, args, outs, outs2 = program.ops, program.args, program.outs, program.outs2
    n = len(text)
    stack: list[tuple[int, int, Captures, Captures]] = [(program.start, start, (-1,) * program.slots,
                                                         (-1,) * program.loops)]
    while stack:
        pc, pos, caps, loops = stack.pop()
        while True:
            op = ops[pc]
            if op == _BYTE:
                if pos >= n or not args[pc][text[pos]]:
                    break
                pos += 1
            elif op == _SPLIT:
                stack.append((outs2[pc], pos, caps, loops))
            elif op == _TEST:
                if not args[pc](_context(text, pos)):
                    break
            elif op == _SAVE:
                slot = args[pc]
                caps = caps[:slot] + (pos,) + caps[slot + 1:]
            elif op == _BACKREF:
                begin, end = caps[2 * args[pc]], caps[2 * args[pc] + 1]
                if begin < 0 or end < 0 or not text.startswith(text[begin:end], pos):
                    break
                pos += end - begin
            elif op == _ENTER:
                loop = args[pc]
                loops = loops[:loop] + (pos,) + loops[loop + 1:]
            elif op == _CHECK:
                if loops[args[pc]] == pos:
                    break
            else:
                return caps
            pc = outs[pc]
    return None


# -- compiled patterns -----------------------------------------------------------------------------


class PosixRegex:
    """A pattern as kc::Regex uses it: :meth:`search` (``match``) and :meth:`replace`."""

    def __init__(self, regex: bytes) -> None:
        regex = cstr(regex)
        self._empty = not regex
        tree, groups = parse(regex)
        self._backrefs = _has_backref(tree)
        self._program = _Program(tree, groups)
        # the matches of a replacement after the first are searched for with REG_NOTBOL
        self._trees = {id(self._program): tree}
        self._later_program = self._program
        if b"^" in regex:
            later = parse(regex, notbol=True)[0]
            self._later_program = _Program(later, groups)
            self._trees[id(self._later_program)] = later
        self._searcher = _Automaton(self._program, search=True)
        self._finders: dict[int, tuple[_Automaton, _Automaton]] = {}

    def search(self, text: bytes) -> bool:
        """Whether the pattern matches somewhere in ``text``."""
        text = cstr(text)
        if self._backrefs:
            return self._first_match(self._program, text) is not None
        return self._searcher.matches(text)

    def replace(self, text: bytes, alt: bytes) -> bytes:
        """kc::Regex::replace: every match from left to right replaced by ``alt``, in which
        ``$0``-``$9`` stand for the (sub)matches, ``$&`` for the match and ``$x`` for x.
        Each match after the first is searched for in the rest of the text on its own
        (so ``^`` no longer matches and ``\\``` does), as glibc's regexec sees it; an
        empty match at the start of the rest ends the replacement.  An empty pattern
        leaves the text alone."""
        text, alt = cstr(text), cstr(alt)
        if self._empty or not self.search(text):
            return text
        out = []
        program = self._program
        pos, n = 0, len(text)
        while pos < n:
            rest = text[pos:]
            caps = self._first_match(program, rest, groups=b"$" in alt)
            if caps is None:
                break
            out.append(rest[:caps[0]])
            out.append(_expand(alt, rest, caps))
            pos += caps[1]
            if caps[1] < 1:
                break
            program = self._later_program
        out.append(text[pos:])
        return b"".join(out)

    def _first_match(self, program: _Program, text: bytes, groups: bool = True) -> Captures | None:
        """The capture slots of the first match in ``text``: glibc's leftmost-longest match
        and the subexpressions of the backtracking order within it (only the whole
        match unless ``groups``); with back references, the backtracking order's match
        at the leftmost position where one starts."""
        if self._backrefs:
            for start in range(len(text) + 1):
                caps = _backtrack(program, text, start)
                if caps is not None:
                    return caps
            return None
        finders = self._finders.get(id(program))
        if finders is None:   # built on first need: a search needs neither
            reversed_program = _Program(_reversed(self._trees[id(program)]), program.slots // 2 - 1)
            finders = self._finders[id(program)] = (_Automaton(program, search=False),
                                                    _Automaton(reversed_program, search=True))
        forward, backward = finders
        reach = backward.last_end(text[::-1], 0)
        if reach < 0:
            return None
        start = len(text) - reach
        end = forward.last_end(text, start)
        if groups:
            caps = _captures(program, text, start, end)
            if caps is not None:
                return caps
        return (start, end) + (-1,) * (program.slots - 2)


def _expand(alt: bytes, text: bytes, caps: Captures) -> bytes:
    """``alt`` with its ``$`` references to the match (capture slots ``caps`` of
    ``text``) filled in."""
    out = bytearray()
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
                slot = 2 * (ref - 0x30)
                if slot < len(caps) and caps[slot] >= 0 and caps[slot + 1] >= 0:
                    out += text[caps[slot]:caps[slot + 1]]
            elif ref == 0x26:
                out += text[caps[0]:caps[1]]
            else:
                out.append(ref)
    return bytes(out)


@functools.lru_cache(maxsize=256)
def compile_regex(regex: bytes) -> PosixRegex:
    """A (cached) :class:`PosixRegex`; RegexError if glibc would not compile it."""
    return PosixRegex(regex)
