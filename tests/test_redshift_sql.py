"""The Redshift SQL in sql/redshift/ parses, matches the Parquet contract column for column, and computes what it says.

1. Every statement parses with sqlglot's Redshift dialect. The few Redshift-only statements sqlglot keeps as an
   opaque ``Command`` are listed in ``OPAQUE_STATEMENTS`` with the reason, and checked with a regex instead.
2. Every external (Spectrum) and COPY table has exactly the columns of its Arrow schema in schemas/contract.py, in
   schema order (COPY maps Parquet columns by position), with the Redshift type ``redshift_type`` maps the Arrow
   type to, plus only the Hive partition columns of the S3 layout.
3. VARCHAR lengths hold the longest value the event JSON schema and Kinesis allow.
4. The current-row and CLV views, transpiled to DuckDB, run on Parquet written by the product's own sink and give
   the same rows as ``clickstream.outputs.current_customer_rows`` and the docs/clv_example.md query.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

from clickstream.outputs import current_customer_rows
from runtime.settings import Settings
from schemas.contract import (
    CUSTOMER_AGGREGATES_SCHEMA,
    ERRORS_SCHEMA,
    EVENTS_SCHEMA,
    load_event_json_schema,
)
from schemas.layout import PARTITION_COLUMN, OutputLayout
from scoring.inputs import observation_end, shards_behind
from tests.test_clv_consumer import CLV_DOC, WorkerOutput, doc_code_blocks, run_worker_core

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "redshift"
SQL_FILES = sorted(SQL_DIR.glob("*.sql"))

#: Statements sqlglot (Redshift dialect) does not model and keeps as an opaque exp.Command, each with the reason
#: and the regex that checks it instead. Every opaque statement must match one entry, every entry must be used.
OPAQUE_STATEMENTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "kinesis external schema": (
        "sqlglot has no grammar for CREATE EXTERNAL SCHEMA ... FROM KINESIS (Redshift streaming ingestion)",
        re.compile(
            r"CREATE EXTERNAL SCHEMA IF NOT EXISTS kinesis_clickstream\s+FROM KINESIS\s+"
            r"IAM_ROLE '\$\{REDSHIFT_IAM_ROLE_ARN\}'"
        ),
    ),
    "data catalog external schema": (
        "sqlglot has no grammar for CREATE EXTERNAL SCHEMA ... FROM DATA CATALOG (Redshift Spectrum)",
        re.compile(
            r"CREATE EXTERNAL SCHEMA IF NOT EXISTS spectrum_clickstream\s+FROM DATA CATALOG\s+"
            r"DATABASE '[a-z_]+'\s+IAM_ROLE '\$\{REDSHIFT_IAM_ROLE_ARN\}'\s+"
            r"CREATE EXTERNAL DATABASE IF NOT EXISTS"
        ),
    ),
    "partition set location": (
        "sqlglot has no grammar for ALTER TABLE ... PARTITION (...) SET LOCATION (Redshift Spectrum)",
        re.compile(
            r"ALTER TABLE spectrum_clickstream\.clv_scores\s+PARTITION \(as_of_yyyymmdd='\$\{AS_OF_YYYYMMDD\}'\)\s+"
            r"SET LOCATION 's3://\$\{BUCKET\}/\$\{PREFIX\}/clv/as_of_yyyymmdd=\$\{AS_OF_YYYYMMDD\}/run=\$\{RUN_ID\}/'"
        ),
    ),
    "redshift ml create model": (
        "sqlglot has no grammar for Redshift ML's CREATE MODEL (checked further in tests/test_clv_redshift_sql.py)",
        re.compile(
            r"CREATE MODEL clickstream\.customer_value_90d\s+FROM \(.*\)\s+TARGET future_revenue\s+"
            r"FUNCTION predict_revenue_90d\s+IAM_ROLE '\$\{REDSHIFT_IAM_ROLE_ARN\}'.*",
            re.DOTALL,
        ),
    ),
}

#: The tables that mirror a Parquet output: (Arrow schema, Hive partition columns of the S3 layout).
TABLES: dict[str, tuple[pa.Schema, dict[str, str]]] = {
    "spectrum_clickstream.events": (EVENTS_SCHEMA, {PARTITION_COLUMN: "INTEGER"}),
    "spectrum_clickstream.customer_aggregates": (CUSTOMER_AGGREGATES_SCHEMA, {PARTITION_COLUMN: "INTEGER"}),
    "spectrum_clickstream.errors": (ERRORS_SCHEMA, {PARTITION_COLUMN: "INTEGER"}),
    "clickstream.customer_aggregates_history": (CUSTOMER_AGGREGATES_SCHEMA, {}),
    "clickstream.events": (EVENTS_SCHEMA, {}),
}

#: Bytes a VARCHAR column must hold. Event fields: from the JSON schema (below). Kinesis identifiers: shard ids
#: are at most 128 characters, sequence numbers at most 129 digits, partition keys 256 Unicode characters.
KINESIS_VARCHAR_BYTES = {
    "shard_id": 128,
    "sequence_number": 129,
    "updated_through_sequence": 129,
    "partition_key": 4 * 256,
    "error_code": 32,
    "error_detail": 4096,
}


def split_statements(sql: str) -> list[str]:
    """Statements of a SQL script: ``--`` and ``/* */`` comments dropped, split on ``;`` outside quotes."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end == -1 else end + 2
            continue
        char = sql[i]
        if char in "'\"":
            end = i + 1
            while end < n and not (sql[end] == char and sql[end + 1 : end + 2] != char):
                end += 2 if sql[end] == char else 1  # a doubled quote escapes itself
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        if char == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current).strip())
    return [statement for statement in statements if statement]


