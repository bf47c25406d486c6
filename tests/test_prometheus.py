"""The Prometheus collector: the 27 Go metrics written by real traffic and scraped over HTTP.

These tests run in real time (asyncio, trio and uvloop without virtual clocks): the scrape goes
through a real socket, and the server renders each scrape on the test's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import urllib.error
import urllib.request
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from helpers import Samples, names, parse, value
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest

from dwcp_resilience._metrics._readers import Sink, duration_label  # white-box tests below
from dwcp_resilience.core.errors import BulkheadFull, CircuitOpen, ConcurrencyLimited, Throttled
from dwcp_resilience.manager import ResilienceManager
from dwcp_resilience.policies.backoff import ExponentialBackoff
from dwcp_resilience.policies.breaker import CircuitBreaker
from dwcp_resilience.policies.bulkhead import Bulkhead
from dwcp_resilience.policies.chaos import Chaos, ErrorFault
from dwcp_resilience.policies.concurrency import AIMD, AdaptiveConcurrencyLimiter
from dwcp_resilience.policies.fallback import Fallback
from dwcp_resilience.policies.hedge import Hedge, hedge_attempt
from dwcp_resilience.policies.keyed import KeyedRateLimiter
from dwcp_resilience.policies.ratelimit import RateLimiter
from dwcp_resilience.policies.retry import Retry
from dwcp_resilience.policies.retry_budget import RetryBudget
from dwcp_resilience.policies.throttle import AdaptiveThrottle
from dwcp_resilience.prometheus import (
    FAMILIES,
    GO_FAMILIES,
    OTHER,
    Family,
    MetricsServer,
    ResilienceCollector,
    serve_metrics,
)
from dwcp_resilience.slo.checks import PingCheck
from dwcp_resilience.slo.degradation import DegradationManager
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.health import HealthMonitor
from dwcp_resilience.slo.latency_budget import LatencyBudget

# Real time on every backend: the scrape crosses a real socket and a real thread.
pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

GO_NAMES = [f"dwcp_{family.key}" for family in GO_FAMILIES]


def total(samples: Samples, metric: str, /, **match: str) -> float:
    """The sum of ``metric``'s samples whose labels include ``match``."""
    return sum(
        v for (n, labels), v in samples.items() if n == metric and set(match.items()) <= labels
    )


def family_view(samples: Samples, family: str) -> Samples:
    """The samples of one family (a histogram's ``_bucket``/``_count``/``_sum`` included)."""
    own = {family, f"{family}_bucket", f"{family}_count", f"{family}_sum"}
    return {key: v for key, v in samples.items() if key[0] in own}


def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"] or "", exc.read().decode()


async def scrape(url: str) -> Samples:
    status, _, body = await anyio.to_thread.run_sync(fetch, url)
    assert status == 200, body
    return parse(body)


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise OSError("boom")


class AlwaysDrawsZero(random.Random):
    """A throttle's draws: 0.0 refuses whenever the probability is above 0."""

    def random(self) -> float:
        return 0.0


async def refused() -> None:
    raise CircuitOpen("elsewhere", 1.0)


async def slow_first() -> int:
    """The first attempt of a hedge takes 5 s (cancelled by the winner), a hedged one 1 ms."""
    number = hedge_attempt()
    await anyio.sleep(5.0 if number == 1 else 0.001)
    return number


