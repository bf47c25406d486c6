"""The fleet primitives on Redis as Prometheus metrics: driven against a real redis-server, scraped
from their ``statistics()`` snapshots (never from Redis), through an outage and back.

Each instance of a fleet is a process of its own in production; here each gets its own registry, as
two processes would have.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from helpers import Samples, names, parse, value
from prometheus_client import CollectorRegistry, generate_latest

from dwcp_resilience import CircuitBreaker
from dwcp_resilience.prometheus import FAMILIES, OTHER, ResilienceCollector, serve_metrics
from dwcp_resilience.redis import (
    FleetBreaker,
    FleetErrorBudget,
    QuorumShare,
    RedisBackend,
    RedisRateLimiter,
)
from dwcp_resilience.redis.server import RedisServer
from dwcp_resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

FLEET_KEYS = [family.key for family in FAMILIES if family.key.startswith("fleet_")]
# The fleet-wide budget figures exist only once a shared snapshot was taken.
SNAPSHOT_GAUGES = [key for key in FLEET_KEYS if key.startswith("fleet_budget_snapshot_")]
UNUSED_URL = "redis://127.0.0.1:1/0"  # a backend never called: a scrape does not talk to Redis


@contextmanager
def collected(*primitives: object, **options: Any) -> Iterator[Callable[[], Samples]]:
    """A fresh registry tracking ``primitives``; yields a scrape function."""
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry, **options) as collector:
        for primitive in primitives:
            collector.track(primitive)
        yield lambda: parse(generate_latest(registry).decode())


async def eventually(check: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.01)


def breaker(name: str = "payments") -> CircuitBreaker:
    return CircuitBreaker(name, max_failures=1, reset_timeout=60.0, half_open_successes=1)


async def fail() -> None:
    raise RuntimeError("sick")


def fleet(kind: str, name: str) -> dict[str, str]:
    return {"kind": kind, "name": name}


# -- RedisRateLimiter ---------------------------------------------------------------------------


async def test_a_redis_rate_limiter_fills_the_rate_limiter_and_fleet_families(
    anyio_backend: Any, redis_url: str
) -> None:
    """The Go rate-limiter families under its name, plus where each admission was decided."""
    async with RedisBackend(redis_url) as backend:
        limiter = RedisRateLimiter(backend, "api", rate=50, burst=5, lease_max=1)
        with collected(limiter) as scrape:
            assert [await limiter.try_acquire() for _ in range(6)] == [True] * 5 + [False]
            samples = scrape()
    assert value(samples, "dwcp_rate_limiter_allowed_total", limiter="api") == 5
    assert value(samples, "dwcp_rate_limiter_rejected_total", limiter="api") == 1
    assert value(samples, "dwcp_rate_limiter_current_rate", limiter="api") == 50
    assert value(samples, "dwcp_fleet_shared_state", **fleet("limiter", "api")) == 1
    assert value(samples, "dwcp_fleet_fallbacks_total", **fleet("limiter", "api")) == 0
    admitted = "dwcp_fleet_rate_limiter_admitted_total"
    assert value(samples, admitted, limiter="api", source="shared") == 5
    assert value(samples, admitted, limiter="api", source="leased") == 0
    assert value(samples, admitted, limiter="api", source="local") == 0
    assert value(samples, "dwcp_fleet_rate_limiter_round_trips_total", limiter="api") == 6
    assert value(samples, "dwcp_fleet_rate_limiter_lease_tokens", limiter="api") == 0


async def test_leased_admissions_are_counted_as_leased(anyio_backend: Any, redis_url: str) -> None:
    async with RedisBackend(redis_url) as backend:
        limiter = RedisRateLimiter(backend, "bulk", rate=1e4, burst=5000, lease_max=10,
                                   lease_ttl=0.2)  # fmt: skip
        with collected(limiter) as scrape:
            for _ in range(100):
                await limiter.acquire()
            samples = scrape()
            stats = limiter.statistics()
    assert stats.leased >= 85, stats  # leases of 2, 4, 8, then 10 tokens
    admitted = "dwcp_fleet_rate_limiter_admitted_total"
    assert value(samples, admitted, limiter="bulk", source="leased") == stats.leased
    assert value(samples, admitted, limiter="bulk", source="shared") == stats.shared
    assert stats.shared + stats.leased == 100
    assert value(samples, "dwcp_fleet_rate_limiter_round_trips_total", limiter="bulk") == (
        stats.round_trips
    )
    lease_tokens = value(samples, "dwcp_fleet_rate_limiter_lease_tokens", limiter="bulk")
    assert lease_tokens == stats.lease_left < 10  # read within the lease's 0.2 s


# -- FleetBreaker -------------------------------------------------------------------------------


async def test_a_fleet_breaker_reports_and_follows_with_its_local_breaker(
    anyio_backend: Any, redis_url: str
) -> None:
    """Two instances, one registry each: a's opening is published, b follows it by quorum."""
    async with (
        RedisBackend(redis_url, instance="a") as backend_a,
        RedisBackend(redis_url, instance="b") as backend_b,
    ):
        a = FleetBreaker(backend_a, breaker(), quorum=1, poll_interval=0.05)
        b = FleetBreaker(backend_b, breaker(), quorum=1, poll_interval=0.05)
        with collected(a) as scrape_a, collected(b) as scrape_b:
            async with a, b:
                with pytest.raises(RuntimeError):
                    await a.breaker.call(fail)
                await eventually(lambda: b.statistics().quorum_trips == 1, "b to follow")
                await eventually(lambda: a.statistics().reports_published == 1, "a's report")
                await eventually(lambda: a.statistics().polls > 0, "a poll after the report")
                stats_a, stats_b = a.statistics(), b.statistics()
                at_a, at_b = scrape_a(), scrape_b()
    payments = {"name": "payments"}
    for samples in (at_a, at_b):
        assert value(samples, "dwcp_fleet_shared_state", **fleet("breaker", "payments")) == 1
        assert value(samples, "dwcp_fleet_fallbacks_total", **fleet("breaker", "payments")) == 0
        # The local breaker's own Go families come with the fleet breaker.
        assert value(samples, "dwcp_circuit_breaker_state", **payments) == 2
        changes = "dwcp_circuit_breaker_state_changes_total"
        assert value(samples, changes, **payments, from_state="closed", to_state="open") == 1
        assert value(samples, "dwcp_fleet_breaker_reports_pending", **payments) == 0
    assert value(at_a, "dwcp_fleet_breaker_reports_total", **payments) == 1
    assert value(at_a, "dwcp_fleet_breaker_quorum_trips_total", **payments) == 0
    assert value(at_a, "dwcp_circuit_breaker_failures_total", **payments) == 1
    assert value(at_b, "dwcp_fleet_breaker_reports_total", **payments) == 0
    assert value(at_b, "dwcp_fleet_breaker_quorum_trips_total", **payments) == 1
    assert value(at_b, "dwcp_fleet_breaker_reporters", **payments) == stats_b.last_reporters == 1
    assert value(at_b, "dwcp_circuit_breaker_failures_total", **payments) == 0
    assert value(at_a, "dwcp_fleet_breaker_polls_total", **payments) == stats_a.polls > 0
    assert value(at_b, "dwcp_fleet_breaker_polls_total", **payments) == stats_b.polls > 0


