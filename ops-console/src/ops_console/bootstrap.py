"""The console's wiring: the HTTP clients of the sidecars and of service invocation, the
broker, the process table and the sampler, built in one place and closed in reverse
order; and the dependencies the routes take from them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ops_console.adapters.http import DaprInvoker, HttpSidecars
from ops_console.adapters.kafka import KafkaBroker
from ops_console.adapters.procfs import ProcessTable
from ops_console.adapters.run_file import targets_from_run_file
from ops_console.ports import Invoker, Sidecars
from ops_console.sampler import Sampler
from ops_console.settings import Settings, SidecarTarget
from taskevents.auth import TokenVerifier, start_verifier
from taskevents.background import in_background
from taskevents.kafka import KafkaSettings
from taskevents.web import ReadinessCheck, RunningServices, services_of, sidecar_check


@dataclass(frozen=True, slots=True)
class Services(RunningServices):
    settings: Settings
    targets: tuple[SidecarTarget, ...]
    sidecars: Sidecars
    invoker: Invoker
    sampler: Sampler
    processes: ProcessTable
    tokens: TokenVerifier
    sidecar: ReadinessCheck

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return {"sidecar": self.sidecar}

    def token_verifier(self) -> TokenVerifier:
        return self.tokens


Bootstrap = Callable[[Settings], AbstractAsyncContextManager[Services]]


def watched_targets(settings: Settings) -> tuple[SidecarTarget, ...]:
    if settings.run_file is not None:
        return tuple(targets_from_run_file(settings.run_file))
    return tuple(settings.targets)


@asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Services]:
    api_token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    targets = watched_targets(settings)
    async with contextlib.AsyncExitStack() as stack:
        sidecars = HttpSidecars(
            timeout_seconds=settings.request_timeout_seconds, dapr_api_token=api_token
        )
        stack.push_async_callback(sidecars.close)
        invoker = DaprInvoker(
            dapr_http_port=settings.dapr_http_port,
            timeout_seconds=settings.request_timeout_seconds * 3,
            dapr_api_token=api_token,
        )
        stack.push_async_callback(invoker.close)
        broker = KafkaBroker(
            KafkaSettings(brokers=settings.kafka_brokers),
            topics=[settings.topic, settings.dead_letter_topic],
            timeout_seconds=settings.request_timeout_seconds,
        )
        stack.push_async_callback(broker.close)
        sampler = Sampler(
            sidecars=sidecars,
            broker=broker,
            targets=targets,
            groups=settings.consumer_groups,
            dead_letter_topic=settings.dead_letter_topic,
            interval_seconds=settings.sample_seconds,
        )
        in_background(stack, sampler.run(), name="sampler")
        tokens = start_verifier(settings, stack)
        yield Services(
            settings=settings,
            targets=targets,
            sidecars=sidecars,
            invoker=invoker,
            sampler=sampler,
            processes=ProcessTable(settings.proc_root),
            tokens=tokens,
            sidecar=sidecar_check(settings.dapr_http_port),
        )


def _services(connection: HTTPConnection) -> Services:
    return services_of(connection, Services)


ServicesDep = Annotated[Services, Depends(_services)]
