"""The fleet error budget's pure bookkeeping: unflushed deltas per local bucket, one batch in flight,
and the snapshot arithmetic (:func:`budget_snapshot`).

No I/O and no clock of its own (every method takes ``now``), so a Hypothesis state machine can
drive it against a model server that loses replies (``tests/test_redis_budget.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ("BudgetBatch", "BudgetDeltas", "FleetBudgetSnapshot", "budget_snapshot")


@dataclass(frozen=True, slots=True)
class BudgetBatch:
    """Deltas frozen for one flush: ``items`` are ``(local bucket index, total, failed)``."""

    seq: int
    items: tuple[tuple[int, int, int], ...]

    @property
    def total(self) -> int:
        """Records in the batch."""
        return sum(item[1] for item in self.items)

    def ages(self, now: float, width: float) -> list[int]:
        """Each item's age in ms at ``now``: the time since the middle of its local bucket."""
        return [max(0, int((now - (index + 0.5) * width) * 1000)) for index, _, _ in self.items]


class BudgetDeltas:
    """Unflushed outcome counts per local bucket, plus at most one batch in flight (pure core).

    ``add`` counts an outcome in its bucket (``floor(now / width)``); ``begin`` freezes the pending
    counts into a numbered batch (or hands back the batch still in flight); ``ack`` forgets the batch
    once Redis confirmed it. Buckets whose end is ``window`` or more before ``now`` are dropped (and
    counted) by ``add`` and ``begin``: they could no longer count in any window.
    """

    __slots__ = ("_inflight", "_pending", "dropped_records", "seq", "width", "window")

    def __init__(self, width: float, window: float) -> None:
        self.width = width
        self.window = window
        self._pending: dict[int, list[int]] = {}
        self._inflight: BudgetBatch | None = None
        #: the number of the latest batch made.
        self.seq = 0
        #: records discarded before Redis confirmed them (their bucket left the window).
        self.dropped_records = 0

    def add(self, now: float, success: bool) -> None:
        """Count one outcome at ``now``."""
        index = int(now // self.width)
        counts = self._pending.get(index)
        if counts is None:
            if self._pending and len(self._pending) * self.width > self.window:
                self.trim(now)
            counts = self._pending[index] = [0, 0]
        counts[0] += 1
        if not success:
            counts[1] += 1

    def _expired(self, index: int, now: float) -> bool:
        return (index + 1) * self.width + self.window <= now

    def trim(self, now: float) -> None:
        """Drop the buckets (pending and in flight) that have left the window."""
        for index in [i for i in self._pending if self._expired(i, now)]:
            self.dropped_records += self._pending.pop(index)[0]
        batch = self._inflight
        if batch is not None:
            kept = tuple(item for item in batch.items if not self._expired(item[0], now))
            if len(kept) != len(batch.items):
                self.dropped_records += batch.total - sum(item[1] for item in kept)
                self._inflight = BudgetBatch(batch.seq, kept) if kept else None

    def begin(self, now: float) -> BudgetBatch | None:
        """The batch to send now: the one in flight, else the pending counts (``None``: nothing)."""
        self.trim(now)
        if self._inflight is None and self._pending:
            self.seq += 1
            items = tuple((i, c[0], c[1]) for i, c in sorted(self._pending.items()))
            self._inflight = BudgetBatch(self.seq, items)
            self._pending = {}
        return self._inflight

    def ack(self, seq: int) -> None:
        """Redis confirmed batch ``seq`` (applied now or before): forget it."""
        if self._inflight is not None and self._inflight.seq == seq:
            self._inflight = None

    @property
    def inflight(self) -> BudgetBatch | None:
        """The batch sent but not confirmed, if any."""
        return self._inflight

    @property
    def bucket_count(self) -> int:
        """Local buckets kept, pending and in flight (bounded by about ``2 * window / width``)."""
        inflight = 0 if self._inflight is None else len(self._inflight.items)
        return len(self._pending) + inflight

    @property
    def pending_records(self) -> int:
        """Records not yet in a batch."""
        return sum(counts[0] for counts in self._pending.values())

    @property
    def inflight_records(self) -> int:
        """Records in the batch in flight."""
        return 0 if self._inflight is None else self._inflight.total


@dataclass(frozen=True, slots=True)
class FleetBudgetSnapshot:
    """The budget over the window, for the fleet (``shared``) or, while Redis is down, this instance.

    :ivar name: the budget's name.
    :ivar shared: True: the fleet's sum from Redis; False: the local budget only (fallback).
    :ivar slo: the target success ratio.
    :ivar window: the window in seconds.
    :ivar total: requests in the window.
    :ivar failed: failed requests in the window.
    :ivar availability: the request success ratio ``1 - failed / total`` (1.0 with no requests).
    :ivar consumed: the part of the error budget spent, in [0, 1].
    :ivar remaining: ``1 - consumed``.
    :ivar allowed_failures: failures the window can still take.
    :ivar burn_rate: ``(failed / total) / (1 - slo)`` (0.0 with no failures, ``inf`` if slo is 1).
    :ivar exhausted: ``availability < slo`` with at least ``min_requests`` requests.
    :ivar unflushed: this instance's records not yet confirmed by Redis (not in a shared total).
    """

    name: str
    shared: bool
    slo: float
    window: float
    total: int
    failed: int
    availability: float
    consumed: float
    remaining: float
    allowed_failures: int
    burn_rate: float
    exhausted: bool
    unflushed: int


def budget_snapshot(
    name: str,
    *,
    slo: float,
    window: float,
    min_requests: int,
    total: int,
    failed: int,
    shared: bool,
    unflushed: int,
) -> FleetBudgetSnapshot:
    """The budget over the window from its request and failure counts (pure arithmetic)."""
    allowance = 1.0 - slo
    if failed == 0:
        consumed, burn = 0.0, 0.0
    elif allowance <= 0.0:
        consumed, burn = 1.0, math.inf
    else:
        consumed = min(1.0, failed / (total * allowance))
        burn = failed / total / allowance
    availability = 1.0 - failed / total if total else 1.0
    return FleetBudgetSnapshot(
        name=name,
        shared=shared,
        slo=slo,
        window=window,
        total=total,
        failed=failed,
        availability=availability,
        consumed=consumed,
        remaining=1.0 - consumed,
        allowed_failures=max(0, math.floor(total * allowance + 1e-9) - failed),
        burn_rate=burn,
        exhausted=total >= min_requests and availability < slo,
        unflushed=unflushed,
    )
