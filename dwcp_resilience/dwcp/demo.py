"""``make demo``: three DWCP peers on loopback, one behind a chaos proxy, and clients riding through.

DWCP (Distributed WAN Communication Protocol, the Go original's name) is the package's example
protocol: peers over TCP keep a mailbox per node; clients send, receive and discover peers.

What it runs (about 35 seconds):

- peers ``peer-a``, ``peer-b`` and ``peer-c`` on 127.0.0.1 (each seeded with the others);
- a :class:`~dwcp_resilience.dwcp.proxy.ChaosProxy` in front of ``peer-c`` with a fault schedule:
  a latency tail (a few chunks slow), latency and jitter, random connection drops, a stall (accept
  and never answer), 1-byte slicing under a bandwidth cap, and resets mid-frame;
- client ``alice`` sends messages to ``bob`` through the proxy; ``bob`` receives them through the
  proxy; ``carol`` discovers peers on ``peer-c`` through the proxy too, five times a second, with
  discovery hedged (a second attempt on a fresh connection once one is slower than the p95 of
  recent ones). Every operation runs through each client's
  :class:`~dwcp_resilience.ResilienceManager`;
- live state on screen (breaker states, tokens, in-flight, retries, budgets, health, degradation),
  under a legend (:data:`LEGEND`) that says what each counter counts: calls as the callers saw
  them, attempts as the breaker saw them, rejections as the error budget counts them;
- ``/metrics`` served on 127.0.0.1 (the port is printed);
- a summary (sent, delivered exactly once, lost; discoveries with their p99 latency and the hedges
  started and won) and a timeline picture (PNG): the send breaker's state, the degradation level
  and every send's latency, in three panels over the fault schedule.

The process exits 1 if a message was lost or delivered twice.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..core.clock import loop_time
from ..manager import ResilienceManager
from ..policies.breaker_core import BreakerState
from ..policies.hedge import Percentile
from ..slo.degradation import DegradationLevel
from .client import DISCOVER, RECEIVE, SEND, DWCPResilienceConfig, DWCPResilientClient
from .faults import Bandwidth, Drop, Fault, Latency, ResetPeer, Slicer, Stall
from .peer import DWCPPeer
from .proxy import ChaosProxy
from .scenario import ScenarioSummary, run_scenario
from .timeline import save_timeline

__all__ = ("DEMO_SCHEDULE", "DWCP_MEANING", "LEGEND", "DemoResult", "run_demo")

DWCP_MEANING = (
    "DWCP (Distributed WAN Communication Protocol): the package's example peer-to-peer protocol "
    "over TCP; peers keep a mailbox per node, clients send, receive and discover peers."
)
"""What DWCP is, in one line (the demo prints it first)."""

LEGEND: tuple[str, ...] = (
    "calls ok/fail/rej: what the callers saw, one per call: ok, failed (an error after the "
    "retries), rejected (refused by a protection: CircuitOpen, RateLimited, BulkheadFull)",
    "attempts ok/fail/refused: what the breaker saw, one per attempt (each retry is one more); "
    "refused: the breaker was not closed",
    "retries: backoff sleeps begun | budget left: the error budget (SLO 99.9 %); failed and "
    "rejected calls both spend it | health: ping checks, unknown until the first one ran",
)
"""What the columns of the status display count (printed above the plain lines, under the table)."""

#: (start, duration, fault, label) in seconds from the proxy's start.
DEMO_SCHEDULE: tuple[tuple[float, float, Fault, str], ...] = (
    (1.5, 3.5, Latency(0.2, probability=0.05), "tail: 5 % of chunks +200 ms"),
    (5.0, 5.0, Latency(0.05, 0.05), "latency 50 ms +/- 50 ms"),
    (10.0, 4.0, Drop(0.04), "random drops 4 %"),
    (14.0, 5.0, Stall(), "stall: accept, never answer"),
    (19.0, 4.0, Slicer(1), "1-byte slices, 200 kB/s cap"),
    (19.0, 4.0, Bandwidth(200_000), ""),
    (23.0, 3.0, ResetPeer(), "reset mid-frame"),
)

#: Seconds between two of carol's discoveries.
DISCOVER_EVERY = 0.2

#: (start, downtime): the peer behind the proxy is stopped (every connection closed, connections
#: refused) and started again on the same port and SQLite file.
PEER_RESTART: tuple[float, float] = (27.0, 2.5)
RESTART_LABEL = "peer-c down, restarted on its store"


@dataclass(slots=True)
class DemoResult:
    """The demo's outcome: the scenario summary, the metrics URL, the picture path."""

    summary: ScenarioSummary
    metrics_url: str
    picture: str | None
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    recovery: float | None = None
    """Seconds from the peer's restart to alice's first successful send after it."""


