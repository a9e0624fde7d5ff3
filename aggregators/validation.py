"""Turn a batch of raw Kinesis records into validated events plus rejects, in one set-based DuckDB statement.

Bad input is data, not an exception: every input row comes out exactly once, either as an event (columns of
``schemas.EVENTS_SCHEMA``) or as a reject (``schemas.ERRORS_SCHEMA``) carrying a stable ``error_code``, a readable
``error_detail`` and the raw bytes. The rules mirror ``schemas/clickstream_event.v1.schema.json``; a test checks the
two agree on generated documents.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from duckdb.func import PythonUDFType

from schemas import ERRORS_SCHEMA, EVENT_SCHEMA_VERSION, EVENT_TYPES, EVENTS_SCHEMA, RAW_RECORD_SCHEMA


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """Limits applied to every record; all deterministic functions of the record itself."""

    max_record_bytes: int = 32 * 1024
    max_revenue: int = 1_000_000
    min_event_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_future_skew_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Validated events (EVENTS_SCHEMA) and rejected records (ERRORS_SCHEMA) of one raw batch."""

    events: pa.Table
    rejects: pa.Table


# Field extraction order for the single json_extract call (the document is parsed once per record).
_FIELDS: Final = (
    "schema_version",
    "event_id",
    "event_type",
    "customer_id",
    "session_id",
    "event_time",
    "page_url",
    "product_id",
    "search_query",
    "quantity",
    "order_id",
    "revenue",
    "currency",
)
_REQUIRED: Final = ("schema_version", "event_id", "event_type", "customer_id", "session_id", "event_time")
_REQUIRED_BY_TYPE: Final = {
    "purchase": ("order_id", "revenue"),
    "checkout": ("order_id",),
    "product_view": ("product_id",),
    "add_to_cart": ("product_id",),
    "search": ("search_query",),
}
#: RFC 3339 date-time with an explicit offset; hours 00-23, minutes and seconds 00-59, offsets up to 23:59.
#: (TIMESTAMPTZ parsing alone would normalise hour 24 or an offset of +99:00 instead of rejecting them.)
EVENT_TIME_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

UUID_PATTERN: Final = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ID_PATTERN: Final = r"^[A-Za-z0-9_.:@-]+$"
CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"

#: Byte patterns that DuckDB's lenient JSON reader accepts but JSON does not: trailing commas, and NaN or infinity
#: in any letter case, with a minus or not, where a value starts (its json_valid takes `nan`, `-inf`, `INFINITY`...).
#: Only records containing one of them are re-checked with Python's strict parser, so the common case stays in SQL.
LENIENT_JSON_HINT: Final = r",\s*[\]}]|[:\[,]\s*-?(?i:nan|inf)"

_STRING_FIELDS: Final = {
    # field: (min length, max length, regex or None)
    "event_id": (36, 36, UUID_PATTERN),
    "event_type": (1, 64, None),
    "customer_id": (1, 64, ID_PATTERN),
    "session_id": (1, 64, ID_PATTERN),
    "event_time": (1, 40, EVENT_TIME_PATTERN),
    "page_url": (0, 2048, None),
    "product_id": (1, 64, None),
    "search_query": (0, 512, None),
    "order_id": (1, 64, None),
    "currency": (3, 3, CURRENCY_PATTERN),
}
_INTEGER_TYPES: Final = "('UBIGINT', 'BIGINT')"
#: The numeric members: read as DOUBLE (``n_<field>``) by the rules, kept as raw JSON text by the fast path.
_NUMBERS: Final = ("schema_version", "quantity", "revenue")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _is_integer(field: str) -> str:
    """JSON Schema 'integer' also admits 2.0; accept a DOUBLE with no fraction too."""
    return f"(t_{field} IN {_INTEGER_TYPES} OR (t_{field} = 'DOUBLE' AND n_{field} = floor(n_{field})))"