async def test_a_local_breaker_tracked_twice_is_counted_once(anyio_backend: Any) -> None:
    """Tracking the local breaker and its fleet breaker, in either order: one reading of each."""
    async with RedisBackend(UNUSED_URL) as backend:
        local = breaker()
        fleet_breaker = FleetBreaker(backend, local, quorum=1)
        with pytest.raises(RuntimeError):
            await local.call(fail)
        for order in ((local, fleet_breaker), (fleet_breaker, local), (fleet_breaker,)):
            with collected(*order) as scrape:
                samples = scrape()
            failures = "dwcp_circuit_breaker_requests_total"
            assert value(samples, failures, name="payments", result="failure") == 1, order
            assert value(samples, "dwcp_fleet_breaker_reports_pending", name="payments") == 1


async def test_fleet_membership_and_the_share_quorum_are_exposed(
    anyio_backend: Any, redis_url: str
) -> None:
    """Three members with QuorumShare(0.5): each exposes 3 live members and 2 reports needed;
    after one leaves, the others expose 2."""
    async with AsyncExitStack() as stack:
        fleets = []
        for name in ("a", "b", "c"):
            backend = await stack.enter_async_context(RedisBackend(redis_url, instance=name))
            fleets.append(FleetBreaker(backend, breaker(), quorum=QuorumShare(0.5),
                                       poll_interval=0.05, member_ttl=30.0))  # fmt: skip
        a, b, c = fleets
        with collected(a) as scrape_a, collected(b) as scrape_b:
            async with a, b:
                async with c:
                    for each in fleets:
                        await eventually(lambda f=each: f.statistics().members == 3, "3 members")  # type: ignore[misc]
                    full = scrape_a(), scrape_b()
                await eventually(lambda: a.statistics().members == 2, "c's leave")
                after = scrape_a()
    for samples in full:
        assert value(samples, "dwcp_fleet_members", **fleet("breaker", "payments")) == 3
        assert value(samples, "dwcp_fleet_breaker_reports_needed", name="payments") == 2
    assert value(after, "dwcp_fleet_members", **fleet("breaker", "payments")) == 2


