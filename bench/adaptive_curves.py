"""``python -m bench.adaptive_curves --out docs/figures/adaptive_curves.png``: the adaptive
concurrency limit against a backend with a concurrency knee, in virtual time.

The backend is :class:`dwcp_resilience.testing.KneeBackend` (knee 20 calls, 0.2 s each; above the
knee a call takes ``0.2 * n / 20`` s with ``n`` in flight, 5 % jitter). ``clients`` tasks call it
back to back through the policy (callers beyond the limit wait in its queue); the run is virtual
time on asyncio (looptime), so minutes take seconds.

Two panels:

- the limit over time at 200 clients (10x the knee), for ``Gradient2()`` (the default; its dips to
  ``min_limit`` are the baseline probes) and ``AIMD(latency_threshold=0.3)``;
- the backend's p99 latency against the offered concurrency (clients), over the second half of
  each run, for both and for a fixed ``Bulkhead(max_concurrent=1000)`` (a limit set too high).

matplotlib comes from the ``demo`` extra (in ``requirements/lock.txt``); ``--csv`` prints the
numbers instead of drawing them.
"""

from __future__ import annotations

import argparse
import functools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import looptime

from dwcp_resilience import AIMD, AdaptiveConcurrencyLimiter, Bulkhead, Gradient2
from dwcp_resilience.testing import KneeBackend

KNEE = 20
BASE = 0.2
LOADS = (5, 10, 20, 40, 80, 160, 320)

Make = Callable[[int], Any]


def gradient2(clients: int) -> AdaptiveConcurrencyLimiter:
    return AdaptiveConcurrencyLimiter(
        "gradient2", algorithm=Gradient2(), max_queue=clients, rng=random.Random(1)
    )


def aimd(clients: int) -> AdaptiveConcurrencyLimiter:
    algorithm = AIMD(latency_threshold=1.5 * BASE)
    return AdaptiveConcurrencyLimiter("aimd", algorithm=algorithm, max_queue=clients)


def fixed(clients: int) -> Bulkhead:
    return Bulkhead("fixed", max_concurrent=1000, max_queue=clients)


POLICIES: dict[str, Make] = {
    "Gradient2 (default)": gradient2,
    "AIMD (latency_threshold=0.3 s)": aimd,
    "fixed Bulkhead(1000)": fixed,
}


def scenario(make: Make, clients: int, seconds: float) -> tuple[float, list[tuple[float, int]]]:
    """Run ``clients`` callers for ``seconds`` of virtual time: (p99 over the second half, the
    limit sampled every 0.25 s)."""
    policy = make(clients)
    service = KneeBackend(KNEE, BASE, jitter=0.05, rng=random.Random(7))
    limits: list[tuple[float, int]] = []

    async def client() -> None:
        while anyio.current_time() < seconds:
            await policy.call(service)

    async def sample() -> None:
        while anyio.current_time() < seconds:
            if isinstance(policy, AdaptiveConcurrencyLimiter):
                limits.append((anyio.current_time(), policy.limit))
            await anyio.sleep(0.25)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
            tg.start_soon(sample)

    loop_factory = functools.partial(looptime.new_event_loop, noop_cycles=1)
    anyio.run(main, backend="asyncio", backend_options={"loop_factory": loop_factory})
    return service.p99(since=seconds / 2), limits


def measure(seconds: float) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, int]]]]:
    p99s: dict[str, list[float]] = {}
    timelines: dict[str, list[tuple[float, int]]] = {}
    for name, make in POLICIES.items():
        p99s[name] = [scenario(make, clients, seconds)[0] for clients in LOADS]
        if make is not fixed:
            timelines[name] = scenario(make, 200, 3 * seconds)[1]
    return p99s, timelines


def draw(
    p99s: dict[str, list[float]], timelines: dict[str, list[tuple[float, int]]], out: Path
) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, points in timelines.items():
        left.step([t for t, _ in points], [limit for _, limit in points], where="post", label=name)
    left.axhline(KNEE, color="grey", linestyle="--", label=f"knee ({KNEE})")
    left.set(
        title="Concurrency limit over time, 200 clients (10x the knee)",
        xlabel="virtual time (s)",
        ylabel="limit",
        ylim=(0, 3 * KNEE),
    )
    left.legend(loc="lower right")
    for name, values in p99s.items():
        right.plot(LOADS, [v * 1000 for v in values], marker="o", label=name)
    right.axvline(KNEE, color="grey", linestyle="--", label=f"knee ({KNEE})")
    right.set(
        title="Backend p99 latency vs offered concurrency",
        xlabel="offered concurrency (clients)",
        ylabel="p99 latency (ms)",
        xscale="log",
        yscale="log",
    )
    right.set_xticks(LOADS, [str(n) for n in LOADS])
    right.legend(loc="upper left")
    fig.suptitle(
        f"KneeBackend: {KNEE} calls at {BASE * 1000:.0f} ms; above, {BASE * 1000:.0f} ms x n/{KNEE}"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adaptive_curves", description=__doc__)
    parser.add_argument("--out", default="docs/figures/adaptive_curves.png")
    parser.add_argument("--seconds", type=float, default=60.0, help="virtual seconds per point")
    parser.add_argument("--csv", action="store_true", help="print the numbers, draw nothing")
    args = parser.parse_args(argv)
    p99s, timelines = measure(args.seconds)
    print("clients," + ",".join(POLICIES))
    for index, clients in enumerate(LOADS):
        print(f"{clients}," + ",".join(f"{p99s[name][index] * 1000:.1f}" for name in POLICIES))
    for name, points in timelines.items():
        settled = [limit for t, limit in points if t >= args.seconds]
        print(f"{name}: limit {min(settled)}-{max(settled)} after t={args.seconds:g} s")
    if not args.csv:
        draw(p99s, timelines, Path(args.out))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
