"""The independent checker. It shares no code with the services: it reads the topics with
its own Kafka consumer, the database with plain SQL, the mail sink's files, the SMS sink's
records and what each WebSocket client received, and says what was lost or doubled."""

from __future__ import annotations

import email
import email.policy
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

NOTIFIABLE = {"task.created", "task.completed", "task.recurring.triggered"}
EVENT_ID_HEADER = "X-Taskevents-Event-Id"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: str
    data: dict[str, Any]
    raw: dict[str, Any]


async def read_topic(brokers: str, topic: str, *, timeout: float = 120.0) -> list[Message]:
    """Every message on the topic, from each partition's first offset to its end offset
    at the call."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(partitions)
        begins = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, begins[tp])
        reached = dict(begins)
        deadline = time.monotonic() + timeout
        messages: list[Message] = []
        while any(reached[tp] < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read up to {reached}, the end is {ends}")
            batch = await consumer.getmany(timeout_ms=2000)
            for tp, records in batch.items():
                for record in records:
                    reached[tp] = record.offset + 1
                    if record.offset >= ends[tp]:
                        continue
                    try:
                        raw = json.loads(record.value or b"null")
                    except json.JSONDecodeError:
                        raw = {}
                    data = raw.get("data") if isinstance(raw, dict) else None
                    messages.append(
                        Message(
                            topic,
                            tp.partition,
                            record.offset,
                            (record.key or b"").decode(errors="replace"),
                            data if isinstance(data, dict) else {},
                            raw if isinstance(raw, dict) else {},
                        )
                    )
        return messages
    finally:
        await consumer.stop()


def read_mails(mail_dir: Path) -> list[tuple[str, list[str]]]:
    """(event id header, recipients) of every mail the sink accepted."""
    found = []
    for meta_path in sorted(mail_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        raw = (mail_dir / meta["eml"]).read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        found.append((str(message[EVENT_ID_HEADER]), list(meta.get("rcpt_tos", []))))
    return found


@dataclass
class Findings:
    published: set[str]
    audit_counts: Counter[str]
    email_counts: Counter[str]
    sms_counts: Counter[str]
    dead_letters: list[dict[str, Any]]
    topic: list[Message]
    dlq: list[Message]
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def dead_letter_of(self, event_id: str) -> list[dict[str, Any]]:
        return [d for d in self.dead_letters if d["event_id"] == event_id]


async def gather(
    *,
    brokers: str,
    database_url: str,
    mail_dir: Path,
    sms: list[dict[str, Any]],
    prefix: str,
) -> Findings:
    topic = await read_topic(brokers, "task-events")
    dlq = await read_topic(brokers, "task-events-dlq")
    connection = await asyncpg.connect(database_url)
    try:
        audit_rows = await connection.fetch("SELECT event_id FROM audit_events")
        dead_rows = await connection.fetch(
            "SELECT event_id, task_id, type, reason, metadata::text AS metadata FROM dead_letters"
        )
    finally:
        await connection.close()
    ours = [m for m in topic if str(m.data.get("user_id", "")).startswith(prefix)]
    return Findings(
        published={str(m.data["event_id"]) for m in ours if "event_id" in m.data},
        audit_counts=Counter(r["event_id"] for r in audit_rows),
        email_counts=Counter(e for e, _ in read_mails(mail_dir)),
        sms_counts=Counter(str(s.get("event_id")) for s in sms),
        dead_letters=[dict(r) for r in dead_rows],
        topic=topic,
        dlq=dlq,
    )


def audit_problems(findings: Findings) -> tuple[list[str], list[str]]:
    """(lost, duplicated): published events missing from the audit log, or there twice."""
    lost = [e for e in findings.published if findings.audit_counts[e] == 0]
    doubled = [e for e in findings.published if findings.audit_counts[e] > 1]
    return lost, doubled


def notification_problems(
    findings: Findings,
) -> tuple[list[str], list[str], list[str]]:
    """(lost, duplicated, dead letters without a reason) per event and channel: each
    notifiable event is delivered once per channel, or is a dead letter that says why."""
    types = {str(m.data["event_id"]): str(m.data.get("type")) for m in findings.topic if m.data}
    lost, doubled, unreasoned = [], [], []
    for event_id in sorted(findings.published):
        if types.get(event_id) not in NOTIFIABLE:
            continue
        for channel, counts in (("email", findings.email_counts), ("sms", findings.sms_counts)):
            if counts[event_id] > 1:
                doubled.append(f"{event_id}/{channel}")
            elif counts[event_id] == 0:
                letters = findings.dead_letter_of(event_id)
                if not letters:
                    lost.append(f"{event_id}/{channel}")
                elif not any(d["reason"] for d in letters):
                    unreasoned.append(f"{event_id}/{channel}")
    return lost, doubled, unreasoned


def websocket_problems(
    findings: Findings, clients: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, duplicated, out of per-task order) for every client's user."""
    order: dict[str, list[str]] = defaultdict(list)
    of_user: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()
    for message in sorted(findings.topic, key=lambda m: (m.partition, m.offset)):
        event_id = str(message.data.get("event_id", ""))
        if not event_id or event_id in seen:
            continue
        seen.add(event_id)
        order[str(message.data.get("task_id"))].append(event_id)
        of_user[str(message.data.get("user_id"))].add(event_id)
    missing, doubled, disordered = [], [], []
    for user, events in clients.items():
        got = Counter(str(e["event_id"]) for e in events)
        missing += [f"{user}:{e}" for e in sorted(of_user[user] - set(got))]
        doubled += [f"{user}:{e}" for e, n in got.items() if n > 1]
        position = {e: i for ids in order.values() for i, e in enumerate(ids)}
        last: dict[str, int] = {}
        first: set[str] = set()
        for event in events:
            task, event_id = str(event["task_id"]), str(event["event_id"])
            if event_id in first:
                continue  # a second copy: counted as duplicated above, not as out of order
            first.add(event_id)
            here = position.get(event_id, -1)
            if here < last.get(task, -1):
                disordered.append(f"{user}:{task}:{event_id}")
            last[task] = max(here, last.get(task, -1))
    return missing, doubled, disordered


