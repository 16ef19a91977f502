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
    events: list[TaskEvent]  # in the order to send them, each once
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
    """The events after `last_event_id` that a resuming client missed, each once.

    The client received the live stream in the order a replica took the events off the
    topic, partitions interleaved. `latest` is this replica's memory of that order (the
    newest events, oldest first). When it holds the anchor, what came after the anchor is
    exactly what was missed — the audit log is not asked: its commit order interleaves the
    partitions differently, so "committed after the anchor" would repeat events the client
    saw just before the anchor and skip some it had not seen yet.

    Otherwise (this replica started after the anchor, or forgot it) the audit log gives the
    events it committed after the anchor, in commit order (never by timestamp: a back-dated
    event sorts where it was stored), and every event in `latest` came after the anchor
    too: those the audit log did not have go last, in the order they arrived."""
    after = _after_anchor(latest, last_event_id)
    if after is not None:
        return _limited(_unique(after), max_events, "in this replica's memory")
    try:
        history = await audit.history_after(
            user_id, last_event_id, max_events=max_events, bearer_token=bearer_token
        )
    except AuditUnavailableError as error:
        return CatchUp([], "unavailable", f"the audit log did not answer ({error}); live follows")
    if not history.found_anchor:
        return CatchUp(
            [], "partial", f"event {last_event_id[:60]} is unknown; nothing replayed, live follows"
        )
    if history.truncated:
        return _limited(_unique(history.events), max_events, "in the audit log", truncated=True)
    events = merge_after_anchor(history.events, latest)
    return _limited(events, max_events, "in the audit log and this replica's memory")


def merge_after_anchor(stored: Sequence[TaskEvent], latest: Sequence[TaskEvent]) -> list[TaskEvent]:
    """What the audit log committed after the anchor, then what only this replica's memory
    has (not stored yet), each once. An event in both keeps its place in memory (the order
    the live stream had), so a client that drops out during the replay and resumes from
    a replayed event finds it in memory with everything before it sent."""
    remembered = {e.event_id for e in latest}
    return _unique([*(e for e in stored if e.event_id not in remembered), *latest])


def _limited(
    events: list[TaskEvent], max_events: int, where: str, *, truncated: bool = False
) -> CatchUp:
    if not truncated and len(events) <= max_events:
        return CatchUp(events, "complete")
    return CatchUp(
        events[:max_events],
        "partial",
        f"more than {max_events} events missed; the first {max_events} {where} replayed, "
        "then live events; the rest: GET /audit/events?after_event_id=<the last replayed>",
    )


def _after_anchor(events: Sequence[TaskEvent], anchor: str) -> list[TaskEvent] | None:
    """The events after the anchor, None when it is not there. A connection passes each
    event id once, so the client had the anchor where it first arrived; a redelivered
    event that came before the anchor too was seen: it is left out."""
    for index, event in enumerate(events):
        if event.event_id == anchor:
            seen = {e.event_id for e in events[:index]} | {anchor}
            return [e for e in events[index + 1 :] if e.event_id not in seen]
    return None


def _unique(events: Sequence[TaskEvent]) -> list[TaskEvent]:
    seen: set[str] = set()
    result = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            result.append(event)
    return result