class _RestartablePeer:
    """peer-c: served in its own cancel scope, so the demo can stop it and start a new one on the
    same port and store, as a restart after a crash would."""

    def __init__(self, tg: anyio.abc.TaskGroup, **options: Any) -> None:
        self._tg = tg
        self._options = options
        self._scope = anyio.CancelScope()
        self.port = 0

    async def start(self) -> int:
        peer = DWCPPeer("peer-c", port=self.port, **self._options)
        self._scope = scope = anyio.CancelScope()

        async def serve(*, task_status: anyio.abc.TaskStatus[int]) -> None:
            with scope:
                await peer.serve(task_status=task_status)

        self.port = await self._tg.start(serve)
        return self.port

    def stop(self) -> None:
        self._scope.cancel()


def _client_config(node: str, address: str) -> DWCPResilienceConfig:
    # Go defaults, but timings scaled to a 45-second demo.
    return DWCPResilienceConfig(
        node_id=node,
        peers=(address,),
        circuit_timeout=0.5,
        circuit_reset_time=2.0,
        initial_retry_delay=0.05,
        max_retry_delay=0.4,
        health_check_interval=1.0,
        health_check_timeout=0.5,
        requests_per_second=200.0,
        burst_size=50,
        connect_timeout=0.5,
        operation_deadline=3.0,
        latency_target=0.1,
        availability_window=300.0,
        # the default p95, but it follows the samples after 10 discoveries (2 s), not 20
        discover_hedge=Percentile(0.95, window=200, min_samples=10, fallback=0.25, minimum=0.002),
    )


def _state_line(name: str, manager: ResilienceManager, operation: str) -> dict[str, str]:
    parts = manager.components(operation)
    row = {"client": name, "operation": operation}
    breaker: Any = parts.get("circuit_breaker")
    if breaker is not None:
        bs = breaker.statistics()
        row["breaker"] = bs.state.name
        row["attempts ok/fail/refused"] = f"{bs.successes}/{bs.failures}/{bs.rejected}"
    else:
        row["breaker"] = row["attempts ok/fail/refused"] = "-"
    retry: Any = parts.get("retry")
    row["retries"] = str(retry.statistics().retries) if retry is not None else "-"
    limiter: Any = parts.get("rate_limiter")
    row["tokens"] = f"{limiter.statistics().tokens:.0f}" if limiter is not None else "-"
    bulkhead: Any = parts.get("bulkhead")
    if bulkhead is not None:
        stats = bulkhead.statistics()
        row["in-flight"] = f"{stats.concurrent}/{stats.max_concurrent} q{stats.queued}"
    else:
        row["in-flight"] = "-"
    counts = manager.statistics(operation)
    row["calls ok/fail/rej"] = f"{counts.successes}/{counts.failures}/{counts.rejected}"
    budget: Any = parts.get("error_budget")
    row["budget left"] = f"{budget.remaining:.1%}" if budget is not None else "-"
    latency: Any = parts.get("latency_budget")
    row["p95"] = f"{latency.p95 * 1000:.0f} ms" if latency is not None and latency.total else "-"
    return row


def _render_plain(rows: list[dict[str, str]], footer: str) -> str:
    lines = [
        "  ".join(f"{k}={v}" for k, v in row.items() if k not in {"client", "operation"})
        for row in rows
    ]
    labels = [f"{row['client']}/{row['operation']}" for row in rows]
    width = max(len(label) for label in labels)
    body = "\n".join(
        f"  {label:<{width}}  {line}" for label, line in zip(labels, lines, strict=True)
    )
    return f"{footer}\n{body}"


def _table(rows: list[dict[str, str]], footer: str) -> Any:
    """The live display: a rich table, the footer as its title, the legend as its caption."""
    from rich.table import Table  # noqa: PLC0415 - optional extra "demo"

    grid = Table(
        title=footer, title_justify="left", caption="\n".join(LEGEND), caption_justify="left"
    )
    for key in rows[0]:
        grid.add_column(key)
    for row in rows:
        grid.add_row(*row.values())
    return grid


def _health(client: DWCPResilientClient) -> str:
    """``ok``, ``DOWN`` (a check failed), or ``unknown`` while a check has not decided yet."""
    states = [status.healthy for status in client.manager.health.statuses().values()]
    if False in states:
        return "DOWN"
    if None in states:
        return "unknown"
    return "ok"


