"""Every script in ``examples/`` runs as is and says what it should (the HTTP and testing examples
have their own test files). Each runs in a subprocess with this interpreter, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout


def test_quickstart() -> None:
    out = run("quickstart.py")
    assert "60 calls: " in out
    ok = int(out.split("60 calls: ")[1].split(" ok")[0])
    assert ok >= 50  # 30 % faults, four attempts each: almost every call succeeds
    assert "retries" in out and "breaker: CLOSED" in out


def test_dwcp_client() -> None:
    out = run("dwcp_client.py")
    for n in range(3):
        assert f"bob received 'hello #{n}' from alice" in out
    assert "bob's mailbox is empty: True" in out
    assert "network-send: 3 ok, 0 failed" in out
    assert "peer-b knows: ['127.0.0.1:" in out


@pytest.mark.timeout(180)
def test_redis_fleet_limiter() -> None:
    out = run("redis_fleet_limiter.py")
    shared = out.split("total ")[1]
    total, bound = int(shared.split(" ")[0]), float(shared.split("bound ")[1].split(")")[0])
    assert 0.5 * bound <= total <= bound + 1  # the fleet shares one limit
    assert "Redis down: each instance on its local limiter" in out
