from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from recurring_task_service.bootstrap import ScheduleStoreDep, WakerDep
from recurring_task_service.ports import ScheduleExistsError, ScheduleStore, ScheduleUpdate, Waker
from recurring_task_service.schedules import (
    MAX_AFTER_COMPLETION_DAYS,
    MAX_INTERVAL_SECONDS,
    AfterCompletionRule,
    InvalidScheduleError,
    NewSchedule,
    Rule,
    Schedule,
    ScheduleOptions,
    first_occurrence,
    occurrence_iso,
    resumed_next_fire_at,
    rule_fields,
    rule_from_fields,
    schedule_options,
    trigger_event_id,
    upcoming,
    zone,
)
from taskevents.auth import Caller, Identity, ensure_may_act_for, user_filter_for
from taskevents.events import EventType, NonEmptyId, TaskEvent
from taskevents.tracing import current_traceparent

MAX_LIST_LIMIT = 1000
MAX_PREVIEW = 1000
MANUAL_TRIGGER = "manual"

# A schedule belongs to its `user_id`: another user's is a 403 (schedule ids are random
# UUIDs, so the 403 tells nothing a caller could not have learned otherwise).
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    403: {"description": "another user's schedule"},
    404: {"description": "no such schedule"},
}


class ScheduleFields(BaseModel):
    """What a client may set; every field is optional so PATCH can reuse it."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(
        default=None,
        description="5 fields: minute hour day-of-month month day-of-week (Sunday 0 or 7). "
        "Give this, interval_seconds or after_completion_days.",
        examples=["0 9 * * 1-5"],
    )
    interval_seconds: int | None = Field(default=None, ge=1, le=MAX_INTERVAL_SECONDS)
    after_completion_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_AFTER_COMPLETION_DAYS,
        description="Fire once, this many days (fractions allowed) after each task.completed "
        "of the task.",
    )
    timezone: str | None = Field(
        default=None, description="IANA time zone of the cron fields.", examples=["Europe/Berlin"]
    )
    payload: dict[str, Any] | None = Field(
        default=None, description="Copied into the payload of every triggered event."
    )
    starts_at: AwareDatetime | None = Field(
        default=None, description="No occurrence before this; an interval runs from it."
    )
    ends_at: AwareDatetime | None = Field(default=None, description="No occurrence after this.")
    max_count: int | None = Field(
        default=None, ge=1, le=MAX_INTERVAL_SECONDS, description="At most this many events."
    )
    coalesce_missed: bool | None = Field(
        default=None,
        description="Occurrences missed while every replica was down (within the grace "
        "period) become one event for the latest, instead of one each.",
    )
    paused: bool | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            zone(name)
        return name


class ScheduleCreate(ScheduleFields):
    task_id: NonEmptyId
    user_id: NonEmptyId

    @model_validator(mode="after")
    def _valid(self) -> Self:
        self.rule()
        self.options()
        return self

    def rule(self) -> Rule:
        return rule_from_fields(
            cron=self.cron,
            interval_seconds=self.interval_seconds,
            after_completion_days=self.after_completion_days,
            timezone=self.timezone or "UTC",
        )

    def options(self) -> ScheduleOptions:
        return schedule_options(
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            max_count=self.max_count,
            coalesce_missed=bool(self.coalesce_missed),
        )


class ScheduleChange(ScheduleFields):
    """Only the fields given change; `null` clears starts_at, ends_at or max_count. Giving
    cron, interval_seconds or after_completion_days replaces the rule."""

    def edit(self, current: Schedule, now: datetime) -> ScheduleUpdate:
        given = self.model_fields_set
        rule = self._rule(current.rule, given)
        previous = current.options
        options = schedule_options(
            starts_at=self.starts_at if "starts_at" in given else previous.starts_at,
            ends_at=self.ends_at if "ends_at" in given else previous.ends_at,
            max_count=self.max_count if "max_count" in given else previous.max_count,
            coalesce_missed=(
                self.coalesce_missed
                if self.coalesce_missed is not None
                else previous.coalesce_missed
            ),
        )
        paused = self.paused if self.paused is not None else current.paused
        restart = (
            rule != current.rule or options.starts_at != previous.starts_at or not current.active
        )
        next_fire_at = first_occurrence(rule, now, options) if restart else current.next_fire_at
        if not restart and current.paused and not paused:
            next_fire_at = resumed_next_fire_at(rule, current.next_fire_at, now, options)
        return settled(current, rule, options, paused, next_fire_at, payload=self.payload)

    def _rule(self, current: Rule, given: set[str]) -> Rule:
        kinds = given & {"cron", "interval_seconds", "after_completion_days"}
        if not kinds and "timezone" not in given:
            return current
        fields = rule_fields(current)
        if kinds:
            fields = {"cron": None, "interval_seconds": None, "after_completion_days": None}
            fields.update({kind: getattr(self, kind) for kind in kinds})
        timezone = self.timezone or current.timezone
        return rule_from_fields(
            cron=fields["cron"],
            interval_seconds=fields["interval_seconds"],
            after_completion_days=fields["after_completion_days"],
            timezone=timezone,
        )


def settled(
    current: Schedule,
    rule: Rule,
    options: ScheduleOptions,
    paused: bool,
    next_fire_at: datetime | None,
    *,
    payload: dict[str, Any] | None = None,
) -> ScheduleUpdate:
    if options.exhausted(current.fire_count) or (
        next_fire_at is not None and not options.allows(next_fire_at)
    ):
        next_fire_at = None
        active = False
    else:
        active = next_fire_at is not None or isinstance(rule, AfterCompletionRule)
    return ScheduleUpdate(
        rule=rule,
        payload=dict(current.payload) if payload is None else payload,
        options=options,
        paused=paused,
        next_fire_at=next_fire_at,
        active=active,
    )


ScheduleState = Literal["active", "paused", "waiting_for_completion", "finished", "broken"]


class ScheduleView(BaseModel):
    id: uuid.UUID
    task_id: str
    user_id: str
    cron: str | None
    interval_seconds: int | None
    after_completion_days: float | None
    timezone: str
    payload: dict[str, Any]
    starts_at: datetime | None
    ends_at: datetime | None
    max_count: int | None
    coalesce_missed: bool
    paused: bool
    state: ScheduleState
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_completed_at: datetime | None
    fire_count: int
    active: bool = Field(description="False once the schedule is over (end or count reached).")
    broken: str | None = Field(
        default=None,
        description="Why the schedule cannot fire (its stored rule no longer reads, e.g. a "
        "time zone that left the tz database); a PATCH with a valid rule mends it.",
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleView:
        state: ScheduleState
        if schedule.broken is not None:
            state = "broken"
        elif not schedule.active:
            state = "finished"
        elif schedule.paused:
            state = "paused"
        elif schedule.next_fire_at is None:
            state = "waiting_for_completion"
        else:
            state = "active"
        options = schedule.options
        return cls(
            id=schedule.id,
            task_id=schedule.task_id,
            user_id=schedule.user_id,
            **rule_fields(schedule.rule),
            payload=dict(schedule.payload),
            starts_at=options.starts_at,
            ends_at=options.ends_at,
            max_count=options.max_count,
            coalesce_missed=options.coalesce_missed,
            paused=schedule.paused,
            state=state,
            next_fire_at=schedule.next_fire_at,
            last_fired_at=schedule.last_fired_at,
            last_completed_at=schedule.last_completed_at,
            fire_count=schedule.fire_count,
            active=schedule.active,
            broken=schedule.broken,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


class OccurrencePreview(BaseModel):
    schedule_id: uuid.UUID
    occurrences: list[str] = Field(description="The next occurrences, UTC, oldest first.")


class Triggered(BaseModel):
    schedule_id: uuid.UUID
    event_id: str = Field(description="Never the id of a scheduled occurrence.")


class MissedView(BaseModel):
    reason: str = Field(description="beyond_grace (not published) or coalesced.")
    first_occurrence: datetime
    last_occurrence: datetime | None
    occurrences: int | None = Field(description="null: more than could be counted.")
    recorded_at: datetime


class MissedList(BaseModel):
    schedule_id: uuid.UUID
    missed: list[MissedView]


def schedules_router() -> APIRouter:
    router = APIRouter(prefix="/schedules", tags=["schedules"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        responses={
            403: {"description": "a schedule for another user"},
            409: {"description": "the task already has a schedule"},
        },
    )
    async def create_schedule(
        body: ScheduleCreate, schedules: ScheduleStoreDep, waker: WakerDep, caller: Caller
    ) -> ScheduleView:
        """A schedule of the caller's own (an operator's: for any user)."""
        ensure_may_act_for(caller, body.user_id, "creating a schedule")
        rule, options = body.rule(), body.options()
        try:
            schedule = await schedules.create(
                NewSchedule(
                    task_id=body.task_id,
                    user_id=body.user_id,
                    rule=rule,
                    payload=body.payload or {},
                    next_fire_at=first_occurrence(rule, datetime.now(UTC), options),
                    options=options,
                    paused=bool(body.paused),
                    cause=current_traceparent(),
                )
            )
        except ScheduleExistsError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
        _wake(waker, schedule)
        return ScheduleView.of(schedule)

    @router.get("/{schedule_id}", responses=NOT_FOUND)
    async def get_schedule(
        schedule_id: uuid.UUID, schedules: ScheduleStoreDep, caller: Caller
    ) -> ScheduleView:
        return ScheduleView.of(await _owned(schedules, schedule_id, caller, "reading a schedule"))

    @router.get("")
    async def list_schedules(
        schedules: ScheduleStoreDep,
        caller: Caller,
        user_id: Annotated[
            str | None,
            Query(description="Only this user's schedules (a user's own: the default)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    ) -> ScheduleList:
        """A user's own schedules; an operator's, everyone's (or `user_id`'s)."""
        owner = user_filter_for(caller, user_id, "listing the schedules")
        found = await schedules.list_for_user(owner, limit=limit)
        return ScheduleList(schedules=[ScheduleView.of(s) for s in found])

    @router.patch("/{schedule_id}", responses=NOT_FOUND)
    async def change_schedule(
        schedule_id: uuid.UUID,
        body: ScheduleChange,
        schedules: ScheduleStoreDep,
        waker: WakerDep,
        caller: Caller,
    ) -> ScheduleView:
        return await _edit(schedules, waker, schedule_id, body, caller)

    @router.post("/{schedule_id}/pause", responses=NOT_FOUND)
    async def pause_schedule(
        schedule_id: uuid.UUID, schedules: ScheduleStoreDep, waker: WakerDep, caller: Caller
    ) -> ScheduleView:
        """Stop firing; what falls into the pause is not caught up later."""
        return await _edit(schedules, waker, schedule_id, ScheduleChange(paused=True), caller)

    @router.post("/{schedule_id}/resume", responses=NOT_FOUND)
    async def resume_schedule(
        schedule_id: uuid.UUID, schedules: ScheduleStoreDep, waker: WakerDep, caller: Caller
    ) -> ScheduleView:
        """Fire again from the next occurrence after now."""
        return await _edit(schedules, waker, schedule_id, ScheduleChange(paused=False), caller)

    @router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
    async def delete_schedule(
        schedule_id: uuid.UUID, schedules: ScheduleStoreDep, caller: Caller
    ) -> Response:
        await _owned(schedules, schedule_id, caller, "deleting a schedule")
        if not await schedules.delete(schedule_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/{schedule_id}/occurrences", responses=NOT_FOUND)
    async def preview_occurrences(
        schedule_id: uuid.UUID,
        schedules: ScheduleStoreDep,
        caller: Caller,
        next: Annotated[int, Query(ge=1, le=MAX_PREVIEW, description="How many.")] = 10,
    ) -> OccurrencePreview:
        """The next occurrences as the schedule stands (none while it waits for a completion
        or is over; a paused schedule shows where it would go on)."""
        schedule = await _owned(schedules, schedule_id, caller, "previewing a schedule")
        next_fire_at = schedule.next_fire_at
        if schedule.paused:
            next_fire_at = resumed_next_fire_at(
                schedule.rule, next_fire_at, _now(), schedule.options
            )
        found = upcoming(schedule.rule, next_fire_at, schedule.options, schedule.fire_count, next)
        return OccurrencePreview(
            schedule_id=schedule_id, occurrences=[occurrence_iso(o) for o in found]
        )

    @router.post(
        "/{schedule_id}/trigger", status_code=status.HTTP_202_ACCEPTED, responses=NOT_FOUND
    )
    async def trigger_schedule(
        schedule_id: uuid.UUID,
        schedules: ScheduleStoreDep,
        waker: WakerDep,
        caller: Caller,
        idempotency_key: Annotated[
            str | None,
            Header(max_length=200, description="The same key gives the same event id."),
        ] = None,
    ) -> Triggered:
        """Fire now, outside the schedule: one task.recurring.triggered with
        `payload.trigger = "manual"`; the schedule's own occurrences are not affected."""
        await _owned(schedules, schedule_id, caller, "firing a schedule")
        key = idempotency_key or uuid.uuid4().hex
        now = _now()

        def manual_event(schedule: Schedule) -> TaskEvent:
            return TaskEvent.create(
                EventType.TASK_RECURRING_TRIGGERED,
                task_id=schedule.task_id,
                user_id=schedule.user_id,
                payload={
                    **schedule.payload,
                    "schedule_id": str(schedule.id),
                    "trigger": MANUAL_TRIGGER,
                    "triggered_at": occurrence_iso(now),
                },
                event_id=trigger_event_id(schedule.id, key),
                timestamp=now,
            )

        event = await schedules.enqueue(schedule_id, manual_event, cause=current_traceparent())
        if event is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
        waker.wake_at(now)
        return Triggered(schedule_id=schedule_id, event_id=event.event_id)

    @router.get("/{schedule_id}/missed", responses=NOT_FOUND)
    async def missed_occurrences(
        schedule_id: uuid.UUID,
        schedules: ScheduleStoreDep,
        caller: Caller,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    ) -> MissedList:
        """Occurrences not published on their own: missed beyond the grace period while every
        replica was down, or folded into one coalesced event. Newest first."""
        await _owned(schedules, schedule_id, caller, "reading a schedule")
        records = await schedules.missed(schedule_id, limit=limit)
        return MissedList(
            schedule_id=schedule_id,
            missed=[
                MissedView(
                    reason=r.run.reason.value,
                    first_occurrence=r.run.first,
                    last_occurrence=r.run.last,
                    occurrences=r.run.count,
                    recorded_at=r.recorded_at,
                )
                for r in records
            ],
        )

    return router