async def run_demo(
    *,
    messages: int = 1500,
    pace: float = 0.12,
    concurrency: int = 8,
    metrics_port: int = 0,
    picture: str | None = "dwcp-demo-timeline.png",
    out: Callable[[str], None] = print,
    live: bool | None = None,
    time_scale: float = 1.0,
) -> DemoResult:
    """Run the demo (see the module docstring) and return what happened.

    ``time_scale`` stretches (> 1) or compresses (< 1) the fault schedule.
    """
    plan = tuple((a * time_scale, d * time_scale, f, label) for a, d, f, label in DEMO_SCHEDULE)
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from ..prometheus import ResilienceCollector, serve_metrics  # noqa: PLC0415

    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry)
    # The peers keep their mailboxes in SQLite, as `python -m dwcp_resilience peer` does: an
    # acknowledged message is on disk before its ACK leaves.
    with tempfile.TemporaryDirectory(prefix="dwcp-demo-") as tmpdir:
        store = Path(tmpdir)
        async with DWCPPeer("peer-a", lease_timeout=1.5, store_path=store / "a.db") as peer_a:
            seeds_a = (f"127.0.0.1:{peer_a.port}",)
            async with DWCPPeer(
                "peer-b", seeds=seeds_a, lease_timeout=1.5, store_path=store / "b.db"
            ) as peer_b:
                seeds = (*seeds_a, f"127.0.0.1:{peer_b.port}")
                async with anyio.create_task_group() as peers:
                    peer_c = _RestartablePeer(
                        peers, seeds=seeds, lease_timeout=1.5, store_path=store / "c.db"
                    )
                    await peer_c.start()
                    schedule = [(start, duration, fault) for start, duration, fault, _ in plan]
                    async with ChaosProxy(
                        "127.0.0.1", peer_c.port, schedule=schedule, seed=2026
                    ) as proxy:
                        address = f"127.0.0.1:{proxy.port}"
                        alice = DWCPResilientClient(_client_config("alice", address))
                        bob = DWCPResilientClient(_client_config("bob", address))
                        carol = DWCPResilientClient(_client_config("carol", address))
                        for client in (alice, bob, carol):
                            collector.track_manager(client.manager)
                        send_breaker: Any = alice.manager.circuit_breaker(SEND)
                        alice.manager.degradation.watch_breaker(SEND, send_breaker)
                        server = serve_metrics(registry, port=metrics_port)
                        url = f"http://127.0.0.1:{server.port}/metrics"
                        out(DWCP_MEANING)
                        out(f"metrics: {url}")
                        down_at, downtime = PEER_RESTART
                        down_at, downtime = down_at * time_scale, downtime * time_scale
                        shown = (*plan, (down_at, downtime, None, RESTART_LABEL))
                        recovery: list[float] = []

                        async def restart() -> None:
                            await anyio.sleep(down_at)
                            peer_c.stop()
                            await anyio.sleep(downtime)
                            await peer_c.start()
                            back, sent = loop_time(), alice.sent
                            while alice.sent == sent:  # noqa: ASYNC110 - a counter, no event
                                await anyio.sleep(0.01)
                            recovery.append(loop_time() - back)

                        try:
                            async with alice, bob, carol, anyio.create_task_group() as tg:
                                tg.start_soon(restart)
                                result = await _drive(
                                    alice,
                                    bob,
                                    carol,
                                    shown,
                                    messages=messages,
                                    pace=pace,
                                    concurrency=concurrency,
                                    out=out,
                                    live=live,
                                )
                                tg.cancel_scope.cancel()
                        finally:
                            server.close()
                            collector.close()
                    peer_c.stop()
        summary, timeline, discoveries = result
        path = save_timeline(picture, timeline, summary.records, shown) if picture else None
        back_after = recovery[0] if recovery else None
        _print_summary(summary, send_breaker.statistics(), out, path, url)
        out(_discovery_line(discoveries, carol.manager.components(DISCOVER).get("hedge")))
        if back_after is not None:
            out(
                f"  peer restart           down {downtime:.1f} s at t={down_at:.1f} s; the first "
                f"send succeeded {back_after:.2f} s after it was back, from its SQLite store"
            )
        return DemoResult(summary, url, path, timeline, back_after)


