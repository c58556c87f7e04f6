-- What each provider reports of its sending numbers' (instances') connections: connected,
-- connecting, disconnected, restricted, banned (schemas/events.py CONNECTION_STATES), from
-- Z-API's connected/disconnected webhooks, Green-API's stateInstanceChanged, WAHA's
-- session.status and Evolution's connection.update. instance_events keeps every report once
-- (a provider's retry is the same report: its own time and words); instances the latest by
-- when it happened, then by when Ticks received it (a report older than the one kept, arriving
-- late, changes nothing).
CREATE TABLE instance_events (
    id           bigserial   PRIMARY KEY,
    provider     text        NOT NULL,
    instance_id  text        NOT NULL,
    state        text        NOT NULL,
    raw_state    text        NOT NULL,
    reason       text,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, instance_id, occurred_at, raw_state)
);
CREATE INDEX instance_events_created ON instance_events (created_at);

CREATE TABLE instances (
    provider        text        NOT NULL,
    instance_id     text        NOT NULL,
    state           text        NOT NULL,
    raw_state       text        NOT NULL,
    reason          text,
    -- When the report happened, by the provider's clock; a time more than a day past its
    -- receipt (a nonsense time: Z-API's docs example is in the year 2798) counts as its
    -- receipt, so it cannot pin a state for ever.
    reported_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    -- When the instance entered this state (a repeat of the same state keeps it).
    since           timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, instance_id)
);

-- When each instance last had a status applied (Ticks' time, to the minute: a worker
-- writes it at most once a minute per instance, after its batch commits, so busy instances
-- never serialise workers on one row).
CREATE TABLE instance_traffic (
    provider        text        NOT NULL,
    instance_id     text        NOT NULL,
    last_status_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, instance_id)
);
