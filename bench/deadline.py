"""``python -m bench.deadline``: what carrying a deadline on the DWCP wire costs.

1. **The codec.** ns per frame of ``encode_frame`` and of ``FrameDecoder.next_frame`` for a SEND
   with a 64-byte body (``timeit``, best of 7). Run it with ``PYTHONPATH`` set to an older tree to
   compare: there the header's budget bytes are a reserved 0 (the script passes a budget only where
   ``encode_frame`` takes one).
2. **The budget read.** ns per request of what the transport adds to each frame it writes: the
   deadline in force (``deadline_in_force()``: the package's contextvar and anyio's
   ``current_effective_deadline()``), a clock reading and the rounding, inside a running loop
   (asyncio, uvloop, trio), with and without an enclosing anyio deadline.
3. **One hop on loopback.** A client sends N SENDs one after another, each with a 10 s deadline, to
   a relaying ``DWCPPeer`` whose next hop is a minimal scripted peer in the same process; per SEND,
   the budget the client wrote minus the budget the next hop read (ms), and the time from the
   client's write to the next hop's read (both on the one loop clock).

Nothing else should load the machine; the figures are medians or best-of, one process.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from dwcp_resilience.core.clock import loop_time
from dwcp_resilience.dwcp import protocol
from dwcp_resilience.dwcp.protocol import FrameDecoder, MessageType, encode_frame

M = MessageType


def _best(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=7)) / number * 1e9


def codec(number: int) -> None:
    mid = bytes(16)
    payload = protocol.encode_send("bob", "alice", b"x" * 64)
    takes_budget = "budget_ms" in inspect.signature(encode_frame).parameters
    options: dict[str, Any] = {"budget_ms": 29_995} if takes_budget else {}
    data = encode_frame(M.SEND, mid, payload, **options)
    decoder = FrameDecoder()

    def decode() -> object:
        decoder.feed(data)
        return decoder.next_frame()

    encode_ns = _best(lambda: encode_frame(M.SEND, mid, payload, **options), number)
    decode_ns = _best(decode, number)
    print(f"codec (protocol version {protocol.VERSION}, {protocol.__file__})")
    print(f"  encode_frame: {encode_ns:.0f} ns   next_frame: {decode_ns:.0f} ns")


def budget_read(number: int) -> None:
    try:
        from dwcp_resilience.dwcp.transport import deadline_in_force
    except ImportError:
        print("budget read: this tree's transport has no deadline_in_force")
        return

    def read() -> int:
        deadline = deadline_in_force()
        if deadline == math.inf:
            return 0
        return protocol.budget_ms(deadline - loop_time())

    async def inside() -> tuple[float, float]:
        bare = _best(read, number)
        with anyio.fail_after(3600):  # noqa: ASYNC100 - a deadline in force is what is timed
            scoped = _best(read, number)
        return bare, scoped

    import uvloop

    print("budget read per request (ns): no deadline / inside anyio.fail_after")
    for name, backend, options in (
        ("asyncio", "asyncio", {}),
        ("uvloop", "asyncio", {"loop_factory": uvloop.new_event_loop}),
        ("trio", "trio", {}),
    ):
        bare, scoped = anyio.run(inside, backend=backend, backend_options=options)
        print(f"  {name:8} {bare:6.0f} / {scoped:6.0f}")


async def hop(n: int) -> None:
    from dwcp_resilience.dwcp.peer import DWCPPeer
    from dwcp_resilience.dwcp.transport import DWCPConnection

    seen: list[tuple[int, float]] = []

    async def next_hop(stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder()
        async with stream:
            while True:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                now = loop_time()
                for frame in decoder.frames(data):
                    if frame.type is M.SEND:
                        seen.append((frame.budget_ms, now))
                        await stream.send(encode_frame(M.ACK, frame.message_id))
                    elif frame.type is M.HELLO:
                        hello = protocol.encode_hello("next", "")
                        await stream.send(encode_frame(M.HELLO, frame.message_id, hello))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, next_hop)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        routes = {"bob": f"127.0.0.1:{port}"}
        sent: list[tuple[int, float]] = []
        async with (
            DWCPPeer("relay", routes=routes) as relay,
            await DWCPConnection.connect("127.0.0.1", relay.port) as conn,
        ):
            for _ in range(n):
                with anyio.fail_after(10):
                    start = loop_time()
                    deadline = start + 10  # what fail_after armed, within a clock tick
                    await conn.send("bob", b"x" * 64)
                sent.append((protocol.budget_ms(deadline - start), start))
        tg.cancel_scope.cancel()
    drops = [s[0] - r[0] for s, r in zip(sent, seen, strict=True)]
    transit = sorted((r[1] - s[1]) * 1e6 for s, r in zip(sent, seen, strict=True))
    counts = {d: drops.count(d) for d in sorted(set(drops))}
    print(f"one hop, {n} SENDs with a 10 s deadline, client -> relay -> next hop (loopback)")
    print(f"  budget written by the client minus budget read by the next hop (ms): {counts}")
    print(
        f"  client write -> next hop read: median {statistics.median(transit):.0f} us, "
        f"p99 {transit[int(len(transit) * 0.99)]:.0f} us, max {transit[-1]:.0f} us"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deadline", description=__doc__)
    parser.add_argument("--number", type=int, default=100_000, help="timeit loops per repeat")
    parser.add_argument("--sends", type=int, default=2000, help="SENDs through the relay")
    parser.add_argument("--only", choices=["codec", "read", "hop"], default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.only in (None, "codec"):
        codec(args.number)
    if args.only in (None, "read"):
        budget_read(args.number)
    if args.only in (None, "hop"):
        anyio.run(hop, args.sends)
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
