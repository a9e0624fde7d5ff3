"""One scoring run: its id and its output table (its commit record is ``schemas.control.ScoreCommit``).

A run is named by what determines it (``run_id``): the observation end, a fingerprint of the input rows, the
valuation settings, the model library's version and this code's ``SCORING_VERSION``. Scoring the same inputs at
the same as-of again gives the same id, so a retry finds its run already committed (or overwrites its own files)
instead of adding a second copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import date
from typing import Any, Final

import numpy as np
import pyarrow as pa

from schemas.contract import CLV_SCORES_SCHEMA
from scoring.clv import ClvConfig, ClvResult, clv_columns
from scoring.inputs import ModelInputs
from scoring.rfm import RfmScores, score_customers

#: Bumped when what a run computes changes (RFM rules, segments, model checks): part of the run id, so a re-score
#: after such a change refits instead of finding the old run "already committed".
SCORING_VERSION: Final = 6


def run_id_for(as_of_day: date, input_fingerprint: str, config: ClvConfig, library: str | None) -> str:
    """16 hex digits naming a run by its observation day, inputs, valuation settings, model library and
    ``SCORING_VERSION``. The day, not the time: the models count whole days, so runs of one day on the same inputs
    compute the same scores (a default end held at the run's clock, past which an event was stamped, moved with
    every retry of a job, each refitting and replacing the day's run)."""
    document = json.dumps(
        {
            "as_of_day": as_of_day.isoformat(),
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
