"""A bare ``DWCPConnection`` closes its socket on every protocol error it raises: the server sees
end of stream at once, without ``aclose()``. Real TCP on loopback, every backend in real time."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import pytest
from helpers import real_time_backends

from dwcp_resilience.dwcp import (
    BadPayload,
    DWCPConnection,
    FrameTooLarge,
    MessageType,
    ProtocolError,
    UnexpectedFrame,
    encode_frame,
)
from dwcp_resilience.dwcp.protocol import HEADER_SIZE, MAGIC, VERSION

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio", "uvloop", "trio")

Reply = Callable[[bytes], bytes]
"""What the fake server answers to a request frame's header (its message id is at bytes 8-24)."""


def too_large(request: bytes) -> bytes:
    head = struct.pack(">4sBBH16sQI", MAGIC, VERSION, MessageType.ACK, 0, request[8:24], 1 << 63, 0)
    return head + struct.pack(">I", zlib.crc32(head))


def wrong_type(request: bytes) -> bytes:
    return encode_frame(MessageType.PONG, request[8:24])


def bad_payload(request: bytes) -> bytes:
    return encode_frame(MessageType.PEERS, request[8:24], b"\xff\xff garbage")


async def serve_once(
    reply: Reply, saw_eof: anyio.Event, *, task_status: anyio.abc.TaskStatus[int]
) -> None:
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        listener = multi.listeners[0]
        assert isinstance(listener, anyio.abc.SocketListener)
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        stream = await listener.accept()
        async with stream:
            request = await stream.receive(HEADER_SIZE)
            await stream.send(reply(request))
            with anyio.move_on_after(5):
                try:
                    while await stream.receive():
                        pass  # drain until the client closes
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    saw_eof.set()


@pytest.mark.parametrize(
    ("reply", "error", "operation"),
    [
        (too_large, FrameTooLarge, lambda conn: conn.send("bob", b"x")),
        (wrong_type, UnexpectedFrame, lambda conn: conn.send("bob", b"x")),
        (bad_payload, BadPayload, lambda conn: conn.discover()),
    ],
    ids=["2**63 length prefix", "unexpected frame", "bad payload"],
)
async def test_a_protocol_error_closes_the_socket(
    reply: Reply,
    error: type[ProtocolError],
    operation: Callable[[DWCPConnection], Awaitable[object]],
) -> None:
    saw_eof = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_once, reply, saw_eof)
        conn = await DWCPConnection.connect("127.0.0.1", port)
        with pytest.raises(error):
            await operation(conn)
        assert not conn.usable
        with anyio.fail_after(2):
            await saw_eof.wait()  # before any aclose(): the error closed the socket
        with pytest.raises(error):
            await conn.ping()  # and the connection stays broken by that error
        await conn.aclose()
