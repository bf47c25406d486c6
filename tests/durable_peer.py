"""Serve a ``DWCPPeer`` with a durable mailbox store until killed (tests/test_dwcp_mailbox_crash.py).

Usage: ``python tests/durable_peer.py PATH PORT BACKEND`` (BACKEND: asyncio, uvloop or trio). Prints
``ready PORT`` on stdout once the stored mailboxes are loaded and the peer listens.
"""

from __future__ import annotations

import sys

import anyio

from dwcp_resilience.dwcp import DWCPPeer


async def serve(path: str, port: int) -> None:
    async with DWCPPeer("durable", port=port, store_path=path) as peer:
        print(f"ready {peer.port}", flush=True)
        await anyio.sleep_forever()


def main() -> None:
    path, port, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if backend == "uvloop":
        import uvloop

        anyio.run(serve, path, port, backend_options={"loop_factory": uvloop.new_event_loop})
    else:
        anyio.run(serve, path, port, backend=backend)


if __name__ == "__main__":
    main()
