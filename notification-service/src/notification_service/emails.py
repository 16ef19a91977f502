"""The email a task event becomes, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from notification_service.ports import Channel, DigestLine, Email
from taskevents.events import TaskEvent

MAX_SUBJECT_CHARS = 150
MAX_TITLE_CHARS = 200
UTC_ZONE = ZoneInfo("UTC")
# Message-IDs derive from (event, channel), so a re-send carries the same id and mail
# clients can fold the copies into one.
MESSAGE_ID_NAMESPACE = uuid.UUID("0b9a3c52-6f0e-4d4f-8a55-1f1c3a7d2e90")

_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")


def single_line(text: str, limit: int) -> str:
    """Untrusted text made safe for a header or a one-line field."""
    flat = _CONTROL_OR_SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class EmailComposer:
    def __init__(self, *, link_base_url: str, mail_from: str) -> None:
        self._link_base_url = link_base_url.rstrip("/")
        self._domain = parseaddr(mail_from)[1].rpartition("@")[2] or "taskevents.local"
        self._templates = templates()

    def compose(self, event: TaskEvent, recipient: str, zone: ZoneInfo = UTC_ZONE) -> Email:
        context = task_context(event, zone, self._link_base_url)
        subject = self._templates.get_template("subject.txt.j2").render(context)
        return Email(
            recipient=recipient,
            subject=single_line(subject, MAX_SUBJECT_CHARS),
            text=self._templates.get_template("email.txt.j2").render(context),
            html=self._templates.get_template("email.html.j2").render(context),
            message_id=self.message_id(event.event_id, Channel.EMAIL),
            event_id=event.event_id,
        )

    def compose_digest(
        self, digest_id: str, recipient: str, lines: list[DigestLine], zone: ZoneInfo = UTC_ZONE
    ) -> Email:
        context = digest_context(lines, zone, self._link_base_url)
        subject = self._templates.get_template("digest_subject.txt.j2").render(context)
        return Email(
            recipient=recipient,
            subject=single_line(subject, MAX_SUBJECT_CHARS),
            text=self._templates.get_template("digest.txt.j2").render(context),
            html=self._templates.get_template("digest.html.j2").render(context),
            message_id=self.message_id(digest_id, Channel.EMAIL),
            event_id=digest_id,
        )

    def message_id(self, event_id: str, channel: Channel) -> str:
        return f"<{uuid.uuid5(MESSAGE_ID_NAMESPACE, f'{event_id}/{channel}')}@{self._domain}>"


def templates() -> Environment:
    return Environment(
        loader=PackageLoader("notification_service", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def task_link(link_base_url: str, task_id: str) -> str:
    return f"{link_base_url}/?task={quote(task_id, safe='')}"


def task_context(event: TaskEvent, zone: ZoneInfo, link_base_url: str) -> dict[str, Any]:
    payload = event.payload
    title = payload.get("title")
    return {
        "event_type": event.type,
        "task_id": event.task_id,
        "user_id": event.user_id,
        "title": single_line(str(title), MAX_TITLE_CHARS) if title else "",
        "due": format_due(payload.get("due_at"), zone),
        "link": task_link(link_base_url, event.task_id),
        "happened_at": format_time(event.timestamp, zone),
    }


def digest_context(lines: list[DigestLine], zone: ZoneInfo, link_base_url: str) -> dict[str, Any]:
    return {
        "count": len(lines),
        "items": [
            {
                "verb": VERBS.get(line.event_type, "Changed"),
                "title": single_line(line.title, MAX_TITLE_CHARS) if line.title else "",
                "task_id": line.task_id,
                "link": task_link(link_base_url, line.task_id),
                "at": format_time(line.created_at, zone),
            }
            for line in lines
        ],
        "link": link_base_url + "/",
    }


VERBS = {
    "task.created": "New",
    "task.completed": "Completed",
    "task.recurring.triggered": "Due again",
}


def format_due(value: Any, zone: ZoneInfo = UTC_ZONE) -> str:
    if not value:
        return ""
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError:
        return single_line(str(value), 64)
    return format_time(due, zone)


def format_time(moment: datetime, zone: ZoneInfo = UTC_ZONE) -> str:
    if moment.tzinfo is None:
        return moment.strftime("%a %d %b %Y, %H:%M")
    local = moment.astimezone(zone)
    return local.strftime("%a %d %b %Y, %H:%M ") + (local.tzname() or str(zone))
