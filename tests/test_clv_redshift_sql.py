"""Redshift SQL for clv/ (05_clv_scores.sql) and the Redshift ML alternative (06_clv_redshift_ml.sql).

Parsing of every statement is covered by tests/test_redshift_sql.py (same parser, same opaque-statement list). Here:
the clv tables are the Parquet contract column for column; the load is idempotent; the customer_value view, the
Redshift ML training view and the scoring view, transpiled to DuckDB, compute what they say on real output.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from sqlglot import exp

from clickstream.current_rows import read_local_rows
from clickstream.score import LocalStore, read_scores, score_customers
from runtime.settings import Settings
from schemas.contract import CLV_SCORES_SCHEMA
from schemas.layout import OutputLayout
from scoring.rfm import SEGMENTS
from tests.clv_support import worker_bucket
from tests.moto_support import isolate_environment
from tests.test_redshift_sql import (
    all_statements,
    column_type,
    created_tables,
    parsed_statements,
    partition_columns,
    redshift_type,
    to_duckdb,
    varchar_length,
)

EXTERNAL, LOADED = "spectrum_clickstream.clv_scores", "clickstream.clv_scores"


def statements(prefix: str) -> list[exp.Expression]:
    return [expression for name, expression in parsed_statements() if name.startswith(prefix)]


@pytest.mark.parametrize("table", [EXTERNAL, LOADED])
def test_clv_tables_are_the_parquet_contract(table: str) -> None:
    create = created_tables()[table]
    columns = create.this.expressions
    assert [column.name for column in columns] == [field.name.lower() for field in CLV_SCORES_SCHEMA]
    for column, field in zip(columns, CLV_SCORES_SCHEMA, strict=True):
        assert column_type(column) == redshift_type(field.type), column.name
        if table == LOADED:
            assert (column.find(exp.NotNullColumnConstraint) is not None) == (not field.nullable), column.name
    assert partition_columns(create) == ({"as_of_yyyymmdd": "INTEGER"} if table == EXTERNAL else {})


def test_clv_varchar_columns_hold_their_longest_value() -> None:
    longest = {"customer_id": 64, "rfm_cell": 3, "segment": max(len(name) for name in SEGMENTS), "run_id": 16}
    for table in (EXTERNAL, LOADED):
        for column in created_tables()[table].this.expressions:
            if column_type(column) == "VARCHAR":
                assert (varchar_length(column) or 256) >= longest[column.name], (table, column.name)


def test_partition_and_copy_read_only_the_committed_run_folder() -> None:
    (alter,) = [e for e in statements("05_") if isinstance(e, exp.Alter)]
    text = alter.sql("redshift")
    assert "ADD IF NOT EXISTS PARTITION" in text
    assert text.endswith(
        "LOCATION 's3://${BUCKET}/${PREFIX}/clv/as_of_yyyymmdd=${AS_OF_YYYYMMDD}/run=${RUN_ID}/'"
    )
    # ... and every run moves it there: a re-scored day's new run replaces (deletes) the folder it pointed at
    text = "\n".join(statement for name, statement in all_statements() if name.startswith("05_"))
    assert text.index("ADD IF NOT EXISTS PARTITION") < text.index("SET LOCATION")
    (copy,) = [e for e in statements("05_") if isinstance(e, exp.Copy)]
    # COPY loads every object under its prefix: the parts' own prefix leaves out the run's _model.json
    assert "clv/as_of_yyyymmdd=${AS_OF_YYYYMMDD}/run=${RUN_ID}/part-'" in copy.sql("redshift")
    layout, day = OutputLayout("rfm"), date(2026, 4, 30)
    folder = layout.clv_run_prefix(day, "r")
    assert layout.clv_data_key(day, "r", 7).startswith(f"{folder}part-")
    assert not layout.clv_model_key(day, "r").startswith(f"{folder}part-")


# ------------------------------------------------------------------------------------------------ semantics in DuckDB
def load_run(con: duckdb.DuckDBPyConnection, scored: pa.Table) -> None:
    """05's load statements, with the stage filled as its COPY would."""
    con.register("scored_run", scored)
    con.execute("CREATE TEMP TABLE clv_scores_stage AS SELECT * FROM scored_run")
    for expression in statements("05_"):
        if isinstance(expression, exp.Delete | exp.Insert):
            con.execute(to_duckdb(expression))
    con.execute("DROP TABLE clv_scores_stage")
    con.unregister("scored_run")


