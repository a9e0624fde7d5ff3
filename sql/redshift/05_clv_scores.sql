-- clv/: the scores of `clickstream score` (CLV_SCORES_SCHEMA in schemas/contract.py), as a Spectrum external table,
-- as a COPY-loaded table, and joined to the current aggregates in one view.
--
-- Layout (schemas/layout.py): one partition per observation-end day, one folder per run inside it:
--   <prefix>/clv/as_of_yyyymmdd=YYYYMMDD/run=<run id>/part-NNNNN.parquet   (and _model.json, ignored by Spectrum)
--   <prefix>/_control/clv/as_of_yyyymmdd=YYYYMMDD.json                      the commit: which run is that day's
-- Only the run named by the day's commit record is the day's data: register (or load) that run's folder.
-- ${AS_OF_YYYYMMDD} and ${RUN_ID} come from the commit record (`run_id`, and the UTC day of `as_of`, an ISO time:
-- 2026-04-29T23:37:00+00:00 is 20260429; the commit's key names it too); _control/clv/latest.json is the newest day's. Type mapping as in 02_spectrum_external_tables.sql; "T" is t.

CREATE EXTERNAL TABLE spectrum_clickstream.clv_scores (
    customer_id VARCHAR(64),
    as_of TIMESTAMP,
    frequency BIGINT,
    recency BIGINT,
    t BIGINT,
    monetary_value DOUBLE PRECISION,
    days_since_last_purchase BIGINT,
    purchase_days BIGINT,
    revenue DECIMAL(18, 2),
    probability_alive DOUBLE PRECISION,
    expected_purchases_30d DOUBLE PRECISION,
    expected_purchases_90d DOUBLE PRECISION,
    expected_purchases_365d DOUBLE PRECISION,
    expected_average_order_value DOUBLE PRECISION,
    clv DOUBLE PRECISION,
    r_score INTEGER,
    f_score INTEGER,
    m_score INTEGER,
    fm_score INTEGER,
    rfm_cell VARCHAR(3),
    segment VARCHAR(32),
    run_id VARCHAR(16)
)
PARTITIONED BY (as_of_yyyymmdd INTEGER)
STORED AS PARQUET
LOCATION 's3://${BUCKET}/${PREFIX}/clv/';

-- After each committed run: point the day's partition at the committed run's folder. Run both statements every
-- time: a re-scored day has a new run id and `score` deletes the superseded run's folder, so a partition left at the
-- old location (ADD IF NOT EXISTS does nothing when it exists) would read no rows.
ALTER TABLE spectrum_clickstream.clv_scores
ADD IF NOT EXISTS PARTITION (as_of_yyyymmdd='${AS_OF_YYYYMMDD}')
LOCATION 's3://${BUCKET}/${PREFIX}/clv/as_of_yyyymmdd=${AS_OF_YYYYMMDD}/run=${RUN_ID}/';
ALTER TABLE spectrum_clickstream.clv_scores
PARTITION (as_of_yyyymmdd='${AS_OF_YYYYMMDD}')
SET LOCATION 's3://${BUCKET}/${PREFIX}/clv/as_of_yyyymmdd=${AS_OF_YYYYMMDD}/run=${RUN_ID}/';

-- The same rows loaded into the cluster. COPY maps Parquet columns by position: the column order is the schema's.
CREATE TABLE IF NOT EXISTS clickstream.clv_scores (
    customer_id VARCHAR(64) NOT NULL,
    as_of TIMESTAMP NOT NULL,
    frequency BIGINT NOT NULL,
    recency BIGINT NOT NULL,
    t BIGINT NOT NULL,
    monetary_value DOUBLE PRECISION NOT NULL,
    days_since_last_purchase BIGINT NOT NULL,
    purchase_days BIGINT NOT NULL,
    revenue DECIMAL(18, 2) NOT NULL,
    probability_alive DOUBLE PRECISION NOT NULL,
    expected_purchases_30d DOUBLE PRECISION NOT NULL,
    expected_purchases_90d DOUBLE PRECISION NOT NULL,
    expected_purchases_365d DOUBLE PRECISION NOT NULL,
    expected_average_order_value DOUBLE PRECISION NOT NULL,
    clv DOUBLE PRECISION NOT NULL,
    r_score INTEGER NOT NULL,
    f_score INTEGER NOT NULL,
    m_score INTEGER NOT NULL,
    fm_score INTEGER NOT NULL,
    rfm_cell VARCHAR(3) NOT NULL,
    segment VARCHAR(32) NOT NULL,
    run_id VARCHAR(16) NOT NULL
)
DISTKEY (customer_id)
SORTKEY (as_of, customer_id);

-- Load one committed run. Idempotent: the day's rows are replaced in one transaction, so loading the same run
-- again, or a re-scored day's new run (whose as_of may be a later time of the same day), leaves exactly that run's
-- rows for the day.
CREATE TEMP TABLE clv_scores_stage (LIKE clickstream.clv_scores);

COPY clv_scores_stage
FROM 's3://${BUCKET}/${PREFIX}/clv/as_of_yyyymmdd=${AS_OF_YYYYMMDD}/run=${RUN_ID}/part-'
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'
FORMAT AS PARQUET;

BEGIN;

DELETE FROM clickstream.clv_scores
WHERE CAST(as_of AS DATE) IN (SELECT DISTINCT CAST(as_of AS DATE) FROM clv_scores_stage);

INSERT INTO clickstream.clv_scores
SELECT * FROM clv_scores_stage;

COMMIT;

DROP TABLE clv_scores_stage;

-- Every customer's current aggregates with the newest scores: what marketing tools import. Customers without a
-- purchase (no CLV, no segment) have NULL scores; scored_as_of says how old the scores are.
CREATE OR REPLACE VIEW clickstream.customer_value AS
WITH latest AS (
    SELECT MAX(as_of) AS as_of
    FROM clickstream.clv_scores
),
scores AS (
    SELECT s.*
    FROM clickstream.clv_scores AS s
    INNER JOIN latest AS l ON s.as_of = l.as_of
)
SELECT
    c.customer_id,
    c.version,
    c.as_of AS aggregates_as_of,
    c.first_event_at,
    c.last_event_at,
    c.events,
    c.sessions,
    c.active_days,
    c.purchases,
    c.revenue,
    c.engagement_score,
    s.as_of AS scored_as_of,
    s.frequency,
    s.recency,
    s.t,
    s.days_since_last_purchase,
    s.probability_alive,
    s.expected_purchases_30d,
    s.expected_purchases_90d,
    s.expected_purchases_365d,
    s.expected_average_order_value,
    s.clv,
    s.r_score,
    s.f_score,
    s.m_score,
    s.rfm_cell,
    s.segment,
    s.run_id
FROM clickstream.customer_current AS c
LEFT JOIN scores AS s ON s.customer_id = c.customer_id;
