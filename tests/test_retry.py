"""Retry: attempts, classification, backoff timing, deadlines, hints, budgets, the three idioms.

Virtual time on asyncio (looptime) and trio (MockClock); tests that need no virtual time also run on
uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    OperationContext,
    Pipeline,
    Rejected,
    Timeout,
)
from dwcp_resilience.policies.backoff import ConstantBackoff, ExponentialBackoff, LinearBackoff
from dwcp_resilience.policies.retry import (
    TRANSIENT_ERRORS,
    Retry,
    RetryEvent,
    RetryGaveUp,
    RetryScheduled,
)
from dwcp_resilience.policies.retry_budget import RetryBudget
from dwcp_resilience.policies.retry_core import BACKOFF_BUCKETS
from dwcp_resilience.testing import RecordingListener, run_virtual

pytestmark = pytest.mark.anyio

NO_JITTER = ExponentialBackoff(initial_delay=0.1, max_delay=10.0, multiplier=2.0, jitter=False)


class Flaky:
    """An async callee: raises ``errors[i]`` on call i while there are errors left, then returns
    ``result``. Records the virtual time at which every attempt started."""

    def __init__(
        self,
        errors: list[BaseException] | None = None,
        result: Any = "ok",
        duration: float = 0.0,
    ) -> None:
        self.errors = list(errors or [])
        self.result = result
        self.duration = duration
        self.starts: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.starts)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.starts.append(anyio.current_time())
        if self.duration:
            await anyio.sleep(self.duration)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def always(exc: Callable[[], BaseException], n: int = 100) -> list[BaseException]:
    return [exc() for _ in range(n)]


def failures(retry: Retry) -> dict[str, int]:
    return {k: v for k, v in retry.statistics().failures if v}


# --- the basic contract -------------------------------------------------------------------------


async def test_success_on_the_first_attempt(anyio_backend: Any) -> None:
    retry = Retry("r")
    flaky = Flaky(result=42)
    assert await retry.call(flaky, 1, key="x") == 42
    stats = retry.statistics()
    assert (stats.calls, stats.successes, stats.attempts, stats.retries) == (1, 1, (1, 0, 0, 0), 0)
    assert stats.total_failures == 0 and stats.success_rate == 1.0


@pytest.mark.virtual_time
async def test_retries_until_success_with_exact_backoff(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=NO_JITTER)
    flaky = Flaky([ConnectionError(), TimeoutError()])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 0.1, 0.3]
    stats = retry.statistics()
    assert (stats.calls, stats.successes, stats.attempts, stats.retries) == (1, 1, (1, 1, 1, 0), 2)
    assert stats.success_rate == pytest.approx(1 / 3)


@pytest.mark.virtual_time
async def test_giving_up_reraises_the_last_exception_with_a_note(anyio_backend: Any) -> None:
    errors: list[BaseException] = [ConnectionError(f"e{i}") for i in range(4)]
    last = errors[-1]
    retry = Retry("peer", max_retries=3, backoff=NO_JITTER)
    flaky = Flaky(errors)
    with pytest.raises(ConnectionError) as info:
        await retry.call(flaky)
    assert info.value is last
    assert info.value.__notes__ == ["Retry 'peer' gave up after 4 attempts (exhausted)"]
    assert flaky.calls == 4
    assert failures(retry) == {"exhausted": 1}
    assert retry.statistics().attempts == (1, 1, 1, 1)


async def test_max_retries_zero_means_one_attempt(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=0)
    with pytest.raises(ConnectionError) as info:
        await retry.call(Flaky([ConnectionError()]))
    assert info.value.__notes__ == ["Retry 'r' gave up after 1 attempt (exhausted)"]
    assert retry.max_attempts == 1 and retry.max_retries == 0


async def test_default_retry_on_is_transient_errors_only(anyio_backend: Any) -> None:
    """A programming error is not retried by default; its note says so."""
    assert (OSError,) == TRANSIENT_ERRORS
    retry = Retry("r")
    flaky = Flaky([KeyError("k")])
    with pytest.raises(KeyError) as info:
        await retry.call(flaky)
    assert flaky.calls == 1
    assert "not_retryable" in info.value.__notes__[0]
    assert failures(retry) == {"not_retryable": 1}


@pytest.mark.virtual_time
async def test_go_bug_the_retryable_list_really_restricts(anyio_backend: Any) -> None:
    """The Go isRetryable returned true for errors *not* on the list; here the list restricts."""

    class Listed(Exception):
        pass

    class Other(Exception):
        pass

    retry = Retry("r", retry_on=(Listed,), backoff=NO_JITTER)
    listed = Flaky([Listed(), Listed()])
    assert await retry.call(listed) == "ok"
    assert listed.calls == 3
    other = Flaky([Other()])
    with pytest.raises(Other):
        await retry.call(other)
    assert other.calls == 1


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    "retry_on",
    [ValueError, (KeyError, ValueError), lambda exc: "again" in str(exc)],
    ids=["type", "tuple", "predicate"],
)
async def test_retry_on_forms(anyio_backend: Any, retry_on: Any) -> None:
    retry = Retry("r", retry_on=retry_on, backoff=NO_JITTER)
    flaky = Flaky([ValueError("again")])
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == 2


async def test_a_raising_predicate_means_no_retry(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in predicate")

    retry = Retry("r", retry_on=broken)
    flaky = Flaky([ConnectionError()])
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"), pytest.raises(ConnectionError):
        await retry.call(flaky)
    assert flaky.calls == 1
    assert "retry_on predicate" in caplog.text


@pytest.mark.virtual_time
async def test_r40_exception_groups(anyio_backend: Any) -> None:
    """Type matchers look inside groups; groups of non-Exceptions are never caught."""
    retry = Retry("r", retry_on=ConnectionError, backoff=NO_JITTER)
    flaky = Flaky([ExceptionGroup("g", [ConnectionError()])])
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == 2
    group = BaseExceptionGroup("g", [KeyboardInterrupt()])
    only_base = Flaky([group])
    with pytest.raises(BaseExceptionGroup) as info:
        await Retry("r", retry_on=lambda e: True).call(only_base)
    assert info.value is group and only_base.calls == 1


# --- T4 / R08: BaseExceptions are never retried ----------------------------------------------


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_t4_base_exceptions_propagate_unchanged_after_one_attempt(
    anyio_backend: Any, kind: type[BaseException]
) -> None:
    exc = kind()
    retry = Retry("r", retry_on=lambda e: True, backoff=NO_JITTER)
    flaky = Flaky([exc])
    with pytest.raises(kind) as info:
        await retry.call(flaky)
    assert info.value is exc
    assert not getattr(exc, "__notes__", None)
    assert flaky.calls == 1
    stats = retry.statistics()
    assert stats.calls == 1 and stats.successes == 0 and stats.total_failures == 0

    decorated = retry(Flaky([exc]))
    with pytest.raises(kind):
        await decorated()

    block = Flaky([exc])
    with pytest.raises(kind):
        async for attempt in retry:
            with attempt:
                await block()
    assert block.calls == 1


@pytest.mark.virtual_time
@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_t4_base_exceptions_on_a_later_attempt_are_not_retried(
    anyio_backend: Any, kind: type[BaseException]
) -> None:
    retry = Retry("r", retry_on=lambda e: True, backoff=NO_JITTER)
    exc = kind()
    flaky = Flaky([ConnectionError(), exc])
    with pytest.raises(kind) as info:
        await retry.call(flaky)
    assert info.value is exc and flaky.calls == 2
    block = Flaky([ConnectionError(), exc])
    with pytest.raises(kind):
        async for attempt in retry:
            with attempt:
                await block()
    assert block.calls == 2
    assert retry.statistics().total_failures == 0


@pytest.mark.virtual_time
async def test_cancel_during_a_later_attempt_stops_everything(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=4, backoff=ConstantBackoff(1.0), retry_on=lambda e: True)
    flaky = Flaky([ConnectionError()], duration=5.0)  # attempt 1 ends at 5, attempt 2 at 6-11
    with anyio.move_on_after(8.0) as scope:
        await retry.call(flaky)
    assert scope.cancelled_caught and flaky.calls == 2
    await anyio.sleep(100)
    assert flaky.calls == 2


async def test_t4_cancelled_error_raised_by_the_callee_is_not_retried(backend_name: str) -> None:
    """asyncio only (trio's Cancelled has no public constructor): a CancelledError the callee
    raises itself propagates after one attempt, even with a catch-all predicate."""
    if backend_name == "trio":
        pytest.skip("asyncio task APIs")
    exc = asyncio.CancelledError()
    flaky = Flaky([exc])
    retry = Retry("r", retry_on=lambda e: True)
    with pytest.raises(asyncio.CancelledError) as info:
        await retry.call(flaky)
    assert info.value is exc
    assert flaky.calls == 1


# --- R07: cancellation during the backoff ------------------------------------------------------


@pytest.mark.virtual_time
async def test_r07_cancel_during_backoff_takes_effect_at_once(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=4, backoff=ConstantBackoff(10.0))
    flaky = Flaky(always(ConnectionError))
    start = anyio.current_time()
    with anyio.move_on_after(1.0) as scope:
        await retry.call(flaky)
    assert scope.cancelled_caught
    assert anyio.current_time() - start == pytest.approx(1.0, abs=1e-3)
    assert flaky.calls == 1
    await anyio.sleep(100)  # no orphan timer starts a second attempt later
    assert flaky.calls == 1
    stats = retry.statistics()
    assert stats.attempts == (1, 0, 0, 0, 0)
    assert stats.total_failures == 0


@pytest.mark.virtual_time
async def test_r07_cancel_during_backoff_every_idiom(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=4, backoff=LinearBackoff(5.0, 5.0, 60.0))
    flaky = Flaky(always(ConnectionError))

    async def block() -> None:
        async for attempt in retry:
            with attempt:
                await flaky()

    for run in (retry(flaky), block):
        with anyio.move_on_after(7.0):  # 5 s sleep, attempt 2, cancelled 2 s into 10 s
            await run()
    assert flaky.calls == 4


# --- deadlines (R10, T3) -----------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_r10_enclosing_timeout_no_sleep_that_cannot_finish(anyio_backend: Any) -> None:
    """Timeout(5) around retry(2, 4, 8 s): after attempt 2 at t=2 the next would start at t=6, past
    the deadline, so the retry gives up at t=2 with the callee's own error."""
    retry = Retry("r", max_retries=5, backoff=ExponentialBackoff(2.0, 60.0, 2.0, jitter=False))
    flaky = Flaky(always(ConnectionError))
    start = anyio.current_time()
    with pytest.raises(ConnectionError) as info:
        await Timeout(5.0).call(retry.call, flaky)
    assert anyio.current_time() - start == pytest.approx(2.0, abs=1e-3)
    assert flaky.calls == 2
    assert "gave up after 2 attempts (deadline)" in info.value.__notes__[0]
    assert failures(retry) == {"deadline": 1}


@pytest.mark.virtual_time
async def test_r10_foreign_deadline_cancels_the_sleep(anyio_backend: Any) -> None:
    """anyio.fail_after is invisible to us: it cancels the backoff sleep at t=5 (TimeoutError)."""
    retry = Retry("r", max_retries=5, backoff=ExponentialBackoff(2.0, 60.0, 2.0, jitter=False))
    flaky = Flaky(always(ConnectionError))
    start = anyio.current_time()
    with pytest.raises(TimeoutError):
        with anyio.fail_after(5.0):
            await retry.call(flaky)
    assert anyio.current_time() - start == pytest.approx(5.0, abs=1e-3)
    assert flaky.calls == 2


@pytest.mark.virtual_time
async def test_total_timeout_caps_the_whole_call(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=100, backoff=ConstantBackoff(1.0), total_timeout=3.5)
    flaky = Flaky(always(ConnectionError))
    start = anyio.current_time()
    with pytest.raises(ConnectionError) as info:
        await retry.call(flaky)
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 1.0, 2.0, 3.0]
    assert "gave up after 4 attempts (deadline)" in info.value.__notes__[0]


