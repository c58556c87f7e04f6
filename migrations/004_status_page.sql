-- What the status page at / reads, without scanning whole tables. Built in the migration's
-- transaction, so writes to each table wait while its index builds (0.56 s for 3 million
-- events in `make bench`); only workers write, the endpoint keeps accepting.
-- status_events is appended in time order: a BRIN index on created_at is a few pages and
-- costs the hot insert path next to nothing, yet finds the last hour or day of events.
CREATE INDEX status_events_created_brin ON status_events USING brin (created_at);
-- The latest failures, newest first: on the insert-only history, not on messages, whose
-- updates stay HOT (an index on a column they change would cost every status update).
CREATE INDEX status_events_failed ON status_events (created_at DESC)
    WHERE status = 'failed' AND applied;
-- Pending dead letters, counted on every page view.
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at IS NULL;
