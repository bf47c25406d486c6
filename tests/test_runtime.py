"""The seam between the package and asyncio's internals (``dwcp_resilience/core/_runtime.py``).

What these check on whichever interpreter runs them: the running loop's state and clock follow the
loop (asyncio, uvloop, looptime, trio, no loop), two threads' loops never see each other's state,
closed loops are let go, the running task is found, the forced public path and a simulated 3.14
(asyncio's task table left empty) choose the public calls and still time out correctly, and no
module but the seam reads a private asyncio name.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import looptime
import pytest
import trio
import trio.testing
import uvloop

import dwcp_resilience
from dwcp_resilience import DeadlineExceeded, Timeout, loop_time
from dwcp_resilience.core import _runtime

PACKAGE = Path(dwcp_resilience.__file__).parent


def test_the_clock_follows_the_loop() -> None:
    """asyncio's own loop: time.monotonic itself (unless the public path is forced); uvloop and
    looptime keep their own loop.time, so our deadlines agree with their timers."""

    async def state() -> tuple[Any, float, float]:
        found = _runtime.running()
        assert found is not None
        assert found.loop is asyncio.get_running_loop()
        return found.time, loop_time(), asyncio.get_running_loop().time()

    for factory, plain in (
        (asyncio.new_event_loop, True),
        (uvloop.new_event_loop, False),
        (looptime.new_event_loop, False),
    ):
        with asyncio.Runner(loop_factory=factory) as runner:
            clock, read, loop_read = runner.run(state())
            loop = runner.get_loop()
        if plain and not _runtime.PUBLIC_ONLY:
            assert clock is time.monotonic
        else:
            assert clock == loop.time
        assert abs(read - loop_read) < 0.05


def test_an_instance_patched_clock_is_honoured() -> None:
    """A loop whose ``time`` is replaced on the instance keeps that clock."""
    loop = asyncio.new_event_loop()
    loop.time = lambda: 1234.5  # type: ignore[method-assign]
    try:

        async def read() -> float:
            return loop_time()

        assert loop.run_until_complete(read()) == 1234.5
    finally:
        loop.close()


def test_no_loop_and_trio() -> None:
    """Outside any loop there is no state (the monotonic clock is read); on trio neither (trio's
    clock is read, virtual under MockClock)."""
    assert _runtime.running() is None
    assert _runtime.get_running_loop() is None
    assert abs(loop_time() - time.monotonic()) < 0.05

    async def on_trio() -> tuple[object, float]:
        await trio.sleep(100)
        return _runtime.running(), loop_time()

    state, now = trio.run(on_trio, clock=trio.testing.MockClock(autojump_threshold=0))
    assert state is None
    assert now == pytest.approx(100.0, abs=1e-6)


def test_current_task_is_the_running_task() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert _runtime.current_task(loop) is asyncio.current_task()

        async def child() -> object:
            return _runtime.current_task(loop)

        task = asyncio.ensure_future(child())
        assert await task is task

    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())


def test_loops_in_two_threads_each_get_their_own_state() -> None:
    """Two threads take turns in the one cache; each always gets its own loop's state."""
    errors: list[str] = []
    start = threading.Barrier(2)

    def worker() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            start.wait()
            for _ in range(20_000):
                state = _runtime.running()
                if state is None or state.loop is not loop:
                    errors.append(f"got {state!r} on {loop!r}")
                    return

        asyncio.run(main())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_threads_making_new_loops_at_once_do_not_race() -> None:
    """Threads that each keep making new loops add and drop loop states at the same time; the
    cache stays consistent (no 'dictionary changed size during iteration', no KeyError)."""
    errors: list[BaseException] = []

    async def probe() -> None:
        state = _runtime.running()
        assert state is not None
        assert state.loop is asyncio.get_running_loop()

    def worker() -> None:
        try:
            for _ in range(400):
                asyncio.run(probe())
        except BaseException as exc:  # reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_closed_loops_are_let_go() -> None:
    """A closed loop that ran timeouts is freed once another loop is seen (no state per loop ever
    made stays behind)."""

    async def use() -> None:
        with pytest.raises(DeadlineExceeded):
            await Timeout(0.001).call(asyncio.sleep, 1)

    refs = []
    for _ in range(20):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(use())
        loop.close()
        refs.append(weakref.ref(loop))
        del loop
    asyncio.run(use())  # one more loop: the cache moves on, the closed ones are dropped
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0
    assert len(_runtime._states) <= 2


def _run_isolated(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


_PROBE = """
import asyncio
from dwcp_resilience import DeadlineExceeded, Timeout
from dwcp_resilience.core import _runtime

async def main():
    try:
        await Timeout(0.01).call(asyncio.sleep, 1)
    except DeadlineExceeded:
        print("expired")
    assert await Timeout(1).call(asyncio.sleep, 0, "ok") == "ok"

asyncio.run(main())
print(sorted(_runtime.paths().items()))
"""


def test_the_public_path_can_be_forced() -> None:
    out = _run_isolated(_PROBE, DWCP_RESILIENCE_PUBLIC_ASYNCIO="1")
    assert out.startswith("expired\n")
    assert "('current_task', 'asyncio.current_task')" in out
    assert "('get_running_loop', 'asyncio.get_running_loop')" in out
    assert "('running', 'get_running_loop')" in out
    assert "'clock', 'loop.time'" in out


def test_the_chosen_paths_follow_the_interpreter() -> None:
    """The private reads are taken only where they measured faster: 3.11."""
    if _runtime.PUBLIC_ONLY:
        pytest.skip("the public path is forced in this run")
    paths = _runtime.paths()
    private = sys.version_info < (3, 12)
    assert (paths["running"] == "cached loop._thread_id") is private
    assert (paths["current_task"] == "asyncio.tasks._current_tasks") is private
    assert paths["get_running_loop"] == "asyncio.events._get_running_loop"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.11's current_task reads the table itself")
def test_a_simulated_314_takes_the_public_task_lookup() -> None:
    """CPython 3.14 keeps ``asyncio.tasks._current_tasks`` but no longer fills it, and drops
    ``_asyncio._current_tasks``: timeouts still find their task."""
    code = (
        "import asyncio, asyncio.tasks, _asyncio\n"
        "asyncio.tasks._current_tasks = {}\n"
        "if hasattr(_asyncio, '_current_tasks'): del _asyncio._current_tasks\n" + _PROBE
    )
    out = _run_isolated(code)
    assert out.startswith("expired\n")
    assert "('current_task', 'asyncio.current_task')" in out


def test_only_the_seam_reads_private_asyncio_names() -> None:
    """``_get_running_loop``, ``_current_tasks``, ``_thread_id`` and ``BaseEventLoop`` (whose
    ``time`` the seam knows to be ``time.monotonic``) appear in the seam module only."""
    pattern = re.compile(r"_get_running_loop|_current_tasks|_thread_id|BaseEventLoop|get_ident")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_runtime.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
