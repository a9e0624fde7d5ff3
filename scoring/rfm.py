"""R, F and M scores from 1 to 5 and the named RFM segments, as the RFM literature and the AWS RFM guidance use them.

Measures (buyers only: a customer without a purchase has no recency):

- **R** ecency: whole UTC days from the last purchase day to the observation end (fewer is better);
- **F** requency: distinct purchase days (more is better);
- **M** onetary: total revenue (more is better).

**Scores** are quintiles of the scored population that never split ties: a customer's score is
``1 + floor(5 * worse / (worse + better))`` (at most 5), where ``worse`` and ``better`` count the customers with a
strictly worse and a strictly better value: the score says where the customer stands among those who differ from
it. The best value scores 5 and the worst 1 however many share them (one-time buyers F = 1 when most buyers bought
once; today's buyers R = 5 when most bought today); a value with fewer than 20 % of the customers whose value
differs below it scores 1, ..., with at least 80 % of them below it 5. Equal values always share a score
(splitting ties, as ``NTILE(5)`` does, would give two customers with the same history different scores), so the
scores are not forced to 20 % each, and a measure with two values gives only 1 and 5. A measure on which every
buyer is equal tells nobody apart; it scores what such a population almost always is (``NO_SPREAD_SCORES``): all
bought on the last day of the history (R = 5), once (F = 1), the same amount (M = 1), the cell of "New". Where the
shared recency or frequency is another (all last bought 60 days ago, all bought on three days), it tells nothing
either way and scores 3, the middle (``NO_SPREAD_OTHERWISE``).

**Segments** are read off the grid of R and FM, where ``FM = ceil((F + M) / 2)`` (the mean of F and M, halves
rounded up), the classic 11-segment map (e.g. Putler's RFM segments used in the AWS guidance):

| R \\ FM | 1              | 2                   | 3                   | 4                | 5                |
| ------- | -------------- | ------------------- | ------------------- | ---------------- | ---------------- |
| 5       | New            | Potential loyalists | Potential loyalists | Champions        | Champions        |
| 4       | Promising      | Potential loyalists | Potential loyalists | Loyal            | Loyal            |
| 3       | About to sleep | About to sleep      | Need attention      | Loyal            | Loyal            |
| 2       | Hibernating    | Hibernating         | At risk             | At risk          | Cannot lose them |
| 1       | Lost           | Hibernating         | At risk             | At risk          | Cannot lose them |

``SEGMENT_RULES`` is that table as data; ``segment_grid()`` checks it covers each of the 25 cells exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

#: The segments, best first (the order reports use).
SEGMENTS: Final = (
    "Champions",
    "Loyal",
    "Potential loyalists",
    "New",
    "Promising",
    "Need attention",
    "About to sleep",
    "At risk",
    "Cannot lose them",
    "Hibernating",
    "Lost",
)

#: What each segment means and what marketing usually does with it (shown in the report).
SEGMENT_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "Champions": "bought recently, buy often and spend the most: reward, ask for reviews",
    "Loyal": "buy regularly with good spend: upsell, loyalty programme",
    "Potential loyalists": "recent customers with average frequency: membership, recommendations",
    "New": "first bought very recently: onboarding, early support",
    "Promising": "recent, low frequency and spend so far: build awareness, free trials",
    "Need attention": "middling recency, frequency and spend: limited-time offers",
    "About to sleep": "below-average recency and frequency: share popular products, reactivate",
    "At risk": "bought often or spent well, but long ago: personalised win-back",
    "Cannot lose them": "the biggest and most frequent buyers, gone quiet: win them back, talk to them",
    "Hibernating": "last bought long ago, low frequency and spend: other categories, special offers",
    "Lost": "lowest recency, frequency and spend: ignore, or one last revival campaign",
}


@dataclass(frozen=True, slots=True)
class SegmentRule:
    """A rectangle of the R x FM grid (bounds inclusive) that belongs to one segment."""

    segment: str
    r: tuple[int, int]
    fm: tuple[int, int]


SEGMENT_RULES: Final = (
    SegmentRule("Champions", r=(5, 5), fm=(4, 5)),
    SegmentRule("Loyal", r=(3, 4), fm=(4, 5)),
    SegmentRule("Potential loyalists", r=(4, 5), fm=(2, 3)),
    SegmentRule("New", r=(5, 5), fm=(1, 1)),
    SegmentRule("Promising", r=(4, 4), fm=(1, 1)),
    SegmentRule("Need attention", r=(3, 3), fm=(3, 3)),
    SegmentRule("About to sleep", r=(3, 3), fm=(1, 2)),
    SegmentRule("At risk", r=(1, 2), fm=(3, 4)),
    SegmentRule("Cannot lose them", r=(1, 2), fm=(5, 5)),
    SegmentRule("Hibernating", r=(2, 2), fm=(1, 2)),
    SegmentRule("Hibernating", r=(1, 1), fm=(2, 2)),
    SegmentRule("Lost", r=(1, 1), fm=(1, 1)),
)


def segment_grid() -> dict[tuple[int, int], str]:
    """(R, FM) -> segment for all 25 cells; raises if the rules overlap or leave a cell out."""
    grid: dict[tuple[int, int], str] = {}
    for rule in SEGMENT_RULES:
        for r in range(rule.r[0], rule.r[1] + 1):
            for fm in range(rule.fm[0], rule.fm[1] + 1):
                if (r, fm) in grid:
                    raise ValueError(f"R={r} FM={fm} is both {grid[(r, fm)]} and {rule.segment}")
                grid[(r, fm)] = rule.segment
    missing = [(r, fm) for r in range(1, 6) for fm in range(1, 6) if (r, fm) not in grid]
    if missing:
        raise ValueError(f"no segment for (R, FM) cells {missing}")
    return grid


#: R, F and M of every customer when all share one value: the last day, once, the same amount (see above).
NO_SPREAD_SCORES: Final = {"r": 5, "f": 1, "m": 1}
#: The shared value those R and F scores stand for (days since the last purchase, purchase days): another shared
#: value scores ``NO_SPREAD_OTHERWISE``.
NO_SPREAD_VALUES: Final = {"r": 0, "f": 1}
NO_SPREAD_OTHERWISE: Final = 3

_GRID: Final = segment_grid()
#: _LOOKUP[r, fm] is the index into SEGMENTS of that cell (row and column 0 unused).
_LOOKUP: Final = np.zeros((6, 6), dtype=np.int8)
for (_r, _fm), _name in _GRID.items():
    _LOOKUP[_r, _fm] = SEGMENTS.index(_name)


def quintile_scores(
    values: npt.ArrayLike, *, higher_is_better: bool = True, no_spread: int = 1
) -> npt.NDArray[np.int8]:
    """Scores 1-5: ``1 + floor(5 * worse / (worse + better))``, strictly worse and better counts (ties share);
    ``no_spread`` for a customer no other customer differs from."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return np.zeros(0, dtype=np.int8)
    if np.isnan(array).any():
        raise ValueError("RFM measures must not be missing")
    ordered = np.sort(array)
    # all equal: nobody differs from anyone (otherwise every customer differs from someone)
    if ordered[0] == ordered[-1]:
        return np.full(array.size, no_spread, dtype=np.int8)
    smaller = np.searchsorted(ordered, array, side="left")
    larger = array.size - np.searchsorted(ordered, array, side="right")
    worse, better = (smaller, larger) if higher_is_better else (larger, smaller)
    scores: npt.NDArray[np.int8] = np.minimum(5, 1 + (5 * worse) // (worse + better)).astype(np.int8)
    return scores


def fm_scores(f: npt.ArrayLike, m: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """FM = ceil((F + M) / 2): the mean of the F and M scores, halves rounded up."""
    return ((np.asarray(f, dtype=np.int16) + np.asarray(m, dtype=np.int16) + 1) // 2).astype(np.int8)


def segments(r: npt.ArrayLike, fm: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """The segment name of each (R, FM) pair."""
    r_array, fm_array = np.asarray(r, dtype=np.int64), np.asarray(fm, dtype=np.int64)
    if r_array.size and (r_array.min() < 1 or r_array.max() > 5 or fm_array.min() < 1 or fm_array.max() > 5):
        raise ValueError("R and FM scores must be within 1..5")
    names = np.array(SEGMENTS, dtype=object)
    return names[_LOOKUP[r_array, fm_array]]


def _no_spread_score(measure: str, values: npt.ArrayLike) -> int:
    """The score of ``measure`` should every buyer share one value: its usual one, or the middle (see above)."""
    first = np.asarray(values, dtype=np.float64)[:1]
    usual = not first.size or first[0] == NO_SPREAD_VALUES[measure]
    return NO_SPREAD_SCORES[measure] if usual else NO_SPREAD_OTHERWISE


@dataclass(frozen=True, slots=True)
class RfmScores:
    r: npt.NDArray[np.int8]
    f: npt.NDArray[np.int8]
    m: npt.NDArray[np.int8]
    fm: npt.NDArray[np.int8]
    segment: npt.NDArray[np.object_]


def score_customers(
    days_since_last_purchase: npt.ArrayLike, purchase_days: npt.ArrayLike, revenue: npt.ArrayLike
) -> RfmScores:
    """R, F, M and FM scores and the segment of every customer (arrays of equal length, buyers only)."""
    r = quintile_scores(
        days_since_last_purchase,
        higher_is_better=False,
        no_spread=_no_spread_score("r", days_since_last_purchase),
    )
    f = quintile_scores(purchase_days, no_spread=_no_spread_score("f", purchase_days))
    m = quintile_scores(revenue, no_spread=NO_SPREAD_SCORES["m"])
    fm = fm_scores(f, m)
    return RfmScores(r=r, f=f, m=m, fm=fm, segment=segments(r, fm))
