"""Property tests of the pure token-bucket core against a tiny reference model (L1-L9)."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dwcp_resilience.policies.ratelimit_core import (
    CANCELLED,
    DONE,
    GRANTED,
    QUEUED,
    REJECTED,
    Ticket,
    TokenBucket,
)

EPS = 1e-5  # tokens: the core works in absolute times up to ~1e6 s, ulp 2e-10 s


class Model:
    """A token bucket written the obvious way: a float level, a refill on every read, a FIFO list."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.level = float(burst)
        self.t = 0.0
        self.queue: list[tuple[int, int]] = []  # (ticket id, n)

    def refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_time(self, n: int) -> float:
        """Seconds from now until a new request of n at the tail would be admitted."""
        need = sum(k for _, k in self.queue) + n - self.level
        return max(0.0, need / self.rate)

    def grant(self, now: float) -> list[int]:
        self.refill(now)
        out = []
        # Due within the machine's timer tolerance (1e-6 s, see _run_timers), as the core's timer
        # would grant it: a tolerance in tokens would grant a head the timer has not reached.
        while self.queue and self.level >= self.queue[0][1] - self.rate * 1e-6:
            tid, n = self.queue.pop(0)
            self.level -= n
            out.append(tid)
        return out


durations = st.one_of(st.just(0.0), st.floats(1e-9, 1e-3), st.floats(0.0, 3.0), st.just(86_400.0))


