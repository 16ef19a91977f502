"""What a delivered task event does here (it goes to the live connections of its user),
and what a resuming client is sent before its live events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.tracing import span
from websocket_service.frames import ResumeStatus
from websocket_service.ports import AuditLog, AuditUnavailableError, Fanout

log = get_logger(__name__)


async def push_event_to_clients(event: TaskEvent, *, fanout: Fanout) -> Outcome:
    # A live push is best effort per client: a slow or gone client never makes Dapr
    # retry, or every other client would see the event late (or twice).
    if event.known_type is None:
        return Outcome.success()
    with span("websocket fan-out", attributes={"taskevents.user_id": event.user_id}) as current:
        report = fanout.publish(event)
        current.set_attributes(
            {
                "taskevents.queued": report.queued,
                "taskevents.duplicates": report.duplicates,
                "taskevents.overflowed": report.overflowed,
            }
        )
    if report.overflowed:
        log.warning("slow clients closed", user_id=event.user_id, closed=report.overflowed)
    log.debug(
        "event pushed",
        user_id=event.user_id,
        queued=report.queued,
        duplicates=report.duplicates,
    )
    return Outcome.success()


@dataclass(frozen=True, slots=True)
class CatchUp:
    events: list[TaskEvent]  # oldest first, each once
    status: ResumeStatus
    reason: str | None = None


async def plan_catch_up(
    user_id: str | None,
    last_event_id: str,
    *,
    audit: AuditLog,
    latest: Sequence[TaskEvent],
    max_events: int,
    bearer_token: str,
) -> CatchUp:
    """The events after `last_event_id` that a resuming client missed: from the audit log,
    plus the latest events this replica saw that the audit log has not stored yet (it
    writes in batches, so the newest can lag behind the live stream)."""
    from_memory = _after_anchor(latest, last_event_id)
    try:
        history = await audit.history_until(
            user_id, last_event_id, max_events=max_events, bearer_token=bearer_token
        )
    except AuditUnavailableError as error:
        reason = f"the audit log did not answer ({error}); live events follow"
        if from_memory is None:
            return CatchUp([], "unavailable", reason)
        return CatchUp(_unique(from_memory), "unavailable", reason + "; recent events replayed")
    stored = [e for e in reversed(history.newest_first) if e.event_id != last_event_id]
    if history.found_anchor:
        candidates = latest if from_memory is None else from_memory
        unstored = [e for e in candidates if e.event_id not in history.ids]
        return CatchUp(_unique([*stored, *unstored])[-max_events:], "complete")
    if from_memory is not None:
        # The client saw an event the audit log has not stored yet.
        return CatchUp(_unique(from_memory)[-max_events:], "complete")
    if history.truncated:
        return CatchUp(
            _unique(stored),
            "partial",
            f"more than {max_events} events missed; only the newest {max_events} replayed",
        )
    return CatchUp(
        [], "partial", f"event {last_event_id[:60]} is unknown; nothing replayed, live follows"
    )


def _after_anchor(events: Sequence[TaskEvent], anchor: str) -> list[TaskEvent] | None:
    """The events after the last occurrence of the anchor, None when it is not there."""
    for index in range(len(events) - 1, -1, -1):
        if events[index].event_id == anchor:
            return [e for e in events[index + 1 :] if e.event_id != anchor]
    return None


def _unique(events: Sequence[TaskEvent]) -> list[TaskEvent]:
    seen: set[str] = set()
    result = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            result.append(event)
    return result
