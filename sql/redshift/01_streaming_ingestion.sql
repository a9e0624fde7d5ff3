-- Redshift streaming ingestion straight from the Kinesis data stream (no S3 staging): every raw record lands in
-- a materialized view, JSON parsed into SUPER; a plain view navigates SUPER into the typed fields of
-- schemas/clickstream_event.v1.schema.json. This is the *unvalidated* live stream (seconds behind the
-- producers): duplicates, malformed and late records are all still in it. The validated, de-duplicated events
-- are the worker's Parquet output (02_spectrum_external_tables.sql, 03_copy_tables.sql).
--
-- Placeholders, replaced before running (same names as deploy/README.md):
--   ${REDSHIFT_IAM_ROLE_ARN}  a role the cluster / workgroup may assume, with the Kinesis read permissions of
--                             "Getting started with streaming ingestion from Amazon Kinesis Data Streams"
--                             (Redshift Database Developer Guide) on the stream
-- The stream name "clickstream" below is the default of CLICKSTREAM_STREAM_NAME; it is quoted because stream
-- names may contain characters (-, .) that are not valid in unquoted identifiers. Redshift folds even a quoted
-- name to lower case: for a stream name with capitals, SET enable_case_sensitive_identifier TO true first.

CREATE EXTERNAL SCHEMA IF NOT EXISTS kinesis_clickstream
FROM KINESIS
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}';

-- One row per Kinesis record. AUTO REFRESH YES keeps it current; the first refresh starts at TRIM_HORIZON.
-- Records that are not JSON are kept (failed_payload) rather than filtered out, as the worker keeps errors/; a
-- record larger than the view's kinesis_data column is skipped by the refresh instead (SYS_STREAM_SCAN_ERRORS
-- names it; the worker keeps it in errors/). Streaming ingestion sees Kinesis records as they are stored: records
-- aggregated by the Kinesis Producer Library (many events in one) are not unpacked here, as the KCL unpacks them
-- for the worker, and land whole in failed_payload. This view is for producers that do not aggregate (KPL
-- AggregationEnabled=false; `clickstream produce` never does).
CREATE MATERIALIZED VIEW clickstream_raw
AUTO REFRESH YES
AS
SELECT
    approximate_arrival_timestamp,
    partition_key,
    shard_id,
    sequence_number,
    refresh_time,
    CASE WHEN CAN_JSON_PARSE(kinesis_data) THEN JSON_PARSE(kinesis_data) END AS payload,
    CASE WHEN NOT CAN_JSON_PARSE(kinesis_data) THEN kinesis_data END AS failed_payload
FROM kinesis_clickstream."clickstream";

-- Typed fields of the v1 event. SUPER navigation is lax: a missing attribute or a value of the wrong JSON
-- type yields NULL here instead of an error (the worker's validation rejects such records; this view does not).
-- event_time is RFC 3339 with an explicit offset; it is normalised to UTC like every timestamp of the contract.
-- The text-to-time step is a TRY_CAST: one unvalidated record with an impossible date (2026-02-30T...) would
-- otherwise fail every query that reads event_time; such a record has a NULL event_time and its text in
-- event_time_text (the worker rejects it as invalid_value).
-- Dropped first: CREATE OR REPLACE VIEW cannot change a view's columns (event_time_text is newer than the view).
DROP VIEW IF EXISTS clickstream_events_live;
CREATE OR REPLACE VIEW clickstream_events_live AS
SELECT
    r.approximate_arrival_timestamp,
    r.partition_key,
    r.shard_id,
    r.sequence_number,
    r.payload.schema_version::INTEGER AS schema_version,
    r.payload.event_id::VARCHAR(36) AS event_id,
    r.payload.event_type::VARCHAR(16) AS event_type,
    r.payload.customer_id::VARCHAR(64) AS customer_id,
    r.payload.session_id::VARCHAR(64) AS session_id,
    CONVERT_TIMEZONE('UTC', TRY_CAST(NULLIF(TRIM(r.payload.event_time::VARCHAR), '') AS TIMESTAMPTZ)) AS event_time,
    r.payload.event_time::VARCHAR(64) AS event_time_text,
    r.payload.page_url::VARCHAR(8192) AS page_url,
    r.payload.product_id::VARCHAR(256) AS product_id,
    r.payload.search_query::VARCHAR(2048) AS search_query,
    r.payload.quantity::INTEGER AS quantity,
    r.payload.order_id::VARCHAR(256) AS order_id,
    r.payload.revenue::DECIMAL(18, 2) AS revenue,
    r.payload.currency::VARCHAR(3) AS currency
FROM clickstream_raw AS r
WHERE r.payload IS NOT NULL
  AND IS_OBJECT(r.payload);

-- Example: purchases per minute over the last hour, straight from the stream.
-- SELECT DATE_TRUNC('minute', event_time) AS minute, COUNT(*) AS purchases, SUM(revenue) AS revenue
-- FROM clickstream_events_live
-- WHERE event_type = 'purchase' AND approximate_arrival_timestamp > GETDATE() - INTERVAL '1 hour'
-- GROUP BY 1 ORDER BY 1;
