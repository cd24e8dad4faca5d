"""A sorted set of mutually comparable items (bytes keys or integer order keys).

The record stores keep their iteration order here: a B+-tree-like list of small sorted
blocks, so that inserting or removing one item costs O(log n) plus a memmove of at most
one block, whatever the size of the database.  Navigation is by value (the neighbours of
an item), which is all the cursors need: a cursor remembers the item it stands on.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Any

__all__ = ["SortedList"]

_LOAD = 512


class SortedList:
    """Sorted distinct items with neighbour queries."""

    __slots__ = ("_lists", "_maxes", "_len")

    def __init__(self) -> None:
        self._lists: list[list[Any]] = []   # blocks of at most 2 * _LOAD items
        self._maxes: list[Any] = []         # the last item of each block
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Any]:
        for block in self._lists:
            yield from block

    def clear(self) -> None:
        self._lists = []
        self._maxes = []
        self._len = 0

    def add(self, item: Any) -> None:
        """Insert an item that is not present yet."""
        maxes = self._maxes
        if not maxes:
            self._lists.append([item])
            maxes.append(item)
        else:
            pos = bisect_left(maxes, item)
            if pos == len(maxes):
                pos -= 1
                self._lists[pos].append(item)
                maxes[pos] = item
            else:
                insort(self._lists[pos], item)
            block = self._lists[pos]
            if len(block) > 2 * _LOAD:
                half = block[_LOAD:]
                del block[_LOAD:]
                maxes[pos] = block[-1]
                self._lists.insert(pos + 1, half)
                maxes.insert(pos + 1, half[-1])
        self._len += 1

    def discard(self, item: Any) -> None:
        """Remove an item if present."""
        maxes = self._maxes
        pos = bisect_left(maxes, item)
        if pos == len(maxes):
            return
        block = self._lists[pos]
        idx = bisect_left(block, item)
        if idx == len(block) or block[idx] != item:
            return
        del block[idx]
        self._len -= 1
        if not block:
            del self._lists[pos]
            del maxes[pos]
        else:
            maxes[pos] = block[-1]

    def first(self) -> Any:
        """The smallest item, or None."""
        return self._lists[0][0] if self._lists else None

    def last(self) -> Any:
        """The largest item, or None."""
        return self._maxes[-1] if self._maxes else None

    def ceiling(self, item: Any) -> Any:
        """The smallest item >= ``item``, or None."""
        maxes = self._maxes
        pos = bisect_left(maxes, item)
        if pos == len(maxes):
            return None
        block = self._lists[pos]
        return block[bisect_left(block, item)]

    def higher(self, item: Any) -> Any:
        """The smallest item > ``item``, or None."""
        maxes = self._maxes
        pos = bisect_right(maxes, item)
        if pos == len(maxes):
            return None
        block = self._lists[pos]
        return block[bisect_right(block, item)]

    def lower(self, item: Any) -> Any:
        """The largest item < ``item``, or None."""
        maxes = self._maxes
        pos = bisect_left(maxes, item)
        if pos == len(maxes):
            return maxes[-1] if maxes else None
        block = self._lists[pos]
        idx = bisect_left(block, item)
        if idx:
            return block[idx - 1]
        return maxes[pos - 1] if pos else None

    def irange(self, start: Any) -> Iterator[Any]:
        """Items >= ``start``, in order.  Do not mutate while iterating."""
        maxes = self._maxes
        pos = bisect_left(maxes, start)
        if pos == len(maxes):
            return
        block = self._lists[pos]
        yield from block[bisect_left(block, start):]
        for block in self._lists[pos + 1:]:
            yield from block
