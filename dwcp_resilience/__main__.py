"""``python -m dwcp_resilience`` (also the ``dwcp-resilience`` console script).

DWCP (Distributed WAN Communication Protocol, the name the Go original used) is this package's
example protocol: peers over TCP that hold a mailbox per node; clients send, receive and discover.

Commands:

- ``demo``: the DWCP demo (peers on loopback, a chaos proxy, resilient clients, live state,
  ``/metrics``, a summary and a timeline picture); ``demo --basic`` runs the small breaker / retry /
  timeout demo instead;
- ``peer``: serve one DWCP peer (on 127.0.0.1 unless ``--host`` says otherwise) until interrupted;
- ``connect``, ``send``, ``recv``, ``discover``: talk to a running peer through a
  :class:`~dwcp_resilience.dwcp.DWCPResilientClient` (every operation retried, behind a breaker);
- ``ops alerts|tests|dashboard``: print the shipped alert rules, their promtool tests, or the
  Grafana dashboard (``--namespace`` renames metrics, rules, alerts and the dashboard;
  ``--runbook-url`` sets where the alerts' ``runbook_url`` annotations point).

Exit status: 0 success; 1 the operation failed (the error is printed on stderr); 2 bad usage;
3 ``recv`` found no message.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from .dwcp.client import DWCPResilientClient

__all__ = ("EXIT_EMPTY", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_EMPTY = 3

DWCP = "DWCP (Distributed WAN Communication Protocol)"
_EXIT_CODES = (
    "exit status: 0 success; 1 the operation failed (the error is on stderr); 2 bad usage; "
    "3 recv found no message"
)


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    try:
        return metadata.version("dwcp-resilience")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        package = importlib.import_module(__package__ or "dwcp_resilience")
        return str(getattr(package, "__version__", "unknown"))


def _address(value: str) -> str:
    """An argparse type: ``HOST:PORT`` with a port in 1-65535."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:7000), got {value!r}")
    return value


