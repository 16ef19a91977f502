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
    "Outbox events relayed to the sidecar, by result (published, failed).",
    ["result"],
)
TRIGGER_LATENESS_SECONDS = Histogram(
    "taskevents_recurring_trigger_lateness_seconds",
    "Time from an occurrence being due to its event being published.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
