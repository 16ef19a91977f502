-- GET /audit/stats counts per type and hour over a time range: with the type in the
-- time-ordered index, that is an index-only scan instead of a heap visit per event. The
-- index keeps serving the keyset order (occurred_at, event_id) of GET /audit/events.
CREATE INDEX audit_events_occurred_at_event_id_type_idx
    ON audit_events (occurred_at, event_id) INCLUDE (type);
DROP INDEX audit_events_occurred_at_event_id_idx;
