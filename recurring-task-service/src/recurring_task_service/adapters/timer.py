"""APScheduler as the timer: it says *when* to look for due schedules (every poll interval,
and at the next known fire time); Postgres says *what* is due. Each tick claims what is due
(into the outbox) and then relays the outbox — also what another replica left behind."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from recurring_task_service.firing import (
    DEFAULT_RELAY_POLICY,
    RelayPolicy,
    claim_due_occurrences,
    relay_outbox,
)
from recurring_task_service.metrics import (
    BROKEN_SCHEDULES,
    OCCURRENCES,
    RELAYED,
    TRIGGER_LATENESS_SECONDS,
)
from recurring_task_service.ports import ConnectingPublisher, DueSchedules, Outbox
from taskevents.logging import get_logger
from taskevents.metrics import PUBLISHED
from taskevents.web import ReadinessCheck

log = get_logger(__name__)

POLL_JOB = "poll"
WAKE_UP_JOB = "wake-up"
STOP_WAIT_SECONDS = 10.0


class FiringTimer:
    """Ticks `fire_due_schedules` from an AsyncIOScheduler. One tick runs at a time in a
    process; replicas run side by side, the claim keeps them apart."""

    def __init__(
        self,
        due: DueSchedules,
        outbox: Outbox,
        publisher: ConnectingPublisher,
        *,
        topic: str,
        poll_seconds: float,
        batch_size: int,
        grace: timedelta,
        sidecar_ready: ReadinessCheck,
        relay_policy: RelayPolicy = DEFAULT_RELAY_POLICY,
    ) -> None:
        self._due = due
        self._outbox = outbox
        self._publisher = publisher
        self._topic = topic
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._grace = grace
        self._sidecar_ready = sidecar_ready
        self._relay_policy = relay_policy
        self._sidecar_seen = False
        self._ticking = asyncio.Lock()
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC, event_loop=asyncio.get_running_loop())
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self._poll_seconds,
            id=POLL_JOB,
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        # Let a running tick finish its transaction rather than cut it off.
        try:
            await asyncio.wait_for(self._ticking.acquire(), STOP_WAIT_SECONDS)
        except TimeoutError:
            log.warning("a firing tick was still running at shutdown")
        else:
            self._ticking.release()

    def wake_at(self, when: datetime) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        for job_id in (POLL_JOB, WAKE_UP_JOB):
            job = scheduler.get_job(job_id)
            if job is not None and job.next_run_time is not None and job.next_run_time <= when:
                return
        scheduler.add_job(
            self.tick,
            "date",
            run_date=when,
            id=WAKE_UP_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )

    async def tick(self) -> None:
        if self._ticking.locked():
            return  # the running tick keeps claiming while anything is due
        async with self._ticking:
            try:
                await self._fire()
            except Exception:  # the timer must keep ticking whatever happens in one tick
                log.exception("firing due schedules failed; trying again on the next tick")

    async def _fire(self) -> None:
        if not self._sidecar_seen:
            # Relaying before the sidecar is up would only hold row locks while the
            # publisher waits for it; claiming needs no sidecar.
            problem = await self._sidecar_ready()
            if not problem:
                await self._publisher.connect()
                self._sidecar_seen = True
            else:
                log.debug("not relaying yet", reason=problem)
        started = time.monotonic()
        claimed = await claim_due_occurrences(
            self._due, batch_size=self._batch_size, grace=self._grace
        )
        OCCURRENCES.labels("queued").inc(claimed.queued)
        OCCURRENCES.labels("skipped").inc(claimed.skipped)
        OCCURRENCES.labels("coalesced").inc(claimed.coalesced)
        BROKEN_SCHEDULES.inc(claimed.broken)
        claim_seconds = time.monotonic() - started
        published = failed = parked = 0
        if self._sidecar_seen:
            for relayed in await relay_outbox(
                self._outbox,
                self._publisher,
                batch_size=self._batch_size,
                policy=self._relay_policy,
            ):
                lateness = relayed.lateness
                if relayed.parked:
                    parked += 1
                    continue
                if lateness is None:
                    failed += 1 if relayed.error is not None else 0
                    continue
                published += 1
                event = relayed.entry.event
                PUBLISHED.labels(self._topic, event.type if event is not None else "other").inc()
                TRIGGER_LATENESS_SECONDS.observe(max(lateness.total_seconds(), 0.0))
            RELAYED.labels("published").inc(published)
            RELAYED.labels("failed").inc(failed)
            RELAYED.labels("parked").inc(parked)
            if failed:
                self._sidecar_seen = False  # wait for it again instead of failing each tick
        if claimed.queued or claimed.skipped or claimed.broken or published or failed or parked:
            log.info(
                "fired due schedules",
                queued=claimed.queued,
                skipped=claimed.skipped,
                coalesced=claimed.coalesced,
                published=published,
                failed=failed,
                parked=parked,
                broken=claimed.broken,
                claim_seconds=round(claim_seconds, 3),
                relay_seconds=round(time.monotonic() - started - claim_seconds, 3),
            )
        earliest = await self._due.next_fire_at()
        # One already due failed to publish: the regular poll retries it, not a busy loop.
        if earliest is not None and earliest > datetime.now(UTC):
            self.wake_at(earliest)
