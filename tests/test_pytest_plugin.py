"""The pytest plugin (``dwcp_resilience.pytest_plugin``): virtual time under pytest-asyncio and under
anyio's plugin, the per-test reset of module-level policies, and loud failures where virtual time
cannot be had. Each case is a user's test file run by pytest in a subprocess, in a folder of its own
(its own ``pytest.ini``: none of this repository's options)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

GOOD = """
import asyncio
import time

import anyio
import pytest
import pytest_asyncio
import uvloop

from dwcp_resilience import CircuitBreaker, CircuitOpen, RateLimiter
from dwcp_resilience.testing import FakeClock


@pytest_asyncio.fixture
async def slow_fixture():
    await asyncio.sleep(100)  # virtual too: the fixture runs on the test's own loop
    yield asyncio.get_running_loop().time()
    await asyncio.sleep(100)


@pytest.mark.asyncio
@pytest.mark.resilience_virtual_time
async def test_pytest_asyncio_virtual(slow_fixture):
    assert slow_fixture == pytest.approx(100.0, abs=0.01)
    real = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.sleep(1000)
    assert asyncio.get_running_loop().time() == pytest.approx(130.0, abs=0.01)
    assert time.perf_counter() - real < 1


@pytest.mark.asyncio
async def test_pytest_asyncio_unmarked_is_real_time():
    assert not getattr(asyncio.get_running_loop(), "looptime_on", False)


@pytest.fixture
async def anyio_fixture():
    await anyio.sleep(50)
    yield anyio.current_time()
    await anyio.sleep(50)


@pytest.mark.anyio
@pytest.mark.resilience_virtual_time
@pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", "trio", ("asyncio", {"loop_factory": uvloop.new_event_loop})],
    ids=["asyncio", "trio", "uvloop"],
)
async def test_anyio_virtual(anyio_backend, anyio_fixture):
    assert anyio_fixture == pytest.approx(50.0, abs=0.01)
    real = time.perf_counter()
    with anyio.move_on_after(30):
        await anyio.sleep(1000)
    assert anyio.current_time() == pytest.approx(80.0, abs=0.01)
    assert time.perf_counter() - real < 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_anyio_unmarked_is_real_time(anyio_backend):
    if anyio_backend == "trio":
        import trio.testing

        assert not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    else:
        assert not getattr(asyncio.get_running_loop(), "looptime_on", False)


# Module-level policies, as the README encourages, reset before each test.
breaker = CircuitBreaker("payments", max_failures=1, reset_timeout=60.0)
limiter = RateLimiter("payments", rate=1.0, burst=2)


async def trip() -> float:
    async def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await breaker.call(down)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(down)
    return refused.value.retry_after


@pytest.mark.asyncio
@pytest.mark.resilience_virtual_time
@pytest.mark.resilience_reset(breaker, limiter)
async def test_policies_first():
    await asyncio.sleep(1000)  # this loop's clock reads 1000 when they are used
    assert await trip() == pytest.approx(60.0, abs=1e-3)
    assert limiter.try_acquire(2)


@pytest.mark.anyio
@pytest.mark.resilience_virtual_time
@pytest.mark.resilience_reset(breaker, limiter)
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_policies_second(anyio_backend):
    assert anyio.current_time() < 1  # a new loop, its clock from 0
    assert await trip() == pytest.approx(60.0, abs=1e-3)
    assert limiter.try_acquire(2)  # a full bucket, at once


@pytest.mark.asyncio
@pytest.mark.resilience_virtual_time
async def test_fake_clock_in_a_virtual_test():
    clock = FakeClock(0.0, autojump=True)
    limiter = RateLimiter("fake", rate=10, burst=1, clock=clock)
    for _ in range(5):
        await limiter.acquire()
    assert clock() == pytest.approx(0.4)
"""

BAD = """
import asyncio

import anyio
import pytest


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.resilience_virtual_time
async def test_shared_loop():
    await asyncio.sleep(1)


@pytest.mark.resilience_virtual_time
def test_sync():
    pass


@pytest.mark.resilience_virtual_time
async def test_no_async_plugin():
    pass


@pytest.mark.resilience_reset(object())
def test_not_a_policy():
    pass


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def module_fixture():
    yield  # holds anyio's runner, in real time, for the whole module


@pytest.mark.anyio
@pytest.mark.resilience_virtual_time
async def test_runner_held_by_a_wider_fixture(module_fixture):
    await anyio.sleep(1)
