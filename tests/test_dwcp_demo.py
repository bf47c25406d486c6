"""The DWCP demo end to end (compressed schedule) and the command line."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import real_time_backends

from dwcp_resilience.dwcp import DWCPPeer, DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.client import SEND
from dwcp_resilience.dwcp.demo import (
    DEMO_SCHEDULE,
    DWCP_MEANING,
    LEGEND,
    _client_config,
    _health,
    _state_line,
    _table,
    run_demo,
)
from dwcp_resilience.dwcp.scenario import SendRecord
from dwcp_resilience.dwcp.timeline import timeline_figure

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio")


async def test_demo_delivers_everything_once_and_draws_the_timeline(tmp_path: Path) -> None:
    lines: list[str] = []
    picture = tmp_path / "timeline.png"
    scraped: list[bytes] = []

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("metrics: ") and not scraped:
            url = line.split(" ", 1)[1]

            def fetch() -> None:
                with urllib.request.urlopen(url, timeout=5) as response:
                    scraped.append(response.read())

            pending.append(fetch)

    pending: list[Any] = []

    async def scrape_later() -> None:
        await anyio.sleep(2)  # the demo has printed its metrics URL and is sending by now
        await anyio.to_thread.run_sync(pending[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(scrape_later)
        result = await run_demo(
            messages=400,
            pace=0.02,
            concurrency=8,
            picture=str(picture),
            out=out,
            live=False,
            time_scale=0.3,
        )
    summary = result.summary
    assert summary.lost == 0
    assert summary.duplicates == 0
    assert summary.delivered_exactly_once + summary.undelivered == 400
    assert picture.stat().st_size > 10_000
    assert any(line.startswith("  lost") for line in lines)
    # carol's hedged discoveries: counted, with their p99 and what the hedge did
    (discoveries,) = [line for line in lines if line.startswith("  discoveries")]
    assert "p99" in discoveries and "hedges started" in discoveries and "won" in discoveries
    # The screen says what DWCP is, then what its counters count, before the first status.
    assert lines[0] == DWCP_MEANING
    first_status = next(i for i, line in enumerate(lines) if line.startswith("t="))
    assert lines[first_status - len(LEGEND) : first_status] == list(LEGEND)
    # No fault before 1.5 s: no health check can have failed at t=0 (unknown or ok, never DOWN).
    assert "DOWN" not in lines[first_status].split("\n")[0]
    assert any("health alice=ok" in line for line in lines)
    rejected = sum(1 for r in summary.records if r.rejected)
    assert rejected == summary.rejected <= sum(summary.errors.values())
    assert f"    of which rejected    {summary.rejected} " in "\n".join(lines)
    assert any(line.startswith("  send breaker attempts  ok ") for line in lines)
    assert b"dwcp_circuit_breaker_state" in scraped[0]
    assert b'dwcp_circuit_breaker_requests_total{name="network-send"' in scraped[0]
    assert (
        b'dwcp_circuit_breaker_request_duration_seconds_count{name="network-send"} 0.0'
        not in (scraped[0])
    )
    assert b'dwcp_circuit_breaker_request_duration_seconds_count{name="network-send"}' in scraped[0]


# --- the status display ------------------------------------------------------------------------------


def test_the_legend_explains_every_counter_column() -> None:
    client = DWCPResilientClient(DWCPResilienceConfig(node_id="alice", peers=("127.0.0.1:9",)))
    row = _state_line("alice", client.manager, SEND)
    legend = "\n".join(LEGEND)
    for column in ("calls ok/fail/rej", "attempts ok/fail/refused", "retries", "budget left"):
        assert column in row
        assert f"{column}:" in legend, column
    assert "what the callers saw, one per call" in legend
    assert "what the breaker saw, one per attempt" in legend
    assert "failed and rejected calls both spend it" in legend
    assert "(SLO 99.9 %)" in legend
    assert _client_config("alice", "127.0.0.1:9").availability_slo == 0.999
    assert "health: ping checks, unknown until the first one ran" in legend


def test_the_live_table_has_the_legend_under_its_column_headers() -> None:
    from rich.console import Console

    client = DWCPResilientClient(DWCPResilienceConfig(node_id="alice", peers=("127.0.0.1:9",)))
    row = _state_line("alice", client.manager, SEND)
    console = Console(file=io.StringIO(), width=400, record=True)
    console.print(_table([row], "t=  0.0s  the footer"))
    text = console.export_text()
    assert "t=  0.0s  the footer" in text
    assert all(column in text for column in row)
    flat = " ".join(text.split())  # the caption wraps at the table's width
    assert all(" ".join(line.split()) in flat for line in LEGEND)
    assert flat.index("calls ok/fail/rej") < flat.index(LEGEND[0])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_health_is_unknown_until_a_check_ran_then_ok_or_down() -> None:
    async with DWCPPeer("p1") as peer:
        options: dict[str, Any] = {"health_check_interval": 30.0, "health_check_timeout": 2.0}
        good = DWCPResilientClient(DWCPResilienceConfig(peers=(peer.address,), **options))
        gone = f"127.0.0.1:{_closed_port()}"
        bad = DWCPResilientClient(DWCPResilienceConfig(peers=(gone,), **options))
        assert (_health(good), _health(bad)) == ("unknown", "unknown")  # no check ran yet
        async with good, bad:
            with anyio.fail_after(10):
                while "unknown" in (_health(good), _health(bad)):  # noqa: ASYNC110 - polling
                    await anyio.sleep(0.01)
            assert (_health(good), _health(bad)) == ("ok", "DOWN")


# --- the timeline picture ------------------------------------------------------------------------------


def test_the_timeline_draws_each_line_in_its_own_panel_and_labels_outside_the_data() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = [(t / 10, 2 if 50 <= t < 90 else 0, 2 if 50 <= t < 90 else 0) for t in range(300)]
    records = [
        SendRecord(0, 1.0, 0.002, True, None),
        SendRecord(1, 12.0, 0.2, False, "ConnectionReset"),
        SendRecord(2, 15.0, 0.0001, False, "CircuitOpen", rejected=True),
    ]
    fig = timeline_figure(timeline, records, DEMO_SCHEDULE)
    try:
        breaker, level, latency = fig.axes
        # The breaker state and the degradation level: one line each, in separate panels.
        (breaker_line,) = breaker.get_lines()
        (level_line,) = level.get_lines()
        assert list(breaker_line.get_ydata()) == [s for _, s, _ in timeline]
        assert list(level_line.get_ydata()) == [lv for _, _, lv in timeline]
        assert len(latency.collections) == 3  # ok, failed, rejected: three marker styles
        # Band numbers sit above the top panel; the panels themselves carry no text.
        labelled = [entry for entry in DEMO_SCHEDULE if entry[3]]
        assert [t.get_text() for t in breaker.texts] == [
            str(i) for i in range(1, len(labelled) + 1)
        ]
        assert all(t.get_position()[1] > 1.0 for t in breaker.texts)  # axes fraction: above
        assert len(level.texts) == len(latency.texts) == 0
        # The band names and the send kinds are in the figure's legend, below the panels.
        (legend,) = fig.legends
        names = [t.get_text() for t in legend.get_texts()]
        assert [f"{i}: {entry[3]}" for i, entry in enumerate(labelled, 1)] == names[3:]
        assert names[:3] == [
            "send ok",
            "send failed (error after retries)",
            "send rejected (CircuitOpen, ...)",
        ]
        fig.canvas.draw()
        box = legend.get_window_extent()
        assert all(box.y1 <= axis.get_window_extent().y0 for axis in fig.axes)
    finally:
        plt.close(fig)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "dwcp_resilience", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cli_basic_demo() -> None:
    done = _run("demo", "--basic", "--duration", "0.5")
    assert done.returncode == 0, done.stderr
    assert "calls:" in done.stdout


def test_cli_ops_prints_the_shipped_files() -> None:
    alerts = _run("ops", "alerts")
    assert alerts.returncode == 0 and "DWCPCircuitBreakerOpen" in alerts.stdout
    dashboard = _run("ops", "dashboard", "--namespace", "acme")
    assert dashboard.returncode == 0 and "acme_circuit_breaker_state" in dashboard.stdout
