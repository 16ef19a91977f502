-- Issue 13. The `traceparent` of what last set a schedule (the task event that made or
-- changed it, the API request), copied into each outbox row its claim writes (or the manual
-- trigger's request): the relay's publish of a triggered event links to that cause, so a
-- recurring trigger can be followed back to the trace that scheduled it. NULL: no cause
-- known (rows written before this migration, or no trace context at the time).
ALTER TABLE recurring_schedules ADD COLUMN traceparent text;
ALTER TABLE recurring_outbox ADD COLUMN traceparent text;
