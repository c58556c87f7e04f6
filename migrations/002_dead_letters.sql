-- Task messages that could not be applied: a non-transient error after bounded retries, or a
-- message whose worker died every time it ran it. Kept whole so they can be replayed.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    task_id     text        NOT NULL UNIQUE,
    task_name   text        NOT NULL,
    payload     jsonb       NOT NULL,
    error       text        NOT NULL,
    deliveries  integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
