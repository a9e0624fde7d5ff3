"""The S3 key layout of every output and control object: built and parsed here, nowhere else.

::

    <prefix>/events/arrival_yyyymmdd=20261129/<stem>.parquet               valid, de-duplicated events
    <prefix>/customer_aggregates/arrival_yyyymmdd=20261129/<stem>.parquet  current rows of changed customers
    <prefix>/errors/arrival_yyyymmdd=20261129/<stem>.parquet               rejected records (dead letters)
    <prefix>/_control/intents/<shard>/<attempt>.json                       files a flush attempt is about to write
    <prefix>/_control/commits/<shard>/<previous position>.json             the shard's commit chain (one per flush)
    <prefix>/_control/snapshots/<shard>/latest.json                        pointer to the newest state snapshot
    <prefix>/_control/snapshots/<shard>/<position>-<write>/<table>.parquet snapshot tables (one writer's)
    <prefix>/_control/manifests/<output>-<yyyymmdd|all>.manifest            COPY manifests of committed files
    <prefix>/_control/current_rows/latest.json (and the file it names)      score's input, kept between its runs
    <prefix>/_control/commit_ledger/latest.json (and the file it names)     the commit records, kept for readers
    <prefix>/replays/<name>/customer_aggregates/...                        backfills (never the live outputs)
    <prefix>/clv/as_of_yyyymmdd=20261129/run=<run id>/part-00000.parquet   CLV scores and RFM segments of one run
    <prefix>/clv/as_of_yyyymmdd=20261129/run=<run id>/_model.json          that run's model parameters, diagnostics
    <prefix>/_control/clv/as_of_yyyymmdd=20261129.json                     the committed run of an as-of (written last)
    <prefix>/_control/clv/latest.json                                      the committed run of the newest as-of

``<stem>`` is ``<shard>-<first position>-<last position>-<attempt>``: one flush attempt writes one file per output,
in the partition of the day its earliest record arrived (``arrival_yyyymmdd``, an integer, so DuckDB, pyarrow, polars,
Spark, Athena and Redshift Spectrum all read the partition column as the same integer). A commit record's key is the
position the flush continues from (``start`` for the first flush of a shard): at most one commit can exist per
position, which is what fences a second writer (see consumer/shard_processor.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

from schemas.positions import SEQUENCE_DIGITS, Position

#: The data outputs, in the order a flush writes them.
DATA_OUTPUTS: Final = ("events", "customer_aggregates", "errors")
Output = Literal["events", "customer_aggregates", "errors"]
#: The readers' results kept between runs under ``_control/`` (``clickstream.kept_reads``).
KeptKind = Literal["current_rows", "commit_ledger"]

#: The Hive partition column of every data output: the UTC day the flush's earliest record arrived, as yyyymmdd.
PARTITION_COLUMN: Final = "arrival_yyyymmdd"
#: The commit key of a shard's first flush (it continues from no position).
CHAIN_START: Final = "start"
#: A data file's name: ``FlushName.stem`` (its positions are ``Position.key_part``s) and ``.parquet``.
_DATA_STEM: Final = re.compile(
    rf"(.+)-(\d{{{SEQUENCE_DIGITS},}}-\d+)-(\d{{{SEQUENCE_DIGITS},}}-\d+)-(\w+)\.parquet"
)
#: The Hive partition column of clv/: the UTC day of the scoring run's observation end, as yyyymmdd.
CLV_PARTITION_COLUMN: Final = "as_of_yyyymmdd"


@dataclass(frozen=True, slots=True)
class FlushName:
    """What names one flush attempt's files: its shard, the records it applied and the attempt's id."""

    shard_id: str
    first: Position
    last: Position
    attempt_id: str

    @property
    def stem(self) -> str:
        return f"{self.shard_id}-{self.first.key_part()}-{self.last.key_part()}-{self.attempt_id}"


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """Keys under one ``prefix`` (settings refuse an empty one: every key lives under it)."""

    prefix: str = ""

    def _root(self, folder: str) -> str:
        return f"{self.prefix.strip('/')}/{folder}/" if self.prefix.strip("/") else f"{folder}/"

    # ------------------------------------------------------------------ data
    def output_prefix(self, output: str) -> str:
        """``<prefix>/<output>/``: where one output's partitions live."""
        return self._root(output)

    def data_key(self, output: Output, arrival_day: date, name: FlushName) -> str:
        return f"{self.partition_prefix(output, int(f'{arrival_day:%Y%m%d}'))}{name.stem}.parquet"

    def partition_prefix(self, output: str, arrival_day: int) -> str:
        """``<prefix>/<output>/arrival_yyyymmdd=<day>/``: one arrival day's files of one output."""
        return f"{self._root(output)}{PARTITION_COLUMN}={arrival_day}/"

    def flush_name_of(self, key: str) -> FlushName | None:
        """The flush attempt a data key belongs to (inverse of ``data_key``'s name); None for any other key."""
        match = _DATA_STEM.fullmatch(key.rpartition("/")[2])
        if match is None:
            return None
        shard, first, last, attempt = match.groups()
        return FlushName(shard, Position.from_key_part(first), Position.from_key_part(last), attempt)

    def replay_prefix(self, name: str) -> str:
        return f"{self._root('replays')}{name}/"

    def replay_write_check_key(self, name: str) -> str:
        """An empty object a replay puts (and deletes) before its work, to learn it may write its output there; a
        leading ``_`` keeps it out of a reader of the folder (Spectrum, Hive, Spark, ``score --input``)."""
        return f"{self.replay_prefix(name)}_write_check"

    def replay_claim_key(self, name: str) -> str:
        """The range the replay name's folder holds (``schemas.control.ReplayClaim``); a leading ``_`` keeps it out
        of a reader of the folder."""
        return f"{self.replay_prefix(name)}_claim.json"

    def replay_output_key(self, name: str, start: datetime, end: datetime) -> str:
        """The customer rows a replay of [start, end) writes (times in UTC, to the minute)."""
        return f"{self.replay_prefix(name)}customer_aggregates/replay-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.parquet"

    # ------------------------------------------------------------------ control
    @property
    def control_prefix(self) -> str:
        return self._root("_control")

    @property
    def prefix_owner_key(self) -> str:
        """The stream the prefix belongs to (``schemas.control.PrefixOwner``)."""
        return f"{self.control_prefix}stream.json"

    def intents_prefix(self, shard_id: str) -> str:
        return f"{self.control_prefix}intents/{shard_id}/"

    def intent_key(self, shard_id: str, attempt_id: str) -> str:
        return f"{self.intents_prefix(shard_id)}{attempt_id}.json"

    @property
    def all_commits_prefix(self) -> str:
        return f"{self.control_prefix}commits/"

    def commits_prefix(self, shard_id: str) -> str:
        return f"{self.all_commits_prefix}{shard_id}/"

    def commit_key(self, shard_id: str, previous: Position | None) -> str:
        """The key of the commit that continues the shard's chain from ``previous`` (None: the chain's start)."""
        return f"{self.commits_prefix(shard_id)}{chain_link(previous)}.json"

    def commits_listing_start(self, shard_id: str, position: Position) -> str:
        """A ``StartAfter`` for listing the shard's commits that continue from ``position`` or later: it sorts before
        every commit key of ``position``'s sequence number whatever its sub-sequence (filter the rest by position)."""
        return f"{self.commits_prefix(shard_id)}{position.sequence_key_part()}"

    def commit_previous(self, key: str) -> Position | None:
        """The position a commit key continues from (inverse of ``commit_key``)."""
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        return None if name == CHAIN_START else Position.from_key_part(name)

    def manifest_key(self, output: str, arrival_day: int | None) -> str:
        """A Redshift COPY manifest of one output's committed files (of one arrival day, or all)."""
        return f"{self.control_prefix}manifests/{output}-{arrival_day if arrival_day is not None else 'all'}.manifest"

    def arrival_day_of(self, key: str) -> int | None:
        """The ``arrival_yyyymmdd`` partition value in a data key (None: not a partitioned data key)."""
        marker = f"/{PARTITION_COLUMN}="
        if marker not in f"/{key}":
            return None
        value = f"/{key}".split(marker, 1)[1].split("/", 1)[0]
        return int(value) if value.isdigit() else None

    # ------------------------------------------------------------------ clv (clickstream score)
    @property
    def clv_prefix(self) -> str:
        """``<prefix>/clv/``: one partition per as-of day, one folder per run inside it."""
        return self._root("clv")

    def clv_partition_prefix(self, as_of_day: date) -> str:
        return f"{self.clv_prefix}{CLV_PARTITION_COLUMN}={as_of_day:%Y%m%d}/"

    def clv_run_prefix(self, as_of_day: date, run_id: str) -> str:
        """The folder of one scoring run; a run never writes outside it, so a retry cannot mix with another run."""
        return f"{self.clv_partition_prefix(as_of_day)}run={run_id}/"

    def clv_data_key(self, as_of_day: date, run_id: str, part: int) -> str:
        return f"{self.clv_run_prefix(as_of_day, run_id)}part-{part:05d}.parquet"

    def clv_model_key(self, as_of_day: date, run_id: str) -> str:
        """Beside the data; the leading underscore keeps Spectrum, Athena and Hive from reading it as data."""
        return f"{self.clv_run_prefix(as_of_day, run_id)}_model.json"

    @property
    def clv_commits_prefix(self) -> str:
        return f"{self.control_prefix}clv/"

    def clv_commit_key(self, as_of_day: date) -> str:
        """The commit of an as-of: it names the one run whose files are the scores of that day."""
        return f"{self.clv_commits_prefix}{CLV_PARTITION_COLUMN}={as_of_day:%Y%m%d}.json"

    def clv_commit_day(self, key: str) -> date | None:
        """The as-of day a key of ``clv_commits_prefix`` commits (None: not a day's commit, e.g. latest.json)."""
        name = key.rsplit("/", 1)[-1]
        marker = f"{CLV_PARTITION_COLUMN}="
        if not (name.startswith(marker) and name.endswith(".json")):
            return None
        try:
            return datetime.strptime(name.removeprefix(marker).removesuffix(".json"), "%Y%m%d").date()
        except ValueError:
            return None

    def clv_run_of(self, key: str) -> str | None:
        """The run id of a key under ``clv_prefix`` (its ``run=<id>/`` folder), None for any other key."""
        for part in key.split("/"):
            if part.startswith("run="):
                return part.removeprefix("run=")
        return None

    @property
    def clv_latest_key(self) -> str:
        return f"{self.clv_commits_prefix}latest.json"

    def kept_prefix(self, kind: KeptKind) -> str:
        """A reader's result kept between its runs (``clickstream.kept_reads``): ``current_rows`` (`score`'s
        input) or ``commit_ledger`` (the commit records the other readers take)."""
        return f"{self.control_prefix}{kind}/"

    def kept_pointer_key(self, kind: KeptKind) -> str:
        """The pointer to the kept file (``schemas.control.KeptReadPointer``)."""
        return f"{self.kept_prefix(kind)}latest.json"

    def kept_data_key(self, kind: KeptKind, write_id: str, suffix: str) -> str:
        return f"{self.kept_prefix(kind)}{write_id}{suffix}"

    def snapshots_prefix(self, shard_id: str) -> str:
        """Everything of the shard's snapshots: its pointer and every writer's tables."""
        return f"{self.control_prefix}snapshots/{shard_id}/"

    def snapshot_pointer_key(self, shard_id: str) -> str:
        return f"{self.snapshots_prefix(shard_id)}latest.json"

    def snapshot_table_key(self, shard_id: str, position: Position, write_id: str, table: str) -> str:
        """One writer's table of a snapshot at ``position``: ``write_id`` keeps two writers of the same position
        apart, so that a writer only ever deletes tables it wrote itself (the pointer may name the other's)."""
        return f"{self.snapshots_prefix(shard_id)}{position.key_part()}-{write_id}/{table}.parquet"

    def snapshot_table_position(self, key: str) -> Position | None:
        """The position of the snapshot a ``snapshot_table_key`` belongs to; None for any other key."""
        folder, _, name = key.rpartition("/")
        if not folder.startswith(f"{self.control_prefix}snapshots/") or not name.endswith(".parquet"):
            return None
        key_part, _, write_id = folder.rpartition("/")[2].rpartition("-")
        try:
            return Position.from_key_part(key_part) if write_id else None
        except ValueError:
            return None


def chain_link(previous: Position | None) -> str:
    """The text a commit key holds for the position it continues from (readers sort by the parsed position)."""
    return CHAIN_START if previous is None else previous.key_part()