def recurring_problems(
    findings: Findings, schedules: list[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """(missing, duplicated) occurrences on the topic: each schedule fires max_count times,
    one event id per occurrence, no occurrence under two ids."""
    missing, doubled = [], []
    for schedule in schedules:
        events = {
            str(m.data["event_id"]): m.data
            for m in findings.topic
            if m.data.get("type") == "task.recurring.triggered"
            and m.data.get("task_id") == schedule["task_id"]
        }
        occurrences = Counter(
            str(d.get("payload", {}).get("occurrence") or d.get("timestamp"))
            for d in events.values()
        )
        doubled += [f"{schedule['task_id']}@{o}" for o, n in occurrences.items() if n > 1]
        if len(events) < schedule["max_count"]:
            missing.append(f"{schedule['task_id']}: {len(events)} of {schedule['max_count']}")
        if len(events) > schedule["max_count"]:
            doubled.append(f"{schedule['task_id']}: {len(events)} events")
    return missing, doubled


def dead_lettered(findings: Findings) -> set[str]:
    return {str(d["event_id"]) for d in findings.dead_letters if d["event_id"]}


def dead_letter_key_problems(findings: Findings) -> list[str]:
    """Every dead letter on the dead-letter topic keeps the partition key of its event."""
    keys = {str(m.data.get("event_id") or m.raw.get("id")): m.key for m in findings.topic}
    problems = []
    for message in findings.dlq:
        event_id = str(message.data.get("event_id") or message.raw.get("id"))
        if event_id in keys and message.key != keys[event_id]:
            problems.append(f"{event_id}: key {message.key!r}, was {keys[event_id]!r}")
    return problems
