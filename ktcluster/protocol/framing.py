"""The framing signal every decoder of the protocol package shares.

A decoder handed the bytes received so far either returns its message (and how many
bytes it used) or raises :class:`Incomplete` with the total length it needs at least
before it can say more.  The reader (a client connection, the embedded server) then
receives until it has that many bytes and calls the decoder again from the first
byte: a decoder never keeps state between calls, never consumes a partial message,
and never asks for more than what the bytes so far declare.
"""

from __future__ import annotations

__all__ = ["Incomplete"]


class Incomplete(Exception):
    """The buffer ends inside a frame; ``needed`` is the minimal total length."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed
