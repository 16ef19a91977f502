"""Prometheus metrics shared by every service."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

DELIVERIES = Counter(
    "taskevents_deliveries_total",
    "Messages daprd delivered to a subscription route, by the status we answered.",
    ["route", "type", "status"],
)
DELIVERY_SECONDS = Histogram(
    "taskevents_delivery_seconds",
    "Time spent handling one delivered message.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REPLAYS_FOR_OTHER_APPS = Counter(
    "taskevents_replays_for_other_apps_total",
    "Replayed dead letters acknowledged without handling: the replay is for another app "
    "(the one that gave up on the message).",
    ["route", "app"],
)
PUBLISHED = Counter(
    "taskevents_published_total", "Events published through the sidecar.", ["topic", "type"]
)


def render_latest() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
