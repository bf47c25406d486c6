"""AdaptiveConcurrencyLimiter: the shell on asyncio (looptime), trio (MockClock) and uvloop."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience import (
    AIMD,
    AdaptiveConcurrencyLimiter,
    BulkheadFull,
    ConcurrencyLimitChanged,
    ConcurrencyLimited,
    ConcurrencyRejected,
    DeadlineExceeded,
    Gradient2,
    RateLimited,
)
from dwcp_resilience.core.events import Event
from dwcp_resilience.testing import RecordingListener

pytestmark = pytest.mark.anyio

NO_PROBE = Gradient2(probe_interval=None)


def fast_windows(**kwargs: Any) -> AdaptiveConcurrencyLimiter:
    """A limiter whose every sample closes a window (window and min_samples at their minimum)."""
    options: dict[str, Any] = {"window": 0.0, "min_samples": 1, "rng": random.Random(0)}
    options.update(kwargs)
    return AdaptiveConcurrencyLimiter("c", **options)


async def test_three_idioms_and_statistics(backend_name: str) -> None:
    limiter = AdaptiveConcurrencyLimiter("db", initial_limit=4, algorithm=NO_PROBE)

    @limiter
    async def double(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return 2 * x

    assert await double(21) == 42
    assert await limiter.call(double, 1) == 2  # nested: two permits at once
    async with limiter:
        assert limiter.inflight == 1
    with pytest.raises(KeyError):
        async with limiter:
            raise KeyError("a failure that is no drop")
    stats = limiter.statistics()
    assert (stats.admitted, stats.samples, stats.drops, stats.ignored) == (5, 5, 0, 0)
    assert (stats.limit, stats.inflight, stats.queued, stats.algorithm) == (4, 0, 0, "gradient2")
    assert "limit=4 [1..1000]" in repr(limiter)
    assert (limiter.name, limiter.max_queue, limiter.max_wait) == ("db", 0, math.inf)


async def test_uncontended_paths_do_not_checkpoint(backend_name: str) -> None:
    """Admission at once awaits nothing: a cancelled scope does not stop it."""
    limiter = AdaptiveConcurrencyLimiter("c", initial_limit=2)

    async def plain() -> int:
        return 7

    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await limiter.call(plain) == 7
        async with limiter:
            pass
    assert limiter.statistics().samples == 2


async def test_full_rejection_carries_an_estimated_retry_after(backend_name: str) -> None:
    limiter = fast_windows(initial_limit=2, algorithm=NO_PROBE)
    events: RecordingListener[Event] = RecordingListener()
    limiter.add_listener(events)
    async with limiter, limiter:
        with pytest.raises(ConcurrencyLimited) as info:
            await limiter.call(anyio.sleep, 0)
    assert info.value.retry_after is None  # no latency measured yet
    assert info.value.reason == "full" and isinstance(info.value, BulkheadFull)
    await limiter.call(anyio.sleep, 0.5)  # one window: 0.5 s
    async with limiter, limiter:
        with pytest.raises(ConcurrencyLimited) as info:
            await limiter.call(anyio.sleep, 0)
        limit = limiter.limit
    if backend_name != "uvloop":  # real time: the sleep takes a little more than 0.5 s
        assert info.value.retry_after == pytest.approx(0.5 / limit)
    rejections = events.of_type(ConcurrencyRejected)
    assert [e.reason for e in rejections] == ["full", "full"]
    assert rejections[1].retry_after == info.value.retry_after
    assert "concurrency limit reached" in str(info.value)
    stats = limiter.statistics()
    assert (stats.rejected, stats.rejected_full, stats.timed_out) == (2, 2, 0)


@pytest.mark.virtual_time
async def test_waiters_queue_and_time_out(backend_name: str) -> None:
    limiter = AdaptiveConcurrencyLimiter("c", initial_limit=1, max_queue=1, max_wait=1.0)
    outcomes: list[str] = []

    async def worker() -> None:
        try:
            await limiter.call(anyio.sleep, 5.0)
            outcomes.append("ok")
        except ConcurrencyLimited as exc:
            outcomes.append(exc.reason)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker)
            await anyio.sleep(0.01)
    assert sorted(outcomes) == ["full", "ok", "timeout"]
    assert limiter.statistics().timed_out == 1


async def test_drops_shrink_an_aimd_limit_and_successes_grow_it(backend_name: str) -> None:
    limiter = fast_windows(initial_limit=10, algorithm=AIMD(latency_threshold=60.0))
    changes: RecordingListener[Event] = RecordingListener()
    limiter.add_listener(changes)

    async def timing_out() -> None:
        raise DeadlineExceeded("backend", 1.0)  # a TimeoutError: a drop by default

    with pytest.raises(DeadlineExceeded):
        await limiter.call(timing_out)
    assert limiter.limit == 9  # 10 * 0.9
    with pytest.raises(ValueError, match="x"):
        await limiter.call(_raise, ValueError("x"))  # not a drop: inflight 1 < 9/2, no growth
    assert limiter.limit == 9
    async with anyio.create_task_group() as tg:  # five at once: 5 * 2 >= 9, the limit grows
        for _ in range(5):
            tg.start_soon(limiter.call, anyio.sleep, 0.01)
    assert limiter.limit > 9
    moves = changes.of_type(ConcurrencyLimitChanged)
    assert [(e.old, e.new, e.reason) for e in moves][:2] == [
        (10, 9, "update"),
        (9, 10, "update"),
    ]
    stats = limiter.statistics()
    assert (stats.drops, stats.algorithm) == (1, "aimd")


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_neutral_outcomes_record_no_sample(backend_name: str) -> None:
    """An inner rejection, an ignored exception and a cancelled call: the permit goes back, no
    sample is taken (an inner rejection returns at once: it would read as a fast backend)."""
    limiter = AdaptiveConcurrencyLimiter("c", ignore=LookupError)
    for exc in (RateLimited("inner", 1.0), KeyError("ignored")):
        with pytest.raises(type(exc)):
            await limiter.call(_raise, exc)
    with anyio.CancelScope() as scope:
        async with limiter:
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    stats = limiter.statistics()
    assert (stats.admitted, stats.samples, stats.ignored, stats.inflight) == (3, 0, 3, 0)


async def test_permits_end_exactly_once(backend_name: str) -> None:
    limiter = fast_windows(initial_limit=3, algorithm=AIMD(latency_threshold=1.0))
    first, second, third = [await limiter.acquire() for _ in range(3)]
    assert limiter.inflight == 3
    with pytest.raises(ConcurrencyLimited):
        await limiter.acquire()
    first.record()
    first.record(dropped=True)  # no effect: already ended
    second.record_latency(2.0)  # above the threshold: a drop
    third.release()
    third.record_latency(math.nan)
    nan = await limiter.acquire()
    nan.record_latency(math.nan)  # no sample
    stats = limiter.statistics()
    assert (stats.samples, stats.drops, stats.ignored, stats.inflight) == (2, 0, 2, 0)
    # 3 in flight of 3: +1 (4); then 2.0 s > 1.0 s, a slow window: min(4 - 1, 4 * 0.9)
    assert limiter.limit == 3


# -- cancellation at every await -------------------------------------------------------------------


async def test_cancel_while_queued_frees_the_place_and_records_nothing(backend_name: str) -> None:
    limiter = AdaptiveConcurrencyLimiter("c", initial_limit=1, max_queue=2)
    async with limiter:
        for enter in (
            lambda: limiter.call(anyio.sleep, 0),
            limiter.acquire,
            limiter.__aenter__,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(enter)
                await anyio.sleep(0.01)
                assert limiter.statistics().queued == 1
                tg.cancel_scope.cancel()
            assert limiter.statistics().queued == 0
    stats = limiter.statistics()
    assert (stats.cancelled, stats.admitted, stats.inflight, stats.samples) == (3, 1, 0, 1)
    await limiter.call(anyio.sleep, 0)  # the permit is free again
    assert limiter.statistics().admitted == 2


async def test_cancel_inside_the_call_or_block_gives_the_permit_back(backend_name: str) -> None:
    limiter = AdaptiveConcurrencyLimiter("c", initial_limit=1)
    with anyio.move_on_after(0.01):
        await limiter.call(anyio.sleep_forever)
    with anyio.move_on_after(0.01):
        async with limiter:
            await anyio.sleep_forever()
    with anyio.move_on_after(0.01):
        permit = await limiter.acquire()
        try:
            await anyio.sleep_forever()
        finally:
            permit.release()
    stats = limiter.statistics()
    assert (stats.admitted, stats.samples, stats.ignored, stats.inflight) == (3, 0, 3, 0)


@pytest.mark.virtual_time
async def test_a_handed_permit_cancelled_before_it_runs_goes_on(backend_name: str) -> None:
    """The bulkhead's hand-off race, through the limiter: the permit is not lost. (Whether `first`
    still runs depends on the backend: anyio on asyncio delivers the cancellation only once the
    woken task has resumed; the bulkhead's own tests cover a raw ``Task.cancel()``.)"""
    limiter = AdaptiveConcurrencyLimiter("c", initial_limit=1, max_queue=2)
    scope = anyio.CancelScope()
    ran: list[str] = []

    async def first() -> None:
        with scope:
            await limiter.call(_append, ran, "first")

    async with anyio.create_task_group() as tg:
        permit = await limiter.acquire()
        tg.start_soon(first)
        await anyio.sleep(0.01)
        tg.start_soon(limiter.call, _append, ran, "second")
        await anyio.sleep(0.01)
        permit.release()  # hands the permit to `first`...
        scope.cancel()  # ...cancelled before it resumes
    assert ran[-1] == "second"
    stats = limiter.statistics()
    assert (stats.inflight, stats.queued) == (0, 0)
    assert stats.cancelled + stats.admitted == 3 and stats.cancelled == 3 - len(ran) - 1