def _rejection_rules(rules: ValidationRules) -> list[tuple[str, str]]:
    """Ordered (condition, 'code:detail') pairs; the first matching rule names the rejection."""
    checks: list[tuple[str, str]] = [
        (
            f"size_bytes > {int(rules.max_record_bytes)}",
            f"oversized:record exceeds {rules.max_record_bytes} bytes",
        ),
        ("txt IS NULL", "invalid_utf8:payload is not valid UTF-8"),
        ("doc IS NULL OR strict_json_error", "invalid_json:payload is not valid JSON"),
        ("doc_type <> 'OBJECT'", "not_an_object:payload is JSON but not an object"),
        (
            "len(doc_keys) <> len(list_distinct(doc_keys))",
            "duplicate_key:a member name is repeated in the event object",
        ),
    ]
    checks += [(f"t_{f} IS NULL OR t_{f} = 'NULL'", f"missing_field:{f} is required") for f in _REQUIRED]
    checks.append(
        (
            f"NOT {_is_integer('schema_version')} OR n_schema_version <> {EVENT_SCHEMA_VERSION}",
            f"unsupported_schema_version:schema_version must be {EVENT_SCHEMA_VERSION}",
        )
    )
    # A field the event type needs, absent or null, is "missing" (checked before the generic type rules).
    for event_type, fields in _REQUIRED_BY_TYPE.items():
        for field in fields:
            checks.append(
                (
                    f"s_event_type = {_quote(event_type)} AND (t_{field} IS NULL OR t_{field} = 'NULL')",
                    f"missing_field:{field} is required for {event_type}",
                )
            )
    for field, (low, high, pattern) in _STRING_FIELDS.items():
        # A JSON null in an optional field is a wrong type, as the schema says (required ones were caught above).
        # An absent member has a NULL type, and a NULL condition matches no WHEN: no IS NOT NULL needed.
        checks.append((f"t_{field} <> 'VARCHAR'", f"wrong_type:{field} must be a string"))
        if field == "event_type":
            continue  # the schema has only its enum: any other string, "" too, is unknown_event_type below
        present = f"t_{field} = 'VARCHAR'"
        length = f"length(s_{field}) NOT BETWEEN {low} AND {high}"
        bad = f"{length} OR NOT regexp_full_match(s_{field}, {_quote(pattern)})" if pattern else length
        checks.append((f"{present} AND ({bad})", f"invalid_value:{field} has an invalid format or length"))
    known_types = ", ".join(_quote(t) for t in EVENT_TYPES)
    checks.append(
        (f"s_event_type NOT IN ({known_types})", "unknown_event_type:event_type is not one we know")
    )
    checks.append(("event_time IS NULL", "invalid_value:event_time is not a valid date-time"))
    checks.append(
        (
            f"event_time < TIMESTAMPTZ {_quote(rules.min_event_time.isoformat())}",
            f"event_time_too_old:event_time is before {rules.min_event_time.isoformat()}",
        )
    )
    checks.append(
        (
            # in microseconds since the epoch: adding an INTERVAL to a TIMESTAMPTZ would make DuckDB bind the whole
            # statement again on every execution (see ArrowSource)
            "epoch_us(event_time) > epoch_us(approximate_arrival_at) + "
            f"{int(rules.max_future_skew_seconds) * 1_000_000}",
            "event_time_in_future:event_time is later than the record's arrival plus the allowed clock skew",
        )
    )
    checks.append(
        (
            "t_quantity NOT IN ('UBIGINT', 'BIGINT', 'DOUBLE')",
            "wrong_type:quantity must be an integer",
        )
    )
    checks.append(
        (
            f"t_quantity IS NOT NULL AND (NOT {_is_integer('quantity')} "
            "OR n_quantity NOT BETWEEN 1 AND 10000)",
            "invalid_value:quantity must be an integer from 1 to 10000",
        )
    )
    revenue_present = "t_revenue IS NOT NULL"
    checks.append(
        (
            "t_revenue NOT IN ('UBIGINT', 'BIGINT', 'DOUBLE')",
            "wrong_type:revenue must be a number",
        )
    )
    checks.append(
        (
            f"{revenue_present} AND (n_revenue IS NULL OR n_revenue < 0 OR n_revenue > {rules.max_revenue})",
            f"revenue_out_of_range:revenue must be between 0 and {rules.max_revenue}",
        )
    )
    checks.append(
        (
            # JSON numbers are IEEE doubles; their shortest form must have at most two decimals (1.999e1 = 19.99).
            f"{revenue_present} AND revenue_exact IS NULL",
            "invalid_value:revenue has more than two decimals",
        )
    )
    checks.append(
        (
            "partition_key <> s_customer_id",
            "partition_key_mismatch:partition key must equal customer_id so one shard owns each customer",
        )
    )
    return checks


