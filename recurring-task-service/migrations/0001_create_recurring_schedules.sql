-- Schedules, the source of truth for what fires when. APScheduler only wakes the service up.
CREATE TABLE recurring_schedules (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- One schedule per task: task events set "the" schedule of their task.
    task_id          text NOT NULL CONSTRAINT recurring_schedules_task_id_key UNIQUE,
    user_id          text NOT NULL,
    cron             text,
    interval_seconds integer CHECK (interval_seconds > 0),
    timezone         text NOT NULL DEFAULT 'UTC',
    -- Copied into the payload of every task.recurring.triggered event.
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    next_fire_at     timestamptz NOT NULL,
    last_fired_at    timestamptz,
    fire_count       integer NOT NULL DEFAULT 0,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recurring_schedules_one_rule CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);

-- The claim query: active schedules by due time.
CREATE INDEX recurring_schedules_due_idx ON recurring_schedules (next_fire_at) WHERE active;

CREATE INDEX recurring_schedules_user_idx ON recurring_schedules (user_id, created_at, id);
