"""The audit log's own Prometheus metrics (the deliveries themselves are counted by the
shared subscription edge, taskevents_deliveries_total)."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS = Counter(
    "taskevents_audit_events_total",
    "Task events delivered to the audit log: stored (a new row) or duplicate (already there, "
    "so skipped).",
    ["result"],
)
DEAD_LETTERS = Counter(
    "taskevents_audit_dead_letters_total",
    "Messages from the dead-letter topic: filed (a new dead letter), seen_again (one already "
    "filed, counted on it) or lost (the database refuses it for good).",
    ["result"],
)
DEAD_LETTER_ACTIONS = Counter(
    "taskevents_audit_dead_letter_actions_total",
    "What operators did with dead letters: replayed (published to the topic again) or discarded.",
    ["action"],
)
PARTITIONS_DROPPED = Counter(
    "taskevents_audit_partitions_dropped_total",
    "Monthly partitions of audit_events dropped by the retention.",
)

# Every series from the start, at zero: a rate over a series that appears late misses its
# first increase.
for _result in ("stored", "duplicate"):
    EVENTS.labels(_result)
for _result in ("filed", "seen_again", "lost"):
    DEAD_LETTERS.labels(_result)
for _action in ("replayed", "discarded"):
    DEAD_LETTER_ACTIONS.labels(_action)
