"""A DWCP server keeps accepting after ``accept()`` fails for lack of file descriptors.

anyio's ``Listener.serve`` stops at the first failed accept; ``accept_forever`` (used by the peer and
the chaos proxy) waits and retries capacity errors, skips connections that died in the backlog, and
still raises anything else. The last test runs a real peer in a subprocess whose descriptor limit is
tiny, fills it with connections, and checks that the peer serves again once they are closed.
"""

from __future__ import annotations

import errno
import resource
import subprocess
import sys
import time
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from dwcp_resilience.dwcp._service import accept_forever
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(60)]


class ScriptedListener:
    """``accept()`` raises the scripted errors, in order, then hands out the scripted streams."""

    def __init__(self, script: list[OSError | str]) -> None:
        self.script = script
        self.accepts = 0

    async def accept(self) -> str:
        self.accepts += 1
        await anyio.lowlevel.checkpoint()
        if not self.script:
            await anyio.sleep_forever()
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


async def test_capacity_errors_are_retried_and_dead_connections_skipped(anyio_backend: Any) -> None:
    listener = ScriptedListener(
        [
            OSError(errno.EMFILE, "Too many open files"),
            OSError(errno.ECONNABORTED, "Software caused connection abort"),
            "first",
            OSError(errno.ENFILE, "File table overflow"),
            "second",
        ]
    )
    handled: list[str] = []
    seen: list[int | None] = []
    both = anyio.Event()

    async def handler(stream: str) -> None:
        handled.append(stream)
        if len(handled) == 2:
            both.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: accept_forever(
                    listener,  # type: ignore[arg-type]
                    handler,
                    tg,
                    name="test",
                    on_capacity_error=lambda exc: seen.append(exc.errno),
                )
            )
            await both.wait()
            tg.cancel_scope.cancel()
    assert handled == ["first", "second"]
    assert seen == [errno.EMFILE, errno.ENFILE]
    assert listener.accepts == 6


async def test_other_accept_errors_still_raise(anyio_backend: Any) -> None:
    listener = ScriptedListener([OSError(errno.EBADF, "Bad file descriptor")])

    async def handler(stream: str) -> None:
        raise AssertionError("nothing was accepted")

    raised: list[OSError] = []
    try:
        async with anyio.create_task_group() as tg:
            await accept_forever(listener, handler, tg, name="test")  # type: ignore[arg-type]
    except* OSError as group:
        raised += [exc for exc in group.exceptions if isinstance(exc, OSError)]
    assert [exc.errno for exc in raised] == [errno.EBADF]


_PEER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import anyio
from dwcp_resilience.dwcp.peer import DWCPPeer

async def main():
    async with DWCPPeer("tiny", max_connections=1000) as peer:
        print(peer.port, flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            stats = peer.statistics()
            print(stats.accept_errors, stats.connections_active, flush=True)

anyio.run(main)
"""


async def test_a_peer_out_of_descriptors_serves_again_once_they_are_free(
    anyio_backend: Any,
) -> None:
    """R: a real peer whose fd limit is 48 gets 120 connections, then serves a fresh client."""
    async with await anyio.open_process(
        [sys.executable, "-c", _PEER], stderr=subprocess.DEVNULL
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = BufferedByteReceiveStream(proc.stdout)

        async def readline() -> bytes:
            with anyio.fail_after(10):
                return await lines.receive_until(b"\n", 1000)

        port = int(await readline())
        # The kernel's backlog accepts all of them; the peer runs out of descriptors.
        flood = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(120)]
        await anyio.sleep(0.5)
        await proc.stdin.send(b"stats\n")
        accept_errors, active = map(int, (await readline()).split())
        assert accept_errors >= 1, "the fd limit was never reached"
        assert active < 48
        for stream in flood:
            await anyio.aclose_forcefully(stream)
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = await DWCPConnection.connect("127.0.0.1", port, connect_timeout=2)
                try:
                    with anyio.fail_after(2):
                        await conn.ping(b"alive")
                finally:
                    await conn.aclose()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.1)
        assert proc.returncode is None, "the peer process died"
        await proc.stdin.aclose()
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 48  # only the child was limited