class Traffic:
    """Every primitive, tracked, and the traffic each Go metric should see (with its oracle)."""

    def __init__(self, collector: ResilienceCollector) -> None:
        open_for = iter([0.01])  # the first opening is short, the second one lasts
        self.breaker = collector.track(
            CircuitBreaker("db", max_failures=2, half_open_successes=1, record_latency=True,
                           open_duration=lambda _: next(open_for, 60.0))
        )  # fmt: skip
        self.budget = RetryBudget(name="fetch-budget", ratio=1.0, min_retries_per_second=10.0)
        self.retry = collector.track(
            Retry("fetch", max_retries=2, retry_on=OSError, budget=self.budget,
                  backoff=ExponentialBackoff(initial_delay=0.001, max_delay=0.002, jitter=False))
        )  # fmt: skip
        self.healthy = True
        self.health = collector.track(
            HealthMonitor(
                "rm-health",
                checks=[PingCheck("transport", lambda: True),
                        PingCheck("peer", lambda: self.healthy)],
            )
        )  # fmt: skip
        # rate 1/s: exact float arithmetic (at 1000/s the bucket's float rounding refuses the
        # second token of a full burst of 2 on uvloop's clock; reported).
        self.limiter = collector.track(RateLimiter("api", rate=1.0, burst=2))
        self.keyed = collector.track(KeyedRateLimiter("peers", rate=1.0, burst=1))
        self.bulkhead = collector.track(Bulkhead("pool", max_concurrent=1, max_queue=1))
        self.error_budget = collector.track(ErrorBudget("send", slo=0.9, min_requests=10))
        self.latency = collector.track(LatencyBudget("send", target=0.1))
        self.degradation = collector.track(DegradationManager("rm-degradation"))
        self.chaos = collector.track(Chaos("chaos", rate=1.0, faults=[ErrorFault()], rng=1))
        self.adaptive = collector.track(
            AdaptiveConcurrencyLimiter("adaptive-pool", algorithm=AIMD(latency_threshold=60.0),
                                       initial_limit=1, max_limit=1, window=0.0, min_samples=1)
        )  # fmt: skip
        self.throttle = collector.track(AdaptiveThrottle("api-throttle", rng=AlwaysDrawsZero()))
        self.manager = collector.track_manager(ResilienceManager("rm"))
        self.manager.register_timeout("op", 10.0)
        # a hedge whose budget refuses the second call's hedge (floor 1 per window, no ratio)
        self.hedge = collector.track(
            Hedge("lookup", delay=0.001, budget_ratio=0.0, min_hedges_per_second=0.1)
        )
        self.fallback = collector.track(Fallback("profile", value="cached"))
        self.release = anyio.Event()

    async def hold(self) -> None:
        await self.bulkhead.call(self.release.wait)

    async def hold_adaptive(self) -> None:
        await self.adaptive.call(self.release.wait)

    async def run(self, tg: anyio.abc.TaskGroup) -> None:
        """All traffic except releasing the bulkhead (so its gauges are non-zero when scraped)."""
        # breaker: 1 success, 2 failures (opens), 1 rejection; half-open and a closing probe;
        # then 2 failures open it again.
        await self.breaker.call(ok)
        for _ in range(2):
            with pytest.raises(OSError):
                await self.breaker.call(boom)
        with pytest.raises(CircuitOpen):
            await self.breaker.call(ok)
        await anyio.sleep(0.03)
        await self.breaker.call(ok)
        for _ in range(2):
            with pytest.raises(OSError):
                await self.breaker.call(boom)
        # retry: one success; one call that fails all 3 attempts (2 backoff delays).
        await self.retry.call(ok)
        with pytest.raises(OSError):
            await self.retry.call(boom)
        # health: one round, with the peer down.
        self.healthy = False
        await self.health.check_now()
        # rate limiter: a burst of 2 is admitted, the third refused; then a new rate.
        assert [self.limiter.try_acquire() for _ in range(3)] == [True, True, False]
        self.limiter.set_rate(0.5)
        assert [self.keyed.try_acquire(peer) for peer in ("a", "b", "a")] == [True, True, False]
        # bulkhead: one runs, one waits, the third is refused.
        tg.start_soon(self.hold)
        tg.start_soon(self.hold)
        for _ in range(1000):
            if self.bulkhead.statistics().queued:
                break
            await anyio.lowlevel.checkpoint()
        with pytest.raises(BulkheadFull):
            await self.bulkhead.call(ok)
        # error budget: 10 failures exhaust an SLO of 0.9.
        for _ in range(10):
            self.error_budget.record(False)
        # latency budget: 3 samples, 2 above the 100 ms target.
        for latency in (0.05, 0.2, 0.3):
            self.latency.record(latency)
        self.degradation.set_component_level("db", 2)
        with pytest.raises(Exception, match="chaos"):
            await self.chaos.call(ok)
        assert await self.manager.execute_with_all_protections("op", lambda ctx: ok()) == "ok"
        # adaptive concurrency (limit 1): one call, one held, one refused.
        await self.adaptive.call(ok)
        tg.start_soon(self.hold_adaptive)
        for _ in range(1000):
            if self.adaptive.inflight:
                break
            await anyio.lowlevel.checkpoint()
        with pytest.raises(ConcurrencyLimited):
            await self.adaptive.call(ok)
        # adaptive throttle: an accept, two refusals by the backend, then p = (3 - 2) / 4: refused.
        await self.throttle.call(ok)
        for _ in range(2):
            with pytest.raises(OSError):
                await self.throttle.call(boom)
        with pytest.raises(Throttled):
            await self.throttle.call(ok)
        # hedge: two slow-first calls; the first is hedged and the hedge wins, the second's hedge
        # is refused by the budget
        for _ in range(2):
            assert await self.hedge.call(slow_first) in (1, 2)
        # fallback: one success, one failure answered, one rejection answered
        assert await self.fallback.call(ok) == "ok"
        assert await self.fallback.call(boom) == "cached"
        assert await self.fallback.call(refused) == "cached"


