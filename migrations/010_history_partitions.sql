-- The history, partitioned by day (UTC) of created_at, so retention drops a day at a time
-- (workers/lifecycle/housekeeping.py) instead of deleting rows one by one, and every index, vacuum and
-- backup works on days, not on one table of billions of rows.
--
-- A unique index on a partitioned table must hold the partition key, so the history can no
-- longer be the dedupe. The dedupe moves to the message row: `seen` holds every status already
-- recorded for the message. APPLY_EVENT (workers/core/store.py) reads and extends it while the
-- message row is locked (LOCK_MESSAGE, held to commit), so it is exact with many workers at
-- once, for as long as the message row is kept (MESSAGE_RETENTION_DAYS, never shorter than
-- the history's).
ALTER TABLE messages ADD COLUMN seen text[] NOT NULL DEFAULT '{}';
UPDATE messages m SET seen = e.statuses
FROM (
    SELECT provider, message_id, array_agg(status ORDER BY id) AS statuses
    FROM status_events GROUP BY provider, message_id
) AS e
WHERE m.provider = e.provider AND m.message_id = e.message_id;

ALTER TABLE status_events RENAME TO status_events_unpartitioned;
ALTER SEQUENCE status_events_id_seq OWNED BY NONE;
DROP INDEX status_events_created_brin, status_events_failed;

CREATE TABLE status_events (
    id             bigint      NOT NULL DEFAULT nextval('status_events_id_seq'),
    provider       text        NOT NULL,
    message_id     text        NOT NULL,
    status         text        NOT NULL CONSTRAINT status_events_status_check
                   CHECK (status IN ('sent', 'received', 'read', 'played', 'failed', 'read_by_me',
                                     'pending')),
    raw_status     text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    applied        boolean     NOT NULL,
    failure_reason text,
    request_id     text,
    created_at     timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE status_events_id_seq OWNED BY status_events.id;
-- A message's history (GET /messages/...), read from the day its message was created on.
CREATE INDEX status_events_message ON status_events (provider, message_id);
-- The status page (migrations/004_status_page.sql), now per day.
CREATE INDEX status_events_created_brin ON status_events USING brin (created_at);
CREATE INDEX status_events_failed ON status_events (created_at DESC)
    WHERE status = 'failed' AND applied;

-- The partition of one day, created empty and attached: ATTACH takes only a SHARE UPDATE
-- EXCLUSIVE lock on status_events, which inserting workers do not wait for (CREATE TABLE
-- ... PARTITION OF would take an ACCESS EXCLUSIVE one). Returns false if it exists already.
-- Called by this migration and by the workers' housekeeping, days ahead.
CREATE FUNCTION ticks_history_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'status_events_' || to_char(day, 'YYYYMMDD');
    -- Both bounds are midnights UTC, whatever the session's time zone (a day there can have
    -- 23 or 25 hours: partitions would leave a gap or overlap at its daylight-saving change).
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ticks_history_partition'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I (LIKE status_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('ALTER TABLE status_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, low, high);
    RETURN true;
END
$$;

-- A partition for every day holding history, and for the days around today.
SELECT ticks_history_partition(day::date)
FROM generate_series(
    LEAST(
        (SELECT min(created_at) AT TIME ZONE 'UTC' FROM status_events_unpartitioned),
        now() AT TIME ZONE 'UTC' - interval '3 days'
    )::date,
    (now() AT TIME ZONE 'UTC' + interval '7 days')::date,
    interval '1 day'
) AS day;

INSERT INTO status_events (id, provider, message_id, status, raw_status, occurred_at,
                           received_at, applied, failure_reason, request_id, created_at)
SELECT id, provider, message_id, status, raw_status, occurred_at, received_at, applied,
       failure_reason, request_id, created_at
FROM status_events_unpartitioned;
DROP TABLE status_events_unpartitioned;

-- Erasures by phone number (`flask --app app erase`, POST /erasures): that one was asked
-- for, when it was done, and how many rows it removed or anonymised per table. Never the
-- number (a requested one travels in its task message only).
CREATE TABLE erasures (
    id           bigserial   PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now(),
    erased_at    timestamptz,            -- NULL: requested, not done yet
    rows         jsonb
);

-- The last change retention removed from the feed (workers/lifecycle/housekeeping.py): GET /changes
-- answers 410 to a cursor before it, whose reader would otherwise miss changes unawares.
CREATE TABLE feed_horizon (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    txid xid8    NOT NULL,
    id   bigint  NOT NULL
);

-- An erasure (workers/lifecycle/erasure.py) may rewrite a group message's id that holds the erased
-- number; its receipts follow it.
ALTER TABLE receipts DROP CONSTRAINT receipts_provider_message_id_fkey;
ALTER TABLE receipts ADD CONSTRAINT receipts_provider_message_id_fkey
    FOREIGN KEY (provider, message_id) REFERENCES messages (provider, message_id)
    ON UPDATE CASCADE;
