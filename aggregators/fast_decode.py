"""The fast path of validation: parse each record once into typed columns and vouch for the plainly valid ones.

``RecordValidator`` (validation.py) is exact and the authority on every rejection code, but it parses a record
three times and walks a long rule chain. Almost every record on a healthy stream is plainly valid, so this module
parses each record once (DuckDB ``from_json`` into explicit columns, plus its top-level key list) and *vouches*
for a record only when a conservative set of checks proves the exact validator would accept it and produce the very
same values:

- UTF-8, within the size limit, a JSON object with no backslash escapes and no syntax only a lenient parser
  accepts (trailing commas, NaN, Infinity);
- its members are exactly contract fields, each once and non-null (so no repeated key; a record with unknown
  extra fields is valid but takes the exact path), each of its JSON type (strings quoted, ``schema_version``
  exactly ``1``, ``quantity`` a plain integer from 1 to 10000, ``revenue`` a plain decimal with two places at most);
- the same length, pattern, event-type, time-window and partition-key rules as the validator (same SQL functions).

Everything else is *doubtful* and goes through the exact validator, which decides accept or reject and names the
reason. A vouched record's values equal the validator's (a property test checks this on generated documents), so
results do not depend on which path a record took.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregators.validation import (
    _FIELDS,
    _REQUIRED_BY_TYPE,
    _STRING_FIELDS,
    LENIENT_JSON_HINT,
    DecodedBatch,
    RecordValidator,
    ValidationRules,
    _quote,
    run_prepared,
)
from schemas import ERRORS_SCHEMA, EVENT_SCHEMA_VERSION, EVENT_TYPES, EVENTS_SCHEMA

_AS_JSON: Final = json.dumps({field: "JSON" for field in _FIELDS})
_NUMERIC: Final = ("schema_version", "quantity", "revenue")
#: Plain JSON numbers the fast path accepts; anything else (exponents, 2.0, leading zeros) is left to the validator.
_QUANTITY_TEXT: Final = r"[1-9][0-9]{0,3}|10000"
_REVENUE_TEXT: Final = r"(0|[1-9][0-9]{0,15})([.][0-9]{1,2})?"


def _string(field: str) -> str:
    """The value of a string field: the raw JSON text without its quotes (records with escapes are doubtful)."""
    return f"CASE WHEN left(j.{field}, 1) = '\"' THEN j.{field}[2:-2] END"


def _build_sql(rules: ValidationRules) -> str:
    strings = [f for f in _FIELDS if f not in _NUMERIC]
    values = ",\n         ".join(f"{_string(f)} AS s_{f}" for f in strings)
    checks: list[str] = [
        "doc IS NOT NULL",
        # exactly the contract fields present, each once and non-null: no repeated, unknown or null member
        "len(keys) = " + " + ".join(f"(j.{f} IS NOT NULL)::INTEGER" for f in _FIELDS),
        f"j.schema_version = '{EVENT_SCHEMA_VERSION}'",
        f"(j.quantity IS NULL OR regexp_full_match(j.quantity, {_quote(_QUANTITY_TEXT)}))",
        f"(j.revenue IS NULL OR (regexp_full_match(j.revenue, {_quote(_REVENUE_TEXT)}) "
        f"AND TRY_CAST(j.revenue AS DECIMAL(18, 2)) <= {int(rules.max_revenue)}))",
    ]
    for field in strings:
        low, high, pattern = _STRING_FIELDS[field]
        condition = f"length(s_{field}) BETWEEN {low} AND {high}"
        if pattern:
            condition += f" AND regexp_full_match(s_{field}, {_quote(pattern)})"
        if field in ("event_id", "event_type", "customer_id", "session_id", "event_time"):
            checks.append(f"(s_{field} IS NOT NULL AND {condition})")
        else:
            checks.append(f"(j.{field} IS NULL OR (s_{field} IS NOT NULL AND {condition}))")
    checks.append(f"s_event_type IN ({', '.join(_quote(t) for t in EVENT_TYPES)})")
    for event_type, fields in _REQUIRED_BY_TYPE.items():
        present = " AND ".join(f"j.{f} IS NOT NULL" for f in fields)
        checks.append(f"(s_event_type <> {_quote(event_type)} OR ({present}))")
    checks += [
        "event_time IS NOT NULL",
        f"event_time >= TIMESTAMPTZ {_quote(rules.min_event_time.isoformat())}",
        f"event_time <= approximate_arrival_at + INTERVAL {int(rules.max_future_skew_seconds)} SECOND",
        "partition_key = s_customer_id",
    ]
    vouched = "\n     AND ".join(checks)
    trimmed = "ltrim(txt, ' ' || chr(9) || chr(10) || chr(13))"
    return f"""
