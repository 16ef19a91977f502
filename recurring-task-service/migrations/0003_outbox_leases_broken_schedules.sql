-- Issue 14. The relay leases outbox rows (a short transaction) and publishes with no
-- transaction open; a row that fails is retried with back-off and, after a bounded number
-- of attempts, parked with its reason (it then blocks nothing). A schedule whose rule can
-- no longer be read (a time zone that left the tz database) is marked broken with the
-- reason instead of failing every claim.
ALTER TABLE recurring_outbox
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_error      text,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN leased_until    timestamptz,
    ADD COLUMN lease_token     uuid,
    ADD COLUMN parked_at       timestamptz,
    ADD COLUMN park_reason     text;

-- The relay's query: waiting rows in order, per task.
CREATE INDEX recurring_outbox_waiting_idx ON recurring_outbox (task_id, id)
    WHERE parked_at IS NULL;
CREATE INDEX recurring_outbox_parked_idx ON recurring_outbox (id)
    WHERE parked_at IS NOT NULL;

ALTER TABLE recurring_schedules
    ADD COLUMN broken_reason text,
    ADD COLUMN broken_at     timestamptz;

DROP INDEX recurring_schedules_due_idx;
CREATE INDEX recurring_schedules_due_idx ON recurring_schedules (next_fire_at)
    WHERE active AND NOT paused AND broken_reason IS NULL;
