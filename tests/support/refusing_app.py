"""A test subscriber that can never process the events it is given: it answers RETRY for
every event whose task id starts with `poison-` and counts the attempts, so a test can
watch Dapr's bounded retries end in the dead-letter topic. Run as
`python -m tests.support.refusing_app PORT`."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from taskevents.cloudevents import parse_cloud_event
from taskevents.status import DaprStatus

ROUTE = "/events/poison"


def create_app() -> FastAPI:
    app = FastAPI()
    attempts: Counter[str] = Counter()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.post(ROUTE)
    async def deliver(request: Request) -> dict[str, str]:
        event = parse_cloud_event(await request.body()).task_event()
        if not event.task_id.startswith("poison-"):
            return {"status": DaprStatus.SUCCESS.value}
        attempts[event.event_id] += 1
        return {"status": DaprStatus.RETRY.value}

    @app.get("/attempts/{event_id}")
    async def count(event_id: str) -> dict[str, Any]:
        return {"event_id": event_id, "attempts": attempts[event_id]}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