@pytest.mark.virtual_time
async def test_no_attempt_starts_that_cannot_finish(anyio_backend: Any) -> None:
    """Attempts take 2 s: at t=4.5 another (0.5 s sleep + 2 s) would end at 7 > 5, so stop."""
    retry = Retry("r", max_retries=10, backoff=ConstantBackoff(0.5), total_timeout=5.0)
    flaky = Flaky(always(ConnectionError), duration=2.0)
    start = anyio.current_time()
    with pytest.raises(ConnectionError):
        await retry.call(flaky)
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 2.5]
    assert anyio.current_time() - start == pytest.approx(4.5, abs=1e-3)


@pytest.mark.virtual_time
async def test_operation_context_deadline_bounds_retries(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=100, backoff=ConstantBackoff(1.0))
    flaky = Flaky(always(ConnectionError))
    start = anyio.current_time()
    with OperationContext.with_timeout("op", 2.5).activate(), pytest.raises(ConnectionError):
        await retry.call(flaky)
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 1.0, 2.0]


async def test_a_passed_deadline_runs_nothing(anyio_backend: Any) -> None:
    retry = Retry("late", total_timeout=10.0)
    flaky = Flaky()
    past = OperationContext("op", deadline=anyio.current_time() - 1.0)
    with past.activate(), pytest.raises(DeadlineExceeded) as info:
        await retry.call(flaky)
    assert flaky.calls == 0 and info.value.name == "late"
    assert failures(retry) == {"deadline": 1}
    with past.activate(), pytest.raises(DeadlineExceeded):
        async for attempt in retry:
            with attempt:
                await flaky()
    assert flaky.calls == 0