# Each Go family: the samples that the traffic above must have changed, as (labels, before, after).
EXPECTED: dict[str, list[tuple[dict[str, str], float, float]]] = {
    "dwcp_circuit_breaker_state": [({"name": "db"}, 0, 2)],
    "dwcp_circuit_breaker_requests_total": [
        ({"name": "db", "result": "success"}, 0, 2),
        ({"name": "db", "result": "failure"}, 0, 4),
        ({"name": "db", "result": "rejected"}, 0, 1),
    ],
    "dwcp_circuit_breaker_failures_total": [({"name": "db"}, 0, 4)],
    "dwcp_circuit_breaker_state_changes_total": [
        ({"name": "db", "from_state": "closed", "to_state": "open"}, math.nan, 2),
        ({"name": "db", "from_state": "open", "to_state": "half-open"}, math.nan, 1),
        ({"name": "db", "from_state": "half-open", "to_state": "closed"}, math.nan, 1),
    ],
    "dwcp_circuit_breaker_request_duration_seconds": [({"name": "db"}, 0, 6)],  # _count
    "dwcp_retry_attempts_total": [
        ({"policy": "fetch", "attempt": "1"}, 0, 2),
        ({"policy": "fetch", "attempt": "2"}, 0, 1),
        ({"policy": "fetch", "attempt": "3"}, 0, 1),
    ],
    "dwcp_retry_success_total": [({"policy": "fetch"}, 0, 1)],
    "dwcp_retry_failures_total": [({"policy": "fetch", "reason": "exhausted"}, 0, 1)],
    "dwcp_retry_backoff_delay_seconds": [({"policy": "fetch"}, 0, 2)],
    "dwcp_health_check_status": [
        ({"checker": "rm-health", "check": "transport"}, math.nan, 1),
        ({"checker": "rm-health", "check": "peer"}, math.nan, 0),
    ],
    "dwcp_health_check_duration_seconds": [({"checker": "rm-health", "check": "peer"}, 0, 1)],
    "dwcp_health_check_total": [
        ({"checker": "rm-health", "check": "transport", "result": "success"}, 0, 1),
        ({"checker": "rm-health", "check": "peer", "result": "failure"}, 0, 1),
    ],
    "dwcp_health_check_failures_total": [({"checker": "rm-health", "check": "peer"}, 0, 1)],
    "dwcp_rate_limiter_allowed_total": [({"limiter": "api"}, 0, 2)],
    "dwcp_rate_limiter_rejected_total": [({"limiter": "api"}, 0, 1)],
    "dwcp_rate_limiter_current_rate": [({"limiter": "api"}, 1, 0.5)],
    "dwcp_bulkhead_concurrent": [({"bulkhead": "pool"}, 0, 1)],
    "dwcp_bulkhead_queued": [({"bulkhead": "pool"}, 0, 1)],
    "dwcp_bulkhead_rejected_total": [({"bulkhead": "pool"}, 0, 1)],
    "dwcp_bulkhead_wait_duration_seconds": [({"bulkhead": "pool"}, 0, 1)],  # the one admitted
    "dwcp_error_budget_remaining": [({"budget": "send"}, 1, 0)],
    "dwcp_error_budget_consumed": [({"budget": "send"}, 0, 1)],
    "dwcp_error_budget_exhausted_total": [({"budget": "send"}, 0, 1)],
    "dwcp_latency_budget_p50_seconds": [({"budget": "send"}, 0, 0.2)],
    "dwcp_latency_budget_p95_seconds": [({"budget": "send"}, 0, 0.3)],
    "dwcp_latency_budget_p99_seconds": [({"budget": "send"}, 0, 0.3)],
    "dwcp_latency_budget_violations_total": [({"budget": "send"}, 0, 2)],
}

