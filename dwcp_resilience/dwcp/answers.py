"""The answers of a DWCP peer: pure (no I/O, no ``await``), one request frame in, the bytes of its
answer out.

:class:`PeerAnswers` is what :class:`~dwcp_resilience.dwcp.peer.DWCPPeer` calls between a read and
a write. Beside the mailboxes' core (:class:`~dwcp_resilience.dwcp.mailbox.Mailboxes`) it keeps
what the answers read and change: the peers that said HELLO (answered to DISCOVER after the seeds),
which recipients the relay routes (a SEND for one is not answered here: ``None``), and how many
requests were refused because their deadline had passed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ..core.validate import check_int
from .errors import ErrorCode, ProtocolError, UnexpectedFrame
from .mailbox import Mailboxes, StoreResult
from .protocol import (
    FLAG_DUPLICATE,
    FLAG_EMPTY,
    FLAG_REDELIVERED,
    FLAG_RELAYED,
    Frame,
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

__all__ = ("REQUESTS", "PeerAnswers")

M = MessageType
REQUESTS = frozenset({M.HELLO, M.SEND, M.RECEIVE, M.DELIVER_ACK, M.DISCOVER, M.PING})
"""The message types a peer answers (the others are replies)."""
_UNBOUNDED = 1 << 62  # an answer's payload is bounded by what the peer accepted, not re-checked


def _seed(value: str | PeerInfo) -> PeerInfo:
    if isinstance(value, PeerInfo):
        return value
    if isinstance(value, str) and value:
        return PeerInfo("", value)
    raise TypeError(f"seeds must be 'host:port' strings or PeerInfo, got {value!r}")


class PeerAnswers:
    """A peer's answers (see the module docstring).

    Args:
        node_id: the peer's name, said in its HELLO answers.
        mail: the mailboxes' core (replace :attr:`mail` when the peer loads another).
        seeds: peers known from the start (``"host:port"`` or :class:`PeerInfo`).
        max_known: how many peers that said HELLO are remembered (oldest forgotten first).
        max_payload: the largest payload the peer accepts (a message too large to deliver under
            it is refused at SEND).
        relay: what relays SENDs for its routes (``None``: everything is kept here).

    :ivar address: where the peer serves (said in HELLO; set by the peer while it serves).
    :ivar expired: requests refused with ``DEADLINE_EXCEEDED`` by :meth:`refuse_expired`.
    """

    __slots__ = (
        "_known",
        "_max_known",
        "address",
        "expired",
        "mail",
        "max_payload",
        "node_id",
        "relay",
        "seeds",
    )

    def __init__(
        self,
        node_id: str,
        mail: Mailboxes,
        *,
        seeds: Iterable[str | PeerInfo] = (),
        max_known: int = 1024,
        max_payload: int,
        relay: Relay | None = None,
    ) -> None:
        self.node_id = node_id
        self.mail = mail
        self.seeds = tuple(_seed(s) for s in seeds)
        self._max_known = check_int(max_known, "max_known_peers", min_value=0)
        self._known: OrderedDict[str, str] = OrderedDict()
        self.max_payload = max_payload
        self.relay = relay
        self.address = ""
        self.expired = 0

    def known_peers(self) -> tuple[PeerInfo, ...]:
        """What DISCOVER answers: the seeds, then the peers that said HELLO (newest last)."""
        seen = {p.address for p in self.seeds}
        learned = tuple(
            PeerInfo(n, a) for n, a in self._known.items() if a not in seen and n != self.node_id
        )
        return self.seeds + learned

    @property
    def known_count(self) -> int:
        """Peers remembered from their HELLO."""
        return len(self._known)

    def refuse_expired(self, frame: Frame, waited: float) -> bytes:
        """The ``DEADLINE_EXCEEDED`` answer to ``frame``, whose budget ran out while it waited
        ``waited`` seconds here."""
        self.expired += 1
        detail = (
            f"deadline passed while it waited here ({waited * 1000:.0f} of {frame.budget_ms} ms)"
        )
        return encode_frame(
            M.ERROR, frame.message_id, encode_error(ErrorCode.DEADLINE_EXCEEDED, detail)
        )

    def answer(self, holder: int, frame: Frame, arrived: float, now: float) -> bytes | None:
        """The answer to ``frame`` from connection ``holder``, read at loop time ``arrived`` (its
        budget counts from there) and answered at ``now`` (later only if it waited): the refusal
        ``DEADLINE_EXCEEDED`` if its deadline has passed, which touches nothing; ``None`` for a
        SEND the relay takes.

        Raises:
            ProtocolError: the frame is malformed, or a reply (its ``message_id`` set).
        """
        if (
            now > arrived  # it waited: its deadline may have passed (inf for no budget)
            and budget_deadline(frame.budget_ms, arrived) <= now
            and frame.type in REQUESTS
        ):
            return self.refuse_expired(frame, now - arrived)
        try:
            return self._answer(holder, frame, now)
        except ProtocolError as exc:
            if exc.message_id is None:
                exc.message_id = frame.message_id
            raise

    def _answer(self, holder: int, frame: Frame, now: float) -> bytes | None:
        kind, mid, payload = frame.type, frame.message_id, frame.payload
        if kind is M.SEND:
            recipient, sender, body = decode_send(payload)
            relay = self.relay
            if relay is not None and relay.routes_to(recipient) and not frame.flags & FLAG_RELAYED:
                return None
            if len(payload) - len(recipient.encode()) + 14 > self.max_payload:
                detail = "message too large to deliver under max_payload"
                return encode_frame(M.ERROR, mid, encode_error(ErrorCode.FRAME_TOO_LARGE, detail))
            result = self.mail.store(recipient, mid, sender, body)
            if result is StoreResult.FULL:
                detail = f"mailbox of {recipient!r} is full"
                return encode_frame(M.ERROR, mid, encode_error(ErrorCode.MAILBOX_FULL, detail))
            flags = FLAG_DUPLICATE if result is StoreResult.DUPLICATE else 0
            return encode_frame(M.ACK, mid, b"", flags)
        if kind is M.RECEIVE:
            message = self.mail.take(decode_receive(payload), holder, now)
            if message is None:
                return encode_frame(M.DELIVER, mid, b"", FLAG_EMPTY)
            body = encode_deliver(message.message_id, message.sender, message.body)
            flags = FLAG_REDELIVERED if message.deliveries > 1 else 0
            return encode_frame(M.DELIVER, mid, body, flags, max_payload=_UNBOUNDED)
        if kind is M.DELIVER_ACK:
            node, message_id = decode_deliver_ack(payload)
            self.mail.ack(node, message_id)
            return encode_frame(M.ACK, mid)
        if kind is M.PING:
            return encode_frame(M.PONG, mid, payload, max_payload=_UNBOUNDED)
        if kind is M.HELLO:
            info = decode_hello(payload)
            known = self._known
            if info.node_id and info.address and self._max_known:
                known[info.node_id] = info.address
                known.move_to_end(info.node_id)
                if len(known) > self._max_known:
                    known.popitem(last=False)
            return encode_frame(M.HELLO, mid, encode_hello(self.node_id, self.address))
        if kind is M.DISCOVER:
            peers = encode_peers(self.known_peers())
            return encode_frame(M.PEERS, mid, peers, max_payload=_UNBOUNDED)
        raise UnexpectedFrame(f"{kind.name} is a reply, not a request", message_id=mid)
