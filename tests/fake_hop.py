"""A scripted DWCP peer for the deadline and relay tests (import as ``from fake_hop import ...``).

:class:`FakeHop` listens on loopback, records every request it reads (type, id, flags, budget,
and the loop time it arrived), answers HELLO and PING at once, and answers each SEND when
``release`` is set (at once if it is set already): with an ACK, or with ``error`` (an ERROR
payload) when given. With ``answer_hello = False`` it never answers a HELLO. Its connections that
ended are counted (``closed``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from dwcp_resilience.core.clock import loop_time
from dwcp_resilience.dwcp.protocol import (
    Frame,
    FrameDecoder,
    MessageType,
    decode_send,
    encode_frame,
    encode_hello,
)

__all__ = ("FakeHop", "Seen", "fake_hop")

M = MessageType


@dataclass(frozen=True)
class Seen:
    """One request as the fake hop read it."""

    type: MessageType
    message_id: bytes
    flags: int
    budget_ms: int
    at: float  # loop time when it was read
    recipient: str = ""


class FakeHop:
    """See the module docstring; build it with :func:`fake_hop`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.release = anyio.Event()
        self.error: bytes | None = None
        self.answer_hello = True  # False: a HELLO is read and never answered
        self.closed = 0
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sends(self) -> list[Seen]:
        return [s for s in self.seen if s.type is M.SEND]

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder()
        lock = anyio.Lock()

        async def answer(frame: Frame) -> None:
            await self.release.wait()
            if self.error is not None:
                reply = encode_frame(M.ERROR, frame.message_id, self.error)
            else:
                reply = encode_frame(M.ACK, frame.message_id)
            async with lock:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await stream.send(reply)

        async with stream, anyio.create_task_group() as tg:
            try:
                await self._read(stream, decoder, lock, tg, answer)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                self.closed += 1
                tg.cancel_scope.cancel()

    async def _read(
        self,
        stream: anyio.abc.SocketStream,
        decoder: FrameDecoder,
        lock: anyio.Lock,
        tg: anyio.abc.TaskGroup,
        answer: Callable[[Frame], Coroutine[Any, Any, None]],
    ) -> None:
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                return
            now = loop_time()
            for frame in decoder.frames(data):
                recipient = decode_send(frame.payload)[0] if frame.type is M.SEND else ""
                seen = Seen(
                    frame.type,
                    frame.message_id,
                    frame.flags,
                    frame.budget_ms,
                    now,
                    recipient,
                )
                self.seen.append(seen)
                if frame.type is M.SEND:
                    tg.start_soon(answer, frame)
                elif frame.type is M.HELLO and self.answer_hello:
                    hello = encode_hello("fake", self.address)
                    async with lock:
                        await stream.send(encode_frame(M.HELLO, frame.message_id, hello))
                elif frame.type is M.PING:
                    pong = encode_frame(M.PONG, frame.message_id, frame.payload)
                    async with lock:
                        await stream.send(pong)


@asynccontextmanager
async def fake_hop() -> AsyncIterator[FakeHop]:
    """A :class:`FakeHop` serving on a free loopback port for the block."""
    hop = FakeHop()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        hop.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, hop.handle)
        yield hop
        tg.cancel_scope.cancel()