EXPECTED_EXTRA: dict[str, list[tuple[dict[str, str], float]]] = {
    "dwcp_retry_budget_retries_total": [
        ({"budget": "fetch-budget"}, 2),
        ({"budget": "lookup-budget"}, 1),  # a hedge's own budget, tracked with it
    ],
    "dwcp_rate_limiter_keys": [({"limiter": "peers"}, 2)],
    "dwcp_rate_limiter_allowed_total": [({"limiter": "peers"}, 2)],
    "dwcp_rate_limiter_rejected_total": [({"limiter": "peers"}, 1)],
    "dwcp_retry_budget_requests_total": [({"budget": "fetch-budget"}, 2)],
    "dwcp_error_budget_requests_total": [({"budget": "send"}, 10)],
    "dwcp_error_budget_failures_total": [({"budget": "send"}, 10)],
    "dwcp_error_budget_objective": [({"budget": "send"}, 0.9)],
    "dwcp_latency_budget_target_seconds": [({"budget": "send"}, 0.1)],
    "dwcp_degradation_level": [({"manager": "rm-degradation"}, 2)],
    "dwcp_degradation_component_level": [({"manager": "rm-degradation", "component": "db"}, 2)],
    "dwcp_degradation_level_changes_total": [({"manager": "rm-degradation"}, 1)],
    "dwcp_chaos_injections_total": [({"chaos": "chaos", "fault": "exception"}, 1)],
    "dwcp_chaos_checks_total": [({"chaos": "chaos"}, 1)],
    "dwcp_chaos_enabled": [({"chaos": "chaos"}, 1)],
    "dwcp_hedge_calls_total": [({"policy": "lookup"}, 2)],
    "dwcp_hedge_attempts_started_total": [({"policy": "lookup"}, 1)],
    "dwcp_hedge_wins_total": [({"policy": "lookup"}, 1)],
    "dwcp_hedge_budget_refused_total": [({"policy": "lookup"}, 1)],
    "dwcp_hedge_delay_seconds": [({"policy": "lookup"}, 0.001)],
    "dwcp_fallback_calls_total": [({"policy": "profile"}, 3)],
    "dwcp_fallback_used_total": [
        ({"policy": "profile", "reason": "failure"}, 1),
        ({"policy": "profile", "reason": "rejected"}, 1),
        ({"policy": "profile", "reason": "degraded"}, 0),
    ],
    "dwcp_fallback_handler_errors_total": [({"policy": "profile"}, 0)],
    "dwcp_operation_requests_total": [
        ({"manager": "rm", "operation": "op", "result": "success"}, 1),
        ({"manager": "rm", "operation": "op", "result": "rejected"}, 0),
    ],
    "dwcp_adaptive_concurrency_limit": [({"limiter": "adaptive-pool"}, 1)],
    "dwcp_adaptive_concurrency_inflight": [({"limiter": "adaptive-pool"}, 1)],
    "dwcp_adaptive_concurrency_queued": [({"limiter": "adaptive-pool"}, 0)],
    "dwcp_adaptive_concurrency_admitted_total": [({"limiter": "adaptive-pool"}, 2)],
    "dwcp_adaptive_concurrency_rejected_total": [
        ({"limiter": "adaptive-pool", "reason": "full"}, 1),
        ({"limiter": "adaptive-pool", "reason": "timeout"}, 0),
    ],
    "dwcp_adaptive_concurrency_baseline_rtt_seconds": [({"limiter": "adaptive-pool"}, 0)],
    "dwcp_adaptive_concurrency_probes_total": [({"limiter": "adaptive-pool"}, 0)],
    "dwcp_adaptive_concurrency_wait_duration_seconds_count": [({"limiter": "adaptive-pool"}, 2)],
    "dwcp_adaptive_throttle_rejection_probability": [({"throttle": "api-throttle"}, 0.4)],
    "dwcp_adaptive_throttle_requests": [({"throttle": "api-throttle"}, 4)],
    "dwcp_adaptive_throttle_accepts": [({"throttle": "api-throttle"}, 1)],
    "dwcp_adaptive_throttle_allowed_total": [({"throttle": "api-throttle"}, 3)],
    "dwcp_adaptive_throttle_rejected_total": [({"throttle": "api-throttle"}, 1)],
    "dwcp_adaptive_throttle_outcomes_total": [
        ({"throttle": "api-throttle", "result": "accepted"}, 1),
        ({"throttle": "api-throttle", "result": "refused"}, 2),
        ({"throttle": "api-throttle", "result": "neutral"}, 0),
    ],
}


def sample_of(samples: Samples, family: Family, labels: dict[str, str]) -> float:
    name = f"dwcp_{family.key}"
    if family.type == "histogram":
        name += "_count"
    return samples.get((name, frozenset(labels.items())), math.nan)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-9)


