"""The whole system under every fault at once (issue 14 §2): all four services with two
replicas each on the suite's own Kafka, Postgres and SMTP sink, a sustained demo stream,
recurring schedules firing, WebSocket clients reconnecting with resume and an SMS sink,
while a seeded schedule kills apps and sidecars, restarts the broker, stops the database and
the SMTP server, rebalances notification-service mid-retry and drops a poison message on one
partition. The independent checker (checker.py) then says what was lost or doubled; the
table per fault is saved under bench/results/.

The short run is part of `make test`; `--soak-minutes 30` repeats the schedule for that long
(SMTP then down for 2 minutes each round). Run it under the shared lock, e.g.
`flock /tmp/taskevents-integration.lock .venv/bin/pytest tests/faults -q -s`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.faults import checker
from tests.faults.infra import SmsSink, make_infra, remove_infra, suite_stack
from tests.faults.report import write_report
from tests.faults.schedule import RECOVERY_BOUND_SECONDS, FaultRecord, Faults, fault_names
from tests.faults.system import FIRST_REPLICA, ROLES, System
from tests.faults.workload import (
    LagMonitor,
    LagSample,
    Stream,
    WsClient,
    create_schedules,
    end_offsets,
    refused_notification,
    replay_dead_letters,
    set_preferences,
)
from tests.support.kafka import wait_until_consuming
from tests.support.stack import RUN_ID, STATE
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

USERS = 8
WS_USERS = 3
RATE = 4.0  # events per second
SCHEDULES = 2
SCHEDULE_INTERVAL = 4
SHORT_SMTP_DOWN = 10.0
SOAK_SMTP_DOWN = 120.0
DRAIN_SECONDS = 60.0
PAUSE_BETWEEN_FAULTS = 1.0


@dataclass
class Run:
    seed: int
    soak_minutes: float
    findings: checker.Findings
    records: list[FaultRecord]
    published: list[Any]
    clients: dict[str, list[dict[str, Any]]]
    resumes: dict[str, list[dict[str, Any]]]
    schedules: list[dict[str, Any]]
    samples: list[LagSample]
    dead_lettered: set[str]  # event ids with a dead letter before the replay
    refused: set[str]  # dead-lettered on purpose: an address notification-service refuses
    replayed: int
    poison_partition: int
    seconds: float


@pytest_asyncio.fixture(scope="module")
async def run(request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    soak = float(request.config.getoption("--soak-minutes"))
    given = request.config.getoption("--fault-seed")
    seed = int(given) if given is not None else random.SystemRandom().randrange(10**6)
    log.warning("seed %d (replay: --fault-seed %d), soak %g min", seed, seed, soak)
    started = time.time()
    # The broker restart makes every Kafka client of the harness log each failed reconnect.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    prefix = f"fu{RUN_ID}"
    infra = make_infra()
    sms = SmsSink()
    sms.start()
    system: System | None = None

    async def look() -> checker.Findings:
        """What the checker sees now."""
        return await checker.gather(
            brokers=infra.brokers,
            database_url=infra.database_url,
            mail_dir=infra.mail_dir,
            sms=sms.received,
            prefix=prefix,
        )

    try:
        await asyncio.to_thread(infra.up)
        stack = await asyncio.to_thread(
            suite_stack, infra, STATE / "test-logs" / f"faults-{RUN_ID}"
        )
        system = System(stack, sms.url)
        await asyncio.to_thread(system.start_publisher)
        for role in ROLES:
            for number in (FIRST_REPLICA, FIRST_REPLICA + 1):
                await asyncio.to_thread(system.start, role, number)
        # Every group has committed on every partition, as in a system that has been running:
        # a websocket replica's group that has not (new, initialOffset newest) would skip what
        # a partition gets while its sidecar restarts (reported, not this suite's subject).
        await wait_until_consuming(infra.brokers, system.groups, timeout=180, every_partition=True)
        await set_preferences(system, prefix, USERS)
        schedule_prefix = f"{prefix}r"
        await set_preferences(system, schedule_prefix, SCHEDULES)
        names = fault_names(seed, soak=bool(soak))
        log.warning("schedule: %s", ", ".join(names))
        # Enough occurrences to fire through the whole short run.
        occurrences = 30 if not soak else int(soak * 60 / SCHEDULE_INTERVAL)
        schedules = await create_schedules(
            system, schedule_prefix, SCHEDULES, SCHEDULE_INTERVAL, occurrences
        )
        clients = {f"{prefix}-{i}": WsClient(system, f"{prefix}-{i}") for i in range(WS_USERS)}
        # A user without preferences, whose one notification is refused for good.
        refused_user = f"{prefix}-refused"
        clients[refused_user] = WsClient(system, refused_user)
        client_tasks = [asyncio.create_task(c.run()) for c in clients.values()]
        for client in clients.values():
            await asyncio.wait_for(client.connected_once.wait(), 60)
        monitor = LagMonitor(infra.brokers, system)
        stream = Stream(system, USERS, seed, RATE, prefix)
        background = [asyncio.create_task(stream.run()), asyncio.create_task(monitor.run())]
        faults = Faults(
            infra,
            system,
            monitor,
            seed,
            SOAK_SMTP_DOWN if soak else SHORT_SMTP_DOWN,
            poison_partition=random.Random(seed).randrange(6),
        )
        deadline = time.monotonic() + soak * 60
        round_ = 0
        while True:
            for name in names:
                await faults.strike(name)
                for task in background:
                    if task.done():
                        task.result()  # raise what stopped the stream
                await asyncio.sleep(PAUSE_BETWEEN_FAULTS)  # the stream flows between faults
                # Now and then a client is cut by the network rather than by a fault (one of
                # the stream's users: the refused user's client has nothing to resume yet).
                await random.Random(seed + round_).choice(list(clients.values())[:WS_USERS]).cut()
            round_ += 1
            if time.monotonic() >= deadline:
                break
            names = fault_names(seed + round_, soak=True)
        stream.stopped.set()
        await background[0]
        refused = await refused_notification(system, clients[refused_user])

        # Whatever was dead-lettered meanwhile comes back with one replay by an operator.
        targets = await end_offsets(infra.brokers)
        with contextlib.suppress(TimeoutError):  # the bound is checked per fault
            await eventually(
                lambda: monitor.caught_up(targets), timeout=RECOVERY_BOUND_SECONDS, what="catch-up"
            )
        before_replay = await look()
        replayed = await replay_dead_letters(system)
        log.warning("replayed %d dead letters", replayed)

        # Drain: every occurrence fired and every consumer caught up, within a bound.
        async def drained() -> bool:
            found = await look()
            audit_lost, _ = checker.audit_problems(found)
            occurrences_missing, _ = checker.recurring_problems(found, schedules)
            ws_missing, _, _ = checker.websocket_problems(
                found, {u: c.events for u, c in clients.items()}
            )
            note_lost, _, _ = checker.notification_problems(found)
            return not (audit_lost or occurrences_missing or ws_missing or note_lost)

        with contextlib.suppress(TimeoutError):  # the tests below say what is missing
            await eventually(drained, timeout=DRAIN_SECONDS, interval=3.0, what="drain")
        monitor.stopped.set()
        await background[1]
        for client in clients.values():
            client.stopped.set()
            await client.cut()
        await asyncio.gather(*client_tasks)
        findings = await look()
        result = Run(
            seed=seed,
            soak_minutes=soak,
            findings=findings,
            records=faults.records,
            published=stream.published,
            clients={u: c.events for u, c in clients.items()},
            resumes={u: c.resumes for u, c in clients.items()},
            schedules=schedules,
            samples=monitor.samples,
            dead_lettered=checker.dead_lettered(before_replay),
            refused={refused},
            replayed=replayed,
            poison_partition=faults.poison_partition,
            seconds=time.time() - started,
        )
        path = write_report(result)
        log.warning("results in %s", path)
        yield result
    finally:
        if system is not None:
            await asyncio.to_thread(system.stop)
        sms.stop()
        await asyncio.to_thread(infra.down)
        remove_infra(infra)


def test_every_published_event_is_in_the_audit_log_exactly_once(run: Run) -> None:
    lost, doubled = checker.audit_problems(run.findings)
    assert run.findings.published, "nothing was published"
    assert not lost, f"{len(lost)} events missing from the audit log: {lost[:10]}"
    assert not doubled, f"{len(doubled)} events in the audit log twice: {doubled[:10]}"


def test_every_notifiable_event_is_delivered_once_per_channel_or_dead_lettered(run: Run) -> None:
    lost, doubled, _ = checker.notification_problems(run.findings)
    doubled = [d for d in doubled if d.split("/")[0] not in run.dead_lettered]
    assert not lost, f"{len(lost)} notifications neither sent nor dead-lettered: {lost[:10]}"
    assert not doubled, f"{len(doubled)} notifications sent twice: {doubled[:10]}"


def test_a_replayed_dead_letter_is_not_notified_twice(run: Run) -> None:
    _, doubled, _ = checker.notification_problems(run.findings)
    again = [d for d in doubled if d.split("/")[0] in run.dead_lettered]
    assert not again, f"{len(again)} notifications sent again after the replay: {again[:10]}"


def test_every_dead_letter_says_why(run: Run) -> None:
    letters = run.findings.dead_letters
    assert letters, "the poison message at least must be a dead letter"
    unreasoned = [d["event_id"] for d in letters if not d["reason"]]
    assert not unreasoned, f"{len(unreasoned)} dead letters without a reason: {unreasoned[:10]}"


def test_an_outage_of_seconds_dead_letters_nothing(run: Run) -> None:
    """SMTP down ~10 s and Postgres stopped for 20 s are ridden out: nothing but the poison
    message becomes a dead letter (the replay at the end is for what can never succeed)."""
    poison = {str(r.detail["key"]) for r in run.records if r.name == "poison"}
    needless = sorted(run.dead_lettered - poison - run.refused)
    assert not needless, f"{len(needless)} events dead-lettered by an outage: {needless[:10]}"


@pytest.mark.xfail(
    strict=False,  # seed-dependent: 1 of the last 3 runs (2 frames twice, seed in the log)
    reason="open hole (issue 14): a client resuming on another websocket replica is exact "
    "only for its last event's partition; other partitions' events near the cut may repeat",
)
def test_every_websocket_client_got_its_events_once_in_task_order(run: Run) -> None:
    missing, doubled, disordered = checker.websocket_problems(run.findings, run.clients)
    doubled = [d for d in doubled if d.split(":")[1] not in run.dead_lettered]
    assert not missing, f"{len(missing)} events never reached their client: {missing[:10]}"
    assert not doubled, f"{len(doubled)} events reached a client twice: {doubled[:10]}"
    assert not disordered, f"{len(disordered)} events out of task order: {disordered[:10]}"


def test_a_replayed_dead_letter_reaches_no_websocket_client_twice(run: Run) -> None:
    """A replay is for the app whose dead letter it is: notification-service's letter of an
    event every client had (the refused address, its client reconnected since) reaches no
    client a second time."""
    _, doubled, _ = checker.websocket_problems(run.findings, run.clients)
    replayed = [d for d in doubled if d.split(":")[1] in run.dead_lettered]
    assert run.replayed, "nothing was replayed"
    assert not replayed, f"{len(replayed)} replayed events reached a client twice: {replayed[:10]}"


def test_every_recurring_occurrence_is_published_exactly_once(run: Run) -> None:
    missing, doubled = checker.recurring_problems(run.findings, run.schedules)
    assert not missing, f"occurrences missing: {missing}"
    assert not doubled, f"occurrences published twice: {doubled}"


def test_consumers_catch_up_within_the_bound_after_every_fault(run: Run) -> None:
    slow = {
        r.name: round(r.recovery_seconds, 1)
        for r in run.records
        if r.recovery_seconds > RECOVERY_BOUND_SECONDS
    }
    assert not slow, f"consumers not caught up within {RECOVERY_BOUND_SECONDS:.0f}s: {slow}"


def test_the_poison_message_stalls_no_other_partition(run: Run) -> None:
    poison = [r for r in run.records if r.name == "poison"]
    assert poison
    for record in poison:
        window = [
            s
            for s in run.samples
            if record.started <= s.at <= (record.recovered or record.ended + 60)
            and s.partition != run.poison_partition
        ]
        worst = max((s.lag for s in window), default=0)
        assert worst <= RATE * 30, f"a partition without the poison lagged {worst} events"


def test_a_dead_letter_keeps_its_partition_key(run: Run) -> None:
    problems = checker.dead_letter_key_problems(run.findings)
    poison_keys = {str(r.detail["key"]) for r in run.records if r.name == "poison"}
    on_dlq = {m.key for m in run.findings.dlq}
    assert poison_keys <= on_dlq, (
        f"poison messages not on the dead-letter topic: {poison_keys - on_dlq}"
    )
    assert not problems, f"dead letters with another key: {problems[:10]}"
