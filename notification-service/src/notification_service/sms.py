"""The SMS a task event becomes: one segment whenever possible — 160 GSM-7 characters, or
70 UCS-2 code units once any character is outside the GSM alphabet."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from notification_service.emails import (
    MESSAGE_ID_NAMESPACE,
    UTC_ZONE,
    VERBS,
    single_line,
    task_link,
    templates,
)
from notification_service.ports import Channel, DigestLine, Sms
from taskevents.events import TaskEvent

GSM7_SEGMENT_CHARS = 160
UCS2_SEGMENT_UNITS = 70
# GSM 03.38 basic set, and the extension table whose characters take two septets.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text)


def sms_length(text: str) -> tuple[int, int]:
    """(units used, units one segment holds) for the encoding the text needs."""
    if is_gsm7(text):
        return sum(2 if c in GSM7_EXTENDED else 1 for c in text), GSM7_SEGMENT_CHARS
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text), UCS2_SEGMENT_UNITS


def fits_one_segment(text: str) -> bool:
    used, capacity = sms_length(text)
    return used <= capacity


def shorten(text: str, by_units: int, ellipsis: str) -> str:
    """`text` cut so that it is at least `by_units` shorter, with an ellipsis."""
    if by_units <= 0:
        return text
    keep = max(0, len(text) - by_units - len(ellipsis))
    return text[:keep].rstrip() + ellipsis if keep else ""


class SmsComposer:
    def __init__(self, *, link_base_url: str, include_link: bool = True) -> None:
        self._link_base_url = link_base_url.rstrip("/")
        self._include_link = include_link
        self._templates = templates()

    def compose(self, event: TaskEvent, recipient: str, zone: ZoneInfo = UTC_ZONE) -> Sms:
        title = single_line(str(event.payload.get("title") or f"task {event.task_id}"), 1000)
        context: dict[str, Any] = {
            "event_type": event.type,
            "title": title,
            "due": _short_due(event.payload.get("due_at"), zone),
            "link": task_link(self._link_base_url, event.task_id) if self._include_link else "",
        }
        body = self._fit("sms.txt.j2", context, "title")
        return Sms(
            recipient=recipient,
            body=body,
            message_id=message_id(event.event_id),
            event_id=event.event_id,
        )

    def compose_digest(self, digest_id: str, recipient: str, lines: list[DigestLine]) -> Sms:
        titles = ", ".join(
            f"{VERBS.get(line.event_type, 'Changed')}: "
            + single_line(line.title or line.task_id, 80)
            for line in lines
        )
        context: dict[str, Any] = {
            "count": len(lines),
            "titles": titles,
            "link": self._link_base_url + "/" if self._include_link else "",
        }
        return Sms(
            recipient=recipient,
            body=self._fit("sms_digest.txt.j2", context, "titles"),
            message_id=message_id(digest_id),
            event_id=digest_id,
        )

    def _fit(self, template: str, context: dict[str, Any], flexible: str) -> str:
        """Render; while it needs more than one segment, drop the link, then shorten the
        flexible field. A text that still does not fit is sent as it is (concatenated)."""
        render = self._templates.get_template(template).render
        text = render(context).strip()
        if fits_one_segment(text):
            return text
        if context.get("link"):
            context = {**context, "link": ""}
            text = render(context).strip()
        for _ in range(3):  # the encoding may change as characters go
            used, capacity = sms_length(text)
            if used <= capacity:
                break
            ellipsis = "…" if not is_gsm7(text) else "..."
            context = {
                **context,
                flexible: shorten(str(context[flexible]), used - capacity, ellipsis),
            }
            text = render(context).strip()
        return text


def message_id(event_id: str) -> str:
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{event_id}/{Channel.SMS}"))


def _short_due(value: Any, zone: ZoneInfo) -> str:
    if not value:
        return ""
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError:
        return single_line(str(value), 20)
    if due.tzinfo is None:
        return due.strftime("%d %b %H:%M")
    local = due.astimezone(zone)
    return local.strftime("%d %b %H:%M ") + (local.tzname() or "")
