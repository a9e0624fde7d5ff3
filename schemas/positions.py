"""Positions in a Kinesis shard: the one owner of how sequence numbers compare, sort and appear in object names,
for one position and for the columns of a record batch (``RAW_RECORD_SCHEMA``, ``EVENTS_SCHEMA``).

Kinesis sequence numbers are decimal strings (56 digits on AWS, small integers on emulators). They compare as
integers, never as text; where a position becomes part of an S3 key it is zero-padded to ``SEQUENCE_DIGITS`` so
that keys sort in stream order.

pyarrow is imported by the functions over a batch's columns, when first called: commands that only name positions
(``clickstream health``, which the container runs every 30 seconds) do not pay for loading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pyarrow as pa

#: The width every sequence number is padded to in object names (AWS sequence numbers have 56 digits).
SEQUENCE_DIGITS: Final = 56
_KEY_PART: Final = re.compile(r"(\d+)-(-?\d+)")
_INT64_DIGITS: Final = 18  # any decimal of at most this many digits fits an int64


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


def checkpoint_position(checkpoint: str | None, sub_sequence_number: int = 0) -> Position | None:
    """A KCL checkpoint as a stream position; None for the KCL's named ones (TRIM_HORIZON, LATEST, AT_TIMESTAMP,
    SHARD_END), which are no record's."""
    if checkpoint is None or not checkpoint.isdigit():
        return None
    return Position(checkpoint, sub_sequence_number)


def chain_position(position: Position | None) -> Position | None:
    """The commit-chain position of a state position: None (the chain's start) before the shard's first commit."""
    return None if position is None or position == BEFORE_FIRST_RECORD else position


# ------------------------------------------------------------------ positions of a record batch's rows
def _key_width(sequences: pa.Array | pa.ChunkedArray, *positions: Position | None) -> int:
    """The width sequence numbers are padded to so that their keys compare as text like integers."""
    import pyarrow.compute as pc

    longest = int(pc.max(pc.utf8_length(sequences)).as_py() or 0) if len(sequences) else 0
    stored = [len(p.sequence_number) for p in positions if p is not None]
    return max(SEQUENCE_DIGITS, longest, *stored)