# -- FleetErrorBudget ---------------------------------------------------------------------------


async def test_the_fleet_wide_budget_snapshot_is_exposed_from_the_cache(
    anyio_backend: Any, redis_url: str
) -> None:
    """The refresher's latest shared snapshot is the fleet's figure on every instance; while the
    latest one is local only (Redis unreachable), the fleet-wide families have no sample."""
    async with (
        RedisBackend(redis_url, instance="a", timeout=2.0) as backend_a,
        RedisBackend(redis_url, instance="b", timeout=2.0) as backend_b,
    ):
        options: dict[str, Any] = {"slo": 0.9, "window": 60.0, "bucket": 1.0, "min_requests": 5,
                                   "flush_interval": 0.05, "snapshot_interval": 0.05}  # fmt: skip
        a = FleetErrorBudget(backend_a, "api", **options)
        b = FleetErrorBudget(backend_b, "api", **options)
        with collected(a) as scrape_a, collected(b) as scrape_b:
            before = scrape_a()
            async with a, b:
                for _ in range(6):
                    a.record(True)
                for ok in (True, False, False, False):
                    b.record(ok)
                for each in (a, b):
                    await eventually(lambda e=each: _fleet_total(e) == 10, "the fleet's records")  # type: ignore[misc]
                at_a, at_b = scrape_a(), scrape_b()
                backend_a.breaker.force_open()
                await eventually(
                    lambda: a.last_snapshot is not None and not a.last_snapshot.shared,
                    "a local snapshot",
                )
                down = scrape_a()
                backend_a.breaker.reset()
    api = {"budget": "api"}
    assert not {f"dwcp_{key}" for key in SNAPSHOT_GAUGES} & names(before)
    assert value(before, "dwcp_fleet_budget_snapshots_total", **api) == 0
    for samples in (at_a, at_b):  # the same fleet figure on both instances
        assert value(samples, "dwcp_fleet_budget_snapshot_requests", **api) == 10
        assert value(samples, "dwcp_fleet_budget_snapshot_failures", **api) == 3
        # 3 failures, 1 allowed (10 % of 10): the budget is spent, burning 3x.
        assert value(samples, "dwcp_fleet_budget_snapshot_remaining", **api) == 0
        assert value(samples, "dwcp_fleet_budget_snapshot_burn_rate", **api) == pytest.approx(3.0)
        assert value(samples, "dwcp_fleet_budget_snapshot_exhausted", **api) == 1
        assert value(samples, "dwcp_fleet_budget_snapshots_total", **api) >= 1
    # Each instance's own records stay in the local families.
    assert value(at_a, "dwcp_error_budget_requests_total", **api) == 6
    assert value(at_b, "dwcp_error_budget_failures_total", **api) == 3
    assert not {f"dwcp_{key}" for key in SNAPSHOT_GAUGES} & names(down)
    assert value(down, "dwcp_fleet_shared_state", **fleet("budget", "api")) == 0


