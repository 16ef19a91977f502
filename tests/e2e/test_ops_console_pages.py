"""The ops console in a real browser (Debian's Chromium through Playwright) against the
running stack: the development login, then every page with real data — apps with their
daprd, one app's subscriptions, a stopped group's growing lag flagged as a stall, a dead
letter replayed with the page's button and then found in the audit log, the event tail and
a task's path, the Dapr processes. Screenshots land in tests/artifacts/ (docs/images/ holds
copies for docs/console.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.e2e.test_websocket_live_page import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    SECONDS,
    require_chromium,
)
from tests.support.cluster import Service
from tests.support.console import make_dead_letter, running_console, stop_a_consumer_group
from tests.support.stack import RUN_ID, Stack

pytestmark = pytest.mark.e2e

STOPPED_GROUP = f"ops-console-page-stopped-{RUN_ID}"


@pytest.fixture(scope="module")
def console(stack: Stack, cluster: Cluster) -> Iterator[Service]:
    with running_console(stack, cluster, [STOPPED_GROUP]) as service:
        yield service


@pytest_asyncio.fixture
async def page(console: Service) -> AsyncIterator[Page]:
    require_chromium()
    async with async_playwright() as playwright:
        browser: Browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = await browser.new_page(viewport={"width": 1180, "height": 640})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Unauthenticated, a page sends the browser to the login; the development login
        # signs in as an operator and comes back.
        await page.goto(console.url + "/apps")
        await expect(page).to_have_url(f"{console.url}/login?next=%2Fapps", timeout=10 * SECONDS)
        await page.fill("#user", "ada")
        await page.click("#dev-token-button")
        await expect(page).to_have_url(console.url + "/apps", timeout=20 * SECONDS)
        await expect(page.locator("#who")).to_have_text("operator: ada")
        yield page
        assert errors == [], errors
        await browser.close()


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    await page.screenshot(path=str(path))
    assert path.stat().st_size > 0


async def test_apps_and_one_app(page: Page, console: Service, cluster: Cluster) -> None:
    for app_id in cluster.services:
        row = page.locator(f'#apps tr[data-app-id="{app_id}"]')
        await expect(row.locator("td").nth(3)).to_have_text("ready", timeout=20 * SECONDS)
        await expect(row.locator("td").nth(5)).to_contain_text("1.18")
    await screenshot(page, "apps")

    await page.click('#apps a:text-is("audit-log-service")')
    await expect(page).to_have_url(console.url + "/apps/audit-log-service")
    row = page.locator('#subscriptions tr[data-topic="task-events"]')
    await expect(row.locator("td").nth(3)).to_have_text("task-events-dlq", timeout=20 * SECONDS)
    await expect(row.locator("td").nth(5)).to_contain_text("bulk: 1000 messages")
    await expect(page.locator("#resiliency")).to_contain_text("audit-log-resiliency")
    await expect(page.locator("#logs h3").first).to_contain_text("audit-log-service_")
    await screenshot(page, "app")


async def test_pubsub_shows_deliveries_and_flags_a_stopped_group(
    page: Page, console: Service, stack: Stack, publisher: EventPublisher
) -> None:
    await stop_a_consumer_group(stack.kafka_brokers, STOPPED_GROUP)
    await page.goto(console.url + "/pubsub")
    audit = page.locator("#deliveries tr", has_text="audit-log-service")
    await expect(audit.first).to_be_visible(timeout=20 * SECONDS)
    warning = page.locator(f'#stalls p[data-group="{STOPPED_GROUP}"]')
    for n in range(60):  # events keep coming while we look, so the lag keeps growing
        await publisher.publish(
            TaskEvent.create(EventType.TASK_UPDATED, task_id=f"stall-{RUN_ID}-{n}", user_id="u")
        )
        if await warning.count():
            break
        await page.wait_for_timeout(500)
    await expect(warning).to_contain_text("no consumer in the group while its lag grows")
    group = page.locator(f'#groups tr[data-group="{STOPPED_GROUP}"]')
    lag = int(await group.locator("td").nth(3).inner_text())
    assert lag > 0
    await screenshot(page, "pubsub")


async def test_a_dead_letter_is_replayed_from_the_page_into_the_audit_log(
    page: Page, console: Service, stack: Stack
) -> None:
    task_id = f"dlq-page-{RUN_ID}"
    event = await make_dead_letter(stack.kafka_brokers, task_id, f"user-{RUN_ID}")
    await page.goto(console.url + "/dead-letters")
    row = page.locator(f'#letters tr[data-event-id="{event.event_id}"]')
    await expect(row).to_have_count(1, timeout=60 * SECONDS)
    await expect(row.locator("td").nth(2)).to_have_text("task-events")
    await expect(page.locator("#depth")).not_to_have_text("unknown")
    await screenshot(page, "dead-letters")

    await row.locator("button.replay").click()
    await expect(row).to_have_count(0, timeout=20 * SECONDS)  # no longer new
    await page.select_option("#status", "replayed")
    await expect(row.locator("td").nth(7)).to_have_text("replayed", timeout=20 * SECONDS)

    await page.goto(f"{console.url}/events#{task_id}")
    history = page.locator(f'#history tr[data-event-id="{event.event_id}"]')
    for _ in range(60):  # the replay goes through Kafka to the audit log
        if await history.count():
            break
        await page.wait_for_timeout(500)
        await page.click("#search button")
    await expect(history).to_have_count(1)
    await expect(history.locator("td").nth(1)).to_have_text("task.created")


async def test_events_tail_and_a_tasks_path(
    page: Page, console: Service, publisher: EventPublisher
) -> None:
    task_id = f"path-page-{RUN_ID}"
    created = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=f"user-{RUN_ID}",
        payload={"title": "Water the plants", "user_email": f"{RUN_ID}@example.com",
                 "recurrence": {"cron": "0 9 * * *", "timezone": "Europe/Berlin"}},
    )  # fmt: skip
    await publisher.publish(created)
    await page.goto(console.url + "/events")
    tail_row = page.locator(f'#tail tr[data-event-id="{created.event_id}"]')
    await expect(tail_row).to_have_count(1, timeout=60 * SECONDS)
    await tail_row.locator("a").click()
    await expect(page.locator("#history tbody tr")).to_have_count(1, timeout=20 * SECONDS)
    notification = page.locator("#notifications tbody tr")
    for _ in range(60):  # the email and the schedule follow the audit row
        if await notification.count() and await page.locator("#schedules tbody tr").count():
            break
        await page.wait_for_timeout(500)
        await page.click("#search button")
    await expect(notification.first.locator("td").nth(1)).to_have_text("email")
    await expect(page.locator("#schedules tbody tr td").nth(1)).to_have_text("0 9 * * *")
    await screenshot(page, "events")


async def test_control_plane_lists_the_sidecars(
    page: Page, console: Service, cluster: Cluster
) -> None:
    await page.goto(console.url + "/control-plane")
    pid = cluster["audit-log-service"].app.sidecar.pid
    row = page.locator("#processes tr", has_text=str(pid))
    await expect(row.first).to_contain_text("audit-log-service", timeout=20 * SECONDS)
    await screenshot(page, "control-plane")
