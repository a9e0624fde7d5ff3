"""Incremental per-customer RFM / engagement state of one shard, held as columns in memory.

Why this layout: the aggregates must depend only on the *set* of events (any order, any batch split, any repetition
of an event id). Counts and sums are additive once duplicates are removed, so the state keeps the running sums per
customer plus exactly the sets that distinct counts need, and nothing more:

- customers get a dense index (ids held in a ``keysets.StringIndex``, not a dict); every running aggregate is a
  numpy column indexed by it (counts 32-bit, times and money 64-bit);
- ``event ids``: the (customer, event id) pairs applied, for exact de-duplication within the de-duplication window;
- ``sessions``: distinct (customer, session id) pairs, for ``sessions``, within the distinct-count window;
- ``days``: distinct (customer, UTC day) pairs with events, for ``active_days``, within the same window, and with
  purchases, for ``purchase_days``, for good (``frequency`` feeds the CLV models; a customer has few purchase days);
- the position (last applied sequence number) and ``as_of`` (the event-time high-water mark).

The sets are ``keysets.KeyRuns``: sorted numpy runs, exact, 32 bytes per event id. A batch is parsed once into
columns (``fast_decode``); only doubtful records go through the exact SQL validator. De-duplication, grouping and the
output rows are vectorized over the batch, so the cost of a batch grows with the batch and the customers it touches,
never with all customers or events ever seen.

De-duplication window: a duplicate is the same event id for the same customer, arriving (Kinesis arrival time, UTC
days) at most ``dedupe_window`` after the delivery of that event applied last. The rule is between the two deliveries
alone, so flush boundaries and the shard's other customers cannot change it. A re-send arriving later than that is
applied again (counted twice): producer retries and redeliveries arrive within minutes, so the window (default 7
days) bounds memory without touching them: ids are dropped once their day is more than the window and one day before
the latest arrival day the shard applied (Kinesis does not promise arrival stamps in order; a delivery stamped up to
a day before the latest one is still compared exactly).
Arrival time, not event time, so that backfills of old events and streams ordered by customer keep exact
de-duplication.

Distinct-count window: the same rule for the members of the distinct counts (a customer's sessions and active days;
purchase days are kept for good), with its own span (``distinct_window``, default 30 days). A member is counted once
per customer; it is remembered for the window after the arrival of the event that counted it, and an event of the
same session (or of the same day) arriving later than that counts it again. A session lasts minutes or hours and a
day's events arrive within hours of it, so the window bounds what the state holds (the window's members, not the
whole history's) without changing a count of a live stream.

Durability: S3 is the truth (commit chain and snapshots). The local state is a cache that makes a restart fast: a
journal of what batches added or changed (``aggregators/state_journal.py``), each sync on disk whole or not at all
with the position it reaches, so the journal is always exact *at its position*. It is written every
``sync_every_records`` applied records or ``sync_every_seconds`` (and on ``close``), not after every batch: a sync
per batch cost more than the rest of the install. A crash loses only the cache's latest batches, which a restore
re-applies from S3 (the journal's position is on the commit chain, just behind its tip). Opening a journal loads it
into memory; one that cannot be read raises, and the caller restores from S3.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregators.ascii_bytes import hex_value
from aggregators.fast_decode import FastDecoder, decimal_cents, decode_records, value_bytes
from aggregators.keysets import IndexMark, KeyRuns, StringIndex, fixed_bytes, mix64
from aggregators.state_journal import JournalContents, JournalDamagedError, JournalProgress, StateJournal
from aggregators.validation import RecordValidator, new_connection
from runtime.logs import one_line
from schemas import CUSTOMER_AGGREGATES_SCHEMA, ERRORS_SCHEMA, EVENT_TYPES, EVENTS_SCHEMA, MONEY, UTC_MICROS
from schemas.columns import contiguous
from schemas.positions import (
    Position,
    in_position_order,
    position_at,
    positions_increase,
    records_after,
    sorted_by_position,
)

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
_TYPE_COLUMNS: Final = tuple(ENGAGEMENT_WEIGHTS)  # in EVENT_TYPES order
DEFAULT_DEDUPE_WINDOW: Final = timedelta(days=7)
DEFAULT_DISTINCT_WINDOW: Final = timedelta(days=30)
#: How far (UTC days) a shard's arrival stamps may go back and still be de-duplicated exactly: ids are kept that much
#: longer than the window (Kinesis documents no ordering of ApproximateArrivalTimestamp within a shard).
ARRIVAL_DAYS_OUT_OF_ORDER: Final = 1
#: The journal is rewritten whole once its files hold more than twice the state's bytes in memory and this many more
#: (a rewrite writes about 0.8 times them: the journal stays within about three times the state, a rewrite included).
_JOURNAL_SLACK_BYTES: Final = 256 * 1024

_US_PER_DAY: Final = 86_400_000_000
_NONE_LOW: Final = np.iinfo(np.int64).max  # "no value yet" for columns that keep a minimum
_NONE_HIGH: Final = np.iinfo(np.int64).min  # ... and for columns that keep a maximum
_DAY_BIAS: Final = 1 << 20  # days since 1970 shifted positive in the (customer, day) key

#: The running columns per customer (times in microseconds UTC, days since 1970, money in cents): beside
#: ``customer_id``, the columns of the ``customers`` table of a snapshot (``export_tables``).
RUNNING_COLUMNS: Final = (
    "first_event_at",
    "last_event_at",
    "events",
    *_TYPE_COLUMNS,
    "sessions",
    "active_days",
    "revenue_cents",
    "first_purchase_at",
    "last_purchase_at",
    "purchase_days",
    "first_purchase_day",
    "last_purchase_day",
    "first_day_revenue_cents",
)
#: Counts of UTC days fit 32 bits for millions of years: half the bytes of a 64-bit column per customer. Every other
#: count is 64-bit: one busy customer id (a default one, a bot's) at a shard's 1,000 records/s passes 2^31 events,
#: or sessions if each event starts one, in 25 days.
_DAY_COUNTS: Final = frozenset({"active_days", "purchase_days"})
_START: Final = {
    "first_event_at": _NONE_LOW,
    "last_event_at": _NONE_HIGH,
    "first_purchase_at": _NONE_LOW,
    "last_purchase_at": _NONE_HIGH,
    "first_purchase_day": _NONE_LOW,
    "last_purchase_day": _NONE_HIGH,
}

#: The local journal's tables (``aggregators/state_journal.py``) and their columns, in the state's own types (a
#: customer index and a count of days fit 32 bits): every sync writes these; a journal of an earlier version, whose
#: counts were all 32-bit, is widened as it is read.
_IDX: Final = pa.field("idx", pa.int32(), False)
_JOURNAL_SCHEMAS: Final = {
    "customers": pa.schema([_IDX, pa.field("customer_id", pa.string(), False)]),
    "customer_rows": pa.schema(
        [
            _IDX,
            *(pa.field(name, pa.int32() if name in _DAY_COUNTS else pa.int64()) for name in RUNNING_COLUMNS),
        ]
    ),
    "customer_sessions": pa.schema(
        [_IDX, pa.field("session_id", pa.string(), False), pa.field("arrival_day", pa.int32(), False)]
    ),
    "customer_days": pa.schema(
        [
            _IDX,
            pa.field("day", pa.int32(), False),
            pa.field("purchase", pa.bool_(), False),
            pa.field("arrival_day", pa.int32(), False),
        ]
    ),
    "applied_events": pa.schema(
        [
            _IDX,
            pa.field("id_high", pa.uint64(), False),
            pa.field("id_low", pa.uint64(), False),
            pa.field("day", pa.int32(), False),
        ]
    ),
}

#: The tables of the distinct counts' members, each with the arrival day of the event that counted it.
_COUNTED: Final = ("customer_sessions", "customer_days")
#: The arrival day a member remembered for good is held with (a purchase day): no window ever starts after it.
KEPT_FOR_GOOD: Final = int(np.iinfo(np.int32).max)


@dataclass(frozen=True, slots=True)
class StateOptions:
    """How a shard's state behaves; the worker's come from its settings (``consumer.state_recovery.state_options``).

    ``sync_every_records`` / ``sync_every_seconds``: write the local file once this many records were applied since
    it was last written, or this long after (whichever comes first; checked as batches install). The defaults write
    it with every batch.

    ``keep_counted``: keep every counted session and day for the life of the state (they still count again past
    the distinct-count window: that rule reads each member's own arrival day). A replay sets it: it applies shard
    after shard into one state, whose latest arrival day, which forgetting follows, is then another shard's.
    """

    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW
    distinct_window: timedelta = DEFAULT_DISTINCT_WINDOW
    sync_every_records: int = 1
    sync_every_seconds: float = 0.0
    keep_counted: bool = False


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What one batch did: the outputs to make durable and the counts to report."""

    events: pa.Table  # new (never applied before) valid events, EVENTS_SCHEMA
    customer_rows: pa.Table  # current rows of the customers this batch changed, CUSTOMER_AGGREGATES_SCHEMA
    rejects: pa.Table  # ERRORS_SCHEMA
    records_in: int  # raw records handed in
    records_skipped: int  # already applied (at or below the stored position): redeliveries
    # valid events whose (customer, event id) was applied before (or repeated within the batch)
    duplicates: int
    position: Position | None  # the position the state advances to (None: nothing new)
    first_position: Position | None = None  # the first record actually applied (None: all were redeliveries)

    @property
    def accepted(self) -> int:
        """Valid records, new or duplicate."""
        return int(self.events.num_rows) + self.duplicates


@dataclass(slots=True)
class _Staged:
    """A batch worked out against the state but not installed yet (installing is what ``commit`` means)."""

    applied: AppliedBatch
    new_customer_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    new_customer_hashes: np.ndarray | None = None  # their string hashes, as the customer index keys them
    changed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    event_ids: dict[str, np.ndarray] = field(default_factory=dict)
    sessions: dict[str, np.ndarray] = field(default_factory=dict)
    session_ids: pa.Array | None = None
    days: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    # the arrival day each of ``days`` was counted on (``KEPT_FOR_GOOD`` for a purchase day)
    day_arrivals: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    as_of: int | None = None


@dataclass(frozen=True, slots=True)
class _Undo:
    """What installing a batch changed in memory, to put back if the journal does not commit."""

    customers: IndexMark
    rows: dict[str, np.ndarray]
    changed: np.ndarray
    runs: tuple[list[dict[str, np.ndarray]], ...]
    position: Position | None
    as_of: int | None
    arrival_day: int | None


@dataclass(frozen=True, slots=True)
class _JournalPart:
    """An installed batch not yet in the local file: the rows its sets and new customers add, and which customers
    it changed (their rows are written as they stand when the sync runs)."""

    tables: dict[str, pa.Table]
    changed: np.ndarray
    records: int


def _journal_part(staged: _Staged, start: int) -> _JournalPart:
    """What ``staged`` adds to the journal tables (its new customers get indexes from ``start``)."""
    tables: dict[str, pa.Table] = {}
    if len(staged.new_customer_ids):
        tables["customers"] = pa.table(
            {
                "idx": pa.array(np.arange(start, start + len(staged.new_customer_ids))),
                "customer_id": staged.new_customer_ids,
            }
        )
    if staged.sessions and staged.session_ids is not None:
        tables["customer_sessions"] = pa.table(
            {
                "idx": staged.sessions["idx"],
                "session_id": staged.session_ids,
                "arrival_day": staged.sessions["day"],
            }
        )
    if len(staged.days):
        idx, day, purchase = _split_day_keys(staged.days)
        tables["customer_days"] = pa.table(
            {"idx": idx, "day": day, "purchase": purchase, "arrival_day": staged.day_arrivals}
        )
    if staged.event_ids:
        tables["applied_events"] = pa.table(
            {
                "idx": staged.event_ids["idx"],
                "id_high": staged.event_ids["high"],
                "id_low": staged.event_ids["low"],
                "day": staged.event_ids["day"],
            }
        )
    return _JournalPart(tables, staged.changed, staged.applied.records_in)


class CustomerState:
    """One shard's state store. Not thread-safe; one per record processor."""

    def __init__(
        self,
        shard_id: str,
        local_dir: Path | None = None,
        validator: RecordValidator | None = None,
        options: StateOptions | None = None,
    ) -> None:
        """``local_dir``: the shard's journal on local disk (None: memory only); held locked while this is open,
        ``JournalLockedError`` if another process holds it, ``JournalDamagedError`` if it does not read as written."""
        self.shard_id = shard_id
        self.local_dir = local_dir
        self.validator = validator or RecordValidator()
        self.fast = FastDecoder(self.validator.rules)
        self.options = options or StateOptions()
        self.dedupe_window_days = max(0, self.options.dedupe_window // timedelta(days=1))
        self.distinct_window_days = max(0, self.options.distinct_window // timedelta(days=1))
        self.persistent = local_dir is not None
        self.local_file_error: str | None = None  # why the local file was given up (None: it was not)
        self._unsynced: list[_JournalPart] = []
        self._synced_at = time.monotonic()
        self._journal_bytes = 0  # bytes of the local journal's files
        self.con: duckdb.DuckDBPyConnection = new_connection()
        self.con.execute("SET threads = 1")  # one shard, one core: the KCL runs a process per shard
        self._hash = _StringHasher(self.con)
        self._in_transaction = False
        self._reset()
        self._journal_file = None if local_dir is None else StateJournal(local_dir)
        if self._journal_file is not None:
            try:
                self._load(self._journal_file.read())
            except BaseException:
                self.con.close()
                self._journal_file.close()
                raise

    @classmethod
    def without_local_state(
        cls,
        shard_id: str,
        reason: str,
        validator: RecordValidator | None = None,
        options: StateOptions | None = None,
    ) -> CustomerState:
        """A state in memory only, for a shard whose local state could not be opened: ``reason`` is reported as a
        write the disk refused (``local_file_error``)."""
        state = cls(shard_id, None, validator, options)
        state.local_file_error = reason
        return state

    def close(self, *, sync: bool = True) -> None:
        """Write what the local file lacks (a graceful stop restarts without re-applying anything), then close;
        ``sync=False`` for a file about to be deleted (a replay's scratch state)."""
        try:
            if sync and self._unsynced:
                self.sync(compact=False)  # a stop has seconds: the journal is rewritten by a later sync
        finally:
            self.con.close()
            if self._journal_file is not None:
                self._journal_file.close()

    def _reset(self) -> None:
        self._customers = StringIndex(self._hash)
        self._cols: dict[str, np.ndarray] = {name: np.empty(0, _dtype(name)) for name in RUNNING_COLUMNS}
        self._event_ids = KeyRuns(("idx", "high", "low"), has_day=True)
        self._sessions = KeyRuns(("idx", "session"), has_day=True)
        self._days = KeyRuns((), has_day=True)
        self._position: Position | None = None
        self._as_of: int | None = None  # microseconds UTC
        self._arrival_day: int | None = None  # the latest UTC arrival day of an applied event
        self._unsynced = []  # whatever replaces the state is written whole (``_rewrite_journal``) or not at all

    def _window_start(self) -> int | None:
        """The first arrival day whose event ids are still remembered (None: remember all): the window before the
        latest arrival day, and one day more, since Kinesis does not promise arrival stamps that never go back."""
        return self._remembered_from(self.dedupe_window_days)

    def _distinct_window_start(self) -> int | None:
        """The first arrival day whose counted sessions and days are still remembered (as ``_window_start``)."""
        if self.options.keep_counted:
            return None
        return self._remembered_from(self.distinct_window_days)

    def _remembered_from(self, window_days: int) -> int | None:
        if self._arrival_day is None:
            return None
        return self._arrival_day - window_days - ARRIVAL_DAYS_OUT_OF_ORDER

    # ------------------------------------------------------------------ progress
    def position(self) -> Position | None:
        """The last applied position of this shard, or None when nothing was applied yet."""
        return self._position

    def as_of(self) -> datetime | None:
        """The event-time high-water mark (timezone-aware) or None."""
        return None if self._as_of is None else _to_datetime(self._as_of)

    def reset(self) -> None:
        """Forget everything, in memory and in the local file (a restore then rebuilds the state from S3)."""
        self._reset()
        if self.persistent:
            self._rewrite_journal()

    def customer_count(self) -> int:
        return len(self._customers)

    def set_position(self, position: Position | None, as_of: datetime | None = None) -> None:
        """Move the stored position (a child shard starts fresh; restore lands on a commit's end)."""
        self._position = position
        self._as_of = None if as_of is None else _to_micros(as_of)
        self.sync()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by each part of the state (for sizing)."""
        count = len(self._customers)
        return {
            "customers": sum(a[:count].nbytes for a in self._cols.values()) + self._customers.nbytes(),
            "event_ids": self._event_ids.nbytes(),
            "sessions": self._sessions.nbytes(),
            "days": self._days.nbytes(),
        }

    def memory_total(self) -> int:
        """Bytes held by the whole state (the sum of ``memory_bytes``)."""
        return sum(self.memory_bytes().values())

    def event_id_count(self) -> int:
        return len(self._event_ids)

    def row_count(self) -> int:
        """The rows a snapshot of the state writes (customers, their sessions and active days, the event ids held):
        what a snapshot costs grows with this."""
        return len(self._customers) + len(self._sessions) + len(self._days) + len(self._event_ids)

    # ------------------------------------------------------------------ applying
    @contextmanager
    def staged(self, raw: pa.Table) -> Iterator[AppliedBatch]:
        """Work ``raw`` out against the state; install it when the block exits cleanly, drop it otherwise.

        Nothing changes until the block exits cleanly, so an exception anywhere leaves state and position exactly
        as they were. The caller makes the outputs durable inside the block, so the state never runs ahead of S3.
        """
        if self._in_transaction:
            raise RuntimeError("a staged batch is already open on this shard state")
        self._in_transaction = True
        try:
            staged = self._stage_raw(raw)
            yield staged.applied
            self._install(staged)
        finally:
            self._in_transaction = False

    def apply(self, raw: pa.Table) -> AppliedBatch:
        """Apply and commit at once (replay, benchmarks, tests)."""
        with self.staged(raw) as applied:
            return applied

    def apply_events(self, events: pa.Table, position: Position) -> AppliedBatch:
        """Apply already validated events (EVENTS_SCHEMA), e.g. from the events/ archive, and commit.

        The same de-duplication and aggregation as live records: used to catch a shard's state up from its commit
        records and by the replay command. ``position`` is where the state stands afterwards.
        """
        if self._in_transaction:
            raise RuntimeError("a staged batch is already open on this shard state")
        events = events.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
        staged = self._stage_events(in_position_order(events), position, events.num_rows, 0)
        staged.applied = _replace(staged.applied, rejects=ERRORS_SCHEMA.empty_table())
        self._install(staged)
        return staged.applied

    def _stage_raw(self, raw: pa.Table) -> _Staged:
        fresh = self._unapplied_in_order(raw)
        skipped = raw.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return _Staged(
                AppliedBatch(
                    events=EVENTS_SCHEMA.empty_table(),
                    customer_rows=CUSTOMER_AGGREGATES_SCHEMA.empty_table(),
                    rejects=ERRORS_SCHEMA.empty_table(),
                    records_in=raw.num_rows,
                    records_skipped=skipped,
                    duplicates=0,
                    position=None,
                ),
                as_of=self._as_of,
            )
        events, rejects = self._decode(fresh)
        first = position_at(fresh, 0)
        last = position_at(fresh, fresh.num_rows - 1)
        staged = self._stage_events(events, last, raw.num_rows, skipped)
        staged.applied = _replace(staged.applied, rejects=rejects, first_position=first)
        return staged

    def _decode(self, fresh: pa.Table) -> tuple[pa.Table, pa.Table]:
        decoded = decode_records(self.con, fresh, self.fast, self.validator)
        return decoded.events, decoded.rejects  # in the order of ``fresh``: position order

    def _unapplied_in_order(self, raw: pa.Table) -> pa.Table:
        """The records above the stored position, in position order (one order check for both).

        Redelivered records (at or below the position) are skipped, keeping replays idempotent. Records arrive in
        order within a shard; tests and replays may not.
        """
        if raw.num_rows == 0:
            return raw
        in_order = positions_increase(raw)
        current = self._position
        if current is not None and not (in_order and position_at(raw, 0) > current):
            raw = records_after(raw, current)  # keeps the order
        return raw if in_order else sorted_by_position(raw)

    # ------------------------------------------------------------------ the core, vectorized over a batch
    def _stage_events(self, events: pa.Table, last: Position, records_in: int, skipped: int) -> _Staged:
        """De-duplicate and aggregate ``events`` (in position order) against the state, without changing it."""
        empty = _Staged(
            AppliedBatch(
                events=EVENTS_SCHEMA.empty_table(),
                customer_rows=CUSTOMER_AGGREGATES_SCHEMA.empty_table(),
                rejects=ERRORS_SCHEMA.empty_table(),
                records_in=records_in,
                records_skipped=skipped,
                duplicates=events.num_rows,
                position=last,
            ),
            as_of=self._as_of,
        )
        if events.num_rows == 0:
            return empty
        customers = contiguous(events.column("customer_id")).dictionary_encode()
        # one hashing statement for the batch's customers and sessions (DuckDB costs about a millisecond a statement)
        name_hashes, session_hashes = self._hash.many(
            customers.dictionary, contiguous(events.column("session_id"))
        )
        idx, new_ids, new_hashes = self._customer_indexes(customers, name_hashes)
        high, low = _uuid_halves(contiguous(events.column("event_id")))
        times = _micros(events.column("event_time"))
        days = np.floor_divide(times, _US_PER_DAY)
        probe = mix64(idx, high, low)
        # in probe order: the set's lookup and add skip a sort
        first = _first_of_each(probe, [idx, high, low])
        arrival_days = np.floor_divide(_micros(events.column("approximate_arrival_at")), _US_PER_DAY)
        # a duplicate arrived at most the window after the applied delivery of its event: a rule between the two
        # deliveries alone, so neither the flush boundaries nor the shard's other customers change it
        seen = self._event_ids.contains(
            probe[first],
            {"idx": idx[first], "high": high[first], "low": low[first]},
            arrival_days[first] - self.dedupe_window_days,
        )
        new_ids_at = first[~seen]  # by probe
        if len(first) < events.num_rows and arrival_days.min() < arrival_days.max():
            again = _counted_again(
                self._event_ids,
                self.dedupe_window_days,
                probe,
                lambda rows: {"idx": idx[rows], "high": high[rows], "low": low[rows]},
                arrival_days,
                first,
                seen,
            )
            new_ids_at = np.concatenate([new_ids_at, again])
        duplicates = events.num_rows - len(new_ids_at)
        if not len(new_ids_at):
            return empty
        new_events = events
        # the new events' rows, in row order (the order the filter keeps); every row: views, no copies
        new: slice | np.ndarray = slice(None)
        if len(new_ids_at) < events.num_rows:
            keep = _mask(new_ids_at, events.num_rows)
            new = np.flatnonzero(keep)
            new_events = events.filter(pa.array(keep))
        staged = self._aggregate(
            new_events, idx[new], times[new], days[new], arrival_days[new], session_hashes[new], new_ids, last
        )
        staged.new_customer_hashes = new_hashes
        staged.event_ids = {
            "probe": probe[new_ids_at],
            "idx": idx[new_ids_at].astype(np.int32),
            "high": high[new_ids_at],
            "low": low[new_ids_at],
            "day": arrival_days[new_ids_at].astype(np.int32),
        }
        staged.applied = AppliedBatch(
            events=new_events,
            customer_rows=staged.applied.customer_rows,
            rejects=ERRORS_SCHEMA.empty_table(),
            records_in=records_in,
            records_skipped=skipped,
            duplicates=duplicates,
            position=last,
        )
        return staged

    def _customer_indexes(
        self, encoded: pa.DictionaryArray, name_hashes: np.ndarray
    ) -> tuple[np.ndarray, pa.Array, np.ndarray]:
        """Dense index of every event's customer; customers not seen before get the next indexes (provisionally),
        in the order they first appear. Also those new customers and their hashes."""
        names = encoded.dictionary
        mapping = self._customers.find(names, name_hashes)
        new = mapping < 0
        mapping[new] = np.arange(len(self._customers), len(self._customers) + int(new.sum()))
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        return mapping[codes], names.filter(pa.array(new)), name_hashes[new]

    def _aggregate(  # noqa: PLR0917 - one private call site, named by position for brevity
        self,
        events: pa.Table,
        idx: np.ndarray,
        times: np.ndarray,
        days: np.ndarray,
        arrival_days: np.ndarray,
        session_hashes: np.ndarray,
        new_ids: pa.Array,
        last: Position,
    ) -> _Staged:
        """The changed customers' new running values and the set members this batch adds (``session_hashes``: the
        string hash of each event's session id)."""
        groups = _Groups(idx)
        changed, inverse = groups.keys, groups.inverse
        old = self._current(changed)
        rows: dict[str, np.ndarray] = {}
        rows["first_event_at"] = np.minimum(old["first_event_at"], groups.min(times))
        rows["last_event_at"] = np.maximum(old["last_event_at"], groups.max(times))
        rows["events"] = old["events"] + groups.count()
        type_codes = _type_codes(events.column("event_type"))
        for code, column in enumerate(_TYPE_COLUMNS):
            rows[column] = old[column] + groups.count(type_codes == code)

        # distinct sessions: the (customer, session) pairs this batch counts, those not remembered within the
        # distinct-count window (as event ids within theirs: a rule between the two events alone)
        sessions = contiguous(events.column("session_id"))
        session_probe = mix64(idx, session_hashes)
        first = _first_of_each(session_probe, [idx], strings=sessions)
        session_bytes = fixed_bytes(sessions.take(pa.array(first)))
        seen = self._sessions.contains(
            session_probe[first],
            {"idx": idx[first], "session": session_bytes},
            arrival_days[first] - self.distinct_window_days,
        )
        new_sessions, new_session_bytes = first[~seen], session_bytes[~seen]
        if len(first) < len(idx) and arrival_days.min() < arrival_days.max():
            again = _counted_again(
                self._sessions,
                self.distinct_window_days,
                session_probe,
                lambda rows: {"idx": idx[rows], "session": fixed_bytes(sessions.take(pa.array(rows)))},
                arrival_days,
                first,
                seen,
            )
            if len(again):
                new_sessions = np.concatenate([new_sessions, again])
                new_session_bytes = np.concatenate(
                    [new_session_bytes, fixed_bytes(sessions.take(pa.array(again)))]
                )
        rows["sessions"] = old["sessions"] + groups.count_rows(new_sessions)

        # distinct active days and purchase days: exact 64-bit keys (customer index, day, purchase flag)
        purchase = type_codes == _TYPE_COLUMNS.index("purchases")
        day_keys = np.concatenate(
            (_day_keys(idx, days, np.zeros(len(idx), bool)), _day_keys(idx[purchase], days[purchase], True))
        )
        day_rows = np.concatenate((np.arange(len(idx)), np.flatnonzero(purchase)))
        day_is_purchase = np.arange(len(day_keys)) >= len(idx)
        # a purchase day is remembered for good (its arrival day taken as the last one there is): ``frequency``,
        # which the CLV models take as it is, stays exact over the whole history
        day_arrivals = np.where(day_is_purchase, KEPT_FOR_GOOD, arrival_days[day_rows])
        day_first = _first_rows(day_keys)[0]
        day_seen = self._days.contains(
            day_keys[day_first], {}, day_arrivals[day_first] - self.distinct_window_days
        )
        new_days = day_first[~day_seen]
        if len(day_first) < len(day_keys) and arrival_days.min() < arrival_days.max():
            again = _counted_again(
                self._days,
                self.distinct_window_days,
                day_keys,
                lambda rows: {},  # the key is the member
                day_arrivals,
                day_first,
                day_seen,
            )
            new_days = np.concatenate([new_days, again])
        rows["active_days"] = old["active_days"] + groups.count_rows(
            day_rows[new_days[~day_is_purchase[new_days]]]
        )
        rows["purchase_days"] = old["purchase_days"] + groups.count_rows(
            day_rows[new_days[day_is_purchase[new_days]]]
        )

        # purchases: revenue, first/last purchase, and the revenue of the first purchase day
        cents = _cents(events.column("revenue"))
        cents = np.where(purchase, cents, 0)
        rows["revenue_cents"] = old["revenue_cents"] + groups.sum(cents)
        rows["first_purchase_at"] = np.minimum(old["first_purchase_at"], groups.min(times, purchase))
        rows["last_purchase_at"] = np.maximum(old["last_purchase_at"], groups.max(times, purchase))
        batch_first_day = groups.min(days, purchase)
        rows["first_purchase_day"] = np.minimum(old["first_purchase_day"], batch_first_day)
        rows["last_purchase_day"] = np.maximum(old["last_purchase_day"], groups.max(days, purchase))
        on_first_day = purchase & (days == batch_first_day[inverse])
        batch_first_revenue = groups.sum(np.where(on_first_day, cents, 0))
        old_revenue = old["first_day_revenue_cents"]
        rows["first_day_revenue_cents"] = np.where(
            batch_first_day < old["first_purchase_day"],
            batch_first_revenue,
            np.where(
                batch_first_day == old["first_purchase_day"], old_revenue + batch_first_revenue, old_revenue
            ),
        )

        as_of = int(times.max()) if self._as_of is None else max(self._as_of, int(times.max()))
        representatives = groups.first_rows()
        names = contiguous(events.column("customer_id")).take(pa.array(representatives))
        output = _output_rows(names, rows, as_of, self.shard_id, last.sequence_number)
        return _Staged(
            AppliedBatch(
                events=events,
                customer_rows=output,
                rejects=ERRORS_SCHEMA.empty_table(),
                records_in=0,
                records_skipped=0,
                duplicates=0,
                position=last,
            ),
            new_customer_ids=new_ids,
            changed=changed,
            rows=rows,
            sessions={
                "probe": session_probe[new_sessions],
                "idx": idx[new_sessions].astype(np.int32),
                "session": new_session_bytes,
                "day": arrival_days[new_sessions].astype(np.int32),
            },
            session_ids=sessions.take(pa.array(new_sessions)),
            days=day_keys[new_days],
            day_arrivals=day_arrivals[new_days].astype(np.int32),
            as_of=as_of,
        )

    def _current(self, changed: np.ndarray) -> dict[str, np.ndarray]:
        """The running values of ``changed`` customers (start values for customers not seen before)."""
        known = changed < len(self._customers)
        current = {}
        for name in RUNNING_COLUMNS:
            values = np.full(len(changed), _START.get(name, 0), dtype=np.int64)
            values[known] = self._cols[name][changed[known]]
            current[name] = values
        return current

    # ------------------------------------------------------------------ installing (the commit)
    def _install(self, staged: _Staged) -> None:
        """Change the in-memory state and queue the batch for the local file (written when a sync is due).

        The in-memory change is undone if anything fails, including a sync this batch made due, so a failed
        install leaves the state exactly as it was (what ``staged`` promises); batches installed before stay queued.
        """
        applied = staged.applied
        if applied.position is None:
            return
        self._grow(len(self._customers) + len(staged.new_customer_ids))  # spare capacity changes no value
        undo = _Undo(
            customers=self._customers.mark(),
            rows={name: self._cols[name][staged.changed].copy() for name in staged.rows},
            changed=staged.changed,
            runs=(list(self._event_ids.runs), list(self._sessions.runs), list(self._days.runs)),
            position=self._position,
            as_of=self._as_of,
            arrival_day=self._arrival_day,
        )
        queued = len(self._unsynced)
        try:
            self._install_in_memory(staged)
            if self.persistent:
                start = len(self._customers) - len(staged.new_customer_ids)
                self._unsynced.append(_journal_part(staged, start))
                if self._sync_due():
                    self.sync()
        except BaseException:
            del self._unsynced[queued:]
            self._undo(undo)
            raise

    def _sync_due(self) -> bool:
        records = sum(part.records for part in self._unsynced)
        waited = time.monotonic() - self._synced_at
        return records >= self.options.sync_every_records or waited >= self.options.sync_every_seconds

    def sync(self, *, compact: bool = True) -> None:
        """Write the batches installed since the last sync, and the position, to the local journal as one sync (on
        disk whole or not at all: the journal is exact at its position whenever it is read).

        The journal only grows (changed customers' rows again, event ids past the de-duplication window): once its
        bytes would pass twice the state's, the state is written whole instead, so the journal on disk and a
        restart's load stay proportional to the state, not to the shard's history (amortized: a rewrite comes after
        more bytes appended than it writes). Weighed in bytes, not rows: a customer's row is five times an event id's.
        ``compact=False`` only appends (a stop, which has seconds)."""
        if not self.persistent:
            return
        journal = self._journal(self._unsynced) if self._unsynced else {}
        appended = sum(table.nbytes for table in journal.values())
        if compact and self._journal_due_for_rewrite(appended):
            self._rewrite_journal()
        else:
            self._write_file(journal, replace=False)

    def _journal_due_for_rewrite(self, appended: int = 0) -> bool:
        return self._journal_bytes + appended > 2 * self.memory_total() + _JOURNAL_SLACK_BYTES

    def _write_file(self, tables: dict[str, pa.Table], *, replace: bool) -> None:
        """One sync of the journal: ``tables`` appended (or replacing all it holds), and the position.

        A write the disk refuses (full, failing) ends the local file, not the shard: see ``_continue_in_memory``.
        """
        journal = self._journal_file
        if journal is not None and self.persistent:
            typed = {name: _journal_typed(name, table) for name, table in tables.items()}
            try:
                written = journal.write(typed, JournalProgress(self._position, self._as_of), replaces=replace)
            except OSError as error:
                self._continue_in_memory(error)
            else:
                self._journal_bytes = written if replace else self._journal_bytes + written
        self._unsynced = []
        self._synced_at = time.monotonic()

    def _continue_in_memory(self, error: OSError) -> None:
        """The local journal could not be written: go on with the state in memory and no file.

        The journal is a cache: S3 holds every committed batch, so nothing is lost, and a restart restores from there
        (from the journal as it was last written, if it still reads). Stopping instead would loop while the disk
        stays full: every restart restores, writes the journal and fails again. The journal stays locked until the
        state closes: no other process of this host takes the shard's directory meanwhile.
        """
        self.local_file_error = one_line(error)
        log.error(
            "the local state %s could not be written (%s): the shard goes on from memory without it; S3 holds every "
            "commit, and a restart restores from there",
            self.local_dir,
            self.local_file_error,
            extra={"shard_id": self.shard_id},
        )
        self.persistent = False

    def _install_in_memory(self, staged: _Staged) -> None:
        self._customers.add(staged.new_customer_ids, staged.new_customer_hashes)
        self._grow(len(self._customers))
        for name, values in staged.rows.items():
            self._cols[name][staged.changed] = values
        if staged.event_ids:
            newest = int(staged.event_ids["day"].max())
            self._arrival_day = newest if self._arrival_day is None else max(self._arrival_day, newest)
            self._event_ids.add(staged.event_ids["probe"], staged.event_ids, self._window_start())
        if staged.sessions:
            self._sessions.add(staged.sessions["probe"], staged.sessions, self._distinct_window_start())
        self._days.add(staged.days, {"day": staged.day_arrivals}, self._distinct_window_start())
        self._position = staged.applied.position
        self._as_of = staged.as_of

    def _undo(self, undo: _Undo) -> None:
        self._customers.rollback(undo.customers)
        for name, values in undo.rows.items():
            self._cols[name][undo.changed] = values
        self._event_ids.runs, self._sessions.runs, self._days.runs = (list(runs) for runs in undo.runs)
        self._position, self._as_of, self._arrival_day = undo.position, undo.as_of, undo.arrival_day

    def _grow(self, size: int) -> None:
        capacity = len(self._cols["events"])
        if size <= capacity:
            return
        # a quarter spare: growth stays amortized without holding twice the memory
        capacity = max(size, capacity + capacity // 4, 1024)
        for name, values in self._cols.items():
            grown = np.full(capacity, _START.get(name, 0), dtype=_dtype(name))
            grown[: len(values)] = values
            self._cols[name] = grown

    def _journal(self, parts: list[_JournalPart]) -> dict[str, pa.Table]:
        """What the queued batches append to the journal: what they added, and their changed customers' rows now."""
        changed = np.unique(np.concatenate([part.changed for part in parts]))
        tables: dict[str, list[pa.Table]] = {}
        for part in parts:
            for name, table in part.tables.items():
                tables.setdefault(name, []).append(table)
        journal = {name: pa.concat_tables(pieces) for name, pieces in tables.items()}
        if len(changed):
            journal["customer_rows"] = pa.table(
                {
                    "idx": changed.astype(np.int32),
                    **{name: self._cols[name][changed] for name in RUNNING_COLUMNS},
                }
            )
        return journal

    # ------------------------------------------------------------------ loading the local cache
    def _load(self, journal: JournalContents) -> None:
        """Read the journal into memory; rewrite it when its bytes pass twice the state's (cost once per open)."""
        con = self.con
        tables = {
            name: pa.concat_tables(journal.tables.get(name) or [schema.empty_table()])
            for name, schema in _JOURNAL_SCHEMAS.items()
            if name not in _COUNTED and name != "customer_rows"
        }
        # each sync's rows in this version's types (an earlier version's counts were all 32-bit), then concatenated
        tables["customer_rows"] = pa.concat_tables(
            [_journal_typed("customer_rows", part) for part in journal.tables.get("customer_rows", [])]
            or [_JOURNAL_SCHEMAS["customer_rows"].empty_table()]
        )
        arrival_day = _latest_day(tables["applied_events"])
        upgrade_day = _upgrade_day(arrival_day)
        # a part of an earlier version's layout: rewritten below, so that no later open moves its day
        upgraded = False
        for name in _COUNTED:  # each sync's part as this version writes it, then concatenated
            parts = journal.tables.get(name, [])
            upgraded |= any("arrival_day" not in part.column_names for part in parts)
            typed = [_journal_typed(name, _with_arrival_days(part, upgrade_day)) for part in parts]
            tables[name] = pa.concat_tables(typed or [_JOURNAL_SCHEMAS[name].empty_table()])
        try:  # a customer's last row is its current one (its events only grow)
            con.register("journal_rows", tables["customer_rows"])
            tables["customer_rows"] = con.sql(
                "SELECT * FROM journal_rows QUALIFY row_number() OVER (PARTITION BY idx ORDER BY events DESC) = 1"
            ).to_arrow_table()
        finally:
            con.unregister("journal_rows")
        # only the event ids a lookup can still match: the journal may hold every id the shard ever applied
        applied = tables["applied_events"]
        self._arrival_day = arrival_day
        window_start = self._window_start()
        if window_start is not None:
            tables["applied_events"] = applied.filter(pc.greater_equal(applied.column("day"), window_start))
        distinct_window_start = self._distinct_window_start()
        if distinct_window_start is not None:
            for name in _COUNTED:
                counted = tables[name]
                tables[name] = counted.filter(
                    pc.greater_equal(counted.column("arrival_day"), distinct_window_start)
                )
        self._position, self._as_of = journal.progress.position, journal.progress.as_of_micros
        self._load_indexed(tables)
        self._journal_bytes = journal.bytes
        if upgraded or self._journal_due_for_rewrite():
            self._rewrite_journal()

    def _load_indexed(self, tables: dict[str, pa.Table]) -> None:
        """Install tables keyed by dense index (``idx``) into memory."""
        customers = tables["customers"]
        if not np.array_equal(customers.column("idx").to_numpy(), np.arange(customers.num_rows)):
            raise JournalDamagedError("the customers' indexes are not 0, 1, 2, ... in order")
        self._customers = StringIndex(self._hash)
        self._customers.add(contiguous(customers.column("customer_id")))
        self._grow(len(self._customers))
        rows = tables["customer_rows"]
        if rows.num_rows:
            where = rows.column("idx").to_numpy()
            for name in RUNNING_COLUMNS:
                self._cols[name][where] = rows.column(name).to_numpy()
        applied = tables["applied_events"]
        if applied.num_rows:
            idx = applied.column("idx").to_numpy()
            high = applied.column("id_high").to_numpy()
            low = applied.column("id_low").to_numpy()
            arrival = applied.column("day").to_numpy()
            self._arrival_day = int(arrival.max())
            self._event_ids.add(
                mix64(idx, high, low),
                {"idx": idx.astype(np.int32), "high": high, "low": low, "day": arrival},
                self._window_start(),
            )
            self._event_ids.prune(self._window_start())  # one run: the add's merges would never prune it
        sessions = tables["customer_sessions"]
        if sessions.num_rows:
            idx = sessions.column("idx").to_numpy()
            strings = contiguous(sessions.column("session_id"))
            self._sessions.add(
                mix64(idx, self._hash(strings)),
                {
                    "idx": idx.astype(np.int32),
                    "session": fixed_bytes(strings),
                    "day": sessions.column("arrival_day").to_numpy().astype(np.int32),
                },
                self._distinct_window_start(),
            )
            self._sessions.prune(self._distinct_window_start())
        days = tables["customer_days"]
        if days.num_rows:
            self._days.add(
                _day_keys(
                    days.column("idx").to_numpy(),
                    days.column("day").to_numpy().astype(np.int64),
                    days.column("purchase").to_numpy(zero_copy_only=False),
                ),
                {"day": days.column("arrival_day").to_numpy().astype(np.int32)},
                self._distinct_window_start(),
            )
            self._days.prune(self._distinct_window_start())

    def _indexed_tables(self) -> dict[str, pa.Table]:
        # a snapshot or a rewrite holds what the windows remember only
        self._event_ids.prune(self._window_start())
        self._sessions.prune(self._distinct_window_start())
        self._days.prune(self._distinct_window_start())
        count = len(self._customers)
        events = self._event_ids.members()
        sessions = self._sessions.members()
        days = self._days.members()
        idx, day, purchase = _split_day_keys(days["probe"])
        return {
            "customers": pa.table(
                {"idx": pa.array(np.arange(count)), "customer_id": self._customers.names()}
            ),
            "customer_rows": pa.table(
                {
                    "idx": np.arange(count),
                    **{name: self._cols[name][:count].astype(np.int64) for name in RUNNING_COLUMNS},
                }
            ),
            "customer_sessions": pa.table(
                {
                    "idx": sessions["idx"].astype(np.int64),
                    "session_id": pa.array(sessions["session"].astype(str).tolist(), pa.string())
                    if len(sessions["probe"])
                    else pa.array([], pa.string()),
                    "arrival_day": sessions["day"].astype(np.int32),
                }
            ),
            "customer_days": pa.table(
                {"idx": idx, "day": day, "purchase": purchase, "arrival_day": days["day"].astype(np.int32)}
            ),
            "applied_events": pa.table(
                {
                    "idx": events["idx"].astype(np.int64),
                    "id_high": events["high"].astype(np.uint64),
                    "id_low": events["low"].astype(np.uint64),
                    "day": events["day"].astype(np.int32),
                }
            ),
        }

    def _rewrite_journal(self) -> None:
        """Replace the journal by the current state (drops superseded rows and the ids before the window)."""
        self._write_file(self._indexed_tables(), replace=True)

    # ------------------------------------------------------------------ snapshots
    def export_tables(self) -> dict[str, pa.Table]:
        """The whole state as Arrow tables keyed by customer id (self-describing), for a snapshot."""
        if self._in_transaction:
            raise RuntimeError("cannot export while a staged batch is open")
        tables = self._indexed_tables()
        names = tables["customers"].column("customer_id")
        rows = tables["customer_rows"].drop_columns(["idx"])
        exported = {"customers": rows.add_column(0, "customer_id", names)}
        for name in ("customer_sessions", "customer_days", "applied_events"):
            table = tables[name]
            owner = names.take(pa.array(table.column("idx").to_numpy()))
            exported[name] = table.drop_columns(["idx"]).add_column(0, "customer_id", owner)
        # the position and as-of are the snapshot pointer's (``SnapshotPointer``), not a table's
        return exported

    def import_tables(
        self, tables: dict[str, pa.Table], hash_key_range: tuple[int, int] | None = None, replace: bool = True
    ) -> None:
        """Load snapshot tables (the caller sets the position with ``set_position``; a ``shard_progress`` table of a
        snapshot written by an earlier version is not read).

        ``hash_key_range`` (first, last; inclusive) keeps the customers whose Kinesis hash key falls in it, and
        ``replace=False`` adds to what is there: a child shard takes from each parent only the customers that hash
        into its own range, with their sessions, days and event ids.
        """
        customers = tables["customers"]
        if hash_key_range is not None:
            customers = customers.filter(
                self._in_hash_key_range(customers.column("customer_id"), *hash_key_range)
            )
        if replace:
            self._reset()
        names = contiguous(customers.column("customer_id"))
        clashes = names.filter(pa.array(self._customers.find(names) >= 0)).to_pylist()
        if clashes:
            raise ValueError(f"customers present in two imported states, e.g. {clashes[:3]}")
        start = len(self._customers)
        local = pa.array(np.arange(start, start + len(names)))
        indexed: dict[str, pa.Table] = {
            "customers": pa.table({"idx": local, "customer_id": names}),
            "customer_rows": customers.drop_columns(["customer_id"]).add_column(0, "idx", local),
        }
        upgrade_day = _upgrade_day(_latest_day(tables.get("applied_events")))
        for name in ("customer_sessions", "customer_days", "applied_events"):
            part = tables.get(name)
            if part is None:
                indexed[name] = _empty_indexed()
                continue
            if name in _COUNTED:
                part = _with_arrival_days(part, upgrade_day)
            owners = pc.index_in(part.column("customer_id"), value_set=names)
            keep = pc.is_valid(owners)
            indexed[name] = (
                part.filter(keep)
                .drop_columns(["customer_id"])
                .add_column(0, "idx", pc.add(owners.filter(keep).cast(pa.int64()), start))
            )
        self._load_more(indexed)
        if self.persistent:
            self._rewrite_journal()

    def _in_hash_key_range(self, customer_ids: pa.ChunkedArray, first: int, last: int) -> pa.Array:
        """Whether each customer id, as the partition key its events are put with (``producer.kinesis_put``), has a
        Kinesis hash key (the 128-bit MD5 of the key) within ``first`` and ``last``."""
        relation = self.con.from_arrow(pa.table({"customer_id": customer_ids}))
        inside = relation.project(
            f"CAST('0x' || md5(customer_id) AS UHUGEINT) BETWEEN {int(first)}::UHUGEINT AND {int(last)}::UHUGEINT"
        )
        return inside.to_arrow_table().column(0).combine_chunks()

    def _load_more(self, tables: dict[str, pa.Table]) -> None:
        """Append customers (and their set members) that are not in the state yet."""
        merged: dict[str, pa.Table] = {}
        current = self._indexed_tables() if len(self._customers) else None
        for name, table in tables.items():
            if table.num_rows == 0 and name != "customers":
                merged[name] = current[name] if current else _empty_indexed()
                continue
            if current is None:
                merged[name] = table
            else:
                merged[name] = pa.concat_tables([current[name], table.cast(current[name].schema)])
        position, as_of = self._position, self._as_of
        self._reset()
        self._position, self._as_of = position, as_of
        self._load_indexed(merged)

    def snapshot_rows(self) -> pa.Table:
        """Every customer's current row (full scan: for summaries and tests, not the hot path)."""
        count = len(self._customers)
        last = self._position or Position("0")
        if count == 0:
            return CUSTOMER_AGGREGATES_SCHEMA.empty_table()
        rows = {name: self._cols[name][:count].astype(np.int64) for name in RUNNING_COLUMNS}
        as_of = self._as_of if self._as_of is not None else int(rows["last_event_at"].max())
        return _output_rows(self._customers.names(), rows, as_of, self.shard_id, last.sequence_number)


# ---------------------------------------------------------------------------------------------------- helpers


class _Groups:
    """Vectorized per-group reductions for a batch (groups = customers changed, rows = new events)."""

    def __init__(self, keys: np.ndarray) -> None:
        """Groups of equal ``keys``, numbered in key order (``keys`` must not be empty)."""
        # an unstable sort: the order within a group does not matter to any reduction here
        self.order = np.argsort(keys)
        ordered = keys[self.order]
        starts_group = np.empty(len(keys), dtype=bool)
        starts_group[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=starts_group[1:])
        self.starts = np.flatnonzero(starts_group)
        self.keys = ordered[self.starts]  # each group's key, ascending
        self.groups = len(self.starts)
        self.inverse = np.empty(len(keys), dtype=np.int64)  # each row's group
        self.inverse[self.order] = np.cumsum(starts_group) - 1

    def count(self, where: np.ndarray | None = None) -> np.ndarray:
        chosen = self.inverse if where is None else self.inverse[where]
        return np.bincount(chosen, minlength=self.groups).astype(np.int64)

    def count_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.bincount(self.inverse[rows], minlength=self.groups).astype(np.int64)

    def _reduce(self, ufunc: Any, values: np.ndarray, where: np.ndarray | None, empty: int) -> np.ndarray:
        if where is not None:
            values = np.where(where, values, empty)
        reduced: np.ndarray = ufunc.reduceat(values[self.order], self.starts).astype(np.int64)
        return reduced

    def min(self, values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        return self._reduce(np.minimum, values, where, _NONE_LOW)

    def max(self, values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        return self._reduce(np.maximum, values, where, _NONE_HIGH)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.add, values, None, 0)

    def first_rows(self) -> np.ndarray:
        return self.order[self.starts]


def _dtype(column: str) -> type[np.signedinteger[Any]]:
    return np.int32 if column in _DAY_COUNTS else np.int64


def _output_rows(
    names: pa.Array, rows: dict[str, np.ndarray], as_of: int, shard_id: str, sequence: str
) -> pa.Table:
    """Rows in the published contract (CUSTOMER_AGGREGATES_SCHEMA), sorted by customer id."""
    count = len(names)
    # sorted before the columns are built: numpy reorders the numbers, one take the names
    order = pc.sort_indices(names).to_numpy()
    names = names.take(order)
    rows = {column: values[order] for column, values in rows.items()}
    purchase_days = rows["purchase_days"]
    buyers = purchase_days > 0
    repeat = purchase_days > 1
    first_day = rows["first_purchase_day"]
    as_of_day = as_of // _US_PER_DAY
    repeat_cents = rows["revenue_cents"] - rows["first_day_revenue_cents"]
    with np.errstate(divide="ignore", invalid="ignore"):
        monetary = np.where(repeat, (repeat_cents / 100.0) / np.maximum(purchase_days - 1, 1), 0.0)
        weighted = np.zeros(count, dtype=np.int64)
        for column, weight in ENGAGEMENT_WEIGHTS.items():
            weighted += weight * rows[column]
        engagement = weighted.astype(np.float64) / rows["active_days"]
    table = pa.table(
        {
            "customer_id": names,
            "version": rows["events"],
            "as_of": pa.array(np.full(count, as_of, dtype=np.int64)).cast(UTC_MICROS),
            "first_event_at": pa.array(rows["first_event_at"]).cast(UTC_MICROS),
            "last_event_at": pa.array(rows["last_event_at"]).cast(UTC_MICROS),
            "events": rows["events"],
            **{column: rows[column] for column in _TYPE_COLUMNS[:-1]},
            "purchases": rows["purchases"],
            "sessions": rows["sessions"],
            "active_days": rows["active_days"],
            "revenue": _money(rows["revenue_cents"]),
            "first_purchase_at": pa.array(rows["first_purchase_at"], mask=~buyers).cast(UTC_MICROS),
            "last_purchase_at": pa.array(rows["last_purchase_at"], mask=~buyers).cast(UTC_MICROS),
            "purchase_days": purchase_days,
            "frequency": pa.array(purchase_days - 1, mask=~buyers),
            "recency": pa.array(rows["last_purchase_day"] - first_day, mask=~buyers),
            "T": pa.array(as_of_day - first_day, mask=~buyers),
            "monetary_value": pa.array(monetary, mask=~buyers),
            "repeat_revenue": _money(repeat_cents, ~buyers),
            "engagement_score": engagement,
            "shard_id": pa.repeat(shard_id, count),
            "updated_through_sequence": pa.repeat(sequence, count),
        }
    )
    return table.cast(CUSTOMER_AGGREGATES_SCHEMA)


def _money(cents: np.ndarray, nulls: np.ndarray | None = None) -> pa.Array:
    """int64 cents -> DECIMAL(18, 2) without a float in between (the decimal's unscaled value is the cents)."""
    words = np.empty((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = cents >> 63  # sign extension into the high word
    validity = None
    null_count = 0
    if nulls is not None and nulls.any():
        validity = pa.py_buffer(np.packbits(~nulls, bitorder="little").tobytes())
        null_count = int(nulls.sum())
    return pa.Array.from_buffers(MONEY, len(cents), [validity, pa.py_buffer(words)], null_count=null_count)


def _cents(revenue: pa.ChunkedArray) -> np.ndarray:
    """DECIMAL(18, 2) -> int64 cents (null -> 0)."""
    cents = pc.fill_null(decimal_cents(contiguous(revenue)), 0)
    return np.asarray(cents.to_numpy(zero_copy_only=False), dtype=np.int64)


def _micros(times: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(times.cast(pa.int64()).to_numpy(), dtype=np.int64)


_HEX_COLUMNS: Final = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _uuid_halves(event_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Validated UUID strings (36 characters) -> their 128 bits as two uint64 columns, vectorized."""
    count = len(event_ids)
    bounds, body = value_bytes(event_ids)
    if count and np.all(np.diff(bounds) == 36):
        text = body.reshape(count, 36)
    else:  # never for validated events; kept total for any input
        text = np.array([s.ljust(36, "0")[:36].encode() for s in event_ids.to_pylist()], dtype="S36")
        text = text.view(np.uint8).reshape(count, 36)
    nibbles = hex_value(text[:, _HEX_COLUMNS])
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    words = np.ascontiguousarray(packed).view(">u8").astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy()


def _type_codes(event_types: pa.ChunkedArray) -> np.ndarray:
    codes = pc.index_in(event_types, value_set=pa.array(EVENT_TYPES))
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)


class _StringHasher:
    """A 64-bit hash of each string (DuckDB's hash, vectorized); only a probe, never trusted for equality.

    A relation over the Arrow array, not a prepared statement: DuckDB binds this one-expression projection in
    microseconds, and streams the input (a restore hashes millions of strings). Through an ``ArrowSource`` it
    cost 4.8 ms for a 50k batch's strings (the source's list is handed over in slices), this way 1.8.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.connection = con

    def __call__(self, strings: pa.Array) -> np.ndarray:
        hashed = self.connection.from_arrow(pa.table({"s": strings})).select("hash(s) AS h").to_arrow_table()
        return np.asarray(hashed.column("h").to_numpy(), dtype=np.uint64)

    def many(self, *arrays: pa.Array) -> list[np.ndarray]:
        """The hashes of several string arrays, in one statement."""
        hashed = self(pa.concat_arrays(list(arrays)))
        bounds = np.cumsum([0, *(len(array) for array in arrays)])
        return [hashed[start:end] for start, end in itertools.pairwise(bounds)]


def _mask(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` (any order) as a boolean mask: a filter copies runs of kept rows, faster than a take of them."""
    mask = np.zeros(size, dtype=bool)
    mask[rows] = True
    return mask


def _counted_again(  # noqa: PLR0917 - three private call sites, in the same words
    remembered: KeyRuns,
    window_days: int,
    probe: np.ndarray,
    members: Callable[[np.ndarray], dict[str, np.ndarray]],
    arrival_days: np.ndarray,
    first: np.ndarray,
    seen: np.ndarray,
) -> np.ndarray:
    """Rows repeating an earlier row of the batch that still count: each arrived more than the window after the
    row that counted its member last (this batch's ``first`` row, or the one the state remembers when that first was
    ``seen``). ``members`` gives the members' exact columns for some rows. Only a batch spanning arrival days can
    hold one: repeats arriving within the window of the earliest such day are left out at once, and the few others
    are walked in row order."""
    repeats = np.flatnonzero(~_mask(first, len(probe)))
    at = np.flatnonzero(np.isin(probe[first], probe[repeats]))  # the first rows the repeats may repeat
    firsts = first[at]
    stored = remembered.latest_day(probe[firsts], members(firsts))
    counted_day = np.where(seen[at], stored, arrival_days[firsts])
    if not len(counted_day):
        return np.empty(0, dtype=first.dtype)
    # a repeat counts again only past the window of the day that counted its member, at least the earliest one
    repeats = repeats[arrival_days[repeats] - window_days > counted_day.min()]
    if not len(repeats):
        return np.empty(0, dtype=first.dtype)

    def keys(rows: np.ndarray) -> list[tuple[Any, ...]]:  # the probe too: a member may be its probe alone
        columns = [probe[rows], *members(rows).values()]
        return list(zip(*(column.tolist() for column in columns), strict=True))

    applied_day = dict(zip(keys(firsts), counted_day.tolist(), strict=True))
    again = []
    for row, key in zip(repeats.tolist(), keys(repeats), strict=True):
        if arrival_days[row] - window_days > applied_day[key]:
            again.append(row)
            applied_day[key] = int(arrival_days[row])
    return np.array(again, dtype=first.dtype)


def _first_of_each(probe: np.ndarray, exact: list[np.ndarray], strings: pa.Array | None = None) -> np.ndarray:
    """Row numbers of the first occurrence of each distinct member, in probe order (exact despite the hash): a
    ``KeyRuns`` lookup or add of members in probe order sorts nothing."""
    first, representative = _first_rows(probe)
    same = np.ones(len(probe), dtype=bool)
    for column in exact:
        same &= column == column[representative]
    if strings is not None:
        same &= pc.equal(strings, strings.take(pa.array(representative))).to_numpy(zero_copy_only=False)
    if not same.all():  # a 64-bit probe collision inside the batch: resolve those rows exactly
        extra = [
            row
            for row in np.flatnonzero(~same).tolist()
            if not any(
                _same_member(row, other, exact, strings) for other in range(row) if probe[other] == probe[row]
            )
        ]
        first = np.concatenate([first, np.array(extra, dtype=first.dtype)])
        first = first[np.argsort(probe[first], kind="stable")]
    return first


def _first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each distinct key (in key order), and for every row the first row of its key: what
    ``np.unique`` returns with ``return_index`` and ``return_inverse``, at half its cost (an unstable sort, then
    the least row of each run of equal keys)."""
    if not len(keys):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    groups = _Groups(keys)
    first: np.ndarray = np.minimum.reduceat(groups.order, groups.starts)
    return first, first[groups.inverse]


def _same_member(a: int, b: int, exact: list[np.ndarray], strings: pa.Array | None) -> bool:
    if any(column[a] != column[b] for column in exact):
        return False
    return strings is None or strings[a].as_py() == strings[b].as_py()


def _day_keys(idx: np.ndarray, days: np.ndarray, purchase: np.ndarray | bool) -> np.ndarray:
    """(customer index, UTC day, purchase flag) packed into one exact 64-bit key."""
    flag = np.asarray(purchase).astype(np.uint64)
    return (
        (idx.astype(np.uint64) << np.uint64(22))
        | ((days + _DAY_BIAS).astype(np.uint64) << np.uint64(1))
        | flag
    )


def _split_day_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = keys.astype(np.uint64)
    idx = (keys >> np.uint64(22)).astype(np.int64)
    day = ((keys >> np.uint64(1)) & np.uint64((1 << 21) - 1)).astype(np.int64) - _DAY_BIAS
    return idx, day.astype(np.int32), (keys & np.uint64(1)).astype(bool)


def _replace(applied: AppliedBatch, **changes: Any) -> AppliedBatch:
    values = {name: getattr(applied, name) for name in AppliedBatch.__dataclass_fields__}
    values.update(changes)
    return AppliedBatch(**values)


def _with_arrival_days(counted: pa.Table, day: int) -> pa.Table:
    """Sessions or days as a journal or snapshot written before the distinct-count window holds them (no
    ``arrival_day``): remembered as if counted on ``day``, so a whole window passes before any counts again (a
    purchase day for good, as every purchase day)."""
    if "arrival_day" in counted.column_names:
        return counted
    arrival = np.full(counted.num_rows, day, dtype=np.int32)
    if "purchase" in counted.column_names:
        arrival[counted.column("purchase").to_numpy(zero_copy_only=False)] = KEPT_FOR_GOOD
    return counted.append_column("arrival_day", pa.array(arrival))


def _latest_day(applied_events: pa.Table | None) -> int | None:
    """The latest arrival day of a table of event ids (None: no ids)."""
    if applied_events is None or not applied_events.num_rows:
        return None
    return int(pc.max(applied_events.column("day")).as_py())


def _upgrade_day(arrival_day: int | None) -> int:
    """The day sessions and days of an earlier version's state are taken as counted on: the state's latest arrival
    day, or today (UTC) for a state that remembers no event id."""
    if arrival_day is not None:
        return arrival_day
    return int(time.time() // 86_400)


def _journal_typed(name: str, table: pa.Table) -> pa.Table:
    """``table`` with the journal's columns and types for ``name`` (every sync's files concatenate at a read)."""
    schema = _JOURNAL_SCHEMAS[name]
    return table.select(schema.names).cast(schema)


def _empty_indexed() -> pa.Table:
    """An imported table with no rows (its columns do not matter: no row is read)."""
    return pa.table({"idx": pa.array([], pa.int64())})


def _to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _to_datetime(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