WITH parsed AS (
  SELECT rid, partition_key, approximate_arrival_at,
         CASE WHEN size_bytes <= {int(rules.max_record_bytes)}
                   AND NOT contains(txt, '\\')
                   AND NOT regexp_matches(txt, {_quote(LENIENT_JSON_HINT)})
                   AND json_valid(txt) AND left({trimmed}, 1) = '{{'
              THEN txt END AS doc
  FROM fast_in
), extracted AS (
  SELECT rid, partition_key, approximate_arrival_at, doc,
         json_keys(doc) AS keys, from_json(doc, {_quote(_AS_JSON)}) AS j
  FROM parsed
), fields AS (
  SELECT rid, partition_key, approximate_arrival_at, doc, keys, j,
         {values},
         TRY_CAST(s_event_time AS TIMESTAMPTZ) AS event_time
  FROM extracted
)
SELECT rid,
       coalesce({vouched}, false) AS vouched,
       lower(s_event_id) AS event_id, s_event_type AS event_type, s_customer_id AS customer_id,
       s_session_id AS session_id, event_time, s_page_url AS page_url, s_product_id AS product_id,
       s_search_query AS search_query, TRY_CAST(j.quantity AS INTEGER) AS quantity, s_order_id AS order_id,
       TRY_CAST(j.revenue AS DECIMAL(18, 2)) AS revenue, s_currency AS currency,
       CAST({EVENT_SCHEMA_VERSION} AS INTEGER) AS schema_version
FROM fields
"""


class FastDecoder:
    """Parses a raw batch once and returns, per row, whether it is vouched for and its typed values."""

    def __init__(self, rules: ValidationRules) -> None:
        self.rules = rules
        self._sql = _build_sql(rules)
        self._statement = f"fast_decode_{hashlib.sha256(self._sql.encode()).hexdigest()[:12]}"

    def decode(self, con: duckdb.DuckDBPyConnection, raw: pa.Table) -> pa.Table:
        """Columns ``rid`` (row number in ``raw``), ``vouched`` and the event fields (meaningful where vouched)."""
        data = raw.column("data").combine_chunks()
        text = as_utf8(data)
        table = pa.table(
            {
                "rid": pa.array(np.arange(raw.num_rows, dtype=np.int64)),
                "txt": text,
                "size_bytes": pa.array(binary_lengths(data)),
                "partition_key": raw.column("partition_key"),
                "approximate_arrival_at": raw.column("approximate_arrival_at"),
            }
        )
        con.register("fast_in", table)
        try:
            return run_prepared(con, self._statement, self._sql)
        finally:
            con.unregister("fast_in")


def decode_records(
    con: duckdb.DuckDBPyConnection, raw: pa.Table, fast: FastDecoder, validator: RecordValidator
) -> DecodedBatch:
    """Events and rejects of a raw batch: the fast path for what it vouches for, the validator for the rest.

    Same result as ``validator.decode(con, raw)`` (events in the order of the vouched rows, then the validator's).
    """
    parsed = fast.decode(con, raw)
    vouched = parsed.column("vouched")
    good = parsed.filter(vouched)
    lineage = raw.select(["shard_id", "sequence_number", "sub_sequence_number", "approximate_arrival_at"])
    columns = {name: good.column(name) for name in EVENTS_SCHEMA.names if name in good.column_names}
    columns.update(dict(zip(lineage.column_names, lineage.filter(vouched).columns, strict=True)))
    events = pa.table({name: columns[name] for name in EVENTS_SCHEMA.names}).cast(EVENTS_SCHEMA)
    if events.num_rows == raw.num_rows:
        return DecodedBatch(events=events, rejects=ERRORS_SCHEMA.empty_table())
    exact = validator.decode(con, raw.filter(pc.invert(vouched)))
    if exact.events.num_rows:
        events = pa.concat_tables([events, exact.events])
    return DecodedBatch(events=events, rejects=exact.rejects)


def binary_lengths(data: pa.Array) -> np.ndarray:
    """Byte length of every value of a binary/string array, from its offsets (no per-value work)."""
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32)[data.offset : data.offset + len(data) + 1]
    return np.diff(offsets).astype(np.int64)


def as_utf8(data: pa.Array) -> pa.Array:
    """The payloads as strings; a payload that is not valid UTF-8 becomes null (the validator names it)."""
    try:
        return data.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    # Only payloads with a byte >= 0x80 can be invalid UTF-8: find those rows without touching the others.
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32)[data.offset : data.offset + len(data) + 1]
    body = np.frombuffer(data.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    high = np.flatnonzero(body >= 0x80) + offsets[0]
    rows = np.unique(np.searchsorted(offsets, high, side="right") - 1)
    valid = np.ones(len(data), dtype=bool)
    for row in rows.tolist():
        try:
            data[row].as_py().decode("utf-8")
        except UnicodeDecodeError:
            valid[row] = False
    mask = pa.array(~valid)
    cleaned = pc.if_else(mask, pa.scalar(None, pa.binary()), data)
    return cleaned.cast(pa.string())
