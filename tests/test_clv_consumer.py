"""The CLV consumer example works on the product's own output: customer_aggregates/ rows plug into pymc-marketing.

The input is made the way the product makes it: the BG/NBD clickstream generator (known parameters), routed to two
shards by partition key, applied in several batches per shard by the aggregation core (``CustomerState``) and
written by the real ``S3ParquetSink`` (to an in-memory S3), so the rows carry different ``as_of`` values exactly as
in production. The code of ``docs/clv_example.md`` then reads them back and fits BG/NBD and Gamma-Gamma.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from aggregators.customer_state import CustomerState
from clickstream.outputs import current_customer_rows
from consumer.s3_sink import FlushAttempt, S3ParquetSink
from producer.generator import BgNbdParams, ClickstreamGenerator, GammaGammaParams
from runtime.settings import Settings
from schemas import RAW_RECORD_SCHEMA
from schemas.layout import FlushName

ROOT = Path(__file__).resolve().parents[1]
CLV_DOC = ROOT / "docs" / "clv_example.md"

SHARDS = ("shardId-000000000000", "shardId-000000000001")
ARRIVAL_DELAY = timedelta(seconds=2)  # Kinesis arrival a little after the event time


class InMemoryS3:
    """The part of the boto3 S3 client that ``S3ParquetSink`` uses."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        class NoSuchKey(Exception):  # noqa: N818 - boto3's name
            pass

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, *, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)


@dataclass(frozen=True)
class WorkerOutput:
    root: Path  # local copy of the bucket: <root>/<prefix>/customer_aggregates/as_of_date=.../*.parquet
    settings: Settings
    generator: ClickstreamGenerator

    def output_dir(self, output: str) -> Path:
        return self.root / self.settings.layout.output_prefix(output)

    def glob(self, output: str) -> str:
        return str(self.output_dir(output)) + "/**/*.parquet"


def shard_of(partition_key: str) -> str:
    """Kinesis maps the MD5 of the partition key onto shard hash ranges; two equal ranges here."""
    return SHARDS[int(hashlib.md5(partition_key.encode()).hexdigest(), 16) * len(SHARDS) >> 128]


