-- Outbound webhooks (workers/outbound/deliveries.py). A subscription reads the change feed from its own
-- cursor (the same commit-order rule as GET /changes) and turns what it wants into deliveries:
-- one row per POST, its body fixed when it is made, so every retry sends the same bytes with
-- the same webhook-id. A subscription's deliveries are split into lanes by message; a
-- lane is sent strictly in order, one POST at a time, so one message's changes arrive in order.
CREATE TABLE subscriptions (
    id              text        PRIMARY KEY,
    url             text        NOT NULL,
    providers       text[],                 -- NULL: every provider
    statuses        text[],                 -- NULL: every status
    secret          text        NOT NULL,   -- whsec_<base64>: signs every POST
    previous_secret text,                   -- after a rotation, also signs until it expires
    previous_secret_expires_at timestamptz,
    batch_size      integer     NOT NULL DEFAULT 1 CHECK (batch_size BETWEEN 1 AND 1000),
    cursor_txid     xid8        NOT NULL,   -- the feed read up to here (GET /changes' cursor)
    cursor_id       bigint      NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,  -- failed attempts in a row
    paused_until    timestamptz,            -- the circuit is open until then (then one probe)
    last_success_at timestamptz,
    last_failure_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    id              bigserial   PRIMARY KEY,
    subscription_id text        NOT NULL REFERENCES subscriptions ON DELETE CASCADE,
    lane            smallint    NOT NULL,
    webhook_id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    body            text        NOT NULL,   -- the JSON POSTed: a change, or an array of them
    change_count    integer     NOT NULL,
    first_change_at timestamptz NOT NULL,   -- its oldest change's commit: latency from there
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,   -- retried until then, then dead-lettered
    leased_until    timestamptz,            -- a worker is sending it (until then)
    lease_token     uuid,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz
);
-- The head of each lane, and the backlog per subscription.
CREATE INDEX deliveries_pending ON deliveries (subscription_id, lane, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
-- Dead letters, for the CLI and the status page.
CREATE INDEX deliveries_dead ON deliveries (subscription_id, id) WHERE dead_at IS NOT NULL;
