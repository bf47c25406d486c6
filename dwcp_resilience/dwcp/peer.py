"""``DWCPPeer``: a DWCP node serving mailboxes, discovery and pings over TCP on loopback.

One task per connection reads frames, answers each from the pure :class:`Mailboxes` core (no
``await`` between reading and writing state), and writes the answers of one read in one send. Each
connection costs at most one read buffer plus one frame (``max_payload``), and there are at most
``max_connections`` of them (``max_connections_per_source`` per remote address). Who gets a slot,
and who is closed to make room (idle, trickling frames, eviction of the longest-unproductive
connection under pressure) is :class:`~dwcp_resilience.dwcp.slots.ConnectionSlots`; a connection
that finds no slot gets ``ERROR BUSY`` with a ``retry_after`` and is closed.

A misbehaving connection (garbage, a 2**63 length prefix, a partial frame then EOF, an unknown type, a
frame over the maximum, a reply type sent as a request, a half-closed socket mid-frame) gets an ERROR
frame addressed to the offending request where its header could be read, and is closed; its leases
are released, so the messages it was handed out wait again. Every other connection is unaffected.

Mailboxes live in memory by default. With ``store_path=`` they are kept in SQLite
(:class:`~dwcp_resilience.dwcp.durable.DurableMailboxes`): the file is loaded when the peer starts
serving, and the answers to SEND, RECEIVE and DELIVER_ACK are written only once their changes are
committed, so a SEND's ACK survives a crash of the peer (and a power loss, with the default
``store_synchronous="FULL"``). A failed commit stops the peer (``serve`` raises
:class:`~dwcp_resilience.dwcp.journal.MailboxStoreError`); a restart recovers the committed state.

Deadlines: a request's header carries the time its sender had left (the budget); the peer counts
it from the read that brought the frame, and refuses a request whose deadline passed before it got
to it with ``ERROR DEADLINE_EXCEEDED``, touching nothing (no mailbox, no store). A request is
answered as soon as its frame is read, so one waits here only behind a SEND being relayed on the
same connection. A request that was carried out is answered, even late: a stored SEND is
acknowledged once committed, whatever its deadline.

Relaying: with ``routes={recipient: "host:port"}``, a SEND for a routed recipient is relayed to the
peer that keeps its mailbox, with what is left of its deadline, and answered with that peer's
answer (:mod:`~dwcp_resilience.dwcp.relay`); its connection goes on being read meanwhile.

Lifetime: ``async with DWCPPeer("a") as peer:`` (then ``peer.port``), or ``await tg.start(peer.serve)``
inside your own task group, or ``await peer.start()`` / ``await peer.aclose()`` from the same task.

This module is over 450 lines because it is one class whose accept loop, connection loop and
request answers share the peer's state; the decisions live in the pure cores it calls
(:mod:`~dwcp_resilience.dwcp.mailbox`, :mod:`~dwcp_resilience.dwcp.slots`,
:mod:`~dwcp_resilience.dwcp.protocol`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import count

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ..core.clock import loop_time
from ..core.validate import check_int, check_name
from ._service import BackgroundService, accept_forever
from .durable import DurableMailboxes
from .errors import ErrorCode, ProtocolError, UnexpectedFrame
from .journal import MailboxStoreError, Synchronous
from .mailbox import Mailboxes, StoreResult
from .protocol import (
    DEFAULT_MAX_PAYLOAD,
    FLAG_CLOSING,
    FLAG_DUPLICATE,
    FLAG_EMPTY,
    FLAG_REDELIVERED,
    FLAG_RELAYED,
    Frame,
    FrameDecoder,
    MessageType,
    PeerInfo,
    budget_deadline,
    decode_deliver_ack,
    decode_hello,
    decode_receive,
    decode_send,
    encode_deliver,
    encode_error,
    encode_frame,
    encode_hello,
    encode_peers,
)
from .relay import Relay
from .slots import ConnectionSlots, Slot

__all__ = ("DWCPPeer", "PeerStatistics")

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_NO_ID = bytes(16)
_ERROR_SEND_TIMEOUT = 1.0
M = MessageType
# The requests whose answers wait for a durable store's commit (a duplicate SEND included: its
# first copy may still be in flight).
_COMMIT_FIRST = frozenset({M.SEND, M.RECEIVE, M.DELIVER_ACK})
_REQUESTS = frozenset({M.HELLO, M.SEND, M.RECEIVE, M.DELIVER_ACK, M.DISCOVER, M.PING})


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """A snapshot of a peer's counters (``messages_*`` and ``*_held`` count mailbox messages)."""

    node_id: str
    connections_active: int
    connections_total: int
    connections_rejected: int
    frames_received: int
    frames_sent: int
    bytes_received: int
    bytes_sent: int
    messages_stored: int
    messages_delivered: int
    deliveries: int
    redeliveries: int
    duplicates: int
    mailbox_full: int
    messages_held: int
    leases: int
    protocol_errors: int
    connection_errors: int
    accept_errors: int
    buffered_bytes: int
    known_peers: int
    deadline_exceeded: int  # requests answered DEADLINE_EXCEEDED (here or at the relay)
    relayed: int  # SENDs the next hop acknowledged
    relay_failures: int  # SENDs answered FORWARD_FAILED


