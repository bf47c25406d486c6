"""Helpers for testing code that uses ``dwcp_resilience``: virtual time and recording listeners.

- :class:`FakeClock`: a manual monotonic clock to inject as ``clock=`` into a primitive. Waits on it
  are honest: a rate limiter's queued request, a retry's backoff sleep and a bulkhead's bounded wait
  end when the test advances the clock (or, with ``autojump=True``, when the clock jumps to them),
  and a wait that nobody ends raises :class:`FakeClockStalled` instead of hanging.
- :func:`run_virtual`: run an async function on asyncio (with looptime's virtual loop) or on trio
  (with ``MockClock(autojump_threshold=0)``), so sleeps and timeouts take no real time.
- :func:`anyio_backends`: the ``anyio_backend`` parameters for a pytest fixture that runs each async
  test on asyncio in virtual time, on trio in virtual time when trio is installed, and on uvloop in
  real time when uvloop is installed.
- :func:`reset_policies`: give module-level policies a clean state (the pytest plugin's
  ``resilience_reset`` marker calls it before each marked test).
- :class:`RecordingListener`: a listener that keeps every event it receives.
- :class:`KneeBackend`: a simulated backend whose latency grows past a concurrency knee, to test an
  adaptive concurrency limit (or any limit) in virtual time.

looptime (the ``testing`` extra), trio and uvloop are imported only when the helper that needs them
is called. The pytest plugin (:mod:`dwcp_resilience.pytest_plugin`) builds on these helpers.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from .core.events import Event

__all__ = (
    "FakeClock",
    "FakeClockStalled",
    "KneeBackend",
    "RecordingListener",
    "Resettable",
    "anyio_backends",
    "reset_policies",
    "run_virtual",
)

T = TypeVar("T")
E = TypeVar("E", bound=Event)
K = TypeVar("K", bound=Event)

_INF = math.inf


class FakeClockStalled(RuntimeError):
    """A wait on a :class:`FakeClock` that nobody advanced for its ``stall_timeout``."""


class FakeClock:
    """A manual monotonic clock: ``clock()`` reads it, ``clock.advance(dt)`` moves it forward.

    It is a :class:`~dwcp_resilience.WaitableClock`: policies that wait on it (a rate limiter's
    queued request, a retry's backoff sleep, a bulkhead's bounded wait) call
    ``await clock.sleep_until(t)``, which returns once the clock reads ``t``. Reading it costs what
    any clock call costs; only the waiting paths use the hook.

    Args:
        start: the initial reading.
        autojump: ``False`` (the default): only :meth:`advance` (or setting :attr:`now`) moves the
            clock. ``True``: a wait moves it forward to the earliest reading anyone waits for, once
            the tasks it woke last have resumed and the other ready tasks have had a turn, much as
            trio's ``MockClock(autojump_threshold=0)`` does for the loop's clock.
        stall_timeout: seconds of the event loop's own clock a wait may pass without the clock
            moving before it raises :class:`FakeClockStalled` (``None``: wait for ever). Under
            virtual time (looptime, trio's ``MockClock``) the loop's clock gets there at once when
            nothing else is scheduled, so a forgotten ``advance()`` fails the test at once instead
            of hanging it.

    Raises:
        ValueError: if ``start`` is not finite, or ``stall_timeout`` is not > 0.
    """

    __slots__ = ("_autojump", "_moves", "_now", "_seq", "_sleepers", "_stall", "_waking")

    def __init__(
        self, start: float = 0.0, *, autojump: bool = False, stall_timeout: float | None = 10.0
    ) -> None:
        if isinstance(start, bool) or not isinstance(start, int | float):
            raise TypeError(f"start must be a number, got {type(start).__name__}")
        if not math.isfinite(start):
            raise ValueError(f"start must be finite, got {start!r}")
        if not isinstance(autojump, bool):
            raise TypeError("autojump must be a bool")
        if stall_timeout is not None:
            if isinstance(stall_timeout, bool) or not isinstance(stall_timeout, int | float):
                raise TypeError("stall_timeout must be a number of seconds or None")
            if not stall_timeout > 0:
                raise ValueError(f"stall_timeout must be > 0 (or None), got {stall_timeout!r}")
        self._now = float(start)
        self._autojump = autojump
        self._stall = _INF if stall_timeout is None else float(stall_timeout)
        self._moves = 0  # how many times the clock was moved: a wait that sees none is stalled
        self._sleepers: list[tuple[float, int, Any]] = []  # heap of (deadline, order, anyio.Event)
        self._seq = itertools.count()
        self._waking = 0  # waits woken by a move whose tasks have not resumed yet

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current reading. Setting it moves the clock (backwards too: a clock that steps
        back, for tests of that) and wakes the waits that are due."""
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = float(value)
        self._moved()

    @property
    def autojump(self) -> bool:
        """Whether a wait moves the clock by itself."""
        return self._autojump

    @property
    def waiting(self) -> int:
        """How many waits are pending on the clock."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must be finite and >= 0), waking the waits
        that are due."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("a monotonic clock only moves forward by a finite amount")
        self._now += seconds
        self._moved()

    def _moved(self) -> None:
        self._moves += 1
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._now:
            heapq.heappop(sleepers)[2].set()
            self._waking += 1

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock reads ``deadline`` or later (after one checkpoint if it already
        does).

        Raises:
            FakeClockStalled: when the clock did not move for ``stall_timeout`` seconds of the
                event loop's clock (only without ``autojump``).
            ValueError: if ``deadline`` is NaN.
        """
        import anyio  # noqa: PLC0415 - the clock itself needs no event loop
        import anyio.lowlevel  # noqa: PLC0415

        if math.isnan(deadline):
            raise ValueError("deadline must not be NaN")
        if self._now >= deadline:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (deadline, next(self._seq), event)
        heapq.heappush(self._sleepers, entry)
        try:
            while not event.is_set():
                if self._autojump:
                    # Jump only once the tasks of the waits woken last have resumed and the other
                    # ready tasks have had a turn: then to the earliest wait, which may be ours.
                    await anyio.lowlevel.checkpoint()
                    if not event.is_set() and not self._waking:
                        self.now = max(self._now, self._sleepers[0][0])
                    continue
                moves = self._moves
                with anyio.move_on_after(self._stall):
                    await event.wait()
                if not event.is_set() and self._moves == moves:
                    raise FakeClockStalled(
                        f"{self!r}: a wait until {deadline!r} saw the clock stand still for "
                        f"{self._stall:g} s of the event loop's time; move it from the test "
                        "(clock.advance(seconds)), or let waits move it: FakeClock(autojump=True)"
                    )
        finally:
            if event.is_set():
                self._waking -= 1
            else:  # cancelled or stalled: forget the wait
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def __repr__(self) -> str:
        jump = " autojump" if self._autojump else ""
        return f"<FakeClock now={self._now!r}{jump}, {len(self._sleepers)} waiting>"


class RecordingListener(Generic[E]):
    """A listener that appends every event it receives to ``events``."""

    def __init__(self) -> None:
        self.events: list[E] = []

    def __call__(self, event: E) -> None:
        self.events.append(event)

    def of_type(self, kind: type[K]) -> list[K]:
        """The recorded events that are instances of ``kind``, typed as such
        (``of_type(RetryScheduled)`` is a ``list[RetryScheduled]``)."""
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        self.events.clear()


class KneeBackend:
    """A simulated backend: ``knee`` calls at once take ``base_latency`` each; above the knee they
    share it, so a call started with ``n`` calls in flight (itself included) takes
    ``base_latency * n / knee``, queueing-like growth.

    ``await backend()`` sleeps for that latency (on the running loop's clock: virtual time under
    looptime or trio's ``MockClock``) and returns it. Each call's latency is scaled by a uniform
    factor in ``[1 - jitter, 1 + jitter]`` drawn from ``rng``.

    :ivar inflight: calls in flight now.
    :ivar peak: the most calls ever in flight at once.
    :ivar samples: ``(end time, latency)`` of every call that completed.

    Raises:
        ValueError: if ``knee`` < 1, ``base_latency`` <= 0 or ``jitter`` outside ``[0, 1)``.
    """

    def __init__(
        self,
        knee: int,
        base_latency: float,
        *,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if knee < 1 or not base_latency > 0 or not 0 <= jitter < 1:
            raise ValueError("need knee >= 1, base_latency > 0 and 0 <= jitter < 1")
        self.knee = knee
        self.base_latency = base_latency
        self.jitter = jitter
        self._rng = random.Random(0) if rng is None else rng
        self.inflight = 0
        self.peak = 0
        self.samples: list[tuple[float, float]] = []

    def latency(self, inflight: int) -> float:
        """The latency of a call that starts with ``inflight`` calls in flight (itself included),
        before jitter."""
        return self.base_latency * max(1.0, inflight / self.knee)

    async def __call__(self) -> float:
        import anyio  # noqa: PLC0415

        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        latency = self.latency(self.inflight)
        if self.jitter:
            latency *= self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        try:
            await anyio.sleep(latency)
        finally:
            self.inflight -= 1
        self.samples.append((anyio.current_time(), latency))
        return latency

    def p99(self, since: float = -math.inf) -> float:
        """The 99th percentile latency of the calls that ended at ``since`` or later (nearest rank;
        NaN when none did)."""
        ordered = sorted(latency for end, latency in self.samples if end >= since)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Resettable(Protocol):
    """What :func:`reset_policies` takes: anything with a ``reset()`` that restores a clean state
    (``CircuitBreaker``, ``RateLimiter``, ``ErrorBudget``, ``LatencyBudget``, ...)."""

    def reset(self) -> None: ...


def reset_policies(*policies: Resettable) -> None:
    """Call ``reset()`` on each policy: the clean state a module-level policy needs between tests.

    A module-level breaker or limiter outlives each test's event loop, and keeps readings of that
    loop's clock (a breaker's open period, a bucket's last reading); a new loop whose clock starts
    afresh (looptime starts every loop at 0) would see them as the future. Reset them before each
    test, with the pytest plugin's marker ``@pytest.mark.resilience_reset(breaker, limiter)`` or an
    autouse fixture that calls this.

    Raises:
        TypeError: if a policy has no ``reset()`` (nothing is reset then).
    """
    for policy in policies:
        if not callable(getattr(policy, "reset", None)):
            raise TypeError(f"{policy!r} has no reset() method")
    for policy in policies:
        policy.reset()


def anyio_backends(*, uvloop: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """``anyio_backend`` values: asyncio on a looptime loop, trio with an autojump MockClock when
    trio is installed, and (with ``uvloop=True``, when it is installed) uvloop in real time.

    Raises:
        ImportError: if looptime is not installed (``pip install 'dwcp-resilience[testing]'``).
    """
    looptime = _import_looptime()
    backends: list[tuple[str, dict[str, Any]]] = [
        ("asyncio", {"loop_factory": looptime.new_event_loop}),
    ]
    try:
        import trio.testing  # noqa: PLC0415
    except ImportError:
        pass
    else:
        backends.append(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}))
    if uvloop:
        try:
            import uvloop as uvloop_module  # noqa: PLC0415
        except ImportError:  # pragma: no cover - optional
            pass
        else:
            backends.append(("asyncio", {"loop_factory": uvloop_module.new_event_loop}))
    return backends


def run_virtual(fn: Callable[[], Awaitable[T]], *, backend: str = "asyncio") -> T:
    """Run ``fn()`` to completion in virtual time on ``backend`` ("asyncio" or "trio"), in an event
    loop of its own.

    Raises:
        RuntimeError: if called inside a running event loop (an async test of pytest-asyncio or
            anyio: mark it ``@pytest.mark.resilience_virtual_time`` instead).
        ValueError: if ``backend`` is neither "asyncio" nor "trio".
    """
    import anyio  # noqa: PLC0415

    if backend not in {"asyncio", "trio"}:
        raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
    running = _running_library()
    if running is not None:
        raise RuntimeError(
            f"run_virtual() starts an event loop of its own, and this thread already runs {running} "
            "(an async test?). Await the code directly, and give the test virtual time with the "
            "dwcp_resilience pytest plugin's marker: @pytest.mark.resilience_virtual_time"
        )

    async def main() -> T:
        return await fn()

    if backend == "asyncio":
        looptime = _import_looptime()
        return anyio.run(
            main, backend="asyncio", backend_options={"loop_factory": looptime.new_event_loop}
        )
    import trio.testing  # noqa: PLC0415

    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(main, backend="trio", backend_options={"clock": clock})


def _running_library() -> str | None:
    """ "asyncio" or "trio" when this thread runs that event loop now, else ``None``."""
    import asyncio  # noqa: PLC0415
    import sys  # noqa: PLC0415

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return "trio"
    return None


def _import_looptime() -> Any:
    try:
        import looptime  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "virtual time on asyncio needs looptime: pip install 'dwcp-resilience[testing]'",
            name="looptime",
        ) from exc
    return looptime
