"""``clickstream manifest``: a Redshift COPY manifest of exactly the committed files of one output.

Commit records are the manifest of the data: a file no commit names (a flush attempt that lost its commit to another
writer, or died before committing) is not data, even while it still sits in a partition. A COPY with ``MANIFEST``
loads what this lists and nothing else. A manifest of one arrival day reads that day's commits only (see
``consumer.s3_sink.read_partition_commits``); one of every file reads every commit record.
"""

from __future__ import annotations

import json
from typing import Any

from clickstream.console import progress_of
from clickstream.errors import FrontDoorError
from clickstream.options import show_progress
from clickstream.outputs import MAX_WORKERS, commit_records, list_output
from consumer.s3_sink import S3ParquetSink, committed_files, read_partition_commits
from runtime.logs import count_of, verb_for
from runtime.settings import Settings
from schemas.control import CommitRecord
from schemas.layout import OutputLayout


def copy_manifest(s3: Any, settings: Settings, output: str, arrival_day: int | None = None) -> dict[str, Any]:
    """``{"entries": [{"url", "mandatory", "meta": {"content_length"}}]}`` for COPY ... FORMAT AS PARQUET MANIFEST."""
    if arrival_day is not None:
        return day_manifest(s3, settings, output, arrival_day)[0]
    layout = OutputLayout(settings.prefix)
    records = commit_records(s3, settings)
    expected = sum(len(record.files.get(output, [])) for record in records)
    present = {obj["Key"]: int(obj["Size"]) for obj in list_output(s3, settings, output, expected)}
    return _manifest(settings, layout, output, records, present, arrival_day=None)


def day_manifest(
    s3: Any, settings: Settings, output: str, arrival_day: int
) -> tuple[dict[str, Any], frozenset[str]]:
    """The manifest of one arrival day, reading that day's commits only (a daily load's cost follows the day, not
    the history), and the shards whose newest commit is of that day (idle since, or behind: see ``DayCommits``)."""
    layout = OutputLayout(settings.prefix)
    with progress_of("reading commit records", "commit", bar=show_progress(None)) as report:
        day = read_partition_commits(
            s3, settings.bucket, layout, arrival_day, max_workers=MAX_WORKERS, progress=report
        )
    document = _manifest(settings, layout, output, day.records, day.listed, arrival_day=arrival_day)
    return document, day.newest_of_the_day


def _manifest(
    settings: Settings,
    layout: OutputLayout,
    output: str,
    records: list[CommitRecord],
    present: dict[str, int],
    *,
    arrival_day: int | None,
) -> dict[str, Any]:
    sizes = {key: size for record in records for key, size in record.file_bytes.items()}
    keys = [
        key
        for key in committed_files(records, output)
        if arrival_day is None or layout.arrival_day_of(key) == arrival_day
    ]
    missing = [key for key in keys if key not in present]
    if missing:  # COPY would fail on the first of them (every entry is mandatory), after loading nothing
        raise FrontDoorError(
            f"{count_of(len(missing), f'committed {output} file')} {verb_for(len(missing))} missing from "
            f"s3://{settings.bucket}/ (the first: "
            f"{missing[0]}): deleted or moved after they were committed (a lifecycle rule on the prefix?); no "
            "manifest written"
        )
    # a COPY reads a Parquet file's footer at the length its manifest entry gives: a file written over since its
    # commit (its recorded size no longer its size) would fail the load there, naming no cause
    changed = [key for key in keys if present[key] != sizes[key]]
    if changed:
        raise FrontDoorError(
            f"{count_of(len(changed), f'committed {output} file')} {verb_for(len(changed))} not as their commit "
            f"records wrote them (the first: "
            f"{changed[0]}, {sizes[changed[0]]:,} bytes when committed, {present[changed[0]]:,} now): written over "
            "after they were committed; no manifest written"
        )
    return {
        "entries": [
            {
                "url": f"s3://{settings.bucket}/{key}",
                "mandatory": True,
                "meta": {"content_length": sizes[key]},
            }
            for key in keys
        ]
    }


def upload_manifest(
    s3: Any, settings: Settings, output: str, manifest: dict[str, Any], arrival_day: int | None
) -> str:
    """Store the manifest where sql/redshift/03_copy_tables.sql expects it; returns its s3:// URL."""
    sink = S3ParquetSink(s3, settings)  # the one writer: same encryption as every other object
    key = sink.layout.manifest_key(output, arrival_day)
    sink.put_bytes(key, json.dumps(manifest, indent=1).encode(), "json")
    return f"s3://{settings.bucket}/{key}"
