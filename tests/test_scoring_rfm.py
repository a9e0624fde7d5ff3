"""RFM scores and segments: the documented rules, checked at every boundary on hand-made customers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import scoring.rfm
from schemas.contract import CUSTOMER_AGGREGATES_SCHEMA
from scoring.inputs import InputError, model_inputs
from scoring.rfm import (
    SEGMENT_DESCRIPTIONS,
    SEGMENT_RULES,
    SEGMENTS,
    SegmentRule,
    fm_scores,
    quintile_scores,
    score_customers,
    segment_grid,
    segments,
)
from scoring.run import rfm_of

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def documented_grid(text: str) -> dict[tuple[int, int], str]:
    """The R x FM table (markdown) of a document: (R, FM) -> segment."""
    grid = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\|\s*([1-5])\s*\|(.*)\|\s*", line)
        if match:
            names = [cell.strip() for cell in match.group(2).split("|")]
            assert len(names) == 5, line
            for fm, name in enumerate(names, start=1):
                grid[(int(match.group(1)), fm)] = name
    return grid


# ------------------------------------------------------------------------------------------------ quintile scores
def test_distinct_values_fill_each_score_at_twenty_percent_steps() -> None:
    # 10 customers: 0..9 strictly worse of the 9 others, score = 1 + floor(5 * worse / 9), at most 5
    assert quintile_scores(range(1, 11)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert quintile_scores(range(1, 6)).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("worse", "score"),
    [
        (0, 1),
        (19, 1),  # just below 20 % of the 100 others
        (20, 2),  # exactly 20 %
        (39, 2),
        (40, 3),
        (59, 3),
        (60, 4),
        (79, 4),
        (80, 5),  # exactly 80 %
        (100, 5),
    ],
)
def test_score_boundaries(worse: int, score: int) -> None:
    """A customer with ``worse`` of the 100 others strictly below it and the rest strictly above."""
    values = [0.0] * worse + [1.0] + [2.0] * (100 - worse)
    assert quintile_scores(values)[worse] == score


def test_ties_share_a_score_and_the_next_value_starts_where_its_rank_says() -> None:
    # 6 one-time buyers (60 %) tie at the lowest frequency: all score 1; the next value has 6 of the 8 customers
    # whose value differs below it.
    scores = quintile_scores([1, 1, 1, 1, 1, 1, 2, 2, 3, 7])
    assert scores.tolist() == [1, 1, 1, 1, 1, 1, 4, 4, 5, 5]


def test_recency_scores_fewer_days_higher() -> None:
    days = [0, 3, 10, 30, 90]
    assert quintile_scores(days, higher_is_better=False).tolist() == [5, 4, 3, 2, 1]
    assert quintile_scores([5, 5, 5], higher_is_better=False, no_spread=4).tolist() == [
        4,
        4,
        4,
    ]  # nobody apart


def test_a_shared_recency_or_frequency_other_than_the_usual_one_scores_the_middle() -> None:
    """All last bought 60 days ago: R = 5 would read "bought recently" (Champions, New); all bought on three days:
    F = 1 would read "bought least often". Nobody is told apart, so each scores 3."""
    scores = score_customers([60, 60, 60], [3, 3, 3], [20.0, 30.0, 40.0])
    assert (scores.r.tolist(), scores.f.tolist(), scores.m.tolist()) == ([3] * 3, [3] * 3, [1, 3, 5])
    assert scores.segment.tolist() == ["About to sleep", "Need attention", "Loyal"]


def test_a_first_day_of_one_time_buyers_reads_as_new() -> None:
    """Every buyer bought once, on the last day, the same amount: no measure tells anyone apart. Scored 3 each
    (the neutral middle) they were "Need attention"; they are new customers."""
    scores = score_customers([0, 0, 0], [1, 1, 1], [20.0, 20.0, 20.0])
    assert (scores.r.tolist(), scores.f.tolist(), scores.m.tolist()) == ([5] * 3, [1] * 3, [1] * 3)
    assert set(scores.segment) == {"New"}
    # one-time buyers stay F = 1 whatever else differs (the README's promise)
    spread = score_customers([0, 5, 10, 20, 40], [1] * 5, [10.0, 20.0, 30.0, 40.0, 50.0])
    assert spread.f.tolist() == [1] * 5 and spread.segment[0] == "New"


def test_the_best_value_scores_five_however_many_share_it() -> None:
    # 90 of 100 buyers bought on the last day: they are the most recent there are, not "Lost" (R = 5, not 1)
    days = [0] * 90 + list(range(1, 11))
    r = quintile_scores(days, higher_is_better=False)
    assert set(r[:90].tolist()) == {5} and set(r[90:].tolist()) == {1}
    # the mirror: 90 share the lowest revenue, which scores 1; the 10 above them rank among themselves
    m = quintile_scores([10.0] * 90 + [float(v) for v in range(11, 21)])
    assert set(m[:90].tolist()) == {1} and m[90:].tolist() == [5] * 10
    # 30 % bought today: the rule before scored them R = 4, and with nobody at 5 no one was a Champion
    r = quintile_scores([0] * 30 + list(range(1, 71)), higher_is_better=False)
    assert set(r[:30].tolist()) == {5} and r[30:].min() == 1


def test_missing_measures_are_refused() -> None:
    with pytest.raises(ValueError, match="missing"):
        quintile_scores([1.0, float("nan")])
    assert quintile_scores([]).size == 0


@pytest.mark.parametrize(
    ("f", "m", "fm"), [(1, 1, 1), (1, 2, 2), (2, 1, 2), (3, 3, 3), (3, 4, 4), (4, 3, 4), (4, 5, 5), (5, 5, 5)]
)
def test_fm_is_the_mean_of_f_and_m_with_halves_rounded_up(f: int, m: int, fm: int) -> None:
    assert fm_scores([f], [m]).tolist() == [fm]


# ------------------------------------------------------------------------------------------------ segments
EXPECTED_GRID = {
    # R = 5 ... 1, FM = 1 ... 5, as in the RFM segment map of the literature (Putler / AWS guidance).
    5: ("New", "Potential loyalists", "Potential loyalists", "Champions", "Champions"),
    4: ("Promising", "Potential loyalists", "Potential loyalists", "Loyal", "Loyal"),
    3: ("About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At risk", "At risk", "Cannot lose them"),
    1: ("Lost", "Hibernating", "At risk", "At risk", "Cannot lose them"),
}


@pytest.mark.parametrize("r", [5, 4, 3, 2, 1])
@pytest.mark.parametrize("fm", [1, 2, 3, 4, 5])
def test_every_cell_of_the_grid(r: int, fm: int) -> None:
    """All 25 cells, so every boundary between two segments is checked on both sides."""
    assert segments([r], [fm]).tolist() == [EXPECTED_GRID[r][fm - 1]]


def test_the_grid_has_the_eleven_named_segments_each_described() -> None:
    assert set(segment_grid().values()) == set(SEGMENTS)
    assert len(SEGMENTS) == 11
    assert set(SEGMENT_DESCRIPTIONS) == set(SEGMENTS)


def test_the_documented_tables_are_the_rules() -> None:
    code = segment_grid()
    assert documented_grid(scoring.rfm.__doc__ or "") == code
    assert documented_grid(README) == code


def test_overlapping_or_incomplete_rules_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        scoring.rfm, "SEGMENT_RULES", (*SEGMENT_RULES, SegmentRule("Lost", r=(1, 1), fm=(1, 2)))
    )
    with pytest.raises(ValueError, match="both"):
        scoring.rfm.segment_grid()
    monkeypatch.setattr(scoring.rfm, "SEGMENT_RULES", SEGMENT_RULES[:-1])
    with pytest.raises(ValueError, match="no segment"):
        scoring.rfm.segment_grid()


def test_scores_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        segments([0], [3])
    with pytest.raises(ValueError):
        segments([3], [6])


# ------------------------------------------------------------------------------------------------ hand-made customers
AS_OF = datetime(2026, 5, 1, 12, tzinfo=UTC)


def customer(
    customer_id: str, *, first_days_ago: int, last_days_ago: int, purchase_days: int, revenue: str
) -> dict[str, object]:
    """A current customer_aggregates row of a buyer (only the columns scoring reads are meaningful)."""
    first = AS_OF - timedelta(days=first_days_ago)
    last = AS_OF - timedelta(days=last_days_ago)
    repeat = Decimal(revenue) * (purchase_days - 1) / purchase_days if purchase_days > 1 else Decimal(0)
    return {
        "customer_id": customer_id,
        "version": 10,
        "as_of": last,
        "first_event_at": first,
        "last_event_at": last,
        "events": 10,
        "page_views": 5,
        "product_views": 1,
        "searches": 0,
        "add_to_carts": 1,
        "checkouts": 1,
        "purchases": purchase_days,
        "sessions": 2,
        "active_days": purchase_days,
        "revenue": Decimal(revenue),
        "first_purchase_at": first,
        "last_purchase_at": last,
        "purchase_days": purchase_days,
        "frequency": purchase_days - 1,
        "recency": first_days_ago - last_days_ago,
        "T": first_days_ago - last_days_ago,  # the row's own T, short of the common observation end
        "monetary_value": float(repeat / (purchase_days - 1)) if purchase_days > 1 else 0.0,
        "repeat_revenue": repeat.quantize(Decimal("0.01")) if purchase_days > 1 else None,
        "engagement_score": 1.0,
        "shard_id": "shardId-000000000000",
        "updated_through_sequence": "1",
    }


def rows(*customers: dict[str, object]) -> pa.Table:
    return pa.Table.from_pylist(list(customers), schema=CUSTOMER_AGGREGATES_SCHEMA)


def test_hand_made_customers_land_in_their_segments() -> None:
    """Five buyers whose R, F and M ranks are chosen by hand, and one non-buyer (not scored)."""
    table = rows(
        # recent, frequent, big spender: R5 F5 M5 -> Champions
        customer("c-champion", first_days_ago=200, last_days_ago=0, purchase_days=20, revenue="2000.00"),
        # bought as often and as much once, but not for 150 days: R1 F4 M4 -> FM 4 -> At risk
        customer("c-at-risk", first_days_ago=300, last_days_ago=150, purchase_days=12, revenue="1500.00"),
        # one recent small purchase: R4 F1 M1 -> Promising
        customer("c-promising", first_days_ago=2, last_days_ago=2, purchase_days=1, revenue="10.00"),
        # mid recency and mid F and M: R3 F3 M3 -> Need attention
        customer("c-attention", first_days_ago=100, last_days_ago=20, purchase_days=5, revenue="300.00"),
        # long gone, little: R2 F1 M2 -> FM 2 -> Hibernating
        customer("c-hibernating", first_days_ago=120, last_days_ago=60, purchase_days=1, revenue="50.00"),
    ).to_pylist()
    non_buyer = {
        **table[0],
        "customer_id": "c-browser",
        "purchases": 0,
        "purchase_days": 0,
        "revenue": Decimal(0),
    }
    for column in ("first_purchase_at", "last_purchase_at", "frequency", "recency", "T", "monetary_value"):
        non_buyer[column] = None
    current = pa.Table.from_pylist([*table, non_buyer], schema=CUSTOMER_AGGREGATES_SCHEMA)
    inputs = model_inputs(current, AS_OF)
    assert inputs.customers == 6 and inputs.buyers.num_rows == 5
    scores = rfm_of(inputs)
    result = {
        customer_id: (int(r), int(f), int(m), str(segment))
        for customer_id, r, f, m, segment in zip(
            inputs.buyers.column("customer_id").to_pylist(),
            scores.r,
            scores.f,
            scores.m,
            scores.segment,
            strict=True,
        )
    }
    assert result == {
        "c-champion": (5, 5, 5, "Champions"),
        "c-at-risk": (1, 4, 4, "At risk"),
        "c-promising": (4, 1, 1, "Promising"),
        "c-attention": (3, 3, 3, "Need attention"),
        "c-hibernating": (2, 1, 2, "Hibernating"),
    }


def test_t_and_recency_days_are_recomputed_against_the_common_observation_end() -> None:
    current = rows(
        customer("c-1", first_days_ago=30, last_days_ago=10, purchase_days=3, revenue="90.00"),
        customer("c-2", first_days_ago=5, last_days_ago=5, purchase_days=1, revenue="20.00"),
    )
    inputs = model_inputs(current, AS_OF)
    buyers = inputs.buyers.to_pydict()
    assert buyers["customer_id"] == ["c-1", "c-2"]
    assert buyers["T"] == [30, 5]  # the rows said 20 and 0: their own as_of was their last purchase
    assert buyers["days_since_last_purchase"] == [10, 5]
    assert buyers["recency"] == [20, 0]
    # Without --as-of the observation end is the latest event seen: c-2's, 5 days before AS_OF.
    assert model_inputs(current).as_of == AS_OF - timedelta(days=5)


def test_an_event_stamped_ahead_of_the_runs_clock_does_not_move_the_default_observation_end() -> None:
    """A client clock ahead of UTC stamps a page view in the next day; without --as-of the end stays at the run's
    clock, so the models do not count an unobserved day. A purchase so stamped is in the aggregates: the end then
    goes to it, as no end before it can be taken."""
    buyer = customer("c-1", first_days_ago=30, last_days_ago=10, purchase_days=3, revenue="90.00")
    now = AS_OF + timedelta(hours=11, minutes=30)  # 23:30 UTC
    ahead = now + timedelta(minutes=50)  # 00:20 the next day
    browser = {**buyer, "customer_id": "c-2", "last_event_at": ahead}
    inputs = model_inputs(rows(buyer, browser), not_after=now)
    assert inputs.as_of == now and inputs.as_of_day == AS_OF.date()
    assert inputs.buyers.column("T").to_pylist() == [30, 30]
    # the run's clock not given: the latest event time
    assert model_inputs(rows(buyer, browser)).as_of == ahead
    # the latest event time, when it is not ahead of the clock
    assert model_inputs(rows(buyer, browser), not_after=ahead + timedelta(seconds=1)).as_of == ahead
    early_buyer = {**browser, "last_purchase_at": ahead - timedelta(minutes=5)}
    assert model_inputs(rows(buyer, early_buyer), not_after=now).as_of == ahead - timedelta(minutes=5)


def test_an_observation_end_before_a_purchase_is_refused() -> None:
    current = rows(customer("c-1", first_days_ago=30, last_days_ago=0, purchase_days=3, revenue="90.00"))
    with pytest.raises(InputError, match="after the observation end"):
        model_inputs(current, AS_OF - timedelta(days=2))
    with pytest.raises(InputError, match="time zone"):
        model_inputs(current, datetime(2026, 5, 1))  # no time zone: the point of the test


def test_an_observation_end_in_a_day_not_yet_begun_is_refused_unless_a_purchase_is_in_it() -> None:
    """`score --as-of <tomorrow>` counted a whole unobserved day without purchases for every customer (P(alive) and
    CLV lower); a client clock ahead may have stamped a purchase in it, and only then is that day's end taken."""
    buyer = customer("c-1", first_days_ago=30, last_days_ago=10, purchase_days=3, revenue="90.00")
    now = AS_OF + timedelta(hours=11)  # 23:00 UTC
    tomorrow_end = datetime.combine(AS_OF.date() + timedelta(days=1), datetime.max.time(), tzinfo=UTC)
    today_end = datetime.combine(AS_OF.date(), datetime.max.time(), tzinfo=UTC)
    # today's end: its day observed
    assert model_inputs(rows(buyer), today_end, not_after=now).as_of == today_end
    with pytest.raises(InputError, match="not yet begun"):
        model_inputs(rows(buyer), tomorrow_end, not_after=now)
    stamped_ahead = {
        **buyer,
        "last_purchase_at": now + timedelta(minutes=90),
        "last_event_at": now + timedelta(hours=1),
    }
    assert model_inputs(rows(stamped_ahead), tomorrow_end, not_after=now).as_of == tomorrow_end
    assert model_inputs(rows(buyer), tomorrow_end).as_of == tomorrow_end, (
        "no clock given: nothing to judge by"
    )


def test_score_customers_on_a_larger_population_follows_the_quintile_rule() -> None:
    rng = np.random.default_rng(3)
    days = rng.integers(0, 100, 1000)
    purchase_days = rng.integers(1, 8, 1000)
    revenue = rng.gamma(2, 50, 1000).round(2)
    scores = score_customers(days, purchase_days, revenue)
    for values, got, higher_is_better in (
        (days, scores.r, False),
        (purchase_days, scores.f, True),
        (revenue, scores.m, True),
    ):
        lower = np.array([(values < v).sum() for v in values])
        higher = np.array([(values > v).sum() for v in values])
        worse, better = (lower, higher) if higher_is_better else (higher, lower)
        assert (got == np.minimum(5, 1 + 5 * worse // (worse + better))).all()
    assert set(scores.segment) <= set(SEGMENTS)