async def _edit(
    schedules: ScheduleStore,
    waker: Waker,
    schedule_id: uuid.UUID,
    change: ScheduleChange,
    caller: Identity,
) -> ScheduleView:
    # The owner never changes, so checking it before the update is enough.
    await _owned(schedules, schedule_id, caller, "changing a schedule")
    now = _now()
    try:
        schedule = await schedules.update(
            schedule_id, lambda c: change.edit(c, now), cause=current_traceparent()
        )
    except InvalidScheduleError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(error)) from None
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
    _wake(waker, schedule)
    return ScheduleView.of(schedule)


async def _found(schedules: ScheduleStore, schedule_id: uuid.UUID) -> Schedule:
    schedule = await schedules.get(schedule_id)
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id}")
    return schedule


async def _owned(
    schedules: ScheduleStore, schedule_id: uuid.UUID, caller: Identity, what: str
) -> Schedule:
    """The schedule, if the caller is its user or an operator (403 otherwise)."""
    schedule = await _found(schedules, schedule_id)
    ensure_may_act_for(caller, schedule.user_id, what)
    return schedule


def _wake(waker: Waker, schedule: Schedule) -> None:
    if schedule.next_fire_at is not None and schedule.active and not schedule.paused:
        waker.wake_at(schedule.next_fire_at)


def _now() -> datetime:
    return datetime.now(UTC)