def _fleet_total(budget: FleetErrorBudget) -> int | None:
    snapshot = budget.last_snapshot
    return snapshot.total if snapshot is not None and snapshot.shared else None


async def test_a_fleet_error_budget_fills_the_error_budget_and_fleet_families(
    anyio_backend: Any, redis_url: str
) -> None:
    async with RedisBackend(redis_url, instance="a") as backend:
        budget = FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0)
        with collected(budget) as scrape:
            for ok in (True, True, True, False):
                budget.record(ok)
            before = scrape()
            assert await budget.flush()
            after = scrape()
    api = {"budget": "api"}
    assert value(before, "dwcp_fleet_budget_unflushed_records", **api) == 4
    assert value(before, "dwcp_fleet_budget_batches_total", **api) == 0
    assert value(after, "dwcp_fleet_budget_unflushed_records", **api) == 0
    assert value(after, "dwcp_fleet_budget_batches_total", **api) == 1
    assert value(after, "dwcp_fleet_budget_duplicate_batches_total", **api) == 0
    assert value(after, "dwcp_fleet_budget_dropped_records_total", **api) == 0
    assert value(after, "dwcp_fleet_shared_state", **fleet("budget", "api")) == 1
    assert value(after, "dwcp_fleet_fallbacks_total", **fleet("budget", "api")) == 0
    # The local budget's families (this instance's records), read with the fleet budget.
    for samples in (before, after):
        assert value(samples, "dwcp_error_budget_requests_total", **api) == 4
        assert value(samples, "dwcp_error_budget_failures_total", **api) == 1
        assert value(samples, "dwcp_error_budget_objective", **api) == pytest.approx(0.9)


