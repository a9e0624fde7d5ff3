"""Read the worker's outputs back from S3: download them, pick current customer rows, summarise for people."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from runtime.settings import Settings
from schemas.control import CommitRecord

OUTPUTS = ("events", "customer_aggregates", "errors")


@dataclass(slots=True)
class OutputInventory:
    files: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    commits: list[CommitRecord] = field(default_factory=list)


def list_keys(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    paginator = s3.get_paginator("list_objects_v2")
    return [
        obj for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])
    ]


def download_outputs(s3: Any, settings: Settings, destination: Path) -> OutputInventory:
    """Copy every output object (and the commit records) under ``destination``, keeping the key layout."""
    inventory = OutputInventory()
    for output in (*OUTPUTS, "_control"):
        for obj in list_keys(s3, settings.bucket, settings.output_prefix(output)):
            key = obj["Key"]
            target = destination / key
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(settings.bucket, key, str(target))
            if output == "_control":
                if "/commits/" in key:
                    inventory.commits.append(CommitRecord.from_json(target.read_bytes()))
            else:
                inventory.files[output] += 1
                inventory.bytes[output] += int(obj["Size"])
    return inventory


def output_glob(root: Path, settings: Settings, output: str) -> str:
    return str(root / settings.output_prefix(output)) + "/**/*.parquet"


CURRENT_ROWS_SQL = """
SELECT * EXCLUDE (rank_) FROM (
    SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY version DESC, as_of DESC) AS rank_
    FROM read_parquet('{glob}', hive_partitioning = false, union_by_name = true))
WHERE rank_ = 1
"""


def current_customer_rows(con: duckdb.DuckDBPyConnection, glob: str) -> duckdb.DuckDBPyRelation:
    """Each customer's current row: the highest ``version`` (= events applied) wins."""
    return con.sql(CURRENT_ROWS_SQL.format(glob=glob))


def row_counts(
    con: duckdb.DuckDBPyConnection, root: Path, settings: Settings, inventory: OutputInventory
) -> dict[str, int]:
    counts = {}
    for output in OUTPUTS:
        if inventory.files[output]:
            glob = output_glob(root, settings, output)
            counts[output] = int(con.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0])
        else:
            counts[output] = 0
    return counts
