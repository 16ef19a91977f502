"""What the console reads, as small protocols: the sidecars, the broker, the services'
APIs (through the console's own sidecar) and the local process table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ops_console.lag import LagSample
from ops_console.settings import SidecarTarget


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer of another service: status and parsed body (or its text)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ServiceUnavailableError(Exception):
    """The service (or the sidecar in front of it) does not answer."""


class Sidecars(Protocol):
    async def get(self, url: str, *, timeout: float | None = None) -> Answer: ...

    async def metrics_text(self, target: SidecarTarget) -> str: ...


class Broker(Protocol):
    async def lag(self, groups: Sequence[str] | None, app_ids: Iterable[str]) -> LagSample: ...

    async def depth(self, topic: str) -> int: ...


class Invoker(Protocol):
    async def invoke(
        self,
        app_id: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        authorization: str | None = None,
        operator: str | None = None,
        json: Any = None,
    ) -> Answer: ...
