"""The adaptive concurrency core: a Hypothesis state machine against a naive model, and its rules."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dwcp_resilience.policies.concurrency_core import (
    AIMD,
    STUCK_WINDOWS,
    WARMUP,
    ConcurrencyCore,
    Gradient2,
)


class Model:
    """The same rules written naively: every sample kept, windows recomputed from lists."""

    def __init__(self, algorithm: Gradient2 | AIMD, initial: int, low: int, high: int) -> None:
        self.algorithm = algorithm
        self.low, self.high = low, high
        self.estimate = float(initial)
        self.limit = initial
        self.window: list[tuple[float, float, int, bool]] = []  # (time, rtt, inflight, dropped)
        self.baselines: list[float] = []  # window means since the last probe, for the warm-up
        self.baseline = 0.0
        self.windows = 0
        self.probe: list[float] | None = None
        self.epoch = 0
        self.next_probe = math.nan
        self.stuck = 0

    def update(self, rtt: float, inflight: int, dropped: bool) -> None:
        self.windows += 1
        a = self.algorithm
        e = self.estimate
        if isinstance(a, AIMD):
            if dropped or rtt > a.latency_threshold:
                e = min(e - 1, e * a.backoff_ratio)
            elif inflight * 2 >= e:
                e += a.increase
        else:
            if self.windows <= WARMUP:
                self.baselines.append(rtt)
                self.baseline = statistics.fmean(self.baselines)
            else:
                self.baseline += (rtt - self.baseline) * 2 / (a.long_window + 1)
            if self.baseline > 2 * rtt:
                self.baseline *= 0.95
            if inflight * 2 >= e:
                ratio = a.tolerance * self.baseline / rtt if rtt > 0 else 1.0
                g = min(max(ratio, 0.5), 1.0)
                e = e * (1 - a.smoothing) + (e * g + a.queue_size) * a.smoothing
        self.estimate = min(max(e, self.low), self.high)
        self.limit = int(self.estimate)


class CoreMachine(RuleBasedStateMachine):
    @initialize(
        kind=st.sampled_from(["gradient2", "aimd"]),
        low=st.integers(1, 5),
        span=st.integers(0, 30),
        start=st.integers(0, 30),
        window=st.sampled_from([0.0, 0.5, 1.0]),
        min_samples=st.integers(1, 4),
        probe=st.sampled_from([None, 3.0, 10.0]),
    )
    def setup(  # noqa: PLR0917 - Hypothesis passes the drawn values by keyword
        self,
        kind: str,
        low: int,
        span: int,
        start: int,
        window: float,
        min_samples: int,
        probe: float | None,
    ) -> None:
        high = low + span
        initial = low + start % (span + 1)
        algorithm: Gradient2 | AIMD = (
            Gradient2(probe_interval=probe, probe_samples=2, long_window=20)
            if kind == "gradient2"
            else AIMD(latency_threshold=0.5)
        )
        draws = random.Random(5)
        self.core = ConcurrencyCore(
            algorithm,
            initial_limit=initial,
            min_limit=low,
            max_limit=high,
            window=window,
            min_samples=min_samples,
            random=draws.random,
        )
        self.model = Model(algorithm, initial, low, high)
        self.model_draws = random.Random(5)
        self.win, self.min_samples = window, min_samples
        self.now = 0.0
        self.changes = 0
        self.samples = self.stale = 0

    @rule(
        dt=st.floats(0.0, 2.0),
        rtt=st.one_of(st.floats(-0.1, 3.0), st.just(math.nan), st.just(0.0)),
        inflight=st.integers(1, 60),
        dropped=st.booleans(),
        old_epoch=st.booleans(),
    )
    def sample(self, dt: float, rtt: float, inflight: int, dropped: bool, old_epoch: bool) -> None:
        self.now += dt
        m = self.model
        epoch = m.epoch - 1 if old_epoch and m.epoch > 0 else m.epoch
        before = m.limit
        self._model_sample(rtt, inflight, dropped, epoch)
        changed = self.core.sample(self.now, rtt, inflight, dropped, epoch)
        assert changed == (m.limit != before)
        self.changes += changed

    def _model_sample(self, rtt: float, inflight: int, dropped: bool, epoch: int) -> None:
        m = self.model
        if math.isnan(rtt):
            return
        rtt = max(rtt, 0.0)
        a = m.algorithm
        if m.probe is not None:
            assert isinstance(a, Gradient2) and a.probe_interval is not None
            if epoch != m.epoch:
                self.stale += 1
                return
            self.samples += 1
            m.probe.append(rtt)
            if len(m.probe) >= a.probe_samples:
                m.baseline = statistics.median(m.probe)
                m.windows = max(m.windows, WARMUP)
                m.probe = None
                m.limit = int(m.estimate)
                m.next_probe = self.now + a.probe_interval * (
                    1 + a.probe_jitter * self.model_draws.random()
                )
            return
        self.samples += 1
        m.window.append((self.now, rtt, inflight, dropped))
        if len(m.window) < self.min_samples or self.now - m.window[0][0] < self.win:
            return
        mean = statistics.fmean(r for _, r, _, _ in m.window)
        peak = max(i for _, _, i, _ in m.window)
        drop = any(d for *_, d in m.window)
        m.window = []
        m.update(mean, peak, drop)
        if isinstance(a, Gradient2) and a.probe_interval is not None:
            if math.isnan(m.next_probe):
                m.next_probe = self.now + a.probe_interval * (
                    1 + a.probe_jitter * self.model_draws.random()
                )
            m.stuck = m.stuck + 1 if m.limit == m.low else 0
            if self.now >= m.next_probe or m.stuck >= STUCK_WINDOWS:
                m.probe, m.stuck = [], 0
                m.epoch += 1
                m.limit = m.low

    @invariant()
    def matches_the_model(self) -> None:
        core, m = self.core, self.model
        assert core.limit == m.limit
        assert core.estimate == pytest.approx(m.estimate, rel=1e-9)
        assert core.baseline == pytest.approx(m.baseline, rel=1e-9, abs=1e-12)
        assert core.epoch == m.epoch == core.probes
        assert core.probing == (m.probe is not None)
        assert (core.samples, core.stale, core.changes) == (self.samples, self.stale, self.changes)

    @invariant()
    def limits_hold(self) -> None:
        core = self.core
        assert core.min_limit <= core.limit <= core.max_limit
        assert core.min_limit <= core.estimate <= core.max_limit
        if core.probing:
            assert core.limit == core.min_limit
        else:
            assert core.limit == int(core.estimate)


CoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestCoreMachine = CoreMachine.TestCase


def core(algorithm: Gradient2 | AIMD, **kwargs: float) -> ConcurrencyCore:
    options: dict[str, float] = {
        "initial_limit": 20,
        "min_limit": 1,
        "max_limit": 1000,
        "window": 0.0,
        "min_samples": 1,
    }
    options.update(kwargs)
    return ConcurrencyCore(algorithm, random=lambda: 0.0, **options)  # type: ignore[arg-type]


def test_gradient2_grows_while_latency_is_within_tolerance_and_shrinks_beyond() -> None:
    c = core(Gradient2(probe_interval=None))
    for i in range(WARMUP):
        c.sample(float(i), 0.1, 20, False, 0)  # baseline 0.1, at the limit: grows by 0.8 a window
    assert c.baseline == pytest.approx(0.1)
    assert c.estimate == pytest.approx(20 + 0.8 * WARMUP)
    before = c.estimate
    c.sample(11.0, 0.3, 28, False, 0)  # 3x the baseline: gradient about 1.5 / 3
    gradient = 1.5 * c.baseline / 0.3
    assert 0.5 < gradient < 0.51  # the baseline moved 2/601 of the way to 0.3
    assert c.estimate == pytest.approx(before * 0.8 + (before * gradient + 4) * 0.2)


def test_gradient2_keeps_the_limit_while_the_caller_is_the_bottleneck() -> None:
    c = core(Gradient2(probe_interval=None))
    c.sample(0.0, 0.1, 9, False, 0)  # 9 in flight < 20 / 2: app-limited
    assert c.estimate == 20.0 and c.updates == 1


def test_gradient2_baseline_decays_when_latency_falls_under_half_of_it() -> None:
    c = core(Gradient2(probe_interval=None))
    c.sample(0.0, 1.0, 1, False, 0)
    c.sample(1.0, 0.1, 1, False, 0)  # warm-up mean 0.55 > 2 * 0.1: decays by 5 %
    assert c.baseline == pytest.approx(0.55 * 0.95)


def test_a_probe_pins_the_limit_ignores_older_calls_and_resets_the_baseline() -> None:
    c = core(Gradient2(probe_interval=5.0, probe_samples=3, probe_jitter=0.0), min_limit=2)
    c.sample(0.0, 0.1, 20, False, 0)  # the first window schedules the probe at t=5
    assert not c.probing
    for t in range(1, 5):
        c.sample(float(t), 0.3, 30, False, 0)
    assert not c.probing
    assert c.sample(5.0, 0.3, 30, False, 0)  # due: pinned to min_limit
    assert (c.probing, c.limit, c.epoch, c.reason) == (True, 2, 1, "probe")
    estimate = c.estimate
    assert not c.sample(5.1, 5.0, 30, False, 0)  # admitted before the pin: ignored
    assert c.stale == 1
    for rtt in (0.2, 0.1):
        assert not c.sample(5.2, rtt, 2, False, 1)
    assert c.sample(5.3, 0.15, 2, False, 1)  # the third: done
    assert (c.probing, c.baseline, c.estimate, c.reason) == (False, 0.15, estimate, "probe_done")
    assert c.limit == int(estimate)


def test_five_windows_at_the_floor_start_a_probe_at_once() -> None:
    c = core(Gradient2(probe_interval=1e6, queue_size=0.0), initial_limit=1)
    for t in range(STUCK_WINDOWS):
        assert not c.probing
        c.sample(float(t), 0.1 * (t + 1), 1, False, 0)  # no queue allowance: stays at 1
    assert c.probing and c.probes == 1


def test_aimd_backs_off_on_a_drop_or_a_slow_window_and_grows_otherwise() -> None:
    c = core(AIMD(latency_threshold=1.0, backoff_ratio=0.5, increase=2.0), initial_limit=10)
    c.sample(0.0, 0.1, 10, True, 0)
    assert c.estimate == 5.0
    c.sample(1.0, 2.0, 5, False, 0)
    assert c.estimate == 2.5
    c.sample(2.0, 0.1, 2, False, 0)
    assert c.estimate == 4.5
    c.sample(3.0, 0.1, 1, False, 0)  # 1 * 2 < 4.5: the caller is the bottleneck
    assert c.estimate == 4.5
    for _ in range(10):
        c.sample(4.0, 0.1, 1, True, 0)
    assert c.limit == 1  # never under min_limit


def test_windows_need_both_their_time_and_their_samples() -> None:
    c = core(AIMD(latency_threshold=1.0), window=1.0, min_samples=3)
    c.sample(0.0, 0.1, 20, False, 0)
    c.sample(0.5, 0.1, 20, False, 0)
    c.sample(0.9, 0.1, 20, False, 0)  # 3 samples, but 0.9 s
    assert c.updates == 0
    c.sample(1.0, 0.1, 20, False, 0)
    assert c.updates == 1 and c.rtt == pytest.approx(0.1)


def test_odd_latencies() -> None:
    c = core(AIMD(latency_threshold=1.0))
    assert not c.sample(0.0, math.nan, 20, False, 0)
    assert c.samples == 0
    c.sample(0.0, -5.0, 20, False, 0)  # a clock that stepped back: 0
    assert c.rtt == 0.0 and c.samples == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial_limit": 0}, ValueError),
        ({"min_limit": 0}, ValueError),
        ({"max_limit": 0}, ValueError),
        ({"initial_limit": 2000}, ValueError),
        ({"window": -1.0}, ValueError),
        ({"min_samples": 0}, ValueError),
        ({"min_limit": 1.0}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, float], error: type[Exception]) -> None:
    with pytest.raises(error):
        core(AIMD(latency_threshold=1.0), **kwargs)


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(TypeError, match="algorithm"):
        core("vegas")  # type: ignore[arg-type]
