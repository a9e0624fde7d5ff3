-- Current customer rows and the CLV model inputs.
--
-- customer_aggregates/ is an append-only history: every flush writes the new row of each customer it changed.
-- A customer's current row is the one with the highest version (= events applied), ties broken by the later
-- as_of, exactly as clickstream.outputs.CURRENT_ROW does for `clickstream summary`.
--
-- Each row's frequency / recency / T are the BG/NBD inputs with one UTC day per period, but T is measured up to
-- that row's own as_of (its shard's event-time high-water mark when the row was written). A customer who has not
-- changed for a while keeps an old as_of, so current rows do not share one observation end. The CLV view
-- recomputes T for every buyer against one common observation end, the latest as_of of all current rows:
--   T = DATEDIFF(day, first_purchase_at::date, common_as_of::date)
-- but not past the query's clock (GETDATE()) unless a purchase is, as `clickstream score` takes it: events are
-- accepted up to CLICKSTREAM_MAX_FUTURE_SKEW_SECONDS (an hour by default) after their arrival, so a client clock
-- ahead can stamp a page view in a UTC day not yet begun, which the models would count as a whole day observed
-- without a purchase for every buyer. GETDATE() is the session's wall time, UTC by default as the columns are:
-- query these views in a UTC session (a session SET to another time zone moves the cap by its offset).
-- recency needs no change (first to last purchase day), nor do frequency and monetary_value.

-- Current rows from the COPY-loaded history (03_copy_tables.sql).
CREATE OR REPLACE VIEW clickstream.customer_current AS
SELECT
    customer_id, version, as_of, first_event_at, last_event_at, events, page_views, product_views, searches,
    add_to_carts, checkouts, purchases, sessions, active_days, revenue, first_purchase_at, last_purchase_at,
    purchase_days, frequency, recency, t, monetary_value, repeat_revenue, engagement_score, shard_id,
    updated_through_sequence
FROM (
    SELECT
        h.*,
        ROW_NUMBER() OVER (PARTITION BY h.customer_id ORDER BY h.version DESC, h.as_of DESC) AS row_rank
    FROM clickstream.customer_aggregates_history AS h
) AS ranked
WHERE row_rank = 1;

-- The same over the Spectrum external table (02_spectrum_external_tables.sql): no load step, scans S3. A scan also
-- sees the files of a flush attempt that lost its commit, until they are deleted (README, "Reading the outputs
-- strictly"): counts and sums are the same, but such a row may win the tie-break with its own as_of, t and
-- updated_through_sequence; for exact values read the COPY-loaded tables above.
-- Views over external tables must be late-binding.
CREATE OR REPLACE VIEW clickstream.customer_current_spectrum AS
SELECT
    customer_id, version, as_of, first_event_at, last_event_at, events, page_views, product_views, searches,
    add_to_carts, checkouts, purchases, sessions, active_days, revenue, first_purchase_at, last_purchase_at,
    purchase_days, frequency, recency, t, monetary_value, repeat_revenue, engagement_score, shard_id,
    updated_through_sequence
FROM (
    SELECT
        a.*,
        ROW_NUMBER() OVER (PARTITION BY a.customer_id ORDER BY a.version DESC, a.as_of DESC) AS row_rank
    FROM spectrum_clickstream.customer_aggregates AS a
) AS ranked
WHERE row_rank = 1
WITH NO SCHEMA BINDING;

-- BG/NBD + Gamma-Gamma inputs (pymc-marketing: customer_id, frequency, recency, T, monetary_value), buyers only
-- (check clickstream.shard_marks below first: a shard behind the common end makes its buyers look lapsed):
-- customers without a purchase have NULL frequency / recency / T / monetary_value and are not in BG/NBD's
-- population (its time 0 is the first purchase). Redshift returns the column as lower-case t; rename it to T
-- in the client (or SET enable_case_sensitive_identifier TO true and alias it "T").
-- Gamma-Gamma is fitted on repeat buyers with a positive mean spend only: WHERE frequency > 0 AND monetary_value > 0
-- (the contract allows revenue 0, and Gamma-Gamma cannot take a mean spend of 0; `clickstream score` does the same).
CREATE OR REPLACE VIEW clickstream.customer_rfm_for_clv AS
WITH observation AS (
    SELECT LEAST(MAX(as_of), GREATEST(GETDATE(), MAX(last_purchase_at))) AS common_as_of
    FROM clickstream.customer_current
)
SELECT
    c.customer_id,
    c.frequency,
    c.recency,
    DATEDIFF(day, c.first_purchase_at::DATE, o.common_as_of::DATE) AS t,
    c.monetary_value,
    o.common_as_of,
    c.as_of AS row_as_of,
    c.t AS row_t
FROM clickstream.customer_current AS c
CROSS JOIN observation AS o
WHERE c.frequency IS NOT NULL;

-- Before modelling from customer_rfm_for_clv: each shard's newest mark among the current rows, and how many days
-- it is behind the common observation end. A shard a day or more behind (a stopped or lagging worker) has its
-- buyers' latest purchases missing while their T runs to the common end, so their P(alive) reads low; wait, or
-- model from a `clickstream replay` that ends at the shard's mark (the current rows hold the other shards' later
-- purchases, so an observation end at the mark does not fit them; `clickstream score` prints the same check and
-- the commands). A quiet shard, or one closed by a reshard whose customers moved on, shows here too: the rows
-- cannot tell which.
CREATE OR REPLACE VIEW clickstream.shard_marks AS
WITH marks AS (
    SELECT shard_id, MAX(as_of) AS shard_as_of
    FROM clickstream.customer_current
    GROUP BY shard_id
)
SELECT
    shard_id,
    shard_as_of,
    -- whole 24-hour periods, as score counts them (DATEDIFF(day, ...) would count midnights crossed)
    FLOOR(DATEDIFF(second, shard_as_of, MAX(shard_as_of) OVER ()) / 86400.0) AS days_behind
FROM marks;
