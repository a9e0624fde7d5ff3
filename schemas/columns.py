"""Arrow column helpers every layer shares."""

from __future__ import annotations

import pyarrow as pa


def contiguous(column: pa.ChunkedArray) -> pa.Array:
    """One array of a column: its only chunk as it is (``combine_chunks`` copies even a single chunk)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