@pytest.mark.virtual_time
async def test_hard_deadline_from_timeout_inside_retry_is_clamped(anyio_backend: Any) -> None:
    """Pipeline(Timeout 4 s, retry, Timeout 1 s) around a hanging op: each attempt times out
    (a TimeoutError, retried); the retry plans within the outer 4 s and stops in time."""
    retry = Retry("r", max_retries=10, backoff=ConstantBackoff(0.5))
    slow = Flaky(duration=100.0)
    pipeline = Pipeline(Timeout(4.0, name="total"), retry, Timeout(1.0, name="attempt"))
    start = anyio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await pipeline.call(slow)
    # attempts at 0, 1.5 (each times out after 1 s); at 2.5 another 0.5 + 1 s would end at 4.0
    assert [round(t - start, 6) for t in slow.starts] == [0.0, 1.5]
    assert info.value.name == "attempt"
    assert anyio.current_time() - start == pytest.approx(2.5, abs=1e-3)


# --- Rejected -------------------------------------------------------------------------------------


async def test_rejections_are_not_retried_by_default(anyio_backend: Any) -> None:
    retry = Retry("r", retry_on=Exception)
    flaky = Flaky([CircuitOpen("breaker", retry_after=0.5)])
    with pytest.raises(CircuitOpen) as info:
        await retry.call(flaky)
    assert flaky.calls == 1
    assert "(rejected)" in info.value.__notes__[0]
    assert failures(retry) == {"rejected": 1}


@pytest.mark.virtual_time
async def test_r57_wait_rejected_waits_retry_after(anyio_backend: Any) -> None:
    retry = Retry("r", wait_rejected=True, backoff=NO_JITTER)
    flaky = Flaky([CircuitOpen("breaker", retry_after=2.0), BulkheadFull("bh", retry_after=0.25)])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 2.0, 2.25]


