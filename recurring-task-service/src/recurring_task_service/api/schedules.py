from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recurring_task_service.ports import ScheduleExistsError
from recurring_task_service.schedules import (
    MAX_INTERVAL_SECONDS,
    CronRule,
    NewSchedule,
    Rule,
    Schedule,
    first_occurrence,
    rule_from_fields,
    zone,
)
from recurring_task_service.state import AppState, app_state
from taskevents.events import NonEmptyId

MAX_LIST_LIMIT = 1000

router = APIRouter(prefix="/schedules", tags=["schedules"])
State = Annotated[AppState, Depends(app_state)]


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: NonEmptyId
    user_id: NonEmptyId
    cron: str | None = Field(
        default=None,
        description="5 fields: minute hour day-of-month month day-of-week (Sunday 0 or 7). "
        "Give this or interval_seconds.",
        examples=["0 9 * * 1-5"],
    )
    interval_seconds: int | None = Field(default=None, ge=1, le=MAX_INTERVAL_SECONDS)
    timezone: str = Field(
        default="UTC", description="IANA time zone of the cron fields.", examples=["Europe/Berlin"]
    )
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Copied into the payload of every triggered event."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        zone(name)
        return name

    @model_validator(mode="after")
    def _valid_rule(self) -> Self:
        self.rule()
        return self

    def rule(self) -> Rule:
        return rule_from_fields(
            cron=self.cron, interval_seconds=self.interval_seconds, timezone=self.timezone
        )


class ScheduleView(BaseModel):
    id: uuid.UUID
    task_id: str
    user_id: str
    cron: str | None
    interval_seconds: int | None
    timezone: str
    payload: dict[str, Any]
    next_fire_at: datetime
    last_fired_at: datetime | None
    fire_count: int
    active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleView:
        rule = schedule.rule
        return cls(
            id=schedule.id,
            task_id=schedule.task_id,
            user_id=schedule.user_id,
            cron=rule.expression if isinstance(rule, CronRule) else None,
            interval_seconds=None if isinstance(rule, CronRule) else rule.seconds,
            timezone=rule.timezone,
            payload=dict(schedule.payload),
            next_fire_at=schedule.next_fire_at,
            last_fired_at=schedule.last_fired_at,
            fire_count=schedule.fire_count,
            active=schedule.active,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "the task already has a schedule"}},
)
async def create_schedule(body: ScheduleCreate, state: State) -> ScheduleView:
    rule = body.rule()
    try:
        schedule = await state.schedules.create(
            NewSchedule(
                task_id=body.task_id,
                user_id=body.user_id,
                rule=rule,
                payload=body.payload,
                next_fire_at=first_occurrence(rule, datetime.now(UTC)),
            )
        )
    except ScheduleExistsError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    state.waker.wake_at(schedule.next_fire_at)
    return ScheduleView.of(schedule)


@router.get("/{schedule_id}", responses={404: {"description": "no such schedule"}})
async def get_schedule(schedule_id: uuid.UUID, state: State) -> ScheduleView:
    schedule = await state.schedules.get(schedule_id)
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
    return ScheduleView.of(schedule)


@router.get("")
async def list_schedules(
    state: State,
    user_id: Annotated[str | None, Query(description="Only this user's schedules.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> ScheduleList:
    schedules = await state.schedules.list_for_user(user_id, limit=limit)
    return ScheduleList(schedules=[ScheduleView.of(s) for s in schedules])


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no such schedule"}},
)
async def delete_schedule(schedule_id: uuid.UUID, state: State) -> Response:
    if not await state.schedules.delete(schedule_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