async def _append(into: list[str], item: str) -> None:
    into.append(item)


# -- the limit moving under load -----------------------------------------------------------------


@pytest.mark.virtual_time
async def test_a_shrinking_limit_interrupts_nothing_and_admits_under_it(backend_name: str) -> None:
    limiter = fast_windows(
        initial_limit=8, max_queue=20, algorithm=AIMD(latency_threshold=0.5, backoff_ratio=0.5)
    )
    inflight = 0
    starts: list[tuple[float, int, int]] = []  # newcomers: (time, in flight, limit)

    async def job(hold: float, newcomer: bool) -> None:
        nonlocal inflight
        inflight += 1
        if newcomer:
            starts.append((anyio.current_time(), inflight, limiter.limit))
        try:
            await anyio.sleep(hold)
        finally:
            inflight -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(7):
            tg.start_soon(limiter.call, job, 10.0, False)
        await anyio.sleep(0.1)
        permit = await limiter.acquire()
        permit.record_latency(1.0)  # a slow window, 8 in flight: the limit halves to 4...
        assert limiter.limit == 4 and inflight == 7  # ...and the 7 running calls go on
        for _ in range(10):
            tg.start_soon(limiter.call, job, 0.1, True)
        await anyio.sleep(5.0)
        assert starts == [] and limiter.statistics().queued == 10
    assert len(starts) == 10
    assert all(time >= 10.0 and running <= limit for time, running, limit in starts), starts
    assert limiter.statistics().inflight == 0


