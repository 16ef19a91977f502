"""The JSON the pages fetch; every route asks for an operator's bearer token, which the
calls to the other services carry on (they decide what an operator may do there)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from ops_console import views
from ops_console.bootstrap import Services, ServicesDep
from ops_console.ports import Answer, ServiceUnavailableError
from taskevents.auth import Operator

IdParam = Annotated[str, Path(min_length=1, max_length=200)]
LetterId = Annotated[int, Path(ge=1)]


def _authorization(request: Request) -> str | None:
    return request.headers.get("authorization")


async def _call(
    services: Services,
    request: Request,
    caller: Operator,
    app_id: str,
    method: str,
    path: str,
    params: dict[str, str | int] | None = None,
) -> Answer:
    try:
        return await services.invoker.invoke(
            app_id,
            method,
            path,
            params=params,
            authorization=_authorization(request),
            operator=caller.user_id,
        )
    except ServiceUnavailableError as error:
        raise HTTPException(502, f"{app_id} does not answer: {error}") from None


def _passed_on(answer: Answer, app_id: str) -> Any:
    if not answer.ok:
        detail = answer.body.get("detail") if isinstance(answer.body, dict) else answer.body
        raise HTTPException(answer.status if answer.status < 500 else 502, f"{app_id}: {detail}")
    return answer.body


def data_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["console"])

    @router.get("/apps", summary="Every app: health, readiness, instances, daprd version")
    async def apps(_: Operator, services: ServicesDep) -> list[dict[str, Any]]:
        return await views.apps_overview(services.targets, services.sidecars, services.processes)

    @router.get("/apps/{app_id}", summary="One app's sidecar: metadata, resiliency, logs")
    async def app(app_id: IdParam, _: Operator, services: ServicesDep) -> dict[str, Any]:
        for target in services.targets:
            if target.app_id == app_id:
                return await views.app_detail(
                    target, services.sidecars, services.processes, services.settings.log_dir
                )
        raise HTTPException(404, f"no watched app {app_id!r}")

    @router.get("/pubsub", summary="Delivery rates per topic and app, lag per group")
    async def pubsub(_: Operator, services: ServicesDep) -> dict[str, Any]:
        return views.pubsub_view(services.sampler)

    @router.get("/dead-letters", summary="The dead-letter topic's depth and the newest letters")
    async def dead_letters(
        request: Request,
        caller: Operator,
        services: ServicesDep,
        status: Annotated[str | None, Query(pattern="^(new|replayed|discarded)$")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        audit = services.settings.audit_app_id
        answer = await _call(services, request, caller, audit, "GET", "audit/dead-letters", params)
        page = _passed_on(answer, audit)
        return {
            "depth": services.sampler.observed.dead_letter_depth,
            "topic": services.settings.dead_letter_topic,
            "items": page.get("items", []),
        }

    # Replay and discard: the audit log's own routes, as the operator who clicked.
    for method, suffix, summary in [
        ("POST", "/replay", "Replay a dead letter"),
        ("DELETE", "", "Discard a dead letter"),
    ]:
        router.add_api_route(
            "/dead-letters/{letter_id}" + suffix,
            _letter_action(method, suffix),
            methods=[method],
            summary=summary,
        )

    @router.get("/events", summary="The newest events the audit log holds")
    async def events(
        request: Request,
        caller: Operator,
        services: ServicesDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> Any:
        audit = services.settings.audit_app_id
        answer = await _call(
            services, request, caller, audit, "GET", "audit/events", {"limit": limit}
        )
        return _passed_on(answer, audit)

    @router.get("/tasks/{task_id}", summary="Where a task's events went")
    async def task_path(
        task_id: IdParam, request: Request, caller: Operator, services: ServicesDep
    ) -> dict[str, Any]:
        settings = services.settings
        audit = settings.audit_app_id
        history = _passed_on(
            await _call(services, request, caller, audit, "GET", f"audit/tasks/{task_id}/history"),
            audit,
        )
        items = history.get("items", []) if isinstance(history, dict) else history
        users = sorted({i["user_id"] for i in items if isinstance(i, dict) and i.get("user_id")})
        event_ids = {i.get("event_id") for i in items if isinstance(i, dict)}

        async def sent(user_id: str) -> Any:
            return await _call(
                services, request, caller, settings.notification_app_id, "GET",
                "notifications", {"user_id": user_id},
            )  # fmt: skip

        async def scheduled(user_id: str) -> Any:
            return await _call(
                services, request, caller, settings.recurring_app_id, "GET",
                "schedules", {"user_id": user_id},
            )  # fmt: skip

        notifications, schedules = await asyncio.gather(
            _gathered([sent(u) for u in users], lambda i: i.get("event_id") in event_ids),
            _gathered([scheduled(u) for u in users], lambda i: i.get("task_id") == task_id),
        )
        return {
            "task_id": task_id,
            "history": items,
            "notifications": notifications,
            "schedules": schedules,
        }

    @router.get("/control-plane", summary="The Dapr processes of this machine")
    async def control_plane(_: Operator, services: ServicesDep) -> dict[str, Any]:
        found = await asyncio.to_thread(services.processes.dapr_processes)
        return {"processes": [p.view() for p in found]}

    return router


def _letter_action(method: str, suffix: str) -> Callable[..., Awaitable[Any]]:
    async def act(
        letter_id: LetterId, request: Request, caller: Operator, services: ServicesDep
    ) -> Any:
        audit = services.settings.audit_app_id
        path = f"audit/dead-letters/{letter_id}{suffix}"
        return _passed_on(await _call(services, request, caller, audit, method, path), audit)

    return act


async def _gathered(calls: list[Any], keep: Any) -> dict[str, Any]:
    """Items of every answer that `keep` accepts, or why the service could not say."""
    items: list[Any] = []
    problems: list[str] = []
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(outcome, HTTPException):
            problems.append(str(outcome.detail))
        elif isinstance(outcome, BaseException):
            raise outcome
        elif not outcome.ok:
            problems.append(f"answered {outcome.status}")
        else:
            body = outcome.body
            if isinstance(body, dict):  # notifications: items; schedules: schedules
                body = body.get("items", body.get("schedules", []))
            listed = body if isinstance(body, list) else []
            items += [i for i in listed if isinstance(i, dict) and keep(i)]
    return {"items": items, "problems": problems}
