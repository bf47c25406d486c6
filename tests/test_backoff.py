"""Backoff schedules: exact sequences, jitter bounds, overflow safety (R27, T2), determinism (T5)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.policies.backoff import (
    Backoff,
    ConstantBackoff,
    ExponentialBackoff,
    FibonacciBackoff,
    LinearBackoff,
)

JITTERS: list[Any] = [False, True, "none", "full", "equal", "decorrelated", "proportional"]


class FixedRandom:
    """A jitter source that always returns ``value`` (even out-of-range ones, to test clamping)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


# --- exact schedules (no jitter) --------------------------------------------------------------


def test_exponential_schedule_matches_the_go_policy() -> None:
    """d0 = initial, then x multiplier, capped: the Go RetryPolicy sequence without its jitter."""
    b = ExponentialBackoff(initial_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=False)
    assert [b.delay(k) for k in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_exponential_defaults() -> None:
    b = ExponentialBackoff()
    assert (b.initial_delay, b.max_delay, b.multiplier, b.jitter) == (0.1, 10.0, 2.0, "full")


def test_linear_schedule() -> None:
    b = LinearBackoff(initial_delay=0.5, increment=0.25, max_delay=1.2)
    assert [b.delay(k) for k in range(1, 6)] == [0.5, 0.75, 1.0, 1.2, 1.2]
    assert b.increment == 0.25


def test_fibonacci_schedule() -> None:
    """Multipliers 1, 1, 2, 3, 5, 8, ... of the unit delay, capped."""
    b = FibonacciBackoff(initial_delay=1.0, max_delay=20.0)
    assert [b.delay(k) for k in range(1, 10)] == [1, 1, 2, 3, 5, 8, 13, 20, 20]


def test_constant_schedule() -> None:
    b = ConstantBackoff(0.3)
    assert [b.delay(k) for k in (1, 2, 50)] == [0.3, 0.3, 0.3]
    assert b.max_delay == 0.3


def test_multiplier_below_one_decays() -> None:
    b = ExponentialBackoff(initial_delay=1.0, max_delay=5.0, multiplier=0.5, jitter=False)
    assert [b.delay(k) for k in range(1, 4)] == [1.0, 0.5, 0.25]
    assert b.delay(10**6) == 0.0


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_attempts_below_one_count_as_one(attempt: int) -> None:
    b = ExponentialBackoff(jitter=False)
    assert b.delay(attempt) == b.delay(1) == 0.1


# --- R27 / T2: finite and bounded for absurd inputs -------------------------------------------


@pytest.mark.parametrize("jitter", JITTERS)
@pytest.mark.parametrize("attempt", [1, 2, 1024, 1025, 10**6, 10**100, 10**400])
def test_r27_exponential_never_overflows(jitter: Any, attempt: int) -> None:
    """Base 2, max 60 s: finite and within [0, 60] even where 2**attempt overflows a float."""
    b = ExponentialBackoff(initial_delay=1.0, max_delay=60.0, multiplier=2.0, jitter=jitter)
    d = b.delay(attempt, random.Random(attempt % 97), prev=59.0)
    assert math.isfinite(d)
    assert 0.0 <= d <= 60.0
    if jitter in (False, "none") and attempt >= 8:
        assert d == 60.0


@pytest.mark.parametrize("attempt", [1, 2, 1025, 10**6])
def test_r27_multiplier_zero(attempt: int) -> None:
    """Multiplier 0: the first delay is initial_delay, every later one is 0."""
    b = ExponentialBackoff(initial_delay=0.5, max_delay=60.0, multiplier=0.0, jitter=False)
    assert b.delay(attempt) == (0.5 if attempt == 1 else 0.0)


def test_huge_multiplier_and_tiny_initial_delay() -> None:
    """Powers that overflow on their own (5e-324 * 1.0000001**7e9) are computed in log space."""
    huge = ExponentialBackoff(initial_delay=0.1, max_delay=60.0, multiplier=1e300, jitter=False)
    assert [huge.delay(k) for k in (1, 2, 10**6)] == [0.1, 60.0, 60.0]
    slow = ExponentialBackoff(5e-324, 60.0, multiplier=1.0000001, jitter=False)
    for attempt in (1, 10**6, 7_485_344_535, 10**12):
        d = slow.delay(attempt)
        assert math.isfinite(d) and 0.0 <= d <= 60.0
    assert slow.delay(10**12) == 60.0


def backoffs() -> st.SearchStrategy[Backoff]:
    delays = st.floats(0.0, 1e6, allow_nan=False)
    jitter = st.sampled_from(JITTERS)

    def exponential(a: float, b: float, m: float, j: Any) -> Backoff:
        return ExponentialBackoff(min(a, b), max(a, b), m, j)

    def linear(a: float, b: float, inc: float, j: Any) -> Backoff:
        return LinearBackoff(min(a, b), inc, max(a, b), j)

    def fibonacci(a: float, b: float, j: Any) -> Backoff:
        return FibonacciBackoff(min(a, b), max(a, b), j)

    multipliers = st.one_of(
        st.just(0.0), st.just(1.0), st.floats(0.0, 1e308, allow_nan=False, allow_infinity=False)
    )
    return st.one_of(
        st.builds(exponential, delays, delays, multipliers, jitter),
        st.builds(linear, delays, delays, st.floats(0.0, 1e300), jitter),
        st.builds(fibonacci, delays, delays, jitter),
        st.builds(ConstantBackoff, delays, jitter),
    )


@settings(max_examples=400, deadline=None)
@given(
    backoff=backoffs(),
    attempt=st.one_of(st.integers(1, 10**6), st.integers(-5, 10**400)),
    seed=st.integers(0, 2**32),
    prev=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_t2_every_delay_is_finite_and_bounded(
    backoff: Backoff, attempt: int, seed: int, prev: float | None
) -> None:
    """T2: for any valid config, attempt, seed and previous delay: finite, within [0, max]."""
    d = backoff.delay(attempt, random.Random(seed), prev)
    assert math.isfinite(d)
    assert 0.0 <= d <= backoff.max_delay


@settings(max_examples=200, deadline=None)
@given(
    backoff=backoffs(),
    seed=st.integers(0, 2**32),
)
def test_t5_seeded_delays_are_deterministic(backoff: Backoff, seed: int) -> None:
    """T5: the same seed gives the same delays (decorrelated: fed its own previous delay)."""

    def sequence() -> list[float]:
        rng = random.Random(seed)
        out: list[float] = []
        prev: float | None = None
        for attempt in range(1, 12):
            prev = backoff.delay(attempt, rng, prev)
            out.append(prev)
        return out

    assert sequence() == sequence()


def test_t5_different_seeds_give_different_jittered_delays() -> None:
    b = ExponentialBackoff(jitter="full")
    first = [b.delay(k, random.Random(1)) for k in range(1, 8)]
    second = [b.delay(k, random.Random(2)) for k in range(1, 8)]
    assert first != second


# --- jitter modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.25, 0.999999])
def test_jitter_mode_formulas(r: float) -> None:
    rng = FixedRandom(r)
    base: dict[str, Any] = {"initial_delay": 1.0, "max_delay": 100.0, "multiplier": 2.0}
    d = 4.0  # the schedule at attempt 3
    assert ExponentialBackoff(**base, jitter="none").delay(3, rng) == d
    assert ExponentialBackoff(**base, jitter="full").delay(3, rng) == pytest.approx(d * r)
    assert ExponentialBackoff(**base, jitter=True).delay(3, rng) == pytest.approx(d * r)
    equal = ExponentialBackoff(**base, jitter="equal").delay(3, rng)
    assert equal == pytest.approx(d / 2 + d / 2 * r)
    prop = ExponentialBackoff(**base, jitter="proportional").delay(3, rng)
    assert prop == pytest.approx(d * (1 + 0.1 * r))
    dec = ExponentialBackoff(**base, jitter="decorrelated").delay(3, rng, prev=5.0)
    assert dec == pytest.approx(1.0 + (15.0 - 1.0) * r)


def test_proportional_jitter_never_passes_the_cap() -> None:
    """The Go bug: 0-10% was added after the cap. Here the cap holds."""
    b = ExponentialBackoff(initial_delay=1.0, max_delay=2.0, jitter="proportional")
    assert b.delay(10, FixedRandom(0.99)) == 2.0


def test_decorrelated_jitter_grows_from_the_previous_delay_and_stays_capped() -> None:
    b = ExponentialBackoff(initial_delay=0.5, max_delay=10.0, jitter="decorrelated")
    rng = random.Random(7)
    prev: float | None = None
    seen = []
    for attempt in range(1, 200):
        d = b.delay(attempt, rng, prev)
        low = 0.5
        high = min(10.0, 3 * (0.5 if prev is None else max(prev, 0.5)))
        assert low <= d <= high
        seen.append(d)
        prev = d
    assert max(seen) > 5.0  # it does grow


@pytest.mark.parametrize("value", [-1.0, 2.0, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated", "proportional"])
def test_a_misbehaving_random_source_cannot_break_the_bounds(value: float, jitter: str) -> None:
    b = ExponentialBackoff(initial_delay=1.0, max_delay=8.0, jitter=jitter)  # type: ignore[arg-type]
    for attempt in (1, 3, 10):
        d = b.delay(attempt, FixedRandom(value), prev=4.0)
        assert math.isfinite(d) and 0.0 <= d <= 8.0


def test_r56_full_jitter_spreads_a_crowd() -> None:
    """R56: 1000 clients that failed together wait different times, all within bounds."""
    b = ExponentialBackoff(initial_delay=1.0, max_delay=30.0)
    rng = random.Random(56)
    delays = [b.delay(3, rng) for _ in range(1000)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 990
    assert min(delays) < 0.5 and max(delays) > 3.5


def test_default_source_is_the_module_generator() -> None:
    random.seed(3)
    first = ExponentialBackoff().delay(4)
    random.seed(3)
    assert ExponentialBackoff().delay(4) == first


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"initial_delay": math.nan}, ValueError, "initial_delay"),
        ({"initial_delay": -0.1}, ValueError, "initial_delay"),
        ({"initial_delay": True}, TypeError, "initial_delay"),
        ({"initial_delay": "1"}, TypeError, "initial_delay"),
        ({"max_delay": math.inf}, ValueError, "max_delay"),
        ({"max_delay": math.nan}, ValueError, "max_delay"),
        ({"initial_delay": 5.0, "max_delay": 1.0}, ValueError, "initial_delay"),
        ({"multiplier": -2.0}, ValueError, "multiplier"),
        ({"multiplier": math.inf}, ValueError, "multiplier"),
        ({"multiplier": math.nan}, ValueError, "multiplier"),
        ({"multiplier": False}, TypeError, "multiplier"),
        ({"jitter": "sometimes"}, ValueError, "jitter"),
        ({"jitter": 1}, ValueError, "jitter"),
        ({"jitter": None}, ValueError, "jitter"),
    ],
)
def test_exponential_rejects_bad_config(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        ExponentialBackoff(**kwargs)


def test_other_schedules_reject_bad_config() -> None:
    with pytest.raises(ValueError, match="increment"):
        LinearBackoff(increment=-1.0)
    with pytest.raises(ValueError, match="increment"):
        LinearBackoff(increment=math.inf)
    with pytest.raises(ValueError, match="initial_delay"):
        FibonacciBackoff(initial_delay=2.0, max_delay=1.0)
    with pytest.raises(ValueError, match="initial_delay"):
        ConstantBackoff(-1.0)
    with pytest.raises(TypeError, match="initial_delay"):
        ConstantBackoff(True)


def test_zero_delays_are_allowed() -> None:
    assert ExponentialBackoff(0.0, 0.0).delay(5) == 0.0
    assert FibonacciBackoff(0.0, 1.0).delay(5) == 0.0
    assert LinearBackoff(0.0, 0.0, 0.0).delay(10**9) == 0.0


def test_repr_and_equality() -> None:
    a = ExponentialBackoff(0.2, 5.0, 3.0, jitter="equal")
    assert repr(a) == (
        "ExponentialBackoff(initial_delay=0.2, max_delay=5.0, multiplier=3.0, jitter='equal')"
    )
    assert a == ExponentialBackoff(0.2, 5.0, 3.0, jitter="equal")
    assert a != ExponentialBackoff(0.2, 5.0, 3.0, jitter="full")
    assert hash(a) == hash(ExponentialBackoff(0.2, 5.0, 3.0, jitter="equal"))
    assert a != LinearBackoff()
    assert "LinearBackoff(" in repr(LinearBackoff())
    assert "FibonacciBackoff(" in repr(FibonacciBackoff())
    assert repr(ConstantBackoff(1.5)) == "ConstantBackoff(delay=1.5, jitter='none')"
