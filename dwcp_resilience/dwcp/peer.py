"""``DWCPPeer``: a DWCP node serving mailboxes, discovery and pings over TCP on loopback.

One task per connection (:class:`~dwcp_resilience.dwcp.serving.PeerConnection`) reads frames,
answers each from the pure :class:`~dwcp_resilience.dwcp.answers.PeerAnswers` over the
:class:`Mailboxes` core (no ``await`` between reading and writing state), and writes the answers of
one read in one send. Each connection costs at most one read buffer plus one frame
(``max_payload``), and there are at most ``max_connections`` of them
(``max_connections_per_source`` per remote address). Who gets a slot, and who is closed to make
room (idle, trickling frames, eviction of the longest-unproductive connection under pressure) is
:class:`~dwcp_resilience.dwcp.slots.ConnectionSlots`; a connection that finds no slot gets
``ERROR BUSY`` with a ``retry_after`` and is closed.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import count

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ..core.clock import loop_time
from ..core.validate import check_int, check_name
from ._service import BackgroundService, accept_forever
from .answers import PeerAnswers
from .durable import DurableMailboxes
from .errors import ErrorCode, ProtocolError
from .journal import MailboxStoreError, Synchronous
from .mailbox import Mailboxes
from .protocol import DEFAULT_MAX_PAYLOAD, PeerInfo
from .relay import Relay
from .serving import PeerConnection, Traffic, send_closing_error
from .slots import ConnectionSlots, Slot

__all__ = ("DWCPPeer", "PeerStatistics")

log = logging.getLogger(__name__)

_NO_ID = bytes(16)


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


def _source(stream: anyio.abc.SocketStream) -> str:
    """The remote host of ``stream`` (its per-source slot count is kept under that name)."""
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except (anyio.TypedAttributeLookupError, OSError):
        return ""
    return str(address[0]) if isinstance(address, tuple) else str(address)


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
        mail = Mailboxes(
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
        self._answers = PeerAnswers(
            self.node_id,
            mail,
            seeds=seeds,
            max_known=max_known_peers,
            max_payload=self._max_payload,
            relay=self._relay,
        )
        self._slots = ConnectionSlots(
            max_connections=max_connections,
            max_per_source=max_connections_per_source,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
            send_timeout=send_timeout,
            evict_after=evict_after,
        )
        self._conns: dict[int, PeerConnection] = {}
        self._ids = count(1)
        self._port: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._total = self._protocol_errors = self._connection_errors = 0
        self._accept_errors = 0
        self._traffic = Traffic()

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
    def seeds(self) -> tuple[PeerInfo, ...]:
        """The peers known from the start."""
        return self._answers.seeds

    @property
    def mailboxes(self) -> Mailboxes:
        """The pure mailbox core (read it; change it only through the protocol). With a
        ``store_path``, the one loaded at the last start."""
        return self._answers.mail

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
        return self._answers.known_peers()

    def statistics(self) -> PeerStatistics:
        """A snapshot of the counters."""
        answers, traffic = self._answers, self._traffic
        mail = answers.mail
        relayed = self._relay.statistics() if self._relay is not None else None
        return PeerStatistics(
            self.node_id,
            len(self._conns),
            self._total,
            self._slots.rejected,
            traffic.frames_in,
            traffic.frames_out,
            traffic.bytes_in,
            traffic.bytes_out,
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
            answers.known_count,
            answers.expired + (relayed.expired if relayed else 0),
            relayed.relayed if relayed else 0,
            relayed.failed if relayed else 0,
        )

    def __repr__(self) -> str:
        where = self.address or "not serving"
        return (
            f"<DWCPPeer {self.node_id!r} {where} connections={len(self._conns)} "
            f"held={len(self._answers.mail)} protocol_errors={self._protocol_errors}>"
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
            self._answers.mail = await store.open()
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self._requested_port
            )
            async with listener, anyio.create_task_group() as tg:
                self._port = listener.extra(SocketAttribute.local_port)
                self._answers.address = self.address
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
                    self._answers.address = ""
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
            detail = "too many connections"
            await send_closing_error(
                stream, _NO_ID, ErrorCode.BUSY, detail, self._traffic, retry_after=slot
            )
            await anyio.aclose_forcefully(stream)
            return
        self._total += 1
        conn = self._conns[cid] = PeerConnection(
            cid,
            stream,
            slot,
            max_payload=self._max_payload,
            answers=self._answers,
            store=self._store,
            relay=self._relay,
            traffic=self._traffic,
        )
        try:
            with scope:
                await conn.serve()
            if slot.closed_by is not None:
                self._connection_errors += 1  # a timeout, or evicted to make room
        except ProtocolError as exc:
            self._protocol_errors += 1
            mid = exc.message_id or _NO_ID
            await send_closing_error(stream, mid, exc.code, str(exc), self._traffic)
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
            self._answers.mail.release(cid)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