class BucketMachine(RuleBasedStateMachine):
    @initialize(
        rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 1000.0]),
        burst=st.integers(1, 5),
        start=st.sampled_from([0.0, 1e6]),
    )
    def setup(self, rate: float, burst: int, start: float) -> None:
        self.core = TokenBucket(rate, burst)
        self.model = Model(rate, burst)
        self.start = start
        self.now = 0.0  # relative to start; the core sees start + now
        self.model.t = 0.0
        self.requests = 0
        self.admits: list[tuple[float, int]] = []  # (time, n)
        self.live: dict[int, Ticket] = {}
        self.ids: dict[int, int] = {}  # id(ticket) -> ticket id
        self.next_id = 0
        self.last_admit_or_queue = 0.0

    # -- helpers -------------------------------------------------------------------------------

    def t(self) -> float:
        return self.start + self.now

    def _admit(self, n: int) -> None:
        self.admits.append((self.now, n))
        self.last_admit_or_queue = self.now
        # L2: every window ending at this admit.
        total = 0
        for when, k in reversed(self.admits):
            total += k
            bound = self.core.burst + self.core.rate * (self.now - when) + 1e-6 * len(self.admits)
            assert total <= bound, (total, bound, self.admits)

    def _run_timers(self, target: float) -> None:
        """Advance to target, granting heads exactly when the shell's head timer would fire."""
        while True:
            ready = self.core.head_ready_at(self.t())
            if ready - self.start > target + 1e-6:  # float noise in the core's sums
                break
            self.now = max(self.now, ready - self.start)
            granted = self.core.grant_due(max(self.t(), ready))
            expected = self.model.grant(self.now)
            got = [self.ids[id(ticket)] for ticket in granted]
            assert got == expected, (got, expected, self.now)
            for ticket in granted:
                assert ticket.state == GRANTED
                self._admit(ticket.n)
        self.now = max(self.now, target)
        expected = self.model.grant(self.now)
        assert expected == [], expected

    # -- rules ---------------------------------------------------------------------------------

    @rule(dt=durations)
    def advance(self, dt: float) -> None:
        self._run_timers(self.now + dt)

    @rule(n=st.integers(1, 7))
    def try_acquire(self, n: int) -> None:
        if n > self.core.burst:
            with pytest.raises(ValueError):  # L5
                self.core.try_acquire(n, self.t())
            return
        self.requests += 1
        self.model.refill(self.now)
        ok = self.core.try_acquire(n, self.t())
        want = not self.model.queue and self.model.level >= n
        if abs(self.model.level - n) > EPS or self.model.queue:
            assert ok == want, (ok, self.model.level, n)  # L3 (no false rejection) and no barging
        if ok:
            self.model.level -= n
            self._admit(n)

    @rule(n=st.integers(1, 7), max_wait=st.sampled_from([0.0, 0.05, 0.5, 2.0, math.inf]))
    def acquire(self, n: int, max_wait: float) -> None:
        if n > self.core.burst:
            with pytest.raises(ValueError):  # L5: never queued
                self.core.reserve(n, self.t(), self.t() + max_wait)
            assert all(t.n <= self.core.burst for t in self.live.values())
            return
        self.requests += 1
        self.model.refill(self.now)
        ticket = self.core.reserve(n, self.t(), self.t() + max_wait)
        wait = self.model.wait_time(n)
        if ticket.state == DONE:
            assert wait <= EPS * 10, wait
            self.model.level -= n
            self._admit(n)
            return
        if ticket.state == REJECTED:
            assert wait >= max_wait - 1e-6, (wait, max_wait)
            assert ticket.ready_at - self.t() == pytest.approx(wait, abs=1e-6)
            return
        assert ticket.state == QUEUED
        assert wait <= max_wait + 1e-6, (wait, max_wait)  # L4: fails fast otherwise
        assert ticket.ready_at - self.t() == pytest.approx(wait, abs=1e-6)
        tid = self.next_id
        self.next_id += 1
        self.live[tid] = ticket
        self.ids[id(ticket)] = tid
        self.model.queue.append((tid, n))

    @precondition(lambda self: bool(self.live))
    @rule(index=st.integers(0, 100))
    def cancel(self, index: int) -> None:
        tid = sorted(self.live)[index % len(self.live)]
        ticket = self.live.pop(tid)
        state = ticket.state
        self.model.refill(self.now)
        before = self.model.level
        untouched = ticket.mark == self.core._mark() and self.core._granted_at <= ticket.ready_at
        assert self.core.abandon(ticket, self.t()) == (state in (QUEUED, GRANTED))
        assert ticket.state == CANCELLED or state not in (QUEUED, GRANTED)
        assert not self.core.abandon(ticket, self.t())  # exactly once
        if state == QUEUED:  # L6: as if it never existed
            self.model.queue = [(i, k) for i, k in self.model.queue if i != tid]
        elif state == GRANTED:
            # A refund never gives more than the ticket took, nor more than the bucket can hold.
            core = self.core
            base = core._tat - core.queued_tokens / core.rate
            level = min(core.burst, (self.t() - base) * core.rate)
            assert before - 1e-6 <= level <= min(core.burst, before + ticket.n) + 1e-6
            if untouched:  # exact when nothing else touched the bucket
                assert level == pytest.approx(min(core.burst, before + ticket.n), abs=1e-6)
            self.model.level = level
            self.admits.remove(next(a for a in reversed(self.admits) if a[1] == ticket.n))
        # A refund may make the head due right now.
        self._run_timers(self.now)

    @precondition(lambda self: any(t.state == GRANTED for t in self.live.values()))
    @rule(index=st.integers(0, 100))
    def finish(self, index: int) -> None:
        granted = sorted(tid for tid, t in self.live.items() if t.state == GRANTED)
        tid = granted[index % len(granted)]
        ticket = self.live.pop(tid)
        self.core.finish(ticket)
        assert ticket.state == DONE
        self.core.finish(ticket)  # a second finish is a no-op

    @rule(dt=st.floats(0.0, 10.0))
    def step_back(self, dt: float) -> None:
        before = self.core.tokens(self.t())
        after = self.core.tokens(self.t() - dt)  # L8: a clock step back changes nothing
        assert after == before

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def tokens_in_range(self) -> None:  # L1
        tokens = self.core.tokens(self.t())
        assert math.isfinite(tokens)
        assert 0.0 <= tokens <= self.core.burst
        if not self.model.queue:
            self.model.refill(self.now)
            assert tokens == pytest.approx(self.model.level, abs=1e-6)

    @invariant()
    def idle_cap(self) -> None:  # L7
        if (
            not self.model.queue
            and self.now - self.last_admit_or_queue >= (self.core.burst / self.core.rate)
            and all(t.state != GRANTED for t in self.live.values())
        ):
            assert self.core.tokens(self.t()) == self.core.burst

    @invariant()
    def conservation(self) -> None:  # L9
        core = self.core
        done = core.allowed + core.allowed_waited
        assert self.requests == done + core.rejected + core.cancelled + core.waiting
        assert core.waiting == len(self.live)
        assert core.queued_tokens == sum(n for _, n in self.model.queue)


BucketMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestBucketMachine = BucketMachine.TestCase


