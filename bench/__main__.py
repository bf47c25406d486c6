"""``python -m bench``: run the benchmark cases and print markdown tables.

Options: ``--loops asyncio,uvloop``, ``--rounds 7``, ``--seconds 0.15`` (time per timing),
``--only key1,key2`` (case keys), ``--out FILE`` (also write the markdown there).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import platform
import sys
from collections.abc import Callable
from typing import Any

from . import cases as cases_package
from .harness import Case, Row, format_case, run_case


def discover() -> list[Case]:
    """Every ``CASES`` list of the modules in ``bench/cases`` (sorted by module name)."""
    found: list[Case] = []
    for info in sorted(pkgutil.iter_modules(cases_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{cases_package.__name__}.{info.name}")
        found.extend(getattr(module, "CASES", []))
    return found


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise SystemExit(f"unknown loop {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.15)
    parser.add_argument("--only", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    selected = discover()
    if args.only:
        keys = set(args.only.split(","))
        selected = [case for case in selected if case.key in keys]
    loops = [name for name in args.loops.split(",") if name]
    out: list[str] = [
        f"Python {platform.python_version()} on {platform.machine()}, {args.rounds} interleaved "
        f"rounds, median ns per call, ratio to a bare `await op()` in the same run.\n"
    ]
    print(out[0], flush=True)
    for case in selected:
        results: dict[str, list[Row]] = {}
        for loop in loops:
            with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
                coro: Any = run_case(case, rounds=args.rounds, target_seconds=args.seconds)
                results[loop] = runner.run(coro)
        table = format_case(case, results)
        out.append(table)
        print(table, flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
