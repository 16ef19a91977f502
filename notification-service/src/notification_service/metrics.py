"""The service's own Prometheus metrics (served on /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter

NOTIFICATIONS = Counter(
    "taskevents_notifications_total",
    "Notifications by channel and what became of them (sent, failed, rejected, deferred, "
    "digest_pending, cancelled, skipped).",
    ["channel", "status"],
)
