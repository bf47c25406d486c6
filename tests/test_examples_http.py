"""The two HTTP examples run as scripts (``python examples/<file>.py``): exit 0, and say what happened.

Each runs in a subprocess with this interpreter, on loopback (the client's flaky server) or in
process (the ASGI app), and takes a few seconds of real time: they are demos, not unit tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def run(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr  # no warning, no "Task exception was never retrieved"
    return proc.stdout


def test_http_client_example() -> None:
    out = run("http_client.py")
    assert re.search(r"^flaky server on 127\.0\.0\.1:\d+$", out, re.M), out
    assert re.search(
        r"^150 concurrent calls in [\d.]+ s: 150 x 200, other outcomes: none$", out, re.M
    )
    seen = re.search(
        r"^server saw (\d+) requests: (\d+) ok, (\d+) reset, (\d+) hung, (\d+) x 503 "
        r"\(Retry-After: 1\), (\d+) x 429 \(Retry-After: 2\)$",
        out,
        re.M,
    )
    assert seen, out
    total, ok, *faults = (int(n) for n in seen.groups())
    # At least one 200 per call; more when an answer came after its attempt had timed out
    # (a loaded machine), and the retry's answer counted too.
    assert ok >= 150
    assert all(faults) and total == ok + sum(faults)
    hinted = re.search(
        r"^retry: \d+ retries; (\d+) waited a response's Retry-After above max_delay=0\.5 s "
        r"\(up to 2 s\), (\d+) waited out the open breaker; gave up: 0$",
        out,
        re.M,
    )
    assert hinted and int(hinted[1]) > 0 and int(hinted[2]) > 0, out
    assert re.search(r"^breaker: closed now; opened [1-9]\d* time\(s\), refused [1-9]", out, re.M)
    assert '  dwcp_retry_success_total{policy="api"} 150.0' in out.splitlines()
    assert '  dwcp_circuit_breaker_state{name="api"} 0.0' in out.splitlines()


def test_asgi_server_example() -> None:
    out = run("asgi_server.py")
    plain = re.search(
        r"^burst of 60 plain requests: (\d+) x 200, (\d+) x 503 shed, (\d+) x 503 full; "
        r"Retry-After: [1-9][\d, ]* s \(computed waits [\d.]+-[\d.]+ s, rounded up\)$",
        out,
        re.M,
    )
    assert plain, out
    ok, shed, full = (int(n) for n in plain.groups())
    assert ok + shed + full == 60 and ok > 0 and shed + full > 0
    assert re.search(
        r"^burst of 60 requests through a Retry that honours Retry-After: 60 x 200, "
        r"0 x 503 shed, 0 x 503 full, after [1-9]\d* retries that waited what the server asked",
        out,
        re.M,
    ), out
    assert re.search(
        r"^server side: \d+ requests served, shed \d+, bulkhead refused \d+", out, re.M
    )
