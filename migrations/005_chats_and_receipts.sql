-- What a message's chat id names: a person by phone (user), a person behind WhatsApp's
-- anonymised id (lid), a group, or a broadcast (status@broadcast). phone holds a number only
-- for a user; before this, digits were taken from lid, group and broadcast ids too.
ALTER TABLE messages
    ADD COLUMN chat_kind text CHECK (chat_kind IN ('user', 'lid', 'group', 'broadcast'));

-- Those fake numbers, named once here. Only rows whose chat id shows it (an index-less scan of
-- messages, once); other rows keep chat_kind NULL and the API classifies their chat id on read.
UPDATE messages SET
    phone = NULL,
    chat_kind = CASE
        WHEN chat_id LIKE '%@lid' THEN 'lid'
        WHEN chat_id LIKE '%@broadcast' THEN 'broadcast'
        ELSE 'group'
    END
WHERE chat_id LIKE '%@lid' OR chat_id LIKE '%@broadcast' OR chat_id LIKE '%@g.us'
   OR chat_id LIKE '%-group' OR chat_id ~ '^[0-9]{8,}-[0-9]{9,}$' OR is_group;

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
