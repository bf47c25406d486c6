"""The DWCP demo end to end (compressed schedule) and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import real_time_backends

from dwcp_resilience.dwcp.demo import run_demo

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
    assert b"dwcp_circuit_breaker_state" in scraped[0]
    assert b'dwcp_circuit_breaker_requests_total{name="network-send"' in scraped[0]
    assert (
        b'dwcp_circuit_breaker_request_duration_seconds_count{name="network-send"} 0.0'
        not in (scraped[0])
    )
    assert b'dwcp_circuit_breaker_request_duration_seconds_count{name="network-send"}' in scraped[0]


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
