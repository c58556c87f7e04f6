-- GET /messages lists messages oldest first by (created_at, provider, message_id), a key that
-- never changes once a row exists, so pages are stable while workers write; this index reads
-- them in that order, from `since` on. The filters (provider, status, instance_id, phone) are
-- applied along it: an index per filter measured at about half the worker's drain rate in
-- `make bench` (every new message and every status update that cannot stay on its page writes
-- each index), so none is kept; docs/operations.md says what that means for rare filters.
-- Built in the migration's transaction: workers wait while it builds, the endpoint keeps
-- accepting.
CREATE INDEX messages_created ON messages (created_at, provider, message_id);
