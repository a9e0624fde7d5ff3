"""Deterministic, realistic clickstream: the input for demos, tests and the 1M-event benchmark.

Why synthetic data needs a model: the RFM/CLV outputs downstream are only worth checking if purchases follow
a known process. Purchases here follow BG/NBD ("buy till you die", Fader, Hardie & Lee 2005) with Gamma-Gamma
order values (Fader, Hardie & Lee 2005b), with parameters stated in `BgNbdParams` and `GammaGammaParams`, so a
CLV fit on the output can be compared with the truth. Browsing sessions fill the rest of the event budget.

The world, per customer ``c-000001`` .. ``c-{customers}``:

1. ``first_seen`` ~ Uniform(0, days); engagement ~ Gamma(0.6, 1/0.6) (mean 1, a few heavy users).
2. With probability `CONVERTER_SHARE` the customer converts: the first (trial) purchase comes
   Exponential(mean `FIRST_PURCHASE_DELAY_DAYS`) after ``first_seen``; customers who do not convert inside the
   window never buy.
3. From the first purchase on (BG/NBD time 0): repeat purchases arrive as a Poisson process with rate
   lambda ~ Gamma(shape r, rate alpha) per day; after each *repeat* purchase the customer drops out with
   probability p ~ Beta(a, b). Purchases after the window end are not emitted.
4. Each order value z ~ Gamma(shape p, rate nu) with nu ~ Gamma(shape q, rate v) per customer, rounded to
   cents, clamped to [0.01, 1,000,000].
5. Every purchase gets its own session: browsing, then product_view, add_to_cart, checkout and purchase, the
   last two with the same ``order_id``. The purchase day is the day of the BG/NBD event time; the time of day
   is drawn from a diurnal profile (US daytime in UTC; hours 04-10 UTC have no session starts).
6. The remaining budget is filled with browsing sessions (page_view, product_view, search, add_to_cart and
   abandoned checkouts, a Markov chain) assigned to customers in proportion to engagement * active days;
   dropped-out customers stop browsing about a week after their last purchase.

Counts: the stream holds exactly ``events`` valid, distinct events (`GenerationSummary.valid_events`), plus
``events * duplicate_rate`` duplicates, rounded half up (byte-identical re-sends of earlier valid events, a few to a
few hundred records later, as producer retries cause) plus ``events * malformed_rate`` malformed records, rounded
the same way (never counted as valid events). ``total_records = valid_events + duplicates + malformed``.

Valid events are emitted in event-time order, so a consumer batch touches few event-hour partitions. Sessions
that start late on the last day may run a few minutes past the window end. The valid events depend only on
(customers, events, seed, start, days, parameters): turning on duplicates or malformed records does not change
them.

Determinism: three `random.Random` streams seeded from the seed and a purpose string; no wall clock, no global
state; uuids and session/order ids come from the same streams. Same arguments ⇒ byte-identical output on every
platform running the same CPython minor version.
"""

from __future__ import annotations

import bisect
import gzip
import heapq
import io
import json
import logging
import math
import os
import random
import re
import shlex
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final, cast
from urllib.parse import quote_plus

from runtime.files import replaceable_file, write_whole
from runtime.logs import count_of, verb_for
from schemas.contract import EVENT_SCHEMA_VERSION

logger = logging.getLogger(__name__)

DEFAULT_START: Final = datetime(2026, 3, 1, tzinfo=UTC)
CURRENCY: Final = "USD"
SHOP_URL: Final = "https://shop.example.com"
#: The world is planned in memory before the first event, about 0.5 KB a customer (1M customers: 0.6 GB, 8 s): a
#: mistyped count would exhaust the machine instead of failing.
MAX_CUSTOMERS: Final = 10_000_000
#: Sessions are planned in memory too, about 50 bytes an event (10M events: 0.5 GB, 50 s).
MAX_EVENTS: Final = 100_000_000
#: From this many events the planning before the first record takes seconds to minutes: it is said, as no record
#: (nor progress) comes meanwhile.
PLANNING_NOTICE_EVENTS: Final = 1_000_000

#: Share of customers who ever make a first purchase (if it falls inside the window).
CONVERTER_SHARE: Final = 0.75
#: Mean delay, in days, between a customer's first visit and their first purchase.
FIRST_PURCHASE_DELAY_DAYS: Final = 3.0
#: Shape of the per-customer engagement multiplier (mean 1); below 1 gives a long tail of heavy users.
ENGAGEMENT_SHAPE: Final = 0.6
#: Mean days a customer keeps browsing after dropping out (BG/NBD death) or after first visit if never buying.
DROPOUT_BROWSE_DAYS: Final = 7.0
NON_BUYER_BROWSE_DAYS: Final = 20.0
#: Mean events of a browsing session (at least 1); mean extra browsing events before a purchase's last four.
BROWSE_SESSION_MEAN_EVENTS: Final = 5.0
PURCHASE_SESSION_EXTRA_MEAN: Final = 4.0
#: product_view, add_to_cart, checkout, purchase: the minimum cost of one purchase in events.
PURCHASE_MIN_EVENTS: Final = 4
#: Mean seconds between two events of a session (plus a 2 s floor).
EVENT_GAP_MEAN_SECONDS: Final = 35.0
#: Mean distance, in records, between an event and its duplicate.
DUPLICATE_DELAY_MEAN_RECORDS: Final = 50.0
MAX_REVENUE_CENTS: Final = 100_000_000

#: Relative session starts per UTC hour 00..23 (US daytime); zero hours get no session starts.
HOURLY_PROFILE: Final = (3, 2, 1, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.5, 1, 3, 5, 6, 7, 7, 7, 7, 6, 6, 5, 4)

MALFORMED_KINDS: Final = (
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "unknown_schema_version",
    "negative_revenue",
    "far_future_timestamp",
    "oversized",
    "deeply_nested",
)
#: Oversized records carry this much padding in page_url (> 40 KiB, above every size limit downstream).
OVERSIZED_PADDING: Final = 41 * 1024
NESTING_DEPTH: Final = 5000
REQUIRED_FIELDS: Final = (
    "schema_version",
    "event_id",
    "event_type",
    "customer_id",
    "session_id",
    "event_time",
)