class _Conn:
    """One connection: its decoder, the scope that closes it, and its slot; with a relay, the task
    group of its SENDs being relayed and the lock their answers and the loop's are written under."""

    __slots__ = ("answering", "decoder", "relaying", "scope", "send_lock", "slot", "tg")

    def __init__(self, decoder: FrameDecoder, scope: anyio.CancelScope, slot: Slot) -> None:
        self.decoder = decoder
        self.scope = scope
        self.slot = slot
        self.answering = False  # the loop is answering what it read
        self.relaying = 0  # SENDs being relayed
        self.send_lock: anyio.Lock | None = None
        self.tg: anyio.abc.TaskGroup | None = None


def _source(stream: anyio.abc.SocketStream) -> str:
    """The remote host of ``stream`` (its per-source slot count is kept under that name)."""
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except (anyio.TypedAttributeLookupError, OSError):
        return ""
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _seed(value: str | PeerInfo) -> PeerInfo:
    if isinstance(value, PeerInfo):
        return value
    if isinstance(value, str) and value:
        return PeerInfo("", value)
    raise TypeError(f"seeds must be 'host:port' strings or PeerInfo, got {value!r}")


class DWCPPeer(BackgroundService):
    """A DWCP peer: ``DWCPPeer(node_id, *, host="127.0.0.1", port=0, seeds=())``.

    Args:
        node_id: this peer's name, sent in HELLO.
        host, port: where to listen (``port=0``: a free port; read ``peer.port`` after start).
        seeds: peers known from the start (``"host:port"`` or :class:`PeerInfo`), answered to DISCOVER.
        mailbox_capacity: messages held per node; a SEND over it gets ``ERROR MAILBOX_FULL``.
        max_nodes, dedup_window, lease_timeout: see :class:`Mailboxes`.
        max_payload: the largest frame payload accepted.
        max_connections: open connections at once; more get ``ERROR BUSY`` and are closed.
        max_connections_per_source: open connections per remote address (``None``: no cap).
        idle_timeout: close a connection that sends nothing between frames for this long
            (``None``: never).
        frame_timeout: close a connection whose frame has not arrived whole this long after its
            first byte (a slowloris writer), however many bytes trickle in.
        send_timeout: close a connection that does not read its answers for this long.
        evict_after: when no slot is free, close the connection that has been unproductive
            (idle, or inside one frame) longest if that lasted this long (``inf``: never).
        max_known_peers: how many peers that said HELLO are remembered (oldest forgotten first).
        store_path: ``None`` (default): mailboxes in memory, lost with the process. A file path:
            mailboxes in SQLite there (see :class:`DurableMailboxes`), loaded at each start.
        store_synchronous: ``"FULL"`` (default: an acknowledged message survives power loss) or
            ``"NORMAL"`` (it survives a crash of the process only); used with ``store_path``.
        routes: recipient node id -> ``"host:port"`` of the peer that keeps its mailbox: SENDs for
            these recipients are relayed there (see :mod:`~dwcp_resilience.dwcp.relay`).
        max_forwards, forward_timeout: SENDs relayed at once, and the longest a relayed SEND may
            take whatever its deadline (``inf``: no bound of the relay's own).
    """

    def __init__(
        self,
        node_id: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seeds: Iterable[str | PeerInfo] = (),
        mailbox_capacity: int = 10_000,
        max_nodes: int = 10_000,
        dedup_window: int = 100_000,
        lease_timeout: float = 30.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_connections: int = 1024,
        max_connections_per_source: int | None = 256,
        idle_timeout: float | None = 60.0,
        frame_timeout: float = 10.0,
        send_timeout: float = 10.0,
        evict_after: float = 1.0,
        max_known_peers: int = 1024,
        store_path: str | os.PathLike[str] | None = None,
        store_synchronous: Synchronous = "FULL",
        routes: Mapping[str, str] | None = None,
        max_forwards: int = 256,
        forward_timeout: float = 30.0,
    ) -> None:
        self.node_id = check_name(node_id, "node_id")
        self.host = check_name(host, "host")
        self._requested_port = check_int(port, "port", min_value=0, max_value=65535)
        self.seeds = tuple(_seed(s) for s in seeds)
        self._mail = Mailboxes(
            capacity=mailbox_capacity,
            max_nodes=max_nodes,
            dedup_window=dedup_window,
            lease_timeout=lease_timeout,
        )
        self._store = (
            None
            if store_path is None
            else DurableMailboxes(
                store_path,
                capacity=mailbox_capacity,
                max_nodes=max_nodes,
                dedup_window=dedup_window,
                lease_timeout=lease_timeout,
                synchronous=store_synchronous,
            )
        )
        self._max_payload = check_int(max_payload, "max_payload", min_value=0)
        relay = Relay(
            self.node_id,
            {} if routes is None else routes,
            max_forwards=max_forwards,
            forward_timeout=forward_timeout,
            max_payload=self._max_payload,
        )  # built even without routes: it validates the settings
        self._relay = relay if relay.routes else None
        self._slots = ConnectionSlots(
            max_connections=max_connections,
            max_per_source=max_connections_per_source,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
            send_timeout=send_timeout,
            evict_after=evict_after,
        )
        self._max_known = check_int(max_known_peers, "max_known_peers", min_value=0)
        self._known: OrderedDict[str, str] = OrderedDict()
        self._conns: dict[int, _Conn] = {}
        self._ids = count(1)
        self._port: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._total = self._protocol_errors = self._connection_errors = 0
        self._accept_errors = self._expired = 0
        self._frames_in = self._frames_out = self._bytes_in = self._bytes_out = 0

    # -- reading -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (``RuntimeError`` before it started)."""
        if self._port is None:
            raise RuntimeError(f"peer {self.node_id!r} is not serving")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` it serves on (empty before start)."""
        return "" if self._port is None else f"{self.host}:{self._port}"

    @property
    def mailboxes(self) -> Mailboxes:
        """The pure mailbox core (read it; change it only through the protocol). With a
        ``store_path``, the one loaded at the last start."""
        return self._mail

    @property
    def store(self) -> DurableMailboxes | None:
        """The SQLite store given by ``store_path`` (``None`` in memory)."""
        return self._store

    @property
    def relay(self) -> Relay | None:
        """What relays the SENDs of ``routes`` (``None`` without routes)."""
        return self._relay

    def known_peers(self) -> tuple[PeerInfo, ...]:
        """What DISCOVER answers: the seeds, then the peers that said HELLO (newest last)."""
        seen = {p.address for p in self.seeds}
        learned = tuple(
            PeerInfo(n, a) for n, a in self._known.items() if a not in seen and n != self.node_id
        )
        return self.seeds + learned

    def statistics(self) -> PeerStatistics:
        """A snapshot of the counters."""
        mail = self._mail
        relayed = self._relay.statistics() if self._relay is not None else None
        return PeerStatistics(
            self.node_id,
            len(self._conns),
            self._total,
            self._slots.rejected,
            self._frames_in,
            self._frames_out,
            self._bytes_in,
            self._bytes_out,
            mail.stored,
            mail.delivered,
            mail.deliveries,
            mail.redeliveries,
            mail.duplicates,
            mail.rejected_full,
            len(mail),
            mail.leases,
            self._protocol_errors,
            self._connection_errors,
            self._accept_errors,
            sum(c.decoder.buffered for c in self._conns.values()),
            len(self._known),
            self._expired + (relayed.expired if relayed else 0),
            relayed.relayed if relayed else 0,
            relayed.failed if relayed else 0,
        )

    def __repr__(self) -> str:
        where = self.address or "not serving"
        return (
            f"<DWCPPeer {self.node_id!r} {where} connections={len(self._conns)} "
            f"held={len(self._mail)} protocol_errors={self._protocol_errors}>"
        )

    # -- lifetime ------------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)`` once listening (and,
        with a ``store_path``, once the stored mailboxes are loaded).

        Raises:
            MailboxStoreError: the store cannot be opened; or, inside an ``ExceptionGroup`` from
                the peer's task group, a commit failed (fail-stop).
        """
        store = self._store
        if store is not None:
            self._mail = await store.open()
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self._requested_port
            )
            async with listener, anyio.create_task_group() as tg:
                self._port = listener.extra(SocketAttribute.local_port)
                if self._relay is not None:
                    self._relay.open(self.address)
                tg.start_soon(self._watchdog)
                task_status.started(self._port)
                try:
                    await accept_forever(
                        listener,
                        self._handle,
                        tg,
                        name=f"peer {self.node_id!r}",
                        on_capacity_error=self._on_accept_error,
                    )
                finally:
                    self._port = None
        finally:
            if self._relay is not None:
                await self._relay.aclose()
            if store is not None:
                await store.aclose()  # commits the releases of the closed connections

    def _on_accept_error(self, exc: OSError) -> None:
        self._accept_errors += 1

    async def _watchdog(self) -> None:
        """One task closes the connections past their idle, frame or send timeout."""
        slots = self._slots
        period = slots.period()
        while True:
            await anyio.sleep(period)
            slots.expire(loop_time())

    def _already_serving(self) -> str:
        return f"peer {self.node_id!r} is already serving"

    # -- connections ---------------------------------------------------------------------------------

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        cid = next(self._ids)
        scope = anyio.CancelScope()
        slot = self._slots.admit(_source(stream), loop_time(), scope.cancel)
        if not isinstance(slot, Slot):
            await self._send_error(
                stream, _NO_ID, ErrorCode.BUSY, "too many connections", retry_after=slot
            )
            await anyio.aclose_forcefully(stream)
            return
        self._total += 1
        conn = self._conns[cid] = _Conn(FrameDecoder(self._max_payload), scope, slot)
        try:
            with scope:
                if self._relay is None:
                    await self._serve_connection(cid, stream, conn)
                else:
                    await self._serve_relaying(cid, stream, conn)
            if slot.closed_by is not None:
                self._connection_errors += 1  # a timeout, or evicted to make room
        except ProtocolError as exc:
            self._protocol_errors += 1
            await self._send_error(stream, exc.message_id or _NO_ID, exc.code, str(exc))
        except MailboxStoreError:
            raise  # fail-stop: the peer's memory holds changes its disk does not
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._connection_errors += 1  # reset, broken pipe
        except Exception:  # never let one connection take the server down
            log.exception("peer %r: connection %d failed", self.node_id, cid)
            self._connection_errors += 1
        finally:
            self._slots.release(slot)
            del self._conns[cid]
            self._mail.release(cid)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)

    async def _serve_relaying(self, cid: int, stream: anyio.abc.SocketStream, conn: _Conn) -> None:
        """:meth:`_serve_connection` with a task group for its SENDs being relayed, which end with
        the connection (on end of stream, once they are answered)."""
        failure: Exception | None = None
        conn.send_lock = anyio.Lock(fast_acquire=True)
        async with anyio.create_task_group() as tg:
            conn.tg = tg
            try:
                await self._serve_connection(cid, stream, conn)
            except Exception as exc:  # out of the task group, which would wrap it in a group
                failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _serve_connection(
        self, cid: int, stream: anyio.abc.SocketStream, conn: _Conn
    ) -> None:
        decoder, slot = conn.decoder, conn.slot
        store = self._store
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                decoder.eof()  # IncompleteFrame if the stream ended inside a frame
                return
            arrived = loop_time()  # the frames' budgets count from here
            self._bytes_in += len(data)
            if not decoder.buffered:
                slot.frame_since = arrived  # a frame begins: frame_timeout runs
            decoder.feed(data)
            slot.busy = conn.answering = True
            replies: list[bytes] = []
            error: ProtocolError | None = None
            commit = False
            consumed = 0
            waited, now = False, arrived  # only a wait here can make a deadline pass
            try:
                while (frame := decoder.next_frame()) is not None:
                    self._frames_in += 1
                    consumed += 1
                    budget = frame.budget_ms
                    if (
                        waited
                        and frame.type in _REQUESTS
                        and budget_deadline(budget, arrived) <= now  # inf for no budget
                    ):
                        replies.append(self._refuse_expired(frame, budget, now - arrived))
                        continue
                    reply = self._answer(cid, frame)
                    if reply is None:  # a SEND to relay: it answers when the next hop has
                        reply = await self._relay_send(stream, conn, frame, arrived)
                        waited, now = True, loop_time()
                        if reply is None:
                            continue
                    replies.append(reply)
                    if store is not None and frame.type in _COMMIT_FIRST:
                        commit = True
            except ProtocolError as exc:
                error = exc  # answer the good frames before it first
            if commit:
                assert store is not None
                await store.commit()  # group commit with the other connections' changes
            if replies:
                await self._write(stream, conn, b"".join(replies), len(replies))
            if error is not None:
                raise error
            conn.answering = False
            slot.busy = conn.relaying > 0
            if consumed:
                slot.since = loop_time()  # idle from now
                # What is left (if anything) is the start of the next frame: its time runs now.
                slot.frame_since = slot.since if decoder.buffered else None

    async def _write(
        self, stream: anyio.abc.SocketStream, conn: _Conn, out: bytes, frames: int
    ) -> None:
        """Send ``out`` (``frames`` answers), under the connection's lock when it has one."""
        slot, lock = conn.slot, conn.send_lock
        if lock is not None:
            await lock.acquire()
        try:
            slot.since = loop_time()
            slot.sending = True
            await stream.send(out)
            slot.sending = False
        finally:
            if lock is not None:
                lock.release()
        self._frames_out += frames
        self._bytes_out += len(out)

    def _refuse_expired(self, frame: Frame, budget: int, waited: float) -> bytes:
        self._expired += 1
        detail = f"deadline passed while it waited here ({waited * 1000:.0f} of {budget} ms)"
        payload = encode_error(ErrorCode.DEADLINE_EXCEEDED, detail)
        return encode_frame(M.ERROR, frame.message_id, payload)

    async def _relay_send(
        self, stream: anyio.abc.SocketStream, conn: _Conn, frame: Frame, arrived: float
    ) -> bytes | None:
        """Start relaying ``frame`` once a forwarding slot is free; the answer to send now if its
        deadline passed first, else ``None`` (its task answers)."""
        relay, tg = self._relay, conn.tg
        assert relay is not None and tg is not None
        deadline = budget_deadline(frame.budget_ms, arrived)
        if not await relay.admit(deadline):
            return self._refuse_expired(frame, frame.budget_ms, loop_time() - arrived)
        conn.relaying += 1
        tg.start_soon(self._relayed, stream, conn, frame, deadline)
        return None

    async def _relayed(
        self, stream: anyio.abc.SocketStream, conn: _Conn, frame: Frame, deadline: float
    ) -> None:
        """One relayed SEND: forward it, then write the next hop's answer to our client."""
        assert self._relay is not None
        try:
            reply = await self._relay.forward(frame, deadline)
            await self._write(stream, conn, reply, 1)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # our client is gone: its connection is closing
        except Exception:  # never let one relayed SEND take its connection down
            log.exception("peer %r: relaying a SEND failed", self.node_id)
        finally:
            conn.relaying -= 1
            if not conn.relaying and not conn.answering:
                conn.slot.busy = False
                conn.slot.since = loop_time()

    async def _send_error(
        self,
        stream: anyio.abc.SocketStream,
        message_id: bytes,
        code: ErrorCode,
        detail: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        payload = encode_error(code, detail, retry_after)
        frame = encode_frame(M.ERROR, message_id, payload, FLAG_CLOSING)
        with anyio.move_on_after(_ERROR_SEND_TIMEOUT):
            try:
                await stream.send(frame)
                await stream.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            self._frames_out += 1
            self._bytes_out += len(frame)

    # -- the answers (pure: no await) ----------------------------------------------------------------

    def _answer(self, cid: int, frame: Frame) -> bytes | None:
        """The answer to ``frame``, or ``None`` for a SEND to relay."""
        try:
            return self._answer_frame(cid, frame)
        except ProtocolError as exc:
            if exc.message_id is None:
                exc.message_id = frame.message_id
            raise

    def _answer_frame(self, cid: int, frame: Frame) -> bytes | None:
        kind, mid, payload = frame.type, frame.message_id, frame.payload
        if kind is M.SEND:
            recipient, sender, body = decode_send(payload)
            relay = self._relay
            if relay is not None and relay.routes_to(recipient) and not frame.flags & FLAG_RELAYED:
                return None
            if len(payload) - len(recipient.encode()) + 14 > self._max_payload:
                detail = "message too large to deliver under max_payload"
                return encode_frame(M.ERROR, mid, encode_error(ErrorCode.FRAME_TOO_LARGE, detail))
            result = self._mail.store(recipient, mid, sender, body)
            if result is StoreResult.FULL:
                detail = f"mailbox of {recipient!r} is full"
                return encode_frame(M.ERROR, mid, encode_error(ErrorCode.MAILBOX_FULL, detail))
            flags = FLAG_DUPLICATE if result is StoreResult.DUPLICATE else 0
            return encode_frame(M.ACK, mid, b"", flags)
        if kind is M.RECEIVE:
            message = self._mail.take(decode_receive(payload), cid, loop_time())
            if message is None:
                return encode_frame(M.DELIVER, mid, b"", FLAG_EMPTY)
            body = encode_deliver(message.message_id, message.sender, message.body)
            flags = FLAG_REDELIVERED if message.deliveries > 1 else 0
            return encode_frame(M.DELIVER, mid, body, flags, max_payload=1 << 62)
        if kind is M.DELIVER_ACK:
            node, message_id = decode_deliver_ack(payload)
            self._mail.ack(node, message_id)
            return encode_frame(M.ACK, mid)
        if kind is M.PING:
            return encode_frame(M.PONG, mid, payload, max_payload=1 << 62)
        if kind is M.HELLO:
            info = decode_hello(payload)
            if info.node_id and info.address and self._max_known:
                self._known[info.node_id] = info.address
                self._known.move_to_end(info.node_id)
                if len(self._known) > self._max_known:
                    self._known.popitem(last=False)
            return encode_frame(M.HELLO, mid, encode_hello(self.node_id, self.address))
        if kind is M.DISCOVER:
            return encode_frame(M.PEERS, mid, encode_peers(self.known_peers()), max_payload=1 << 62)
        raise UnexpectedFrame(f"{kind.name} is a reply, not a request", message_id=mid)
