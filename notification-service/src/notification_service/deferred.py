"""The background task that sends what was deferred (quiet hours), what was kept while its
channel was down (the relay of retries) and the digests of what went over the rate limit,
when their time comes. The due items live in the ledger, so they
survive a restart; each is leased while it is worked on, so replicas share the work and an
item whose worker died is taken again after the lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from notification_service.handlers import Policy, Ports, deliver_due
from notification_service.ports import Channel, DueItem, LedgerUnavailableError
from taskevents.logging import about_event, get_logger
from taskevents.status import DaprStatus
from taskevents.tracing import Span, event_attributes, mark_outcome, span

log = get_logger(__name__)

PRUNE_EVERY_SECONDS = 3600.0


@contextmanager
def _handling(item: DueItem) -> Iterator[Span]:
    """One due item, outside any delivery: a span of its own (its SMTP send below it) and
    every log line written meanwhile naming its event, task and the span's trace."""
    notification = item.notification
    with (
        about_event(notification.event_id, notification.task_id),
        span(
            f"deliver deferred {item.kind.value}",
            attributes={
                **event_attributes(
                    notification.event_id, notification.event_type, notification.task_id
                ),
                "taskevents.channel": notification.channel.value,
            },
        ) as current,
    ):
        yield current


class DeferredDelivery:
    def __init__(
        self,
        *,
        ports: Ports,
        policy: Policy,
        poll_seconds: float,
        batch: int,
        lease_seconds: float,
        retention: timedelta | None,
    ) -> None:
        self._ports = ports
        self._policy = policy
        self._ledger = ports.ledger
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._lease_seconds = lease_seconds
        self._retention = retention
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deferred-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many items were handled."""
        items = await self._ledger.take_due(limit=self._batch, lease_seconds=self._lease_seconds)
        # A channel that just failed for one kept notification is not tried again for the
        # others of this round: with an SMTP server that times out, a batch would otherwise
        # take a timeout per item and outlive its lease.
        down: dict[Channel, str] = {}
        for item in items:
            channel = item.notification.channel
            if item.give_up_at is not None and channel in down:
                later = self._ports.clock() + timedelta(seconds=self._policy.retry_first_seconds)
                await self._ledger.reschedule(
                    item.notification, due_at=min(later, item.give_up_at),
                    reason=f"{down[channel]} (not tried: it failed for another one just now)",
                )  # fmt: skip
                continue
            with _handling(item) as current:
                try:
                    outcome = await deliver_due(item, ports=self._ports, policy=self._policy)
                except Exception:
                    # The lease runs out and the item is taken again.
                    log.exception("deferred delivery failed")
                    continue
                mark_outcome(current, outcome.status.value, outcome.reason)
                log.info(
                    "deferred item handled",
                    channel=item.notification.channel.value,
                    kind=item.kind.value,
                    status=outcome.status.value,
                    reason=outcome.reason,
                )
            if outcome.status is DaprStatus.RETRY and item.give_up_at is not None:
                down[channel] = outcome.reason or "failed"
        return len(items)

    async def _run(self) -> None:
        while True:
            try:
                handled = await self.run_once()
                await self._prune()
            except LedgerUnavailableError as error:
                log.warning("ledger unavailable; deferred delivery waits", error=str(error))
                handled = 0
            except Exception:
                log.exception("deferred delivery round failed")
                handled = 0
            if handled < self._batch:  # more may be due right away otherwise
                await asyncio.sleep(self._poll_seconds)

    async def _prune(self) -> None:
        if self._retention is None or time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = time.monotonic()
        removed = await self._ledger.prune(older_than=self._retention)
        if removed:
            log.info("old ledger rows removed", rows=removed)
