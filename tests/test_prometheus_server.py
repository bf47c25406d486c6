"""Integration: a real Prometheus server scrapes a test app, and every dashboard query returns data.

The app (every primitive, tracked, under steady traffic) serves ``/metrics`` with ``serve_metrics``;
a ``prometheus`` binary (Debian package ``prometheus``) on a free loopback port scrapes it every
second with the shipped alert rules loaded. Then each panel query of the shipped Grafana dashboard
runs through ``/api/v1/query`` and must return a sample, and every rule must evaluate cleanly.
Without the binary the test skips locally and fails in CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from helpers import real_time_backends
from prometheus_client import CollectorRegistry

from dwcp_resilience.core.errors import BulkheadFull, CircuitOpen, Throttled
from dwcp_resilience.manager import ResilienceManager
from dwcp_resilience.ops import dashboard_queries, write_ops
from dwcp_resilience.policies.backoff import ExponentialBackoff
from dwcp_resilience.policies.breaker import CircuitBreaker
from dwcp_resilience.policies.bulkhead import Bulkhead
from dwcp_resilience.policies.chaos import Chaos, ErrorFault
from dwcp_resilience.policies.concurrency import AdaptiveConcurrencyLimiter
from dwcp_resilience.policies.fallback import Fallback
from dwcp_resilience.policies.hedge import Hedge, hedge_attempt
from dwcp_resilience.policies.keyed import KeyedRateLimiter
from dwcp_resilience.policies.ratelimit import RateLimiter
from dwcp_resilience.policies.retry import Retry
from dwcp_resilience.policies.retry_budget import RetryBudget
from dwcp_resilience.policies.throttle import AdaptiveThrottle
from dwcp_resilience.prometheus import ResilienceCollector, serve_metrics
from dwcp_resilience.redis import (
    FleetBreaker,
    FleetErrorBudget,
    QuorumShare,
    RedisBackend,
    RedisRateLimiter,
)
from dwcp_resilience.slo.checks import PingCheck
from dwcp_resilience.slo.degradation import DegradationManager
from dwcp_resilience.slo.error_budget import ErrorBudget
from dwcp_resilience.slo.health import HealthMonitor
from dwcp_resilience.slo.latency_budget import LatencyBudget

pytestmark = pytest.mark.anyio

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RATE_WINDOW = "30s"  # stands for Grafana's $__rate_interval: 1 s scrapes give ~30 samples


# Real time on asyncio: the app must make traffic while a real server scrapes it.
anyio_backend = real_time_backends("asyncio")


@pytest.fixture
def prometheus_binary() -> str:
    if not Path(PROMETHEUS).exists():
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing (Debian package prometheus)")
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    return PROMETHEUS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = get_json(url)
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise OSError("boom")


class App:
    """Every primitive, tracked, under steady traffic."""

    def __init__(self, collector: ResilienceCollector, redis_url: str) -> None:
        track = collector.track
        self.breaker = track(CircuitBreaker("db", max_failures=3, reset_timeout=0.2,
                                            half_open_successes=1, record_latency=True))  # fmt: skip
        self.retry = track(
            Retry("fetch", max_retries=2, retry_on=OSError,
                  budget=RetryBudget(name="fetch-budget", ratio=1.0),
                  backoff=ExponentialBackoff(initial_delay=0.001, max_delay=0.004, jitter=False))
        )  # fmt: skip
        self.health = track(
            HealthMonitor("app-health", interval=0.2, timeout=0.1,
                          checks=[PingCheck("transport", lambda: True),
                                  PingCheck("peer", lambda: self.tick % 2 == 0)])
        )  # fmt: skip
        self.limiter = track(RateLimiter("api", rate=50.0, burst=2))
        self.keyed = track(KeyedRateLimiter("peers", rate=50.0, burst=2))
        self.bulkhead = track(Bulkhead("pool", max_concurrent=1, max_queue=4))
        self.error_budget = track(ErrorBudget("send", slo=0.99, min_requests=10))
        self.latency = track(LatencyBudget("send", target=0.005))
        self.degradation = track(DegradationManager("app-degradation"))
        self.chaos = track(Chaos("chaos", rate=0.5, faults=[ErrorFault()], rng=7))
        self.adaptive = track(AdaptiveConcurrencyLimiter("adaptive-pool", initial_limit=2))
        self.throttle = track(AdaptiveThrottle("api-throttle"))
        self.hedge = track(Hedge("lookup", delay=0.001))
        self.fallback = track(Fallback("profile", value="cached"))
        self.manager = collector.track_manager(ResilienceManager("app"))
        self.manager.register_bulkhead("op", max_concurrent=4)
        self.manager.register_error_budget("op", slo=0.99)
        # Fleet primitives on a real Redis; a scrape reads their cached statistics() only, which
        # their own background tasks (run below) refresh.
        self.fleet = RedisBackend(redis_url, instance="app")
        self.fleet_limiter = track(RedisRateLimiter(self.fleet, "fleet-api", rate=50.0, burst=2))
        self.fleet_breaker = track(
            FleetBreaker(self.fleet, CircuitBreaker("fleet-db"), quorum=QuorumShare(0.5),
                         poll_interval=0.2)
        )  # fmt: skip
        self.fleet_budget = track(
            FleetErrorBudget(self.fleet, "fleet-send", slo=0.99, flush_interval=0.2,
                             snapshot_interval=0.2)
        )  # fmt: skip
        self.tick = 0

    async def flaky(self) -> str:
        self.tick += 1
        if self.tick % 2:
            raise OSError("every other attempt fails")
        return "ok"

    async def op(self, ctx: object) -> str:
        if self.tick % 5 == 0:
            raise OSError("one call in five fails")
        return "ok"

    async def slow_first(self) -> int:
        """A first attempt of 5 ms, hedged after 1 ms by an instant one (within the budget)."""
        number = hedge_attempt()
        await anyio.sleep(0.005 if number == 1 else 0.0)
        return number

    async def work(self) -> None:
        await anyio.sleep(0.002)

    async def step(self) -> None:
        with contextlib.suppress(OSError, CircuitOpen):  # failures and rejections are traffic
            await self.breaker.call(ok if self.tick % 7 else boom)
        # Every call needs its one retry, which the budget (ratio 1.0 over its window) refused
        # once on a loaded CI machine (3.13: "Retry 'fetch' gave up after 1 attempt (budget)"
        # ended the test). A give-up is traffic too, as the other lines' failures are.
        with contextlib.suppress(OSError):
            await self.retry.call(self.flaky)
        self.limiter.try_acquire()
        self.keyed.try_acquire(f"peer-{self.tick % 5}")
        with contextlib.suppress(Exception):  # the injected fault
            await self.chaos.call(ok)
        self.error_budget.record(self.tick % 10 != 0)
        self.fleet_budget.record(self.tick % 10 != 0)
        await self.fleet_limiter.try_acquire()
        with contextlib.suppress(OSError):
            await self.manager.execute_with_all_protections("op", self.op)
        await self.adaptive.call(self.work)
        with contextlib.suppress(OSError, Throttled):  # refusals by the backend, and local ones
            await self.throttle.call(ok if self.tick % 3 else boom)
        await self.hedge.call(self.slow_first)
        await self.fallback.call(ok if self.tick % 3 else boom)
        self.latency.record(0.001 * (self.tick % 10))

    async def run(
        self, tg: anyio.abc.TaskGroup, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        await self.health.start(tg)
        for _ in range(3):  # trip the breaker once so that state changes exist
            with pytest.raises(OSError):
                await self.breaker.call(boom)
        self.degradation.set_component_level("transport", 1)
        async with self.fleet_breaker, self.fleet_budget:
            task_status.started()
            for _ in range(3):
                tg.start_soon(self.bulkhead_load)
            while True:
                await self.step()
                await anyio.sleep(0.01)

    async def bulkhead_load(self) -> None:
        while True:
            with contextlib.suppress(BulkheadFull):  # a full queue is traffic too
                await self.bulkhead.call(self.work)
            await anyio.sleep(0.001)


def prometheus_config(folder: Path, target: str) -> Path:
    rules = write_ops(folder / "rules")["alerts"]
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n"
        "  - job_name: dwcp-test\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    return config


async def wait_for(predicate: Any, seconds: float) -> None:
    with anyio.fail_after(seconds):
        while not await anyio.to_thread.run_sync(predicate):  # noqa: ASYNC110 - polls a process
            await anyio.sleep(0.2)


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus_binary: str, tmp_path: Path, redis_url: str
) -> None:
    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry)
    app = App(collector, redis_url)
    # The backend closes after the task group (not inside its cancelled scope: a redis-py client
    # closed while cancelled leaves its connections open).
    async with app.fleet:
        await _scrape_every_dashboard_query(app, registry, collector, prometheus_binary, tmp_path)


async def _scrape_every_dashboard_query(
    app: App,
    registry: CollectorRegistry,
    collector: ResilienceCollector,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    async with anyio.create_task_group() as tg:
        await tg.start(app.run, tg)
        server = serve_metrics(registry)
        config = prometheus_config(tmp_path, f"127.0.0.1:{server.port}")
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; stopped in finally
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await wait_for(lambda: ready(base) or process.poll() is not None, 20)
            assert process.poll() is None, process.stderr.read() if process.stderr else ""

            def scraped_enough() -> bool:
                samples = query(base, 'count_over_time(up{job="dwcp-test"}[1m])')
                return bool(samples) and float(samples[0]["value"][1]) >= 5

            await wait_for(scraped_enough, 20)
            assert query(base, 'up{job="dwcp-test"}')[0]["value"][1] == "1"
            empty: list[str] = []
            for title, expr in dashboard_queries():
                promql = expr.replace("$__rate_interval", RATE_WINDOW)
                result = await anyio.to_thread.run_sync(query, base, promql)
                values = [float(sample["value"][1]) for sample in result]
                if not values or all(math.isnan(v) for v in values):
                    empty.append(f"{title}: {promql} -> {result}")
            assert not empty, "\n".join(empty)
            groups = (await anyio.to_thread.run_sync(get_json, f"{base}/api/v1/rules"))["data"]
            rules = [rule for group in groups["groups"] for rule in group["rules"]]
            assert len(rules) == 19
            assert all(rule["health"] == "ok" for rule in rules), [
                (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
            ]
            ratios = await anyio.to_thread.run_sync(
                query, base, "dwcp:error_budget_error_ratio:rate5m"
            )
            assert ratios and 0 < float(ratios[0]["value"][1]) < 1
        finally:
            process.terminate()
            try:
                await anyio.to_thread.run_sync(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await anyio.to_thread.run_sync(process.wait)
            if process.stderr is not None:
                process.stderr.close()
            await server.aclose()
            collector.close()
            tg.cancel_scope.cancel()
