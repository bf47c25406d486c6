"""Property tests of the pure bulkhead core against a reference model (K1-K7)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dwcp_resilience.policies.bulkhead_core import (
    ABANDONED,
    HANDED,
    RELEASED,
    RUNNING,
    WAITING,
    BulkheadCore,
    Permit,
)


class BulkheadMachine(RuleBasedStateMachine):
    """Tickets are anonymous fast-path permits ("fast") or queued ``Permit`` objects."""

    @initialize(cap=st.integers(1, 4), queue=st.integers(0, 4))
    def setup(self, cap: int, queue: int) -> None:
        self.core = BulkheadCore(cap, queue)
        self.cap = cap
        self.qcap = queue
        self.fast_running = 0  # permits taken by try_enter, not yet released
        self.waiters: list[Permit] = []  # queued or handed, in enqueue order
        self.running: list[Permit] = []  # resumed waiters
        self.attempts = 0
        self.admission_order: list[int] = []
        self.enqueue_order: dict[int, int] = {}
        self.seq = 0
        self.released = 0

    def _woken(self, permit: Permit | None) -> None:
        if permit is not None:
            assert permit.state == HANDED
            assert permit in self.waiters
            self.admission_order.append(self.enqueue_order[id(permit)])
            # handed over only into room under the (possibly shrunk) count
            assert self.core.running + self.core.reserved <= self.cap

    @rule()
    def enter(self) -> None:
        self.attempts += 1
        if self.core.try_enter():
            self.fast_running += 1
            return
        permit = self.core.enqueue()
        if permit is None:  # K2: rejected exactly when no free permit and the queue is full
            assert self.core.available == 0 and self.core.queued == self.qcap
            return
        self.enqueue_order[id(permit)] = self.seq
        self.seq += 1
        self.waiters.append(permit)

    @rule()
    def try_enter_nowait(self) -> None:
        self.attempts += 1
        free_before = self.cap - self.core.running - self.core.reserved
        ok = self.core.try_enter()
        assert ok == (free_before > 0)  # K2 (free_before < 0 after a shrink: owed permits)
        if ok:
            self.fast_running += 1
        else:
            self.core.reject()

    @precondition(lambda self: self.fast_running > 0)
    @rule()
    def exit_fast(self) -> None:
        self.fast_running -= 1
        self._woken(self.core.release())

    @precondition(lambda self: bool(self.running))
    @rule(index=st.integers(0, 50))
    def exit_waiter(self, index: int) -> None:
        permit = self.running.pop(index % len(self.running))
        self._woken(self.core.exit(permit))
        assert permit.state == RELEASED
        assert self.core.exit(permit) is None  # K4: a double exit is a no-op

    @precondition(lambda self: any(p.state == HANDED for p in self.waiters))
    @rule(index=st.integers(0, 50))
    def resume(self, index: int) -> None:
        handed = [p for p in self.waiters if p.state == HANDED]
        permit = handed[index % len(handed)]
        self.core.resume(permit)
        assert permit.state == RUNNING
        self.waiters.remove(permit)
        self.running.append(permit)

    @precondition(lambda self: bool(self.waiters))
    @rule(index=st.integers(0, 50), timed_out=st.booleans())
    def abandon(self, index: int, timed_out: bool) -> None:
        """Cancel (or time out) a queued waiter, or one handed a permit that has not resumed."""
        permit = self.waiters.pop(index % len(self.waiters))
        if permit.state == HANDED:
            self.admission_order.remove(self.enqueue_order[id(permit)])
        self._woken(self.core.abandon(permit, timed_out=timed_out))
        assert permit.state == ABANDONED  # K5: never runs afterwards
        assert self.core.abandon(permit) is None  # exactly once

    @rule(size=st.integers(1, 6))
    def resize(self, size: int) -> None:
        """K8: the count moves while calls run; new permits go to the oldest waiters first."""
        in_use = self.core.running + self.core.reserved
        waiting = self.core.queued
        self.cap = size
        woken = self.core.resize(size)
        assert self.core.max_concurrent == size
        assert len(woken) == min(waiting, max(0, size - in_use))
        for permit in woken:
            self._woken(permit)

    @invariant()
    def bounds(self) -> None:  # K1
        core = self.core
        assert core.running >= 0
        assert core.running + core.reserved >= 0
        assert core.available == max(0, self.cap - core.running - core.reserved)
        assert 0 <= core.queued <= self.qcap
        assert core.running == self.fast_running + len(self.running)
        assert core.reserved == sum(p.state == HANDED for p in self.waiters)
        assert core.queued == sum(p.state == WAITING for p in self.waiters)

    @invariant()
    def no_idle_capacity(self) -> None:  # K3
        if self.core.queued > 0:
            assert self.core.available == 0
            assert self.core.running + self.core.reserved >= self.cap

    @invariant()
    def fifo(self) -> None:  # K6
        assert self.admission_order == sorted(self.admission_order)

    @invariant()
    def conservation(self) -> None:  # K4
        core = self.core
        done = core.admitted_at_once + core.admitted_after_wait
        settled = done + core.rejected + core.timed_out + core.cancelled
        assert settled + len(self.waiters) == self.attempts

    def teardown(self) -> None:  # K7: drain
        core = self.core
        while self.waiters or self.running or self.fast_running:
            if self.running:
                self.exit_waiter(0)
            elif self.fast_running:
                self.exit_fast()
            else:
                handed = [p for p in self.waiters if p.state == HANDED]
                if handed:
                    self.resume(0)
                else:
                    self.abandon(0, False)
        assert (core.running, core.queued, core.reserved) == (0, 0, 0)
        assert core.available == self.cap == core.max_concurrent


BulkheadMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestBulkheadMachine = BulkheadMachine.TestCase


def test_queue_place_is_held_only_while_waiting() -> None:
    """The Go bug: with 1 permit and a queue of 1, a waiter that got in freed its queue place."""
    core = BulkheadCore(1, 1)
    assert core.try_enter()
    waiter = core.enqueue()
    assert waiter is not None
    assert core.release() is waiter
    core.resume(waiter)
    assert core.queued == 0
    third = core.enqueue()  # the Go bulkhead said "full" here
    assert third is not None


def test_handed_then_abandoned_passes_the_permit_on() -> None:
    core = BulkheadCore(1, 2)
    assert core.try_enter()
    first, second = core.enqueue(), core.enqueue()
    assert first is not None and second is not None
    assert core.release() is first
    assert core.abandon(first) is second  # anyio#947: the permit goes on, not lost
    core.resume(second)
    assert core.exit(second) is None
    assert core.available == 1


def test_timed_out_waiter_never_gets_a_permit() -> None:
    core = BulkheadCore(1, 3)
    assert core.try_enter()
    waiters = [core.enqueue() for _ in range(3)]
    for permit in waiters:
        assert permit is not None
        core.abandon(permit, timed_out=True)
    assert core.release() is None
    assert core.available == 1 and core.timed_out == 3  # failsafe#393: no grant to the abandoned


def test_a_shrink_retires_permits_as_calls_end_and_a_grow_hands_them_on() -> None:
    core = BulkheadCore(3, 5)
    assert all(core.try_enter() for _ in range(3))
    waiters = [core.enqueue() for _ in range(2)]
    assert core.resize(1) == []
    assert (core.available, core.running) == (0, 3)
    assert core.release() is None and core.release() is None  # two owed permits retired
    assert core.running == 1 and not core.try_enter()
    assert core.resize(2) == [waiters[0]]  # the new permit goes to the oldest waiter
    assert core.resize(4) == [waiters[1]]  # and the next; one more is free
    assert core.available == 1


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (True, TypeError), (2.0, TypeError)])
def test_resize_refuses_bad_counts(size: object, error: type[Exception]) -> None:
    core = BulkheadCore(2)
    with pytest.raises(error, match="max_concurrent"):
        core.resize(size)  # type: ignore[arg-type]
    assert core.max_concurrent == 2


def test_dead_entries_are_compacted() -> None:
    core = BulkheadCore(1, 10)
    assert core.try_enter()
    for _ in range(1000):
        permit = core.enqueue()
        assert permit is not None
        core.abandon(permit, timed_out=True)
    assert len(core._queue) < 100


@pytest.mark.parametrize(
    ("cap", "queue", "error"),
    [
        (0, 0, ValueError),
        (-1, 0, ValueError),
        (1, -1, ValueError),
        (True, 0, TypeError),
        (1, False, TypeError),
        (1.5, 0, TypeError),
        ("2", 0, TypeError),
    ],
)
def test_bad_config(cap: object, queue: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        BulkheadCore(cap, queue)  # type: ignore[arg-type]
