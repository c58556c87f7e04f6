-- What a message's chat id names: a person by phone (user), a person behind WhatsApp's
-- anonymised id (lid), a group, or a broadcast (status@broadcast). phone holds a number only
-- for a user; before this, digits were taken from lid, group and broadcast ids too.
ALTER TABLE messages
    ADD COLUMN chat_kind text CHECK (chat_kind IN ('user', 'lid', 'group', 'broadcast'));

-- Rows stored before this have no chat_kind, and a number taken from their @lid, group or
-- broadcast id in phone: the read API classifies their chat id when it reads them and shows
-- no phone for those (workers/core/store.py). No backfill here: an UPDATE of every message would
-- hold the table's lock, and the workers, for the whole scan.

-- Per-participant receipts in group chats: one row per (message, participant, status), the
-- first seen kept (a repeat inserts nothing). The message's own history (status_events) still
-- holds one row per status: the first participant's receipt of a status moves the message.
CREATE TABLE receipts (
    provider     text        NOT NULL,
    message_id   text        NOT NULL,
    participant  text        NOT NULL,
    status       text        NOT NULL
                 CHECK (status IN ('sent', 'received', 'read', 'played', 'failed')),
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, message_id, participant, status),
    FOREIGN KEY (provider, message_id) REFERENCES messages (provider, message_id)
);