def parse(statement: str) -> exp.Expression:
    return sqlglot.parse_one(statement, read="redshift", error_level=sqlglot.ErrorLevel.RAISE)


def all_statements() -> list[tuple[str, str]]:
    return [(path.name, statement) for path in SQL_FILES for statement in split_statements(path.read_text())]


def parsed_statements() -> list[tuple[str, exp.Expression]]:
    return [(name, parse(statement)) for name, statement in all_statements()]


def redshift_type(arrow_type: pa.DataType) -> str:
    """The Redshift type of an Arrow type of the contract (VARCHAR without its length, checked separately)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_int32(arrow_type):
        return "INTEGER"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_float64(arrow_type):
        return "DOUBLE PRECISION"
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        # Parquet TIMESTAMP(isAdjustedToUTC, MICROS): UTC instants, read as TIMESTAMP by Spectrum and COPY.
        assert arrow_type.unit == "us" and arrow_type.tz == "UTC", arrow_type
        return "TIMESTAMP"
    if pa.types.is_binary(arrow_type):
        return "VARBYTE"
    raise AssertionError(f"no Redshift mapping for {arrow_type}")


def column_type(column: exp.ColumnDef) -> str:
    """A parsed column's type in the same notation as ``redshift_type``."""
    kind = column.args["kind"]
    assert isinstance(kind, exp.DataType)
    if kind.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.VARBINARY):
        return "VARCHAR" if kind.this == exp.DataType.Type.VARCHAR else "VARBYTE"
    return kind.sql("redshift")


def varchar_length(column: exp.ColumnDef) -> int | None:
    params = column.args["kind"].expressions
    return int(params[0].this.this) if params else None


def created_tables() -> dict[str, exp.Create]:
    tables = {}
    for _, expression in parsed_statements():
        if isinstance(expression, exp.Create) and expression.kind == "TABLE":
            schema = expression.this
            if isinstance(schema, exp.Schema) and all(
                isinstance(c, exp.ColumnDef) for c in schema.expressions
            ):
                tables[schema.this.sql("redshift")] = expression
    return tables


def partition_columns(create: exp.Create) -> dict[str, str]:
    prop = create.find(exp.PartitionedByProperty)
    if prop is None:
        return {}
    return {column.name: column_type(column) for column in prop.this.expressions}


def json_schema_varchar_bytes() -> dict[str, int]:
    """Longest UTF-8 byte length of each string field of the event JSON schema."""
    properties = load_event_json_schema()["properties"]
    lengths = {}
    for name, spec in properties.items():
        if "enum" in spec:
            lengths[name] = max(len(value) for value in spec["enum"])
        elif spec.get("format") == "uuid":
            lengths[name] = 36
        elif spec.get("type") == "string" and "maxLength" in spec:
            ascii_only = (
                re.fullmatch(r"\^\[[A-Za-z0-9_.:@\\-]+\](\{\d+\}|\+)\$", spec.get("pattern", "")) is not None
            )
            lengths[name] = spec["maxLength"] * (1 if ascii_only else 4)
        elif spec.get("type") == "string" and "pattern" in spec:
            lengths[name] = int(re.search(r"\{(\d+)\}", spec["pattern"]).group(1))
    return lengths


