"""LatencyBudget: the percentile scale, p50/p95/p99, O(1) recording, the Go bugs, a model check."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.slo import latency_budget as module
from dwcp_resilience.slo.latency_budget import (
    LatencyBudget,
    LatencyBudgetEvent,
    LatencyBudgetExhausted,
    LatencyBudgetRecovered,
    check_percentile,
)
from dwcp_resilience.testing import FakeClock, RecordingListener

MS = 0.001


def one_to_thousand_ms(b: LatencyBudget) -> None:
    for i in range(1, 1001):
        b.record(i * MS)


# --- the Go bugs ----------------------------------------------------------------------------------


def test_go_bug_percentile_0_95_is_rejected_as_ambiguous() -> None:
    """The Go example passed 0.95 (meaning p95) to a 0-100 scale and watched the 1st percentile."""
    with pytest.raises(ValueError, match=r"ambiguous.*0-100 scale.*Pass 95 for p95"):
        LatencyBudget("b", target=0.1, percentile=0.95)
    with pytest.raises(ValueError, match="ambiguous"):
        LatencyBudget("b", target=0.1, percentile=1.0)


def test_go_bug_p95_over_1_to_1000_ms_is_951_ms() -> None:
    """Go's index formula ``sorted[int(n * p / 100)]``: p95 over 1..1000 ms is 951 ms (Go's
    example got 10 ms from its 0.95)."""
    b = LatencyBudget("b", target=1.0)
    one_to_thousand_ms(b)
    assert b.percentile_latency() == pytest.approx(951 * MS)


def test_go_bug_p50_p95_and_p99_are_all_available() -> None:
    """Go computed one percentile only."""
    b = LatencyBudget("b", target=1.0)
    one_to_thousand_ms(b)
    assert (b.p50, b.p95, b.p99) == pytest.approx((501 * MS, 951 * MS, 991 * MS))
    stats = b.statistics()
    assert (stats.p50, stats.p95, stats.p99) == pytest.approx((501 * MS, 951 * MS, 991 * MS))


def test_go_bug_recording_never_sorts_and_reads_sort_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Go bubble-sorted the window twice per read (1.39 ms at 1000 samples); recording here never
    sorts, and p50 + p95 + p99 + statistics() after a batch of samples sort once."""
    calls: list[int] = []

    def counting_sorted(items: Iterable[float]) -> list[float]:
        result = sorted(items)
        calls.append(len(result))
        return result

    monkeypatch.setattr(module, "sorted", counting_sorted, raising=False)
    b = LatencyBudget("b", target=0.5)
    for i in range(5000):
        b.record((i % 1000) * MS)  # crosses exhausted/recovered without sorting
    assert calls == []
    _ = (b.p50, b.p95, b.p99, b.statistics(), b.percentile_latency(90.0))
    assert calls == [1000]
    b.record(0.0)
    _ = b.p99
    assert calls == [1000, 1000]


def test_go_bug_compliance_rate_is_windowed() -> None:
    """Go's compliance rate was lifetime only: a recovered service looked non-compliant forever.
    The window's rate is ``compliance_rate``; the lifetime one is kept beside it."""
    b = LatencyBudget("b", target=0.1, max_samples=100)
    for _ in range(100):
        b.record(0.2)
    assert b.compliance_rate == 0.0
    for _ in range(100):
        b.record(0.05)
    assert b.compliance_rate == 1.0
    assert b.lifetime_compliance_rate == pytest.approx(0.5)
    assert b.violations == 100
    assert b.statistics().window_violations == 0


def test_go_bug_exhausted_listeners_fire_inline() -> None:
    """Go wrote none of its latency metrics and had no transition signal; here listeners fire on
    the very sample that flips the percentile across the target."""
    clock = FakeClock(5.0)
    events: RecordingListener[LatencyBudgetEvent] = RecordingListener()
    b = LatencyBudget(
        "b", target=0.1, percentile=50.0, max_samples=4, clock=clock, listeners=[events]
    )
    b.record(0.2)  # [0.2]: p50 = 0.2 > 0.1
    assert b.exhausted
    assert isinstance(events.events[0], LatencyBudgetExhausted)
    assert events.events[0].percentile_latency == 0.2
    assert events.events[0].time == 5.0
    b.record(0.05)  # [0.05, 0.2]: index int(2 * 0.5) = 1 -> 0.2
    assert b.exhausted
    b.record(0.05)  # [0.05, 0.05, 0.2]: index 1 -> 0.05
    assert not b.exhausted
    assert [type(e) for e in events.events] == [LatencyBudgetExhausted, LatencyBudgetRecovered]
    assert b.statistics().exhausted_count == 1


