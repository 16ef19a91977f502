-- What operators did with a dead letter: replayed (how often, last by whom and when) or
-- discarded (by whom and when); the row itself is never deleted.
ALTER TABLE dead_letters
    ADD COLUMN replay_count integer     NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at  timestamptz,
    ADD COLUMN replayed_by  text,
    ADD COLUMN discarded_at timestamptz,
    ADD COLUMN discarded_by text;

-- The list API filters on these and pages by id, newest first.
CREATE INDEX dead_letters_original_topic_idx ON dead_letters (original_topic, id);
CREATE INDEX dead_letters_type_idx ON dead_letters (type, id);
CREATE INDEX dead_letters_first_seen_idx ON dead_letters (first_seen);