@pytest.mark.parametrize(
    ("retry_after", "total_timeout", "reason"),
    [
        (None, None, "rejected"),  # unknown: do not guess
        (90.0, None, "rejected"),  # beyond max_retry_after (60 s): retrying earlier is pointless
        (math.inf, None, "rejected"),
        (math.nan, None, "rejected"),
        (-1.0, None, "rejected"),
        (2.0, 1.0, "deadline"),  # does not fit the deadline
    ],
)
async def test_wait_rejected_gives_up_when_the_wait_is_unknown_or_too_long(
    anyio_backend: Any, retry_after: float | None, total_timeout: float | None, reason: str
) -> None:
    retry = Retry("r", wait_rejected=True, total_timeout=total_timeout)
    flaky = Flaky([Rejected("x", retry_after=retry_after)])
    with pytest.raises(Rejected):
        await retry.call(flaky)
    assert flaky.calls == 1
    assert failures(retry) == {reason: 1}


# --- server hints --------------------------------------------------------------------------------


class Hinted(ConnectionError):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("hinted")
        self.retry_after = retry_after


class BrokenHint(ConnectionError):
    @property
    def retry_after(self) -> float:
        raise RuntimeError("no")


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (3.0, 3.0),
        (3, 3.0),
        (timedelta(seconds=2), 2.0),
        (30.0, 30.0),  # above max_delay (10 s): still waited in full
        (60, 60.0),  # max_retry_after itself
        (-5.0, 0.0),  # clamped to 0
        (math.nan, 0.1),  # garbage: the backoff delay
        (True, 0.1),
        ("3", 0.1),
        (None, 0.1),
    ],
)
async def test_retry_after_hints_replace_the_backoff(
    anyio_backend: Any, hint: Any, expected: float
) -> None:
    retry = Retry("r", backoff=NO_JITTER)
    flaky = Flaky([Hinted(hint)])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    assert flaky.starts[1] - start == pytest.approx(expected, abs=1e-3)


@pytest.mark.virtual_time
async def test_a_hint_above_max_delay_is_waited_in_full(anyio_backend: Any) -> None:
    """Retry-After: 5 with max_delay=1 waits 5 s, not 1 s; the next backoff stays under 1 s."""
    retry = Retry("r", backoff=ConstantBackoff(delay=1.0), max_retries=2)
    assert retry.backoff.max_delay == 1.0
    flaky = Flaky([Hinted(5.0), ConnectionError("no hint")])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 5.0, 6.0]
    assert retry.statistics().backoff_sum == pytest.approx(6.0)


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    ("hint", "max_retry_after"),
    [
        (61.0, None),  # the default cap is 60 s
        (1e9, None),
        (math.inf, None),
        (10**400, None),  # beyond float range
        (3.0, 2.5),
        (math.inf, math.inf),  # an infinite hint is never waited
        (0.5, 0.0),  # 0: every positive hint gives up
    ],
)
async def test_a_hint_above_max_retry_after_gives_up(
    anyio_backend: Any, hint: Any, max_retry_after: float | None
) -> None:
    events = RecordingListener[RetryEvent]()
    if max_retry_after is None:
        retry = Retry("r", backoff=NO_JITTER, listeners=[events])
    else:
        retry = Retry("r", backoff=NO_JITTER, listeners=[events], max_retry_after=max_retry_after)
    flaky = Flaky([Hinted(hint)])
    start = anyio.current_time()
    with pytest.raises(Hinted) as info:
        await retry.call(flaky)
    assert flaky.calls == 1
    assert anyio.current_time() == start  # no wait at all
    assert failures(retry) == {"retry_after": 1}
    assert "(retry_after)" in info.value.__notes__[0]
    assert [type(e) for e in events.events] == [RetryGaveUp]


@pytest.mark.virtual_time
async def test_max_retry_after_raises_the_cap(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=NO_JITTER, max_retry_after=3600)
    flaky = Flaky([Hinted(timedelta(minutes=30))])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    assert flaky.starts[1] - start == pytest.approx(1800.0)
    assert retry.max_retry_after == 3600.0
    assert Retry("r").max_retry_after == 60.0


@pytest.mark.virtual_time
async def test_a_hint_longer_than_the_deadline_gives_up_on_the_deadline(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=NO_JITTER, total_timeout=4.0)
    flaky = Flaky([Hinted(5.0)])
    with pytest.raises(Hinted):
        await retry.call(flaky)
    assert flaky.calls == 1 and failures(retry) == {"deadline": 1}
    outer = Flaky([Hinted(5.0)])
    start = anyio.current_time()
    with OperationContext("op", deadline=start + 3.0).activate(), pytest.raises(Hinted):
        await Retry("r", backoff=NO_JITTER).call(outer)
    assert outer.calls == 1


