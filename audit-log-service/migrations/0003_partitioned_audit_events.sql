-- audit_events becomes a table partitioned by month (native range partitioning).
--
-- Partition key: received_at, the time the audit log stored the row. The server sets it, so
-- the partitions needed next are known in advance and a publisher's clock (an event stamped
-- 1970 or 2099) can never ask for a partition that does not exist; retention drops whole
-- months by when they were recorded.
--
-- Exactly once by event_id: Postgres requires every unique key of a partitioned table to
-- contain the partition key, so audit_events itself cannot keep event_id unique. The narrow,
-- unpartitioned audit_event_ids holds one row per event_id instead, and every insert claims
-- the id there and writes the event in the same statement (INSERT … ON CONFLICT DO NOTHING
-- RETURNING feeding the second INSERT): a claimed id and its row commit or roll back
-- together, and two replicas racing on one id wait on the same primary-key entry.
ALTER TABLE audit_events RENAME TO audit_events_unpartitioned;

CREATE TABLE audit_event_ids (
    event_id    text        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()  -- retention forgets ids with their month
);
CREATE INDEX audit_event_ids_received_at_idx ON audit_event_ids (received_at);

CREATE TABLE audit_events (
    event_id        text        NOT NULL,
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
) PARTITION BY RANGE (received_at);

-- One partition per calendar month (UTC), named audit_events_yYYYYmMM.
CREATE FUNCTION audit_events_partition_name(month timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'audit_events_' || to_char(month AT TIME ZONE 'UTC', '"y"YYYY"m"MM')
$$;

-- Make sure the partitions from the month of `first` up to `months_ahead` months after the
-- current one exist; returns how many it created.
CREATE FUNCTION audit_events_ensure_partitions(first timestamptz, months_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month   timestamptz := date_trunc('month', first AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    last    timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                           + make_interval(months => months_ahead);
    created integer := 0;
BEGIN
    WHILE month <= last LOOP
        IF to_regclass(audit_events_partition_name(month)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                audit_events_partition_name(month), month, month + interval '1 month');
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;

-- Retention: drop the partitions that end on or before `cutoff`, and forget their event ids
-- (a redelivery of such an old event would be stored again); returns the dropped tables.
CREATE FUNCTION audit_events_drop_partitions_before(cutoff timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_events'::regclass
    LOOP
        IF part.upper_bound <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
    DELETE FROM audit_event_ids WHERE received_at < cutoff;
END
$$;

SELECT audit_events_ensure_partitions(
    COALESCE((SELECT min(received_at) FROM audit_events_unpartitioned), now()), 3);

INSERT INTO audit_events
SELECT event_id, type, task_id, user_id, occurred_at, received_at, payload, source, trace_id,
       kafka_partition, kafka_offset, schema_version
  FROM audit_events_unpartitioned;
INSERT INTO audit_event_ids (event_id, received_at)
SELECT event_id, received_at FROM audit_events_unpartitioned;
DROP TABLE audit_events_unpartitioned;

-- The query API orders by (occurred_at, event_id) — the keyset of its cursor — after an
-- optional equality filter; each index serves one filter plus the time range and the order.
CREATE INDEX audit_events_occurred_at_event_id_idx ON audit_events (occurred_at, event_id);
CREATE INDEX audit_events_task_id_occurred_at_idx ON audit_events (task_id, occurred_at, event_id);
CREATE INDEX audit_events_user_id_occurred_at_idx ON audit_events (user_id, occurred_at, event_id);
CREATE INDEX audit_events_type_occurred_at_idx ON audit_events (type, occurred_at, event_id);
