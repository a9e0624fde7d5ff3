"""One scoring run: its id, its output table and its commit record.

A run is named by what determines it (``run_id``): the observation end, a fingerprint of the input rows, the
valuation settings, the model library's version and this code's ``SCORING_VERSION``. Scoring the same inputs at
the same as-of again gives the same id, so a retry finds its run already committed (or overwrites its own files)
instead of adding a second copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pyarrow as pa

from schemas.contract import CLV_SCORES_SCHEMA
from scoring.clv import ClvConfig, ClvResult, clv_columns
from scoring.inputs import ModelInputs
from scoring.rfm import RfmScores, score_customers

#: Bumped when the commit record changes incompatibly; readers refuse versions they do not know.
SCORE_COMMIT_FORMAT: Final = 1
#: Bumped when what a run computes changes (RFM rules, segments, model checks): part of the run id, so a re-score
#: after such a change refits instead of finding the old run "already committed".
SCORING_VERSION: Final = 4


class ScoreCommitError(ValueError):
    """A clv/ commit record that does not parse."""


def run_id_for(as_of: datetime, input_fingerprint: str, config: ClvConfig, library: str | None) -> str:
    """16 hex digits naming a run by its observation end, inputs, valuation settings, model library and
    ``SCORING_VERSION``."""
    document = json.dumps(
        {
            "as_of": as_of.astimezone(UTC).isoformat(),
            "inputs": input_fingerprint,
            "valuation": asdict(config),
            "library": library,
            "scoring": SCORING_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def rfm_of(inputs: ModelInputs) -> RfmScores:
    buyers = inputs.buyers
    return score_customers(
        buyers.column("days_since_last_purchase").to_numpy(),
        buyers.column("purchase_days").to_numpy(),
        np.asarray(buyers.column("revenue").cast(pa.float64()).to_numpy(), dtype=np.float64),
    )


def score_table(inputs: ModelInputs, result: ClvResult, rfm: RfmScores, run_id: str) -> pa.Table:
    """The clv/ rows of a run (schema ``CLV_SCORES_SCHEMA``), in customer_id order."""
    buyers = inputs.buyers
    n = buyers.num_rows
    cell = np.char.add(np.char.add(rfm.r.astype(str), rfm.f.astype(str)), rfm.m.astype(str))
    columns: dict[str, Any] = {
        "customer_id": buyers.column("customer_id"),
        "as_of": pa.array([inputs.as_of] * n, CLV_SCORES_SCHEMA.field("as_of").type),
        **{name: buyers.column(name) for name in ("frequency", "recency", "T", "monetary_value")},
        "days_since_last_purchase": buyers.column("days_since_last_purchase"),
        "purchase_days": buyers.column("purchase_days"),
        "revenue": buyers.column("revenue"),
        **clv_columns(result),
        "r_score": pa.array(rfm.r, pa.int32()),
        "f_score": pa.array(rfm.f, pa.int32()),
        "m_score": pa.array(rfm.m, pa.int32()),
        "fm_score": pa.array(rfm.fm, pa.int32()),
        "rfm_cell": pa.array(cell.tolist(), pa.string()),
        "segment": pa.array(rfm.segment.tolist(), pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.table([columns[f.name] for f in CLV_SCORES_SCHEMA], schema=CLV_SCORES_SCHEMA)


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value)).astimezone(UTC)


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
            raise ScoreCommitError(f"clv commit: not JSON ({error})") from error
        if not isinstance(d, dict) or d.get("format") != SCORE_COMMIT_FORMAT:
            found = d.get("format") if isinstance(d, dict) else None
            raise ScoreCommitError(f"clv commit: format {found!r}, expected {SCORE_COMMIT_FORMAT}")
        try:
            return cls(
                as_of=_time(d["as_of"]),
                run_id=str(d["run_id"]),
                files=[str(key) for key in d["files"]],
                model_key=str(d["model_key"]),
                rows=int(d["rows"]),
                bytes_written=int(d["bytes_written"]),
                inputs=dict(d["inputs"]),
                committed_at=_time(d["committed_at"]),
                segments={str(k): int(v) for k, v in d.get("segments", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ScoreCommitError(f"clv commit: {error!r}") from error