@pytest.mark.virtual_time
async def test_a_custom_hint_reader(anyio_backend: Any) -> None:
    seen: list[object] = []

    def reader(outcome: object) -> float | None:
        seen.append(outcome)
        return getattr(outcome, "wait", None)

    class Slow(ConnectionError):
        wait = 2.0

    first, second = Slow(), ConnectionError("plain")
    retry = Retry("r", backoff=NO_JITTER, retry_after=reader, max_retries=2)
    flaky = Flaky([first, second])
    start = anyio.current_time()
    assert await retry.call(flaky) == "ok"
    # the reader's 2 s, then the backoff's second delay (0.2 s): the attribute is not read
    assert [round(t - start, 6) for t in flaky.starts] == [0.0, 2.0, 2.2]
    assert seen == [first, second]
    hinted = Flaky([Hinted(7.0)])  # a retry_after attribute: the custom reader ignores it
    start = anyio.current_time()
    await retry.call(hinted)
    assert hinted.starts[1] - start == pytest.approx(0.1)


@pytest.mark.virtual_time
@pytest.mark.parametrize("value", [math.nan, "5", True, object(), -math.inf])
async def test_a_reader_returning_garbage_falls_back_to_the_backoff(
    anyio_backend: Any, value: Any
) -> None:
    retry = Retry("r", backoff=NO_JITTER, retry_after=lambda _: value)
    flaky = Flaky([ConnectionError()])
    start = anyio.current_time()
    await retry.call(flaky)
    expected = 0.0 if value == -math.inf else 0.1  # a negative hint counts as 0
    assert flaky.starts[1] - start == pytest.approx(expected, abs=1e-3)


@pytest.mark.virtual_time
async def test_a_reader_that_raises_is_logged_and_falls_back(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(outcome: object) -> float:
        raise RuntimeError("bad reader")

    retry = Retry("r", backoff=NO_JITTER, retry_after=broken)
    flaky = Flaky([ConnectionError()])
    start = anyio.current_time()
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert await retry.call(flaky) == "ok"
    assert flaky.starts[1] - start == pytest.approx(0.1, abs=1e-3)
    assert "retry_after reader of 'r' raised" in caplog.text


@pytest.mark.virtual_time
async def test_hints_in_the_block_form(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=ConstantBackoff(delay=1.0))
    errors = [Hinted(5.0), Hinted(120.0)]
    start = anyio.current_time()
    times: list[float] = []
    with pytest.raises(Hinted):
        async for attempt in retry:
            with attempt:
                times.append(anyio.current_time() - start)
                raise errors.pop(0)
    assert times == [0.0, 5.0]
    assert failures(retry) == {"retry_after": 1}


@pytest.mark.virtual_time
async def test_hints_can_be_ignored_and_broken_hints_are_harmless(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=NO_JITTER, respect_retry_after=False)
    flaky = Flaky([Hinted(5.0)])
    start = anyio.current_time()
    await retry.call(flaky)
    assert flaky.starts[1] - start == pytest.approx(0.1, abs=1e-3)
    broken = Flaky([BrokenHint()])
    start = anyio.current_time()
    await Retry("r", backoff=NO_JITTER).call(broken)
    assert broken.starts[1] - start == pytest.approx(0.1, abs=1e-3)


# --- results --------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after


@pytest.mark.virtual_time
async def test_retry_on_result(anyio_backend: Any) -> None:
    retry = Retry("r", retry_on_result=lambda r: r.status == 503, backoff=NO_JITTER)
    responses = [Response(503, retry_after=1.5), Response(503), Response(200)]
    start = anyio.current_time()
    times: list[float] = []

    async def fetch() -> Response:
        times.append(anyio.current_time() - start)
        return responses.pop(0)

    result = await retry.call(fetch)
    assert result.status == 200
    assert [round(t, 6) for t in times] == [0.0, 1.5, 1.7]
    assert retry.statistics().attempts == (1, 1, 1, 0)


@pytest.mark.virtual_time
async def test_retry_on_result_gives_up_with_the_last_result(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=2, retry_on_result=lambda r: r is None, backoff=NO_JITTER)
    flaky = Flaky(result=None)
    assert await retry.call(flaky) is None
    assert flaky.calls == 3
    assert failures(retry) == {"exhausted": 1}
    decorated = Retry("r", max_retries=1, retry_on_result=lambda r: r == "ok")(Flaky())
    assert await decorated() == "ok"


async def test_a_raising_result_predicate_accepts_the_result(anyio_backend: Any) -> None:
    def broken(result: object) -> bool:
        raise RuntimeError("bug")

    retry = Retry("r", retry_on_result=broken)
    assert await retry.call(Flaky()) == "ok"
    assert retry.statistics().successes == 1


# --- T1, T3, T5 as properties ---------------------------------------------------------------------


def test_t1_t3_properties_in_virtual_time() -> None:
    """T1 attempts <= max_attempts; T3 no attempt starts after the deadline and every attempt ends
    before it (constant attempt durations make the estimate exact)."""

    @settings(max_examples=150, deadline=None)
    @given(
        max_retries=st.integers(0, 12),
        initial=st.floats(0.0, 3.0),
        multiplier=st.floats(0.0, 3.0),
        jitter=st.sampled_from(["none", "full", "equal", "decorrelated", "proportional"]),
        duration=st.sampled_from([0.0, 0.001, 0.5, 1.0]),
        total=st.floats(1.5, 20.0),
        seed=st.integers(0, 1000),
        backend=st.sampled_from(["asyncio", "trio"]),
    )
    def check(  # noqa: PLR0917 - Hypothesis passes the drawn values by keyword
        max_retries: int,
        initial: float,
        multiplier: float,
        jitter: Any,
        duration: float,
        total: float,
        seed: int,
        backend: str,
    ) -> None:
        backoff = ExponentialBackoff(initial, 5.0, multiplier, jitter=jitter)
        retry = Retry(
            "p",
            max_retries=max_retries,
            backoff=backoff,
            rng=random.Random(seed),
            total_timeout=total,
        )
        flaky = Flaky(always(ConnectionError, 200), duration=duration)

        async def main() -> tuple[float, float]:
            start = anyio.current_time()
            with pytest.raises(ConnectionError):
                await retry.call(flaky)
            return start, anyio.current_time()

        start, end = run_virtual(main, backend=backend)
        assert 1 <= flaky.calls <= max_retries + 1  # T1
        deadline = start + total
        assert all(t < deadline for t in flaky.starts)  # T3
        assert end - start <= total + 1e-6
        stats = retry.statistics()
        assert stats.total_attempts == flaky.calls
        assert stats.total_failures == 1

    check()


OUTCOMES = {
    "transient": ConnectionError,
    "fatal": KeyError,
    "rejected": CircuitOpen,
    "kbd": KeyboardInterrupt,
    "exit": SystemExit,
    "genexit": GeneratorExit,
}


@settings(max_examples=150, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["ok", *OUTCOMES]), max_size=10),
    max_retries=st.integers(0, 6),
    idiom=st.sampled_from(["call", "decorator", "block"]),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_t1_t4_model(outcomes: list[str], max_retries: int, idiom: str, backend: str) -> None:
    """T1 and T4 against a model: any sequence of outcomes, any idiom. Only transient errors are
    retried; rejections, other errors and every BaseException end the call at once, unchanged."""
    retry = Retry("m", max_retries=max_retries, backoff=ConstantBackoff(0.5))
    errors: list[BaseException] = []
    for outcome in outcomes:
        if outcome == "ok":
            break
        errors.append(OUTCOMES[outcome]("x") if outcome == "rejected" else OUTCOMES[outcome]())
    flaky = Flaky(list(errors))

    # The model: walk the outcomes until one ends the call.
    expected_calls, expected_exc = 1, None
    for index, exc in enumerate(errors):
        expected_calls = index + 1
        if not isinstance(exc, ConnectionError) or index + 1 == max_retries + 1:
            expected_exc = exc
            break
        expected_calls = index + 2
    else:
        expected_calls = min(len(errors) + 1, max_retries + 1)

    async def run() -> Any:
        if idiom == "call":
            return await retry.call(flaky)
        if idiom == "decorator":
            return await retry(flaky)()
        async for attempt in retry:
            with attempt:
                return await flaky()
        raise AssertionError("the block form ended without an outcome")

    async def main() -> BaseException | None:
        try:
            await run()
        except BaseException as exc:
            return exc
        return None

    raised = run_virtual(main, backend=backend)
    assert raised is expected_exc  # T4: the very same object, never a wrapper
    assert flaky.calls == expected_calls <= max_retries + 1  # T1
    stats = retry.statistics()
    assert stats.total_attempts == flaky.calls
    noted = bool(getattr(raised, "__notes__", None))
    assert noted == isinstance(raised, Exception)  # only real failures get the give-up note


