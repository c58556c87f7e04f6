-- pending: a provider has the message but has not sent it yet (Evolution PENDING, WAHA ack 0,
-- Twilio queued/sending/accepted/scheduled). Kept in the history, never a message's status.
ALTER TABLE status_events DROP CONSTRAINT status_events_status_check;
ALTER TABLE status_events ADD CONSTRAINT status_events_status_check
    CHECK (status IN ('sent', 'received', 'read', 'played', 'failed', 'read_by_me', 'pending'))
    NOT VALID;  -- every row already holds one of these: no table scan under the lock

-- The transition rule, mirrored from schemas/statuses.py (next_status); the test
-- tests/test_store.py::test_sql_rule_agrees_with_python proves they agree on every pair.
CREATE OR REPLACE FUNCTION ticks_next_status(current_status text, incoming text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN incoming IN ('read_by_me', 'pending') THEN current_status
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
