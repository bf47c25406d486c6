"""The pytest plugin of ``dwcp_resilience``: virtual time and clean policies for users' own tests.

pytest loads it through the ``pytest11`` entry point ``dwcp_resilience`` whenever the package is
installed (``-p no:dwcp_resilience`` turns it off). It changes nothing for a test that carries
neither of its two markers:

- ``@pytest.mark.resilience_virtual_time``: run this async test on a virtual clock, whichever
  plugin runs it:

  - pytest-asyncio (0.24 to 1.5; the test's loop must be its own, ``loop_scope="function"``, the
    default): the loop that pytest-asyncio creates for the test is patched by looptime when it is
    created, so the test and its function-scoped async fixtures run in virtual time, from 0;
  - anyio's plugin (``@pytest.mark.anyio``): the test's ``anyio_backend`` is run on a looptime loop
    (asyncio) or with ``trio.testing.MockClock(autojump_threshold=0)`` (trio), and its async
    fixtures share that runner. A uvloop backend is skipped (looptime cannot patch uvloop).

  Sleeps, timeouts and a policy's waits then take no real time. The test checks, as it starts, that
  its loop's clock really is virtual, and fails with the reason when it is not (a loop shared with
  other tests, a loop looptime cannot patch, an async fixture of a wider scope that already holds
  anyio's runner) rather than run in real time. It needs looptime (the ``testing`` extra).
- ``@pytest.mark.resilience_reset(*policies)``: call ``reset()`` on each policy before the test's
  fixtures are set up (:func:`dwcp_resilience.testing.reset_policies`), so that module-level policies
  carry no state, and no reading of an earlier loop's clock, from one test into the next.

Nothing heavy is imported until a marked test runs: looptime, trio and anyio's plugin only then.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

__all__ = ("RESET_MARKER", "VIRTUAL_TIME_MARKER")

VIRTUAL_TIME_MARKER = "resilience_virtual_time"
"""Run the async test on a virtual clock (pytest-asyncio or anyio)."""
RESET_MARKER = "resilience_reset"
"""``resilience_reset(*policies)``: reset the policies before the test."""

_ANYIO_RUNNER = "_resilience_virtual_anyio_runner"
# pytest-asyncio's fixtures that make a test's own loop: 0.24-0.26 `event_loop`, 1.0-1.2
# `_function_event_loop` (loops), 1.3 and later `_function_scoped_runner` (an asyncio.Runner).
_LOOP_FIXTURES = frozenset({"event_loop", "_function_event_loop", "_function_scoped_runner"})
_LOOP = pytest.StashKey[asyncio.AbstractEventLoop]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{VIRTUAL_TIME_MARKER}: run the async test (pytest-asyncio or anyio) on a virtual clock: "
        "looptime on asyncio, trio's MockClock on trio (dwcp_resilience)",
    )
    config.addinivalue_line(
        "markers",
        f"{RESET_MARKER}(*policies): call reset() on each policy before the test (dwcp_resilience)",
    )


def _virtual(item: pytest.Item) -> bool:
    return item.get_closest_marker(VIRTUAL_TIME_MARKER) is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the item's fixtures are set up (pytest's own setup runs after this): reset the
    policies of ``resilience_reset``, check a ``resilience_virtual_time`` test, and put anyio's
    virtual runner first among its fixtures."""
    policies = [policy for mark in item.iter_markers(RESET_MARKER) for policy in mark.args]
    if policies:
        from .testing import reset_policies  # noqa: PLC0415

        reset_policies(*policies)
    if _virtual(item):
        if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.function):
            pytest.fail(f"@pytest.mark.{VIRTUAL_TIME_MARKER} marks async tests", pytrace=False)
        names = item.fixturenames
        if "anyio_backend" in names:
            if _ANYIO_RUNNER not in names:
                # Before the test's function-scoped fixtures, so that it takes anyio's runner
                # before any of them does; after the wider ones (pytest sets those up first), so
                # that one of them holding a runner in real time fails the test at its start
                # rather than run on this test's virtual loop for the rest of its scope.
                scopes = item._fixtureinfo.name2fixturedefs
                at = next(
                    (
                        i
                        for i, n in enumerate(names)
                        if n in scopes and scopes[n][-1].scope == "function"
                    ),
                    len(names),
                )
                names.insert(at, _ANYIO_RUNNER)
        elif item.get_closest_marker("asyncio") is None:
            pytest.fail(
                f"@pytest.mark.{VIRTUAL_TIME_MARKER} needs pytest-asyncio (@pytest.mark.asyncio) "
                "or anyio's plugin (@pytest.mark.anyio) to run the test",
                pytrace=False,
            )