@pytest.mark.virtual_time
async def test_t5_seeded_retries_sleep_the_same_schedule(anyio_backend: Any) -> None:
    async def delays(seed: int) -> list[float]:
        recorder: RecordingListener[RetryEvent] = RecordingListener()
        retry = Retry("r", max_retries=6, rng=random.Random(seed), listeners=[recorder])
        with pytest.raises(ConnectionError):
            await retry.call(Flaky(always(ConnectionError)))
        return [e.delay for e in recorder.events if isinstance(e, RetryScheduled)]

    first, again, other = await delays(5), await delays(5), await delays(6)
    assert first == again != other
    assert len(first) == 6


# --- R21: concurrency ------------------------------------------------------------------------------


async def test_r21_concurrent_calls_keep_their_own_attempt_count(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=2, backoff=ExponentialBackoff(0.001, 0.004))
    seen: dict[int, int] = {}
    results: dict[int, int] = {}

    @retry
    async def work(key: int) -> int:
        seen[key] = seen.get(key, 0) + 1
        await anyio.lowlevel.checkpoint()
        if seen[key] < 3:
            raise ConnectionError(key)
        return seen[key]

    async def one(key: int) -> None:
        results[key] = await work(key)

    async with anyio.create_task_group() as tg:
        for key in range(100):
            tg.start_soon(one, key)
    assert results == dict.fromkeys(range(100), 3)
    stats = retry.statistics()
    assert (stats.calls, stats.successes, stats.retries) == (100, 100, 200)
    assert stats.attempts == (100, 100, 100)
    assert stats.backoff_count == 200 and stats.total_failures == 0


