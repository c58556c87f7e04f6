-- One row per message: the furthest status it reached and when each status was first seen.
CREATE TABLE messages (
    provider       text        NOT NULL,
    message_id     text        NOT NULL,
    status         text        CHECK (status IN ('sent', 'received', 'read', 'played', 'failed')),
    phone          text,
    chat_id        text,
    is_group       boolean,
    instance_id    text,
    sent_at        timestamptz,
    received_at    timestamptz,
    read_at        timestamptz,
    played_at      timestamptz,
    failed_at      timestamptz,
    read_by_me_at  timestamptz,
    failure_reason text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, message_id)
);

-- The history: one row per distinct (provider, message_id, status), applied or not.
-- The unique constraint is the dedupe: a repeated event inserts nothing.
CREATE TABLE status_events (
    id             bigserial   PRIMARY KEY,
    provider       text        NOT NULL,
    message_id     text        NOT NULL,
    status         text        NOT NULL
                   CHECK (status IN ('sent', 'received', 'read', 'played', 'failed', 'read_by_me')),
    raw_status     text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    applied        boolean     NOT NULL,
    failure_reason text,
    request_id     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT status_events_once UNIQUE (provider, message_id, status),
    FOREIGN KEY (provider, message_id) REFERENCES messages (provider, message_id)
);

-- Authenticated callbacks that did not validate, kept whole so they can be replayed after a fix.
-- request_id is unique so a redelivered quarantine task stores the body once.
CREATE TABLE quarantine (
    id           bigserial   PRIMARY KEY,
    request_id   text        NOT NULL UNIQUE,
    provider     text        NOT NULL,
    reason       text        NOT NULL,
    errors       jsonb       NOT NULL,
    raw_body     text        NOT NULL,
    content_type text,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);

-- The transition rule, mirrored from schemas/statuses.py (next_status); the test
-- tests/test_store.py::test_sql_rule_agrees_with_python proves they agree on every pair.
CREATE FUNCTION ticks_next_status(current_status text, incoming text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN incoming = 'read_by_me' THEN current_status
        WHEN current_status = 'failed' THEN current_status
        WHEN incoming = 'failed' THEN
            CASE WHEN current_status IS NULL OR current_status = 'sent'
                 THEN 'failed' ELSE current_status END
        WHEN current_status IS NULL THEN incoming
        WHEN array_position(ARRAY['sent', 'received', 'read', 'played'], incoming)
           > array_position(ARRAY['sent', 'received', 'read', 'played'], current_status)
            THEN incoming
        ELSE current_status
    END
$$;
