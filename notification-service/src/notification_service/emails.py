"""The email a task event becomes, rendered from the Jinja2 templates in templates/."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from notification_service.ports import Channel, Email
from taskevents.events import TaskEvent

MAX_SUBJECT_CHARS = 150
MAX_TITLE_CHARS = 200
# Message-IDs derive from (event, channel), so a re-send carries the same id and mail
# clients can fold the copies into one.
MESSAGE_ID_NAMESPACE = uuid.UUID("0b9a3c52-6f0e-4d4f-8a55-1f1c3a7d2e90")

_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+$")
_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")


def is_plausible_address(address: str) -> bool:
    """A single bare address (no display name, no list); the SMTP server has the last word."""
    return len(address) <= 254 and _ADDRESS.fullmatch(address) is not None


def single_line(text: str, limit: int) -> str:
    """Untrusted text made safe for a header or a one-line field."""
    flat = _CONTROL_OR_SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class EmailComposer:
    def __init__(self, *, link_base_url: str, mail_from: str) -> None:
        self._link_base_url = link_base_url.rstrip("/")
        self._domain = parseaddr(mail_from)[1].rpartition("@")[2] or "taskevents.local"
        self._templates = Environment(
            loader=PackageLoader("notification_service", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )

    def compose(self, event: TaskEvent, recipient: str) -> Email:
        context = self._context(event)
        subject = self._templates.get_template("subject.txt.j2").render(context)
        return Email(
            recipient=recipient,
            subject=single_line(subject, MAX_SUBJECT_CHARS),
            text=self._templates.get_template("email.txt.j2").render(context),
            html=self._templates.get_template("email.html.j2").render(context),
            message_id=self.message_id(event.event_id, Channel.EMAIL),
            event_id=event.event_id,
        )

    def message_id(self, event_id: str, channel: Channel) -> str:
        return f"<{uuid.uuid5(MESSAGE_ID_NAMESPACE, f'{event_id}/{channel}')}@{self._domain}>"

    def _context(self, event: TaskEvent) -> dict[str, Any]:
        payload = event.payload
        title = payload.get("title")
        return {
            "event_type": event.type,
            "task_id": event.task_id,
            "user_id": event.user_id,
            "title": single_line(str(title), MAX_TITLE_CHARS) if title else "",
            "due": _format_due(payload.get("due_at")),
            "link": f"{self._link_base_url}/?task={quote(event.task_id, safe='')}",
            "happened_at": _format_time(event.timestamp),
        }


def _format_due(value: Any) -> str:
    if not value:
        return ""
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError:
        return single_line(str(value), 64)
    return _format_time(due)


def _format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        return moment.strftime("%a %d %b %Y, %H:%M")
    return moment.astimezone(UTC).strftime("%a %d %b %Y, %H:%M UTC")
