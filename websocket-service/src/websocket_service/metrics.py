"""Prometheus metrics of the live stream (the delivery metrics are the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("taskevents_websocket_connections", "Open client connections.")
FRAMES_SENT = Counter("taskevents_websocket_frames_sent_total", "Frames sent to clients.")
SLOW_CLIENTS_CLOSED = Counter(
    "taskevents_websocket_slow_clients_closed_total",
    "Clients closed with 1013 because they fell too far behind.",
)
RESUMES = Counter("taskevents_websocket_resumes_total", "Resumes by their outcome.", ["status"])
