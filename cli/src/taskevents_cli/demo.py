"""A realistic stream of task life-cycles for `taskevents demo`: users create tasks, update
them, complete most and delete some; some tasks recur, many have due dates."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from taskevents.events import EventType, TaskEvent

TITLES = (
    "Pay rent", "Renew passport", "Water the plants", "Call the dentist", "Book flights",
    "Submit expense report", "Review pull request", "Plan sprint", "Buy groceries",
    "Back up laptop", "Write blog post", "Prepare slides", "Fix the bike", "File taxes",
)  # fmt: skip
RECURRENCES: tuple[dict[str, Any], ...] = (
    {"cron": "0 9 1 * *", "timezone": "Europe/Berlin"},
    {"cron": "30 8 * * 1-5", "timezone": "America/New_York"},
    {"cron": "0 18 * * 0", "timezone": "UTC"},
    {"interval_seconds": 3600},
)
TIME_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")


@dataclass
class _Task:
    task_id: str
    user_id: str
    title: str
    updates_left: int
    ends_deleted: bool
    payload: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    completed: bool = False


@dataclass
class DemoStream:
    """Yields events forever; each task's events come in life-cycle order."""

    users: int
    seed: int | None = None
    user_prefix: str = "user"
    email_domain: str = "example.com"
    _rng: random.Random = field(init=False)
    _open: list[_Task] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError("users must be at least 1")
        self._rng = random.Random(self.seed)

    def __iter__(self) -> Iterator[TaskEvent]:
        while True:
            yield self.next_event()

    def next_event(self) -> TaskEvent:
        # Keep a handful of tasks per user in flight; otherwise advance a random one.
        if len(self._open) < self.users * 2 or self._rng.random() < 0.25:
            task = self._new_task()
            self._open.append(task)
        else:
            task = self._rng.choice(self._open)
        return self._advance(task)

    def _new_task(self) -> _Task:
        user = self._rng.randrange(self.users)
        user_id = f"{self.user_prefix}-{user}"
        title = self._rng.choice(TITLES)
        payload: dict[str, Any] = {
            "title": title,
            "user_email": f"{user_id}@{self.email_domain}",
            "timezone": TIME_ZONES[user % len(TIME_ZONES)],
        }
        if self._rng.random() < 0.7:
            due = datetime.now(UTC) + timedelta(hours=self._rng.randrange(1, 24 * 14))
            payload["due_at"] = due.replace(minute=0, second=0, microsecond=0).isoformat()
        if self._rng.random() < 0.2:
            payload["recurrence"] = self._rng.choice(RECURRENCES)
        return _Task(
            task_id=f"task-{uuid.UUID(int=self._rng.getrandbits(128)).hex[:12]}",
            user_id=user_id,
            title=title,
            updates_left=self._rng.randrange(0, 3),
            ends_deleted=self._rng.random() < 0.2,
            payload=payload,
        )

    def _advance(self, task: _Task) -> TaskEvent:
        if not task.created:
            task.created = True
            return self._event(EventType.TASK_CREATED, task, task.payload)
        if task.updates_left > 0:
            task.updates_left -= 1
            change = self._rng.choice(("title", "due_at", "priority"))
            if change == "title":
                task.title = f"{task.title} (revised)"
                update: dict[str, Any] = {"title": task.title}
            elif change == "due_at":
                due = datetime.now(UTC) + timedelta(days=self._rng.randrange(1, 30))
                update = {"title": task.title, "due_at": due.replace(microsecond=0).isoformat()}
            else:
                update = {"title": task.title, "priority": self._rng.choice(("low", "high"))}
            return self._event(EventType.TASK_UPDATED, task, update)
        if not task.completed and not task.ends_deleted:
            task.completed = True
            return self._event(EventType.TASK_COMPLETED, task, {"title": task.title})
        self._open.remove(task)
        return self._event(EventType.TASK_DELETED, task, {"title": task.title})

    def _event(self, kind: EventType, task: _Task, payload: dict[str, Any]) -> TaskEvent:
        return TaskEvent.create(
            kind,
            task_id=task.task_id,
            user_id=task.user_id,
            payload={**payload, "user_email": task.payload["user_email"]},
            event_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
        )