def _json_kind(raw: str) -> str:
    """The JSON type of a raw JSON member value (DuckDB's ``json_type``: VARCHAR, BIGINT, UBIGINT, DOUBLE, BOOLEAN,
    NULL, OBJECT or ARRAY), NULL for an absent member. One short call per field: DuckDB sets up every expression
    on every execution (a CASE on the first character cost more than ``json_type`` costs to run)."""
    return f"json_type({raw})"


def _build_sql(rules: ValidationRules, rows: str) -> str:
    """The statement over ``rows`` (a FROM item with RAW_RECORD_SCHEMA's columns and ``strict_json_error``)."""
    trimmed = "ltrim(doc, ' ' || chr(9) || chr(10) || chr(13))"  # JSON whitespace, not only spaces
    extracted = ", ".join(_quote(f"$.{f}") for f in _FIELDS)
    as_text = "{" + ", ".join(f'"{f}": "VARCHAR"' for f in _FIELDS) + "}"
    per_field = ",\n".join(
        f"{_json_kind(f'raw[{i}]')} AS t_{f}, texts.{f} AS s_{f}" for i, f in enumerate(_FIELDS, start=1)
    )
    # each number once, as the rules and the output read it (every expression costs DuckDB a set-up per batch)
    numbers = ", ".join(f"TRY_CAST(s_{f} AS DOUBLE) AS n_{f}" for f in _NUMBERS)
    rejection = "\n".join(
        f"      WHEN {cond} THEN {_quote(reason)}" for cond, reason in _rejection_rules(rules)
    )
    return f"""
WITH src AS (
  SELECT *, octet_length(data) AS size_bytes,
         CASE WHEN octet_length(data) <= {int(rules.max_record_bytes)} THEN try(decode(data)) END AS txt
  FROM {rows}
), parsed AS (
  SELECT *, CASE WHEN json_valid(txt) THEN txt END AS doc FROM src
), shaped AS (
  SELECT *, left({trimmed}, 1) = '{{' AS is_object FROM parsed
), extracted AS (
  SELECT *, CASE WHEN doc IS NOT NULL THEN (CASE WHEN is_object THEN 'OBJECT' ELSE 'OTHER' END) END AS doc_type,
         CASE WHEN is_object THEN json_extract(doc, [{extracted}]) END AS raw,
         CASE WHEN is_object THEN json_transform(doc, {_quote(as_text)}) END AS texts,
         CASE WHEN is_object THEN json_keys(doc) END AS doc_keys
  FROM shaped
), fields AS (
  SELECT shard_id, sequence_number, sub_sequence_number, partition_key, approximate_arrival_at, data,
         size_bytes, txt, doc, doc_type, doc_keys, strict_json_error,
         {per_field}
  FROM extracted
), typed AS (
  SELECT *,
         CASE WHEN t_event_time = 'VARCHAR' THEN TRY_CAST(s_event_time AS TIMESTAMPTZ) END AS event_time,
         {numbers},
         CASE WHEN t_revenue IN ('UBIGINT', 'BIGINT', 'DOUBLE')
                   AND regexp_full_match(s_revenue, '-?[0-9]{{1,16}}([.][0-9]{{1,2}})?')
              THEN TRY_CAST(s_revenue AS DECIMAL(18, 2)) END AS revenue_exact
  FROM fields
), judged AS (
  SELECT *,
    CASE
{rejection}
    END AS rejection
  FROM typed
)
SELECT shard_id, sequence_number, sub_sequence_number, partition_key, approximate_arrival_at,
       rejection,
       CASE WHEN rejection IS NOT NULL THEN data END AS raw_data,
       CAST(size_bytes AS BIGINT) AS raw_size_bytes,
       lower(s_event_id) AS event_id,
       s_event_type AS event_type,
       s_customer_id AS customer_id,
       s_session_id AS session_id,
       event_time,
       s_page_url AS page_url,
       s_product_id AS product_id,
       s_search_query AS search_query,
       TRY_CAST(n_quantity AS INTEGER) AS quantity,
       s_order_id AS order_id,
       TRY_CAST(revenue_exact AS DECIMAL(18, 2)) AS revenue,
       s_currency AS currency,
       TRY_CAST(n_schema_version AS INTEGER) AS schema_version
FROM judged
"""


