"""Incremental per-customer RFM / engagement state of one shard, kept in DuckDB with set-based SQL.

Why these tables: the aggregates must depend only on the *set* of events (any order, any batch split, any
repetition of an event id). Counts and sums are additive once duplicates are removed, so the state keeps exactly the
sets that distinct counts need and nothing more:

- ``applied_events``     every event id ever applied (exact de-duplication, UUID primary key);
- ``customer_sessions``  distinct (customer, session) pairs, for ``sessions``;
- ``customer_days``      one row per (customer, UTC day) with events, orders and revenue, for ``active_days`` and the
                         day-bucketed BG/NBD / Gamma-Gamma inputs;
- ``customers``          the running aggregates, one row per customer;
- ``shard_progress``     the last applied Kinesis sequence number and the event-time high-water mark (``as_of``).

Every statement is an index-backed upsert (``INSERT ... ON CONFLICT ... RETURNING``) or works on the batch alone,
so the cost of applying a batch grows with the batch and the customers it touches, never with all customers ever
seen. A batch is applied inside one transaction together with the sequence number it advances to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa

from aggregators.validation import DecodedBatch, RecordValidator, new_connection
from schemas import CUSTOMER_AGGREGATES_SCHEMA, ERRORS_SCHEMA, EVENTS_SCHEMA
from schemas.positions import Position

log = logging.getLogger(__name__)

#: Weights of the engagement score: weighted interactions per active day (documented in the README).
ENGAGEMENT_WEIGHTS: Final = {
    "page_views": 1,
    "product_views": 2,
    "searches": 2,
    "add_to_carts": 4,
    "checkouts": 6,
    "purchases": 10,
}

_SEQUENCE_WIDTH: Final = (
    80  # Kinesis sequence numbers are decimal strings of up to 56 digits; pad to compare.
)

_DDL: Final = """
CREATE TABLE IF NOT EXISTS applied_events (event_id UUID PRIMARY KEY);
CREATE TABLE IF NOT EXISTS customer_sessions (
    customer_id VARCHAR NOT NULL, session_id VARCHAR NOT NULL, PRIMARY KEY (customer_id, session_id));
CREATE TABLE IF NOT EXISTS customer_days (
    customer_id VARCHAR NOT NULL, day DATE NOT NULL,
    events BIGINT NOT NULL, orders BIGINT NOT NULL, revenue DECIMAL(18, 2) NOT NULL,
    PRIMARY KEY (customer_id, day));
CREATE TABLE IF NOT EXISTS customers (
    customer_id VARCHAR PRIMARY KEY,
    first_event_at TIMESTAMPTZ NOT NULL, last_event_at TIMESTAMPTZ NOT NULL,
    events BIGINT NOT NULL, page_views BIGINT NOT NULL, product_views BIGINT NOT NULL, searches BIGINT NOT NULL,
    add_to_carts BIGINT NOT NULL, checkouts BIGINT NOT NULL, purchases BIGINT NOT NULL,
    sessions BIGINT NOT NULL, active_days BIGINT NOT NULL, revenue DECIMAL(18, 2) NOT NULL,
    first_purchase_at TIMESTAMPTZ, last_purchase_at TIMESTAMPTZ,
    purchase_days BIGINT NOT NULL, first_purchase_day DATE, last_purchase_day DATE,
    first_day_revenue DECIMAL(18, 2));
CREATE TABLE IF NOT EXISTS shard_progress (
    shard_id VARCHAR PRIMARY KEY, sequence_number VARCHAR NOT NULL, sub_sequence_number BIGINT NOT NULL,
    as_of TIMESTAMPTZ);