# --- budgets ------------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_budget_caps_amplification_under_total_failure(anyio_backend: Any) -> None:
    """100 % failures, 3 retries each: without a budget 4x the load; with ratio 0.2, <= 1.2x + floor."""
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.1, window=10.0)  # floor: 1
    retry = Retry("r", max_retries=3, backoff=ConstantBackoff(0.01), budget=budget)
    flaky = Flaky(always(ConnectionError, 10_000))

    async def one() -> None:
        with pytest.raises(ConnectionError):
            await retry.call(flaky)

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(one)
    assert flaky.calls <= 500 * 1.2 + 1
    assert flaky.calls >= 500 * 1.2 - 1
    reasons = failures(retry)
    assert reasons["budget"] >= 390
    assert budget.statistics().total_requests == 500


@pytest.mark.virtual_time
async def test_a_budget_is_shared_across_policies(anyio_backend: Any) -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.2, window=10.0)  # 2 per window
    first = Retry("a", backoff=ConstantBackoff(0.01), budget=budget)
    second = Retry("b", backoff=ConstantBackoff(0.01), budget=budget)
    flaky = Flaky(always(ConnectionError))
    for retry in (first, second):
        with pytest.raises(ConnectionError):
            await retry.call(flaky)
    assert flaky.calls == 4  # 2 first attempts + the 2 retries the window allows (both to "a")
    assert failures(first) == {"budget": 1} and failures(second) == {"budget": 1}
    assert budget.statistics().total_retries == 2


# --- the block form -----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_block_form_retries_and_succeeds(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=NO_JITTER)
    flaky = Flaky([ConnectionError(), ConnectionError()])
    numbers = []
    async for attempt in retry:
        with attempt:
            numbers.append(attempt.number)
            result = await flaky()
    assert result == "ok" and numbers == [1, 2, 3]
    assert retry.statistics().attempts == (1, 1, 1, 0)
    assert retry.statistics().successes == 1


@pytest.mark.virtual_time
async def test_block_form_gives_up_with_the_last_exception(anyio_backend: Any) -> None:
    retry = Retry("r", max_retries=1, backoff=NO_JITTER, total_timeout=60.0)
    errors: list[BaseException] = [ConnectionError("a"), ConnectionError("b")]
    last = errors[1]
    flaky = Flaky(errors)
    with pytest.raises(ConnectionError) as info:
        async for attempt in retry:
            with attempt:
                await flaky()
    assert info.value is last
    assert info.value.__notes__ == ["Retry 'r' gave up after 2 attempts (exhausted)"]


async def test_block_form_without_with_stops(anyio_backend: Any) -> None:
    retry = Retry("r")
    count = 0
    async for attempt in retry:
        count += 1
        assert repr(attempt) == "<Attempt 1 of 'r'>"
    assert count == 1


async def test_block_form_misuse_is_loud(anyio_backend: Any) -> None:
    retry = Retry("r", backoff=ConstantBackoff(0.0))
    first = await anext(aiter(retry))
    assert first.__exit__(ConnectionError, ConnectionError(), None) is True  # a retry follows
    with pytest.raises(RuntimeError, match="out of order"):
        first.__exit__(None, None, None)


async def test_block_form_not_retryable_propagates_at_once(anyio_backend: Any) -> None:
    retry = Retry("r")
    count = 0
    with pytest.raises(KeyError):
        async for attempt in retry:
            with attempt:
                count += 1
                raise KeyError("no")
    assert count == 1
    assert failures(retry) == {"not_retryable": 1}


# --- events and listeners -----------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_events_carry_numbers_and_types_never_arguments(anyio_backend: Any) -> None:
    recorder: RecordingListener[RetryEvent] = RecordingListener()
    retry = Retry("peer", max_retries=1, backoff=NO_JITTER, listeners=[recorder])
    with pytest.raises(ConnectionError):
        await retry.call(Flaky(always(ConnectionError)), "secret-token")
    scheduled, gave_up = recorder.events
    assert isinstance(scheduled, RetryScheduled) and isinstance(gave_up, RetryGaveUp)
    assert (scheduled.policy, scheduled.attempt, scheduled.exception, scheduled.delay) == (
        "peer",
        1,
        ConnectionError,
        0.1,
    )
    assert (gave_up.attempt, gave_up.exception, gave_up.reason) == (2, ConnectionError, "exhausted")
    assert "secret-token" not in repr(recorder.events)


@pytest.mark.virtual_time
async def test_a_raising_listener_changes_nothing(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: RetryEvent) -> None:
        raise RuntimeError("listener bug")

    retry = Retry("r", backoff=NO_JITTER)
    retry.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        assert await retry.call(Flaky([ConnectionError()])) == "ok"
    assert "listener" in caplog.text


def test_async_listeners_are_refused() -> None:
    async def listener(event: RetryEvent) -> None:
        pass

    with pytest.raises(TypeError, match="async"):
        Retry("r", listeners=[listener])  # type: ignore[list-item]


# --- statistics ---------------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_backoff_histogram_uses_the_go_buckets(anyio_backend: Any) -> None:
    assert BACKOFF_BUCKETS == (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512)
    retry = Retry("r", max_retries=3, backoff=ExponentialBackoff(0.0015, 1.0, 10.0, jitter=False))
    with pytest.raises(ConnectionError):
        await retry.call(Flaky(always(ConnectionError)))  # delays 0.0015, 0.015, 0.15
    stats = retry.statistics()
    assert stats.backoff_counts == (0, 1, 1, 1, 2, 2, 2, 2, 3, 3)
    assert stats.backoff_count == 3
    assert stats.backoff_sum == pytest.approx(0.1665)
    big = Retry("big", max_retries=1, backoff=ConstantBackoff(1.0))
    with pytest.raises(ConnectionError):
        await big.call(Flaky(always(ConnectionError)))
    stats = big.statistics()
    assert stats.backoff_counts == (0,) * 10  # 1 s is above every bound: only in +Inf
    assert (stats.backoff_count, stats.backoff_sum) == (1, 1.0)