#: The validator's rows: a raw record and whether its payload uses syntax only a lenient parser accepts.
_FLAGGED_SCHEMA: Final = RAW_RECORD_SCHEMA.append(pa.field("strict_json_error", pa.bool_(), nullable=False))


class RecordValidator:
    """Compiles the rules once; validates raw batches (RAW_RECORD_SCHEMA) on a DuckDB connection."""

    def __init__(self, rules: ValidationRules | None = None) -> None:
        self.rules = rules or ValidationRules()
        self._rows = ArrowSource("validator_rows", _FLAGGED_SCHEMA)
        self._sql = _build_sql(self.rules, self._rows.rows_sql)

    def decode(self, con: duckdb.DuckDBPyConnection, raw: pa.Table) -> DecodedBatch:
        """Split ``raw`` into events and rejects; every input row lands in exactly one of them."""
        errors = _strict_json_errors(raw.column("data"), self.rules.max_record_bytes)
        flagged = raw.append_column("strict_json_error", errors)
        judged = self._rows.run(con, self._sql, flagged)
        rejection = judged.column("rejection")
        events = judged.filter(pc.is_null(rejection)).select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
        rejected = judged.filter(pc.is_valid(rejection))
        # 'code:detail' is split here: splitting it in SQL cost more to set up, on every batch, than this costs to run
        parts = pc.split_pattern(rejected.column("rejection"), ":", max_splits=1)
        rejected = rejected.append_column("error_code", pc.list_element(parts, 0))
        rejected = rejected.append_column("error_detail", pc.list_element(parts, 1))
        rejects = rejected.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)
        return DecodedBatch(events=events, rejects=rejects)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _strict_json_errors(data: pa.ChunkedArray, max_bytes: int) -> pa.Array:
    """True where a payload uses syntax only a lenient parser accepts; checked strictly in Python, rarely. A payload
    over ``max_bytes`` is not searched: it is rejected as oversized before its JSON is looked at."""
    within = np.flatnonzero(pc.less_equal(pc.binary_length(data), max_bytes).fill_null(False).to_numpy())
    matched = pc.match_substring_regex(data.take(pa.array(within)), LENIENT_JSON_HINT).fill_null(False)
    hints = np.zeros(len(data), dtype=bool)
    hints[within] = matched.to_numpy(zero_copy_only=False)
    flags = np.zeros(len(data), dtype=bool)
    for index in np.flatnonzero(hints).tolist():
        try:
            json.loads(data[index].as_py(), parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            flags[index] = True
    return pa.array(flags, pa.bool_())


def run_prepared(
    con: duckdb.DuckDBPyConnection, name: str, sql: str, before_prepare: Callable[[], None] | None = None
) -> pa.Table:
    """Run ``sql`` as a prepared statement of ``con``, prepared once per connection, on first use (after
    ``before_prepare``, which registers what the statement needs on the connection)."""
    try:
        return con.sql(f"EXECUTE {name}").to_arrow_table()
    except duckdb.BinderException as error:
        if "does not exist" not in str(error):
            raise
    if before_prepare is not None:
        before_prepare()
    con.execute(f"PREPARE {name} AS {sql}")
    return con.sql(f"EXECUTE {name}").to_arrow_table()


class ArrowSource:
    """An Arrow table as the rows of a prepared statement that DuckDB does not bind again on each execution.

    DuckDB binds and optimizes a prepared statement again every time it runs it if the statement reads a table, a
    view, a registered Arrow table or a file, or adds an INTERVAL to a TIMESTAMPTZ (duckdb/duckdb#17237): for the
    exact validator that was 11.5 of its 14 ms on 21 records, on every batch holding a doubtful record. A
    statement whose rows come from a function call is bound once, when prepared. So the statement reads
    ``rows_sql``: a zero-argument Arrow function (this object, registered on each connection on first use, with
    side effects so that it is called on every execution) that returns the rows handed to ``run`` as one list of
    structs (no copy of the rows), which the statement unnests into the table's columns.

    DuckDB holds that list whole while the statement runs, so ``run`` hands over at most ``max_rows`` rows at a time
    (a batch of bad records can be doubtful whole, raw payloads and all): the statement must therefore treat each
    row on its own (no aggregate, no order across rows), as every statement given a source here does.
    """

    def __init__(self, prefix: str, schema: pa.Schema, max_rows: int = 16_384) -> None:
        self.schema = schema
        self.max_rows = max_rows
        self.function = f"{prefix}_{uuid.uuid4().hex[:12]}"  # one per source: its rows are its own
        self.rows_sql = f"(SELECT unnest({self.function}(), recursive := true))"
        self._rows: pa.Table | None = None
        self._statements: dict[str, str] = {}  # each statement's text -> its prepared name, ours alone

    def run(self, con: duckdb.DuckDBPyConnection, sql: str, table: pa.Table) -> pa.Table:
        """Run ``sql`` (which reads ``rows_sql``), prepared on ``con`` on first use, over ``table``'s columns of
        the source's schema, ``max_rows`` rows at a time; the results in the order of the rows."""
        name = self._statements.setdefault(sql, f"{self.function}_{len(self._statements)}")
        table = table.select(self.schema.names).cast(self.schema)
        results = []
        for start in range(0, max(table.num_rows, 1), self.max_rows):
            self._rows = table.slice(start, self.max_rows)
            try:
                results.append(run_prepared(con, name, sql, lambda: self._register(con)))
            finally:
                self._rows = None
        return results[0] if len(results) == 1 else pa.concat_tables(results)

    def __call__(self) -> pa.Array:
        if self._rows is None:
            raise RuntimeError(f"{self.function}() read outside ArrowSource.run")
        structs = self._rows.to_struct_array()
        rows = structs.chunk(0) if structs.num_chunks == 1 else structs.combine_chunks()  # one chunk: no copy
        return pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows)

    def _register(self, con: duckdb.DuckDBPyConnection) -> None:
        view = f"{self.function}_schema"
        con.register(view, self.schema.empty_table())
        try:
            columns = con.sql(f"DESCRIBE SELECT * FROM {view}").fetchall()
        finally:
            con.unregister(view)
        struct = con.sqltype("STRUCT(" + ", ".join(f'"{name}" {kind}' for name, kind, *_ in columns) + ")")
        try:
            con.create_function(
                self.function, self, [], duckdb.list_type(struct), type=PythonUDFType.ARROW, side_effects=True
            )
        except duckdb.NotImplementedException as error:  # registered already, by this very source
            if "already created" not in str(error):
                raise


def new_connection(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with UTC session time zone (timestamps are exported as UTC)."""
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    return con