def run_worker_core(
    root: Path, *, customers: int, events: int, seed: int, batches_per_shard: int = 8
) -> WorkerOutput:
    """Generate events, aggregate them per shard in batches and write the outputs as the worker does."""
    generator = ClickstreamGenerator(customers, events, seed)
    per_shard: dict[str, list[tuple[str, datetime, bytes]]] = {shard: [] for shard in SHARDS}
    for data in generator.events():
        document = json.loads(data)
        event_time = datetime.fromisoformat(document["event_time"].replace("Z", "+00:00"))
        per_shard[shard_of(document["customer_id"])].append(
            (document["customer_id"], event_time + ARRIVAL_DELAY, data)
        )

    with pytest.MonkeyPatch.context() as environment:  # only these settings, whatever the process environment
        for name in [name for name in os.environ if name.startswith("CLICKSTREAM_")]:
            environment.delenv(name)
        settings = Settings(bucket="clv-example", prefix="rfm", state_dir=root / "state")
    s3 = InMemoryS3()
    sink = S3ParquetSink(s3, settings)
    for shard, records in per_shard.items():
        state = CustomerState(shard)
        size = -(-len(records) // batches_per_shard)
        sequence = 1000
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            sequences = [str(sequence + i) for i in range(len(batch))]
            sequence += len(batch)
            raw = pa.table(
                {
                    "shard_id": [shard] * len(batch),
                    "sequence_number": sequences,
                    "sub_sequence_number": [0] * len(batch),
                    "partition_key": [key for key, _, _ in batch],
                    "approximate_arrival_at": [arrival for _, arrival, _ in batch],
                    "data": [data for _, _, data in batch],
                },
                schema=RAW_RECORD_SCHEMA,
            )
            previous = state.position()
            with state.staged(raw) as applied:  # the worker's steps 1-5, without the KCL
                assert applied.first_position is not None and applied.position is not None
                name = FlushName(shard, applied.first_position, applied.position, f"a{sequence}")
                sink.write(FlushAttempt(previous, name), applied)
        state.close()

    bucket_copy = root / "s3"
    for key, body in s3.objects.items():
        target = bucket_copy / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return WorkerOutput(bucket_copy, settings, generator)


def doc_code_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", CLV_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory: pytest.TempPathFactory) -> WorkerOutput:
    # 3,000 customers: about 2,100 buyers and 1,200 repeat buyers; all purchases fit the event budget.
    return run_worker_core(tmp_path_factory.mktemp("clv"), customers=3000, events=30_000, seed=5)


@pytest.fixture(scope="module")
def doc_namespace(worker_output: WorkerOutput) -> dict[str, Any]:
    """Run the two code blocks of docs/clv_example.md, reading the generated customer_aggregates/."""
    # No C compilation in PyTensor: same estimates, ~20 s on 2 cores whether or not a compile cache exists.
    os.environ.setdefault("PYTENSOR_FLAGS", "cxx=")
    reading, fitting = doc_code_blocks()
    source = str(worker_output.output_dir("customer_aggregates"))
    fitting, replaced = re.subn(r"^SOURCE = .*$", f"SOURCE = {source!r}", fitting, flags=re.MULTILINE)
    assert replaced == 1, "the fitting block must set SOURCE on a line of its own"
    namespace: dict[str, Any] = {}
    exec(compile(reading, f"{CLV_DOC}:reading", "exec"), namespace)
    exec(compile(fitting, f"{CLV_DOC}:fitting", "exec"), namespace)
    return namespace


def test_doc_has_a_reading_and_a_fitting_block() -> None:
    blocks = doc_code_blocks()
    assert len(blocks) == 2
    assert "def clv_inputs(" in blocks[0]
    assert "BetaGeoModel" in blocks[1] and "GammaGammaModel" in blocks[1]


def test_worker_rows_have_several_as_of_values_per_shard(worker_output: WorkerOutput) -> None:
    """The premise of the T adjustment: current rows do not share one as_of."""
    con = duckdb.connect()
    as_of_values = con.sql(
        f"SELECT shard_id, count(DISTINCT as_of) FROM read_parquet('{worker_output.glob('customer_aggregates')}') "
        "GROUP BY ALL"
    ).fetchall()
    assert len(as_of_values) == len(SHARDS)
    assert all(count > 1 for _, count in as_of_values)


def test_clv_inputs_plug_in_without_conversion(worker_output: WorkerOutput, doc_namespace: dict) -> None:
    rfm = doc_namespace["rfm"]
    assert list(rfm.columns) == ["customer_id", "frequency", "recency", "T", "monetary_value"]
    assert {column: str(rfm[column].dtype) for column in ("frequency", "recency", "T", "monetary_value")} == {
        "frequency": "int64",
        "recency": "int64",
        "T": "int64",
        "monetary_value": "float64",
    }
    assert not rfm.isna().any().any()
    assert rfm["customer_id"].is_unique
    assert len(rfm) == worker_output.generator.summary.buyers
    assert (rfm["frequency"] >= 0).all()
    assert (rfm["recency"] <= rfm["T"]).all()
    assert ((rfm["frequency"] == 0) == (rfm["monetary_value"] == 0.0)).all()


def test_t_is_recomputed_against_one_common_observation_end(
    worker_output: WorkerOutput, doc_namespace: dict
) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    current = current_customer_rows(con, worker_output.glob("customer_aggregates")).df()
    buyers = current[current["frequency"].notna()].set_index("customer_id")
    rfm = doc_namespace["rfm"].set_index("customer_id")
    common_day = current["as_of"].max().date()
    expected_t = [(common_day - first.date()).days for first in buyers.loc[rfm.index, "first_purchase_at"]]
    assert rfm["T"].tolist() == expected_t
    stored_t = buyers.loc[rfm.index, "T"].astype("int64")
    assert (rfm["T"] >= stored_t).all()
    latest = buyers.loc[rfm.index, "as_of"].dt.date == common_day
    assert (rfm["T"][latest] == stored_t[latest]).all()  # rows written at the common end keep their T
    assert (rfm["T"] != stored_t).sum() > len(rfm) // 2  # and most rows change: the adjustment matters


def within_factor(estimate: float, truth: float, factor: float) -> bool:
    return truth / factor <= estimate <= truth * factor


def test_bg_nbd_recovers_the_generating_parameters(doc_namespace: dict) -> None:
    truth = BgNbdParams()
    fitted = doc_namespace["bg"].fit_summary()
    assert within_factor(fitted["r"], truth.r, 2)
    assert within_factor(fitted["alpha"], truth.alpha, 2)
    assert within_factor(fitted["r"] / fitted["alpha"], truth.r / truth.alpha, 1.5)  # mean purchase rate
    assert within_factor(fitted["a"], truth.a, 2.5)
    assert within_factor(fitted["b"], truth.b, 2.5)
    expected = doc_namespace["expected_purchases"]
    assert expected.shape[-1] == len(doc_namespace["rfm"])
    assert float(expected.min()) >= 0


def test_gamma_gamma_recovers_the_mean_order_value(doc_namespace: dict) -> None:
    truth = GammaGammaParams()
    fitted = doc_namespace["gg"].fit_summary()
    for name in ("p", "q", "v"):
        assert within_factor(fitted[name], getattr(truth, name), 2), name
    mean_order_value = fitted["p"] * fitted["v"] / (fitted["q"] - 1)
    assert within_factor(mean_order_value, truth.expected_order_value(), 1.2)
    clv = doc_namespace["clv"]
    assert clv.shape[-1] == len(doc_namespace["rfm"])  # every buyer, as clickstream score values them
    assert float(clv.min()) > 0
