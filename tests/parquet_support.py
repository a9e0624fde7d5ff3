"""Reading the worker's Parquet outputs back in the tests: how an object was encoded, and copies of every output."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from clickstream.outputs import download_keys, list_keys
from consumer.s3_sink import commit_record_at
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import DATA_OUTPUTS


def dictionary_columns(parquet: bytes) -> set[str]:
    """The columns of a Parquet object's first row group that have a dictionary page."""
    row_group = pq.ParquetFile(io.BytesIO(parquet)).metadata.row_group(0)
    return {
        row_group.column(i).path_in_schema
        for i in range(row_group.num_columns)
        if row_group.column(i).has_dictionary_page
    }


@dataclass(slots=True)
class OutputInventory:
    files: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    commits: list[CommitRecord] = field(default_factory=list)


def download_outputs(s3: Any, settings: Settings, destination: Path) -> OutputInventory:
    """Copy every output object (and the control records) under ``destination``, keeping the key layout: every
    file, committed or not, for the tests that look at what a run left behind."""
    inventory = OutputInventory()
    layout = settings.layout
    keys = []
    for output in DATA_OUTPUTS:
        for obj in list_keys(s3, settings.bucket, layout.output_prefix(output)):
            keys.append(obj["Key"])
            inventory.files[output] += 1
            inventory.bytes[output] += int(obj["Size"])
    keys += [obj["Key"] for obj in list_keys(s3, settings.bucket, layout.control_prefix)]
    download_keys(s3, settings.bucket, keys, destination)
    for key in keys:
        if key.startswith(layout.all_commits_prefix):
            inventory.commits.append(
                commit_record_at(str(destination / key), (destination / key).read_bytes())
            )
    return inventory


def output_glob(root: Path, settings: Settings, output: str) -> str:
    return str(root / settings.layout.output_prefix(output)) + "/**/*.parquet"
