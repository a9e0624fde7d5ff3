"""End to end through the real KCL MultiLangDaemon (Java) and the embedded AWS endpoint over HTTP.

Generate events for hundreds of customers with a seed, put them with the producer, run `clickstream worker
--until-idle`, read the Parquet back from S3, and compare every customer's aggregates with tests/reference.py,
computed separately and simply from the generated JSONL.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from clickstream.demo import emulator_environment
from clickstream.outputs import current_customer_rows, list_keys
from producer.generator import ClickstreamGenerator
from runtime.settings import load_settings
from tests.moto_support import emulator_client
from tests.parquet_support import dictionary_columns, download_outputs, output_glob
from tests.reference import SET_DETERMINED_COLUMNS, mismatches_against_reference

pytestmark = pytest.mark.e2e

CUSTOMERS = 300
EVENTS = 12_000


def _cli(
    *args: str, env: dict[str, str], timeout: float, log_format: str = "text"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clickstream.cli", "--log-format", log_format, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def pipeline_run(emulator_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the whole path once; the tests below inspect different aspects of its outputs."""
    workdir = tmp_path_factory.mktemp("e2e")
    env = {
        **os.environ,
        **emulator_environment(emulator_endpoint, workdir / "state"),
        "CLICKSTREAM_STREAM_NAME": "e2e-clickstream",
        "CLICKSTREAM_BUCKET": "e2e-outputs",
        "CLICKSTREAM_APPLICATION_NAME": "e2e-rfm",
        "CLICKSTREAM_STREAM_SHARDS": "3",
        "CLICKSTREAM_FLUSH_MAX_RECORDS": "2500",  # several flushes per shard
        "CLICKSTREAM_FLUSH_MAX_SECONDS": "3",
    }
    generator = ClickstreamGenerator(
        CUSTOMERS, EVENTS, seed=20261125, duplicate_rate=0.02, malformed_rate=0.004
    )
    labelled = list(generator.records())
    jsonl = workdir / "events.jsonl"
    jsonl.write_bytes(b"".join(data + b"\n" for _, data in labelled))

    for step, timeout in ((("setup",), 60), (("produce", "--input", str(jsonl), "--no-progress"), 120)):
        result = _cli(*step, env=env, timeout=timeout)
        assert result.returncode == 0, result.stderr
    labelled += _put_kpl_aggregated_records(env)
    s3 = emulator_client("s3", env)
    # without the default encryption setup gave the bucket, an object is encrypted only if its own PUT asked
    s3.delete_bucket_encryption(Bucket=env["CLICKSTREAM_BUCKET"])
    worker = _cli("worker", "--until-idle", "3", env=env, timeout=300, log_format="json")
    (workdir / "worker.log").write_text(worker.stderr)
    assert worker.returncode == 0, worker.stderr[-5000:]

    settings = load_settings(
        aws_endpoint_url=emulator_endpoint,
        bucket=env["CLICKSTREAM_BUCKET"],
        stream_name=env["CLICKSTREAM_STREAM_NAME"],
    )
    inventory = download_outputs(s3, settings, workdir / "s3")
    return {
        "env": env,
        "workdir": workdir,
        "labelled": labelled,
        "settings": settings,
        "s3": s3,
        "inventory": inventory,
        "root": workdir / "s3",
        "worker_log": worker.stderr,
    }


def _put_kpl_aggregated_records(env: dict[str, str]) -> list[tuple[str, bytes]]:
    """Extra events packed KPL-style (one aggregated record per customer): the KCL must de-aggregate them."""
    from aws_kinesis_agg.aggregator import RecordAggregator

    extra = [data for label, data in ClickstreamGenerator(20, 300, seed=424242).records() if label == "valid"]
    by_customer: dict[str, list[bytes]] = {}
    for data in extra:
        by_customer.setdefault(json.loads(data)["customer_id"], []).append(data)
    kinesis = emulator_client("kinesis", env)
    for customer, payloads in by_customer.items():
        aggregator = RecordAggregator()
        for data in payloads:
            assert aggregator.add_user_record(customer, data) is None, "fits one aggregated record"
        partition_key, _, blob = aggregator.clear_and_get().get_contents()
        kinesis.put_record(StreamName=env["CLICKSTREAM_STREAM_NAME"], PartitionKey=partition_key, Data=blob)
    return [("valid", data) for data in extra]


