-- The audit log: every event on task-events, stored once, keyed by its event_id.
--
-- Issue #3 partitions this table by month (PARTITION BY RANGE (occurred_at)). Postgres wants
-- the partition column in every unique key of a partitioned table, so that migration must
-- keep event_id unique some other way (for example a narrow audit_event_ids(event_id) table
-- that the insert checks first, in the same transaction).
CREATE TABLE audit_events (
    event_id        text        PRIMARY KEY,
    type            text        NOT NULL,
    task_id         text        NOT NULL,
    user_id         text        NOT NULL,
    occurred_at     timestamptz NOT NULL,  -- the event's own timestamp
    received_at     timestamptz NOT NULL DEFAULT now(),
    payload         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source          text,                  -- the CloudEvent source: the publisher's app-id
    trace_id        text,
    kafka_partition integer,               -- when daprd passes them (__partition, __offset)
    kafka_offset    bigint,
    schema_version  integer     NOT NULL DEFAULT 1
);

CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
CREATE INDEX audit_events_task_occurred_at_idx ON audit_events (task_id, occurred_at);
CREATE INDEX audit_events_user_occurred_at_idx ON audit_events (user_id, occurred_at);
CREATE INDEX audit_events_type_occurred_at_idx ON audit_events (type, occurred_at);