async def _drive(
    alice: DWCPResilientClient,
    bob: DWCPResilientClient,
    carol: DWCPResilientClient,
    plan: tuple[tuple[float, float, Fault | None, str], ...],
    *,
    messages: int,
    pace: float,
    concurrency: int,
    out: Callable[[str], None],
    live: bool | None,
) -> tuple[ScenarioSummary, list[tuple[float, int, int]], list[float | None]]:
    start = loop_time()
    timeline: list[tuple[float, int, int]] = []
    send_breaker: Any = alice.manager.circuit_breaker(SEND)
    done = anyio.Event()
    discovered: list[int] = []
    discoveries: list[float | None] = []  # each discovery's latency, None when it failed
    if live is None:
        live = sys.stdout.isatty()

    def snapshot() -> tuple[list[dict[str, str]], str]:
        rows = [
            _state_line("alice", alice.manager, SEND),
            _state_line("bob", bob.manager, RECEIVE),
            _state_line("carol", carol.manager, DISCOVER),
        ]
        faults = (
            ", ".join(
                label
                for begin, length, _, label in plan
                if label and begin <= loop_time() - start < begin + length
            )
            or "none"
        )
        footer = (
            f"t={loop_time() - start:5.1f}s  faults: {faults}  |  sent {alice.sent}  "
            f"delivered {bob.delivered}  |  health alice={_health(alice)} bob={_health(bob)}  "
            f"degradation={DegradationLevel(alice.manager.degradation.level).name.lower()}  "
            f"peers discovered={discovered[-1] if discovered else 0}"
        )
        return rows, footer

    async def sample() -> None:
        while not done.is_set():
            level = int(alice.manager.degradation.level)
            timeline.append((loop_time() - start, int(send_breaker.state), level))
            await anyio.sleep(0.1)

    async def discover() -> None:
        while not done.is_set():
            began = loop_time()
            try:
                discovered.append(len(await carol.discover_peers()))
            except Exception:  # the display shows the breaker's view of it
                discoveries.append(None)
            else:
                discoveries.append(loop_time() - began)
            await anyio.sleep(DISCOVER_EVERY)

    async def show() -> None:
        if live:
            try:
                from rich.live import Live  # noqa: PLC0415 - optional extra "demo"
            except ImportError:
                pass
            else:
                with Live(_table(*snapshot()), refresh_per_second=4) as screen:
                    while not done.is_set():
                        await anyio.sleep(0.25)
                        screen.update(_table(*snapshot()))
                return
        for line in LEGEND:
            out(line)
        while not done.is_set():
            rows, footer = snapshot()
            out(_render_plain(rows, footer))
            with anyio.move_on_after(2.0):
                await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        tg.start_soon(discover)
        tg.start_soon(show)
        summary = await run_scenario(
            alice,
            bob,
            messages=messages,
            run="demo",
            concurrency=concurrency,
            pace=pace,
            resend_deadline=20.0,
            drain_timeout=20.0,
        )
        done.set()
    return summary, timeline, discoveries


def _discovery_line(latencies: list[float | None], hedge: Any) -> str:
    """carol's discoveries: how many, their p99 latency, and what the hedge did."""
    ok = sorted(latency for latency in latencies if latency is not None)
    p99 = f"{ok[min(len(ok) - 1, math.ceil(0.99 * len(ok)) - 1)] * 1000:.0f} ms" if ok else "-"
    line = f"  discoveries            {len(ok)} ok, {len(latencies) - len(ok)} failed; p99 {p99}"
    if hedge is None:
        return line + " (not hedged)"
    stats = hedge.statistics()
    return (
        f"{line}; hedges started {stats.hedges_started}, won {stats.hedge_wins}, "
        f"refused by the budget {stats.budget_refusals}"
    )


def _print_summary(
    summary: ScenarioSummary,
    breaker: Any,
    out: Callable[[str], None],
    picture: str | None,
    url: str,
) -> None:
    opened = sum(n for (_, to), n in breaker.state_changes.items() if to == BreakerState.OPEN)
    out("")
    out("summary")
    out(f"  messages               {summary.messages}")
    out(f"  sent (first call ok)   {summary.sent_ok}")
    out(f"  failed for the caller  {summary.failed_for_caller} (messages whose first send failed)")
    out(f"  errors, every send     {dict(summary.errors)}  (re-sends included)")
    out(
        f"    of which rejected    {summary.rejected} (refused by a protection, e.g. the open breaker)"
    )
    out(
        f"  send breaker attempts  ok {breaker.successes}, failed {breaker.failures}, "
        f"refused {breaker.rejected}; opened {opened} times"
    )
    out(f"  re-sent with same id   {summary.resent_ok}")
    out(f"  delivered exactly once {summary.delivered_exactly_once}")
    out(f"  delivered twice        {summary.duplicates}")
    out(f"  lost                   {summary.lost}")
    out(f"  never delivered        {summary.undelivered} (the caller was told each time)")
    out(f"  duration               {summary.duration:.1f}s")
    out(f"  metrics were served at {url}")
    if picture:
        out(f"  timeline picture       {picture}")
    if not math.isfinite(summary.duration):  # pragma: no cover - defensive
        out("  (duration unknown)")