def _valid_documents(labelled: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [
        json.loads(data, parse_float=Decimal) for label, data in labelled if label in ("valid", "duplicate")
    ]


def test_every_customer_matches_the_reference(pipeline_run: dict[str, Any]) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = {
        row["customer_id"]: row
        for row in current_customer_rows(
            con, output_glob(pipeline_run["root"], pipeline_run["settings"], "customer_aggregates")
        )
        .to_arrow_table()
        .to_pylist()
    }
    assert len(rows) > 200
    assert mismatches_against_reference(rows, _valid_documents(pipeline_run["labelled"])) == []


def test_events_archive_holds_each_valid_event_exactly_once(pipeline_run: dict[str, Any]) -> None:
    con = duckdb.connect()
    glob = output_glob(pipeline_run["root"], pipeline_run["settings"], "events")
    archived = Counter(row[0] for row in con.sql(f"SELECT event_id FROM read_parquet('{glob}')").fetchall())
    valid_ids = {str(doc["event_id"]).lower() for doc in _valid_documents(pipeline_run["labelled"])}
    assert set(archived) == valid_ids
    assert max(archived.values()) == 1
    misplaced = con.sql(
        f"""SELECT filename, any_value(arrival_yyyymmdd) AS partition, min(approximate_arrival_at) AS first
            FROM read_parquet('{glob}', hive_partitioning = true, filename = true) GROUP BY filename
            HAVING CAST(strftime(min(approximate_arrival_at) AT TIME ZONE 'UTC', '%Y%m%d') AS BIGINT)
                   <> any_value(arrival_yyyymmdd)"""
    ).fetchall()
    assert misplaced == [], (
        "every flush's file sits in the partition of the UTC day its earliest record arrived"
    )


def test_every_record_is_accepted_or_rejected_exactly_once(pipeline_run: dict[str, Any]) -> None:
    labelled = pipeline_run["labelled"]
    commits = pipeline_run["inventory"].commits
    records_in = sum(c.records_in for c in commits) - sum(c.records_skipped for c in commits)
    assert records_in == len(labelled)
    assert sum(c.accepted for c in commits) + sum(c.rejected for c in commits) == len(labelled)
    assert sum(c.duplicates for c in commits) == sum(1 for label, _ in labelled if label == "duplicate")
    con = duckdb.connect()
    glob = output_glob(pipeline_run["root"], pipeline_run["settings"], "errors")
    rejected = con.sql(f"SELECT raw_data, error_code FROM read_parquet('{glob}')").fetchall()
    malformed = sorted(data for label, data in labelled if label.startswith("malformed"))
    assert sorted(bytes(row[0]) for row in rejected) == malformed
    assert all(row[1] for row in rejected)


def test_every_object_is_encrypted_at_rest(pipeline_run: dict[str, Any]) -> None:
    settings, s3 = pipeline_run["settings"], pipeline_run["s3"]
    keys = [obj["Key"] for obj in list_keys(s3, settings.bucket, settings.prefix + "/")]
    assert keys
    for key in keys:
        assert s3.head_object(Bucket=settings.bucket, Key=key)["ServerSideEncryption"] == "AES256", key


def test_worker_logs_are_json_lines_with_shard_context(pipeline_run: dict[str, Any]) -> None:
    lines = [line for line in pipeline_run["worker_log"].splitlines() if line.strip()]
    parsed = []
    for line in lines:
        if line.startswith("{"):
            parsed.append(json.loads(line))
    processor_lines = [entry for entry in parsed if entry.get("logger") == "consumer.shard_processor"]
    flush_lines = [entry for entry in processor_lines if entry["message"].startswith("flushed ")]
    assert flush_lines, "flushes are logged"
    assert all("shard_id" in entry and "sequence_number" in entry for entry in flush_lines)
    assert all("shard_id" in entry for entry in processor_lines)
    assert not [entry for entry in processor_lines if entry["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert not any("Received error line from subprocess" in line for line in lines)


def test_replay_of_the_whole_archive_equals_the_live_aggregates(pipeline_run: dict[str, Any]) -> None:
    env, settings, s3 = pipeline_run["env"], pipeline_run["settings"], pipeline_run["s3"]
    dry = _cli(
        "replay",
        "--from",
        "2026-01-01",
        "--to",
        "2027-01-01",
        "--name",
        "parity",
        "--dry-run",
        env=env,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert not list_keys(s3, settings.bucket, f"{settings.prefix}/replays/"), "a dry run writes nothing"
    for attempt in range(2):  # the second run must overwrite, not add
        done = _cli(
            "replay",
            "--from",
            "2026-01-01",
            "--to",
            "2027-01-01",
            "--name",
            "parity",
            "--no-progress",
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        replays = list_keys(s3, settings.bucket, f"{settings.prefix}/replays/parity/customer_aggregates/")
        assert len(replays) == 1, attempt
        claim = list_keys(s3, settings.bucket, f"{settings.prefix}/replays/parity/_claim.json")
        assert len(claim) == 1, "the name is claimed for its range"
    target = pipeline_run["workdir"] / "replay.parquet"
    s3.download_file(settings.bucket, replays[0]["Key"], str(target))
    live_files = glob.glob(output_glob(pipeline_run["root"], settings, "customer_aggregates"), recursive=True)
    live_encoding = dictionary_columns(Path(min(live_files)).read_bytes())
    assert dictionary_columns(target.read_bytes()) == live_encoding, "a replay is encoded as the live output"
    assert "customer_id" not in live_encoding
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f'"{c}"' for c in SET_DETERMINED_COLUMNS)
    replayed = con.sql(f"SELECT {columns} FROM read_parquet('{target}') ORDER BY customer_id").fetchall()
    live = current_customer_rows(
        con, output_glob(pipeline_run["root"], settings, "customer_aggregates")
    ).to_arrow_table()
    con.register("live", live)
    expected = con.sql(f"SELECT {columns} FROM live ORDER BY customer_id").fetchall()
    assert replayed == expected