def _position_keys(
    sequences: pa.Array | pa.ChunkedArray, subs: pa.Array | pa.ChunkedArray, width: int
) -> pa.Array:
    """Text keys that sort like (sequence number, sub-sequence number) compared as integers (subs are >= 0)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas.columns import contiguous

    if isinstance(sequences, pa.ChunkedArray):
        sequences = contiguous(sequences)
    if isinstance(subs, pa.ChunkedArray):
        subs = contiguous(subs)
    padded = pc.utf8_lpad(sequences, width, "0")
    sub_text = pc.utf8_lpad(pc.cast(subs, pa.string()), 20, "0")
    joined: pa.Array = pc.binary_join_element_wise(padded, sub_text, "/")
    return joined


def _position_key(position: Position, width: int) -> str:
    """The key of a stored position; sub-sequence -1 ("before the first record") sorts below every record."""
    sequence = position.sequence_number.rjust(width, "0")
    sub = str(position.sub_sequence_number).rjust(20, "0") if position.sub_sequence_number >= 0 else "-"
    return f"{sequence}/{sub}"


def _is_increasing(keys: pa.Array) -> bool:
    import pyarrow.compute as pc

    if len(keys) < 2:
        return True
    return bool(pc.all(pc.less(keys[:-1], keys[1:])).as_py())


def position_at(table: pa.Table, row: int) -> Position:
    """The position of one row of a record batch."""
    return Position(
        str(table.column("sequence_number")[row].as_py()),
        int(table.column("sub_sequence_number")[row].as_py()),
    )


def positions_increase(table: pa.Table) -> bool:
    """Whether the rows' (sequence number, sub-sequence number) strictly increase, compared as integers.

    The usual cases are checked without building keys: sequence numbers of one length and without leading zeros
    (every Kinesis shard's) compare as text like their numbers, and short ones (emulators) as int64. Anything
    else is decided on the padded keys.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas.columns import contiguous

    if table.num_rows < 2:
        return True
    sequences = contiguous(table.column("sequence_number"))
    subs = contiguous(table.column("sub_sequence_number"))
    lengths = pc.utf8_length(sequences)
    shortest, longest = (value.as_py() for value in pc.min_max(lengths).values())
    by_keys = False
    # small sequence numbers (emulators, tests): compared as the integers they are
    if longest <= _INT64_DIGITS:
        try:
            sequences = pc.cast(sequences, pa.int64())
        except pa.ArrowInvalid:  # not decimal digits
            by_keys = True
    else:
        by_keys = shortest != longest or pc.any(pc.starts_with(sequences, "0")).as_py()
    if by_keys:
        width = _key_width(table.column("sequence_number"))
        return _is_increasing(_position_keys(table.column("sequence_number"), subs, width))
    before, after = sequences[:-1], sequences[1:]
    increasing = pc.or_(
        pc.less(before, after), pc.and_(pc.equal(before, after), pc.less(subs[:-1], subs[1:]))
    )
    return bool(pc.all(increasing).as_py())


def in_position_order(table: pa.Table) -> pa.Table:
    """``table``'s rows sorted by position (as they are, in the usual case that they already are)."""
    return table if positions_increase(table) else sorted_by_position(table)


def sorted_by_position(table: pa.Table) -> pa.Table:
    """``table``'s rows sorted by position."""
    import pyarrow.compute as pc

    if table.num_rows < 2:
        return table
    width = _key_width(table.column("sequence_number"))
    keys = _position_keys(table.column("sequence_number"), table.column("sub_sequence_number"), width)
    return table.take(pc.sort_indices(keys))


def records_after(table: pa.Table, position: Position) -> pa.Table:
    """The rows above ``position``, in their order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    width = _key_width(table.column("sequence_number"), position)
    keys = _position_keys(table.column("sequence_number"), table.column("sub_sequence_number"), width)
    return table.filter(pc.greater(keys, pa.scalar(_position_key(position, width))))


def position_range(sequences: pa.ChunkedArray, subs: pa.ChunkedArray) -> tuple[Position, Position]:
    """The least and the greatest (sequence number, sub-sequence number) of a batch's columns, in any order."""
    return _extreme_position(sequences, subs, "min"), _extreme_position(sequences, subs, "max")


def _extreme_position(sequences: pa.ChunkedArray, subs: pa.ChunkedArray, which: str) -> Position:
    """The least or greatest (sequence number, sub-sequence number), sequence numbers compared as integers.

    Sequence numbers are decimal digits: without leading zeros, the shorter is the smaller and texts of one length
    compare like their numbers, so a few min/max kernels find it (texts with leading zeros: compared as integers).
    """
    import pyarrow.compute as pc

    lengths = pc.utf8_length(sequences)
    if pc.any(pc.and_(pc.starts_with(sequences, "0"), pc.greater(lengths, 1))).as_py():
        pairs = list(zip(sequences.to_pylist(), subs.to_pylist(), strict=True))  # never from Kinesis
        pick = min if which == "min" else max
        sequence_text, sub_number = pick(pairs, key=lambda pair: (int(pair[0]), pair[1]))
        return Position(sequence_text, sub_number)
    length = pc.min_max(lengths)[which]
    sequence = pc.min_max(sequences.filter(pc.equal(lengths, length)))[which]
    sub = pc.min_max(subs.filter(pc.equal(sequences, sequence)))[which]
    return Position(sequence.as_py(), sub.as_py())


def chain_order(previous: Position | None) -> tuple[int, tuple[int, int]]:
    """Where a commit continuing from ``previous`` sits in its chain (``start`` first), comparable to a position."""
    return (0, (0, 0)) if previous is None else (1, previous.sort_key())