_US_PER_SECOND: Final = 1_000_000
_US_PER_MINUTE: Final = 60 * _US_PER_SECOND
_US_PER_HOUR: Final = 60 * _US_PER_MINUTE
_US_PER_DAY: Final = 24 * _US_PER_HOUR
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_CATEGORIES: Final = (
    "shoes",
    "outdoor",
    "kitchen",
    "books",
    "toys",
    "garden",
    "electronics",
    "beauty",
    "sports",
    "home",
    "music",
    "pets",
)
_N_PRODUCTS: Final = 2000
_SEARCH_QUERIES: Final = (
    "running shoes",
    "rain jacket",
    "espresso machine",
    "cast iron pan",
    "kids lego",
    "garden hose",
    "usb-c charger",
    "noise cancelling headphones",
    "yoga mat",
    "dog food",
    "cat tree",
    "desk lamp",
    "crème brûlée torch",
    "café au lait bowl",
    "size 42 boots",
    "gift card",
    "tent 4 person",
    "sunscreen spf 50",
    'vinyl "limited edition"',
    "back\\slash & co",
    "水筒",
    "bluetooth speaker",
    "trail mix",
    "winter gloves",
)
_LANDING_PATHS: Final = ("/", "/", "/", "/deals", "/new", "/account", *(f"/c/{c}" for c in _CATEGORIES))

# Browsing Markov chain over states 0 page_view, 1 product_view, 2 search, 3 add_to_cart, 4 checkout.
# Each row is cumulative probabilities of the next state.
_PV, _PRV, _SEARCH, _ATC, _CHECKOUT = 0, 1, 2, 3, 4
_TRANSITIONS: Final = (
    (0.35, 0.80, 1.00, 1.00, 1.00),  # after page_view: page_view .35, product_view .45, search .20
    (0.20, 0.65, 0.88, 1.00, 1.00),  # after product_view: .20 .45 .23 add_to_cart .12
    (0.25, 0.85, 1.00, 1.00, 1.00),  # after search: .25 .60 .15
    (0.30, 0.80, 0.80, 0.80, 1.00),  # after add_to_cart: page_view .30, product_view .50, checkout .20
    (1.00, 1.00, 1.00, 1.00, 1.00),  # after an abandoned checkout: back to a page_view
)


def _hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss hypergeometric series for 0 <= z < 1 (no SciPy dependency just for one formula)."""
    term, total, n = 1.0, 1.0, 0
    while n < 200_000:
        term *= (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        total += term
        n += 1
        if abs(term) < 1e-15 * abs(total):
            break
    return total


@dataclass(frozen=True)
class BgNbdParams:
    """BG/NBD purchase process, time unit days.

    λ ~ Gamma(shape r, rate alpha): mean r/alpha = 0.075 repeat purchases per day while alive (heavy tail).
    p ~ Beta(a, b): mean a/(a+b) ≈ 0.24 chance of dropping out after each repeat purchase.
    Over a 60-day window this gives many repeat buyers, a good share of one-timers and dropped-out customers.
    """

    r: float = 0.75
    alpha: float = 10.0
    a: float = 0.8
    b: float = 2.5

    def __post_init__(self) -> None:
        if min(self.r, self.alpha, self.a, self.b) <= 0:
            raise ValueError("BG/NBD parameters must be positive")

    def expected_repeat_purchases(self, t: float) -> float:
        """E[X(t)]: expected repeat purchases in (0, t] after the first one (Fader, Hardie & Lee 2005)."""
        if t <= 0:
            return 0.0
        if math.isclose(self.a, 1.0):
            raise ValueError("the closed form needs a != 1")
        z = t / (self.alpha + t)
        hyp = _hyp2f1(self.r, self.b, self.a + self.b - 1, z)
        scale = (self.a + self.b - 1) / (self.a - 1)
        return scale * (1.0 - float((self.alpha / (self.alpha + t)) ** self.r) * hyp)

    def probability_no_repeat(self, t: float) -> float:
        """P(X(t) = 0): no repeat purchase in (0, t]; depends only on the Gamma part, not on dropout."""
        return float((self.alpha / (self.alpha + max(t, 0.0))) ** self.r)


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma spend: order value z ~ Gamma(shape p, rate nu), per-customer nu ~ Gamma(shape q, rate v).

    A customer's mean order value is p/nu; across customers E[p/nu] = p*v/(q-1) = 80.00 USD, long right tail.
    """

    p: float = 6.0
    q: float = 4.0
    v: float = 40.0

    def __post_init__(self) -> None:
        if min(self.p, self.q, self.v) <= 0:
            raise ValueError("Gamma-Gamma parameters must be positive")

    def expected_order_value(self) -> float:
        """Population mean order value p*v/(q-1) (infinite for q <= 1)."""
        return math.inf if self.q <= 1 else self.p * self.v / (self.q - 1)


@dataclass(frozen=True)
class GenerationSummary:
    """What one run produced; `complete` is False while the iterator is not exhausted."""

    seed: int
    customers: int
    valid_events: int
    duplicates: int
    malformed: int
    #: by the generator's ``MALFORMED_KINDS``, not the validator's error codes (a kind may be rejected under
    #: another name: ``negative_revenue`` as ``revenue_out_of_range``); only the totals are the same
    malformed_by_kind: Mapping[str, int]
    total_records: int
    event_type_counts: Mapping[str, int]
    sessions: int
    purchases: int
    purchases_dropped_for_budget: int
    buyers: int
    #: customers with two orders or more, on one day too; scoring's repeat buyers (``frequency > 0``) bought on two
    #: days or more, so they can be fewer
    repeat_buyers: int
    customers_seen: int
    revenue: Decimal
    event_hours: int
    first_event_time: str | None
    last_event_time: str | None
    complete: bool


