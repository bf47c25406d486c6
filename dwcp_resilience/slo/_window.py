"""The pure core of the error budget: outcome counts in time buckets, summed over sliding windows.

Time is cut into buckets of ``width`` seconds; bucket ``i`` holds the outcomes recorded at times ``t``
with ``floor(t / width) == i``. A window of ``k`` buckets at time ``now`` is the current (partial)
bucket plus the ``k - 1`` before it, so it covers between ``(k - 1) * width`` and ``k * width``
seconds of history. Several windows share one ring (the error budget's own window and the burn-rate
windows), and each keeps a running sum, so:

- recording an outcome is O(1): it touches only the current bucket's two counters;
- moving to a new bucket costs O(number of windows) per elapsed bucket, at most O(ring size) per call
  (after a silence longer than the ring, everything is simply cleared), so O(1) amortised;
- reading a window is O(1).

Nothing here reads a clock or awaits: callers pass ``now``. Hypothesis checks it against a naive model
that keeps every outcome (``tests/test_error_budget.py``).
"""

from __future__ import annotations

__all__: tuple[str, ...] = ()


class BucketWindows:
    """Counts of (total, failed) outcomes over sliding windows of whole buckets.

    Args:
        width: bucket width in seconds (> 0).
        spans: window lengths in buckets (each >= 1); the ring holds ``max(spans)`` buckets.
    """

    __slots__ = (
        "_bad",
        "_size",
        "_spans",
        "_tot",
        "cur_bad",
        "cur_tot",
        "idx",
        "sum_bad",
        "sum_tot",
        "width",
    )

    def __init__(self, width: float, spans: tuple[int, ...]) -> None:
        if not spans or min(spans) < 1:
            raise ValueError("spans must be a non-empty tuple of bucket counts >= 1")
        self.width = width
        self._spans = spans
        self._size = max(spans)
        self._tot = [0] * self._size
        self._bad = [0] * self._size
        self.sum_tot = [0] * len(spans)  # completed buckets inside each window
        self.sum_bad = [0] * len(spans)
        # Public to the error budget, which inlines the fast path of add():
        self.cur_tot = 0  # the current bucket (not yet in the ring)
        self.cur_bad = 0
        self.idx: int | None = None

    def clear(self) -> None:
        """Forget every outcome."""
        size = self._size
        self._tot = [0] * size
        self._bad = [0] * size
        self.sum_tot = [0] * len(self._spans)
        self.sum_bad = [0] * len(self._spans)
        self.cur_tot = self.cur_bad = 0
        self.idx = None

    def advance(self, now: float) -> None:
        """Move the current bucket to the one holding ``now`` (a clock that steps back stays put)."""
        idx = int(now // self.width)
        current = self.idx
        if current is None:
            self.idx = idx
            return
        if idx <= current:
            return
        size = self._size
        if idx - current >= size:
            self.clear()
            self.idx = idx
            return
        tot, bad, sum_tot, sum_bad, spans = (
            self._tot,
            self._bad,
            self.sum_tot,
            self.sum_bad,
            self._spans,
        )
        cur_tot, cur_bad = self.cur_tot, self.cur_bad
        while current < idx:
            # Bucket `current` completes and enters every window; bucket `current - k + 1` leaves.
            slot = current % size
            tot[slot] = cur_tot
            bad[slot] = cur_bad
            for w, span in enumerate(spans):
                leaving = (current - span + 1) % size
                sum_tot[w] += cur_tot - tot[leaving]
                sum_bad[w] += cur_bad - bad[leaving]
            cur_tot = cur_bad = 0
            current += 1
        self.cur_tot = self.cur_bad = 0
        self.idx = idx

    def add(self, now: float, failed: bool) -> None:
        """Record one outcome at ``now``."""
        if self.idx is None or now // self.width != self.idx:
            self.advance(now)
        self.cur_tot += 1
        if failed:
            self.cur_bad += 1

    def counts(self, window: int) -> tuple[int, int]:
        """``(total, failed)`` over window number ``window`` (an index into ``spans``), as of the
        last :meth:`advance` or :meth:`add`."""
        return (
            self.sum_tot[window] + self.cur_tot,
            self.sum_bad[window] + self.cur_bad,
        )
