-- Delivery insights (GET /insights): the funnel of each instance's messages by the minute
-- they were sent, kept as statuses are applied (workers/core/insights.py). One row per
-- (provider, instance, minute of sending, metric) with a count: sent, delivered, read,
-- played, failed, at_sent (neither delivered nor failed), the time to deliver and to read in
-- geometric bins (deliver:<bin>, read:<bin>) and failures by class and reason
-- (failure:<class>:<reason>). A worker adds what a batch changed (a message counted once, in
-- the minute of its cohort; a late sent moves it), so the figures never need a scan of the
-- messages. instance_id '' is a message whose provider named no instance.
CREATE TABLE insight_counts (
    provider     text        NOT NULL,
    instance_id  text        NOT NULL,
    minute       timestamptz NOT NULL,
    metric       text        NOT NULL,
    count        bigint      NOT NULL,
    PRIMARY KEY (provider, instance_id, minute, metric)
);
CREATE INDEX insight_counts_minute ON insight_counts (minute);

-- Messages stored before this migration were never counted: their changes are left out (a
-- delivered would otherwise be taken from a sent never added).
CREATE TABLE insights_start (
    since  timestamptz NOT NULL
);
INSERT INTO insights_start VALUES (now());

-- A failure's class and reason (schemas/failures.py: the provider's code, never a number).
ALTER TABLE messages ADD COLUMN failure_key text;

-- A duration's bin: 0 below 0.5 s, then each a quarter wider (workers/core/insights.py);
-- null for no duration (no bin is counted).
CREATE FUNCTION ticks_time_bin(elapsed interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN elapsed IS NULL THEN NULL
        WHEN extract(epoch FROM elapsed) < 0.5 THEN 0
        ELSE least(90, floor(ln(extract(epoch FROM elapsed) / 0.5) / ln(1.25))::integer + 1)
    END
$$;

-- The minute a message belongs to: when it was sent, else the first time known of it.
CREATE FUNCTION ticks_cohort_minute(m messages) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT date_trunc('minute', coalesce(m.sent_at,
                                         least(m.received_at, m.read_at, m.played_at, m.failed_at),
                                         m.created_at))
$$;

-- What one message counts for (workers/core/insights.py defines each). One expression, no
-- FROM, so the planner inlines it (and ticks_time_bin) into the statements that call it.
CREATE FUNCTION ticks_insight_metrics(m messages) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT array_remove(ARRAY[
        'sent',
        CASE WHEN least(m.received_at, m.read_at, m.played_at) IS NOT NULL THEN 'delivered' END,
        'deliver:' || ticks_time_bin(least(m.received_at, m.read_at, m.played_at) - m.sent_at),
        CASE WHEN least(m.read_at, m.played_at) IS NOT NULL THEN 'read' END,
        'read:' || ticks_time_bin(least(m.read_at, m.played_at) - m.sent_at),
        CASE WHEN m.played_at IS NOT NULL THEN 'played' END,
        CASE WHEN m.status = 'failed' THEN 'failed' END,
        CASE WHEN m.status = 'failed'
             THEN 'failure:' || coalesce(m.failure_key, 'unknown:unknown') END,
        CASE WHEN m.status <> 'failed' AND least(m.received_at, m.read_at, m.played_at) IS NULL
             THEN 'at_sent' END
    ], NULL)
$$;
