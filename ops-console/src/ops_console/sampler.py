"""Samples, every few seconds, daprd's delivery counters and the consumer lag, keeps the
last two of each (rates and stalls are differences), and exports the lag and the
dead-letter depth as the console's own gauges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ops_console import metrics
from ops_console.deliveries import (
    Counts,
    DeliveryRate,
    DeliverySample,
    Route,
    merge,
    parse_delivery_counts,
    rates,
)
from ops_console.lag import LagSample, Stall, app_of_group, detect_stalls
from ops_console.ports import Broker, ServiceUnavailableError, Sidecars
from ops_console.settings import SidecarTarget
from taskevents.logging import get_logger

log = get_logger(__name__)


@dataclass
class Observations:
    deliveries: list[DeliverySample] = field(default_factory=list)
    lag: list[LagSample] = field(default_factory=list)
    dead_letter_depth: int | None = None
    errors: dict[str, str] = field(default_factory=dict)
    sampled_at: float | None = None  # epoch seconds


class Sampler:
    def __init__(
        self,
        *,
        sidecars: Sidecars,
        broker: Broker,
        targets: Sequence[SidecarTarget],
        groups: Sequence[str] | None,
        dead_letter_topic: str,
        interval_seconds: float,
    ) -> None:
        self._sidecars = sidecars
        self._broker = broker
        self._targets = list(targets)
        self._groups = groups
        self._dead_letter_topic = dead_letter_topic
        self._interval = interval_seconds
        self.observed = Observations()
        self._sampled = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a sampler that dies leaves the console blind
                log.exception("sampling failed; trying again")
            await asyncio.sleep(self._interval)

    async def wait_for_sample(self) -> None:
        await self._sampled.wait()

    async def sample(self) -> None:
        errors: dict[str, str] = {}
        deliveries = await self._deliveries(errors)
        lag: LagSample | None = None
        try:
            lag = await self._broker.lag(self._groups, [t.app_id for t in self._targets])
            self.observed.dead_letter_depth = await self._broker.depth(self._dead_letter_topic)
        except ServiceUnavailableError as error:
            errors["kafka"] = str(error)
        observed = self.observed
        observed.deliveries = [*observed.deliveries[-1:], deliveries]
        if lag is not None:
            observed.lag = [*observed.lag[-1:], lag]
        observed.errors = errors
        observed.sampled_at = time.time()
        self._export(lag)
        self._sampled.set()

    async def _deliveries(self, errors: dict[str, str]) -> DeliverySample:
        async def one(target: SidecarTarget) -> dict[Route, Counts]:
            try:
                text = await self._sidecars.metrics_text(target)
            except ServiceUnavailableError as error:
                errors[target.app_id] = str(error)
                return {}
            return parse_delivery_counts(text, app_id=target.app_id)

        found = await asyncio.gather(*(one(t) for t in self._targets))
        return DeliverySample(at=time.monotonic(), counts=merge(found))

    def rates(self) -> list[DeliveryRate]:
        samples = self.observed.deliveries
        if not samples:
            return []
        return rates(samples[-2] if len(samples) > 1 else None, samples[-1])

    def stalls(self) -> list[Stall]:
        samples = self.observed.lag
        if len(samples) < 2:
            return []
        app_ids = [t.app_id for t in self._targets]
        per_app: dict[tuple[str, str], float] = {}
        for rate in self.rates():
            key = (rate.route.app_id, rate.route.topic)
            per_app[key] = per_app.get(key, 0.0) + rate.per_second.total
        delivered: dict[tuple[str, str], float] = {}
        for item in samples[-1].partitions:
            app = app_of_group(item.key.group, app_ids)
            if app is not None and (app, item.key.topic) in per_app:
                delivered[(item.key.group, item.key.topic)] = per_app[(app, item.key.topic)]
        return detect_stalls(samples[-2], samples[-1], delivered)

    def _export(self, lag: LagSample | None) -> None:
        metrics.SAMPLE_ERRORS.labels("kafka").set(1 if lag is None else 0)
        if lag is not None:
            metrics.CONSUMER_LAG.clear()
            for item in lag.partitions:
                metrics.CONSUMER_LAG.labels(
                    item.key.group, item.key.topic, str(item.key.partition)
                ).set(item.lag)
        if self.observed.dead_letter_depth is not None:
            metrics.DEAD_LETTER_DEPTH.labels(self._dead_letter_topic).set(
                self.observed.dead_letter_depth
            )
        metrics.STALLED_GROUPS.set(len(self.stalls()))
