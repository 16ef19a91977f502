from __future__ import annotations

import time

import pytest

from taskevents.retry import RetryPolicy

QUICK = RetryPolicy("quick", first_wait_seconds=0.001, max_wait_seconds=0.005)


class Flaky:
    """Fails `failures` times with ConnectionError, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"down (call {self.calls})")
        return "answer"


async def test_retries_the_named_errors_until_the_call_answers() -> None:
    flaky = Flaky(failures=3)
    assert await QUICK.call(ConnectionError, flaky) == "answer"
    assert flaky.calls == 4


async def test_other_errors_are_not_retried() -> None:
    flaky = Flaky(failures=3)
    with pytest.raises(ConnectionError):
        await QUICK.call(KeyError, flaky)
    assert flaky.calls == 1


async def test_gives_up_after_its_attempts_with_the_last_error() -> None:
    flaky = Flaky(failures=10)
    policy = RetryPolicy("three", 0.001, 0.005, max_attempts=3)
    with pytest.raises(ConnectionError, match="call 3"):
        await policy.call(ConnectionError, flaky)
    assert flaky.calls == 3


async def test_gives_up_at_its_deadline() -> None:
    flaky = Flaky(failures=10**6)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await QUICK.within(0.05).call(ConnectionError, flaky)
    assert time.monotonic() - started < 1.0
    assert flaky.calls > 1


async def test_poll_returns_the_first_result_that_holds() -> None:
    results = iter(["held", "held", "free", "held"])

    async def look() -> str:
        return next(results)

    assert await QUICK.poll(look, until=lambda r: r == "free") == "free"


async def test_poll_returns_the_last_result_when_it_gives_up() -> None:
    calls = 0

    async def look() -> int:
        nonlocal calls
        calls += 1
        return calls

    policy = RetryPolicy("two", 0.001, 0.005, max_attempts=2)
    assert await policy.poll(look, until=lambda r: r > 5) == 2


def test_waits_grow_and_are_capped() -> None:
    policy = RetryPolicy("capped", first_wait_seconds=1.0, max_wait_seconds=4.0)
    wait = policy.on_errors(ConnectionError).wait

    class Attempt:
        def __init__(self, number: int) -> None:
            self.attempt_number = number

    waits = [wait(Attempt(n)) for n in range(1, 8)]  # type: ignore[arg-type]
    # The first wait plus up to one first wait of jitter, then doubling, up to the cap.
    assert 1.0 <= waits[0] <= 2.0
    assert 2.0 <= waits[1] <= 3.0
    assert waits[2:] == [4.0] * 5
