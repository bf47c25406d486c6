"""``python -m bench.versus REF``: this tree's bench ratios against another commit's, interleaved.

Two versions of the package cannot share one process, so the interleaving is by run: a worktree of
``REF`` is checked out in a temporary directory, then ``python -m bench`` runs alternately in that
worktree and in this tree (``--runs`` times each, the same ``--only``, ``--loops``, ``--rounds`` and
``--seconds``), so that drift in the machine's speed hits both alike. Each run reports every row's
ratio to the bare ``await op()`` of that same run; this prints, for every row of ours that both
versions have, the median ratio over the runs of each version, the spread (min-max), and the
change. A change inside both spreads is noise.

Example: ``python -m bench.versus eba41f1 --only breaker_closed,ratelimit --runs 5``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\| \*\*(?P<name>.+?)\*\* \|(?P<cells>.*)\|$")


def parse(markdown: str, loops: list[str]) -> dict[tuple[str, str, str], float]:
    """``{(case title, row, loop): ratio}`` of our (bold) rows in one bench run's output."""
    ratios: dict[tuple[str, str, str], float] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            continue
        match = _ROW.match(line)
        if match is None:
            continue
        cells = [cell.strip() for cell in match["cells"].split("|")]
        # Per loop: ns/op, min-max, ratio.
        for index, loop in enumerate(loops):
            position = 3 * index + 2
            if position < len(cells) and cells[position].endswith("x"):
                ratios[(title, match["name"], loop)] = float(cells[position][:-1].replace(",", ""))
    return ratios


def run_bench(tree: Path, args: argparse.Namespace) -> str:
    command = [sys.executable, "-m", "bench", "--loops", args.loops, "--rounds", str(args.rounds)]
    command += ["--seconds", str(args.seconds)]
    if args.only:
        command += ["--only", args.only]
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench failed in {tree}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check_import(tree: Path) -> None:
    probe = "import dwcp_resilience, sys; print(dwcp_resilience.__file__)"
    env = dict(os.environ, PYTHONPATH=str(tree))
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: the package imports from {found}, not from that tree")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__)
    parser.add_argument("ref", help="the commit to compare against")
    parser.add_argument("--runs", type=int, default=5, help="runs of each version")
    parser.add_argument("--only", default="", help="case keys, as for python -m bench")
    parser.add_argument("--loops", default="asyncio")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.1)
    args = parser.parse_args(argv)
    loops = [loop for loop in args.loops.split(",") if loop]
    with tempfile.TemporaryDirectory(prefix="bench-versus-") as scratch:
        old_tree = Path(scratch) / "ref"
        subprocess.run(
            ["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(old_tree), args.ref],
            check=True,
        )
        try:
            check_import(old_tree)
            check_import(HERE)
            runs: dict[str, list[dict[tuple[str, str, str], float]]] = {"ref": [], "this": []}
            for index in range(args.runs):
                # Alternate which goes first, so neither always runs on a warmer machine.
                order = [("ref", old_tree), ("this", HERE)]
                for label, tree in order if index % 2 == 0 else order[::-1]:
                    runs[label].append(parse(run_bench(tree, args), loops))
                print(f"run {index + 1}/{args.runs} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(HERE), "worktree", "remove", "--force", str(old_tree)], check=True
            )
    common = sorted(set.intersection(*(set(r) for r in runs["ref"] + runs["this"])))
    print(
        f"Python {sys.version.split()[0]}; {args.runs} alternating runs of each version; "
        f"ratio to a bare await op() (median over runs, min-max)\n"
    )
    print(f"| case | row | loop | {args.ref} | this tree | change |")
    print("|---|---|---|---:|---:|---:|")
    for key in common:
        before = [r[key] for r in runs["ref"]]
        after = [r[key] for r in runs["this"]]
        old, new = statistics.median(before), statistics.median(after)
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {old:.2f}x ({min(before):.2f}-{max(before):.2f}) "
            f"| {new:.2f}x ({min(after):.2f}-{max(after):.2f}) | {100 * (new / old - 1):+.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
