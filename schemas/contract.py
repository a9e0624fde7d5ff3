"""Arrow schemas of the raw input batch and of the three Parquet outputs.

Types are chosen so Redshift (COPY, Spectrum) reads them as they are: UTC timestamps at microsecond precision,
money as DECIMAL(18,2), signed integers only, strings for ids (Kinesis sequence numbers exceed 64 bits).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

EVENT_SCHEMA_VERSION: Final = 1
EVENT_SCHEMA_PATH: Final = Path(__file__).with_name("clickstream_event.v1.schema.json")

#: Event types in funnel order. Each has a count column in the customer aggregates (pluralised).
EVENT_TYPES: Final = ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase")

UTC_MICROS: Final = pa.timestamp("us", tz="UTC")
MONEY: Final = pa.decimal128(18, 2)


def load_event_json_schema(parse_float: Callable[[str], Any] = float) -> dict[str, Any]:
    """The JSON Schema that producers validate against; the worker's SQL validator mirrors it. ``parse_float``
    reads its numbers, as ``json.loads``'s does: pass ``Decimal``, and load each event checked against it the same
    way, for the exact check its ``$comment`` asks for (as binary floats most prices fail ``multipleOf: 0.01``)."""
    loaded: dict[str, Any] = json.loads(
        EVENT_SCHEMA_PATH.read_text(encoding="utf-8"), parse_float=parse_float
    )
    return loaded


#: One Kinesis record as the consumer hands it to the core (already base64-decoded, KPL-deaggregated).
RAW_RECORD_SCHEMA: Final = pa.schema(
    [
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.string(), nullable=False),
        pa.field("sub_sequence_number", pa.int64(), nullable=False),
        pa.field("partition_key", pa.string(), nullable=False),
        pa.field("approximate_arrival_at", UTC_MICROS, nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)

#: events/ — validated events, the archive that batch models and replays read.
EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("event_time", UTC_MICROS, nullable=False),
        pa.field("page_url", pa.string()),
        pa.field("product_id", pa.string()),
        pa.field("search_query", pa.string()),
        pa.field("quantity", pa.int32()),
        pa.field("order_id", pa.string()),
        pa.field("revenue", MONEY),
        pa.field("currency", pa.string()),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.string(), nullable=False),
        pa.field("sub_sequence_number", pa.int64(), nullable=False),
        pa.field("approximate_arrival_at", UTC_MICROS, nullable=False),
    ]
)

#: customer_aggregates/ — one row per customer changed in a flush; the highest `version` is the current row.
CUSTOMER_AGGREGATES_SCHEMA: Final = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("as_of", UTC_MICROS, nullable=False),
        pa.field("first_event_at", UTC_MICROS, nullable=False),
        pa.field("last_event_at", UTC_MICROS, nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("page_views", pa.int64(), nullable=False),
        pa.field("product_views", pa.int64(), nullable=False),
        pa.field("searches", pa.int64(), nullable=False),
        pa.field("add_to_carts", pa.int64(), nullable=False),
        pa.field("checkouts", pa.int64(), nullable=False),
        pa.field("purchases", pa.int64(), nullable=False),
        pa.field("sessions", pa.int64(), nullable=False),
        pa.field("active_days", pa.int64(), nullable=False),
        pa.field("revenue", MONEY, nullable=False),
        pa.field("first_purchase_at", UTC_MICROS),
        pa.field("last_purchase_at", UTC_MICROS),
        pa.field("purchase_days", pa.int64(), nullable=False),
        pa.field("frequency", pa.int64()),
        pa.field("recency", pa.int64()),
        pa.field("T", pa.int64()),
        pa.field("monetary_value", pa.float64()),
        pa.field("repeat_revenue", MONEY),
        pa.field("engagement_score", pa.float64(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("updated_through_sequence", pa.string(), nullable=False),
    ]
)

#: errors/ — every rejected record, with enough identity to find and re-drive it.
ERRORS_SCHEMA: Final = pa.schema(
    [
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.string(), nullable=False),
        pa.field("sub_sequence_number", pa.int64(), nullable=False),
        pa.field("partition_key", pa.string(), nullable=False),
        pa.field("approximate_arrival_at", UTC_MICROS, nullable=False),
        pa.field("error_code", pa.string(), nullable=False),
        pa.field("error_detail", pa.string(), nullable=False),
        pa.field("raw_data", pa.binary(), nullable=False),
        pa.field("raw_size_bytes", pa.int64(), nullable=False),
    ]
)

#: clv/ — one row per buyer per scoring run (``clickstream score``): model inputs on the run's common observation end,
#: BG/NBD + Gamma-Gamma predictions, RFM scores and segment. The partition column ``as_of_yyyymmdd`` comes from the key.
CLV_SCORES_SCHEMA: Final = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("as_of", UTC_MICROS, nullable=False),
        pa.field("frequency", pa.int64(), nullable=False),
        pa.field("recency", pa.int64(), nullable=False),
        pa.field("T", pa.int64(), nullable=False),
        pa.field("monetary_value", pa.float64(), nullable=False),
        pa.field("days_since_last_purchase", pa.int64(), nullable=False),
        pa.field("purchase_days", pa.int64(), nullable=False),
        pa.field("revenue", MONEY, nullable=False),
        pa.field("probability_alive", pa.float64(), nullable=False),
        pa.field("expected_purchases_30d", pa.float64(), nullable=False),
        pa.field("expected_purchases_90d", pa.float64(), nullable=False),
        pa.field("expected_purchases_365d", pa.float64(), nullable=False),
        pa.field("expected_average_order_value", pa.float64(), nullable=False),
        pa.field("clv", pa.float64(), nullable=False),
        pa.field("r_score", pa.int32(), nullable=False),
        pa.field("f_score", pa.int32(), nullable=False),
        pa.field("m_score", pa.int32(), nullable=False),
        pa.field("fm_score", pa.int32(), nullable=False),
        pa.field("rfm_cell", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)