@dataclass
class _Customer:
    """Planning state of one customer (only lives during planning)."""

    first_seen: float
    active_until: float
    engagement: float
    purchase_days: list[float] = field(default_factory=list)
    order_cents: list[int] = field(default_factory=list)


class _TimeFormatter:
    """RFC 3339 UTC with microseconds; caches the date-hour prefix because strftime per event is too slow."""

    def __init__(self) -> None:
        self._prefixes: dict[int, str] = {}

    def __call__(self, t_us: int) -> str:
        hour, rem = divmod(t_us, _US_PER_HOUR)
        prefix = self._prefixes.get(hour)
        if prefix is None:
            prefix = (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:")
            self._prefixes[hour] = prefix
        minute, rem = divmod(rem, _US_PER_MINUTE)
        second, micro = divmod(rem, _US_PER_SECOND)
        return f"{prefix}{minute:02d}:{second:02d}.{micro:06d}Z"

    @property
    def hours_seen(self) -> int:
        return len(self._prefixes)


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID from the seeded RNG (uuid.uuid4 reads the OS entropy pool)."""
    x = rng.getrandbits(128)
    x = (x & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
    h = f"{x:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _round_count(events: int, rate: float) -> int:
    return math.floor(events * rate + 0.5)


class ClickstreamGenerator:
    """Plans customers and sessions, then streams the events; `summary` describes the last run.

    `records()` labels each record ("valid", "duplicate" or "malformed:<kind>") for tests and tools;
    `events()` yields the bytes only, exactly what goes on the stream.
    """

    def __init__(
        self,
        customers: int,
        events: int,
        seed: int,
        *,
        start: datetime = DEFAULT_START,
        days: int = 60,
        duplicate_rate: float = 0.0,
        malformed_rate: float = 0.0,
        bgnbd: BgNbdParams | None = None,
        gamma_gamma: GammaGammaParams | None = None,
    ) -> None:
        if not 1 <= customers <= MAX_CUSTOMERS:
            raise ValueError(f"customers must be within 1 and {MAX_CUSTOMERS:,} (each is planned in memory)")
        if not 0 <= events <= MAX_EVENTS:
            raise ValueError(
                f"events must be within 0 and {MAX_EVENTS:,} (their sessions are planned in memory)"
            )
        if days < 1:
            raise ValueError("days must be >= 1")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start needs a timezone (UTC midnight)")
        start_us = (start - _EPOCH) // timedelta(microseconds=1)
        if start_us % _US_PER_DAY:
            raise ValueError("start must be at 00:00 UTC so that day boundaries are UTC days")
        for name, rate in (("duplicate_rate", duplicate_rate), ("malformed_rate", malformed_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        self.customers = customers
        self.events_requested = events
        self.seed = seed
        self.start_us = start_us
        self.days = days
        self.bgnbd = bgnbd or BgNbdParams()
        self.gamma_gamma = gamma_gamma or GammaGammaParams()
        self.duplicates = _round_count(events, duplicate_rate)
        self.malformed = _round_count(events, malformed_rate)
        self._id_width = max(6, len(str(customers)))
        self._summary = self._new_summary()

    @property
    def total_records(self) -> int:
        """Records `events()` will yield: valid events + duplicates + malformed."""
        return self.events_requested + self.duplicates + self.malformed

    @property
    def summary(self) -> GenerationSummary:
        """Counts of the last (or current) run; `complete` tells whether the iterator was exhausted."""
        return self._summary

    def customer_id(self, index: int) -> str:
        """The id of customer ``index`` (0-based): c-000001 for index 0."""
        return f"c-{index + 1:0{self._id_width}d}"

    def events(self) -> Iterator[bytes]:
        """The stream: UTF-8 compact JSON documents, no trailing newline."""
        for _, data in self.records():
            yield data

    def records(self) -> Iterator[tuple[str, bytes]]:
        """The stream with a label per record: "valid", "duplicate" or "malformed:<kind>"."""
        self._summary = self._new_summary()
        if self.events_requested >= PLANNING_NOTICE_EVENTS:
            logger.info(
                "planning %s customers and the sessions of %s events in memory before the first record (about a "
                "minute per 10 million events)",
                f"{self.customers:,}",
                f"{self.events_requested:,}",
            )
        plan_rng = self._rng("plan")
        customers = self._plan_customers(plan_rng)
        sessions, dropped = self._plan_sessions(plan_rng, customers)
        counters = _RunCounters(dropped=dropped, sessions=len(sessions))
        counters.buyers = sum(1 for c in customers if c.order_cents)
        counters.repeat_buyers = sum(1 for c in customers if len(c.order_cents) > 1)
        valid = self._expand(self._rng("events"), sessions, counters)
        yield from self._inject(self._rng("inject"), valid, counters)
        self._summary = self._snapshot(counters, complete=True)
        logger.info(
            "generated %d records: %d valid events, %d duplicates, %d malformed (seed %d)",
            self.total_records,
            self.events_requested,
            self.duplicates,
            self.malformed,
            self.seed,
        )

    # --- planning ------------------------------------------------------------------------------------------

    def _rng(self, purpose: str) -> random.Random:
        """Independent streams per purpose, so injecting errors never changes the valid events."""
        return random.Random(f"clickstream-rfm:{self.seed}:{purpose}")  # noqa: S311 - simulation, not secrets

    def _plan_customers(self, rng: random.Random) -> list[_Customer]:
        """Draw every customer's lifetime: first visit, BG/NBD purchases, Gamma-Gamma order values."""
        days = float(self.days)
        bg, gg = self.bgnbd, self.gamma_gamma
        gamma, beta, expo, uniform = rng.gammavariate, rng.betavariate, rng.expovariate, rng.random
        result: list[_Customer] = []
        for _ in range(self.customers):
            first_seen = uniform() * days
            engagement = gamma(ENGAGEMENT_SHAPE, 1.0 / ENGAGEMENT_SHAPE)
            lam = gamma(bg.r, 1.0 / bg.alpha)
            dropout = beta(bg.a, bg.b)
            nu = gamma(gg.q, 1.0 / gg.v)
            converts = uniform() < CONVERTER_SHARE
            customer = _Customer(
                first_seen, min(days, first_seen + expo(1.0 / NON_BUYER_BROWSE_DAYS)), engagement
            )
            if converts:
                t = first_seen + expo(1.0 / FIRST_PURCHASE_DELAY_DAYS)
                if t < days:
                    customer.purchase_days.append(t)
                    customer.active_until = days
                    while lam > 0.0:
                        t += expo(lam)
                        if t >= days:
                            break
                        customer.purchase_days.append(t)
                        if uniform() < dropout:
                            customer.active_until = min(days, t + expo(1.0 / DROPOUT_BROWSE_DAYS))
                            break
                else:
                    customer.active_until = days
            for _ in customer.purchase_days:
                value = gamma(gg.p, 1.0 / nu) if nu > 0.0 else 0.0
                cents = round(value * 100) if math.isfinite(value) else MAX_REVENUE_CENTS
                customer.order_cents.append(min(max(cents, 1), MAX_REVENUE_CENTS))
            result.append(customer)
        return result

    def _session_start(self, rng: random.Random, day: int, hour_cum: list[float]) -> int:
        hour = bisect.bisect_right(hour_cum, rng.random() * hour_cum[-1])
        hour = min(hour, 23)
        return self.start_us + day * _US_PER_DAY + hour * _US_PER_HOUR + int(rng.random() * _US_PER_HOUR)

    def _plan_sessions(
        self, rng: random.Random, customers: list[_Customer]
    ) -> tuple[list[tuple[int, int, int, int, int]], int]:
        """Sessions as (start_us, seq, customer index, events, order cents or 0), sorted by start time.

        Purchases cost at least four events each; if they do not fit the budget, whole customers' purchase
        histories (highest ids first) are dropped, so the remaining customers still follow BG/NBD exactly.
        """
        budget = self.events_requested
        purchases = sum(len(c.purchase_days) for c in customers)
        needed = purchases * PURCHASE_MIN_EVENTS
        dropped = buyers_dropped = 0
        if needed > budget:
            for customer in reversed(customers):
                if purchases * PURCHASE_MIN_EVENTS <= budget:
                    break
                n = len(customer.purchase_days)
                if n:
                    purchases -= n
                    dropped += n
                    buyers_dropped += 1
                    customer.purchase_days.clear()
                    customer.order_cents.clear()
        if dropped and budget:  # no events asked at all: no purchase to leave out, nothing to say
            logger.warning(
                "%d events are too few for the %d customers' purchases (each takes at least %d events): the "
                "purchases of %d customers (the highest customer ids, %d purchases) are left out; give --events "
                "%d or more to keep them all",
                budget,
                len(customers),
                PURCHASE_MIN_EVENTS,
                buyers_dropped,
                dropped,
                needed,
            )
        hour_cum = list(_cumulative(HOURLY_PROFILE))
        sessions: list[tuple[int, int, int, int, int]] = []
        extra_budget = (budget - purchases * PURCHASE_MIN_EVENTS) // 2
        used = 0
        for index, customer in enumerate(customers):
            for day, cents in zip(customer.purchase_days, customer.order_cents, strict=True):
                extra = min(int(rng.expovariate(1.0 / PURCHASE_SESSION_EXTRA_MEAN)), extra_budget)
                extra_budget -= extra
                length = PURCHASE_MIN_EVENTS + extra
                used += length
                start = self._session_start(rng, int(day), hour_cum)
                sessions.append((start, len(sessions), index, length, cents))
        remaining = budget - used
        weights = [c.engagement * max(c.active_until - c.first_seen, 1.0) for c in customers]
        cum_weights = list(_cumulative(weights))
        total_weight = cum_weights[-1]
        last_day = self.days - 1
        browse_extra_mean = BROWSE_SESSION_MEAN_EVENTS - 1.0
        while remaining > 0:
            index = min(bisect.bisect_right(cum_weights, rng.random() * total_weight), len(customers) - 1)
            customer = customers[index]
            length = min(1 + int(rng.expovariate(1.0 / browse_extra_mean)), remaining)
            remaining -= length
            span = max(customer.active_until - customer.first_seen, 1.0)
            day = min(int(customer.first_seen + rng.random() * span), last_day)
            sessions.append((self._session_start(rng, day, hour_cum), len(sessions), index, length, 0))
        sessions.sort()
        return sessions, dropped

    # --- expansion -----------------------------------------------------------------------------------------

    def _expand(
        self, rng: random.Random, sessions: list[tuple[int, int, int, int, int]], counters: _RunCounters
    ) -> Iterator[bytes]:
        """Turn planned sessions into event bytes, merged across concurrent sessions into event-time order."""
        fmt = _TimeFormatter()
        rand, expo, bits = rng.random, rng.expovariate, rng.getrandbits
        gap_rate = 1.0 / EVENT_GAP_MEAN_SECONDS
        product_cum = list(_cumulative([1.0 / (k**1.1) for k in range(1, _N_PRODUCTS + 1)]))
        product_total = product_cum[-1]
        product_tails = [
            f',"page_url":"{SHOP_URL}/p/p-{k:05d}","product_id":"p-{k:05d}"'
            for k in range(1, _N_PRODUCTS + 1)
        ]
        landing_tails = [f',"page_url":{json.dumps(SHOP_URL + path)}' for path in _LANDING_PATHS]
        search_tails = [
            f',"page_url":{json.dumps(f"{SHOP_URL}/search?q={quote_plus(q)}", ensure_ascii=False)}'
            f',"search_query":{json.dumps(q, ensure_ascii=False)}'
            for q in _SEARCH_QUERIES
        ]
        n_landing, n_search = len(landing_tails), len(search_tails)
        transitions = _TRANSITIONS
        seen = bytearray(self.customers)
        type_counts = counters.type_counts
        heap: list[tuple[int, int, bytes]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0
        for start, _, index, length, cents in sessions:
            while heap and heap[0][0] <= start:
                yield pop(heap)[2]
            seen[index] = 1
            cid = self.customer_id(index)
            head = f'","customer_id":"{cid}","session_id":"s-{bits(64):016x}","event_time":"'
            t = start
            # (event_type, tail) pairs of this session, then serialised with times.
            browse_len = length - PURCHASE_MIN_EVENTS if cents else length
            state = _PV
            last_product = 0
            cart_qty = 0
            steps: list[tuple[str, str]] = []
            for step in range(browse_len):
                if step:
                    u = rand()
                    row = transitions[state]
                    state = 0
                    while u >= row[state]:
                        state += 1
                    if state == _ATC and not last_product:
                        state = _PRV
                    if state == _CHECKOUT and (cents or not cart_qty):
                        state = _PV
                if state == _PV:
                    steps.append(("page_view", landing_tails[int(rand() * n_landing)]))
                elif state == _PRV:
                    last_product = bisect.bisect_right(product_cum, rand() * product_total)
                    last_product = min(last_product, _N_PRODUCTS - 1) + 1
                    steps.append(("product_view", product_tails[last_product - 1]))
                elif state == _SEARCH:
                    steps.append(("search", search_tails[int(rand() * n_search)]))
                elif state == _ATC:
                    qty = _quantity(rand())
                    cart_qty += qty
                    steps.append(("add_to_cart", f'{product_tails[last_product - 1]},"quantity":{qty}'))
                else:
                    steps.append(
                        ("checkout", f',"page_url":"{SHOP_URL}/checkout","order_id":"o-{bits(64):016x}"')
                    )
                    cart_qty = 0
            if cents:
                product = min(bisect.bisect_right(product_cum, rand() * product_total), _N_PRODUCTS - 1) + 1
                qty = _quantity(rand())
                cart_qty += qty
                order = f"o-{bits(64):016x}"
                steps.append(("product_view", product_tails[product - 1]))
                steps.append(("add_to_cart", f'{product_tails[product - 1]},"quantity":{qty}'))
                steps.append(("checkout", f',"page_url":"{SHOP_URL}/checkout","order_id":"{order}"'))
                steps.append(
                    (
                        "purchase",
                        f',"page_url":"{SHOP_URL}/checkout/confirmation","order_id":"{order}",'
                        f'"quantity":{cart_qty},"revenue":{cents // 100}.{cents % 100:02d}'
                        f',"currency":"{CURRENCY}"',
                    )
                )
                counters.revenue_cents += cents
            for event_type, tail in steps:
                x = bits(128)
                x = (x & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
                h = f"{x:032x}"
                doc = (
                    f'{{"schema_version":{EVENT_SCHEMA_VERSION},"event_id":"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"'
                    f',"event_type":"{event_type}{head}{fmt(t)}"{tail}}}'
                )
                push(heap, (t, seq, doc.encode()))
                seq += 1
                type_counts[event_type] = type_counts.get(event_type, 0) + 1
                t += 2 * _US_PER_SECOND + int(expo(gap_rate) * _US_PER_SECOND)
        while heap:
            yield pop(heap)[2]
        counters.customers_seen = sum(seen)
        counters.event_hours = fmt.hours_seen

    # --- injection -----------------------------------------------------------------------------------------

    def _inject(
        self, rng: random.Random, valid: Iterator[bytes], counters: _RunCounters
    ) -> Iterator[tuple[str, bytes]]:
        """Interleave exact numbers of duplicates and malformed records (selection sampling, one pass)."""
        n = self.events_requested
        dup_left, mal_left = self.duplicates, self.malformed
        kinds = list(MALFORMED_KINDS)
        rng.shuffle(kinds)
        pending: list[tuple[int, int, bytes]] = []
        out = 0
        first_data: bytes | None = None
        last_data: bytes | None = None
        for i, data in enumerate(valid):
            while pending and pending[0][0] <= out:
                yield "duplicate", heapq.heappop(pending)[2]
                out += 1
            yield "valid", data
            out += 1
            if first_data is None:
                first_data = data
            last_data = data
            if dup_left and rng.random() * (n - i) < dup_left:
                dup_left -= 1
                delay = 1 + int(rng.expovariate(1.0 / DUPLICATE_DELAY_MEAN_RECORDS))
                heapq.heappush(pending, (out + delay, i, data))
            if mal_left and rng.random() * (n - i) < mal_left:
                mal_left -= 1
                kind = kinds[counters.malformed_emitted % len(kinds)]
                counters.malformed_emitted += 1
                counters.malformed_by_kind[kind] = counters.malformed_by_kind.get(kind, 0) + 1
                yield f"malformed:{kind}", _malformed(rng, kind, data)
                out += 1
        while pending:
            yield "duplicate", heapq.heappop(pending)[2]
        counters.first_event_time = _event_time_of(first_data) if first_data else None
        counters.last_event_time = _event_time_of(last_data) if last_data else None

    # --- summary -------------------------------------------------------------------------------------------

    def _new_summary(self) -> GenerationSummary:
        return self._snapshot(_RunCounters(), complete=False)

    def _snapshot(self, counters: _RunCounters, *, complete: bool) -> GenerationSummary:
        return GenerationSummary(
            seed=self.seed,
            customers=self.customers,
            valid_events=self.events_requested,
            duplicates=self.duplicates,
            malformed=self.malformed,
            malformed_by_kind=dict(sorted(counters.malformed_by_kind.items())),
            total_records=self.total_records,
            event_type_counts=dict(counters.type_counts),
            sessions=counters.sessions,
            purchases=counters.type_counts.get("purchase", 0),
            purchases_dropped_for_budget=counters.dropped,
            buyers=counters.buyers,
            repeat_buyers=counters.repeat_buyers,
            customers_seen=counters.customers_seen,
            revenue=Decimal(counters.revenue_cents) / 100,
            event_hours=counters.event_hours,
            first_event_time=counters.first_event_time,
            last_event_time=counters.last_event_time,
            complete=complete,
        )


@dataclass
class _RunCounters:
    dropped: int = 0
    sessions: int = 0
    buyers: int = 0
    repeat_buyers: int = 0
    customers_seen: int = 0
    event_hours: int = 0
    revenue_cents: int = 0
    malformed_emitted: int = 0
    first_event_time: str | None = None
    last_event_time: str | None = None
    type_counts: dict[str, int] = field(default_factory=dict)
    malformed_by_kind: dict[str, int] = field(default_factory=dict)


def _cumulative(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def _quantity(u: float) -> int:
    """Cart quantity: mostly 1, sometimes 2, rarely 3-5."""
    if u < 0.8:
        return 1
    if u < 0.95:
        return 2
    return 3 + int((u - 0.95) * 60)


def _event_time_of(data: bytes) -> str:
    marker = b'"event_time":"'
    at = data.index(marker) + len(marker)
    return data[at : data.index(b'"', at)].decode()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _malformed(rng: random.Random, kind: str, template: bytes) -> bytes:
    """A bad record of `kind`, built from a valid event so it carries a realistic customer and time."""
    doc = cast(dict[str, Any], json.loads(template))
    doc["event_id"] = _uuid4(rng)
    if kind == "invalid_json":
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        return text[: rng.randrange(1, len(text))].encode()
    if kind == "invalid_utf8":
        return _dumps(doc).replace(b'"session_id":"', b'"session_id":"\xff\xfe', 1)
    if kind == "not_an_object":
        return _dumps(rng.choice([None, [doc], "page_view", 42]))
    if kind == "missing_field":
        del doc[rng.choice(REQUIRED_FIELDS)]
    elif kind == "wrong_type":
        field_name = rng.choice(["schema_version", "event_time", "customer_id", "quantity", "revenue"])
        if field_name == "schema_version":
            doc["schema_version"] = "1"
        elif field_name == "event_time":
            doc["event_time"] = 1_772_359_200
        elif field_name == "customer_id":
            doc["customer_id"] = 123
        elif field_name == "quantity":
            doc["quantity"] = "2"
        else:
            doc.update(event_type="purchase", order_id=f"o-{rng.getrandbits(64):016x}", revenue="19.99")
    elif kind == "unknown_event_type":
        doc["event_type"] = rng.choice(["click", "refund", "PageView", ""])
    elif kind == "unknown_schema_version":
        doc["schema_version"] = 2
    elif kind == "negative_revenue":
        cents = rng.randrange(1, 100_000)
        doc.update(event_type="purchase", revenue=-cents / 100, currency=CURRENCY)
        doc.setdefault("order_id", f"o-{rng.getrandbits(64):016x}")
    elif kind == "far_future_timestamp":
        doc["event_time"] = "2099-" + str(doc["event_time"])[5:].replace("02-29", "02-28")
    elif kind == "oversized":
        doc["page_url"] = f"{SHOP_URL}/p?ref=" + "x" * OVERSIZED_PADDING
    elif kind == "deeply_nested":
        doc.pop("page_url", None)
        encoded = _dumps(doc)
        return encoded[:-1] + b',"page_url":' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return _dumps(doc)


def generate_events(
    customers: int,
    events: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    days: int = 60,
    duplicate_rate: float = 0.0,
    malformed_rate: float = 0.0,
) -> Iterator[bytes]:
    """The stream as bytes (see the module docstring for counts); `ClickstreamGenerator` adds the summary."""
    return ClickstreamGenerator(
        customers,
        events,
        seed,
        start=start,
        days=days,
        duplicate_rate=duplicate_rate,
        malformed_rate=malformed_rate,
    ).events()


#: The first bytes of a gzip file: a file is read as gzip by these, whatever its name.
_GZIP_MAGIC: Final = b"\x1f\x8b"
_UTF8_BOM: Final = b"\xef\xbb\xbf"
#: A longer line is not a record (this producer sends records of up to 1 MiB, Kinesis takes none over 10 MiB): it is
#: refused once this much of it is read, where a file with no line breaks (a binary, /dev/zero) was read whole.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024


class _ReproducibleGzip(gzip.GzipFile):
    """A gzip file whose header holds no time and no file name: the same seed gives the same bytes, compressed too,
    whatever the file is called (``GzipFile(path)`` writes the name into the header)."""

    def __init__(self, path: Path) -> None:
        self._raw = path.open("wb")
        super().__init__(filename="", mode="wb", fileobj=self._raw, mtime=0)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()  # a GzipFile leaves a file object it was given open


def _create(path: Path, *, compressed: bool) -> IO[bytes]:
    """A file to write, gzip-compressed if asked."""
    if compressed:
        return cast(IO[bytes], _ReproducibleGzip(path))
    return path.open("wb")


@contextmanager
def _stdin() -> Iterator[io.BufferedReader]:
    """stdin's bytes, peekable, through a reader of its own on a copy of its descriptor: a thread blocked reading a
    pipe that stays open (``produce``'s background reader) then holds this reader's lock, not ``sys.stdin``'s,
    which the interpreter takes at its shutdown (a fatal error, SIGABRT, after a stop). A stdin without a descriptor
    (a test's or an embedding program's byte stream) is read as it is."""
    try:
        descriptor = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        stream = sys.stdin.buffer
        yield stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(cast(Any, stream))
        return
    with open(os.dup(descriptor), "rb") as own:
        yield own


@dataclass(frozen=True)
class _OtherFormat:
    """A format whose first bytes show an input is no JSONL text, and how to turn it into JSONL.

    ``filter`` reads the file named, or stdin (``bzip2 -dc``); ``reader`` reads only a file it is given (``unzip
    -p``), and inside gzip the file is unpacked first. Each pattern holds bytes no JSONL text has there (control
    bytes, NUL, bytes UTF-8 never has, or bzip2's block magic).
    """

    pattern: re.Pattern[bytes]
    name: str
    to_do: str  # what to do, e.g. "decompress it first" (all that is said where no command does it)
    filter: str | None = None
    reader: str | None = None
    extension: str = ""  # of the file unpacked from gzip, for ``reader``
    gzip_reader: str | None = None  # ``reader`` of a gzip-compressed file, where it reads gzip itself (tar)

    def advice(self, source: str, *, gzipped: bool) -> str:
        """``to_do``, with a command doing it on ``source`` where there is one."""
        return (
            f"{self.to_do}, e.g. {self._command(source, gzipped)}"
            if self.filter or self.reader
            else self.to_do
        )

    def _command(self, source: str, gzipped: bool) -> str:
        produce = "clickstream produce --input -"
        if self.filter:
            if gzipped:
                return f"gzip -dc {source} | {self.filter} | {produce}"
            return f"{self.filter} {source} | {produce}"
        assert self.reader is not None
        if gzipped and self.gzip_reader:
            return self.gzip_reader.format(file=source)
        if gzipped:
            unpacked = f"events.{self.extension}"
            return f"gzip -dc {source} > {unpacked}, then {self.reader.format(file=unpacked)}"
        return self.reader.format(file=source)


def _other_encoding(pattern: bytes, encoding: str, byte_order: str = "") -> _OtherFormat:
    """Text in another encoding than UTF-8, and iconv's name for it (with its byte order where no mark says it)."""
    return _OtherFormat(
        re.compile(pattern),
        f"{encoding} text",
        "convert it to UTF-8 first",
        filter=f"iconv -f {encoding}{byte_order} -t UTF-8",
    )


#: Formats an input is refused in (gzip aside, which is read): sent as they are, each line of such a file would be a
#: garbage record on the stream. A tar archive, also inside gzip, is known by its header's magic at byte 257.
_OTHER_FORMATS: Final = (
    _OtherFormat(
        re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)"), "bzip2", "decompress it first", filter="bzip2 -dc"
    ),
    _OtherFormat(re.compile(rb"\xfd7zXZ\x00"), "xz", "decompress it first", filter="xz -dc"),
    _OtherFormat(re.compile(rb"\x28\xb5\x2f\xfd"), "zstd", "decompress it first", filter="zstd -dc"),
    _OtherFormat(
        re.compile(rb"PK(\x03\x04|\x05\x06)"),
        "zip",
        "decompress it first",
        reader="unzip -p {file} | clickstream produce --input -",
        extension="zip",
    ),
    _OtherFormat(
        re.compile(rb"7z\xbc\xaf\x27\x1c"),
        "7z",
        "decompress it first",
        reader="7z x -so {file} | clickstream produce --input -",
        extension="7z",
    ),
    _OtherFormat(
        re.compile(rb".{257}ustar(\x0000|  \x00)", re.DOTALL),  # POSIX's, GNU's
        "tar",
        "decompress it first",
        reader="tar -xOf {file} | clickstream produce --input -",
        gzip_reader="tar -xzOf {file} | clickstream produce --input -",
    ),
    # a page header (a thrift struct) follows the magic: no JSON text starts so
    _OtherFormat(
        re.compile(rb"PAR1\x15"),
        "Parquet",
        "its rows are no records: an errors/ file's records are the bytes of its raw_data column, written one a "
        "line (see Rejected records in the README), and the events/ archive is read by `clickstream replay`",
    ),
    # byte order marks (UTF-32's first: UTF-32LE's starts as UTF-16LE's); without one, an object's first brace in
    # UTF-32, or its brace and quote in UTF-16, after any blank lines: JSONL text in UTF-8 holds no NUL
    _other_encoding(rb"\xff\xfe\x00\x00|\x00\x00\xfe\xff", "UTF-32"),
    _other_encoding(rb"(?:[ \t\r\n]\x00\x00\x00)*\{\x00\x00\x00", "UTF-32", "LE"),
    _other_encoding(rb"(?:\x00\x00\x00[ \t\r\n])*\x00\x00\x00\{", "UTF-32", "BE"),
    _other_encoding(rb"\xff\xfe|\xfe\xff", "UTF-16"),
    _other_encoding(rb'(?:[ \t\r\n]\x00)*\{\x00"\x00', "UTF-16", "LE"),
    _other_encoding(rb'(?:\x00[ \t\r\n])*\x00\{\x00"', "UTF-16", "BE"),
)
_FORMAT_BYTES: Final = 265  # to the end of a tar header's magic


def format_refusal(
    path: str | Path, first_bytes: bytes, *, gzipped: bool = False, named: bool = True
) -> str | None:
    """Why an input whose first bytes (decompressed, when ``gzipped``) are ``first_bytes`` is no JSONL, or None.
    ``named``: the path can be read again (a regular file), so the advice names it."""
    for other in _OTHER_FORMATS:
        if other.pattern.match(first_bytes):
            what = "stdin" if str(path) == "-" else str(path)
            kind = f"a gzip-compressed {other.name}" if gzipped else f"a {other.name}"
            source = shlex.quote(str(path)) if named and str(path) != "-" else "FILE"
            advice = other.advice(source, gzipped=gzipped)
            return f"{what} is {kind} file: an input is JSONL, plain or gzip-compressed; {advice}"
    return None


@contextmanager
def _reading(path: Path) -> Iterator[IO[bytes]]:
    """A file to read, decompressed when its first bytes are gzip's (whatever its name). Opened once and peeked,
    not read twice: a pipe (``-`` for stdin, ``<(zcat ...)``) gives its bytes to one read only. Another compression
    or an archive is refused (``InputFormatError``) before its first line."""
    with _stdin() if str(path) == "-" else path.open("rb") as raw:
        named = str(path) != "-" and path.is_file()
        if refusal := format_refusal(path, raw.peek(_FORMAT_BYTES)[:_FORMAT_BYTES], named=named):
            raise InputFormatError(refusal)
        if raw.peek(len(_GZIP_MAGIC))[: len(_GZIP_MAGIC)] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw) as unpacked:
                head = unpacked.peek(_FORMAT_BYTES)[:_FORMAT_BYTES]
                if refusal := format_refusal(path, head, gzipped=True, named=named):
                    raise InputFormatError(refusal)
                yield cast(IO[bytes], unpacked)
        else:
            yield raw


def write_jsonl(path: str | Path, records: Iterable[bytes]) -> int:
    """Write one record per line (newline-separated, ``.gz`` compressed by suffix); returns the record count.

    Compact JSON never contains a raw newline; a record that does cannot be framed as a line and is refused.
    The file is written whole (``runtime.files.write_whole``), so a stopped run leaves no file that breaks off (a
    ``.gz`` that fails its CRC) and an earlier file of that name as it was; a device or a pipe (``/dev/stdout``) is
    written in place.
    """
    target = Path(path)
    compressed = target.suffix.lower() == ".gz"  # as the name asked for says, a link's too
    return write_whole(target, lambda file: _write_lines(file, records, compressed=compressed, named=target))


def writes_in_place(path: str | Path) -> bool:
    """Whether ``write_jsonl`` writes ``path`` in place (a stop then leaves the lines written so far), not whole by
    a rename."""
    return replaceable_file(Path(path)) is None


def _write_lines(path: Path, records: Iterable[bytes], *, compressed: bool, named: Path) -> int:
    count = 0
    try:
        with _create(path, compressed=compressed) as out:
            for record in records:
                if b"\n" in record:
                    raise ValueError(f"record {count} contains a newline and cannot be written as one line")
                out.write(record)
                out.write(b"\n")
                count += 1
    except OSError as error:
        # a failed write (a full disk) names no file, or the hidden draft: the file asked for is named
        if error.filename is None or error.filename == str(path):
            error.filename = str(named)
        raise
    return count


class InputFileError(ValueError):
    """A JSONL input that cannot be read to its end (a truncated or mislabelled ``.gz``, an I/O error)."""


class InputFormatError(InputFileError):
    """An input in a format this does not read (another compression, an archive): refused before its first record."""


def read_jsonl(path: str | Path) -> Iterator[bytes]:
    """The records written by `write_jsonl`, byte for byte (see ``JsonlRecords``)."""
    return iter(JsonlRecords(path))


class JsonlRecords:
    """The records of a JSONL file, byte for byte (not decoded, so bad records survive); blank lines are not records
    and are skipped, so ``line`` says which line the record last read came from. gzip is recognised by its first
    bytes (any name), and a UTF-8 byte order mark that an editor put at the start of the file is not part of the
    first record. A file that breaks off raises ``InputFileError`` naming the last line read."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.line = 0

    def __iter__(self) -> Iterator[bytes]:
        path, line_number = self.path, 0
        try:
            with _reading(Path(path)) as stream:
                while line := stream.readline(MAX_LINE_BYTES + 1):
                    line_number += 1
                    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                        raise InputFileError(
                            f"{path}: line {line_number:,} is longer than {MAX_LINE_BYTES // 2**20} MiB: not a "
                            "record (no Kinesis record is over 10 MiB); is this a JSONL file?"
                        )
                    if line_number == 1 and line.startswith(_UTF8_BOM):
                        line = line[len(_UTF8_BOM) :]  # the file's mark, not the record's bytes
                    if line.strip():
                        self.line = line_number
                        yield line[:-1] if line.endswith(b"\n") else line
        except (OSError, EOFError, zlib.error) as error:
            where = f"after line {line_number:,}" if line_number else "at its start"
            raise InputFileError(f"{path}: unreadable {where} ({error})") from error


@dataclass
class DoubtfulRecords:
    """Counts the records of an input file that the worker will reject whatever happens on the way, so that
    `produce` can say so after sending them (they are sent as they are: the file is the user's, and rejected
    records are data in ``errors/``). Catches the usual mistakes: a pretty-printed JSON document or array (its
    lines are ``[``, ``{``, ``"key": ...``), an array of one object a line (``{...},``), a CSV, records over the
    worker's size limit."""

    max_record_bytes: int
    # a record PutRecords takes (one it refuses is said as not sent: not counted here)
    sendable: Callable[[bytes], bool]
    records: int = 0
    # not ``{`` first and ``}`` last (blanks aside): not a JSON object, whatever is between
    not_objects: int = 0
    first_not_object: int | None = None  # its record number (1-based)
    # and its line, when read from a file (blank lines are no records)
    first_not_object_line: int | None = None
    too_large_for_worker: int = 0

    def counted(self, records: Iterable[bytes]) -> Iterator[bytes]:
        for data in records:
            self.records += 1
            text = data.strip()
            if not (text.startswith(b"{") and text.endswith(b"}")):
                self.not_objects += 1
                if self.first_not_object is None:
                    self.first_not_object = self.records
                    if isinstance(records, JsonlRecords):
                        self.first_not_object_line = records.line
            if len(data) > self.max_record_bytes and self.sendable(data):
                self.too_large_for_worker += 1
            yield data

    def warnings(self, source: object) -> list[str]:
        said = []
        if self.not_objects:
            said.append(
                f"{self.not_objects:,} of the {count_of(self.records, 'record')} of {source} "
                f"{verb_for(self.not_objects, 'is not a JSON object', 'are not JSON objects')} (the first is "
                f"{self._first_not_object_place()}; one event per line, each line an object `{{...}}` with no "
                "comma after it, not a JSON array): the worker rejects each it receives into errors/"
            )
        if self.too_large_for_worker:
            said.append(
                f"{count_of(self.too_large_for_worker, 'record')} of {source} {verb_for(self.too_large_for_worker)} "
                f"larger than the worker's limit of "
                f"{self.max_record_bytes:,} bytes (CLICKSTREAM_MAX_RECORD_BYTES): it rejects each it receives into "
                "errors/"
            )
        return said

    def _first_not_object_place(self) -> str:
        place = f"record {self.first_not_object:,}"
        if self.first_not_object_line is not None and self.first_not_object_line != self.first_not_object:
            place += f", on line {self.first_not_object_line:,} (blank lines are no records)"
        return place
