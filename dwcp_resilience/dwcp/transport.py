"""``DWCPConnection``: one TCP connection to a DWCP peer, on anyio streams (asyncio, uvloop, trio).

Each operation is one request and one reply, matched by message id, so many tasks can share one
connection and pipeline their requests. There is no background reader task: a task waiting for its
reply takes the read lock, reads one chunk, hands every complete frame to the request it answers, and
lets the next waiter in (the pattern of httpcore's HTTP/2 connection). Cancelling a waiter (a timeout
around a request) is safe: the decoder keeps any partial frame, and a reply that arrives after its
request gave up is counted as stray and dropped.

A broken connection fails every request in flight and every later one with a typed error, each call
its own fresh instance:

- :class:`~dwcp_resilience.dwcp.errors.ConnectionReset` on a reset or broken pipe;
- :class:`~dwcp_resilience.dwcp.errors.ConnectionClosed` on end of stream at a frame boundary, or after
  :meth:`DWCPConnection.aclose`;
- a :class:`~dwcp_resilience.dwcp.errors.ProtocolError` (``IncompleteFrame`` for end of stream inside a
  frame) on malformed bytes;
- :class:`~dwcp_resilience.dwcp.errors.PeerError` when the peer answers ERROR (the connection stays
  usable unless the ERROR was not addressed to a request).

``connect`` raises :class:`~dwcp_resilience.dwcp.errors.ConnectFailed` or ``ConnectTimeout``. Deadlines
for the requests themselves are the caller's (a ``Timeout`` policy, ``anyio.fail_after``): the total
deadline is never reset by a trickle of bytes.

Every request carries the time left before the innermost deadline in force
(:func:`deadline_in_force`: an ``OperationContext``'s, a ``Timeout``'s, the manager's, an anyio
cancel scope's), read when its frame is written, in the header's budget; the peer refuses it with
``DEADLINE_EXCEEDED`` (raised here as :class:`~dwcp_resilience.dwcp.errors.PeerDeadlineExceeded`)
if that runs out before it gets to it. A request whose deadline has already passed is not written
at all: :class:`~dwcp_resilience.dwcp.errors.RequestExpired`.

How a resilient client uses it (tested through the chaos proxy in ``tests/test_dwcp_proxy.py``):
send with a message id chosen once per message and resend with the same id after a timeout or an
error that :func:`~dwcp_resilience.dwcp.errors.is_retryable` accepts (the peer stores it once); close a
connection after a timeout on it (a stalled connection stays stalled, and closing it releases the
peer's delivery leases) and reconnect when ``usable`` is false; acknowledge a delivery after handling
it, and drop a delivery whose id was already handled (it is at-least-once).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import anyio.lowlevel

from ..core.clock import loop_time
from ..core.context import current_deadline
from ..core.validate import check_int, check_number
from .errors import (
    PROTOCOL_CODES,
    ConnectFailed,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    ErrorCode,
    FrameRejected,
    PeerDeadlineExceeded,
    PeerError,
    ProtocolError,
    RequestExpired,
    UnexpectedFrame,
)
from .protocol import (
    DEFAULT_MAX_PAYLOAD,
    FLAG_CLOSING,
    FLAG_DUPLICATE,
    Delivery,
    Frame,
    FrameDecoder,
    MessageType,
    PeerInfo,
    budget_ms,
    decode_deliver,
    decode_error,
    decode_error_retry_after,
    decode_hello,
    decode_peers,
    encode_deliver_ack,
    encode_frame,
    encode_hello,
    encode_receive,
    encode_send,
    new_message_id,
)

__all__ = ("ConnectionStatistics", "DWCPConnection", "deadline_in_force")

T = TypeVar("T")

_READ_SIZE = 65536
_NO_ID = bytes(16)
_INF = math.inf
_scope_deadline = anyio.current_effective_deadline


def deadline_in_force() -> float:
    """The innermost deadline that bounds the running code, on the loop clock (``inf``: none): the
    earliest of the package's own (:func:`~dwcp_resilience.current_deadline`: an active
    ``OperationContext``, a ``Timeout``, the manager's deadline and attempt timeout) and anyio's
    cancel scopes (``anyio.current_effective_deadline()``: ``fail_after``, ``move_on_at``, ...;
    ``-inf`` in a cancelled scope)."""
    ours = current_deadline()
    scopes = _scope_deadline()
    return scopes if scopes < ours else ours


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters."""

    requests: int
    replies: int
    stray_frames: int
    bytes_sent: int
    bytes_received: int
    in_flight: int
    usable: bool