# ------------------------------------------------------------------------------------------------- parsing
def test_every_file_has_statements() -> None:
    assert [path.name for path in SQL_FILES] == [
        "01_streaming_ingestion.sql",
        "02_spectrum_external_tables.sql",
        "03_copy_tables.sql",
        "04_current_customers_view.sql",
        "05_clv_scores.sql",
        "06_clv_redshift_ml.sql",
    ]
    for path in SQL_FILES:
        assert split_statements(path.read_text()), path.name


@pytest.mark.parametrize(("file_name", "statement"), all_statements(), ids=lambda value: str(value)[:60])
def test_statement_parses_with_the_redshift_dialect(file_name: str, statement: str) -> None:
    expression = parse(statement)
    if isinstance(expression, exp.Command):
        matches = [key for key, (_, pattern) in OPAQUE_STATEMENTS.items() if pattern.fullmatch(statement)]
        assert matches, f"{file_name}: sqlglot cannot parse this statement and it is not in OPAQUE_STATEMENTS"
    else:
        assert expression.sql("redshift")  # and it can be generated again


def test_every_opaque_statement_entry_is_still_needed() -> None:
    opaque = [statement for _, statement in all_statements() if isinstance(parse(statement), exp.Command)]
    for key, (_, pattern) in OPAQUE_STATEMENTS.items():
        assert sum(bool(pattern.fullmatch(statement)) for statement in opaque) == 1, key


def test_placeholders_are_the_documented_ones() -> None:
    used = {name for path in SQL_FILES for name in re.findall(r"\$\{(\w+)\}", path.read_text())}
    assert used == {
        "REDSHIFT_IAM_ROLE_ARN",
        "BUCKET",
        "PREFIX",
        "LOAD_DAY",
        "AS_OF_YYYYMMDD",
        "RUN_ID",
        "ML_BUCKET",
    }


# ------------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("table", sorted(TABLES))
def test_table_columns_are_the_parquet_contract(table: str) -> None:
    schema, partitions = TABLES[table]
    create = created_tables()[table]
    columns = create.this.expressions
    assert [column.name for column in columns] == [field.name.lower() for field in schema]  # "T" is t
    for column, field in zip(columns, schema, strict=True):
        assert column_type(column) == redshift_type(field.type), f"{table}.{column.name}"
    assert partition_columns(create) == partitions
    is_external = create.find(exp.ExternalProperty) is not None
    assert is_external == table.startswith("spectrum_clickstream.")


@pytest.mark.parametrize("table", sorted(TABLES))
def test_varchar_columns_hold_the_longest_allowed_value(table: str) -> None:
    needed = {**json_schema_varchar_bytes(), **KINESIS_VARCHAR_BYTES}
    for column in created_tables()[table].this.expressions:
        if column_type(column) == "VARCHAR":
            assert column.name in needed, f"{table}.{column.name}: no known maximum length"
            assert (varchar_length(column) or 256) >= needed[column.name], f"{table}.{column.name}"


def test_spectrum_errors_reads_an_oversized_reject_truncated_not_null() -> None:
    """A reject may be longer than Redshift's largest VARBYTE; Spectrum's default would read its raw_data as NULL."""
    properties = {
        (statement.this.sql("redshift"), pair.this.name): pair.expression.name
        for _, statement in parsed_statements()
        if isinstance(statement, exp.Alter)
        for action in statement.args.get("actions") or []
        if isinstance(action, exp.AlterSet)
        for pair in action.expressions
        if isinstance(pair, exp.EQ)
    }
    for handling in ("surplus_bytes_handling", "surplus_char_handling"):
        assert properties.get(("spectrum_clickstream.errors", handling)) == "TRUNCATE", handling


def test_copy_tables_are_not_null_where_the_contract_is() -> None:
    for table in ("clickstream.customer_aggregates_history", "clickstream.events"):
        schema, _ = TABLES[table]
        for column, field in zip(created_tables()[table].this.expressions, schema, strict=True):
            not_null = column.find(exp.NotNullColumnConstraint) is not None
            assert not_null == (not field.nullable), f"{table}.{column.name}"


