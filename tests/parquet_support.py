"""Reading how a Parquet object was encoded, for the tests of the writers."""

from __future__ import annotations

import io

import pyarrow.parquet as pq


def dictionary_columns(parquet: bytes) -> set[str]:
    """The columns of a Parquet object's first row group that have a dictionary page."""
    row_group = pq.ParquetFile(io.BytesIO(parquet)).metadata.row_group(0)
    return {
        row_group.column(i).path_in_schema
        for i in range(row_group.num_columns)
        if row_group.column(i).has_dictionary_page
    }