# --- Go semantics kept ----------------------------------------------------------------------------


def test_go_tests_fast_samples_ok_slow_samples_exhausted() -> None:
    b = LatencyBudget("b", target=0.1)
    for _ in range(50):
        b.record(0.05)
    assert not b.exhausted
    for _ in range(100):
        b.record(0.2)
    assert b.exhausted


def test_a_sample_at_the_target_is_not_a_violation() -> None:
    b = LatencyBudget("b", target=0.1, percentile=99.0)
    for _ in range(10):
        b.record(0.1)
    assert b.violations == 0
    assert not b.exhausted
    assert b.compliance_rate == 1.0


def test_empty_reads() -> None:
    b = LatencyBudget("b", target=0.1)
    assert (b.p50, b.p95, b.p99) == (0.0, 0.0, 0.0)
    assert b.compliance_rate == 1.0
    assert b.lifetime_compliance_rate == 1.0
    assert not b.exhausted
    assert b.samples == 0
    assert "0 samples" in repr(b)


def test_reset() -> None:
    b = LatencyBudget("b", target=0.1)
    b.record(1.0)
    b.reset()
    assert (b.samples, b.total, b.violations, b.exhausted) == (0, 0, 0, False)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": 0.0}, ValueError, "target"),
        ({"target": -1.0}, ValueError, "target"),
        ({"target": math.nan}, ValueError, "target"),
        ({"target": "1"}, TypeError, "target"),
        ({"target": 0.1, "percentile": 0}, ValueError, "percentile"),
        ({"target": 0.1, "percentile": 100.5}, ValueError, "percentile"),
        ({"target": 0.1, "percentile": True}, TypeError, "percentile"),
        ({"target": 0.1, "percentile": 0.5}, ValueError, "ambiguous"),
        ({"target": 0.1, "max_samples": 0}, ValueError, "max_samples"),
        ({"target": 0.1, "max_samples": 10.0}, TypeError, "max_samples"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LatencyBudget("b", **kwargs)


@pytest.mark.parametrize("bad", [-0.001, math.nan])
def test_bad_sample(bad: float) -> None:
    b = LatencyBudget("b", target=0.1)
    with pytest.raises(ValueError, match="latency"):
        b.record(bad)
    assert b.total == 0


def test_read_percentile_is_validated_too() -> None:
    b = LatencyBudget("b", target=0.1)
    with pytest.raises(ValueError, match="ambiguous"):
        b.percentile_latency(0.99)
    assert check_percentile(99.9) == 99.9


# --- model check ----------------------------------------------------------------------------------


def _naive_percentile(window: list[float], p: float) -> float:
    if not window:
        return 0.0
    ordered = sorted(window)
    return ordered[min(int(len(ordered) * p / 100), len(ordered) - 1)]


@settings(max_examples=200, deadline=None)
@given(
    max_samples=st.integers(1, 12),
    percentile=st.sampled_from([50.0, 90.0, 95.0, 99.0, 100.0, 1.5]),
    samples=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.1000001, 0.2, 3.0]), max_size=60),
)
def test_matches_a_naive_sorted_window(
    max_samples: int, percentile: float, samples: list[float]
) -> None:
    """Exhausted (kept in O(1)), percentiles, violations and compliance equal a recount."""
    target = 0.1
    events: RecordingListener[LatencyBudgetEvent] = RecordingListener()
    b = LatencyBudget("m", target=target, percentile=percentile, max_samples=max_samples,
                      clock=FakeClock(), listeners=[events])  # fmt: skip
    seen: list[float] = []
    flips = 0
    previous = False
    for sample in samples:
        b.record(sample)
        seen.append(sample)
        window = seen[-max_samples:]
        expected = _naive_percentile(window, percentile) > target
        flips += expected != previous
        previous = expected
        assert b.exhausted == expected
        over = sum(x > target for x in window)
        assert b.compliance_rate == pytest.approx(1 - over / len(window))
    window = seen[-max_samples:]
    for p in (50.0, 95.0, 99.0, percentile):
        assert b.percentile_latency(p) == _naive_percentile(window, p)
    assert b.violations == sum(x > target for x in seen)
    assert len(events.events) == flips
