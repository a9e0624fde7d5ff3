"""A shard split and a shard merge in the middle of a run, through the real KCL: customers keep one history.

The emulator gives moto the resharding semantics of Kinesis (emulator/kinesis_resharding.py): parents keep their
records and end, new records go to the children. The KCL finishes a parent before its children start; each child
starts from its parents' state for its hash-key range (consumer/state_recovery.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from clickstream.demo import emulator_environment
from clickstream.outputs import current_customer_rows
from consumer.s3_sink import read_commit_records
from consumer.status import read_statuses
from emulator.faults import clear_faults, fault_hits, set_fault
from producer.generator import ClickstreamGenerator
from producer.kinesis_put import partition_key_for
from runtime.settings import load_settings
from schemas.layout import OutputLayout
from tests.moto_support import emulator_client
from tests.parquet_support import download_outputs, output_glob
from tests.reference import mismatches_against_reference

pytestmark = pytest.mark.e2e


def _wait_for(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{log.read_text()[-4000:]}")


def test_split_and_merge_mid_run_keep_every_customer_equal_to_the_reference(
    emulator_endpoint: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    env = {
        **os.environ,
        **emulator_environment(emulator_endpoint, state_dir),
        "CLICKSTREAM_STREAM_NAME": "reshard-stream",
        "CLICKSTREAM_BUCKET": "reshard-outputs",
        "CLICKSTREAM_APPLICATION_NAME": "reshard-rfm",
        "CLICKSTREAM_STREAM_SHARDS": "2",
        "CLICKSTREAM_FLUSH_MAX_RECORDS": "1000",
        # a shard holds a record 3-4 s before it flushes: the reshards below come while their parents still hold
        # the records put just before them
        "CLICKSTREAM_FLUSH_MAX_SECONDS": "4",
        "CLICKSTREAM_FLUSH_CAUGHT_UP_MIN_SECONDS": "3",
        "CLICKSTREAM_SNAPSHOT_EVERY_FLUSHES": "3",
        "CLICKSTREAM_SNAPSHOT_MIN_NEW_FRACTION": "0",
    }
    labelled = list(ClickstreamGenerator(120, 6_000, seed=77, duplicate_rate=0.02).records())
    # every customer appears before, between and after the reshards; the second and third parts are put half
    # before the reshard (the parents still hold those records when it happens) and half after (the children's)
    thirds = [labelled[i::3] for i in range(3)]
    parts = [thirds[0], thirds[1][::2], thirds[1][1::2], thirds[2][::2], thirds[2][1::2]]
    files = []
    for index, part in enumerate(parts):
        path = tmp_path / f"part{index}.jsonl"
        path.write_bytes(b"".join(data + b"\n" for _, data in part))
        files.append(path)

    def cli(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "clickstream.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def flushed() -> int:
        return sum(s.records_flushed for s in read_statuses(state_dir / "status").values())

    kinesis = emulator_client("kinesis", env)
    cli("setup")
    cli("produce", "--input", str(files[0]), "--no-progress")
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "clickstream.cli", "worker"], env=env, stdout=log_file, stderr=log_file
        )
    in_flight_at_reshard: list[int] = []
    refused_at_reshard: list[dict[str, int]] = []

    def hold_commits(*shards: str) -> dict[str, int]:
        """S3 answers the shards' commit PUTs with 503 (they retry) until clear_faults; the faults' ids by shard."""
        return {
            shard: set_fault(
                emulator_endpoint,
                "s3",
                503,
                120,
                ["PutObject"],
                key_prefix=OutputLayout("rfm").commits_prefix(shard),
            )["id"]
            for shard in shards
        }

    def refused(held: dict[str, int]) -> dict[str, int]:
        """Commit PUTs refused so far, by shard."""
        return {shard: fault_hits(emulator_endpoint, fault) for shard, fault in held.items()}

    def wait_for_refused_commits(held: dict[str, int], what: str) -> None:
        """Until every held shard has had a commit PUT refused (fails if not): each holds a flush it cannot commit
        until clear_faults, so the reshard that follows comes while its parents still have records to commit."""
        _wait_for(lambda: min(refused(held).values()) > 0, 60, what, log)
        refused_at_reshard.append(refused(held))

    def produced(count: int) -> int:
        return sum(len(part) for part in parts[:count])

    def put_in(low: int, high: int, which: list[int]) -> int:
        """Records of ``parts[i]`` (i in ``which``) whose partition key hashes into [low, high]."""
        return sum(
            low <= int(hashlib.md5(partition_key_for(data).encode()).hexdigest(), 16) <= high
            for index in which
            for _, data in parts[index]
        )

    def flushed_by(*shards: str) -> int:
        """New records the shards' commits hold: what is durable (the status files lag behind by up to a second)."""
        commits = read_commit_records(emulator_client("s3", env), "reshard-outputs", OutputLayout("rfm"))
        return sum(c.records_in - c.records_skipped for c in commits if c.shard_id in shards)

    try:
        _wait_for(lambda: flushed() >= len(parts[0]), 120, "part 1 flushed", log)

        parent = kinesis.list_shards(StreamName="reshard-stream")["Shards"][0]
        low, high = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        # The parent cannot commit until the split is done (S3 refuses its commit PUTs, it retries): the split
        # comes while it still holds records, however fast or slow this machine flushes.
        held = hold_commits(parent["ShardId"])
        cli("produce", "--input", str(files[1]), "--no-progress")
        wait_for_refused_commits(held, "a commit PUT of the parent refused before the split")
        # put to the parent and not yet flushed by it: it must finish them before its children start
        in_flight_at_reshard.append(put_in(low, high, [0, 1]) - flushed_by(parent["ShardId"]))
        kinesis.split_shard(
            StreamName="reshard-stream",
            ShardToSplit=parent["ShardId"],
            NewStartingHashKey=str((low + high) // 2),
        )
        clear_faults(emulator_endpoint)
        cli("produce", "--input", str(files[2]), "--no-progress")
        _wait_for(lambda: flushed() >= produced(3), 120, "part 2 flushed by the parent and the children", log)

        children = [
            s
            for s in kinesis.list_shards(StreamName="reshard-stream")["Shards"]
            if s.get("ParentShardId") == parent["ShardId"]
        ]
        assert len(children) == 2
        pair = [c["ShardId"] for c in children]
        held = hold_commits(*pair)
        cli("produce", "--input", str(files[3]), "--no-progress")
        wait_for_refused_commits(held, "a commit PUT of each child refused before the merge")
        in_flight_at_reshard.append(put_in(low, high, [2, 3]) - flushed_by(*pair))
        kinesis.merge_shards(
            StreamName="reshard-stream",
            ShardToMerge=children[0]["ShardId"],
            AdjacentShardToMerge=children[1]["ShardId"],
        )
        clear_faults(emulator_endpoint)
        cli("produce", "--input", str(files[4]), "--no-progress")
        _wait_for(
            lambda: flushed() >= len(labelled), 120, "part 3 flushed by the parents and the merged shard", log
        )
    finally:
        clear_faults(emulator_endpoint)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, log.read_text()[-4000:]
    # each reshard came while its parents still had records to read or flush (a parent's final flush, then its
    # SHARD_END, had work to do before its children could start); what was put to them arrived in full
    assert flushed_by(parent["ShardId"]) == put_in(low, high, [0, 1])
    assert flushed_by(*pair) == put_in(low, high, [2, 3])
    print(
        f"\nrecords the parents still had to read or flush at the split and the merge: {in_flight_at_reshard}"
        f"\ncommit PUTs refused by then, by shard: {refused_at_reshard}"
    )
    assert len(in_flight_at_reshard) == 2 and min(in_flight_at_reshard) > 0, in_flight_at_reshard

    statuses = read_statuses(state_dir / "status")
    ended = {shard for shard, status in statuses.items() if status.phase == "ended"}
    assert parent["ShardId"] in ended and {c["ShardId"] for c in children} <= ended
    assert len(statuses) == 5, "2 original shards, 2 children of the split, 1 child of the merge"

    settings = load_settings(aws_endpoint_url=emulator_endpoint, bucket="reshard-outputs")
    s3 = emulator_client("s3", env)
    inventory = download_outputs(s3, settings, tmp_path / "s3")
    committed = {commit.shard_id for commit in inventory.commits if commit.accepted}
    merged = (
        set(statuses)
        - {parent["ShardId"], *(c["ShardId"] for c in children)}
        - {
            s["ShardId"]
            for s in kinesis.list_shards(StreamName="reshard-stream")["Shards"]
            if not s.get("ParentShardId")
        }
    )
    assert len(merged) == 1, statuses.keys()
    # each child of the split committed records of its half, and the merged shard its own
    assert {c["ShardId"] for c in children} | merged <= committed, committed
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = {
        row["customer_id"]: row
        for row in current_customer_rows(con, output_glob(tmp_path / "s3", settings, "customer_aggregates"))
        .to_arrow_table()
        .to_pylist()
    }
    documents = [
        json.loads(d, parse_float=Decimal) for label, d in labelled if label in ("valid", "duplicate")
    ]
    assert mismatches_against_reference(rows, documents) == []
    archived = Counter(
        row[0]
        for row in con.sql(
            f"SELECT event_id FROM read_parquet('{output_glob(tmp_path / 's3', settings, 'events')}')"
        ).fetchall()
    )
    assert set(archived) == {str(d["event_id"]).lower() for d in documents}
    assert max(archived.values()) == 1