def test_starts_full_and_refills_exactly() -> None:
    bucket = TokenBucket(2.0, 4)
    assert bucket.tokens(100.0) == 4.0
    assert [bucket.try_acquire(1, 100.0) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.tokens(100.25) == pytest.approx(0.5)
    assert not bucket.try_acquire(1, 100.25)
    assert bucket.try_acquire(1, 100.5)
    assert bucket.tokens(10_000.0) == 4.0  # a long idle never overfills (L7)


def test_fifo_reservation_blocks_barging() -> None:
    bucket = TokenBucket(1.0, 3)
    assert bucket.try_acquire(3, 0.0)
    ticket = bucket.reserve(2, 0.0)
    assert ticket.state == QUEUED and ticket.ready_at == 2.0
    assert not bucket.try_acquire(1, 1.5)  # a token is there, but the queue comes first
    assert bucket.head_ready_at(1.5) == 2.0
    assert bucket.grant_due(1.9) == []
    assert bucket.grant_due(2.0) == [ticket]
    bucket.finish(ticket)
    assert (bucket.allowed, bucket.allowed_waited, bucket.rejected, bucket.waiting) == (1, 1, 1, 0)


def test_reserve_rejects_at_once_past_deadline() -> None:
    bucket = TokenBucket(1.0, 2)
    bucket.try_acquire(2, 0.0)
    ticket = bucket.reserve(2, 0.0, deadline=1.0)
    assert ticket.state == REJECTED and ticket.ready_at == 2.0
    assert bucket.queued_tokens == 0 and bucket.tokens(2.0) == 2.0  # reserved nothing


def test_cancel_moves_the_queue_forward() -> None:
    bucket = TokenBucket(1.0, 1)
    bucket.try_acquire(1, 0.0)
    first = bucket.reserve(1, 0.0)
    second = bucket.reserve(1, 0.0)
    assert (first.ready_at, second.ready_at) == (1.0, 2.0)
    bucket.abandon(first, 0.0)
    assert bucket.head() is second and bucket.head_ready_at(0.5) == 1.0


def test_late_timer_never_grants_more_than_burst() -> None:
    bucket = TokenBucket(1.0, 2)
    bucket.try_acquire(2, 0.0)
    tickets = [bucket.reserve(1, 0.0) for _ in range(6)]
    assert tickets[-1].ready_at == 6.0
    granted = bucket.grant_due(100.0)  # the loop was blocked for 100 s
    assert len(granted) == 2
    assert bucket.head_ready_at(100.0) == 101.0


def test_reconfigure_keeps_tokens_and_evicts_oversize() -> None:
    bucket = TokenBucket(10.0, 10)
    bucket.try_acquire(10, 0.0)
    big = bucket.reserve(8, 0.0)
    small = bucket.reserve(2, 0.0)
    evicted = bucket.reconfigure(5.0, 4, 0.0)
    assert evicted == [big] and big.state == REJECTED
    assert bucket.head() is small
    assert bucket.head_ready_at(0.0) == pytest.approx(0.4)  # 2 tokens at 5/s
    assert bucket.tokens(100.0) == 4.0


def test_no_refund_for_a_grant_that_a_later_grant_followed() -> None:
    """Found by the machine: A granted at 2/3 s, B (the whole burst) at 7/3 s, A cancelled at 2.5 s
    before it ran. Refunding A would let 6 through in [7/3, 2.5] with burst 5 at 3/s."""
    core = TokenBucket(3.0, 5)
    assert core.try_acquire(5, 0.0)
    a, b = core.reserve(2, 0.0), core.reserve(5, 0.0)
    for _ in range(2):
        assert core.grant_due(core.head_ready_at(0.0))
    assert (a.state, b.state) == (GRANTED, GRANTED)
    assert core.abandon(a, 2.5) and a.state == CANCELLED
    assert core.tokens(2.5) == pytest.approx(0.5)
    assert not core.try_acquire(1, 2.5)


@pytest.mark.parametrize(
    ("rate", "burst", "error"),
    [
        (0, 1, ValueError),
        (-1, 1, ValueError),
        (math.nan, 1, ValueError),
        (math.inf, 1, ValueError),
        (1, 0, ValueError),
        (1, -1, ValueError),
        (True, 1, TypeError),
        (1, True, TypeError),
        ("1", 1, TypeError),
        (1, 1.5, TypeError),
    ],
)
def test_bad_config(rate: object, burst: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        TokenBucket(rate, burst)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "error"),
    [(0, ValueError), (-1, ValueError), (3, ValueError), (True, TypeError), (1.0, TypeError)],
)
def test_bad_n(n: object, error: type[Exception]) -> None:
    bucket = TokenBucket(1.0, 2)
    with pytest.raises(error):
        bucket.try_acquire(n, 0.0)  # type: ignore[arg-type]
    with pytest.raises(error):
        bucket.reserve(n, 0.0)  # type: ignore[arg-type]
    assert bucket.waiting == 0 and bucket.queued_tokens == 0
