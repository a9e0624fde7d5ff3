"""Positions in a Kinesis shard: the one owner of how sequence numbers compare, sort and appear in object names.

Kinesis sequence numbers are decimal strings (56 digits on AWS, small integers on emulators). They compare as
integers, never as text; where a position becomes part of an S3 key it is zero-padded to ``SEQUENCE_DIGITS`` so
that keys sort in stream order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: The width every sequence number is padded to in object names (AWS sequence numbers have 56 digits).
SEQUENCE_DIGITS: Final = 56
_KEY_PART: Final = re.compile(r"(\d+)-(-?\d+)")


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """A position in a shard: Kinesis sequence number plus KPL sub-sequence number."""

    sequence_number: str
    sub_sequence_number: int = 0

    def sort_key(self) -> tuple[int, int]:
        return int(self.sequence_number), self.sub_sequence_number

    def key_part(self) -> str:
        """``<padded sequence>-<sub>`` (the form used in S3 keys). Keys sort in stream order by their sequence
        number only: the sub-sequence number is not padded (``-10`` sorts before ``-2``), see ``sequence_key_part``."""
        return f"{self.sequence_key_part()}-{self.sub_sequence_number}"

    def sequence_key_part(self) -> str:
        """The padded sequence number that starts ``key_part``: every key of this sequence number sorts after it."""
        return f"{int(self.sequence_number):0{SEQUENCE_DIGITS}d}"

    @classmethod
    def from_key_part(cls, text: str) -> Position:
        """The inverse of ``key_part``, also of ``BEFORE_FIRST_RECORD``'s (``<zeros>--1``: a negative sub-sequence)."""
        match = _KEY_PART.fullmatch(text)
        if match is None:
            raise ValueError(f"not a position key part: {text!r}")
        return cls(str(int(match.group(1))), int(match.group(2)))

    def __lt__(self, other: Position) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: Position) -> bool:
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: Position) -> bool:
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: Position) -> bool:
        return self.sort_key() >= other.sort_key()


#: Where a new child shard stands after a split or merge: before its first record, holding its parents' state.
BEFORE_FIRST_RECORD: Final = Position("0", -1)


def chain_position(position: Position | None) -> Position | None:
    """The commit-chain position of a state position: None (the chain's start) before the shard's first commit."""
    return None if position is None or position == BEFORE_FIRST_RECORD else position
