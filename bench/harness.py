"""The bench harness.

Every case times a set of contenders that wrap the same async no-op ``op``. Rounds are interleaved
(each round times every contender once, in a rotated order) so that drift in the machine's speed hits
all rows alike; each row reports the median ns per call over the rounds, its min-max, and its ratio to
the bare ``await op()`` row of the same run and loop. Before timing, each contender's ``verify`` runs:
a row that does not do its job is an error, not a number.

Timed loops give the event loop one turn every ``YIELD_EVERY`` calls (the baseline too), so timer
handles and background work of the contenders get to run, as they would in an application.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Call = Callable[[], Awaitable[Any]]
Op = Callable[[], Awaitable[Any]]

YIELD_EVERY = 1000


async def noop() -> None:
    """The protected operation: an async no-op."""


async def yielding_op() -> None:
    """An operation that yields to the loop once."""
    await asyncio.sleep(0)


@dataclass
class Contender:
    """One row: ``make(op)`` returns the zero-argument call to time (built inside the loop)."""

    name: str
    make: Callable[[Op], Awaitable[Call]]
    verify: Callable[[], Awaitable[None]] | None = None
    ours: bool = False


@dataclass
class Case:
    """One table: contenders for one primitive and path."""

    key: str
    title: str
    contenders: list[Contender]
    note: str = ""
    op: Op = noop
    # Throughput cases time a whole workload instead of serial calls: measure(call) -> seconds/op.
    measure: Callable[[Call], Awaitable[float]] | None = None
    include_baseline: bool = True
    # A unit such as "msg/s": each loop also gets a column of operations per second (1 / median).
    throughput: str = ""


async def _bare(op: Op) -> Call:
    return op


def baseline() -> Contender:
    return Contender("baseline: bare await op()", _bare)


async def time_serial(call: Call, n: int) -> float:
    """Seconds per call over ``n`` sequential awaits of ``call``."""
    sleep = asyncio.sleep
    outer = max(1, n // YIELD_EVERY)
    inner = range(min(n, YIELD_EVERY))
    start = time.perf_counter()
    for _ in range(outer):
        for _ in inner:
            await call()
        await sleep(0)
    return (time.perf_counter() - start) / (outer * len(inner))


@dataclass
class Row:
    name: str
    samples: list[float] = field(default_factory=list)  # seconds per op
    ours: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def run_case(case: Case, *, rounds: int, target_seconds: float) -> list[Row]:
    """Verify, calibrate and time every contender of ``case`` on the running loop."""
    contenders = ([baseline()] if case.include_baseline else []) + case.contenders
    for contender in contenders:
        if contender.verify is not None:
            await contender.verify()
    calls = [await c.make(case.op) for c in contenders]
    rows = [Row(c.name, ours=c.ours) for c in contenders]
    if case.measure is not None:
        measure = case.measure
        for r in range(rounds):
            order = list(range(len(calls)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                gc.collect()
                rows[i].samples.append(await measure(calls[i]))
        return rows
    # Calibrate: n such that one timing of the slowest contender takes about target_seconds.
    sizes = []
    for call in calls:
        per_call = await time_serial(call, 2000)
        sizes.append(max(YIELD_EVERY, int(target_seconds / per_call) // YIELD_EVERY * YIELD_EVERY))
    for r in range(rounds):
        order = list(range(len(calls)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            gc.collect()
            rows[i].samples.append(await time_serial(calls[i], sizes[i]))
    return rows


def format_case(case: Case, results: dict[str, list[Row]]) -> str:
    """A markdown table: one column group per loop, ratios to that loop's baseline."""
    loops = list(results)
    header = "| contender |"
    rule = "|---|"
    for loop in loops:
        header += f" {loop} ns/op | {loop} min-max | {loop} ratio |"
        rule += "---:|---:|---:|"
        if case.throughput:
            header += f" {loop} {case.throughput} |"
            rule += "---:|"
    lines = [f"### {case.title}", ""]
    if case.note:
        lines += [case.note, ""]
    lines += [header, rule]
    names = [row.name for row in results[loops[0]]]
    for index, name in enumerate(names):
        ours = results[loops[0]][index].ours
        label = f"**{name}**" if ours else name
        line = f"| {label} |"
        for loop in loops:
            rows = results[loop]
            base = rows[0].median
            row = rows[index]
            lo, hi = min(row.samples) * 1e9, max(row.samples) * 1e9
            line += f" {row.median * 1e9:,.0f} | {lo:,.0f}-{hi:,.0f} | {row.median / base:.2f}x |"
            if case.throughput:
                line += f" {1 / row.median:,.0f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