def test_copy_loads_parquet_into_the_contract_tables() -> None:
    copies = [e for _, e in parsed_statements() if isinstance(e, exp.Copy)]
    assert len(copies) == 3
    for copy in copies:
        text = copy.sql("redshift")
        assert "FORMAT PARQUET" in text and "IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'" in text
        if "/clv/" in text:  # a committed scoring run's folder (05_clv_scores.sql)
            assert re.search(r"FROM 's3://\$\{BUCKET\}/\$\{PREFIX\}/clv/", text)
            continue
        # Strict loads: the manifest of committed files that `clickstream manifest --upload` writes.
        match = re.search(r"FROM 's3://\$\{BUCKET\}/\$\{PREFIX\}/(\S+)-\$\{LOAD_DAY\}\.manifest'", text)
        assert match and text.rstrip().endswith("MANIFEST"), text
        output = match.group(1).rsplit("/", 1)[-1]
        layout_key = OutputLayout("${PREFIX}").manifest_key(output, 20260301)
        assert f"{match.group(1)}-20260301.manifest" == layout_key.removeprefix("${PREFIX}/")


def created_view(name: str) -> exp.Create:
    views = [e for _, e in parsed_statements() if isinstance(e, exp.Create) and e.kind == "VIEW"]
    return next(view for view in views if view.this.sql("redshift") == name)


def test_streaming_view_reads_the_stream_and_names_every_event_field() -> None:
    raw = created_view("clickstream_raw")
    assert raw.find(exp.MaterializedProperty) is not None
    stream = Settings.model_fields["stream_name"].default
    assert raw.expression.find(exp.Table).sql("redshift") == f'kinesis_clickstream."{stream}"'
    sql = raw.sql("redshift")
    assert "CAN_JSON_PARSE(kinesis_data)" in sql and "JSON_PARSE(kinesis_data)" in sql
    live = created_view("clickstream_events_live")
    properties = load_event_json_schema()["properties"]
    assert set(properties) <= set(live.expression.named_selects)


# ------------------------------------------------------------------------------------------------- semantics
def to_duckdb(expression: exp.Expression) -> str:
    expression = expression.copy()
    if isinstance(expression, exp.Create):
        expression.set("no_schema_binding", False)  # late-binding views are a Redshift notion
    return expression.sql("duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE)


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory: pytest.TempPathFactory) -> WorkerOutput:
    return run_worker_core(tmp_path_factory.mktemp("redshift"), customers=400, events=6000, seed=3)


def build_warehouse(worker_output: WorkerOutput) -> duckdb.DuckDBPyConnection:
    """The COPY tables and views of sql/redshift, run by DuckDB on the product's Parquet output."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA clickstream; CREATE SCHEMA spectrum_clickstream")
    history = created_tables()["clickstream.customer_aggregates_history"]
    con.execute(to_duckdb(history))
    # COPY ... FORMAT AS PARQUET maps columns by position: so does INSERT ... SELECT *.
    glob = worker_output.glob("customer_aggregates")
    con.execute(
        "INSERT INTO clickstream.customer_aggregates_history "
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
    )
    # Spectrum's view of the same files, with the partition column from the key (arrival_yyyymmdd=YYYYMMDD).
    con.execute(
        "CREATE VIEW spectrum_clickstream.customer_aggregates AS "
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
    )
    for name, expression in parsed_statements():
        if name.startswith("04_"):
            con.execute(to_duckdb(expression))
    return con


@pytest.fixture(scope="module")
def warehouse(worker_output: WorkerOutput) -> duckdb.DuckDBPyConnection:
    return build_warehouse(worker_output)


def utc_naive(row: tuple) -> tuple:
    """Redshift TIMESTAMP holds the UTC wall time of the contract's timestamp[us, UTC] values."""
    return tuple(
        value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) and value.tzinfo else value
        for value in row
    )


def test_current_views_pick_the_highest_version(worker_output: WorkerOutput, warehouse) -> None:
    rows = current_customer_rows(warehouse, worker_output.glob("customer_aggregates")).fetchall()
    oracle = [utc_naive(row) for row in rows]
    columns = ", ".join(f'"{field.name}"' for field in CUSTOMER_AGGREGATES_SCHEMA)
    for view in ("clickstream.customer_current", "clickstream.customer_current_spectrum"):
        rows = [utc_naive(row) for row in warehouse.sql(f"SELECT {columns} FROM {view}").fetchall()]
        assert sorted(rows, key=str) == sorted(oracle, key=str), view


