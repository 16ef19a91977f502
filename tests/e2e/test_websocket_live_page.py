"""The live page in a real browser (Debian's Chromium, driven by Playwright through its
executable path): it connects with a development token, shows events published during
the test, survives a restart of the service by resuming without a gap or a duplicate,
and leaves a screenshot in tests/artifacts/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from taskevents.events import EventType, TaskEvent
from tests.support.authorization import bearer
from tests.support.live_stream import LiveStack, live_stack
from tests.support.stack import ROOT, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "tests" / "artifacts"
SECONDS = 1000  # Playwright counts milliseconds


@pytest_asyncio.fixture(scope="module")
async def live(stack: Stack) -> AsyncIterator[LiveStack]:
    async with live_stack(stack, [({}, {})]) as running:
        yield running


def require_chromium() -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash scripts/chromium.sh`"


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


def task_event(user_id: str, task_id: str, title: str, type_: EventType) -> TaskEvent:
    return TaskEvent.create(type_, task_id=task_id, user_id=user_id, payload={"title": title})


async def expect_rows(page: Page, events: list[TaskEvent]) -> None:
    for event in events:
        row = page.locator(f'tr[data-event-id="{event.event_id}"]')
        await expect(row).to_have_count(1, timeout=60 * SECONDS)
        await expect(row.locator("td").nth(3)).to_have_text(event.payload["title"])


async def test_the_live_page_streams_and_resumes_across_a_restart(
    live: LiveStack, browser: Browser, unique: str
) -> None:
    user, task = f"page-{unique}", f"task-{unique}"
    kinds = [EventType.TASK_CREATED, EventType.TASK_UPDATED, EventType.TASK_COMPLETED]
    before = [task_event(user, task, f"Live {n}", kinds[n]) for n in range(3)]
    during = [task_event(user, task, f"Missed {n}", EventType.TASK_UPDATED) for n in range(2)]
    after = [task_event(user, task, "After the restart", EventType.TASK_DELETED)]
    service = live[0]
    page = await browser.new_page(viewport={"width": 1000, "height": 560})
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))

    await page.goto(service.url + "/")
    await page.fill("#user", user)
    await page.click("#dev-token-button")
    await expect(page.locator("#token")).not_to_have_value("", timeout=30 * SECONDS)
    await page.click("#connect-button")
    state = page.locator("#state")
    await expect(state).to_have_attribute("data-state", "open", timeout=30 * SECONDS)
    await expect(state).to_have_text(f"connected as {user}")

    for event in before:
        await live.publisher.publish(event)
    await expect_rows(page, before)

    # The service restarts (sidecar and app); the page sees a going-away close and keeps
    # trying; what is published meanwhile lands in the audit log.
    live.stop(0)
    await expect(state).not_to_have_attribute("data-state", "open", timeout=30 * SECONDS)
    for event in during:
        await live.publisher.publish(event)

    async def stored() -> bool:
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"{live.audit.service.url}/audit/events",
                params={"user_id": user},
                headers=bearer(user),
            )
        ids = {r["event_id"] for r in response.json()["items"]}
        return {e.event_id for e in during} <= ids

    await eventually(stored, timeout=60, what="the missed events in the audit log")
    live.start_again(0)
    await expect(state).to_have_attribute("data-state", "open", timeout=90 * SECONDS)
    resume = page.locator("#resume")
    await expect(resume).to_have_attribute("data-status", "complete", timeout=30 * SECONDS)
    await expect_rows(page, during)
    for event in after:
        await live.publisher.publish(event)
    await expect_rows(page, after)

    # Every event once, newest on top.
    ids = await page.locator("#events tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    assert ids == [e.event_id for e in reversed([*before, *during, *after])]
    assert await page.locator("#events tr.replayed").count() == len(during)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "websocket-live-page.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0
    assert script_errors == []
