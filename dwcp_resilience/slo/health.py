"""``HealthMonitor``: periodic health checks that can never stall the monitor.

The checks themselves (ping, threshold, composite) and what counts as healthy live in
:mod:`.checks`: only ``True`` (or a healthy :class:`~.checks.CheckResult`) is healthy; an exception,
a timeout, ``False`` or garbage (``None``, ``"ok"``) is unhealthy with a reason.

The monitor (``go-original.md`` section 1.3, and what it fixes):

- Rounds start on a fixed grid, ``t0 + k * interval``: one round at once, then one per interval. The
  scheduler never waits for checks. Each check runs in its own task of the monitor's task group,
  under ``min(timeout, interval)``, so a round is normally over before the next one starts. A check
  still running when its next turn comes (it resisted cancellation) is not started twice: its new
  turn waits, within its own time limit, for the old run to end; if it does not, that turn counts
  as unhealthy ("previous run still in progress"). Go waited for the whole round, so one check that
  ignored its context stalled the monitor and the ticker dropped ticks.
- ``run()`` / ``stop()`` and ``async with monitor:`` can be repeated; Go panicked on a second stop.
- A new check's state is *unknown* (``healthy is None``) until results decide it (Go reported it
  healthy before it ever ran). ``rise`` consecutive successes make a check healthy and ``fall``
  consecutive failures make it unhealthy; the defaults (1/1) reproduce Go's one-result flips.
- **With zero checks the monitor is healthy** (``empty_is_healthy=True``, as in Go and as in
  Kubernetes, where a pod without probes is ready): nothing is known to be wrong. Pass
  ``empty_is_healthy=False`` to treat "nothing checked" as unhealthy.
- Listeners are called inline, in order, with :class:`HealthChanged` on every transition of a check
  (``check`` is its name) and of the monitor as a whole (``check is None``).
- Per-check statistics (status, runs, failures, success rate, a duration histogram on Prometheus'
  DefBuckets) are kept as plain numbers for a collector to read; Go wrote none of its 4 metrics.

This module is over 450 lines because it is mostly one class, :class:`HealthMonitor`, whose
scheduler, per-check runs and statistics share one state; the types beside it are what it reports.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.abc

from ..core.clock import Clock, loop_time
from ..core.events import Event, Listeners
from ..core.validate import check_int, check_name, check_number
from .checks import CheckResult, CompositeCheck, HealthCheck, PingCheck, ThresholdCheck, evaluate

__all__ = (  # the checks are re-exported from .checks, so both import paths work
    "CheckResult",
    "CheckStatus",
    "CompositeCheck",
    "HealthChanged",
    "HealthCheck",
    "HealthMonitor",
    "HealthMonitorStatistics",
    "PingCheck",
    "ThresholdCheck",
)

#: Prometheus' DefBuckets, the Go histogram's bounds (seconds).
DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class HealthChanged(Event):
    """A check (``check`` is its name) or the whole monitor (``check is None``) changed state."""

    check: str | None
    healthy: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """One check's state. ``healthy`` is ``None`` until ``rise``/``fall`` results decide it.

    :ivar duration_buckets: cumulative counts per :data:`DEF_BUCKETS` bound (``le``), then ``+Inf``.
    """

    name: str
    healthy: bool | None
    last_check: float | None
    last_success: float | None
    last_failure: float | None
    error: str | None
    checks: int
    failures: int
    success_rate: float
    duration: float
    consecutive_successes: int
    consecutive_failures: int
    in_flight: bool
    duration_buckets: tuple[int, ...]
    duration_sum: float


@dataclass(frozen=True, slots=True)
class HealthMonitorStatistics:
    """A snapshot of a :class:`HealthMonitor`."""

    name: str
    healthy: bool
    running: bool
    rounds: int
    missed_rounds: int
    total_checks: int
    total_failures: int
    checks: tuple[CheckStatus, ...]


class _State:
    __slots__ = (
        "bad_run",
        "buckets",
        "check",
        "done",
        "duration",
        "duration_sum",
        "error",
        "failures",
        "healthy",
        "in_flight",
        "last_check",
        "last_failure",
        "last_success",
        "ok_run",
        "runs",
    )

    def __init__(self, check: HealthCheck) -> None:
        self.check = check
        self.healthy: bool | None = None
        self.last_check: float | None = None
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.error: str | None = None
        self.runs = self.failures = self.ok_run = self.bad_run = self.in_flight = 0
        self.duration = self.duration_sum = 0.0
        self.buckets = [0] * (len(DEF_BUCKETS) + 1)
        self.done: anyio.Event | None = None  # set when the latest run ends

    def snapshot(self) -> CheckStatus:
        cumulative, acc = [], 0
        for count in self.buckets:
            acc += count
            cumulative.append(acc)
        return CheckStatus(
            self.check.name, self.healthy, self.last_check, self.last_success, self.last_failure,
            self.error, self.runs, self.failures,
            (self.runs - self.failures) / self.runs if self.runs else 1.0,
            self.duration, self.ok_run, self.bad_run, self.in_flight > 0, tuple(cumulative),
            self.duration_sum,
        )  # fmt: skip


class HealthMonitor:
    """Run health checks every ``interval`` seconds, each under ``timeout``, and track their state.

    Args:
        name: the monitor's name (events, metrics).
        interval: seconds between the starts of two rounds (> 0, finite).
        timeout: the per-check time limit (> 0); the effective limit is ``min(timeout, interval)``.
        rise: consecutive successes that make a check healthy (>= 1).
        fall: consecutive failures that make a check unhealthy (>= 1).
        clock: the monotonic clock (default: the running loop's); it schedules the rounds too.
        checks: the initial checks.
        listeners: called inline with every :class:`HealthChanged`.
        empty_is_healthy: what :attr:`healthy` says with zero checks (default ``True``).

    Raises:
        ValueError, TypeError: for bad configuration, naming the field.
    """

    def __init__(
        self,
        name: str,
        *,
        interval: float = 10.0,
        timeout: float = 5.0,
        rise: int = 1,
        fall: int = 1,
        clock: Clock | None = None,
        checks: Iterable[HealthCheck] = (),
        listeners: Iterable[Callable[[HealthChanged], None]] = (),
        empty_is_healthy: bool = True,
    ) -> None:
        self.name = check_name(name)
        self.interval = check_number(interval, "interval", min_value=0.0, allow_zero=False)
        self.timeout = check_number(
            timeout, "timeout", min_value=0.0, allow_zero=False, allow_inf=True
        )
        self.rise = check_int(rise, "rise", min_value=1)
        self.fall = check_int(fall, "fall", min_value=1)
        if not isinstance(empty_is_healthy, bool):
            raise TypeError("empty_is_healthy must be a bool")
        self.empty_is_healthy = empty_is_healthy
        self._clock = loop_time if clock is None else clock
        self._listeners: Listeners[HealthChanged] = Listeners(listeners)
        self._states: dict[str, _State] = {}
        self._overall = empty_is_healthy
        self._scope: anyio.CancelScope | None = None
        self._running = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.rounds = self.missed_rounds = 0
        for check in checks:
            self._register(check)
        # The initial state is not a transition: no event, no clock read at construction.
        self._overall = (
            all(s.healthy is True for s in self._states.values())
            if self._states
            else empty_is_healthy
        )

    # --- configuration -----------------------------------------------------------------------------

    def _register(self, check: HealthCheck) -> None:
        if not isinstance(check, HealthCheck):
            raise TypeError(f"{check!r} is not a HealthCheck")
        if check.name in self._states:
            raise ValueError(f"a check named {check.name!r} is already registered")
        self._states[check.name] = _State(check)

    def add_check(self, check: HealthCheck) -> None:
        """Register a check (its state starts unknown). ``ValueError`` if the name is taken."""
        self._register(check)
        self._update_overall(None)

    def remove_check(self, name: str) -> None:
        """Unregister a check; ``KeyError`` if unknown."""
        del self._states[name]
        self._update_overall(None)

    def add_listener(self, listener: Callable[[HealthChanged], None]) -> None:
        """Call ``listener`` inline on every :class:`HealthChanged`."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[HealthChanged], None]) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was not registered."""
        self._listeners.remove(listener)

    def on_healthy(self, callback: Callable[[str], None]) -> None:
        """Go's healthy callback: ``callback(check_name)`` when a check becomes healthy."""

        def listener(event: HealthChanged) -> None:
            if event.check is not None and event.healthy:
                callback(event.check)

        self._listeners.add(listener)

    def on_unhealthy(self, callback: Callable[[str, str], None]) -> None:
        """Go's unhealthy callback: ``callback(check_name, reason)`` when a check becomes unhealthy."""

        def listener(event: HealthChanged) -> None:
            if event.check is not None and not event.healthy:
                callback(event.check, event.reason or "")

        self._listeners.add(listener)

    # --- reads ---------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True when every check is healthy (unknown counts as not healthy); see ``empty_is_healthy``."""
        return self._overall

    @property
    def running(self) -> bool:
        """True while :meth:`run` is running."""
        return self._running

    def status(self, name: str) -> CheckStatus:
        """One check's status; ``KeyError`` if unknown."""
        return self._states[name].snapshot()

    def statuses(self) -> dict[str, CheckStatus]:
        """Every check's status, by name."""
        return {name: state.snapshot() for name, state in self._states.items()}

    def statistics(self) -> HealthMonitorStatistics:
        """A snapshot for metrics."""
        checks = tuple(state.snapshot() for state in self._states.values())
        return HealthMonitorStatistics(
            self.name, self._overall, self._running, self.rounds, self.missed_rounds,
            sum(c.checks for c in checks), sum(c.failures for c in checks), checks,
        )  # fmt: skip

    def __repr__(self) -> str:
        bad = sum(1 for s in self._states.values() if s.healthy is False)
        state = "running" if self._running else "stopped"
        return (
            f"<HealthMonitor {self.name!r} {state}, {len(self._states)} checks, {bad} unhealthy, "
            f"{'healthy' if self._overall else 'unhealthy'}>"
        )

    # --- the pure core: apply one result -------------------------------------------------------------

    def _apply(self, state: _State, result: CheckResult, now: float, duration: float) -> None:
        state.runs += 1
        state.last_check = now
        state.duration = duration
        state.duration_sum += duration
        state.buckets[bisect_left(DEF_BUCKETS, duration)] += 1
        old = state.healthy
        if result.healthy:
            state.last_success = now
            state.ok_run += 1
            state.bad_run = 0
            state.error = None
            if old is not True and state.ok_run >= self.rise:
                state.healthy = True
        else:
            state.failures += 1
            state.last_failure = now
            state.bad_run += 1
            state.ok_run = 0
            state.error = result.reason
            if old is not False and state.bad_run >= self.fall:
                state.healthy = False
        if (
            state.healthy is not old
            and state.healthy is not None
            and self._states.get(state.check.name) is state
        ):
            # Update the overall state first, so listeners of the check's event read a current
            # ``monitor.healthy``; then announce the check, then the monitor.
            was = self._overall
            self._overall = self._compute_overall()
            if self._listeners:
                self._listeners.emit(
                    HealthChanged(self.name, now, state.check.name, state.healthy, state.error)
                )
                if self._overall is not was:
                    self._listeners.emit(HealthChanged(self.name, now, None, self._overall, None))

    def _compute_overall(self) -> bool:
        states = self._states.values()
        return all(s.healthy is True for s in states) if states else self.empty_is_healthy

    def _update_overall(self, now: float | None) -> None:
        overall = self._compute_overall()
        if overall is not self._overall:
            self._overall = overall
            if self._listeners:
                when = self._clock() if now is None else now
                self._listeners.emit(HealthChanged(self.name, when, None, overall, None))

    # --- running checks ------------------------------------------------------------------------------

    async def _run_one(self, state: _State, limit: float) -> None:
        clock = self._clock
        done = state.done = anyio.Event()
        state.in_flight += 1
        try:
            start = clock()
            result = await evaluate(state.check, limit)
            end = clock()
        finally:
            state.in_flight -= 1
            done.set()
        self._apply(state, result, end, end - start)

    async def _run_after_previous(self, state: _State, limit: float) -> None:
        """The previous run is still going: give it this run's time slot to end, then run."""
        clock = self._clock
        start = clock()
        done = state.done
        if done is not None:
            with anyio.move_on_after(limit):
                await done.wait()
        if state.in_flight:
            now = clock()
            reason = "previous run still in progress (it did not honour cancellation)"
            self._apply(state, CheckResult(False, reason), now, now - start)
            return
        await self._run_one(state, limit - (clock() - start))

    def _launch_round(self, tg: anyio.abc.TaskGroup) -> None:
        self.rounds += 1
        limit = min(self.timeout, self.interval)
        for state in list(self._states.values()):
            if state.in_flight:
                tg.start_soon(self._run_after_previous, state, limit)
            else:
                tg.start_soon(self._run_one, state, limit)

    async def check_now(self) -> dict[str, CheckStatus]:
        """Run one round now, wait for it, and return every check's status."""
        async with anyio.create_task_group() as tg:
            for state in list(self._states.values()):
                tg.start_soon(self._run_one, state, min(self.timeout, self.interval))
        return self.statuses()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run rounds until :meth:`stop` (or cancellation); can be called again after it returns.

        Raises:
            RuntimeError: if the monitor is already running.
        """
        if self._running:
            raise RuntimeError(f"health monitor {self.name!r} is already running")
        self._running = True
        clock, interval = self._clock, self.interval
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                task_status.started()
                start = clock()
                k = 0
                while True:
                    self._launch_round(tg)
                    k += 1
                    now = clock()
                    due = start + k * interval
                    if now >= due:  # the loop was starved: skip the ticks we missed
                        behind = int((now - due) // interval) + 1
                        self.missed_rounds += behind
                        k += behind
                        due = start + k * interval
                    await anyio.sleep(due - now)
        finally:
            self._scope = None
            self._running = False

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start :meth:`run` in ``task_group`` and return once it is running."""
        await task_group.start(self.run)

    def stop(self) -> None:
        """Stop the running monitor (cancels checks in flight); a no-op when not running."""
        if self._scope is not None:
            self._scope.cancel()

    async def __aenter__(self) -> HealthMonitor:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.run)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            raise
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            raise RuntimeError("__aexit__ without __aenter__")
        self.stop()
        return await tg.__aexit__(exc_type, exc, tb)