# -- pytest-asyncio: patch the test's own loop when pytest-asyncio creates it ----------------------


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    result = yield
    if (
        fixturedef.argname in _LOOP_FIXTURES
        and fixturedef.scope == "function"
        and isinstance(request.node, pytest.Item)
        and _virtual(request.node)
    ):
        loop = result.get_loop() if isinstance(result, asyncio.Runner) else result
        if isinstance(loop, asyncio.AbstractEventLoop):
            request.node.stash[_LOOP] = loop
            looptime_marked = request.node.get_closest_marker("looptime") is not None
            if isinstance(loop, asyncio.SelectorEventLoop) and not looptime_marked:
                # Enabled from the start, at 0 (unless looptime's own plugin patched it first,
                # disabled: then it is enabled around the test call below). A test that also
                # carries looptime's marker is left to looptime's plugin.
                _looptime().patch_event_loop(loop)
    return result


# -- the test call: enable, and check, virtual time -------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if not _virtual(item) or not isinstance(item, pytest.Function):
        return (yield)
    original = item.obj
    if hasattr(original, "hypothesis"):  # Hypothesis runs the test body itself: no check
        return (yield)
    item.obj = _checked(original, item.nodeid)
    try:
        loop = item.stash.get(_LOOP, None)
        looptime = _looptime() if loop is not None else None
        if (
            looptime is not None
            and isinstance(loop, looptime.LoopTimeEventLoop)
            and not loop.looptime_on
            and item.get_closest_marker("looptime") is None
        ):
            with loop.looptime_enabled():
                return (yield)
        return (yield)
    finally:
        item.obj = original


def _checked(test: Callable[..., Any], nodeid: str) -> Callable[..., Any]:
    @functools.wraps(test)
    async def checked(*args: Any, **kwargs: Any) -> Any:
        problem = _not_virtual()
        if problem is not None:
            pytest.fail(f"{nodeid}: @pytest.mark.{VIRTUAL_TIME_MARKER}: {problem}", pytrace=False)
        return await test(*args, **kwargs)

    return checked


def _not_virtual() -> str | None:
    """Why the running loop's clock is not virtual (``None`` when it is)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _not_virtual_trio()
    looptime = _looptime()
    if not isinstance(loop, looptime.LoopTimeEventLoop):
        return (
            f"the test's loop ({type(loop).__module__}.{type(loop).__qualname__}) is not one "
            "that looptime patched: give the test a loop of its own (pytest-asyncio "
            "loop_scope='function', the default) on plain asyncio (not uvloop), and no async "
            "fixture of a wider scope under anyio"
        )
    if not loop.looptime_on:
        return (
            "the test's loop has looptime's virtual time turned off: it is not the test's own "
            "loop (pytest-asyncio gives it one with loop_scope='function', the default)"
        )
    return None


def _not_virtual_trio() -> str | None:
    import trio  # noqa: PLC0415 - a running loop that is not asyncio's: trio
    import trio.testing  # noqa: PLC0415

    clock = trio.lowlevel.current_clock()
    if isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold < math.inf:
        return None
    return (
        f"the test runs on trio with {clock!r}, not an autojumping trio.testing.MockClock: an "
        "async fixture of a wider scope may already hold anyio's runner"
    )


# -- anyio: run the test's backend in virtual time --------------------------------------------------


@pytest.fixture(name=_ANYIO_RUNNER)
def _virtual_anyio_runner(request: pytest.FixtureRequest) -> Iterator[None]:
    """Holds anyio's test runner, made virtual, for the whole test: its async fixtures and the test
    itself run on it (anyio's plugin shares one runner while any fixture or test holds it)."""
    from anyio.pytest_plugin import extract_backend_and_options, get_runner  # noqa: PLC0415

    name, options = _virtual_backend(
        *extract_backend_and_options(request.getfixturevalue("anyio_backend"))
    )
    with get_runner(name, options):
        yield


def _virtual_backend(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``anyio_backend`` ``(name, options)`` with virtual time; skips uvloop."""
    options = dict(options)
    if name == "trio":
        import trio.testing  # noqa: PLC0415

        if not isinstance(options.get("clock"), trio.testing.MockClock):
            options["clock"] = trio.testing.MockClock(autojump_threshold=0)
        return name, options
    if name != "asyncio":
        pytest.fail(f"@pytest.mark.{VIRTUAL_TIME_MARKER}: unknown anyio backend {name!r}")
    looptime = _looptime()
    factory = options.get("loop_factory")
    if options.get("use_uvloop") or getattr(factory, "__module__", "").startswith("uvloop"):
        pytest.skip("virtual time: looptime cannot patch uvloop's loop")
    if factory is None:
        options["loop_factory"] = looptime.new_event_loop
    elif factory is not looptime.new_event_loop:
        options["loop_factory"] = functools.partial(_patched, factory)
    return name, options


def _patched(factory: Callable[[], asyncio.AbstractEventLoop]) -> asyncio.AbstractEventLoop:
    loop = factory()
    if isinstance(loop, asyncio.SelectorEventLoop):
        _looptime().patch_event_loop(loop)
    return loop  # any other loop fails the check at the test's start, with the reason


def _looptime() -> Any:
    try:
        import looptime  # noqa: PLC0415
    except ImportError:
        pytest.fail(
            f"@pytest.mark.{VIRTUAL_TIME_MARKER} needs looptime: "
            "pip install 'dwcp-resilience[testing]'",
            pytrace=False,
        )
    return looptime