"""


def run_pytest(folder: Path, source: str, *options: str) -> tuple[dict[str, str], str]:
    """Run ``source`` as a test file in ``folder``; the outcome of each test id, and the output."""
    (folder / "pytest.ini").write_text(INI, encoding="utf-8")
    (folder / "test_user.py").write_text(textwrap.dedent(source), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *options],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outcomes: dict[str, str] = {}
    for line in done.stdout.splitlines():
        found = re.match(r"(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+::\S+)", line)
        if found:
            test_id = found.group(2).split("::")[-1].rstrip(":")
            outcomes.setdefault(test_id, found.group(1))
    return outcomes, done.stdout + done.stderr


@pytest.mark.parametrize("looptime_plugin", ["on", "off"])
def test_virtual_time_under_pytest_asyncio_and_anyio(tmp_path: Path, looptime_plugin: str) -> None:
    """Marked tests run in virtual time on either plugin (with looptime's own pytest plugin active or
    not); unmarked tests next to them keep real time; the reset marker gives module-level policies a
    clean state in each new loop."""
    options = () if looptime_plugin == "on" else ("-p", "no:looptime_plugin")
    outcomes, output = run_pytest(tmp_path, GOOD, *options)
    expected = {
        "test_pytest_asyncio_virtual": "PASSED",
        "test_pytest_asyncio_unmarked_is_real_time": "PASSED",
        "test_anyio_virtual[asyncio]": "PASSED",
        "test_anyio_virtual[trio]": "PASSED",
        "test_anyio_unmarked_is_real_time[asyncio]": "PASSED",
        "test_anyio_unmarked_is_real_time[trio]": "PASSED",
        "test_policies_first": "PASSED",
        "test_policies_second[asyncio]": "PASSED",
        "test_policies_second[trio]": "PASSED",
        "test_fake_clock_in_a_virtual_test": "PASSED",
    }
    assert outcomes == expected, output
    assert "10 passed, 1 skipped" in output  # test_anyio_virtual[uvloop]:
    assert "looptime cannot patch uvloop" in output


def test_without_the_reset_a_module_level_breaker_carries_the_last_loop(tmp_path: Path) -> None:
    """The failing scenario of issue 17, kept as a control: without ``resilience_reset`` the second
    test's breaker is still open from the first loop, ``retry_after`` 1060 s (that loop's 1000 s
    plus the 60 s open period, read against a new clock at 0)."""
    source = GOOD.replace("@pytest.mark.resilience_reset(breaker, limiter)\n", "")
    outcomes, output = run_pytest(tmp_path, source, "-k", "policies")
    assert outcomes["test_policies_first"] == "PASSED", output
    assert outcomes["test_policies_second[asyncio]"] == "FAILED", output
    assert "retry after 1060.000s" in output


def test_where_virtual_time_cannot_be_had_the_test_fails_and_says_why(tmp_path: Path) -> None:
    outcomes, output = run_pytest(tmp_path, BAD)
    assert outcomes == {
        "test_shared_loop": "FAILED",
        "test_sync": "ERROR",
        "test_no_async_plugin": "ERROR",
        "test_not_a_policy": "ERROR",
        "test_runner_held_by_a_wider_fixture": "FAILED",
    }, output
    assert "loop_scope='function'" in output
    assert "marks async tests" in output
    assert "needs pytest-asyncio (@pytest.mark.asyncio) or anyio's plugin" in output
    assert "has no reset() method" in output
    assert "no async fixture of a wider scope under anyio" in output


def test_the_plugin_is_registered() -> None:
    """pip installs the entry point: pytest loads the plugin by itself."""
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("dwcp_resilience") == "dwcp_resilience.pytest_plugin"


def test_the_readme_pytest_snippets_pass(tmp_path: Path) -> None:
    """The pytest examples of the README's "Testing your code" (```py blocks: test files, not
    scripts) pass under pytest, on pytest-asyncio and on anyio's asyncio and trio."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Testing your code") : readme.index("## Benchmarks")]
    blocks = re.findall(r"```py\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    outcomes, output = run_pytest(tmp_path, blocks[0])
    assert outcomes == {
        "test_the_breaker_recovers_after_a_minute": "PASSED",
        "test_a_burst_waits_for_the_rate[asyncio]": "PASSED",
        "test_a_burst_waits_for_the_rate[trio]": "PASSED",
    }, output