async def test_every_go_metric_is_written_by_traffic_and_scraped_over_http() -> None:
    """Drive every primitive, scrape /metrics over HTTP: each of the 27 names moves as it should."""
    assert len(GO_FAMILIES) == 27
    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry)
    traffic = Traffic(collector)
    with serve_metrics(registry) as server:
        before = await scrape(server.url)
        async with anyio.create_task_group() as tg:
            await traffic.run(tg)
            during = await scrape(server.url)
            traffic.release.set()
        after = await scrape(server.url)
    by_name = {f"dwcp_{family.key}": family for family in FAMILIES}
    for name in GO_NAMES:
        family = by_name[name]
        assert family_view(during, name), f"{name} has no sample"
        if family.type == "histogram":
            for suffix in ("_bucket", "_count", "_sum"):
                assert any(n == name + suffix for n, _ in during), (name, suffix)
        for labels, old, new in EXPECTED[name]:
            assert same(sample_of(before, family, labels), old), (name, labels, "before")
            assert same(sample_of(during, family, labels), new), (name, labels, "during")
        assert any(not same(old, new) for _, old, new in EXPECTED[name]), name
    # Every family, the added ones included, has samples once the traffic ran (the fleet families
    # need Redis: tests/test_prometheus_fleet.py).
    assert names(during) >= {
        f"dwcp_{f.key}"
        for f in FAMILIES
        if f.type != "histogram" and not f.key.startswith("fleet_")
    }
    for name, expectations in EXPECTED_EXTRA.items():
        for labels, expected in expectations:
            assert same(value(during, name, **labels), expected), (name, labels)
    # The bulkhead after the release: nothing runs or waits, both calls were admitted.
    assert value(after, "dwcp_bulkhead_concurrent", bulkhead="pool") == 0
    assert value(after, "dwcp_bulkhead_queued", bulkhead="pool") == 0
    assert value(after, "dwcp_bulkhead_wait_duration_seconds_count", bulkhead="pool") == 2
    # Histogram buckets are cumulative and end at the count.
    for name in (
        "dwcp_retry_backoff_delay_seconds",
        "dwcp_circuit_breaker_request_duration_seconds",
    ):
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (n, labels), v in after.items()
            if n == f"{name}_bucket"
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == total(after, f"{name}_count")
    # The retry's backoff was 1 ms then 2 ms: its buckets say so.
    assert value(after, "dwcp_retry_backoff_delay_seconds_bucket", policy="fetch", le="0.001") == 1
    assert value(after, "dwcp_retry_backoff_delay_seconds_bucket", policy="fetch", le="0.002") == 2
    assert math.isclose(value(after, "dwcp_retry_backoff_delay_seconds_sum", policy="fetch"), 0.003)


async def test_burn_rate_gauges_carry_their_windows() -> None:
    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry)
    budget = collector.track(ErrorBudget("send", slo=0.99, min_requests=1))
    for success in (True, False, False, True):
        budget.record(success)
    samples = parse(generate_latest(registry).decode())
    windows = {
        dict(labels)["window"]: v for (n, labels), v in samples.items()
        if n == "dwcp_error_budget_burn_rate"
    }  # fmt: skip
    assert set(windows) == {"1h", "5m", "6h", "30m"}
    assert all(math.isclose(rate, 0.5 / 0.01) for rate in windows.values()), windows


def test_registry_is_injectable_and_collectors_share_one_registration() -> None:
    """Two collectors on one registry and namespace, same names: no DuplicateTimeseries; counts
    merge; a third registry sees none of it; closing the last one unregisters (R41)."""
    registry, other = CollectorRegistry(), CollectorRegistry()
    first = ResilienceCollector(registry=registry)
    second = ResilienceCollector(registry=registry)
    a = first.track(RateLimiter("db", rate=10.0, burst=5, clock=lambda: 0.0))
    b = second.track(RateLimiter("db", rate=20.0, burst=5, clock=lambda: 0.0))
    for limiter, n in ((a, 3), (b, 4)):
        for _ in range(n):
            assert limiter.try_acquire()
    assert registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "db"}) == 7
    assert registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "db"}) == 30
    assert {m.name for m in first.collect()} == {m.name for m in second.collect()}
    assert other.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "db"}) is None
    first.close()
    assert registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "db"}) == 4
    second.close()
    assert registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "db"}) is None
    with ResilienceCollector(registry=registry) as third:  # registers again after the last close
        third.track(a)
        assert registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "db"}) == 3
    assert "dwcp_rate_limiter" not in generate_latest(registry).decode()


