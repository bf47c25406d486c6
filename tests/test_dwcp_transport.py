"""DWCPConnection against scripted fake peers over real loopback TCP (R48-R54 on the client side):
typed errors, no partial frame returned, pipelining by message id, cancellation at each await."""

from __future__ import annotations

import functools
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from dwcp_resilience.dwcp.errors import (
    BadMagic,
    BadPayload,
    ConnectFailed,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    ErrorCode,
    IncompleteFrame,
    PeerError,
    UnexpectedFrame,
    is_retryable,
)
from dwcp_resilience.dwcp.protocol import (
    CHECKSUM_SIZE,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    MessageType,
    encode_error,
    encode_frame,
)
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(30)]

Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]
NO_ID = bytes(16)


@asynccontextmanager
async def fake_peer(handler: Handler) -> AsyncIterator[int]:
    """A one-handler TCP server on loopback; yields its port."""

    async def guarded(stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                await handler(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, guarded)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def read_frames(stream: anyio.abc.SocketStream, decoder: FrameDecoder, n: int) -> list[Frame]:
    frames: list[Frame] = []
    while len(frames) < n:
        frames += decoder.frames(await stream.receive())
    return frames


def pong(frame: Frame) -> bytes:
    return encode_frame(MessageType.PONG, frame.message_id, frame.payload)


def reset(stream: anyio.abc.SocketStream) -> None:
    stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


async def echo_forever(stream: anyio.abc.SocketStream) -> None:
    decoder = FrameDecoder()
    while True:
        for frame in decoder.frames(await stream.receive()):
            await stream.send(pong(frame))


# -- connect ------------------------------------------------------------------------------------------


async def test_connect_refused_is_connect_failed() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(ConnectFailed, match=str(port)) as info:
        await DWCPConnection.connect("127.0.0.1", port)
    assert isinstance(info.value, ConnectionError)
    assert is_retryable(info.value)


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """R50: a SYN that is never answered -> ConnectTimeout after connect_timeout, not a hang."""

    async def never(*args: object, **kwargs: object) -> anyio.abc.SocketStream:
        await anyio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(anyio, "connect_tcp", never)
    start = time.monotonic()
    with pytest.raises(ConnectTimeout) as info:
        await DWCPConnection.connect("127.0.0.1", 9, connect_timeout=0.05)
    assert time.monotonic() - start < 1
    assert isinstance(info.value, TimeoutError)


async def test_connect_config() -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        await DWCPConnection.connect("127.0.0.1", 9, connect_timeout=0)
    with pytest.raises(ValueError, match="port"):
        await DWCPConnection.connect("127.0.0.1", 0)


# -- R48-R54 -------------------------------------------------------------------------------------------


async def test_reset_after_half_a_reply_is_typed_and_returns_no_partial_frame() -> None:
    """R48: header and half the body, then RST -> ConnectionReset (or IncompleteFrame if the
    stack delivered the FIN-like end first); never a partial frame; the connection is dropped."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        (frame,) = await read_frames(stream, FrameDecoder(), 1)
        await stream.send(encode_frame(MessageType.PONG, frame.message_id, b"x" * 100)[:82])
        await anyio.sleep(0.02)
        reset(stream)

    async with fake_peer(handler) as port:
        conn = await DWCPConnection.connect("127.0.0.1", port)
        with pytest.raises((ConnectionReset, IncompleteFrame)) as info:
            await conn.ping(b"x" * 100)
        assert is_retryable(info.value)
        assert not conn.usable
        with pytest.raises(type(info.value)) as again:  # later calls fail fast, fresh instance
            await conn.ping()
        assert again.value is not info.value
        await conn.aclose()


async def test_one_byte_segments_are_reassembled() -> None:
    """R51: a reply trickled one byte per segment comes out whole."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        (frame,) = await read_frames(stream, FrameDecoder(), 1)
        for byte in pong(frame):
            await stream.send(bytes([byte]))
            await anyio.sleep(0.0005)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        await conn.ping(b"hello")
        assert conn.statistics().bytes_received == HEADER_SIZE + 5 + CHECKSUM_SIZE


async def test_eof_inside_the_length_bytes_is_incomplete_frame() -> None:
    """R51: EOF after part of the length field -> IncompleteFrame, not a short read or a hang."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        (frame,) = await read_frames(stream, FrameDecoder(), 1)
        await stream.send(pong(frame)[:27])

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(IncompleteFrame):
            await conn.ping()


@pytest.mark.parametrize(
    "garbage",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x15\x03\x03\x00\x02\x02\x28", b"\xff" * 64],
    ids=["http-400", "tls-alert", "random"],
)
async def test_foreign_bytes_are_a_protocol_error(garbage: bytes) -> None:
    """R53: an HTTP page, a TLS alert, random bytes -> BadMagic; the connection is dropped."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_frames(stream, FrameDecoder(), 1)
        await stream.send(garbage)
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(BadMagic):
            await conn.ping()
        assert not conn.usable


async def test_half_close_is_seen_once_without_spinning() -> None:
    """R54: the peer sends FIN with a request in flight -> ConnectionClosed, then fail fast."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_frames(stream, FrameDecoder(), 1)
        await stream.send_eof()
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(ConnectionClosed, match="peer closed"):
            await conn.ping()
        received = conn.statistics().bytes_received
        start = time.monotonic()
        for _ in range(100):
            with pytest.raises(ConnectionClosed):
                await conn.ping()
        assert time.monotonic() - start < 0.5
        assert conn.statistics().bytes_received == received


async def test_silent_peer_times_out_by_the_callers_deadline_and_the_late_reply_is_stray() -> None:
    """R50: accept and answer late: the caller's deadline fires; the connection stays usable and
    the late answer is dropped as stray, not handed to the next request."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder()
        (first,) = await read_frames(stream, decoder, 1)
        await anyio.sleep(0.15)
        await stream.send(pong(first))
        (second,) = await read_frames(stream, decoder, 1)
        await stream.send(pong(second))

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await conn.ping(b"first")
        assert conn.usable
        assert conn.in_flight == 0
        await conn.ping(b"second")  # the PONG must echo "second": the late "first" is not taken
        assert conn.statistics().stray_frames == 1


async def test_trickle_does_not_reset_the_total_deadline() -> None:
    """R49: one byte per 20 ms; a 0.15 s deadline fires at 0.15 s, not when the reply completes."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        (frame,) = await read_frames(stream, FrameDecoder(), 1)
        for byte in pong(frame):
            await stream.send(bytes([byte]))
            await anyio.sleep(0.02)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.15):
                await conn.ping()
        assert 0.1 < time.monotonic() - start < 0.5


# -- correlation and pipelining --------------------------------------------------------------------


async def test_pipelined_requests_get_their_own_replies_in_any_order() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        frames = await read_frames(stream, FrameDecoder(), 8)
        await stream.send(b"".join(pong(f) for f in reversed(frames)))

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        results: dict[int, float] = {}

        async def one(i: int) -> None:
            results[i] = await conn.ping(b"%d" % i)  # ping checks the echo

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert sorted(results) == list(range(8))
        assert conn.statistics().replies == 8


async def test_cancelling_the_reader_hands_the_read_to_the_next_waiter() -> None:
    """Cancellation at the read await: the task holding the read lock is cancelled mid-receive;
    the other waiters still get their replies."""
    started = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        frames = await read_frames(stream, FrameDecoder(), 3)
        started.set()
        await anyio.sleep(0.05)
        await stream.send(b"".join(pong(f) for f in frames[1:]))
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        done: list[bytes] = []

        async def ping(data: bytes) -> None:
            await conn.ping(data)
            done.append(data)

        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def cancellable() -> None:
                with scope:
                    await conn.ping(b"0")

            tg.start_soon(cancellable)
            await anyio.sleep(0.01)  # it is now the reader, blocked in receive
            tg.start_soon(ping, b"1")
            tg.start_soon(ping, b"2")
            await started.wait()
            scope.cancel()
        assert sorted(done) == [b"1", b"2"]
        assert conn.usable
        assert conn.in_flight == 0


async def test_cancelled_before_the_send_lock_sends_nothing() -> None:
    async with (
        fake_peer(echo_forever) as port,
        await DWCPConnection.connect("127.0.0.1", port) as conn,
    ):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await conn.ping()
        assert conn.statistics().requests == 0
        assert conn.in_flight == 0
        await conn.ping()


async def test_aclose_fails_requests_in_flight() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep(2)

    async with fake_peer(handler) as port:
        conn = await DWCPConnection.connect("127.0.0.1", port)
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await conn.ping()
            except ConnectionClosed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiter)
            await anyio.sleep(0.02)
            await conn.aclose()
        assert len(errors) == 3
        assert len({id(e) for e in errors}) == 3
        assert "broken" in repr(conn)


async def test_error_reply_is_a_peer_error_and_the_connection_stays() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder()
        (frame,) = await read_frames(stream, decoder, 1)
        await stream.send(
            encode_frame(MessageType.ERROR, frame.message_id, encode_error(ErrorCode.BUSY, "later"))
        )
        (frame,) = await read_frames(stream, decoder, 1)
        await stream.send(pong(frame))

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(PeerError, match="BUSY: later") as info:
            await conn.ping()
        assert info.value.retryable
        assert conn.usable
        await conn.ping()


async def test_connection_level_error_breaks_the_connection() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_frames(stream, FrameDecoder(), 1)
        await stream.send(
            encode_frame(MessageType.ERROR, NO_ID, encode_error(ErrorCode.BAD_FRAME, "no"))
        )
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(PeerError):
            await conn.ping()
        assert not conn.usable


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (lambda f: encode_frame(MessageType.ACK, f.message_id), UnexpectedFrame),
        (lambda f: encode_frame(MessageType.PONG, f.message_id, b"not an echo"), UnexpectedFrame),
        (lambda f: encode_frame(MessageType.PEERS, f.message_id, b"\x00"), BadPayload),
    ],
    ids=["wrong-type", "wrong-echo", "bad-payload"],
)
async def test_wrong_answers_break_the_connection(
    answer: Callable[[Frame], bytes], error: type[Exception]
) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        (frame,) = await read_frames(stream, FrameDecoder(), 1)
        await stream.send(answer(frame))
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        with pytest.raises(error) as info:
            if error is BadPayload:
                await conn.discover()
            else:
                await conn.ping(b"echo")
        assert is_retryable(info.value)
        assert not conn.usable


async def test_an_id_already_in_flight_is_refused() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep(1)

    async with fake_peer(handler) as port, await DWCPConnection.connect("127.0.0.1", port) as conn:
        mid = bytes(range(16))
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(conn.send, "b", b"x", message_id=mid))
            await anyio.sleep(0.01)
            with pytest.raises(ValueError, match="already in flight"):
                await conn.send("b", b"x", message_id=mid)
            tg.cancel_scope.cancel()


async def test_statistics_and_repr() -> None:
    async with (
        fake_peer(echo_forever) as port,
        await DWCPConnection.connect("127.0.0.1", port) as conn,
    ):
        await conn.ping(b"ab")
        stats = conn.statistics()
        assert (stats.requests, stats.replies, stats.in_flight, stats.usable) == (1, 1, 0, True)
        assert stats.bytes_sent == stats.bytes_received == HEADER_SIZE + 2 + CHECKSUM_SIZE
        assert repr(conn) == f"<DWCPConnection 127.0.0.1:{port} in_flight=0 open>"