@pytest.mark.virtual_time
@pytest.mark.parametrize("kind", ["gradient2", "aimd"])
async def test_many_tasks_never_run_beyond_the_limit_of_their_admission(
    kind: str, backend_name: str
) -> None:
    """The oracle: a call that starts finds at most as many calls in flight (itself included) as
    the highest limit since it asked to be admitted; every attempt is admitted, refused or
    cancelled; every admitted call ends in exactly one sample, stale sample or ignored end."""
    rng = random.Random(99)
    algorithm: Gradient2 | AIMD = (
        Gradient2(probe_interval=2.0, probe_samples=3, tolerance=1.1)
        if kind == "gradient2"
        else AIMD(latency_threshold=0.08)
    )
    limiter = AdaptiveConcurrencyLimiter(
        "c",
        algorithm=algorithm,
        initial_limit=10,
        min_limit=2,
        max_limit=40,
        window=0.2,
        min_samples=3,
        max_queue=30,
        max_wait=0.5,
        rng=random.Random(1),
    )
    history = [limiter.limit]
    limiter.add_listener(
        lambda e: history.append(e.new) if isinstance(e, ConcurrencyLimitChanged) else None
    )
    running = 0
    attempts = admitted = refused = cancelled = 0

    async def worker() -> None:
        nonlocal running, attempts, admitted, refused, cancelled
        attempts += 1
        asked = len(history) - 1
        started = False

        async def job() -> None:
            nonlocal running, admitted, started
            started = True
            admitted += 1
            running += 1
            try:
                assert running <= max(history[asked:]), (running, history[asked:])
                await anyio.sleep(0.01 * running * rng.uniform(0.5, 1.5))  # slower when crowded
                if rng.random() < 0.05:
                    raise TimeoutError("a drop")
                if rng.random() < 0.05:
                    raise ValueError("a failure")
            finally:
                running -= 1

        with anyio.move_on_after(rng.choice([math.inf, math.inf, rng.uniform(0.0, 0.3)])):
            try:
                await limiter.call(job)
            except ConcurrencyLimited:
                refused += 1
            except (TimeoutError, ValueError):
                pass
            return
        if not started:
            cancelled += 1

    async with anyio.create_task_group() as tg:
        for _ in range(1500):
            tg.start_soon(worker)
            await anyio.sleep(rng.expovariate(200.0))
    stats = limiter.statistics()
    assert attempts == 1500 and admitted + refused + cancelled == attempts
    assert (stats.admitted, stats.rejected, stats.cancelled) == (admitted, refused, cancelled)
    assert stats.samples + stats.stale + stats.ignored == admitted
    assert (stats.inflight, stats.queued) == (0, 0)
    assert len(set(history)) > 3  # the limit moved
    assert min(admitted, refused, cancelled, stats.drops) > 0  # every path was taken
    if kind == "gradient2":
        assert stats.probes > 0 and stats.stale > 0