def test_a_collector_only_reads_its_own_primitives() -> None:
    registry = CollectorRegistry()
    with (
        ResilienceCollector(registry=registry) as first,
        ResilienceCollector(registry=registry) as second,
    ):
        first.track(RateLimiter("a", rate=1.0, burst=1, clock=lambda: 0.0))
        second.track(RateLimiter("b", rate=1.0, burst=1, clock=lambda: 0.0))

        def limiters(collector: ResilienceCollector) -> set[str]:
            return {
                sample.labels["limiter"]
                for family in collector.collect()
                for sample in family.samples
                if family.name == "dwcp_rate_limiter_current_rate"
            }

        assert limiters(first) == {"a"}
        assert limiters(second) == {"b"}


def test_namespaces_are_separate_and_configurable() -> None:
    registry = CollectorRegistry()
    with (
        ResilienceCollector("acme", registry=registry) as acme,
        ResilienceCollector("", registry=registry) as bare,
        ResilienceCollector(registry=registry) as dwcp,
    ):
        for collector in (acme, bare, dwcp):
            collector.track(RateLimiter("x", rate=3.0, burst=1, clock=lambda: 0.0))
        for name in ("acme_rate_limiter_current_rate", "rate_limiter_current_rate",
                     "dwcp_rate_limiter_current_rate"):  # fmt: skip
            assert registry.get_sample_value(name, {"limiter": "x"}) == 3.0, name


def test_a_name_collision_with_a_user_metric_is_reported_at_construction() -> None:
    """R42: the user already has ``dwcp_circuit_breaker_state``: a clear error, no half state."""
    registry = CollectorRegistry()
    Gauge("dwcp_circuit_breaker_state", "theirs", registry=registry)
    with pytest.raises(ValueError, match=r"namespace 'dwcp' collide.*namespace="):
        ResilienceCollector(registry=registry)
    with ResilienceCollector("mine", registry=registry) as collector:  # another namespace works
        collector.track(CircuitBreaker("db", clock=lambda: 0.0))
        assert registry.get_sample_value("mine_circuit_breaker_state", {"name": "db"}) == 0


def test_same_named_breakers_merge_counts_and_take_the_worst_state() -> None:
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        closed = collector.track(CircuitBreaker("db", clock=lambda: 0.0))
        isolated = collector.track(CircuitBreaker("db", clock=lambda: 0.0))
        collector.track(closed)  # tracking twice is a no-op
        isolated.force_open()
        assert registry.get_sample_value("dwcp_circuit_breaker_state", {"name": "db"}) == 2
        isolated.reset()
        assert registry.get_sample_value("dwcp_circuit_breaker_state", {"name": "db"}) == 0
        assert collector.tracked() == (closed, isolated)


def test_cardinality_is_capped_with_folding_into_other() -> None:
    """R43: 2000 distinct names, cap 50: at most 51 series per family, totals kept in "other"."""
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry, max_label_values=50) as collector:
        limiters = [
            collector.track(RateLimiter(f"url-{i}", rate=1.0, burst=3, clock=lambda: 0.0))
            for i in range(2000)
        ]
        for i, limiter in enumerate(limiters):
            for _ in range(1 + i % 3):
                limiter.try_acquire()
        samples = parse(generate_latest(registry).decode())
    allowed = {
        dict(labels)["limiter"]: v for (n, labels), v in samples.items()
        if n == "dwcp_rate_limiter_allowed_total"
    }  # fmt: skip
    assert len(allowed) == 51
    assert set(allowed) == {f"url-{i}" for i in range(50)} | {OTHER}  # first tracked keep names
    assert sum(allowed.values()) == sum(1 + i % 3 for i in range(2000))
    assert allowed[OTHER] == sum(1 + i % 3 for i in range(50, 2000))
    for family in FAMILIES:
        series = {labels for n, labels in samples if n.startswith(f"dwcp_{family.key}")}
        assert len({frozenset((k, v) for k, v in s if k != "le") for s in series}) <= 51


def test_health_checks_fold_by_checker_and_check_pair() -> None:
    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry, max_label_values=2, register=False)
    monitor = HealthMonitor("h", checks=[PingCheck(f"c{i}", lambda: True) for i in range(5)])
    collector.track(monitor)
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    checks = {
        dict(labels)["check"] for (n, labels) in samples if n == "dwcp_health_check_total"
    }  # fmt: skip
    assert checks == {"c0", "c1", OTHER}


