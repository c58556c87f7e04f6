-- A dead letter can be discarded, as a quarantined body can (migration 003): judged not worth
-- a replay, it leaves the pending list, and the status page's red, at once instead of after
-- DEAD_LETTER_RETENTION_DAYS. The row itself is kept (then for the resolved retention).
ALTER TABLE dead_letters ADD COLUMN discarded_at timestamptz;
-- Pending now means neither replayed nor discarded (counted on every status page view).
DROP INDEX dead_letters_pending;
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at IS NULL AND discarded_at IS NULL;