async def test_records_too_old_to_flush_are_counted_as_dropped(
    anyio_backend: Any, redis_url: str
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(backend, "api", slo=0.9, window=10.0, bucket=1.0, clock=clock)
        with collected(budget, budget.local) as scrape:  # the local budget tracked too: once
            backend.breaker.force_open()
            for ok in (True, True, True, False):
                budget.record(ok)
            assert not await budget.flush()
            down = scrape()
            clock.advance(11.5)  # the records' bucket left the window
            backend.breaker.reset()
            budget.record(True)  # something to send: the flush reaches Redis
            assert await budget.flush()
            back = scrape()
    api = {"budget": "api"}
    assert value(down, "dwcp_fleet_shared_state", **fleet("budget", "api")) == 0
    assert value(down, "dwcp_fleet_budget_unflushed_records", **api) == 4
    assert value(down, "dwcp_error_budget_requests_total", **api) == 4
    assert value(back, "dwcp_fleet_shared_state", **fleet("budget", "api")) == 1
    assert value(back, "dwcp_fleet_fallbacks_total", **fleet("budget", "api")) == 1
    assert value(back, "dwcp_fleet_budget_dropped_records_total", **api) == 4
    assert value(back, "dwcp_fleet_budget_unflushed_records", **api) == 0
    assert value(back, "dwcp_fleet_budget_batches_total", **api) == 1
    assert value(back, "dwcp_error_budget_requests_total", **api) == 5  # a lifetime counter


# -- Redis killed mid-run -----------------------------------------------------------------------


async def test_redis_killed_then_back_shows_in_the_fleet_families(anyio_backend: Any) -> None:
    """Shared state 1 -> 0 (one fallback each) while Redis is down -> 1 again once it is back;
    scrapes during the outage neither block nor raise, and never call Redis."""

    def backend(server: RedisServer) -> RedisBackend:
        """One backend (and guard) per primitive, so that exactly one outage is seen by each."""
        guard = CircuitBreaker(
            "guard", max_failures=1, reset_timeout=0.1, half_open_successes=1, timeout=2.0
        )
        return RedisBackend(server.url, instance="a", timeout=2.0, breaker=guard)

    with RedisServer() as server:
        async with backend(server) as one, backend(server) as two, backend(server) as three:
            limiter = RedisRateLimiter(one, "api", rate=1000, burst=100, lease_max=1)
            fleet_breaker = FleetBreaker(two, breaker(), quorum=1, poll_interval=0.05)
            budget = FleetErrorBudget(three, "api", slo=0.9, window=60.0, bucket=1.0)
            primitives = ("limiter", "api"), ("breaker", "payments"), ("budget", "api")
            with collected(limiter, fleet_breaker, budget) as scrape:
                async with fleet_breaker:
                    await limiter.acquire()
                    budget.record(True)
                    assert await budget.flush()
                    await eventually(lambda: fleet_breaker.statistics().polls > 0, "a poll")
                    up = scrape()

                    server.stop()
                    await limiter.acquire()  # admitted by the local fallback
                    budget.record(False)
                    assert not await budget.flush()
                    await eventually(lambda: not fleet_breaker.shared, "the breaker's fallback")
                    calls: list[object] = []

                    async def spy(*args: Any, **kwargs: Any) -> Any:
                        calls.append(args)
                        raise AssertionError("a scrape called Redis")

                    for each in (one, two, three):
                        each.run = spy  # type: ignore[method-assign]
                    started = time.perf_counter()
                    down = scrape()
                    elapsed = time.perf_counter() - started
                    for each in (one, two, three):
                        del each.run  # the class' method again
                    assert calls == []
                    assert elapsed < 0.1, elapsed  # no connect attempt, no timeout waited for

                    server.start()

                    async def drive() -> bool:
                        await limiter.acquire()
                        return (
                            await budget.flush()
                            and limiter.statistics().on_shared
                            and fleet_breaker.shared
                        )

                    deadline = time.monotonic() + 5.0
                    while not await drive():
                        assert time.monotonic() < deadline, "never went back to shared state"
                        await anyio.sleep(0.02)
                    back = scrape()
    for kind, name in primitives:
        labels = fleet(kind, name)
        assert value(up, "dwcp_fleet_shared_state", **labels) == 1, labels
        assert value(up, "dwcp_fleet_fallbacks_total", **labels) == 0, labels
        assert value(down, "dwcp_fleet_shared_state", **labels) == 0, labels
        assert value(down, "dwcp_fleet_fallbacks_total", **labels) == 1, labels
        assert value(back, "dwcp_fleet_shared_state", **labels) == 1, labels
        assert value(back, "dwcp_fleet_fallbacks_total", **labels) == 1, labels
    admitted = "dwcp_fleet_rate_limiter_admitted_total"
    assert value(down, admitted, limiter="api", source="local") == 1
    assert value(down, "dwcp_rate_limiter_allowed_total", limiter="api") == 2
    assert value(down, "dwcp_fleet_budget_unflushed_records", budget="api") == 1
    assert value(back, "dwcp_fleet_budget_unflushed_records", budget="api") == 0


# -- a scrape makes no Redis call -----------------------------------------------------------------


def _command_counts(client: Any) -> dict[str, int]:
    """Redis' own count of every command it ran (INFO commandstats), read with a blocking client:
    the event loop does not run meanwhile."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items()}


@asynccontextmanager
async def _busy_fleet(
    url: str,
) -> AsyncIterator[tuple[list[RedisBackend], list[Any], AsyncExitStack]]:
    """Two instances, each with a fleet breaker, a fleet budget and a limiter, running; the
    third item stops their background tasks (the backends stay open until the end)."""
    async with AsyncExitStack() as backends_stack, AsyncExitStack() as stack:
        backends, primitives = [], []
        for name in ("a", "b"):
            backend = await backends_stack.enter_async_context(RedisBackend(url, instance=name))
            fleet_breaker = FleetBreaker(backend, breaker(), quorum=QuorumShare(0.5),
                                         poll_interval=0.02)  # fmt: skip
            budget = FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0,
                                      flush_interval=0.02, snapshot_interval=0.02)  # fmt: skip
            limiter = RedisRateLimiter(backend, "api", rate=1000, burst=100, lease_max=1)
            await stack.enter_async_context(fleet_breaker)
            await stack.enter_async_context(budget)
            backends.append(backend)
            primitives += [fleet_breaker, budget, limiter]
        for primitive in primitives:
            if isinstance(primitive, RedisRateLimiter):
                await primitive.acquire()
            elif isinstance(primitive, FleetErrorBudget):
                primitive.record(False)
        for primitive in primitives:
            if isinstance(primitive, FleetBreaker):
                await eventually(lambda p=primitive: p.statistics().members == 2, "2 members")  # type: ignore[misc]
            elif isinstance(primitive, FleetErrorBudget):
                await eventually(lambda p=primitive: _fleet_total(p) == 2, "a fleet snapshot")  # type: ignore[misc]
        yield backends, primitives, stack


async def test_a_scrape_while_the_fleet_runs_sends_no_redis_command(
    anyio_backend: Any, redis_url: str
) -> None:
    """Every command of the clients is counted: the background tasks send many, a scrape none
    (the scrape is synchronous: no other task runs during it)."""
    async with _busy_fleet(redis_url) as (backends, primitives, _):
        sent: list[tuple[Any, ...]] = []
        for backend in backends:
            original = backend.client.execute_command

            async def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                sent.append(args)
                return await _original(*args, **kwargs)

            backend.client.execute_command = counting  # type: ignore[method-assign]
        await eventually(lambda: len(sent) > 10, "the background's own commands")
        with collected(*primitives) as scrape:
            before = len(sent)
            samples = scrape()
            assert len(sent) == before
        assert value(samples, "dwcp_fleet_members", **fleet("breaker", "payments")) == 2
        assert value(samples, "dwcp_fleet_budget_snapshot_requests", budget="api") >= 2


async def test_a_scrape_over_http_runs_no_redis_command(anyio_backend: Any, redis_url: str) -> None:
    """Redis' own command counts: the background stopped (its cached values stay, the
    connections stay open), a scrape of /metrics over HTTP runs nothing on Redis but the first
    INFO that measures it."""
    import redis

    async with _busy_fleet(redis_url) as (_, primitives, background):
        await background.aclose()  # the tasks stop; the primitives keep what they saw
        registry = CollectorRegistry()
        with (
            ResilienceCollector(registry=registry) as collector,
            redis.Redis.from_url(redis_url) as counter,  # one connection: one handshake
        ):
            for primitive in primitives:
                collector.track(primitive)
            with serve_metrics(registry) as server:
                url = f"http://127.0.0.1:{server.port}/metrics"
                before = _command_counts(counter)
                body = await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(url).read())
                await anyio.sleep(0.2)  # anything the scrape scheduled would have run by now
                after = _command_counts(counter)
    ran = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: count for name, count in ran.items() if count} == {"cmdstat_info": 1}
    samples = parse(body.decode())
    assert value(samples, "dwcp_fleet_members", **fleet("breaker", "payments")) == 2
    assert value(samples, "dwcp_fleet_budget_snapshot_failures", budget="api") == 2


# -- without Redis --------------------------------------------------------------------------------


async def _fresh_fleet_exposition() -> str:
    """The exposition of fresh fleet primitives on a backend that was never reached."""
    async with RedisBackend(UNUSED_URL) as backend:
        primitives = (
            RedisRateLimiter(backend, "api", rate=10, burst=2),
            FleetBreaker(backend, breaker(), quorum=2),
            FleetErrorBudget(backend, "api", slo=0.99),
        )
        registry = CollectorRegistry()
        with ResilienceCollector(registry=registry) as collector:
            for primitive in primitives:
                collector.track(primitive)
            return generate_latest(registry).decode()


async def test_every_fleet_family_is_filled_without_a_redis_call(anyio_backend: Any) -> None:
    """Fresh fleet primitives on a backend that was never reached: every fleet family has a
    sample, but the fleet-wide budget figures, which need a shared snapshot first."""
    samples = parse(await _fresh_fleet_exposition())
    expected = {f"dwcp_{key}" for key in FLEET_KEYS if key not in SNAPSHOT_GAUGES}
    assert expected <= names(samples)
    assert not {f"dwcp_{key}" for key in SNAPSHOT_GAUGES} & names(samples)
    assert value(samples, "dwcp_fleet_members", **fleet("breaker", "payments")) == 0
    assert value(samples, "dwcp_fleet_breaker_reports_needed", name="payments") == 2
    for kind, name in (("limiter", "api"), ("breaker", "payments"), ("budget", "api")):
        assert value(samples, "dwcp_fleet_shared_state", **fleet(kind, name)) == 1


async def test_the_fleet_exposition_passes_promtool(anyio_backend: Any, promtool: str) -> None:
    text = await _fresh_fleet_exposition()
    result = await anyio.run_process(
        [promtool, "check", "metrics"], input=text.encode(), check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def test_fleet_names_fold_into_other_with_the_local_ones(anyio_backend: Any) -> None:
    """The cardinality cap counts a fleet limiter as a limiter: both its families fold."""
    async with RedisBackend(UNUSED_URL) as backend:
        first = RedisRateLimiter(backend, "first", rate=10, burst=2)
        second = RedisRateLimiter(backend, "second", rate=20, burst=2)
        with collected(first, second, max_label_values=1) as scrape:
            samples = scrape()
    assert value(samples, "dwcp_rate_limiter_current_rate", limiter="first") == 10
    assert value(samples, "dwcp_rate_limiter_current_rate", limiter=OTHER) == 20
    assert value(samples, "dwcp_fleet_shared_state", kind="limiter", name=OTHER) == 1
    assert ("dwcp_fleet_shared_state", frozenset(fleet("limiter", "second").items())) not in samples


@pytest.mark.parametrize("redis_importable", [True, False])
def test_tracking_the_local_primitives_never_imports_redis(redis_importable: bool) -> None:
    """Without the redis extra (or just without using it) the collector works and stays light:
    the fleet families are declared, empty, and ``redis`` is not imported."""
    block = "" if redis_importable else "sys.modules['redis'] = None\n"
    script = (
        "import sys\n"
        f"{block}"
        "from prometheus_client import CollectorRegistry, generate_latest\n"
        "from dwcp_resilience import CircuitBreaker\n"
        "from dwcp_resilience.prometheus import ResilienceCollector\n"
        "registry = CollectorRegistry()\n"
        "collector = ResilienceCollector(registry=registry)\n"
        "collector.track(CircuitBreaker('db'))\n"
        "try:\n"
        "    collector.track(object())\n"
        "except TypeError:\n"
        "    pass\n"
        "text = generate_latest(registry).decode()\n"
        "assert '# TYPE dwcp_fleet_shared_state gauge' in text, text\n"
        "assert 'dwcp_fleet_shared_state{' not in text, text\n"
        "assert 'dwcp_circuit_breaker_state{name=\"db\"} 0.0' in text, text\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))\n"
        "assert not [m for m in loaded if sys.modules[m] is not None], loaded\n"
        "assert 'dwcp_resilience.redis' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
