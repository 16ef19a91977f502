"""Every wait-and-try-again in the services, on one library (tenacity) and a few named
policies: exponential back-off with jitter (replicas that failed together do not retry in
step), a cap on the wait, and a deadline or none. A loop that runs on a schedule
(polling for due work) is not a retry and does not use these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from taskevents.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between tries and when to give up. `give_up_after_seconds` and
    `max_attempts` of None: keep trying until cancelled (a lifespan's shutdown cancels)."""

    name: str
    first_wait_seconds: float
    max_wait_seconds: float
    give_up_after_seconds: float | None = None
    max_attempts: int | None = None

    def within(self, seconds: float) -> RetryPolicy:
        """The same policy with a deadline of its own (from settings, say)."""
        return replace(self, give_up_after_seconds=seconds)

    def _stop(self) -> stop_base:
        stop: stop_base = stop_never
        if self.give_up_after_seconds is not None:
            stop = stop_after_delay(self.give_up_after_seconds)
        if self.max_attempts is not None:
            stop = stop | stop_after_attempt(self.max_attempts)
        return stop

    def _wait(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(
            multiplier=self.first_wait_seconds,
            max=self.max_wait_seconds,
            jitter=self.first_wait_seconds,
        )

    def on_errors(self, errors: ExceptionTypes) -> AsyncRetrying:
        """Retry while the block raises one of `errors`; the last one is raised when the
        policy gives up. Use as `async for attempt in policy.on_errors(E): with attempt: …`."""
        return AsyncRetrying(
            stop=self._stop(),
            wait=self._wait(),
            retry=retry_if_exception_type(errors),
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def call(self, errors: ExceptionTypes, function: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self.on_errors(errors):
            with attempt:
                return await function()
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def poll(self, function: Callable[[], Awaitable[T]], *, until: Callable[[T], bool]) -> T:
        """Call until `until(result)` holds or the policy gives up; returns the last result
        either way (the caller decides what a result that never got there means)."""

        def last_result(state: RetryCallState) -> Any:
            assert state.outcome is not None
            return state.outcome.result()

        async def attempt() -> T:
            # tenacity awaits only what is a coroutine function itself, not any callable
            # that returns an awaitable (a lambda, a partial).
            return await function()

        retrying = AsyncRetrying(
            stop=self._stop(),
            wait=self._wait(),
            retry=retry_if_result(lambda result: not until(result)),
            retry_error_callback=last_result,
        )
        result: T = await retrying(attempt)
        return result

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "retrying",
            policy=self.name,
            attempt=state.attempt_number,
            retry_in_seconds=round(state.upcoming_sleep, 2),
            error=f"{type(error).__name__}: {error}" if error is not None else None,
        )


# A dependency a service needs before it can do its work (the database for migrations, the
# sidecar for a secret): keep trying, calmly, until it answers or the service stops.
UNTIL_DEPENDENCY_ANSWERS = RetryPolicy(
    "until the dependency answers", first_wait_seconds=0.5, max_wait_seconds=30.0
)
# The local sidecar starting beside the app: it answers within seconds.
SIDECAR_STARTING = RetryPolicy(
    "sidecar starting", first_wait_seconds=0.1, max_wait_seconds=1.0, give_up_after_seconds=60.0
)
# Something only the local sidecar hands out (a secret): it answers once the app listens,
# so look often and never give up while the service runs.
SIDECAR_ANSWERS = RetryPolicy(
    "until the sidecar answers", first_wait_seconds=0.2, max_wait_seconds=2.0
)
# Another replica holds what we want for a moment (a notification claim): look again soon.
HELD_ELSEWHERE = RetryPolicy(
    "held elsewhere", first_wait_seconds=0.05, max_wait_seconds=0.5, give_up_after_seconds=5.0
)
