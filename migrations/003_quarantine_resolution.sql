-- What became of a quarantined body: replayed (re-validated and enqueued after a fix) or
-- discarded (judged not worth keeping in the pending list). The row itself is kept.
ALTER TABLE quarantine
    ADD COLUMN replayed_at  timestamptz,
    ADD COLUMN discarded_at timestamptz;
CREATE INDEX quarantine_pending ON quarantine (id) WHERE replayed_at IS NULL AND discarded_at IS NULL;
