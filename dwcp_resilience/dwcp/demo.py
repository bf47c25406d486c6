"""``make demo``: three DWCP peers on loopback, one behind a chaos proxy, and clients riding through.

What it runs (about 45 seconds):

- peers ``peer-a``, ``peer-b`` and ``peer-c`` on 127.0.0.1 (each seeded with the others);
- a :class:`~dwcp_resilience.dwcp.proxy.ChaosProxy` in front of ``peer-c`` with a fault schedule:
  latency and jitter, random connection drops, a stall (accept and never answer), 1-byte slicing
  under a bandwidth cap, and resets mid-frame;
- client ``alice`` sends messages to ``bob`` through the proxy; ``bob`` receives them through the
  proxy; ``carol`` discovers peers on ``peer-c`` (directly). Every operation runs through each client's
  :class:`~dwcp_resilience.ResilienceManager`;
- live state on screen (breaker states, tokens, in-flight, retries, budgets, health, degradation);
- ``/metrics`` served on 127.0.0.1 (the port is printed);
- a summary (sent, delivered exactly once, lost) and a timeline picture (PNG) of the send breaker's
  state and of every send's latency.

The process exits 1 if a message was lost or delivered twice.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..core.clock import loop_time
from ..manager import ResilienceManager
from ..slo.degradation import DegradationLevel
from .client import DISCOVER, RECEIVE, SEND, DWCPResilienceConfig, DWCPResilientClient
from .faults import Bandwidth, Drop, Fault, Latency, ResetPeer, Slicer, Stall
from .peer import DWCPPeer
from .proxy import ChaosProxy
from .scenario import ScenarioSummary, SendRecord, run_scenario

__all__ = ("DEMO_SCHEDULE", "DemoResult", "run_demo")

#: (start, duration, fault, label) in seconds from the proxy's start.
DEMO_SCHEDULE: tuple[tuple[float, float, Fault, str], ...] = (
    (5.0, 5.0, Latency(0.05, 0.05), "latency 50 ms +/- 50 ms"),
    (10.0, 4.0, Drop(0.04), "random drops 4 %"),
    (14.0, 5.0, Stall(), "stall: accept, never answer"),
    (19.0, 4.0, Slicer(1), "1-byte slices, 200 kB/s cap"),
    (19.0, 4.0, Bandwidth(200_000), ""),
    (23.0, 3.0, ResetPeer(), "reset mid-frame"),
)


@dataclass(slots=True)
class DemoResult:
    """The demo's outcome: the scenario summary, the metrics URL, the picture path."""

    summary: ScenarioSummary
    metrics_url: str
    picture: str | None
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


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
    )


def _state_line(name: str, manager: ResilienceManager, operation: str) -> dict[str, str]:
    parts = manager.components(operation)
    row = {"client": name, "operation": operation}
    breaker: Any = parts.get("circuit_breaker")
    row["breaker"] = breaker.state.name if breaker is not None else "-"
    limiter: Any = parts.get("rate_limiter")
    row["tokens"] = f"{limiter.statistics().tokens:.0f}" if limiter is not None else "-"
    bulkhead: Any = parts.get("bulkhead")
    if bulkhead is not None:
        stats = bulkhead.statistics()
        row["in-flight"] = f"{stats.concurrent}/{stats.max_concurrent} q{stats.queued}"
    else:
        row["in-flight"] = "-"
    retry: Any = parts.get("retry")
    if retry is not None:
        rs = retry.statistics()
        row["retries"] = str(max(0, rs.total_attempts - rs.successes - rs.total_failures))
    else:
        row["retries"] = "-"
    budget: Any = parts.get("error_budget")
    row["budget left"] = f"{budget.remaining:.1%}" if budget is not None else "-"
    latency: Any = parts.get("latency_budget")
    row["p95"] = f"{latency.p95 * 1000:.0f} ms" if latency is not None and latency.total else "-"
    counts = manager.statistics(operation)
    row["ok/fail/rej"] = f"{counts.successes}/{counts.failures}/{counts.rejected}"
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