def test_current_row_is_the_highest_version_even_if_an_older_one_is_newer(
    worker_output: WorkerOutput,
) -> None:
    """A lower version with a later as_of (e.g. a shard restarted from scratch) must not become current."""
    con = build_warehouse(worker_output)
    history = "clickstream.customer_aggregates_history"
    latest = f"SELECT customer_id, max(version) FROM {history} GROUP BY 1 ORDER BY 1 LIMIT 1"
    customer, version = con.sql(latest).fetchall()[0]
    con.execute(
        f"INSERT INTO {history} SELECT * REPLACE (version - 1 AS version, as_of + INTERVAL 30 DAY AS as_of) "
        f"FROM {history} WHERE customer_id = ? AND version = ?",
        [customer, version],
    )
    current = con.sql(
        "SELECT version FROM clickstream.customer_current WHERE customer_id = ?", params=[customer]
    )
    assert current.fetchall() == [(version,)]


def test_both_current_views_rank_like_the_summary() -> None:
    for name in ("clickstream.customer_current", "clickstream.customer_current_spectrum"):
        (window,) = created_view(name).find_all(exp.Window)
        assert [p.sql("redshift").split(".")[-1] for p in window.args["partition_by"]] == ["customer_id"], (
            name
        )
        order = [o.sql("redshift").split(".")[-1] for o in window.args["order"].expressions]
        assert order == ["version DESC", "as_of DESC"], name
        assert created_view(name).find(exp.Where).sql("redshift") == "WHERE row_rank = 1"


def test_clv_view_equals_the_documented_python_inputs(worker_output: WorkerOutput, warehouse) -> None:
    namespace: dict = {}
    exec(compile(doc_code_blocks()[0], f"{CLV_DOC}:reading", "exec"), namespace)
    expected = namespace["clv_inputs"](str(worker_output.output_dir("customer_aggregates")))
    rows = warehouse.sql(
        "SELECT customer_id, frequency, recency, t, monetary_value FROM clickstream.customer_rfm_for_clv "
        "ORDER BY customer_id"
    ).fetchall()
    assert rows == list(expected.itertuples(index=False, name=None))
    assert len(rows) > 100
    recomputed = warehouse.sql(
        "SELECT count(*) FILTER (WHERE t <> row_t), count(*) FILTER (WHERE t < row_t OR t < recency) "
        "FROM clickstream.customer_rfm_for_clv"
    ).fetchall()[0]
    assert recomputed[0] > 0 and recomputed[1] == 0


#: The common observation end of every CLV view: the newest as_of, not past the query's clock unless a purchase is
#: (as scoring.inputs.observation_end takes it for `clickstream score`).
COMMON_END = "LEAST(MAX(as_of), GREATEST(GETDATE(), MAX(last_purchase_at)))"