def _peer_error(frame: Frame) -> Exception:
    """The error for an ERROR answer: a :class:`PeerError` (the peer refused the request;
    :class:`PeerDeadlineExceeded` for ``DEADLINE_EXCEEDED``), or, when the peer closes the
    connection with it (``FLAG_CLOSING``) because it could not read a frame of ours (a protocol
    error code: corrupted on the way, or not understood), a :class:`FrameRejected`: a fault of this
    connection, retried on a new one."""
    code, detail = decode_error(frame.payload)  # a ProtocolError if malformed
    if frame.flags & FLAG_CLOSING and code in PROTOCOL_CODES:
        return FrameRejected(code, detail)
    if code == ErrorCode.DEADLINE_EXCEEDED:
        return PeerDeadlineExceeded(code, detail)
    return PeerError(code, detail, decode_error_retry_after(frame.payload))


class DWCPConnection:
    """A client connection to a DWCP peer. Build it with :meth:`connect`; close it with ``aclose``.

    Use ``async with await DWCPConnection.connect(host, port) as conn:`` or keep it in a pool and
    check :attr:`usable` before reuse. Every method is one request/response.
    """

    __slots__ = (
        "__weakref__",
        "_broken",
        "_bytes_received",
        "_bytes_sent",
        "_decoder",
        "_id_counter",
        "_id_prefix",
        "_max_payload",
        "_read_lock",
        "_replies",
        "_replies_count",
        "_requests",
        "_send_lock",
        "_stray",
        "_stream",
        "peer_address",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        peer_address: str = "",
    ) -> None:
        self._stream = stream
        self._max_payload = check_int(max_payload, "max_payload", min_value=0)
        self._decoder = FrameDecoder(max_payload)
        self._replies: dict[bytes, Frame | None] = {}
        # Every path under these locks awaits the stream, which is a checkpoint: skip the lock's own.
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._read_lock = anyio.Lock(fast_acquire=True)
        self._id_prefix = new_message_id()[:8]
        self._id_counter = count()
        self._broken: Exception | None = None
        self._requests = self._replies_count = self._stray = 0
        self._bytes_sent = self._bytes_received = 0
        self.peer_address = peer_address

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> DWCPConnection:
        """Open a TCP connection; ``ConnectTimeout`` after ``connect_timeout`` s (``inf``: none)."""
        timeout = check_number(
            connect_timeout, "connect_timeout", min_value=0, allow_zero=False, allow_inf=True
        )
        check_int(port, "port", min_value=1, max_value=65535)
        try:
            with anyio.fail_after(None if math.isinf(timeout) else timeout):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {host}:{port} timed out after {timeout:g}s") from exc
        except OSError as exc:
            raise ConnectFailed(f"connect to {host}:{port} failed: {exc}") from exc
        return cls(stream, max_payload=max_payload, peer_address=f"{host}:{port}")

    # -- state ---------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """False once the connection broke or was closed: drop it from any pool."""
        return self._broken is None

    @property
    def in_flight(self) -> int:
        """Requests sent (or being sent) that have no reply yet."""
        return len(self._replies)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the counters."""
        return ConnectionStatistics(
            self._requests,
            self._replies_count,
            self._stray,
            self._bytes_sent,
            self._bytes_received,
            len(self._replies),
            self._broken is None,
        )

    def __repr__(self) -> str:
        state = "open" if self._broken is None else f"broken ({type(self._broken).__name__})"
        return f"<DWCPConnection {self.peer_address or '?'} in_flight={len(self._replies)} {state}>"

    def _fail(self, exc: Exception) -> Exception:
        """Mark the connection broken by ``exc`` (the first cause wins) and return it."""
        if self._broken is None:
            self._broken = exc
        return exc

    def _raise_broken(self) -> None:
        broken = self._broken
        if broken is not None:
            fresh = copy.copy(broken)  # a fresh instance per raise; the first one is the cause
            # copy.copy shares the instance dict's values: each raise gets its own notes.
            vars(fresh).pop("__notes__", None)
            raise fresh from broken

    # -- requests ------------------------------------------------------------------------------------

    async def request(
        self,
        type: MessageType,
        payload: bytes = b"",
        *,
        message_id: bytes | None = None,
        flags: int = 0,
    ) -> Frame:
        """Send one frame and return the frame that answers it (same message id), ERROR included.

        ``message_id`` defaults to a fresh id (a random per-connection prefix and a counter); a
        retried SEND passes its own. The header's budget is the time left before
        :func:`deadline_in_force` when the frame is written.

        Raises:
            ValueError: that id is already waiting for a reply on this connection, or the frame
                does not fit (``max_payload``).
            RequestExpired: the deadline in force had passed: nothing was sent.
        """
        self._raise_broken()
        if message_id is None:  # unique per connection by the counter, across them by the prefix
            mid = self._id_prefix + next(self._id_counter).to_bytes(8, "big")
        else:
            mid = message_id
        if mid in self._replies:
            raise ValueError("a request with this message id is already in flight here")
        replies = self._replies
        replies[mid] = None
        try:
            await self._write(type, mid, payload, flags)
            self._requests += 1
            while (reply := replies[mid]) is None:
                await self._read_some(mid)
            return reply
        finally:
            del replies[mid]

    async def _write(self, type: MessageType, mid: bytes, payload: bytes, flags: int) -> None:
        async with self._send_lock:
            self._raise_broken()
            # The budget is read here, once the frame's turn to be written has come.
            deadline = deadline_in_force()
            budget = 0
            if deadline != _INF:
                remaining = deadline - loop_time()
                if remaining <= 0.0:
                    # A cancelled scope, or a deadline whose timer is due, cancels us here.
                    await anyio.lowlevel.checkpoint()
                    raise RequestExpired
                budget = budget_ms(remaining)
            data = encode_frame(
                type, mid, payload, flags, budget_ms=budget, max_payload=self._max_payload
            )
            try:
                await self._stream.send(data)
            except anyio.get_cancelled_exc_class():
                # Part of the frame may be on the wire: nothing can follow it safely.
                self._fail(ConnectionClosed("a send was cancelled mid-frame"))
                raise
            except (anyio.BrokenResourceError, OSError) as exc:
                raise self._fail(ConnectionReset(f"send failed: {exc!r}")) from exc
            except anyio.ClosedResourceError as exc:
                raise self._fail(ConnectionClosed("connection closed")) from exc
            self._bytes_sent += len(data)

    async def _read_some(self, mid: bytes) -> None:
        async with self._read_lock:
            if self._replies[mid] is not None:
                return  # answered while we queued for the lock
            self._raise_broken()
            try:
                data = await self._stream.receive(_READ_SIZE)
            except anyio.EndOfStream as exc:
                try:
                    self._decoder.eof()
                except ProtocolError as cut:
                    await self._abort(cut)
                    raise self._fail(cut) from exc
                raise self._fail(ConnectionClosed("the peer closed the connection")) from exc
            except (anyio.BrokenResourceError, OSError) as exc:
                raise self._fail(ConnectionReset(f"connection reset: {exc!r}")) from exc
            except anyio.ClosedResourceError as exc:
                self._raise_broken()
                raise self._fail(ConnectionClosed("connection closed")) from exc
            self._bytes_received += len(data)
            decoder = self._decoder
            decoder.feed(data)
            try:
                while (frame := decoder.next_frame()) is not None:
                    self._dispatch(frame)
            except ProtocolError as exc:
                await self._abort(exc)
                raise self._fail(exc) from None

    def _dispatch(self, frame: Frame) -> None:
        mid = frame.message_id
        if self._replies.get(mid, frame) is None:
            self._replies[mid] = frame
            self._replies_count += 1
        elif frame.type is MessageType.ERROR and mid == _NO_ID:
            self._fail(_peer_error(frame))  # the peer gave up on this connection
        else:
            self._stray += 1  # an answer to a request that was cancelled

    def _expect(self, reply: Frame, expected: MessageType) -> Frame:
        if reply.type is expected:
            return reply
        if reply.type is MessageType.ERROR:
            error = _peer_error(reply)
            if isinstance(error, ProtocolError):
                raise self._fail(error)
            raise error
        exc = UnexpectedFrame(f"expected {expected.name}, got {reply.type.name}")
        raise self._fail(exc)

    # -- operations ----------------------------------------------------------------------------------

    async def hello(self, node_id: str, address: str = "") -> PeerInfo:
        """Introduce ourselves (``address``: where we serve, empty for a client); get the peer's."""
        reply = await self.request(MessageType.HELLO, encode_hello(node_id, address))
        return await self._answer(reply, MessageType.HELLO, decode_hello)

    async def send(
        self, recipient: str, body: bytes, *, sender: str = "", message_id: bytes | None = None
    ) -> bool:
        """Store ``body`` in ``recipient``'s mailbox. Returns True if the peer already had this id.

        Pass the same ``message_id`` when retrying: the peer stores the message once.
        """
        payload = encode_send(recipient, sender, body)
        reply = await self.request(MessageType.SEND, payload, message_id=message_id)
        if reply.type is MessageType.ACK:  # the hot path: no helper call
            return bool(reply.flags & FLAG_DUPLICATE)
        await self._answer(reply, MessageType.ACK)
        raise AssertionError("unreachable: _answer raises for any frame but ACK")

    async def receive(self, node_id: str) -> Delivery | None:
        """The oldest message waiting for ``node_id`` (``None`` if none). Acknowledge it with
        :meth:`ack` once handled; until then the peer hands it out again if this connection drops."""
        reply = await self.request(MessageType.RECEIVE, encode_receive(node_id))
        return await self._answer(reply, MessageType.DELIVER, decode_deliver, with_flags=True)

    async def ack(self, node_id: str, message_id: bytes) -> None:
        """Acknowledge a delivered message: the peer forgets it (idempotent)."""
        reply = await self.request(MessageType.DELIVER_ACK, encode_deliver_ack(node_id, message_id))
        await self._answer(reply, MessageType.ACK)

    async def discover(self) -> tuple[PeerInfo, ...]:
        """The peers this peer knows: its seeds and those that said hello."""
        reply = await self.request(MessageType.DISCOVER)
        return await self._answer(reply, MessageType.PEERS, decode_peers)

    async def ping(self, data: bytes = b"") -> float:
        """Round trip of a PING; returns the seconds it took on the loop clock."""
        start = loop_time()
        reply = await self.request(MessageType.PING, data)
        pong = await self._answer(reply, MessageType.PONG)
        if pong.payload != data:
            exc = UnexpectedFrame("PONG does not echo the PING")
            await self._abort(exc)
            raise self._fail(exc)
        return loop_time() - start

    @overload
    async def _answer(self, reply: Frame, expected: MessageType) -> Frame: ...

    @overload
    async def _answer(
        self,
        reply: Frame,
        expected: MessageType,
        decode: Callable[..., T],
        *,
        with_flags: bool = False,
    ) -> T: ...

    async def _answer(
        self,
        reply: Frame,
        expected: MessageType,
        decode: Callable[..., Any] | None = None,
        *,
        with_flags: bool = False,
    ) -> Any:
        """``reply`` if it is the ``expected`` frame (decoded by ``decode``). An ERROR answer raises
        :class:`PeerError` (the connection stays usable); anything else, or a payload that does not
        decode, is a protocol error: the connection is broken and its socket closed."""
        try:
            reply = self._expect(reply, expected)
            if decode is None:
                return reply
            return decode(reply.payload, reply.flags) if with_flags else decode(reply.payload)
        except ProtocolError as exc:
            await self._abort(exc)
            raise self._fail(exc) from None

    async def _abort(self, exc: ProtocolError) -> None:
        """A protocol error breaks the connection: mark it, and close the socket at once (the peer
        sees end of stream; nothing after a bad frame can be trusted)."""
        self._fail(exc)
        await anyio.aclose_forcefully(self._stream)

    # -- lifetime ------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection; requests still waiting fail with ``ConnectionClosed``."""
        self._fail(ConnectionClosed("connection closed"))
        await self._stream.aclose()

    async def __aenter__(self) -> DWCPConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