def _picture(
    path: str,
    timeline: list[tuple[float, int, int]],
    records: list[SendRecord],
    schedule: tuple[tuple[float, float, Fault, str], ...],
) -> str | None:
    try:
        import matplotlib  # noqa: PLC0415 - optional extra "demo"

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    times = [t for t, _, _ in timeline]
    top.step(
        times, [s for _, s, _ in timeline], where="post", color="tab:blue", label="send breaker"
    )
    top.step(
        times,
        [lv for _, _, lv in timeline],
        where="post",
        color="tab:purple",
        alpha=0.6,
        label="degradation level",
    )
    top.set_yticks(
        [0, 1, 2, 3], ["closed / normal", "half-open / degraded", "open / severe", "emergency"]
    )
    top.set_title("DWCP demo: alice -> bob through a chaos proxy")
    top.legend(loc="upper right")
    ok = [(r.start, r.latency * 1000) for r in records if r.ok]
    bad = [(r.start, r.latency * 1000) for r in records if not r.ok]
    if ok:
        bottom.scatter(*zip(*ok, strict=True), s=4, color="tab:green", label="send ok")
    if bad:
        bottom.scatter(*zip(*bad, strict=True), s=6, color="tab:red", label="send failed (caller)")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_ylabel("send latency (ms)")
    bottom.set_xlabel("seconds since start")
    bottom.legend(loc="upper right")
    colours = ["#ffe08a", "#ffc2c2", "#c9c9ff", "#c2f0c2", "#f0c2f0", "#c2e8f0"]
    for i, (start, duration, _, label) in enumerate(schedule):
        if not label:
            continue
        for axis in (top, bottom):
            axis.axvspan(start, start + duration, color=colours[i % len(colours)], alpha=0.35)
        bottom.text(
            start,
            0.02,
            label,
            transform=bottom.get_xaxis_transform(),
            fontsize=7,
            rotation=90,
            va="bottom",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    async with DWCPPeer("peer-a", lease_timeout=1.5) as peer_a:
        seeds_a = (f"127.0.0.1:{peer_a.port}",)
        async with DWCPPeer("peer-b", seeds=seeds_a, lease_timeout=1.5) as peer_b:
            seeds = (*seeds_a, f"127.0.0.1:{peer_b.port}")
            async with DWCPPeer("peer-c", seeds=seeds, lease_timeout=1.5) as peer_c:
                schedule = [(start, duration, fault) for start, duration, fault, _ in plan]
                async with ChaosProxy(
                    "127.0.0.1", peer_c.port, schedule=schedule, seed=2026
                ) as proxy:
                    address = f"127.0.0.1:{proxy.port}"
                    alice = DWCPResilientClient(_client_config("alice", address))
                    bob = DWCPResilientClient(_client_config("bob", address))
                    carol = DWCPResilientClient(_client_config("carol", f"127.0.0.1:{peer_c.port}"))
                    for client in (alice, bob, carol):
                        collector.track_manager(client.manager)
                    send_breaker: Any = alice.manager.circuit_breaker(SEND)
                    alice.manager.degradation.watch_breaker(SEND, send_breaker)
                    server = serve_metrics(registry, port=metrics_port)
                    url = f"http://127.0.0.1:{server.port}/metrics"
                    out(f"metrics: {url}")
                    try:
                        async with alice, bob, carol:
                            result = await _drive(
                                alice,
                                bob,
                                carol,
                                plan,
                                messages=messages,
                                pace=pace,
                                concurrency=concurrency,
                                out=out,
                                live=live,
                            )
                    finally:
                        server.close()
                        collector.close()
    summary, timeline = result
    path = _picture(picture, timeline, summary.records, plan) if picture else None
    _print_summary(summary, out, path, url)
    return DemoResult(summary, url, path, timeline)


async def _drive(
    alice: DWCPResilientClient,
    bob: DWCPResilientClient,
    carol: DWCPResilientClient,
    plan: tuple[tuple[float, float, Fault, str], ...],
    *,
    messages: int,
    pace: float,
    concurrency: int,
    out: Callable[[str], None],
    live: bool | None,
) -> tuple[ScenarioSummary, list[tuple[float, int, int]]]:
    start = loop_time()
    timeline: list[tuple[float, int, int]] = []
    send_breaker: Any = alice.manager.circuit_breaker(SEND)
    done = anyio.Event()
    discovered: list[int] = []
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
            with contextlib.suppress(Exception):  # the display shows the breaker's view of it
                discovered.append(len(await carol.discover_peers()))
            await anyio.sleep(1.0)

    async def show() -> None:
        if live:
            try:
                from rich.live import Live  # noqa: PLC0415
                from rich.table import Table  # noqa: PLC0415
            except ImportError:
                pass
            else:

                def table() -> Table:
                    rows, footer = snapshot()
                    grid = Table(title=footer, title_justify="left")
                    for key in rows[0]:
                        grid.add_column(key)
                    for row in rows:
                        grid.add_row(*row.values())
                    return grid

                with Live(table(), refresh_per_second=4) as screen:
                    while not done.is_set():
                        await anyio.sleep(0.25)
                        screen.update(table())
                return
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
    return summary, timeline


def _health(client: DWCPResilientClient) -> str:
    return "ok" if client.is_healthy() else "DOWN"


def _print_summary(
    summary: ScenarioSummary, out: Callable[[str], None], picture: str | None, url: str
) -> None:
    out("")
    out("summary")
    out(f"  messages               {summary.messages}")
    out(f"  sent (first call ok)   {summary.sent_ok}")
    out(f"  failed for the caller  {summary.failed_for_caller}")
    out(f"  errors, every send     {dict(summary.errors)}  (re-sends included)")
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