def test_attempt_slots_are_bounded() -> None:
    retry = Retry("r", max_retries=1000)
    stats = retry.statistics()
    assert len(stats.attempts) == 16 and stats.max_attempts == 1001


def test_statistics_failures_and_repr() -> None:
    retry = Retry("r")
    stats = retry.statistics()
    assert stats.failures_by_reason() == {
        "exhausted": 0,
        "not_retryable": 0,
        "rejected": 0,
        "deadline": 0,
        "budget": 0,
        "retry_after": 0,
    }
    assert repr(retry).startswith("<Retry 'r' max_retries=3 ExponentialBackoff(")
    assert (
        retry.name == "r" and retry.budget is None and isinstance(retry.backoff, ExponentialBackoff)
    )


# --- idioms and configuration -------------------------------------------------------------------


async def test_decorator_keeps_the_signature_and_needs_async(anyio_backend: Any) -> None:
    retry = Retry("r")

    @retry
    async def double(x: int) -> int:
        return 2 * x

    assert await double(21) == 42 and double.__name__ == "double"
    with pytest.raises(TypeError, match="async def"):
        retry(lambda: 1)  # type: ignore[arg-type, return-value]
    budgeted = Retry("b", budget=RetryBudget())

    @budgeted
    async def triple(x: int) -> int:
        return 3 * x

    assert await triple(2) == 6
    assert budgeted.statistics().successes == 1


async def test_real_time_retry_on_every_backend(anyio_backend: Any) -> None:
    """Tiny real delays: the engine runs on asyncio, uvloop and trio alike."""
    retry = Retry("r", backoff=ConstantBackoff(0.001), total_timeout=5.0)
    flaky = Flaky([ConnectionError(), OSError()])
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == 3


def test_construction_needs_no_event_loop() -> None:
    Retry("module-level", budget=RetryBudget(), total_timeout=3.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": True}, TypeError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"backoff": 0.5}, TypeError, "backoff"),
        ({"retry_on": "OSError"}, TypeError, "retry_on"),
        ({"retry_on": ()}, TypeError, "retry_on"),
        ({"retry_on": (OSError, int)}, TypeError, "retry_on"),
        ({"retry_on_result": 3}, TypeError, "retry_on_result"),
        ({"rng": object()}, TypeError, "rng"),
        ({"total_timeout": 0}, ValueError, "total_timeout"),
        ({"total_timeout": -1.0}, ValueError, "total_timeout"),
        ({"total_timeout": math.nan}, ValueError, "total_timeout"),
        ({"total_timeout": True}, TypeError, "total_timeout"),
        ({"budget": 0.2}, TypeError, "budget"),
        ({"wait_rejected": 1}, TypeError, "wait_rejected"),
        ({"respect_retry_after": None}, TypeError, "respect_retry_after"),
        ({"retry_after": 5.0}, TypeError, "retry_after must be a callable"),
        (
            {"retry_after": lambda _: 1.0, "respect_retry_after": False},
            ValueError,
            "respect_retry_after=False",
        ),
        ({"max_retry_after": math.nan}, ValueError, "max_retry_after"),
        ({"max_retry_after": -1.0}, ValueError, "max_retry_after"),
        ({"max_retry_after": True}, TypeError, "max_retry_after"),
        ({"max_retry_after": "60"}, TypeError, "max_retry_after"),
        ({"clock": 1.0}, TypeError, "clock"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    kwargs = {"name": "r", **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(error, match=field):
        Retry(name, **kwargs)


def test_infinite_total_timeout_means_none() -> None:
    retry = Retry("r", total_timeout=math.inf)
    assert retry.statistics().calls == 0


# --- T6: cancellation bookkeeping on asyncio ------------------------------------------------------


async def test_t6_timeout_around_retry_restores_cancelling(backend_name: str) -> None:
    if backend_name == "trio":
        pytest.skip("asyncio task APIs")
    task = asyncio.current_task()
    assert task is not None
    before = task.cancelling()
    retry = Retry("r", max_retries=5, backoff=ConstantBackoff(0.01))
    with pytest.raises(DeadlineExceeded):
        # The retry cannot see a deadline it could plan for: the callee is slow, not failing.
        await Timeout(0.02).call(retry.call, Flaky(duration=1.0))
    assert task.cancelling() == before


async def test_t6_a_pending_cancellation_is_delivered(backend_name: str) -> None:
    if backend_name == "trio":
        pytest.skip("asyncio task APIs")
    task = asyncio.current_task()
    assert task is not None
    retry = Retry("r", retry_on=lambda e: True)
    flaky = Flaky(duration=1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await retry.call(flaky)
    assert task.uncancel() == 0
    assert flaky.calls == 1
