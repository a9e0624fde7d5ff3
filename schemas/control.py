"""The control records on S3, typed at both ends: writers build these classes, readers parse them back.

A missing or mistyped field is an error (``ControlRecordError``), never a silent default: a reader that guesses
at a commit record can skip or double count data.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from schemas.positions import Position

#: Bumped when a control record changes incompatibly; readers refuse versions they do not know.
CONTROL_FORMAT: Final = 2
#: The same for ``ScoreCommit`` (``clickstream score``'s records, versioned on their own).
SCORE_COMMIT_FORMAT: Final = 1


class ControlRecordError(ValueError):
    """A control object on S3 that does not parse as the record it should be."""


def _position(value: Any) -> Position | None:
    if value is None:
        return None
    return Position(str(value["sequence_number"]), int(value["sub_sequence_number"]))


def _required_position(value: Any) -> Position:
    position = _position(value)
    if position is None:
        raise ControlRecordError("a required position is null")
    return position


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _sizes_sharing_keys(sizes: dict[str, Any], files: dict[str, list[str]]) -> dict[str, int]:
    """``file_bytes`` keyed by the very strings ``files`` holds: a reader holds every commit record of a prefix in
    memory (millions over a year), and a data key is most of a record's bytes; held once, not twice."""
    held = {key: key for keys in files.values() for key in keys}
    return {held.get(key, str(key)): int(size) for key, size in sizes.items()}


def _required_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    return value


def _all_files(files: dict[str, list[str]]) -> list[str]:
    """Every data file of a by-output listing, of every output."""
    return [key for keys in files.values() for key in keys]


def _dump(record: Any) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat()
        raise TypeError(f"not serialisable: {value!r}")

    return json.dumps({"format": CONTROL_FORMAT, **asdict(record)}, sort_keys=True, default=default).encode()


def json_object(body: bytes | str) -> dict[str, Any]:
    """``body`` as a JSON object; ValueError saying what it is instead ("not JSON (...)", "not a JSON object")."""
    try:
        document = json.loads(body)
    except ValueError as error:  # not JSON, or not text (UnicodeDecodeError)
        raise ValueError(f"not JSON ({error})") from error
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - what a document holds, not a caller's type
    return document


def _load(body: bytes | str, kind: str) -> dict[str, Any]:
    try:
        document = json_object(body)
    except ValueError as problem:
        raise ControlRecordError(f"{kind}: {problem}") from problem
    if document.get("format") != CONTROL_FORMAT:
        raise ControlRecordError(
            f"{kind}: format {document.get('format')!r}, this reader knows {CONTROL_FORMAT}"
        )
    return document


