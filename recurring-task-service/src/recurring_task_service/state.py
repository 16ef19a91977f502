from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from recurring_task_service.ports import ScheduleStore, TaskSchedules, Waker
from taskevents.web import ReadinessCheck


@dataclass(frozen=True, slots=True)
class AppState:
    """What the lifespan makes and the routes use, typed; on `app.state.resources`."""

    schedules: ScheduleStore
    task_schedules: TaskSchedules
    waker: Waker
    database_check: ReadinessCheck


async def app_state(request: Request) -> AppState:
    return resources(request.app.state)


def resources(state: object) -> AppState:
    found = getattr(state, "resources", None)
    if not isinstance(found, AppState):
        raise RuntimeError("the application has not started (no lifespan state)")
    return found
