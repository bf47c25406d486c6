"""The basic demo (what `make demo` runs until the DWCP demo exists) rides through an outage."""

from __future__ import annotations

from typing import Any

import pytest

from dwcp_resilience.basic_demo import run_basic_demo

pytestmark = pytest.mark.anyio


@pytest.mark.virtual_time
async def test_demo_shows_breaker_retry_and_timeout(anyio_backend: Any) -> None:
    lines: list[str] = []
    counts = await run_basic_demo(8.0, out=lines.append)
    assert counts["ok"] > 0
    assert counts["rejected"] > 0  # the breaker opened during the outage
    assert any("attempts=2" in line or "attempts=3" in line for line in lines)  # retries happened
    call_lines = [line for line in lines if " call " in line]
    assert "breaker=CLOSED" in call_lines[-1]  # and it closed again once the service recovered
    assert sum(counts.values()) == len(call_lines)
