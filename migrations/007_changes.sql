-- The change feed: one row per event that took effect, written in the transaction that applied
-- it (a transactional outbox). GET /changes reads it in commit order: txid is the writing
-- transaction's id, and a reader takes only rows of transactions older than every one still
-- running (pg_snapshot_xmin), so a transaction that commits late never slips behind a cursor.
CREATE TABLE changes (
    id              bigserial   PRIMARY KEY,
    txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    provider        text        NOT NULL,
    message_id      text        NOT NULL,
    status          text        NOT NULL,
    previous_status text,
    participant     text,
    occurred_at     timestamptz NOT NULL,
    failure_reason  text,
    chat_id         text,
    instance_id     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_feed ON changes (txid, id);

-- A group member's furthest status, whatever order their receipts came in: the furthest of
-- sent, received, read, played, or failed when nothing past sent was reported. Mirrors
-- schemas/statuses.py (furthest); a test proves they agree.
CREATE FUNCTION ticks_furthest(statuses text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN best > 1 THEN (ARRAY['sent', 'received', 'read', 'played'])[best]
        WHEN 'failed' = ANY (statuses) THEN 'failed'
        ELSE (ARRAY['sent', 'received', 'read', 'played'])[best]
    END
    FROM (
        SELECT max(array_position(ARRAY['sent', 'received', 'read', 'played'], s)) AS best
        FROM unnest(statuses) AS s
    ) AS reached
$$;