@pytest.mark.parametrize("purchase_ahead", [False, True])
def test_clv_view_ends_at_the_query_clock_when_an_event_is_stamped_ahead_unless_a_purchase_is(
    worker_output: WorkerOutput, purchase_ahead: bool
) -> None:
    """A client clock ahead (events are taken up to CLICKSTREAM_MAX_FUTURE_SKEW_SECONDS after their arrival) can put
    the newest as_of in a day not yet begun: T ends at the query's clock, as `clickstream score` and the documented
    query end it, unless a purchase is in that day."""
    con = build_warehouse(worker_output)
    history = "clickstream.customer_aggregates_history"
    buyer, version = con.sql(
        "SELECT customer_id, version FROM clickstream.customer_current WHERE frequency IS NOT NULL "
        "ORDER BY customer_id LIMIT 1"
    ).fetchall()[0]
    # a UTC wall time, as Redshift holds it
    ahead = (datetime.now(UTC) + timedelta(days=3)).replace(tzinfo=None)
    purchase = ", last_purchase_at = ?" if purchase_ahead else ""
    con.execute(
        f"UPDATE {history} SET as_of = ?, last_event_at = ?{purchase} WHERE customer_id = ? AND version = ?",
        [ahead, ahead, *([ahead] if purchase_ahead else []), buyer, version],
    )
    before = datetime.now(UTC).replace(tzinfo=None)
    rows = con.sql(
        "SELECT customer_id, frequency, recency, t, monetary_value, common_as_of "
        "FROM clickstream.customer_rfm_for_clv ORDER BY customer_id"
    ).fetchall()
    after = datetime.now(UTC).replace(tzinfo=None)

    (end,) = {utc_naive((row[5],))[0] for row in rows}
    if purchase_ahead:
        assert end == ahead
    else:
        assert before <= end <= after
    # the documented query, and `clickstream score`'s observation end, on the same current rows
    namespace: dict = {}
    exec(compile(doc_code_blocks()[0], f"{CLV_DOC}:reading", "exec"), namespace)
    documented = duckdb.connect()
    documented.execute("SET TimeZone = 'UTC'")
    aggregates = con.sql(f"SELECT * FROM {history}").to_arrow_table()
    documented.register("customer_aggregates", aggregates)
    documented_rows = documented.sql(namespace["CLV_INPUTS_SQL"]).fetchall()
    # else its clock, read later, ends a day after the view's
    same_day = datetime.now(UTC).date() == before.date()
    assert [row[:3] + row[4:] for row in documented_rows] == [row[:3] + row[4:5] for row in rows]
    if same_day or purchase_ahead:
        assert [row[3] for row in documented_rows] == [row[3] for row in rows]
    current = con.sql(  # the contract's timestamp[us, UTC], of Redshift's UTC wall times
        "SELECT last_event_at::TIMESTAMPTZ AS last_event_at, last_purchase_at::TIMESTAMPTZ AS last_purchase_at "
        "FROM clickstream.customer_current"
    ).to_arrow_table()
    scored_end = observation_end(current, not_after=after.replace(tzinfo=UTC))
    # score's end is the view's, its clock read a moment later (a midnight in between moves it a day)
    assert end.date() <= scored_end.date() <= max(end, after).date()


def test_every_clv_view_takes_the_common_observation_end() -> None:
    """The CLV inputs and both Redshift ML views end observation where `clickstream score` does (COMMON_END): no
    bare MAX(as_of) is left in them."""
    common_end = sqlglot.parse_one(COMMON_END, read="redshift").sql("redshift")
    for view in (
        "clickstream.customer_rfm_for_clv",
        "clickstream.clv_training",
        "clickstream.customer_value_ml",
    ):
        sql = created_view(view).sql("redshift")
        assert sql.count(common_end) == sql.count("MAX(as_of)") == 1, view