def test_retry_attempt_label_folds_late_attempts() -> None:
    """Attempts past the 16 counted slots share the label "16+" (the attempt label stays bounded)."""
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        retry = collector.track(Retry("r", max_retries=30))
        samples = parse(generate_latest(registry).decode())
    attempts = [
        dict(labels)["attempt"] for n, labels in samples if n == "dwcp_retry_attempts_total"
    ]
    assert attempts == [*map(str, range(1, 16)), "16+"]
    assert retry.max_attempts == 31


def test_untrack_removes_the_series() -> None:
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        limiter = collector.track(RateLimiter("gone", rate=1.0, burst=1, clock=lambda: 0.0))
        assert registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "gone"}) == 1
        collector.untrack(limiter)
        collector.untrack(limiter)  # no error
        assert (
            registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "gone"}) is None
        )


def test_tracking_leaves_the_hot_path_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No statistics() call, no prometheus_client call, and the same methods, between scrapes."""
    calls: list[str] = []
    original = RateLimiter.statistics

    def counting(self: RateLimiter) -> Any:
        calls.append("statistics")
        return original(self)

    monkeypatch.setattr(RateLimiter, "statistics", counting)
    limiter = RateLimiter("hot", rate=1e9, burst=1000, clock=lambda: 0.0)
    method = limiter.try_acquire
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        collector.track(limiter)
        assert limiter.try_acquire == method
        for _ in range(500):
            limiter.try_acquire()
        assert calls == []
        assert (
            registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "hot"}) == 500
        )
        assert calls == ["statistics"]


def test_a_broken_primitive_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(RateLimiter):
        def statistics(self) -> Any:
            raise RuntimeError("broken")

    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        collector.track(Broken("bad", rate=1.0, burst=1, clock=lambda: 0.0))
        collector.track(RateLimiter("good", rate=2.0, burst=1, clock=lambda: 0.0))
        with caplog.at_level(logging.ERROR, logger="dwcp_resilience"):
            assert (
                registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "good"})
                == 2
            )
        assert "cannot read" in caplog.text


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        ResilienceCollector("1bad", register=False)
    with pytest.raises(ValueError, match="namespace"):
        ResilienceCollector("has-dash", register=False)
    with pytest.raises(TypeError, match="namespace"):
        ResilienceCollector(3, register=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_label_values"):
        ResilienceCollector(max_label_values=0, register=False)
    with pytest.raises(TypeError, match="max_label_values"):
        ResilienceCollector(max_label_values=True, register=False)
    collector = ResilienceCollector(register=False)
    with pytest.raises(TypeError, match="cannot track"):
        collector.track(object())
    with pytest.raises(TypeError, match="ResilienceManager"):
        collector.track_manager(RateLimiter("x", rate=1.0, burst=1))
    with pytest.raises(ValueError, match="port"):
        serve_metrics(CollectorRegistry(), port=70000)
    assert "unregistered" in repr(collector)


def test_every_family_is_declared_even_without_samples() -> None:
    """describe() gives every family (so a registry checks names), and an empty collector still
    exposes each family's HELP and TYPE."""
    collector = ResilienceCollector(register=False)
    described = {metric.name for metric in collector.describe()}
    assert len(described) == len(FAMILIES)
    text = generate_latest(_registry_with(collector)).decode()
    for family in FAMILIES:
        assert f"# TYPE dwcp_{family.key} {family.type}" in text


def _registry_with(collector: ResilienceCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_histograms_with_other_bounds_are_rebucketed_conservatively() -> None:
    sink = Sink()
    sink.histogram("bulkhead_wait_duration_seconds", ("b",), bounds=(0.007, 0.3, 20.0),
                   cumulative=(1, 2, 3), count=4, total=9.0)  # fmt: skip
    counts, total_sum = sink.values["bulkhead_wait_duration_seconds"][("b",)]
    #             .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 +Inf
    assert counts == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 4]
    assert total_sum == 9.0


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(300.0, "5m"), (3600.0, "1h"), (86400.0, "1d"), (1800.0, "30m"), (90.0, "90s"), (0.5, "0.5s")],
)
def test_duration_labels(seconds: float, label: str) -> None:
    assert duration_label(seconds) == label