"""


#: The tables a snapshot holds, in load order.
STATE_TABLES: Final = ("applied_events", "customer_sessions", "customer_days", "customers", "shard_progress")


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What one batch did: the outputs to make durable and the counts to report."""

    events: pa.Table  # new (never applied before) valid events, EVENTS_SCHEMA
    customer_rows: pa.Table  # current rows of the customers this batch changed, CUSTOMER_AGGREGATES_SCHEMA
    rejects: pa.Table  # ERRORS_SCHEMA
    records_in: int  # raw records handed in
    records_skipped: int  # already applied (at or below the stored position): redeliveries
    duplicates: int  # valid events whose event id was applied before (or repeated within the batch)
    position: Position | None  # the position the state advances to (None: nothing new)
    first_position: Position | None = None  # the first record actually applied (None: all were redeliveries)

    @property
    def accepted(self) -> int:
        """Valid records, new or duplicate."""
        return int(self.events.num_rows) + self.duplicates


class CustomerState:
    """One shard's state store. Not thread-safe; one per record processor."""

    def __init__(
        self,
        shard_id: str,
        database: Path | str = ":memory:",
        validator: RecordValidator | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.database = str(database)
        self.validator = validator or RecordValidator()
        self.con: duckdb.DuckDBPyConnection = new_connection(self.database)
        # Fewer, larger checkpoints: each one rewrites the primary-key indexes (measured +7% apply throughput);
        # the WAL replayed after a crash stays bounded by this size.
        self.con.execute("SET checkpoint_threshold = '256MB'")
        self.con.execute(_DDL)
        self._in_transaction = False

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------ progress
    def position(self) -> Position | None:
        """The last applied position of this shard, or None when nothing was applied yet."""
        rows = self.con.execute(
            "SELECT sequence_number, sub_sequence_number FROM shard_progress WHERE shard_id = ?",
            [self.shard_id],
        ).fetchall()
        return Position(str(rows[0][0]), int(rows[0][1])) if rows else None

    def verify(self) -> None:
        """Read every stored value once (DuckDB checks each block's checksum as it reads): raises if the file is
        damaged, so a corrupt cache is found at open instead of in the middle of a flush."""
        for table in STATE_TABLES:
            self.con.execute(f"SELECT count(*), max(hash(COLUMNS(*))) FROM {table}").fetchall()

    def customer_count(self) -> int:
        count: int = self.con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
        return count

    # ------------------------------------------------------------------ applying
    @contextmanager
    def staged(self, raw: pa.Table) -> Iterator[AppliedBatch]:
        """Apply ``raw`` in an open transaction; commit when the block exits cleanly, roll back otherwise.

        The caller makes the outputs durable inside the block, so the state never runs ahead of S3.
        """
        if self._in_transaction:
            raise RuntimeError("a staged batch is already open on this shard state")
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            applied = self._apply(raw)
            yield applied
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")
        finally:
            self._in_transaction = False

    def apply(self, raw: pa.Table) -> AppliedBatch:
        """Apply and commit at once (replay, benchmarks, tests)."""
        with self.staged(raw) as applied:
            return applied

    def _apply(self, raw: pa.Table) -> AppliedBatch:
        fresh = self._drop_already_applied(raw)
        skipped = raw.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return AppliedBatch(
                events=EVENTS_SCHEMA.empty_table(),
                customer_rows=CUSTOMER_AGGREGATES_SCHEMA.empty_table(),
                rejects=ERRORS_SCHEMA.empty_table(),
                records_in=raw.num_rows,
                records_skipped=skipped,
                duplicates=0,
                position=None,
            )
        decoded: DecodedBatch = self.validator.decode(self.con, fresh)
        applied = self._apply_events(decoded.events, _last_position(fresh))
        return AppliedBatch(
            events=applied.events,
            customer_rows=applied.customer_rows,
            rejects=decoded.rejects,
            records_in=raw.num_rows,
            records_skipped=skipped,
            duplicates=applied.duplicates,
            position=applied.position,
            first_position=_first_position(fresh),
        )

    def apply_events(self, events: pa.Table, position: Position) -> AppliedBatch:
        """Apply already validated events (EVENTS_SCHEMA), e.g. from the events/ archive, and commit.

        The same de-duplication and aggregation as live records: used to catch a shard's state up from its commit
        records and by the replay command. ``position`` is where the state stands afterwards.
        """
        if self._in_transaction:
            raise RuntimeError("a staged batch is already open on this shard state")
        self.con.execute("BEGIN TRANSACTION")
        try:
            applied = self._apply_events(events.cast(EVENTS_SCHEMA), position)
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        return applied

    def _apply_events(self, events: pa.Table, position: Position) -> AppliedBatch:
        new_events = self._dedupe(events)
        customer_rows = self._update_aggregates(new_events, position)
        return AppliedBatch(
            events=new_events,
            customer_rows=customer_rows,
            rejects=ERRORS_SCHEMA.empty_table(),
            records_in=events.num_rows,
            records_skipped=0,
            duplicates=events.num_rows - new_events.num_rows,
            position=position,
        )

    def _drop_already_applied(self, raw: pa.Table) -> pa.Table:
        """Redelivered records (at or below the stored position) are skipped, keeping replays idempotent."""
        current = self.position()
        if current is None or raw.num_rows == 0:
            return raw
        if _first_position(raw).sort_key() > current.sort_key():
            return raw  # the usual case: nothing redelivered, no need to look at every row
        self.con.register("incoming", raw)
        try:
            return self.con.sql(
                f"""SELECT * FROM incoming
                    WHERE lpad(sequence_number, {_SEQUENCE_WIDTH}, '0') > lpad(?, {_SEQUENCE_WIDTH}, '0')
                       OR (sequence_number = ? AND sub_sequence_number > ?)""",
                params=[current.sequence_number, current.sequence_number, current.sub_sequence_number],
            ).to_arrow_table()
        finally:
            self.con.unregister("incoming")

    def _dedupe(self, events: pa.Table) -> pa.Table:
        """Keep only events whose id was never applied; the first delivery of a repeated id wins."""
        if events.num_rows == 0:
            return events
        con = self.con
        con.register("batch_events", events)
        try:
            # The primary key index answers "seen before?" for the batch only, whatever the history's size.
            self._returning(
                "new_ids",
                """INSERT INTO applied_events SELECT CAST(event_id AS UUID) FROM batch_events
                   ON CONFLICT DO NOTHING RETURNING event_id""",
            )
            fresh = con.sql(
                "SELECT b.* FROM batch_events b SEMI JOIN new_ids n ON CAST(b.event_id AS UUID) = n.event_id"
            )
            new_count = con.sql("SELECT count(*) FROM new_ids").fetchall()[0][0]
            table = fresh.to_arrow_table()
            if table.num_rows != new_count:  # an id repeated inside this batch: keep its first delivery
                con.register("fresh_events", table)
                table = con.sql(
                    f"""SELECT * FROM fresh_events
                        QUALIFY row_number() OVER (
                            PARTITION BY event_id
                            ORDER BY lpad(sequence_number, {_SEQUENCE_WIDTH}, '0'), sub_sequence_number) = 1"""
                ).to_arrow_table()
                con.unregister("fresh_events")
            return table.cast(EVENTS_SCHEMA)
        finally:
            con.unregister("batch_events")
            self._release("new_ids")

    def _update_aggregates(self, events: pa.Table, last: Position) -> pa.Table:
        con = self.con
        con.register("new_events", events)
        try:
            self._advance_progress(last)
            if events.num_rows == 0:
                return CUSTOMER_AGGREGATES_SCHEMA.empty_table()
            # 1. distinct sessions: the pairs this batch adds for the first time
            self._returning(
                "inserted_sessions",
                """INSERT INTO customer_sessions SELECT DISTINCT customer_id, session_id FROM new_events
                   ON CONFLICT DO NOTHING RETURNING customer_id""",
            )
            # 2. per (customer, UTC day) totals of the batch, upserted; RETURNING gives the totals after the batch
            con.execute(
                """CREATE OR REPLACE TEMP TABLE batch_days AS
                   SELECT customer_id, CAST(event_time AS DATE) AS day, count(*) AS events,
                          count(*) FILTER (WHERE event_type = 'purchase') AS orders,
                          CAST(coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS DECIMAL(18, 2))
                              AS revenue
                   FROM new_events GROUP BY ALL"""
            )
            self._returning(
                "days_after",
                """INSERT INTO customer_days SELECT * FROM batch_days
                   ON CONFLICT DO UPDATE SET events = customer_days.events + excluded.events,
                                             orders = customer_days.orders + excluded.orders,
                                             revenue = customer_days.revenue + excluded.revenue
                   RETURNING customer_id, day, events, orders, revenue""",
            )
            # A day is new when its total equals the batch's own contribution; likewise a new purchase day.
            con.execute(
                """CREATE OR REPLACE TEMP TABLE day_deltas AS
                   WITH joined AS (
                       SELECT a.customer_id, a.day, a.revenue AS revenue_after, a.orders AS orders_after,
                              a.events = b.events AS new_active_day,
                              b.orders > 0 AND a.orders = b.orders AS new_purchase_day,
                              b.orders > 0 AS batch_purchase_day
                       FROM days_after a JOIN batch_days b USING (customer_id, day))
                   SELECT customer_id,
                          count(*) FILTER (WHERE new_active_day) AS new_active_days,
                          count(*) FILTER (WHERE new_purchase_day) AS new_purchase_days,
                          min(day) FILTER (WHERE batch_purchase_day) AS batch_first_purchase_day,
                          max(day) FILTER (WHERE batch_purchase_day) AS batch_last_purchase_day,
                          arg_min(revenue_after, day) FILTER (WHERE batch_purchase_day)
                              AS batch_first_purchase_day_revenue
                   FROM joined GROUP BY customer_id"""
            )
            # 3. one upsert of the running aggregates; RETURNING yields exactly the changed customers' rows
            self._returning(
                "changed",
                """INSERT INTO customers
                   SELECT e.customer_id,
                          min(e.event_time), max(e.event_time), count(*),
                          count(*) FILTER (WHERE e.event_type = 'page_view'),
                          count(*) FILTER (WHERE e.event_type = 'product_view'),
                          count(*) FILTER (WHERE e.event_type = 'search'),
                          count(*) FILTER (WHERE e.event_type = 'add_to_cart'),
                          count(*) FILTER (WHERE e.event_type = 'checkout'),
                          count(*) FILTER (WHERE e.event_type = 'purchase'),
                          any_value(coalesce(s.n, 0)), any_value(d.new_active_days),
                          CAST(coalesce(sum(e.revenue) FILTER (WHERE e.event_type = 'purchase'), 0)
                               AS DECIMAL(18, 2)),
                          min(e.event_time) FILTER (WHERE e.event_type = 'purchase'),
                          max(e.event_time) FILTER (WHERE e.event_type = 'purchase'),
                          any_value(d.new_purchase_days),
                          any_value(d.batch_first_purchase_day), any_value(d.batch_last_purchase_day),
                          any_value(d.batch_first_purchase_day_revenue)
                   FROM new_events e
                   JOIN day_deltas d USING (customer_id)
                   LEFT JOIN (SELECT customer_id, count(*) AS n FROM inserted_sessions GROUP BY customer_id) s
                       USING (customer_id)
                   GROUP BY e.customer_id
                   ON CONFLICT DO UPDATE SET
                       first_event_at = least(customers.first_event_at, excluded.first_event_at),
                       last_event_at = greatest(customers.last_event_at, excluded.last_event_at),
                       events = customers.events + excluded.events,
                       page_views = customers.page_views + excluded.page_views,
                       product_views = customers.product_views + excluded.product_views,
                       searches = customers.searches + excluded.searches,
                       add_to_carts = customers.add_to_carts + excluded.add_to_carts,
                       checkouts = customers.checkouts + excluded.checkouts,
                       purchases = customers.purchases + excluded.purchases,
                       sessions = customers.sessions + excluded.sessions,
                       active_days = customers.active_days + excluded.active_days,
                       revenue = customers.revenue + excluded.revenue,
                       first_purchase_at = least(customers.first_purchase_at, excluded.first_purchase_at),
                       last_purchase_at = greatest(customers.last_purchase_at, excluded.last_purchase_at),
                       purchase_days = customers.purchase_days + excluded.purchase_days,
                       first_purchase_day = least(customers.first_purchase_day, excluded.first_purchase_day),
                       last_purchase_day = greatest(customers.last_purchase_day, excluded.last_purchase_day),
                       -- the first purchase day's revenue: the batch's own first purchase day total (read back
                       -- after the day upsert) when that day is at or before the known first day, else unchanged
                       first_day_revenue = CASE
                           WHEN excluded.first_purchase_day IS NOT NULL
                                AND (customers.first_purchase_day IS NULL
                                     OR excluded.first_purchase_day <= customers.first_purchase_day)
                           THEN excluded.first_day_revenue
                           ELSE customers.first_day_revenue END
                   RETURNING *""",
            )
            return self._output_rows("changed", last)
        finally:
            con.unregister("new_events")
            for name in ("inserted_sessions", "days_after", "changed"):
                self._release(name)
            con.execute("DROP TABLE IF EXISTS batch_days; DROP TABLE IF EXISTS day_deltas")

    def _returning(self, name: str, statement: str) -> None:
        """Run an INSERT ... RETURNING once and expose its rows as ``name`` (DuckDB cannot nest DML)."""
        self.con.register(name, self.con.sql(statement).to_arrow_table())

    def _release(self, name: str) -> None:
        with contextlib.suppress(duckdb.Error):  # never registered because an earlier step failed
            self.con.unregister(name)

    def _advance_progress(self, last: Position) -> None:
        """Record the new position and raise the event-time high-water mark (as_of) with the batch's events."""
        self.con.execute(
            """INSERT INTO shard_progress
               SELECT ?, ?, ?, (SELECT max(event_time) FROM new_events)
               ON CONFLICT DO UPDATE SET sequence_number = excluded.sequence_number,
                   sub_sequence_number = excluded.sub_sequence_number,
                   as_of = greatest(shard_progress.as_of, excluded.as_of)""",
            [self.shard_id, last.sequence_number, last.sub_sequence_number],
        )

    def _output_rows(self, source: str, last: Position) -> pa.Table:
        """Customer rows in the published contract (CUSTOMER_AGGREGATES_SCHEMA), from a table shaped like customers."""
        weights = " + ".join(f"{weight} * {column}" for column, weight in ENGAGEMENT_WEIGHTS.items())
        return (
            self.con.sql(
                f"""
            WITH progress AS (SELECT as_of FROM shard_progress WHERE shard_id = $shard)
            SELECT c.customer_id,
                   c.events AS version,
                   p.as_of,
                   c.first_event_at, c.last_event_at,
                   c.events, c.page_views, c.product_views, c.searches, c.add_to_carts, c.checkouts, c.purchases,
                   c.sessions, c.active_days, c.revenue,
                   c.first_purchase_at, c.last_purchase_at, c.purchase_days,
                   CASE WHEN c.purchase_days > 0 THEN c.purchase_days - 1 END AS frequency,
                   CASE WHEN c.purchase_days > 0
                        THEN date_diff('day', c.first_purchase_day, c.last_purchase_day) END AS recency,
                   CASE WHEN c.purchase_days > 0
                        THEN date_diff('day', c.first_purchase_day, CAST(p.as_of AS DATE)) END AS "T",
                   CASE WHEN c.purchase_days > 1
                        THEN CAST(c.revenue - c.first_day_revenue AS DOUBLE) / (c.purchase_days - 1)
                        WHEN c.purchase_days = 1 THEN 0.0 END AS monetary_value,
                   CASE WHEN c.purchase_days > 0 THEN c.revenue - c.first_day_revenue END AS repeat_revenue,
                   CAST(({weights}) AS DOUBLE) / c.active_days AS engagement_score,
                   $shard AS shard_id,
                   $sequence AS updated_through_sequence
            FROM {source} c CROSS JOIN progress p
            ORDER BY c.customer_id""",
                params={"shard": self.shard_id, "sequence": last.sequence_number},
            )
            .to_arrow_table()
            .cast(CUSTOMER_AGGREGATES_SCHEMA)
        )

    # ------------------------------------------------------------------ snapshots
    def export_tables(self) -> dict[str, pa.Table]:
        """Every state table as Arrow (UUIDs as strings), for a snapshot; consistent because nothing is open."""
        if self._in_transaction:
            raise RuntimeError("cannot export while a staged batch is open")
        tables = {}
        for table in STATE_TABLES:
            select = (
                "SELECT CAST(event_id AS VARCHAR) AS event_id" if table == "applied_events" else "SELECT *"
            )
            tables[table] = self.con.sql(f"{select} FROM {table}").to_arrow_table()
        return tables

    def import_tables(
        self, tables: dict[str, pa.Table], customer_filter: str | None = None, replace: bool = True
    ) -> None:
        """Load snapshot tables (all but shard_progress, which the caller sets with ``set_position``).

        ``customer_filter`` (SQL over customer_id) keeps a subset and ``replace=False`` adds to what is there: a
        child shard takes from each parent only the customers that hash into its own range. The de-duplication ids
        are kept whole (an id of another customer can never match this shard's events).
        """
        self.con.execute("BEGIN TRANSACTION")
        try:
            if replace:
                for table in STATE_TABLES:
                    self.con.execute(f"DELETE FROM {table}")
            for table in STATE_TABLES[:-1]:
                if table not in tables:
                    continue
                self.con.register("snapshot_part", tables[table])
                if table == "applied_events":
                    self.con.execute(
                        "INSERT INTO applied_events SELECT DISTINCT CAST(event_id AS UUID) FROM snapshot_part "
                        "ON CONFLICT DO NOTHING"
                    )
                else:
                    where = f" WHERE {customer_filter}" if customer_filter else ""
                    self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM snapshot_part{where}")
                self.con.unregister("snapshot_part")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def as_of(self) -> datetime | None:
        """The event-time high-water mark (timezone-aware) or None."""
        rows = self.con.execute(
            "SELECT as_of FROM shard_progress WHERE shard_id = ?", [self.shard_id]
        ).fetchall()
        value = rows[0][0] if rows else None
        return value if isinstance(value, datetime) else None

    def set_position(self, position: Position | None, as_of: datetime | str | None = None) -> None:
        """Move the stored position (a child shard starts fresh; restore lands on a commit's end)."""
        self.con.execute("DELETE FROM shard_progress")
        if position is not None:
            self.con.execute(
                "INSERT INTO shard_progress VALUES (?, ?, ?, ?)",
                [self.shard_id, position.sequence_number, position.sub_sequence_number, as_of],
            )

    def snapshot_rows(self) -> pa.Table:
        """Every customer's current row (full scan: for summaries and tests, not the hot path)."""
        last = self.position() or Position("0")
        return self._output_rows("customers", last)


def _first_position(raw: pa.Table) -> Position:
    """Lowest (sequence, sub-sequence) in a raw batch, compared numerically."""
    sequences = raw.column("sequence_number").to_pylist()
    subs = raw.column("sub_sequence_number").to_pylist()
    best = min(zip(sequences, subs, strict=True), key=lambda pair: (int(pair[0]), pair[1]))
    return Position(str(best[0]), int(best[1]))


def _last_position(raw: pa.Table) -> Position:
    """Highest (sequence, sub-sequence) in a raw batch, compared numerically."""
    sequences = raw.column("sequence_number").to_pylist()
    subs = raw.column("sub_sequence_number").to_pylist()
    best = max(zip(sequences, subs, strict=True), key=lambda pair: (int(pair[0]), pair[1]))
    return Position(str(best[0]), int(best[1]))
