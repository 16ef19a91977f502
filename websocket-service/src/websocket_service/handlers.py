"""What a delivered task event does here: it goes to the live connections of its user."""

from __future__ import annotations

from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from websocket_service.ports import Fanout

log = get_logger(__name__)


async def push_event_to_clients(event: TaskEvent, *, fanout: Fanout) -> Outcome:
    # A live push is best effort per client: a slow or gone client never makes Dapr
    # retry, or every other client would see the event late (or twice).
    if event.known_type is None:
        return Outcome.success()
    report = fanout.publish(event)
    if report.overflowed:
        log.warning("slow clients closed", user_id=event.user_id, closed=report.overflowed)
    log.debug(
        "event pushed",
        user_id=event.user_id,
        queued=report.queued,
        duplicates=report.duplicates,
    )
    return Outcome.success()