def _route(value: str) -> tuple[str, str]:
    """An argparse type: ``RECIPIENT=HOST:PORT``."""
    recipient, sep, address = value.partition("=")
    if not sep or not recipient:
        raise argparse.ArgumentTypeError(f"expected RECIPIENT=HOST:PORT, got {value!r}")
    return recipient, _address(address)


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, above 0 (or at least 0)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
        low_ok = number >= 0 if allow_zero else number > 0
        if not low_ok or not math.isfinite(number):
            least = "0 or more" if allow_zero else "above 0"
            raise argparse.ArgumentTypeError(f"must be finite and {least}, got {value!r}")
        return number

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``)."""

    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            span = f"{low}-{high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"expected a whole number, {span}, got {value!r}")
        return int(value)

    return parse


def _message_id(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise argparse.ArgumentTypeError(f"expected 32 hex digits (16 bytes), got {value!r}")
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwcp-resilience",
        description=(
            f"dwcp_resilience: demo, {DWCP} peer and client, operations files. DWCP is this "
            "package's example protocol: peers over TCP hold a mailbox per node; clients send, "
            "receive and discover."
        ),
        epilog=_EXIT_CODES,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the DWCP demo (about 35 s)")
    demo.add_argument("--basic", action="store_true", help="the small breaker/retry/timeout demo")
    demo.add_argument(
        "--messages", type=_whole(1), default=1500, help="messages alice sends to bob"
    )
    demo.add_argument(
        "--metrics-port", type=_whole(0, 65535), default=0, help="/metrics port (0: any free)"
    )
    demo.add_argument("--picture", default="dwcp-demo-timeline.png", help="PNG path ('' for none)")
    demo.add_argument("--plain", action="store_true", help="plain status lines, no live table")
    demo.add_argument(
        "--duration", type=_seconds(allow_zero=False), default=8.0, help="seconds (with --basic)"
    )

    peer = commands.add_parser("peer", help="serve a DWCP peer until interrupted")
    peer.add_argument("node_id", metavar="NODE_ID", help="this peer's name (sent in HELLO)")
    peer.add_argument(
        "--host",
        default="127.0.0.1",
        help=(
            "address to listen on (default 127.0.0.1: this machine only). Anything else, such as "
            "0.0.0.0, exposes the peer to the network: DWCP has no authentication or encryption"
        ),
    )
    peer.add_argument(
        "--port", type=_whole(0, 65535), default=0, help="port to listen on (0: any free port)"
    )
    peer.add_argument(
        "--seed",
        action="append",
        default=[],
        type=_address,
        metavar="HOST:PORT",
        help="a peer known from the start, answered to discover (repeat for several)",
    )
    peer.add_argument(
        "--route",
        action="append",
        default=[],
        type=_route,
        metavar="RECIPIENT=HOST:PORT",
        help=(
            "relay SENDs for RECIPIENT to the peer at HOST:PORT, which keeps its mailbox, with "
            "what is left of each request's deadline (repeat for several)"
        ),
    )
    storage = peer.add_mutually_exclusive_group()
    storage.add_argument(
        "--store",
        metavar="PATH",
        help=(
            "the SQLite file that keeps the mailboxes across restarts (default: "
            "dwcp-peer-NODE_ID.db in the current directory); a message is acknowledged only once "
            "it is on disk there"
        ),
    )
    storage.add_argument(
        "--in-memory",
        action="store_true",
        help="keep the mailboxes in memory only: faster, but a crash loses what they hold",
    )

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--peer", required=True, type=_address, metavar="HOST:PORT", help="the peer to talk to"
    )
    client.add_argument(
        "--timeout",
        type=_seconds(allow_zero=False),
        default=5.0,
        metavar="SECONDS",
        help=(
            "time limit of each attempt, connecting included; each request tells the peer what "
            "is left of it (default 5)"
        ),
    )
    client.add_argument(
        "--retries",
        type=_whole(0),
        default=3,
        metavar="N",
        help="retries after a failed attempt, with backoff from 0.1 s to 1 s (default 3)",
    )
    node_help = "this client's node id (default 'cli')"

    connect = commands.add_parser(
        "connect",
        parents=[client],
        help="connect to a peer (HELLO) and ping it",
        epilog=_EXIT_CODES,
    )
    connect.add_argument("--node", default="cli", help=node_help)

    send = commands.add_parser(
        "send",
        parents=[client],
        help="store a message in a node's mailbox on a peer",
        epilog=_EXIT_CODES,
    )
    send.add_argument("recipient", metavar="RECIPIENT", help="the node id whose mailbox gets it")
    send.add_argument("text", metavar="TEXT", help="the message (sent as UTF-8)")
    send.add_argument("--node", default="cli", help="the sender's node id (default 'cli')")
    send.add_argument(
        "--id",
        type=_message_id,
        dest="message_id",
        metavar="HEX",
        help="message id (32 hex digits); re-sending with the same id stores the message once",
    )

    recv = commands.add_parser(
        "recv",
        parents=[client],
        help="take messages from a node's mailbox on a peer (each line: SENDER<TAB>TEXT)",
        epilog=_EXIT_CODES,
    )
    recv.add_argument("--node", required=True, help="the node id whose mailbox to read")
    recv.add_argument(
        "--count",
        type=_whole(1),
        default=1,
        metavar="N",
        help="take at most N messages (default 1)",
    )
    recv.add_argument(
        "--wait",
        type=_seconds(allow_zero=True),
        default=0.0,
        metavar="SECONDS",
        help="wait this long for messages to arrive (default 0: take what is there)",
    )

    discover = commands.add_parser(
        "discover",
        parents=[client],
        help="list the peers a peer knows (each line: NODE_ID<TAB>HOST:PORT; '-' if unnamed)",
        epilog=_EXIT_CODES,
    )
    discover.add_argument("--node", default="cli", help=node_help)

    ops = commands.add_parser("ops", help="print the alert rules, their tests, or the dashboard")
    ops.add_argument(
        "what",
        choices=["alerts", "tests", "dashboard"],
        help="alerts: Prometheus rules; tests: their promtool unit tests; dashboard: Grafana JSON",
    )
    ops.add_argument(
        "--namespace",
        default="dwcp",
        help="metric namespace: renames metrics, rule groups, alerts and the dashboard (default dwcp)",
    )
    ops.add_argument(
        "--runbook-url",
        default=None,
        metavar="URL",
        help="where docs/runbook.md is served; each alert's runbook_url links to its section",
    )
    return parser


async def _serve_peer(args: argparse.Namespace, store: str | None) -> None:
    from .dwcp.peer import DWCPPeer  # noqa: PLC0415

    node_id = args.node_id
    peer = DWCPPeer(
        node_id,
        host=args.host,
        port=args.port,
        seeds=args.seed,
        store_path=store,
        routes=dict(args.route),
    )
    async with peer:
        where = "in memory" if store is None else f"in {store}"
        # Ctrl-C and SIGTERM (a service manager's stop) end it cleanly, also where the shell that
        # started it in the background ignores SIGINT.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            print(
                f"peer {node_id!r} serving on {peer.address}, mailboxes {where} (Ctrl-C to stop)",
                flush=True,
            )
            async for signum in signals:
                print(f"peer {node_id!r} stopped ({signal.Signals(signum).name})", flush=True)
                return


def _client(args: argparse.Namespace) -> DWCPResilientClient:
    from .dwcp.client import DWCPResilienceConfig, DWCPResilientClient  # noqa: PLC0415

    config = DWCPResilienceConfig(
        node_id=args.node,
        peers=(args.peer,),
        max_retries=args.retries,
        initial_retry_delay=0.1,
        max_retry_delay=1.0,
        circuit_timeout=args.timeout,
        connect_timeout=args.timeout,
    )
    return DWCPResilientClient(config)


async def _connect(client: DWCPResilientClient, args: argparse.Namespace) -> int:
    conn = await client.establish_connection()
    try:
        rtt = await conn.ping()
    finally:
        await conn.aclose()
    print(f"connected to {args.peer} as {args.node!r}: HELLO answered, ping {rtt * 1000:.1f} ms")
    return EXIT_OK


async def _send(client: DWCPResilientClient, args: argparse.Namespace) -> int:
    body = args.text.encode()
    mid = await client.send_message(args.recipient, body, message_id=args.message_id)
    print(f"stored for {args.recipient!r} on {args.peer}: message id {mid.hex()}")
    return EXIT_OK


async def _recv(client: DWCPResilientClient, args: argparse.Namespace) -> int:
    got = 0
    give_up = anyio.current_time() + args.wait
    while got < args.count:
        delivery = await client.receive_message()
        if delivery is not None:
            got += 1
            text = delivery.body.decode("utf-8", "backslashreplace")
            print(f"{delivery.sender}\t{text}", flush=True)
            continue
        left = give_up - anyio.current_time()
        if left <= 0:
            break
        await anyio.sleep(min(0.1, left))
    if not got:
        print(f"no message for {args.node!r} on {args.peer}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK


async def _discover(client: DWCPResilientClient, args: argparse.Namespace) -> int:
    peers = await client.discover_peers()
    for info in peers:
        print(f"{info.node_id or '-'}\t{info.address}")
    if not peers:
        print(f"{args.peer} knows no other peer", file=sys.stderr)
    return EXIT_OK


_CLIENT_COMMANDS: dict[str, Callable[[DWCPResilientClient, argparse.Namespace], Awaitable[int]]] = {
    "connect": _connect,
    "send": _send,
    "recv": _recv,
    "discover": _discover,
}


async def _run_client(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        return await _CLIENT_COMMANDS[args.command](client, args)
    except Exception as exc:
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
        print(f"{args.command} failed: {type(exc).__name__}: {exc}{notes}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await client.aclose()


def _bind_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` of a failed listen, also when a task group wrapped it (alone)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _bind_error(exc.exceptions[0])
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.basic:
            from .basic_demo import run_basic_demo  # noqa: PLC0415

            anyio.run(run_basic_demo, args.duration)
            return EXIT_OK
        from .dwcp.demo import run_demo  # noqa: PLC0415

        async def demo() -> int:
            result = await run_demo(
                messages=args.messages,
                metrics_port=args.metrics_port,
                picture=args.picture or None,
                live=False if args.plain else None,
            )
            summary = result.summary
            return EXIT_OK if summary.lost == 0 and summary.duplicates == 0 else EXIT_FAILED

        return anyio.run(demo)
    if args.command == "peer":
        try:
            with contextlib.suppress(KeyboardInterrupt):
                store = None if args.in_memory else (args.store or f"dwcp-peer-{args.node_id}.db")
                anyio.run(_serve_peer, args, store)
        except Exception as exc:
            error = _bind_error(exc)
            if error is None:
                raise
            print(f"peer: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if args.command in _CLIENT_COMMANDS:
        return anyio.run(_run_client, args)
    from . import ops  # noqa: PLC0415

    try:
        ops.print_ops(args.what, namespace=args.namespace, runbook_url=args.runbook_url)
    except ValueError as exc:
        print(f"dwcp-resilience ops: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
