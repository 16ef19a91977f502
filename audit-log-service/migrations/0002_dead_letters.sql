-- Every message that reached task-events-dlq, parseable or not, once per message id (the
-- CloudEvent id, or a hash of the body when there is none); a redelivery only bumps
-- last_seen and seen_count.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,
    message_id     text        NOT NULL UNIQUE,
    topic          text        NOT NULL,  -- where it was received: the dead-letter topic
    original_topic text,                  -- the CloudEvent `topic`: where it failed
    raw            text        NOT NULL,  -- the whole message as received
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- delivery metadata (Kafka)
    event_id       text,                  -- these four when the event could be read
    type           text,
    task_id        text,
    user_id        text,
    reason         text,                  -- why it could not be read; daprd sends none
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    seen_count     integer     NOT NULL DEFAULT 1,
    status         text        NOT NULL DEFAULT 'new'
                               CHECK (status IN ('new', 'replayed', 'discarded'))
);

CREATE INDEX dead_letters_event_id_idx ON dead_letters (event_id);
CREATE INDEX dead_letters_status_idx ON dead_letters (status, id);
