"""``FleetErrorBudget``: one error budget for a fleet, counted in time buckets on Redis.

Every instance records its outcomes locally (sync and O(1): its own
:class:`~dwcp_resilience.ErrorBudget` plus a pending delta per bucket); a background flusher pushes
the deltas to Redis every ``flush_interval``, and :meth:`FleetErrorBudget.fleet_snapshot` sums the
fleet's buckets over the window in one round trip.

Keys (``<ns>`` the backend's namespace, ``<name>`` the budget's name; the braces are a Redis
Cluster hash tag, so both keys of a budget live in one slot and every script declares the keys it
touches):

- ``{<ns>:budget:<name>}:buckets``, a hash with fields ``t:<bucket start ms>`` and
  ``f:<bucket start ms>`` (requests and failures per bucket of ``bucket`` seconds of **Redis server
  time**, ``TIME`` inside the scripts) and ``lo``, the oldest bucket start it may still hold. Each
  flush deletes the buckets that no snapshot can read any more (older than the window) and sets
  the hash's TTL to ``window + bucket``: a budget nobody flushes vanishes by itself.
- ``{<ns>:budget:<name>}:seq:<instance>:<token>``, the last batch number this budget object applied
  (TTL ``2 * (window + bucket)``), which makes flushes idempotent.

Bucket times are fleet-consistent: a delta is sent with its *age* (how long ago, on this process'
monotonic clock, the middle of its local bucket was), and the script dates it at Redis' ``TIME``
minus that age. Host clocks never need to agree; a record may land in the neighbouring bucket
(dating is exact to within one bucket).

Delivery: **exactly once** while Redis keeps its data. A flush freezes the pending deltas into a
numbered batch; the script applies a batch only if its number is above the last one applied for
this object (``HINCRBY`` and the number move together, atomically). A batch stays in flight until
its reply arrives, so a flush that failed, was cancelled, or lost its reply (the ``HINCRBY`` may
have happened) is sent again later with the same number and applied at most once; new records go
into the next batch. When Redis is down the deltas are kept, bounded: a bucket whose end is more
than ``window`` ago can no longer count and is dropped (``dropped_records`` counts them). A Redis
restart loses the counters (no persistence): nothing is double counted then, but what was applied
before it is gone.

Redis unavailable: ``record`` never touches Redis; flush failures and a failed snapshot emit one
:class:`~dwcp_resilience.redis.FleetFallback` per outage, and ``fleet_snapshot()`` answers from the
local budget (``shared=False`` in the snapshot: this instance's view only). The first Redis call
that works emits :class:`~dwcp_resilience.redis.FleetRestored`, and the kept deltas go out.

Background work (no fire-and-forget task): ``async with budget:`` opens a task group that the
caller's block owns, with the flusher (every ``flush_interval``) and the snapshot refresher (at
entry, then every ``snapshot_interval``); leaving the block cancels both and flushes once more.
The latest snapshot is kept (:attr:`FleetErrorBudget.last_snapshot`, and ``snapshot`` in
:meth:`FleetErrorBudget.statistics`), so the metrics collector reads it without a Redis call.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..core.clock import Clock, loop_time
from ..core.events import Event, Listeners
from ..core.validate import check_int, check_name, check_number
from ..slo.error_budget import ErrorBudget
from ._backend import BackendUnavailable, FallbackTracker, RedisBackend
from ._budget_core import BudgetDeltas, FleetBudgetSnapshot, budget_snapshot
from ._budget_lua import FLUSH_LUA, SNAPSHOT_LUA

__all__ = (
    "FleetBudgetSnapshot",
    "FleetBudgetStatistics",
    "FleetErrorBudget",
)

_log = logging.getLogger("dwcp_resilience")


@dataclass(frozen=True, slots=True)
class FleetBudgetStatistics:
    """Counters of a :class:`FleetErrorBudget`.

    :ivar name: the budget's name.
    :ivar shared: True while Redis is reachable.
    :ivar batches: batches Redis confirmed (applied, or found already applied).
    :ivar duplicates: batches Redis had already applied (a lost reply, sent again).
    :ivar pending_records: records not yet in a batch.
    :ivar inflight_records: records in the batch awaiting confirmation.
    :ivar dropped_records: records discarded before confirmation (too old for the window).
    :ivar fallbacks: times the budget fell back to local state.
    :ivar snapshots: fleet (shared) snapshots taken, by the refresher or by ``fleet_snapshot()``.
    :ivar snapshot: the latest snapshot taken (shared, or the local one while Redis was down);
        ``None`` before the first.
    """

    name: str
    shared: bool
    batches: int
    duplicates: int
    pending_records: int
    inflight_records: int
    dropped_records: int
    fallbacks: int
    snapshots: int
    snapshot: FleetBudgetSnapshot | None


# -- the async shell ------------------------------------------------------------------------------


class FleetErrorBudget:
    """An error budget summed over a fleet: local recording, bucketed counters on Redis.

    Use it as ``async with budget:`` to run the background flusher (it flushes once more on exit)
    and snapshot refresher, or call :meth:`flush` and :meth:`fleet_snapshot` yourself. See the
    module docs for keys, dating and delivery.

    Args:
        backend: the Redis connection.
        name: the budget's name (instances with the same name and namespace share it).
        slo: the target success ratio, in (0, 1].
        window: the window in seconds (finite, > 0).
        bucket: the bucket width in seconds, in [0.001, window] (Redis time has ms resolution).
        flush_interval: seconds between background flushes (finite, > 0).
        snapshot_interval: seconds between background snapshots (finite, > 0), the first one at
            entry; ``None``: no background snapshots.
        min_requests: the volume below which the budget is never "exhausted".
        local: the local :class:`~dwcp_resilience.ErrorBudget` to record into as well (default: a
            new one with the same ``slo``, ``window`` and ``min_requests``).
        listeners: called inline with :class:`~dwcp_resilience.redis.FleetFallback` and
            :class:`~dwcp_resilience.redis.FleetRestored`.
        clock: the monotonic clock (default: the running loop's).

    Raises:
        TypeError: a setting has the wrong type.
        ValueError: a setting is out of range, NaN or infinite.
    """

    __slots__ = (
        "_backend", "_buckets_key", "_clock", "_count", "_deltas", "_flush", "_flush_interval",
        "_last_snapshot", "_lock", "_own_clock", "_seq_key", "_snapshot", "_snapshot_interval", "_task_group",
        "_tracker", "batches", "duplicates", "local", "min_requests", "name", "slo", "snapshots",
        "window",
    )  # fmt: skip

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        *,
        slo: float,
        window: float = 3600.0,
        bucket: float = 10.0,
        flush_interval: float = 1.0,
        snapshot_interval: float | None = 5.0,
        min_requests: int = 100,
        local: ErrorBudget | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise TypeError(f"backend must be a RedisBackend, got {type(backend).__name__}")
        self._backend = backend
        self.name = check_name(name)
        self.slo = check_number(slo, "slo", min_value=0.0, allow_zero=False, max_value=1.0)
        self.window = check_number(window, "window", min_value=0.0, allow_zero=False)
        width = check_number(bucket, "bucket", min_value=0.001, max_value=self.window)
        self._flush_interval = check_number(
            flush_interval, "flush_interval", min_value=0.0, allow_zero=False
        )
        self._snapshot_interval = (
            None
            if snapshot_interval is None
            else check_number(snapshot_interval, "snapshot_interval", min_value=0, allow_zero=False)
        )
        self.min_requests = check_int(min_requests, "min_requests", min_value=0)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        self._clock: Clock = loop_time if clock is None else clock
        if local is None:
            local = ErrorBudget(
                name, slo=self.slo, window=self.window, min_requests=self.min_requests,
                bucket=width, burn_alerts=(), clock=self._clock,
            )  # fmt: skip
            self._own_clock = True
        elif not isinstance(local, ErrorBudget):
            raise TypeError(f"local must be an ErrorBudget, got {type(local).__name__}")
        else:
            self._own_clock = False
        self.local = local
        self._deltas = BudgetDeltas(width, self.window)
        token = secrets.token_hex(4)
        self._buckets_key = backend.key("budget", self.name, "buckets")
        self._count = math.ceil(self.window / width - 1e-9)  # buckets a snapshot sums
        self._seq_key = backend.key("budget", self.name, "seq", f"{backend.instance}:{token}")
        self._flush: Any = backend.register_script(FLUSH_LUA)
        self._snapshot: Any = backend.register_script(SNAPSHOT_LUA)
        self._tracker = FallbackTracker(f"fleet-budget:{self.name}", Listeners(listeners))
        self._lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        #: batches Redis confirmed; of which Redis had already applied (lost replies).
        self.batches = self.duplicates = 0
        #: fleet (shared) snapshots taken.
        self.snapshots = 0
        self._last_snapshot: FleetBudgetSnapshot | None = None

    # -- recording (sync, no Redis) ----------------------------------------------------------------

    def record(self, success: bool) -> None:
        """Record one outcome: into the local budget and this instance's pending deltas."""
        now = self._clock()
        if self._own_clock:
            self.local.record(success, now)
        else:
            self.local.record(success)
        self._deltas.add(now, success)

    # -- Redis -------------------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """True while Redis is reachable."""
        return self._tracker.shared

    async def flush(self) -> bool:
        """Send the pending deltas (and first a batch still in flight) to Redis.

        Returns True when everything recorded before the call is confirmed, False when Redis is
        unavailable (the deltas are kept for the next flush; a fallback event is emitted once).
        Cancelling it is safe: an unconfirmed batch is sent again, and applied at most once.
        """
        async with self._lock:
            deltas = self._deltas
            rounds = 2 if deltas.inflight is not None else 1
            for _ in range(rounds):
                now = self._clock()
                batch = deltas.begin(now)
                if batch is None:
                    return True
                args: list[int | str] = [
                    int(deltas.width * 1000),
                    self._count,
                    int((self.window + deltas.width) * 1000),
                    int(2 * (self.window + deltas.width) * 1000),
                    batch.seq,
                ]
                for age, (_, total, failed) in zip(
                    batch.ages(now, deltas.width), batch.items, strict=True
                ):
                    args += [age, total, failed]
                try:
                    applied = await self._backend.run(
                        self._flush, keys=[self._seq_key, self._buckets_key], args=args
                    )
                except BackendUnavailable as exc:
                    self._tracker.failed(exc)
                    return False
                self._tracker.succeeded()
                deltas.ack(batch.seq)
                self.batches += 1
                if not applied:
                    self.duplicates += 1
            return deltas.inflight is None

    async def fleet_snapshot(self) -> FleetBudgetSnapshot:
        """The fleet's budget over the window (one round trip), or the local one if Redis is down.

        This instance's unflushed records are not in a shared total (``unflushed`` says how many;
        ``await flush()`` first for an exact figure). The result is kept as :attr:`last_snapshot`.
        """
        deltas = self._deltas
        unflushed = deltas.pending_records + deltas.inflight_records
        try:
            _, total, failed = await self._backend.run(
                self._snapshot,
                keys=[self._buckets_key],
                args=[int(deltas.width * 1000), self._count],
            )
        except BackendUnavailable as exc:
            self._tracker.failed(exc)
            local_total, local_failed = self.local.counts()
            snapshot = self._snapshot_of(local_total, local_failed, False, unflushed)
        else:
            self._tracker.succeeded()
            snapshot = self._snapshot_of(int(total), int(failed), True, unflushed)
            self.snapshots += 1
        self._last_snapshot = snapshot
        return snapshot

    def _snapshot_of(
        self, total: int, failed: int, shared: bool, unflushed: int
    ) -> FleetBudgetSnapshot:
        return budget_snapshot(
            self.name, slo=self.slo, window=self.window, min_requests=self.min_requests,
            total=total, failed=failed, shared=shared, unflushed=unflushed,
        )  # fmt: skip

    @property
    def last_snapshot(self) -> FleetBudgetSnapshot | None:
        """The latest :meth:`fleet_snapshot` result (no Redis call); ``None`` before the first."""
        return self._last_snapshot

    def statistics(self) -> FleetBudgetStatistics:
        """A frozen snapshot of the counters."""
        deltas = self._deltas
        return FleetBudgetStatistics(
            name=self.name,
            shared=self._tracker.shared,
            batches=self.batches,
            duplicates=self.duplicates,
            pending_records=deltas.pending_records,
            inflight_records=deltas.inflight_records,
            dropped_records=deltas.dropped_records,
            fallbacks=self._tracker.fallbacks,
            snapshots=self.snapshots,
            snapshot=self._last_snapshot,
        )

    # -- the flusher -------------------------------------------------------------------------------

    async def __aenter__(self) -> FleetErrorBudget:
        if self._task_group is not None:
            raise RuntimeError(f"fleet budget {self.name!r} is already running")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run_flusher, name=f"fleet-budget:{self.name}:flush")
        if self._snapshot_interval is not None:
            task_group.start_soon(
                self._run_snapshots, self._snapshot_interval, name=f"fleet-budget:{self.name}:snap"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        task_group.cancel_scope.cancel()
        await task_group.__aexit__(exc_type, exc, tb)
        # A last flush, bounded by the backend's timeout and shielded from an outer cancellation.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2 * self._backend.timeout):
            await self.flush()

    async def _run_flusher(self) -> None:
        while True:
            await anyio.sleep(self._flush_interval)
            try:
                await self.flush()
            except Exception:  # a bug (script error, ...): log it, keep the deltas, go on
                _log.exception("fleet budget %r: flush failed", self.name)

    async def _run_snapshots(self, interval: float) -> None:
        while True:
            try:
                await self.fleet_snapshot()  # Redis down: the local snapshot, one fallback event
            except Exception:  # a bug (script error, ...): log it, try again next time
                _log.exception("fleet budget %r: snapshot failed", self.name)
            await anyio.sleep(interval)

    def __repr__(self) -> str:
        deltas = self._deltas
        mode = "shared" if self._tracker.shared else "local-only"
        return (
            f"<FleetErrorBudget {self.name!r} slo={self.slo:g} window={self.window:g}s {mode}, "
            f"{deltas.pending_records + deltas.inflight_records} unflushed>"
        )
