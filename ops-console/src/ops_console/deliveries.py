"""What daprd says it delivered: its Prometheus counters of pub/sub ingress, per topic and
app, by the status the app answered; and the rates between two samples."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# daprd's OpenCensus views, as its Prometheus exporter names them: one count per delivered
# message, and for a bulk subscription one count per event of a batch.
INGRESS_COUNT = "dapr_component_pubsub_ingress_count"
BULK_EVENT_COUNT = "dapr_component_pubsub_ingress_bulk_event_count"
STATUSES = ("success", "retry", "drop")


@dataclass(frozen=True, slots=True, order=True)
class Route:
    app_id: str
    topic: str


@dataclass(slots=True)
class Counts:
    success: float = 0.0
    retry: float = 0.0
    drop: float = 0.0

    @property
    def total(self) -> float:
        return self.success + self.retry + self.drop

    def add(self, status: str, value: float) -> None:
        if status in STATUSES:
            setattr(self, status, getattr(self, status) + value)


@dataclass(frozen=True, slots=True)
class DeliverySample:
    """The counters of some sidecars at one moment (`at`: seconds on a monotonic clock)."""

    at: float
    counts: Mapping[Route, Counts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryRate:
    route: Route
    totals: Counts
    per_second: Counts


def parse_delivery_counts(text: str, *, app_id: str | None = None) -> dict[Route, Counts]:
    """The ingress counters in one daprd's /metrics text, summed per (app, topic). Values of
    a bulk subscription are counted per event. `app_id` names the app when a series lacks
    the label."""
    counts: dict[Route, Counts] = {}
    for family in text_string_to_metric_families(text):
        if _base_name(family.name) not in (INGRESS_COUNT, BULK_EVENT_COUNT):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = sample.labels
            route = Route(labels.get("app_id") or app_id or "?", labels.get("topic", "?"))
            status = labels.get("process_status") or labels.get("status", "")
            counts.setdefault(route, Counts()).add(status.lower(), sample.value)
    return counts


def _base_name(name: str) -> str:
    return name.removesuffix("_total")


def merge(samples: Iterable[Mapping[Route, Counts]]) -> dict[Route, Counts]:
    merged: dict[Route, Counts] = {}
    for counts in samples:
        for route, count in counts.items():
            target = merged.setdefault(route, Counts())
            for status in STATUSES:
                target.add(status, getattr(count, status))
    return merged


def rates(previous: DeliverySample | None, current: DeliverySample) -> list[DeliveryRate]:
    """Per route: the totals now, and per second since the previous sample. A counter that
    went down (the sidecar restarted) counts from zero."""
    elapsed = current.at - previous.at if previous is not None else 0.0
    result = []
    for route in sorted(current.counts):
        now = current.counts[route]
        per_second = Counts()
        if previous is not None and elapsed > 0:
            before = previous.counts.get(route, Counts())
            for status in STATUSES:
                delta = getattr(now, status) - getattr(before, status)
                if delta < 0:
                    delta = getattr(now, status)
                per_second.add(status, delta / elapsed)
        result.append(DeliveryRate(route=route, totals=now, per_second=per_second))
    return result