async def test_the_endpoint_serves_text_and_openmetrics_and_nothing_else() -> None:
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        collector.track(RateLimiter("x", rate=1.0, burst=1))
        server = serve_metrics(registry)
        try:
            assert server.host == "127.0.0.1" and server.port > 0
            status, ctype, body = await anyio.to_thread.run_sync(fetch, server.url)
            assert status == 200 and ctype.startswith("text/plain")
            assert 'dwcp_rate_limiter_current_rate{limiter="x"} 1.0' in body
            status, ctype, body = await anyio.to_thread.run_sync(
                fetch, server.url, "application/openmetrics-text; version=1.0.0"
            )
            assert status == 200 and ctype.startswith("application/openmetrics-text")
            assert body.rstrip().endswith("# EOF")
            status, _, _ = await anyio.to_thread.run_sync(
                fetch, server.url.replace("/metrics", "/nope")
            )
            assert status == 404
        finally:
            await server.aclose()
        assert "closed" in repr(server)
        with pytest.raises(OSError):
            await anyio.to_thread.run_sync(fetch, server.url)
        server.close()  # idempotent


def test_serve_metrics_outside_a_loop_renders_in_its_thread() -> None:
    registry = CollectorRegistry()
    with ResilienceCollector(registry=registry) as collector:
        collector.track(RateLimiter("sync", rate=4.0, burst=1))
        with serve_metrics(registry) as server:
            status, _, body = fetch(server.url)
    assert status == 200
    assert 'dwcp_rate_limiter_current_rate{limiter="sync"} 4.0' in body


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_server_that_outlives_its_loop_answers_503(backend: str) -> None:
    """Scrapes render on the loop that started the server; once it is gone they fail cleanly."""

    async def start() -> MetricsServer:
        return serve_metrics(CollectorRegistry())

    options = {"loop_factory": asyncio.new_event_loop} if backend == "asyncio" else {}
    server = anyio.run(start, backend=backend, backend_options=options)
    try:
        status, _, body = fetch(server.url)
    finally:
        server.close()
    assert status == 503
    assert "not running" in body


def test_the_default_registry_is_used_only_when_asked() -> None:
    assert REGISTRY.get_sample_value("dwcp_chaos_enabled", {"chaos": "global"}) is None
    with ResilienceCollector() as collector:
        collector.track(Chaos("global", rate=0.0))
        assert REGISTRY.get_sample_value("dwcp_chaos_enabled", {"chaos": "global"}) == 1
    assert REGISTRY.get_sample_value("dwcp_chaos_enabled", {"chaos": "global"}) is None


async def test_two_managers_with_the_same_names_share_series_without_crashing() -> None:
    """The Go package panicked on a second NewPrometheusMetrics; here two managers named alike,
    with the same operation names, are tracked by two collectors of one registry."""

    registry = CollectorRegistry()
    managers = [ResilienceManager("rm"), ResilienceManager("rm")]
    collectors = [ResilienceCollector(registry=registry) for _ in managers]

    async def op(ctx: object) -> str:
        return "ok"

    for manager, collector, calls in zip(managers, collectors, (3, 4), strict=True):
        collector.track_manager(manager)
        manager.register_circuit_breaker("send", max_failures=5, record_latency=True)
        manager.register_error_budget("send", slo=0.99)
        manager.register_latency_budget("send", target=0.1)
        for _ in range(calls):
            assert await manager.execute_with_all_protections("send", op) == "ok"
    with serve_metrics(registry) as server:
        samples = await scrape(server.url)
    assert value(samples, "dwcp_circuit_breaker_requests_total", name="send", result="success") == 7
    assert value(samples, "dwcp_error_budget_requests_total", budget="send") == 7
    assert value(samples, "dwcp_operation_requests_total", manager="rm", operation="send",
                 result="success") == 7  # fmt: skip
    assert value(samples, "dwcp_operation_requests_total", manager="rm", operation="send",
                 result="failure") == 0  # fmt: skip
    assert value(samples, "dwcp_latency_budget_target_seconds", budget="send") == 0.1
    assert value(samples, "dwcp_degradation_level", manager="rm-degradation") == 0
    for collector in collectors:
        collector.close()
    assert registry.get_sample_value("dwcp_error_budget_requests_total", {"budget": "send"}) is None


def test_a_tracked_manager_is_read_whole_at_every_scrape() -> None:
    """Operations registered after tracking appear; a policy also tracked directly counts once."""

    registry = CollectorRegistry()
    manager = ResilienceManager("rm")
    with ResilienceCollector(registry=registry) as collector:
        collector.track_manager(manager)
        assert (
            registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "recv"}) is None
        )
        limiter = manager.register_rate_limiter("recv", rate=5.0, burst=2)
        collector.track(limiter)
        assert limiter.try_acquire()
        assert (
            registry.get_sample_value("dwcp_rate_limiter_allowed_total", {"limiter": "recv"}) == 1
        )
        assert registry.get_sample_value("dwcp_rate_limiter_current_rate", {"limiter": "recv"}) == 5
