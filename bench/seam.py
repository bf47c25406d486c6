"""``python -m bench.seam``: what each asyncio access of ``dwcp_resilience/core/_runtime.py`` costs.

The seam takes a private path only where it measures faster on the running interpreter. This prints
the figures that choice rests on, in ns per access, inside a running asyncio loop (and, for the loop
lookup, outside one: the trio case), then the paths the seam chose here. Run it on each supported
interpreter; the timings use ``timeit`` (best of 7 repeats), so nothing else should load the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import threading
import time
import timeit
from asyncio import events, tasks
from collections.abc import Callable
from typing import Any

from dwcp_resilience.core import _runtime


def _best(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=7)) / number * 1e9


def _rows(number: int) -> list[tuple[str, float]]:
    async def inside() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        get_ident = threading.get_ident
        table: Any = getattr(tasks, "_current_tasks", None)
        loop_any: Any = loop
        rows = [
            ("asyncio.events._get_running_loop()", _best(events._get_running_loop, number)),
            ("asyncio.get_running_loop()", _best(asyncio.get_running_loop, number)),
            (
                "cached loop._thread_id == get_ident()",
                _best(lambda: loop_any._thread_id == get_ident(), number),
            ),
            ("asyncio.current_task(loop)", _best(lambda: asyncio.current_task(loop), number)),
        ]
        if isinstance(table, dict):
            rows.append(
                ("asyncio.tasks._current_tasks.get(loop)", _best(lambda: table.get(loop), number))
            )
        rows += [
            ("loop.time() (asyncio's own loop)", _best(loop.time, number)),
            ("time.monotonic()", _best(time.monotonic, number)),
            ("_runtime.running()", _best(_runtime.running, number)),
            ("_runtime.current_task(loop)", _best(lambda: _runtime.current_task(loop), number)),
            ("empty lambda (the timing's own cost)", _best(lambda: None, number)),
        ]
        return rows

    def public_without_loop() -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return

    rows = asyncio.run(inside())
    rows += [
        ("(no loop) get_running_loop() + except", _best(public_without_loop, number // 4)),
        ("(no loop) _get_running_loop()", _best(events._get_running_loop, number)),
        ("(no loop) _runtime.running()", _best(_runtime.running, number)),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seam", description=__doc__)
    parser.add_argument("--number", type=int, default=500_000, help="accesses per timing")
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}: ns per access, best of 7\n")
    print("| access | ns |\n|---|---:|")
    for name, ns in _rows(args.number):
        print(f"| {name} | {ns:.1f} |")
    print("\nPaths chosen here:", ", ".join(f"{k}: {v}" for k, v in _runtime.paths().items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
