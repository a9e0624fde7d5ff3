-- Local Redshift tables loaded with COPY from the worker's Parquet outputs, for dashboards and joins that should
-- not scan S3 on every query. Types as in 02_spectrum_external_tables.sql (UTC timestamps as TIMESTAMP).
--
-- COPY ... FORMAT AS PARQUET maps Parquet columns to table columns by position, so each table lists exactly the
-- columns of its Arrow schema in schemas/contract.py, in that order, and nothing else (the Hive partition values
-- are in the key, not in the files). tests/test_redshift_sql.py enforces this.
--
-- Which files: the loads below read a COPY manifest that lists exactly the files commit records name, written by
--   clickstream manifest --output customer_aggregates --arrival-day ${LOAD_DAY} --upload
-- (prints the manifest's s3:// URL). Loading a whole partition folder instead (FROM '.../arrival_yyyymmdd=N/'
-- without MANIFEST) also works, but can pick up the files of a flush attempt that lost its commit to another
-- writer or died before committing, in the seconds before they are deleted (README: reading the outputs).
--
-- COPY appends: loading the same file twice duplicates its rows. The loads go through a staging table and insert
-- only rows not loaded before, which makes re-running a day's load (or a whole backfill) safe.
--
-- A flush writes into the arrival day its earliest record arrived on, so files still come into a day after its end
-- (for up to CLICKSTREAM_FLUSH_MAX_SECONDS, and while the worker is behind): load the day before again on each run,
-- and a day again once a worker that was behind has caught up (`manifest` says when a day may still grow). A day
-- with no files gets no manifest (a COPY of an empty one fails): skip its COPY.
--
-- Placeholders: ${REDSHIFT_IAM_ROLE_ARN} (s3:GetObject on the prefix, s3:ListBucket on the bucket; with
-- CLICKSTREAM_SSE=aws:kms also kms:Decrypt on the worker's key, in the role's policy and the key's), ${BUCKET},
-- ${PREFIX}, and ${LOAD_DAY} (YYYYMMDD: the arrival_yyyymmdd partition to load).

CREATE SCHEMA IF NOT EXISTS clickstream;

-- Every version of every customer row; current rows via clickstream.customer_current (04_...sql).
CREATE TABLE IF NOT EXISTS clickstream.customer_aggregates_history (
    customer_id VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL,
    as_of TIMESTAMP NOT NULL,
    first_event_at TIMESTAMP NOT NULL,
    last_event_at TIMESTAMP NOT NULL,
    events BIGINT NOT NULL,
    page_views BIGINT NOT NULL,
    product_views BIGINT NOT NULL,
    searches BIGINT NOT NULL,
    add_to_carts BIGINT NOT NULL,
    checkouts BIGINT NOT NULL,
    purchases BIGINT NOT NULL,
    sessions BIGINT NOT NULL,
    active_days BIGINT NOT NULL,
    revenue DECIMAL(18, 2) NOT NULL,
    first_purchase_at TIMESTAMP,
    last_purchase_at TIMESTAMP,
    purchase_days BIGINT NOT NULL,
    frequency BIGINT,
    recency BIGINT,
    t BIGINT,
    monetary_value DOUBLE PRECISION,
    repeat_revenue DECIMAL(18, 2),
    engagement_score DOUBLE PRECISION NOT NULL,
    shard_id VARCHAR(128) NOT NULL,
    updated_through_sequence VARCHAR(256) NOT NULL
)
DISTSTYLE KEY
DISTKEY (customer_id)
COMPOUND SORTKEY (customer_id, version);

-- Validated events, one row per applied delivery (de-duplicated by the worker within its window). revenue is kept on
-- any event that carries it (a checkout may): sum it WHERE event_type = 'purchase', as customer_aggregates.revenue does.
CREATE TABLE IF NOT EXISTS clickstream.events (
    event_id VARCHAR(36) NOT NULL,
    event_type VARCHAR(16) NOT NULL,
    customer_id VARCHAR(64) NOT NULL,
    session_id VARCHAR(64) NOT NULL,
    event_time TIMESTAMP NOT NULL,
    page_url VARCHAR(8192),
    product_id VARCHAR(256),
    search_query VARCHAR(2048),
    quantity INTEGER,
    order_id VARCHAR(256),
    revenue DECIMAL(18, 2),
    currency VARCHAR(3),
    schema_version INTEGER NOT NULL,
    shard_id VARCHAR(128) NOT NULL,
    sequence_number VARCHAR(256) NOT NULL,
    sub_sequence_number BIGINT NOT NULL,
    approximate_arrival_at TIMESTAMP NOT NULL
)
DISTSTYLE KEY
DISTKEY (customer_id)
COMPOUND SORTKEY (event_time);

-- ---------------------------------------------------------------------------------------------------------------
-- Load one arrival day of customer_aggregates/ (for a backfill, a manifest without --arrival-day lists every file).
CREATE TEMP TABLE customer_aggregates_stage (LIKE clickstream.customer_aggregates_history);

COPY customer_aggregates_stage
FROM 's3://${BUCKET}/${PREFIX}/_control/manifests/customer_aggregates-${LOAD_DAY}.manifest'
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'
FORMAT AS PARQUET
MANIFEST;

-- A customer row is identified by the flush that wrote it: (customer_id, shard_id, updated_through_sequence), and
-- its version (updated_through_sequence has no sub-sequence: two flushes ending inside one KPL-aggregated record
-- would share it, while each gives the customer a new version).
INSERT INTO clickstream.customer_aggregates_history
SELECT s.*
FROM customer_aggregates_stage AS s
WHERE NOT EXISTS (
    SELECT 1
    FROM clickstream.customer_aggregates_history AS h
    WHERE h.customer_id = s.customer_id
      AND h.shard_id = s.shard_id
      AND h.updated_through_sequence = s.updated_through_sequence
      AND h.version = s.version
);

DROP TABLE customer_aggregates_stage;

-- ---------------------------------------------------------------------------------------------------------------
-- Load one arrival day of events/.
CREATE TEMP TABLE events_stage (LIKE clickstream.events);

COPY events_stage
FROM 's3://${BUCKET}/${PREFIX}/_control/manifests/events-${LOAD_DAY}.manifest'
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'
FORMAT AS PARQUET
MANIFEST;

-- A row is one applied delivery, identified by its stream position: loading a day again adds nothing, and a re-send
-- applied again after the de-duplication window (counted twice in the aggregates) stays a row of its own.
INSERT INTO clickstream.events
SELECT s.*
FROM events_stage AS s
WHERE NOT EXISTS (
    SELECT 1 FROM clickstream.events AS e
    WHERE e.customer_id = s.customer_id  -- the distribution key: the anti-join stays on each node
      AND e.shard_id = s.shard_id
      AND e.sequence_number = s.sequence_number
      AND e.sub_sequence_number = s.sub_sequence_number
);

DROP TABLE events_stage;