# -- listeners, config, module level ---------------------------------------------------------------


async def test_a_raising_listener_is_logged_and_changes_nothing(
    backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    limiter = fast_windows(initial_limit=1, listeners=[broken], algorithm=NO_PROBE)
    with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
        async with limiter:
            with pytest.raises(ConcurrencyLimited):
                await limiter.call(anyio.sleep, 0)
    assert "listener bug" in caplog.text
    limiter.remove_listener(broken)
    with pytest.raises(ValueError, match="not in"):
        limiter.remove_listener(broken)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial_limit": 0}, ValueError),
        ({"min_limit": 0}, ValueError),
        ({"min_limit": 5, "initial_limit": 4}, ValueError),
        ({"max_limit": 10, "initial_limit": 11}, ValueError),
        ({"initial_limit": True}, TypeError),
        ({"initial_limit": 2.0}, TypeError),
        ({"window": -1.0}, ValueError),
        ({"window": math.nan}, ValueError),
        ({"window": math.inf}, ValueError),
        ({"min_samples": 0}, ValueError),
        ({"max_queue": -1}, ValueError),
        ({"max_wait": -1.0}, ValueError),
        ({"max_wait": math.nan}, ValueError),
        ({"failure": 3}, TypeError),
        ({"rng": 7}, TypeError),
        ({"clock": 5}, TypeError),
        ({"algorithm": "gradient2"}, TypeError),
        ({"listeners": [5]}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        AdaptiveConcurrencyLimiter("c", **kwargs)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Gradient2(tolerance=0.9), "tolerance"),
        (lambda: Gradient2(smoothing=0.0), "smoothing"),
        (lambda: Gradient2(smoothing=1.5), "smoothing"),
        (lambda: Gradient2(queue_size=-1), "queue_size"),
        (lambda: Gradient2(long_window=0), "long_window"),
        (lambda: Gradient2(probe_interval=0.0), "probe_interval"),
        (lambda: Gradient2(probe_samples=0), "probe_samples"),
        (lambda: Gradient2(probe_jitter=1.5), "probe_jitter"),
        (lambda: Gradient2(tolerance=math.nan), "tolerance"),
        (lambda: AIMD(latency_threshold=0.0), "latency_threshold"),
        (lambda: AIMD(latency_threshold=math.inf), "latency_threshold"),
        (lambda: AIMD(latency_threshold=1.0, backoff_ratio=1.0), "backoff_ratio"),
        (lambda: AIMD(latency_threshold=1.0, backoff_ratio=0.4), "backoff_ratio"),
        (lambda: AIMD(latency_threshold=1.0, increase=0), "increase"),
        (lambda: AIMD(latency_threshold=True), "latency_threshold"),
    ],
)
def test_bad_algorithm_settings(make: Any, field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        make()


def test_bad_name_and_decorated_sync_function() -> None:
    with pytest.raises(ValueError, match="name"):
        AdaptiveConcurrencyLimiter("")

    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        AdaptiveConcurrencyLimiter("c")(sync)  # type: ignore[arg-type]


_MODULE_LIMITER = AdaptiveConcurrencyLimiter("module", initial_limit=1)


async def test_module_level_instance_works_on_every_backend(backend_name: str) -> None:
    async with _MODULE_LIMITER:
        with pytest.raises(ConcurrencyLimited):
            await _MODULE_LIMITER.call(anyio.sleep, 0)
    await _MODULE_LIMITER.call(anyio.sleep, 0)
    assert _MODULE_LIMITER.inflight == 0
