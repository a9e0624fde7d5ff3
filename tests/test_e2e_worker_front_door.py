"""The worker as an operator runs it, through the real KCL MultiLangDaemon and the embedded endpoint.

- Flags win over the environment all the way into the record processors the JVM starts: `--prefix` decides where
  the outputs go and `--state-dir` where each shard's DuckDB state lives.
- A `kill -9` of the worker leaves neither the JVM nor a record processor behind (they would hold leases).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from clickstream.demo import emulator_environment
from consumer.status import read_statuses

pytestmark = pytest.mark.e2e


def _cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clickstream.cli", "--log-format", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _environment(endpoint: str, tmp_path: Path, name: str) -> dict[str, str]:
    env = {
        **os.environ,
        **emulator_environment(endpoint, tmp_path / "state-from-env"),
        "CLICKSTREAM_STREAM_NAME": f"{name}-stream",
        "CLICKSTREAM_BUCKET": f"{name}-bucket",
        "CLICKSTREAM_APPLICATION_NAME": f"{name}-app",
        "CLICKSTREAM_WORKER_ID": f"{name}-worker",
        "CLICKSTREAM_STREAM_SHARDS": "2",
        "CLICKSTREAM_PREFIX": "prefix-from-env",
        "CLICKSTREAM_FLUSH_MAX_SECONDS": "50",  # the flag below must win: worker-settings.json says which did
    }
    for step in (("setup",), ("produce", "--customers", "40", "--events", "1500", "--no-progress")):
        result = _cli(*step, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    return env


def test_worker_flags_reach_the_record_processors(emulator_endpoint: str, tmp_path: Path) -> None:
    env = _environment(emulator_endpoint, tmp_path, "flags")
    state_dir = tmp_path / "state-from-flag"

    worker = _cli(
        "worker",
        "--until-idle",
        "2",
        "--prefix",
        "alt",
        "--state-dir",
        str(state_dir),
        "--flush-max-seconds",
        "2",
        env=env,
        timeout=240,
    )

    assert worker.returncode == 0, worker.stderr[-4000:]
    s3 = boto3.client(
        "s3",
        endpoint_url=emulator_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=env["CLICKSTREAM_BUCKET"])["Contents"]]
    assert keys and all(key.startswith("alt/") for key in keys), sorted({k.split("/")[0] for k in keys})
    assert any("/customer_aggregates/" in key for key in keys)
    assert list(state_dir.rglob("*.journal")), "each shard's state lives under --state-dir"
    assert not (tmp_path / "state-from-env").exists(), "the environment's state dir is not used"
    written = json.loads((state_dir / "worker-settings.json").read_text())
    assert (written["prefix"], written["flush_max_seconds"]) == ("alt", 2.0)
    statuses = read_statuses(state_dir / "status")
    assert len(statuses) == 2 and sum(status.records_flushed for status in statuses.values()) == 1500


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # a zombie holds nothing; its new parent reaps it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_kill_9_of_the_worker_takes_the_jvm_and_every_processor_with_it(
    emulator_endpoint: str, tmp_path: Path
) -> None:
    env = _environment(emulator_endpoint, tmp_path, "kill9")
    state_dir = tmp_path / "state"
    worker = subprocess.Popen(
        [sys.executable, "-m", "clickstream.cli", "worker", "--state-dir", str(state_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            statuses = read_statuses(state_dir / "status")
            if len([s for s in statuses.values() if s.phase == "processing"]) == 2:
                break
            assert worker.poll() is None, "the worker stopped by itself"
            time.sleep(0.5)
        else:
            pytest.fail("the KCL never started both shard processors")
        (jvm,) = _children(worker.pid)
        processors = [status.pid for status in statuses.values()]
        assert set(processors) <= set(_children(jvm)), "the processors are the JVM's children"

        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(pid) for pid in [jvm, *processors]):
            time.sleep(0.2)
        assert _gone(jvm), "the JVM outlived the worker"
        assert [pid for pid in processors if not _gone(pid)] == [], "a record processor outlived the worker"
    finally:
        if worker.poll() is None:
            worker.kill()
