-- Redshift ML instead of BG/NBD: for those who would rather train a model in the warehouse than run
-- `clickstream score`. CREATE MODEL hands the training query to SageMaker Autopilot (regression, MSE) and creates a
-- SQL function that predicts a customer's revenue in the next 90 days from the features of customer_aggregates.
--
-- Training rows come from the history itself (03_copy_tables.sql): each buyer's row as it stood 90 days before the
-- newest as_of (features), and the revenue they added since (label). Scoring then applies the function to the
-- current rows, i.e. predicts the next 90 days. Unlike BG/NBD it learns from any feature (engagement, sessions)
-- but needs a labelled past window and gives no probability alive or parameters to read. The window comes from
-- the history's own rows: a row's as_of is its shard's newest event time at that flush, so it needs flushes spread
-- over 90 days of events (live operation gives one a minute; a backfill or the demo, flushing large batches, may
-- leave no row before the cutoff and so no training row).
-- Placeholders: ${REDSHIFT_IAM_ROLE_ARN} (needs the Redshift ML permissions: SageMaker and the bucket below),
-- ${ML_BUCKET}: a bucket for Autopilot's working data and model artifacts, not the worker's: the bucket policies of
-- deploy/ refuse there every PUT not encrypted with the worker's key (SSE-KMS) and every multipart upload, which
-- Redshift ML's unload and SageMaker need, so CREATE MODEL would fail with AccessDenied.

CREATE OR REPLACE VIEW clickstream.clv_training AS
WITH cutoff AS (
    -- the newest as_of, not past the query's clock unless a purchase is (04_current_customers_view.sql says why)
    SELECT DATEADD(day, -90, LEAST(MAX(as_of), GREATEST(GETDATE(), MAX(last_purchase_at)))) AS at
    FROM clickstream.customer_aggregates_history
),
at_cutoff AS (
    SELECT
        h.*,
        ROW_NUMBER() OVER (PARTITION BY h.customer_id ORDER BY h.version DESC, h.as_of DESC) AS row_rank
    FROM clickstream.customer_aggregates_history AS h
    CROSS JOIN cutoff
    WHERE h.as_of <= cutoff.at
)
SELECT
    b.customer_id,
    b.frequency,
    b.recency,
    DATEDIFF(day, b.first_purchase_at::DATE, cutoff.at::DATE) AS t,
    DATEDIFF(day, b.last_purchase_at::DATE, cutoff.at::DATE) AS days_since_last_purchase,
    b.monetary_value,
    b.revenue,
    b.sessions,
    b.active_days,
    b.engagement_score,
    c.revenue - b.revenue AS future_revenue
FROM at_cutoff AS b
INNER JOIN clickstream.customer_current AS c ON c.customer_id = b.customer_id
CROSS JOIN cutoff
WHERE b.row_rank = 1 AND b.frequency IS NOT NULL;

CREATE MODEL clickstream.customer_value_90d
FROM (
    SELECT frequency, recency, t, days_since_last_purchase, monetary_value, revenue, sessions, active_days,
        engagement_score, future_revenue
    FROM clickstream.clv_training
)
TARGET future_revenue
FUNCTION predict_revenue_90d
IAM_ROLE '${REDSHIFT_IAM_ROLE_ARN}'
PROBLEM_TYPE REGRESSION
OBJECTIVE 'MSE'
SETTINGS (S3_BUCKET '${ML_BUCKET}', S3_GARBAGE_COLLECT ON, MAX_RUNTIME 5400);

-- After SHOW MODEL clickstream.customer_value_90d says READY: predicted revenue of the next 90 days per buyer.
CREATE OR REPLACE VIEW clickstream.customer_value_ml AS
WITH observation AS (
    SELECT LEAST(MAX(as_of), GREATEST(GETDATE(), MAX(last_purchase_at))) AS at
    FROM clickstream.customer_current
)
SELECT
    c.customer_id,
    predict_revenue_90d(
        c.frequency,
        c.recency,
        DATEDIFF(day, c.first_purchase_at::DATE, o.at::DATE),
        DATEDIFF(day, c.last_purchase_at::DATE, o.at::DATE),
        c.monetary_value,
        c.revenue,
        c.sessions,
        c.active_days,
        c.engagement_score
    ) AS predicted_revenue_90d
FROM clickstream.customer_current AS c
CROSS JOIN observation AS o
WHERE c.frequency IS NOT NULL;