@pytest.fixture(scope="module")
def warehouse(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[duckdb.DuckDBPyConnection, dict[str, object]]:
    root = tmp_path_factory.mktemp("warehouse")
    content = worker_bucket(customers=300, events=9000, seed=4, days=150)  # a 90-day label window fits
    for key, body in content.objects.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch)
        settings = Settings(prefix="rfm")
    store = LocalStore(root / "out")
    rows = read_local_rows(root, settings)
    first = score_customers(lambda: rows, store, settings, say=lambda _: None).commit
    next_day = datetime.combine(first.as_of.date(), datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    second = score_customers(lambda: rows, store, settings, as_of=next_day, say=lambda _: None).commit
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA clickstream; CREATE SCHEMA spectrum_clickstream")
    con.execute(to_duckdb(created_tables()["clickstream.customer_aggregates_history"]))
    glob = str(root / "rfm/customer_aggregates") + "/**/*.parquet"
    con.execute(
        "INSERT INTO clickstream.customer_aggregates_history "
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
    )
    con.execute(
        "CREATE VIEW spectrum_clickstream.customer_aggregates AS "
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
    )
    for expression in statements("04_"):
        con.execute(to_duckdb(expression))
    con.execute(to_duckdb(created_tables()[LOADED]))
    for commit in (first, second):
        load_run(con, read_scores(store, commit))
    for expression in statements("05_"):
        if isinstance(expression, exp.Create) and expression.kind == "VIEW":
            con.execute(to_duckdb(expression))
    for expression in statements("06_"):
        if isinstance(expression, exp.Create) and expression.this.sql() == "clickstream.clv_training":
            con.execute(to_duckdb(expression))
    latest = second
    return con, {"latest": latest, "store": store, "root": root}


def test_loading_a_run_again_replaces_its_day(warehouse: tuple[duckdb.DuckDBPyConnection, dict]) -> None:
    con, facts = warehouse
    per_day = dict(con.sql("SELECT as_of, count(*) FROM clickstream.clv_scores GROUP BY 1").fetchall())
    assert len(per_day) == 2 and set(per_day.values()) == {facts["latest"].rows}
    load_run(con, read_scores(facts["store"], facts["latest"]))
    assert (
        dict(con.sql("SELECT as_of, count(*) FROM clickstream.clv_scores GROUP BY 1").fetchall()) == per_day
    )


def test_a_day_scored_again_at_a_later_time_keeps_only_the_new_run(
    warehouse: tuple[duckdb.DuckDBPyConnection, dict],
) -> None:
    """A day is scored again (the default as_of, the latest event time, has moved on since): its load must replace
    the day's rows, not add a second run beside them."""
    con, facts = warehouse
    before = dict(
        con.sql("SELECT CAST(as_of AS DATE), count(*) FROM clickstream.clv_scores GROUP BY 1").fetchall()
    )
    original = read_scores(facts["store"], facts["latest"])
    as_of = original.column("as_of")[0].as_py()
    later = as_of + timedelta(hours=1 if as_of.hour < 12 else -1)  # another time of the same day
    rescored = original.set_column(
        original.schema.get_field_index("as_of"),
        "as_of",
        pa.array([later] * original.num_rows, original.schema.field("as_of").type),
    ).set_column(
        original.schema.get_field_index("run_id"),
        "run_id",
        pa.array(["rescored00000000"] * original.num_rows),
    )
    try:
        load_run(con, rescored)
        runs = con.sql(
            "SELECT run_id, count(*) FROM clickstream.clv_scores WHERE CAST(as_of AS DATE) = ? GROUP BY 1",
            params=[as_of.date()],
        ).fetchall()
        assert runs == [("rescored00000000", original.num_rows)]
    finally:
        load_run(con, original)  # as it was, for the other tests of the module
    after = dict(
        con.sql("SELECT CAST(as_of AS DATE), count(*) FROM clickstream.clv_scores GROUP BY 1").fetchall()
    )
    assert after == before


def test_customer_value_joins_every_current_customer_to_the_newest_scores(
    warehouse: tuple[duckdb.DuckDBPyConnection, dict],
) -> None:
    con, facts = warehouse
    latest = facts["latest"]
    current = con.sql("SELECT count(*) FROM clickstream.customer_current").fetchall()[0][0]
    rows = con.sql(
        "SELECT customer_id, scored_as_of, segment, clv, run_id, purchases FROM clickstream.customer_value"
    ).fetchall()
    assert len(rows) == current
    scores = {row["customer_id"]: row for row in read_scores(facts["store"], latest).to_pylist()}
    for customer_id, scored_as_of, segment, clv, run_id, purchases in rows:
        if customer_id in scores:
            assert run_id == latest.run_id and segment == scores[customer_id]["segment"]
            assert clv == pytest.approx(scores[customer_id]["clv"])
            assert scored_as_of.replace(tzinfo=UTC) == latest.as_of
        else:
            assert purchases == 0 and segment is None and clv is None  # non-buyers: no scores


def test_redshift_ml_training_rows_are_the_buyers_at_the_cutoff_with_their_later_revenue(
    warehouse: tuple[duckdb.DuckDBPyConnection, dict],
) -> None:
    con, _ = warehouse
    history = con.sql(
        "SELECT customer_id, version, as_of, revenue, frequency FROM clickstream.customer_aggregates_history"
    ).fetchall()
    newest = max(row[2] for row in history)
    cutoff = newest - timedelta(days=90)
    before: dict[str, tuple] = {}
    now: dict[str, tuple] = {}
    for row in history:
        customer, version = row[0], row[1]
        if row[2] <= cutoff and (customer not in before or version > before[customer][1]):
            before[customer] = row
        if customer not in now or version > now[customer][1]:
            now[customer] = row
    expected = {customer: now[customer][3] - row[3] for customer, row in before.items() if row[4] is not None}
    got = dict(con.sql("SELECT customer_id, future_revenue FROM clickstream.clv_training").fetchall())
    assert got == expected
    assert len(got) > 20 and all(value >= Decimal(0) for value in got.values())


def test_create_model_trains_on_the_training_view_and_predicts_with_the_same_features() -> None:
    sql = Path(__file__).resolve().parents[1].joinpath("sql/redshift/06_clv_redshift_ml.sql").read_text()
    model = re.search(r"^CREATE MODEL .*?;", sql, re.DOTALL | re.MULTILINE)
    assert model
    text = model.group(0)
    select = re.search(r"SELECT (.*?)\s+FROM clickstream\.clv_training", text, re.DOTALL)
    assert select
    features = [name.strip() for name in select.group(1).split(",")]
    assert features[-1] == "future_revenue" and "TARGET future_revenue" in text
    assert "PROBLEM_TYPE REGRESSION" in text and "S3_BUCKET '${ML_BUCKET}'" in text
    training = next(
        e for e in statements("06_") if isinstance(e, exp.Create) and "clv_training" in e.this.sql()
    )
    assert set(features) <= set(training.expression.named_selects)
    scoring = next(
        e for e in statements("06_") if isinstance(e, exp.Create) and "customer_value_ml" in e.this.sql()
    )
    call = next(f for f in scoring.find_all(exp.Anonymous) if f.name == "predict_revenue_90d")
    assert len(call.expressions) == len(features) - 1  # every feature, in order, and not the label


def test_the_contract_package_hands_out_every_output_schema() -> None:
    """`schemas.CLV_SCORES_SCHEMA` raised AttributeError where the package hands out the other outputs' schemas."""
    import schemas
    from schemas import contract

    names = [name for name in vars(contract) if name.endswith("_SCHEMA")]
    assert "CLV_SCORES_SCHEMA" in names
    for name in names:
        assert name in schemas.__all__ and getattr(schemas, name) is getattr(contract, name)
