"""``examples/test_virtual_time.py`` runs green under pytest, as a user runs it, and its limiter
assertion can fail: a scratch copy whose limiter lets a bigger burst through fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_virtual_time.py"
LIMITER = 'limiter = RateLimiter("prices", rate=10.0, burst=5)'


def pytest_run(path: Path, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def test_the_example_passes() -> None:
    out = pytest_run(EXAMPLE, EXAMPLE.parent.parent)
    assert "2 passed" in out and "failed" not in out and "error" not in out, out


def test_the_example_fails_when_the_limiter_admits_too_many(tmp_path: Path) -> None:
    source = EXAMPLE.read_text(encoding="utf-8")
    assert source.count(LIMITER) == 1
    broken = tmp_path / "test_broken_limiter.py"
    broken.write_text(source.replace(LIMITER, LIMITER.replace("burst=5", "burst=10")))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n", encoding="utf-8"
    )
    out = pytest_run(broken, tmp_path)
    assert "1 failed, 1 passed" in out, out
    assert "AssertionError: 10 sent by t=0.00s" in out
