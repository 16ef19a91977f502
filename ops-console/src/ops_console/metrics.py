"""The console's own Prometheus series: what it reads from the broker, exported so that
alerts need not ask Kafka themselves."""

from __future__ import annotations

from prometheus_client import Gauge

CONSUMER_LAG = Gauge(
    "taskevents_console_consumer_lag_messages",
    "Messages a consumer group has not committed yet, per topic and partition.",
    ["group", "topic", "partition"],
)
DEAD_LETTER_DEPTH = Gauge(
    "taskevents_console_dead_letter_depth_messages",
    "Messages kept on the dead-letter topic (end offset minus earliest offset).",
    ["topic"],
)
STALLED_GROUPS = Gauge(
    "taskevents_console_stalled_groups",
    "Consumer groups whose lag grew over the last sample while nothing was delivered.",
)
SAMPLE_ERRORS = Gauge(
    "taskevents_console_sample_failing",
    "1 while the last sample of a source failed (kafka, or a sidecar's metrics).",
    ["source"],
)
