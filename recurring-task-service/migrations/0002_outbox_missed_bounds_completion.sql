-- Issue 6: bounds (start, end, maximum count), pause, coalescing, "N days after
-- completion", the outbox, the record of missed occurrences, and task tombstones.
ALTER TABLE recurring_schedules
    ADD COLUMN after_completion_seconds double precision
        CHECK (after_completion_seconds > 0),
    ADD COLUMN starts_at timestamptz,
    ADD COLUMN ends_at timestamptz,
    ADD COLUMN max_count integer CHECK (max_count > 0),
    ADD COLUMN coalesce_missed boolean NOT NULL DEFAULT false,
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    -- The newest task.completed applied: a redelivered or older one schedules nothing.
    ADD COLUMN last_completed_at timestamptz,
    -- NULL: waiting for a completion, or over (active false).
    ALTER COLUMN next_fire_at DROP NOT NULL,
    DROP CONSTRAINT recurring_schedules_one_rule,
    ADD CONSTRAINT recurring_schedules_one_rule
        CHECK (num_nonnulls(cron, interval_seconds, after_completion_seconds) = 1);

DROP INDEX recurring_schedules_due_idx;
CREATE INDEX recurring_schedules_due_idx ON recurring_schedules (next_fire_at)
    WHERE active AND NOT paused;

-- Events claimed but not yet published. The claim writes a row in the transaction that
-- advances the schedule; the relay publishes it and deletes it. A crash in between leaves
-- the row for any replica to publish (under the same event id).
CREATE TABLE recurring_outbox (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL,
    schedule_id uuid NOT NULL,
    task_id     text NOT NULL,
    event       json NOT NULL,  -- the exact bytes to publish
    due_at      timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Occurrences that were not published on their own: missed beyond the grace period, or
-- folded into one coalesced event.
CREATE TABLE recurring_missed_occurrences (
    id               bigserial PRIMARY KEY,
    schedule_id      uuid NOT NULL,
    task_id          text NOT NULL,
    reason           text NOT NULL CHECK (reason IN ('beyond_grace', 'coalesced')),
    first_occurrence timestamptz NOT NULL,
    last_occurrence  timestamptz,   -- NULL: too long a run to count
    occurrences      integer,       -- NULL: too long a run to count
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recurring_missed_occurrences_schedule_idx
    ON recurring_missed_occurrences (schedule_id, first_occurrence);

-- The newest task event that set or removed a task's schedule, so a replayed older event
-- neither recreates a deleted schedule nor undoes a newer change.
CREATE TABLE recurring_task_versions (
    task_id       text PRIMARY KEY,
    last_event_at timestamptz NOT NULL,
    deleted       boolean NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
