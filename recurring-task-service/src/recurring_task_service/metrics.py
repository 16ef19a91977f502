"""Every Prometheus metric of recurring-task-service (the shared ones live in
taskevents.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

OCCURRENCES = Counter(
    "taskevents_recurring_occurrences_total",
    "Due occurrences handled: queued (into the outbox), skipped (beyond the grace period), "
    "coalesced (folded into one event).",
    ["result"],
)
RELAYED = Counter(
    "taskevents_recurring_outbox_relayed_total",
    "Outbox events relayed to the sidecar, by result: published, failed (retried later), "
    "parked (given up on; GET /outbox/parked says why).",
    ["result"],
)
TRIGGER_LATENESS_SECONDS = Histogram(
    "taskevents_recurring_trigger_lateness_seconds",
    "Time from an occurrence being due to its event being published.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
BROKEN_SCHEDULES = Counter(
    "taskevents_recurring_schedules_broken_total",
    "Schedules found unreadable when due (a time zone that left the tz database) and "
    "marked broken: they no longer fire until edited.",
)
