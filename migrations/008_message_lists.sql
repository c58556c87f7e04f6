-- GET /messages lists messages oldest first by (created_at, provider, message_id), a key that
-- never changes once a row exists, so pages are stable while workers write. Each filter has an
-- index in that order; none of these columns is changed by a status update (provider,
-- message_id and created_at never change, phone and instance_id only from unknown to known), so
-- status updates stay HOT. status itself is not indexed on messages for that reason: a status
-- filter is applied along one of these indexes (see docs/operations.md). Built in the
-- migration's transaction: workers wait while they build, the endpoint keeps accepting.
CREATE INDEX messages_created ON messages (created_at, provider, message_id);
CREATE INDEX messages_provider_created ON messages (provider, created_at, message_id);
CREATE INDEX messages_instance_created ON messages (instance_id, created_at, provider, message_id)
    WHERE instance_id IS NOT NULL;
CREATE INDEX messages_phone_created ON messages (phone, created_at, provider, message_id)
    WHERE phone IS NOT NULL;
