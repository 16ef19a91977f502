"""notification-service through real daprd sidecars, Kafka, Postgres and the shared SMTP
sink: preferences decide who gets what, one mail per event however often it is delivered,
permanent refusals end in the dead-letter topic and the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.kafka import DLQ_TOPIC, cloud_event, end_offsets, produce_raw, read_from
from tests.support.mailbox import ReceivedMail, mails_to
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NOTIFY = "notification-service"


def url(cluster: Cluster, path: str) -> str:
    return f"{cluster[NOTIFY].url}{path}"


async def put_preferences(
    http: httpx.AsyncClient, cluster: Cluster, user_id: str, **preferences: Any
) -> None:
    response = await http.put(
        url(cluster, f"/preferences/{user_id}"), json=preferences, headers=bearer(user_id)
    )
    assert response.status_code == 200, response.text


async def history(http: httpx.AsyncClient, cluster: Cluster, user_id: str) -> list[dict[str, Any]]:
    response = await http.get(
        url(cluster, "/notifications"), params={"user_id": user_id}, headers=bearer(user_id)
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def wait_for_mails(
    stack: Stack, cluster: Cluster, address: str, count: int
) -> list[ReceivedMail]:
    async def arrived() -> list[ReceivedMail] | None:
        mails = mails_to(stack.mail_dir, address)
        return mails if len(mails) >= count else None

    return await eventually(
        arrived, timeout=60, what=f"{count} mail(s) to {address}", check=cluster.check_alive
    )


# The payloads below carry no user_email: the address comes from the preferences only, so a
# mail to it proves the preferences were used.


async def test_preferences_decide_who_gets_which_mail(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    address = f"prefs-{unique}@example.com".lower()
    await put_preferences(
        http, cluster, user_id,
        email=address, channels=["email"], muted_event_types=["task.completed"],
        time_zone="Asia/Tokyo",
    )  # fmt: skip

    created = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id,
        payload={"title": "Renew passport", "due_at": "2026-12-01T09:00:00Z"},
    )  # fmt: skip
    updated = TaskEvent.create(
        EventType.TASK_UPDATED, task_id=task_id, user_id=user_id,
        payload={"title": "Renew passport (revised)"},
    )  # fmt: skip
    completed = TaskEvent.create(  # muted by the preferences
        EventType.TASK_COMPLETED, task_id=task_id, user_id=user_id,
        payload={"title": "Renew passport"},
    )  # fmt: skip
    # Events of one task keep their order, so once the marker's mail is there, the update and
    # the muted completion have been handled.
    marker = TaskEvent.create(
        EventType.TASK_RECURRING_TRIGGERED, task_id=task_id, user_id=user_id,
        payload={"title": "Marker"},
    )  # fmt: skip
    for event in (created, updated, completed, marker):
        await publisher.publish(event)

    mails = await wait_for_mails(stack, cluster, address, 2)
    assert [m.header("X-Taskevents-Event-Id") for m in mails] == [
        created.event_id,
        marker.event_id,
    ]
    mail = mails[0]
    assert mail.subject == "New task: Renew passport"
    text, html = mail.part("text/plain") or "", mail.part("text/html") or ""
    assert "Renew passport" in text
    assert "Renew passport" in html
    # The due date in the user's time zone (09:00 UTC is 18:00 in Tokyo).
    assert "Tue 01 Dec 2026, 18:00 JST" in text
    assert "18:00 JST" in html
    assert f"/?task={task_id}" in text

    entries = await eventually(
        lambda: _sent(http, cluster, user_id, 2), what="history", check=cluster.check_alive
    )
    assert {(e["event_id"], e["channel"]) for e in entries} == {
        (created.event_id, "email"),
        (marker.event_id, "email"),
    }
    assert all(e["recipient"] == address and e["sent_at"] for e in entries)


async def _sent(
    http: httpx.AsyncClient, cluster: Cluster, user_id: str, count: int
) -> list[dict[str, Any]] | None:
    entries = [e for e in await history(http, cluster, user_id) if e["status"] == "sent"]
    return entries if len(entries) >= count else None


async def test_the_same_event_delivered_again_sends_one_mail(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    address = f"twice-{unique}@example.com".lower()
    await put_preferences(http, cluster, user_id, email=address)
    event = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id, payload={"title": "Once"}
    )
    await publisher.publish(event)
    await wait_for_mails(stack, cluster, address, 1)
    # Again through the sidecar, and the same bytes straight onto the topic under another
    # CloudEvent id, as a producer retry would.
    await publisher.publish(event)
    await produce_raw(
        stack.kafka_brokers, cloud_event(json.loads(event.to_json())), key=event.task_id
    )
    marker = TaskEvent.create(
        EventType.TASK_COMPLETED, task_id=task_id, user_id=user_id, payload={"title": "Marker"}
    )
    await publisher.publish(marker)

    mails = await wait_for_mails(stack, cluster, address, 2)
    assert sorted(m.header("X-Taskevents-Event-Id") or "" for m in mails) == sorted(
        [event.event_id, marker.event_id]
    )


async def test_a_permanently_rejected_recipient_is_dead_lettered_with_the_reason(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id = f"user-{unique}"
    # The shared sink refuses this recipient with 550 5.1.1 (MAILSINK_REJECT).
    await put_preferences(http, cluster, user_id, email="rejected@example.com")
    before = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    event = TaskEvent.create(
        EventType.TASK_CREATED, task_id=f"task-{unique}", user_id=user_id,
        payload={"title": "Nobody home"},
    )  # fmt: skip
    await publisher.publish(event)

    async def in_dlq() -> list[dict[str, Any]]:
        messages = await read_from(stack.kafka_brokers, before, until=1.0)
        return [m for m in messages if m["body"].get("data", {}).get("event_id") == event.event_id]

    dead = await eventually(
        in_dlq, timeout=60, what="the event in the DLQ", check=cluster.check_alive
    )
    assert dead[0]["body"]["topic"] == "task-events"
    reason_header = dead[0]["headers"].get("dead-letter-reason", "")
    assert "550" in reason_header

    async def kept() -> list[dict[str, Any]]:
        response = await http.get(
            f"{cluster['audit-log-service'].url}/audit/dead-letters",
            headers=bearer("operator", operator=True),
        )
        response.raise_for_status()
        return [d for d in response.json()["items"] if d.get("event_id") == event.event_id]

    letters = await eventually(kept, what="dead letter in the audit log", check=cluster.check_alive)
    # The audit log files the reason the service gave, not only the raw headers.
    assert "550" in (letters[0]["reason"] or "")

    [entry] = await history(http, cluster, user_id)
    assert entry["status"] == "rejected"
    assert "550 5.1.1" in entry["reason"]


async def test_with_no_sms_provider_an_sms_user_gets_the_mail_and_a_recorded_sms_off(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    # The harness runs notification-service with NOTIFY_SMS_PROVIDER=none.
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    address = f"sms-off-{unique}@example.com".lower()
    await put_preferences(
        http, cluster, user_id, email=address, phone="+4915112345678", channels=["sms", "email"]
    )
    before = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    event = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id, payload={"title": "By mail"}
    )
    # The same task, so the same partition: once its mail is out, the event before it has
    # been answered (and would have been dead-lettered by then).
    marker = TaskEvent.create(
        EventType.TASK_COMPLETED, task_id=task_id, user_id=user_id, payload={"title": "Marker"}
    )
    await publisher.publish(event)
    await publisher.publish(marker)

    mails = await wait_for_mails(stack, cluster, address, 2)
    assert [m.header("X-Taskevents-Event-Id") for m in mails] == [
        event.event_id,
        marker.event_id,
    ]
    by_channel = {(e["event_id"], e["channel"]): e for e in await history(http, cluster, user_id)}
    sms = by_channel[(event.event_id, "sms")]
    assert (sms["status"], sms["reason"]) == ("skipped", "SMS is off (NOTIFY_SMS_PROVIDER=none)")
    assert sms["sent_at"] is None
    assert by_channel[(event.event_id, "email")]["status"] == "sent"
    assert by_channel[(marker.event_id, "sms")]["status"] == "skipped"
    dead = [
        m
        for m in await read_from(stack.kafka_brokers, before, until=1.0)
        if m["body"].get("data", {}).get("task_id") == task_id
    ]
    assert dead == []
    failed = [e for e in by_channel.values() if e["status"] in ("failed", "rejected")]
    assert failed == []


async def test_preferences_round_trip_and_validation(
    cluster: Cluster, http: httpx.AsyncClient, unique: str
) -> None:
    user_id = f"user-{unique}"
    path = url(cluster, f"/preferences/{user_id}")
    assert (await http.get(path)).status_code == 401
    assert (await http.get(path, headers=bearer(f"other-{unique}"))).status_code == 403
    http.headers.update(bearer(user_id))  # from here on: as the user
    assert (await http.get(path)).status_code == 404

    stored = {
        "email": "ada@example.com",
        "phone": "+49 151 1234 5678",
        "channels": ["email", "sms"],
        "muted_event_types": ["task.updated"],
        "time_zone": "Europe/Berlin",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
    }
    response = await http.put(path, json=stored)
    assert response.status_code == 200, response.text
    body = (await http.get(path)).json()
    assert body["phone"] == "+4915112345678"
    assert sorted(body["channels"]) == ["email", "sms"]
    assert body["quiet_hours"] == {"start": "22:00:00", "end": "07:00:00"}

    bad = {
        "phone": ("0151 123", "E.164"),
        "time_zone": ("Mars/Olympus_Mons", "IANA"),
        "channels": (["email", "pigeon"], "'email' or 'sms'"),
        "email": ("not-an-address", "single address"),
        "muted_event_types": (["Task Updated"], "event type"),
        "quiet_hours": ({"start": "22:00", "end": "22:00"}, "must differ"),
        "colour": ("blue", "Extra inputs are not permitted"),
    }
    for field, (value, message) in bad.items():
        response = await http.put(path, json={**stored, field: value})
        assert response.status_code == 422, (field, response.text)
        [error] = response.json()["detail"]
        assert error["loc"][:2] == ["body", field], (field, error)
        assert message in error["msg"], (field, error["msg"])

    assert (await http.get(path)).json()["time_zone"] == "Europe/Berlin"  # unchanged
    assert (await http.delete(path)).status_code == 204
    assert (await http.get(path)).status_code == 404
    assert (await http.delete(path)).status_code == 404

    response = await http.get(
        url(cluster, "/notifications"), params={"user_id": user_id, "since": "yesterday"}
    )
    assert response.status_code == 422
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    response = await http.get(
        url(cluster, "/notifications"), params={"user_id": user_id, "since": since}
    )
    assert response.status_code == 200
    assert response.json()["items"] == []
