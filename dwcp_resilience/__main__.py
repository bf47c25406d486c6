"""``python -m dwcp_resilience`` (also the ``dwcp-resilience`` console script).

Commands:

- ``demo``: the DWCP demo (peers on loopback, a chaos proxy, resilient clients, live state,
  ``/metrics``, a summary and a timeline picture); ``demo --basic`` runs the small breaker / retry /
  timeout demo instead;
- ``peer``: serve one DWCP peer on 127.0.0.1 until interrupted;
- ``ops alerts|tests|dashboard``: print the shipped alert rules, their promtool tests, or the
  Grafana dashboard (``--namespace`` rewrites the metric prefix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import anyio

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwcp-resilience", description="dwcp_resilience: demo, DWCP peer, operations files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the DWCP demo")
    demo.add_argument("--basic", action="store_true", help="the small breaker/retry/timeout demo")
    demo.add_argument("--messages", type=int, default=1500, help="messages alice sends to bob")
    demo.add_argument("--metrics-port", type=int, default=0, help="/metrics port (0: any free)")
    demo.add_argument("--picture", default="dwcp-demo-timeline.png", help="PNG path ('' for none)")
    demo.add_argument("--plain", action="store_true", help="plain status lines, no live table")
    demo.add_argument("--duration", type=float, default=8.0, help="seconds (with --basic)")
    peer = commands.add_parser("peer", help="serve a DWCP peer on 127.0.0.1")
    peer.add_argument("node_id")
    peer.add_argument("--port", type=int, default=0)
    peer.add_argument("--seed", action="append", default=[], help="host:port of a known peer")
    ops = commands.add_parser("ops", help="print the alert rules, their tests, or the dashboard")
    ops.add_argument("what", choices=["alerts", "tests", "dashboard"])
    ops.add_argument("--namespace", default="dwcp")
    return parser


async def _serve_peer(node_id: str, port: int, seeds: list[str]) -> None:
    from .dwcp.peer import DWCPPeer  # noqa: PLC0415

    async with DWCPPeer(node_id, port=port, seeds=seeds) as peer:
        print(f"peer {node_id!r} serving on 127.0.0.1:{peer.port} (Ctrl-C to stop)", flush=True)
        await anyio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.basic:
            from .basic_demo import run_basic_demo  # noqa: PLC0415

            anyio.run(run_basic_demo, args.duration)
            return 0
        from .dwcp.demo import run_demo  # noqa: PLC0415

        async def demo() -> int:
            result = await run_demo(
                messages=args.messages,
                metrics_port=args.metrics_port,
                picture=args.picture or None,
                live=False if args.plain else None,
            )
            summary = result.summary
            return 0 if summary.lost == 0 and summary.duplicates == 0 else 1

        return anyio.run(demo)
    if args.command == "peer":
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(_serve_peer, args.node_id, args.port, args.seed)
        return 0
    from . import ops  # noqa: PLC0415

    if args.what == "alerts":
        print(ops.alerts(args.namespace), end="")
    elif args.what == "tests":
        print(ops.alert_tests(args.namespace), end="")
    else:
        print(json.dumps(ops.dashboard(args.namespace), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
