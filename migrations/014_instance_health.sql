-- Each instance's health (workers/core/numbers.py): the worse of what its provider reported
-- (instances) and what its traffic shows (insight_counts): ok, degraded, silent,
-- disconnected, restricted, banned; since when, why, and the figures behind it.
CREATE TABLE instance_health (
    provider     text        NOT NULL,
    instance_id  text        NOT NULL,
    health       text        NOT NULL
                 CHECK (health IN ('ok', 'degraded', 'silent', 'disconnected', 'restricted',
                                   'banned')),
    since        timestamptz NOT NULL,
    reason       text,
    figures      jsonb,
    checked_at   timestamptz NOT NULL,
    PRIMARY KEY (provider, instance_id)
);

-- The change feed carries each change of an instance's health too (GET /changes, outbound
-- webhooks' instance.health): kind 'instance', status the new health, previous_status the
-- one before, failure_reason why, figures what it was judged on; message_id ''.
ALTER TABLE changes
    ADD COLUMN kind text NOT NULL DEFAULT 'message' CHECK (kind IN ('message', 'instance')),
    ADD COLUMN figures jsonb;
