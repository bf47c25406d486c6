"""``Relay``: how a DWCP peer hands a SEND on to the peer that keeps the recipient's mailbox, with
what is left of the request's deadline.

A peer built with ``routes={"bob": "127.0.0.1:7001"}`` keeps no mailbox for ``bob``: a SEND for
``bob`` is relayed to that address with the same message id, sender and body, flagged
:data:`~dwcp_resilience.dwcp.protocol.FLAG_RELAYED`, and its sender is answered only once the next
hop has answered: its ACK (with its ``FLAG_DUPLICATE``) or its ERROR, passed on. Exactly-once holds
end to end: the next hop de-duplicates by the id, so a client that resends through the relay after
a lost answer gets ``FLAG_DUPLICATE``, and the relay itself stores nothing.

- **Deadline.** The relayed frame's budget is what is left of the request's deadline (the budget
  its header brought, counted from when it arrived here) when it is written to the next hop: the
  time the relay spent on it is gone from it. The relay's own ``forward_timeout`` bounds the wait
  as well, and is then the budget if it comes first. A request whose deadline passes while it
  waits here (for a forwarding slot, for the connection to the next hop, for its answer) is
  answered ``DEADLINE_EXCEEDED``; one that passes before the frame is written is never sent. Once
  written, the next hop may have stored it: as after any timeout, a resend with the same id is a
  duplicate there.
- **One hop.** A relayed SEND is kept where it arrives and never relayed again: routes cannot loop,
  and a chain is one relay long.
- **Bounded.** At most ``max_forwards`` SENDs are being relayed at once; a connection whose SEND
  finds no free slot is not read further until one frees up or the SEND's deadline passes. A
  resend of a message that is still being relayed waits for that relay to end first.
- **Connections.** One :class:`~dwcp_resilience.dwcp.transport.DWCPConnection` per next hop, shared
  by the requests in flight (pipelined), opened at first use with a HELLO that gives this peer's
  node id and address, and opened again once it broke. A next hop that has not answered within
  ``forward_timeout`` is taken to be stalled: its connection is closed.
- **Failures.** The next hop could not be reached, the connection broke, it could not read the
  frame, or it did not answer within ``forward_timeout``: ``FORWARD_FAILED`` (transient: the client
  resends with the same id). A next hop that refuses the connection (``BUSY``, with its
  ``retry_after``) or the request (``MAILBOX_FULL``, ...) has its answer passed on.
- Only SEND is relayed. RECEIVE and DELIVER_ACK are answered from the peer's own mailboxes: a
  delivery lease belongs to the connection that holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from ..core.clock import loop_time
from ..core.validate import check_int, check_number
from .errors import DWCPError, ErrorCode, PeerError, ProtocolError, RequestExpired
from .protocol import (
    DEFAULT_MAX_PAYLOAD,
    FLAG_CLOSING,
    FLAG_DUPLICATE,
    FLAG_RELAYED,
    Frame,
    MessageType,
    decode_error,
    decode_send,
    encode_error,
    encode_frame,
)
from .transport import DWCPConnection

__all__ = ("Relay", "RelayStatistics", "split_address")

M = MessageType
_INF = math.inf
_RELAYED, _REFUSED, _EXPIRED, _FAILED = range(4)  # indexes of Relay._counts


def split_address(address: str, field: str = "address") -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"``.

    Raises:
        ValueError: not ``host:port`` with a port in 1-65535 (the message names ``field``).
    """
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{field} must be 'host:port', got {address!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class RelayStatistics:
    """A snapshot of a relay's counters (each relayed SEND ends in exactly one of the first four)."""

    relayed: int  # answered ACK by the next hop
    refused: int  # answered ERROR by the next hop (passed on)
    expired: int  # answered DEADLINE_EXCEEDED here: the deadline passed while it waited
    failed: int  # answered FORWARD_FAILED here
    in_flight: int  # being relayed now


class Relay:
    """Relays SENDs for the recipients in ``routes`` (see the module docstring).

    Args:
        node_id: the relaying peer's node id (said in HELLO to the next hops).
        routes: recipient node id -> ``"host:port"`` of the peer that keeps its mailbox.
        max_forwards: SENDs relayed at once, at most.
        forward_timeout: seconds a relayed SEND may take (connecting included), whatever its own
            deadline; ``inf``: no bound of the relay's own.
        max_payload: the largest payload sent to or read from a next hop.

    Raises:
        TypeError, ValueError: a bad setting (naming it).
    """

    __slots__ = (
        "_connecting",
        "_conns",
        "_counts",
        "_in_flight",
        "_max_payload",
        "_routes",
        "_slots",
        "address",
        "forward_timeout",
        "max_forwards",
        "node_id",
    )

    def __init__(
        self,
        node_id: str,
        routes: Mapping[str, str],
        *,
        max_forwards: int = 256,
        forward_timeout: float = 30.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must map recipient node ids to 'host:port', got {routes!r}")
        for recipient, address in routes.items():
            if not isinstance(recipient, str) or not recipient or len(recipient.encode()) > 255:
                raise ValueError(f"routes: a recipient must be a node id, got {recipient!r}")
            split_address(address, f"routes[{recipient!r}]")
        self.node_id = node_id
        self._routes = dict(routes)
        self.max_forwards = check_int(max_forwards, "max_forwards", min_value=1)
        self.forward_timeout = check_number(
            forward_timeout, "forward_timeout", min_value=0, allow_zero=False, allow_inf=True
        )
        self._max_payload = check_int(max_payload, "max_payload", min_value=0)
        self.address = ""
        self._slots: anyio.Semaphore | None = None
        self._conns: dict[str, DWCPConnection] = {}
        self._connecting: dict[str, anyio.Lock] = {}
        self._in_flight: dict[bytes, anyio.Event] = {}
        self._counts = [0, 0, 0, 0]  # relayed, refused, expired, failed

    @property
    def routes(self) -> Mapping[str, str]:
        """Recipient -> next hop address (a copy)."""
        return dict(self._routes)

    def routes_to(self, recipient: str) -> bool:
        """Whether a SEND for ``recipient`` is relayed."""
        return recipient in self._routes

    def statistics(self) -> RelayStatistics:
        """A snapshot of the counters."""
        relayed, refused, expired, failed = self._counts
        return RelayStatistics(relayed, refused, expired, failed, len(self._in_flight))

    def __repr__(self) -> str:
        return (
            f"<Relay {self.node_id!r} routes={len(self._routes)} in_flight={len(self._in_flight)}>"
        )

    # -- lifetime (the peer's serve) ----------------------------------------------------------------

    def open(self, address: str) -> None:
        """Begin relaying for a peer now serving at ``address`` (said in HELLO)."""
        self.address = address
        self._slots = anyio.Semaphore(self.max_forwards, fast_acquire=True)

    async def aclose(self) -> None:
        """Close the connections to the next hops."""
        conns, self._conns = self._conns, {}
        self._connecting.clear()
        with anyio.CancelScope(shield=True):
            for conn in conns.values():
                await conn.aclose()

    # -- relaying -----------------------------------------------------------------------------------

    async def admit(self, deadline: float) -> bool:
        """Take a forwarding slot, waiting until ``deadline`` at most; ``False`` if it passed
        first. After ``True``, call :meth:`forward`, which gives the slot back."""
        slots = self._slots
        if slots is None:
            raise RuntimeError(f"relay of {self.node_id!r} is not open")
        with anyio.move_on_at(deadline):
            await slots.acquire()  # fast_acquire: no checkpoint when a slot is free
            return True
        return False

    async def forward(self, frame: Frame, deadline: float) -> bytes:
        """Relay ``frame`` (a SEND whose recipient :meth:`routes_to`) within ``deadline`` (loop
        clock) and return the frame that answers it. Never raises but for cancellation."""
        mid = frame.message_id
        try:
            in_flight = self._in_flight
            while (earlier := in_flight.get(mid)) is not None:  # a resend of a message in flight
                with anyio.move_on_at(deadline):
                    await earlier.wait()
                if deadline <= loop_time():
                    return self._answer(_EXPIRED, mid, ErrorCode.DEADLINE_EXCEEDED, _WAITED)
            done = in_flight[mid] = anyio.Event()
            try:
                return await self._relay(frame, deadline)
            finally:
                del in_flight[mid]
                done.set()
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _relay(self, frame: Frame, deadline: float) -> bytes:
        mid = frame.message_id
        recipient = decode_send(frame.payload)[0]
        address = self._routes[recipient]
        limit = loop_time() + self.forward_timeout
        own = limit < deadline  # the relay's own bound comes first
        conn: DWCPConnection | None = None
        try:
            with anyio.fail_at(limit if own else deadline):
                conn = await self._connection(address)
                reply = await conn.request(
                    M.SEND, frame.payload, message_id=mid, flags=frame.flags | FLAG_RELAYED
                )
        except RequestExpired:
            return self._answer(
                _EXPIRED, mid, ErrorCode.DEADLINE_EXCEEDED, _WAITED + " (not sent on)"
            )
        except PeerError as exc:  # the next hop refused the connection (BUSY): say so
            if conn is not None:
                await self._discard(address, conn)
            self._counts[_REFUSED] += 1
            payload = encode_error(exc.code, f"{address}: {exc.detail}", exc.retry_after)
            return encode_frame(M.ERROR, mid, payload)
        except DWCPError as exc:  # could not connect, the connection broke, bad bytes
            if conn is not None:
                await self._discard(address, conn)
            return self._answer(_FAILED, mid, ErrorCode.FORWARD_FAILED, f"{address}: {exc}")
        except TimeoutError:
            if not own:
                detail = f"deadline passed before {address} answered"
                return self._answer(_EXPIRED, mid, ErrorCode.DEADLINE_EXCEEDED, detail)
            if conn is not None:
                await self._discard(address, conn)  # no answer for forward_timeout: stalled
            detail = f"{address} did not answer within {self.forward_timeout:g}s"
            return self._answer(_FAILED, mid, ErrorCode.FORWARD_FAILED, detail)
        if reply.type is M.ACK:
            self._counts[_RELAYED] += 1
            return encode_frame(M.ACK, mid, b"", reply.flags & FLAG_DUPLICATE)
        code = _refusal_code(reply)
        if code is not None:
            if code == ErrorCode.DEADLINE_EXCEEDED and own:
                # It ran out of our forward_timeout, not of the request's deadline.
                detail = f"{address} did not answer within {self.forward_timeout:g}s"
                return self._answer(_FAILED, mid, ErrorCode.FORWARD_FAILED, detail)
            self._counts[_EXPIRED if code == ErrorCode.DEADLINE_EXCEEDED else _REFUSED] += 1
            return encode_frame(M.ERROR, mid, reply.payload)
        # The next hop could not read our frame (it closes the connection), or answered nonsense.
        await self._discard(address, conn)
        detail = f"{address} answered {reply.type.name} (flags {reply.flags:#x})"
        return self._answer(_FAILED, mid, ErrorCode.FORWARD_FAILED, detail)

    def _answer(self, outcome: int, mid: bytes, code: ErrorCode, detail: str) -> bytes:
        self._counts[outcome] += 1
        return encode_frame(M.ERROR, mid, encode_error(code, detail))

    async def _connection(self, address: str) -> DWCPConnection:
        conn = self._conns.get(address)
        if conn is not None and conn.usable:
            return conn
        lock = self._connecting.get(address)
        if lock is None:
            lock = self._connecting[address] = anyio.Lock()
        async with lock:  # one connect per next hop at a time; the others share it
            conn = self._conns.get(address)
            if conn is not None:
                if conn.usable:
                    return conn
                await self._discard(address, conn)
            host, port = split_address(address)
            conn = await DWCPConnection.connect(
                host, port, connect_timeout=_INF, max_payload=self._max_payload
            )
            try:
                await conn.hello(self.node_id, self.address)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()
                raise
            self._conns[address] = conn
            return conn

    async def _discard(self, address: str, conn: DWCPConnection) -> None:
        if self._conns.get(address) is conn:
            del self._conns[address]
        with anyio.CancelScope(shield=True):
            await conn.aclose()


_WAITED = "deadline passed while the request waited at the relay"


def _refusal_code(reply: Frame) -> int | None:
    """The code of an ERROR that refuses the request (and leaves the connection open), else
    ``None`` (any other answer, or an ERROR payload that does not parse)."""
    if reply.type is not M.ERROR or reply.flags & FLAG_CLOSING:
        return None
    try:
        return decode_error(reply.payload)[0]
    except ProtocolError:
        return None