@dataclass(frozen=True, slots=True)
class FlushIntent:
    """Written before a flush attempt writes any data file: the files it may leave behind if it never commits."""

    shard_id: str
    attempt_id: str
    previous: Position | None  # the chain position the attempt continues from
    files: dict[str, list[str]]
    written_at: datetime

    @property
    def all_files(self) -> list[str]:
        """Every data file it names, of every output."""
        return _all_files(self.files)

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> FlushIntent:
        d = _load(body, "intent")
        try:
            return cls(
                shard_id=str(d["shard_id"]),
                attempt_id=str(d["attempt_id"]),
                previous=_position(d["previous"]),
                files={str(k): [str(key) for key in v] for k, v in d["files"].items()},
                written_at=_required_time(d["written_at"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ControlRecordError(f"intent: {error!r}") from error


@dataclass(frozen=True, slots=True)
class PrefixOwner:
    """The stream whose shards write a prefix's commit chains (``OutputLayout.prefix_owner_key``), claimed by the
    first worker that starts on the prefix. Shard ids repeat across streams: a second stream writing the prefix
    would take the first's chains for its own, lose its commits to them and skip its records as redeliveries."""

    stream_arn: str
    stream_created_at: datetime  # a stream deleted and created again keeps its ARN, not its shards' history
    claimed_at: datetime

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> PrefixOwner:
        d = _load(body, "prefix owner")
        try:
            created_at, claimed_at = _time(d["stream_created_at"]), _time(d["claimed_at"])
            if created_at is None or claimed_at is None:
                raise ControlRecordError("prefix owner: a time is null")
            return cls(stream_arn=str(d["stream_arn"]), stream_created_at=created_at, claimed_at=claimed_at)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ControlRecordError(f"prefix owner: {error!r}") from error


@dataclass(frozen=True, slots=True)
class StateWindows:
    """The windows a customer state forgets by, in days of arrival time: event ids for de-duplication, sessions and
    active days for the distinct counts. Recorded with each flush (and in a replay's output): a replay's rows equal
    the live rows only when it ran with the worker's windows."""

    dedupe_days: int
    distinct_days: int

    def describe(self) -> str:
        return f"de-duplication window {self.dedupe_days} days and distinct-count window {self.distinct_days} days"

    @classmethod
    def from_value(cls, value: Any) -> StateWindows | None:
        """From a record's JSON; None where the record has none (written by a version before windows)."""
        if value is None:
            return None
        return cls(dedupe_days=int(value["dedupe_days"]), distinct_days=int(value["distinct_days"]))


@dataclass(frozen=True, slots=True)
class ReplayClaim:
    """The range a replay name's folder holds (``OutputLayout.replay_claim_key``), claimed by a conditional create
    before the replay reads the archive: two replays of one name with different ranges, on two machines, would write
    both ranges into one folder, which a reader takes whole."""

    start: datetime
    end: datetime
    claimed_at: datetime
    #: The run that made the claim: its own create answered 412 (a retry of a PUT that had landed) is not a twin's,
    #: and it releases only a claim that is still its own ("" in a claim of a version before run ids).
    run_id: str = ""

    def covers_the_same_range(self, start: datetime, end: datetime) -> bool:
        return (self.start, self.end) == (start.astimezone(UTC), end.astimezone(UTC))

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> ReplayClaim:
        d = _load(body, "replay claim")
        try:
            return cls(
                start=_required_time(d["start"]),
                end=_required_time(d["end"]),
                claimed_at=_required_time(d["claimed_at"]),
                run_id=_text(d.get("run_id", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ControlRecordError(f"replay claim: {error!r}") from error


@dataclass(frozen=True, slots=True)
class Freshness:
    """How fresh a flush made its data: seconds from Kinesis arrival to durable, and the newest event's age."""

    arrival_to_durable_p50: float
    arrival_to_durable_p99: float
    arrival_to_durable_max: float
    newest_event_age: float | None  # committed_at - newest event_time made durable (None: no valid events)


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """One link of a shard's commit chain: the flush that continues from ``previous`` and ends at ``last``.

    Its existence makes the flush durable; ``files`` is the complete list of data objects it wrote, so the commit
    records are the manifest a strict reader loads from (files not named by any commit are not data).
    """

    shard_id: str
    attempt_id: str
    worker_id: str
    previous: Position | None
    first: Position
    last: Position
    records_in: int
    records_skipped: int
    accepted: int
    duplicates: int
    rejected: int
    customers_changed: int
    files: dict[str, list[str]]
    file_bytes: dict[str, int]  # size of each data file, by key (COPY manifests need it)
    bytes_written: int
    committed_at: datetime
    oldest_event_at: datetime | None  # event_time range of the events it archived (None: no new events)
    newest_event_at: datetime | None
    freshness: Freshness | None = field(default=None)
    #: The windows the worker's state forgot by when it applied this flush (None: written by a version before them).
    windows: StateWindows | None = field(default=None)

    @property
    def records_new(self) -> int:
        """The records this flush saw for the first time (= accepted + rejected): ``records_in`` also counts the
        ones redelivered after a restart or a lease move, which an earlier flush applied (``records_skipped``)."""
        return self.records_in - self.records_skipped

    def chain_order(self) -> tuple[str, tuple[int, int]]:
        """The order the readers return commit records in: by shard, then along its chain. By shard id puts a child
        after its parents (a replay depends on it): Kinesis numbers each new shard above every shard before it."""
        return self.shard_id, self.first.sort_key()

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> CommitRecord:
        d = _load(body, "commit record")
        try:
            fresh = d["freshness"]
            files = {sys.intern(str(k)): [str(key) for key in v] for k, v in d["files"].items()}
            committed_at = _time(d["committed_at"])
            if committed_at is None:
                raise ControlRecordError("commit record: committed_at is null")
            return cls(
                shard_id=sys.intern(str(d["shard_id"])),
                attempt_id=str(d["attempt_id"]),
                worker_id=sys.intern(str(d["worker_id"])),
                previous=_position(d["previous"]),
                first=_required_position(d["first"]),
                last=_required_position(d["last"]),
                records_in=int(d["records_in"]),
                records_skipped=int(d["records_skipped"]),
                accepted=int(d["accepted"]),
                duplicates=int(d["duplicates"]),
                rejected=int(d["rejected"]),
                customers_changed=int(d["customers_changed"]),
                files=files,
                file_bytes=_sizes_sharing_keys(d["file_bytes"], files),
                bytes_written=int(d["bytes_written"]),
                committed_at=committed_at,
                oldest_event_at=_time(d["oldest_event_at"]),
                newest_event_at=_time(d["newest_event_at"]),
                freshness=None if fresh is None else Freshness(**{k: fresh[k] for k in Freshness.__slots__}),
                windows=StateWindows.from_value(d.get("windows")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, ControlRecordError):
                raise
            raise ControlRecordError(f"commit record: {error!r}") from error

    @property
    def all_files(self) -> list[str]:
        """Every data file it names, of every output."""
        return _all_files(self.files)

    @property
    def file_count(self) -> int:
        return sum(len(keys) for keys in self.files.values())


@dataclass(frozen=True, slots=True)
class SnapshotPointer:
    """``latest.json`` of a shard: the snapshot tables and the chain position the snapshot stands at."""

    shard_id: str
    position: Position
    as_of: datetime | None
    tables: dict[str, str]
    written_at: datetime

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> SnapshotPointer:
        d = _load(body, "snapshot pointer")
        try:
            return cls(
                shard_id=str(d["shard_id"]),
                position=_required_position(d["position"]),
                as_of=_time(d["as_of"]),
                tables={str(k): str(v) for k, v in d["tables"].items()},
                written_at=_required_time(d["written_at"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, ControlRecordError):
                raise
            raise ControlRecordError(f"snapshot pointer: {error!r}") from error


@dataclass(frozen=True, slots=True)
class ShardCover:
    """How far a reader has read one shard's commit chain: the last commit it read, by key, by the attempt that
    wrote it (a key recurs when a prefix is emptied and written again: its first commit is always ``start.json``)
    and by where it ends."""

    commit_key: str
    attempt_id: str
    last: Position


@dataclass(frozen=True, slots=True)
class KeptReadPointer:
    """``_control/<kind>/latest.json``: a reader's result as of the commits ``shards`` covers (each customer's
    current row for `score`, the commit records for the other readers), kept so that a run reads only the commits
    made since the last one, not the whole history of the prefix. A cache: readers verify it and, when it does not
    hold, read everything (``clickstream.kept_reads``)."""

    data_key: str
    shards: dict[str, ShardCover]
    rows: int
    written_at: datetime
    rule: str  # names how the result was made: one made by another rule (another version's) does not hold

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, body: bytes | str) -> KeptReadPointer:
        d = _load(body, "kept read pointer")
        try:
            return cls(
                data_key=str(d["data_key"]),
                shards={
                    str(shard): ShardCover(
                        str(cover["commit_key"]), str(cover["attempt_id"]), _required_position(cover["last"])
                    )
                    for shard, cover in d["shards"].items()
                },
                rows=int(d["rows"]),
                written_at=_required_time(d["written_at"]),
                rule=str(d["rule"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, ControlRecordError):
                raise
            raise ControlRecordError(f"kept read pointer: {error!r}") from error


@dataclass(frozen=True, slots=True)
class ScoreCommit:
    """Makes one run the scores of its as-of day; written after every file it names (the run is then visible)."""

    as_of: datetime
    run_id: str
    files: list[str]  # the run's Parquet keys
    model_key: str  # the run's parameters and diagnostics (JSON)
    rows: int
    bytes_written: int
    inputs: dict[str, Any]  # customers, buyers, input files, fingerprint
    committed_at: datetime
    segments: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        def default(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.astimezone(UTC).isoformat()
            raise TypeError(f"not serialisable: {value!r}")

        document = {"format": SCORE_COMMIT_FORMAT, **asdict(self)}
        return json.dumps(document, sort_keys=True, default=default).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> ScoreCommit:
        try:
            d = json.loads(body)
        except json.JSONDecodeError as error:
            raise ControlRecordError(f"clv commit: not JSON ({error})") from error
        if not isinstance(d, dict) or d.get("format") != SCORE_COMMIT_FORMAT:
            found = d.get("format") if isinstance(d, dict) else None
            raise ControlRecordError(f"clv commit: format {found!r}, expected {SCORE_COMMIT_FORMAT}")
        try:
            return cls(
                as_of=_required_time(d["as_of"]),
                run_id=str(d["run_id"]),
                files=[str(key) for key in d["files"]],
                model_key=str(d["model_key"]),
                rows=int(d["rows"]),
                bytes_written=int(d["bytes_written"]),
                inputs=dict(d["inputs"]),
                committed_at=_required_time(d["committed_at"]),
                segments={str(k): int(v) for k, v in d.get("segments", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ControlRecordError(f"clv commit: {error!r}") from error
