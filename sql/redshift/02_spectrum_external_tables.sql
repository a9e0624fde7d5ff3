-- Redshift Spectrum external tables over the worker's Parquet outputs, in place on S3 (nothing is loaded).
-- Column names and types follow the Arrow schemas in schemas/contract.py, mapped as:
--   string -> VARCHAR(n)   int32 -> INTEGER   int64 -> BIGINT   float64 -> DOUBLE PRECISION
--   decimal128(18, 2) -> DECIMAL(18, 2)   timestamp[us, tz=UTC] -> TIMESTAMP (values are UTC)
--   binary -> VARBYTE (Spectrum reads Parquet BINARY as VARBYTE; on a cluster without VARBYTE support for
--            external tables, leave raw_data out of the errors table: raw_size_bytes and the key columns remain)
-- VARCHAR lengths are bytes, sized from the event JSON schema (maxLength x 4 where UTF-8 is allowed) and from
-- Kinesis limits (sequence numbers up to 129 digits, partition keys up to 256 characters), so no value the worker
-- writes is longer. Spectrum would read a longer one as NULL (surplus_char_handling and surplus_bytes_handling are
-- SET_TO_NULL by default): the errors table, which keeps rejects of any size, truncates instead (see there).
--
-- Identifiers: Redshift folds names to lower case, so the Parquet column "T" is the column t here (Glue stores
-- lower-case names; Parquet columns are matched by name). Partition columns are not stored in the files: they
-- come from the Hive-style key layout (schemas/layout.py): one file per output per flush, in the partition of the
-- UTC day the flush's earliest record arrived, as an integer yyyymmdd:
--   <prefix>/events/arrival_yyyymmdd=YYYYMMDD/*.parquet
--   <prefix>/customer_aggregates/arrival_yyyymmdd=YYYYMMDD/*.parquet
--   <prefix>/errors/arrival_yyyymmdd=YYYYMMDD/*.parquet
-- (<prefix>/_control/ holds the JSON intent and commit records; no table reads it.)
--
-- Strictness: a table over a prefix reads every file in it. For seconds after a flush attempt loses its commit to
-- another writer (a paused or partitioned worker), and until the shard's next commit after a worker died mid-flush,
-- a partition can hold files that no commit names, and in one rare case for good (a paused writer that resumes,
-- writes its files after the owner settled its attempt, and dies before it learns it lost: README, "Reading the
-- outputs strictly"). The current-row view is unaffected (a loser's rows repeat the
-- winner's or are older versions), but event counts over events/ can include such files. For exact loads use COPY
-- with the manifest of committed files (03_copy_tables.sql, `clickstream manifest`).
--
-- Placeholders: ${REDSHIFT_IAM_ROLE_ARN} (s3:GetObject on the prefix, s3:ListBucket on the bucket, Glue Data
-- Catalog access; with CLICKSTREAM_SSE=aws:kms also kms:Decrypt on the worker's key, in the role's policy and the
-- key's), ${BUCKET}, ${PREFIX} (CLICKSTREAM_BUCKET, CLICKSTREAM_PREFIX).

CREATE EXTERNAL SCHEMA IF NOT EXISTS spectrum_clickstream
FROM DATA CATALOG
DATABASE 'clickstream_rfm'
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'
CREATE EXTERNAL DATABASE IF NOT EXISTS;

-- events/: validated, de-duplicated events (EVENTS_SCHEMA), one file per flush.
CREATE EXTERNAL TABLE spectrum_clickstream.events (
    event_id VARCHAR(36),
    event_type VARCHAR(16),
    customer_id VARCHAR(64),
    session_id VARCHAR(64),
    event_time TIMESTAMP,
    page_url VARCHAR(8192),
    product_id VARCHAR(256),
    search_query VARCHAR(2048),
    quantity INTEGER,
    order_id VARCHAR(256),
    revenue DECIMAL(18, 2),
    currency VARCHAR(3),
    schema_version INTEGER,
    shard_id VARCHAR(128),
    sequence_number VARCHAR(256),
    sub_sequence_number BIGINT,
    approximate_arrival_at TIMESTAMP
)
PARTITIONED BY (arrival_yyyymmdd INTEGER)
STORED AS PARQUET
LOCATION 's3://${BUCKET}/${PREFIX}/events/';

-- customer_aggregates/: one row per customer changed in a flush (CUSTOMER_AGGREGATES_SCHEMA). A customer has many
-- rows over time; the current one has the highest version (04_current_customers_view.sql).
CREATE EXTERNAL TABLE spectrum_clickstream.customer_aggregates (
    customer_id VARCHAR(64),
    version BIGINT,
    as_of TIMESTAMP,
    first_event_at TIMESTAMP,
    last_event_at TIMESTAMP,
    events BIGINT,
    page_views BIGINT,
    product_views BIGINT,
    searches BIGINT,
    add_to_carts BIGINT,
    checkouts BIGINT,
    purchases BIGINT,
    sessions BIGINT,
    active_days BIGINT,
    revenue DECIMAL(18, 2),
    first_purchase_at TIMESTAMP,
    last_purchase_at TIMESTAMP,
    purchase_days BIGINT,
    frequency BIGINT,
    recency BIGINT,
    t BIGINT,
    monetary_value DOUBLE PRECISION,
    repeat_revenue DECIMAL(18, 2),
    engagement_score DOUBLE PRECISION,
    shard_id VARCHAR(128),
    updated_through_sequence VARCHAR(256)
)
PARTITIONED BY (arrival_yyyymmdd INTEGER)
STORED AS PARQUET
LOCATION 's3://${BUCKET}/${PREFIX}/customer_aggregates/';

-- errors/: every rejected record with its Kinesis identity and raw bytes (ERRORS_SCHEMA).
CREATE EXTERNAL TABLE spectrum_clickstream.errors (
    shard_id VARCHAR(128),
    sequence_number VARCHAR(256),
    sub_sequence_number BIGINT,
    partition_key VARCHAR(1024),
    approximate_arrival_at TIMESTAMP,
    error_code VARCHAR(64),
    error_detail VARCHAR(65535),
    -- Redshift's largest VARBYTE. A reject may be longer (Kinesis allows a 10 MiB record): read here it comes
    -- truncated, as its table properties (below) ask, not NULL, Spectrum's default (compare raw_size_bytes); the
    -- Parquet file keeps every byte for a re-drive. error_detail is truncated the same way.
    raw_data VARBYTE(1024000),
    raw_size_bytes BIGINT
)
PARTITIONED BY (arrival_yyyymmdd INTEGER)
STORED AS PARQUET
LOCATION 's3://${BUCKET}/${PREFIX}/errors/';

ALTER TABLE spectrum_clickstream.errors
SET TABLE PROPERTIES ('surplus_bytes_handling' = 'TRUNCATE', 'surplus_char_handling' = 'TRUNCATE');

-- Register partitions as the worker writes them (one per arrival day and output): Spectrum reads only registered
-- partitions, so a day not registered is silently missing from every query (and customer_current_spectrum then
-- shows an older row of a customer active that day). A partition may be added before its folder exists: run
-- these for tomorrow's day from a daily scheduled query, or let an AWS Glue crawler on the same locations maintain
-- them (partition projection is Athena's; Spectrum does not use it). Adding an existing partition with IF NOT
-- EXISTS is a no-op, so the statements are safe to re-run.
ALTER TABLE spectrum_clickstream.events
ADD IF NOT EXISTS PARTITION (arrival_yyyymmdd = 20260301)
LOCATION 's3://${BUCKET}/${PREFIX}/events/arrival_yyyymmdd=20260301/';

ALTER TABLE spectrum_clickstream.customer_aggregates
ADD IF NOT EXISTS PARTITION (arrival_yyyymmdd = 20260301)
LOCATION 's3://${BUCKET}/${PREFIX}/customer_aggregates/arrival_yyyymmdd=20260301/';

ALTER TABLE spectrum_clickstream.errors
ADD IF NOT EXISTS PARTITION (arrival_yyyymmdd = 20260301)
LOCATION 's3://${BUCKET}/${PREFIX}/errors/arrival_yyyymmdd=20260301/';
