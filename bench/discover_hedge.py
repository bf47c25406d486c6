"""``python -m bench.discover_hedge``: what hedging buys the DWCP client's peer discovery.

A real ``DWCPPeer`` on loopback behind a :class:`~dwcp_resilience.dwcp.proxy.ChaosProxy` that
delays a share of the chunks (``Latency(delay, probability=tail)``: a latency tail, the case a
hedge is for). Two clients discover through the same proxy one call after another, in alternating
blocks so that drift hits both alike: one with the default ``discover_hedge`` (the p95 of the last
200 discoveries, 0.25 s until 20 are known), one with ``discover_hedge=None``. Per client: the
latency percentiles of the discoveries after a warm-up (``time.perf_counter``), the hedges started
(each one an extra request to the peer), won and refused by the hedge's budget, and the hedge delay
the percentile gave at the end.

Example: ``python -m bench.discover_hedge --calls 600 --tail 0.02 --delay 0.2 --loops asyncio,uvloop``.
Nothing else should load the machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import anyio

from dwcp_resilience import Hedge
from dwcp_resilience.dwcp import DWCPPeer, DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.client import DISCOVER
from dwcp_resilience.dwcp.faults import Latency
from dwcp_resilience.dwcp.proxy import ChaosProxy

WARM_UP = 40  # discoveries per client before timing (the percentile needs 20 samples)
BLOCK = 20


def _quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def run(calls: int, tail: float, delay: float, seed: int) -> list[dict[str, Any]]:
    async with (
        DWCPPeer("peer-a", seeds=("127.0.0.1:7001", "127.0.0.1:7002")) as peer,
        ChaosProxy("127.0.0.1", peer.port, seed=seed) as proxy,
    ):
        proxy.set_faults(Latency(delay, probability=tail))
        address = f"127.0.0.1:{proxy.port}"
        hedged_config = DWCPResilienceConfig(node_id="c1", peers=(address,))
        plain_config = DWCPResilienceConfig(node_id="c2", peers=(address,), discover_hedge=None)
        async with (
            DWCPResilientClient(hedged_config) as hedged,
            DWCPResilientClient(plain_config) as plain,
        ):
            clients = {"hedged (default p95)": hedged, "not hedged": plain}
            times: dict[str, list[float]] = {name: [] for name in clients}
            for client in clients.values():
                for _ in range(WARM_UP):
                    await client.discover_peers()
            for _ in range(0, calls, BLOCK):
                for name, client in clients.items():
                    for _ in range(BLOCK):
                        start = time.perf_counter()  # uvloop's loop clock counts whole ms
                        await client.discover_peers()
                        times[name].append((time.perf_counter() - start) * 1000)
            return [_row(name, client, sorted(times[name])) for name, client in clients.items()]


def _row(name: str, client: DWCPResilientClient, ms: list[float]) -> dict[str, Any]:
    started = won = refused = 0
    delay = math.nan
    hedge = client.manager.components(DISCOVER).get("hedge")
    if isinstance(hedge, Hedge):
        stats = hedge.statistics()
        started, won, refused = stats.hedges_started, stats.hedge_wins, stats.budget_refusals
        delay = stats.delay * 1000
    return {
        "client": name,
        "p50": statistics.median(ms),
        "p90": _quantile(ms, 0.90),
        "p99": _quantile(ms, 0.99),
        "max": ms[-1],
        "mean": statistics.fmean(ms),
        "hedges started": started,
        "won": won,
        "refused": refused,
        "delay": delay,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discover_hedge", description=__doc__)
    parser.add_argument("--calls", type=int, default=600, help="timed discoveries per client")
    parser.add_argument("--tail", type=float, default=0.02, help="share of chunks delayed")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds a delayed chunk waits")
    parser.add_argument("--loops", default="asyncio,uvloop,trio")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"{args.calls} timed discoveries per client (after {WARM_UP}), blocks of {BLOCK} "
        f"alternating; proxy delays {args.tail:.0%} of chunks by {args.delay * 1000:.0f} ms\n"
    )
    print(
        "| loop | client | p50 ms | p90 ms | p99 ms | max ms | mean ms | hedges started | won "
        "| refused by the budget | hedge delay at the end (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for loop in [name for name in args.loops.split(",") if name]:
        backend, options = ("asyncio", {"use_uvloop": True}) if loop == "uvloop" else (loop, {})
        rows = anyio.run(
            run, args.calls, args.tail, args.delay, args.seed, backend=backend,
            backend_options=options,
        )  # fmt: skip
        for row in rows:
            print(
                f"| {loop} | {row['client']} | {row['p50']:.2f} | {row['p90']:.2f} | "
                f"{row['p99']:.1f} | {row['max']:.1f} | {row['mean']:.2f} | "
                f"{row['hedges started']} | {row['won']} | {row['refused']} | {row['delay']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