def test_shard_marks_say_what_score_says_about_shards_behind(worker_output: WorkerOutput) -> None:
    """The check before modelling from the CLV view: each shard's newest mark among the current rows, and the days
    it is behind the common end, as `clickstream score` judges it (scoring.inputs.shards_behind)."""
    con = build_warehouse(worker_output)
    history = "clickstream.customer_aggregates_history"
    # one shard stopped two days ago: its rows' marks are moved back (it wrote nothing since)
    lagging = con.sql(f"SELECT min(shard_id) FROM {history}").fetchall()[0][0]
    con.execute(f"UPDATE {history} SET as_of = as_of - INTERVAL 2 DAY WHERE shard_id = ?", [lagging])
    marks = dict(con.sql("SELECT shard_id, days_behind FROM clickstream.shard_marks").fetchall())
    current = con.sql("SELECT * FROM clickstream.customer_current").to_arrow_table()
    end = max(current.column("as_of").to_pylist())
    behind = shards_behind(current, end)  # both UTC wall times, as Redshift's TIMESTAMP holds them
    assert set(behind) == {lagging} == {shard for shard, days in marks.items() if days >= 1}
    assert len(marks) > 1 and marks[lagging] == 2
    # a day less a minute behind the newest mark is not a day behind (DATEDIFF(day, ...) counted the midnight)
    marks_at = dict(con.sql("SELECT shard_id, shard_as_of FROM clickstream.shard_marks").fetchall())
    shift = (end - marks_at[lagging]) - timedelta(days=1, minutes=-1)
    con.execute(
        f"UPDATE {history} SET as_of = as_of + to_microseconds(?::BIGINT) WHERE shard_id = ?",
        [shift // timedelta(microseconds=1), lagging],
    )
    marks = dict(con.sql("SELECT shard_id, days_behind FROM clickstream.shard_marks").fetchall())
    current = con.sql("SELECT * FROM clickstream.customer_current").to_arrow_table()
    assert marks[lagging] == 0 and not shards_behind(current, end)


def test_history_load_keeps_two_versions_of_a_flush_end_shared_inside_one_aggregated_record(
    worker_output: WorkerOutput,
) -> None:
    """updated_through_sequence has no sub-sequence: two flushes ending inside one KPL-aggregated record share it,
    and the later one's row (a higher version) must not be taken for the earlier one's."""
    insert = next(
        e
        for name, e in parsed_statements()
        if name.startswith("03_") and isinstance(e, exp.Insert) and "customer_aggregates" in e.this.sql()
    )
    con = build_warehouse(worker_output)
    history = "clickstream.customer_aggregates_history"
    con.execute(
        f"CREATE TEMP TABLE customer_aggregates_stage AS SELECT * REPLACE (version + 1 AS version) FROM {history} "
        "QUALIFY row_number() OVER (ORDER BY customer_id, version DESC) = 1"
    )
    before = con.sql(f"SELECT count(*) FROM {history}").fetchall()[0][0]
    con.execute(to_duckdb(insert))
    assert con.sql(f"SELECT count(*) FROM {history}").fetchall()[0][0] == before + 1


def test_history_load_is_idempotent(worker_output: WorkerOutput, warehouse) -> None:
    """The staging + anti-join INSERT of 03_copy_tables.sql adds nothing when a partition is loaded again."""
    insert = next(
        e
        for name, e in parsed_statements()
        if name.startswith("03_") and isinstance(e, exp.Insert) and "customer_aggregates" in e.this.sql()
    )
    history = "clickstream.customer_aggregates_history"
    count = f"SELECT count(*) FROM {history}"
    before = warehouse.sql(count).fetchall()[0][0]
    glob = worker_output.glob("customer_aggregates")
    # The COPY into the stage: every file again, while the history misses the latest row of one shard's customers
    # (their older rows are still there, so a key without the flush's sequence number would skip them).
    warehouse.execute(
        "CREATE TEMP TABLE customer_aggregates_stage AS "
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
    )
    warehouse.execute(
        f"DELETE FROM {history} WHERE shard_id = 'shardId-000000000001' AND version > 1 "
        f"AND (customer_id, version) IN (SELECT customer_id, max(version) FROM {history} GROUP BY 1)"
    )
    try:
        missing = before - warehouse.sql(count).fetchall()[0][0]
        warehouse.execute(to_duckdb(insert))
        after_first = warehouse.sql(count).fetchall()[0][0]
        warehouse.execute(to_duckdb(insert))
        after_second = warehouse.sql(count).fetchall()[0][0]
    finally:
        warehouse.execute("DROP TABLE customer_aggregates_stage")
    assert missing > 0
    assert after_first == after_second == before


def test_loading_events_twice_adds_nothing_and_keeps_a_resend_applied_after_the_window() -> None:
    """03's events load keys rows by stream position: the archive holds each applied delivery once, and a re-send
    the worker applied again after its de-duplication window (same event id, later position) is a row too, as the
    aggregates count it twice."""
    statements = [e for name, e in parsed_statements() if name.startswith("03_")]
    create = created_tables()["clickstream.events"]
    insert = next(e for e in statements if isinstance(e, exp.Insert) and "events_stage" in e.sql())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA clickstream")
    con.execute(to_duckdb(create))
    at = datetime(2026, 3, 1, tzinfo=UTC)
    first = {
        "event_id": "e-1",
        "event_type": "page_view",
        "customer_id": "c-1",
        "session_id": "s-1",
        "event_time": at,
        "schema_version": 1,
        "shard_id": "shardId-000000000000",
        "sequence_number": "100",
        "sub_sequence_number": 0,
        "approximate_arrival_at": at,
    }
    resent = first | {"sequence_number": "900", "approximate_arrival_at": datetime(2026, 3, 20, tzinfo=UTC)}

    def load(rows: list[dict[str, Any]]) -> None:
        """One day's load: the stage filled as its COPY would (by position), then 03's INSERT."""
        con.register("staged", pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA))
        con.execute("CREATE OR REPLACE TEMP TABLE events_stage AS SELECT * FROM staged")
        con.execute(to_duckdb(insert))

    load([first])  # March 1st
    load([resent])  # March 20th: the re-send, 19 days later
    load([resent])  # March 20th loaded again
    rows = con.sql("SELECT event_id, sequence_number FROM clickstream.events ORDER BY 2").fetchall()
    assert rows == [("e-1", "100"), ("e-1", "900")]
