"""The DWCP example, for real: a framed protocol over TCP, peers with mailboxes, a client
connection, and a chaos proxy that injects network faults.

- :mod:`.protocol`: frames (40-byte header with the request's deadline budget, bounded payload,
  checksums), payload codecs, :class:`FrameDecoder`;
- :mod:`.errors`: ``ProtocolError`` (malformed bytes), ``TransportError`` (the socket failed),
  ``PeerError`` (the peer answered ERROR; ``PeerDeadlineExceeded``), and :func:`is_retryable`;
- :mod:`.transport`: :class:`DWCPConnection`, one request/response per operation, pipelined, each
  request carrying what is left of the deadline in force;
- :mod:`.mailbox`: the peer's pure core (bounded mailboxes, de-duplication, delivery leases);
- :mod:`.journal` and :mod:`.durable`: that core kept in SQLite (WAL mode; group commit in a
  worker thread: :class:`DurableMailboxes`);
- :mod:`.peer`: :class:`DWCPPeer`, a TCP server on loopback; :mod:`.serving` its connections,
  :mod:`.answers` its pure answers, :mod:`.relay` the SENDs it relays (:class:`Relay`);
- :mod:`.proxy`: :class:`ChaosProxy`; :mod:`.faults`: the faults it injects and its schedules;
- :mod:`.client`: :class:`DWCPResilientClient`, every operation through a ResilienceManager;
- :mod:`.scenario` and :mod:`.demo`: the traffic scenario and the ``make demo`` orchestration.
"""

from .client import CONNECT, DISCOVER, RECEIVE, SEND, DWCPResilienceConfig, DWCPResilientClient
from .durable import DurableMailboxes, DurableStatistics
from .errors import (
    BadChecksum,
    BadMagic,
    BadPayload,
    ConnectFailed,
    ConnectionClosed,
    ConnectionLost,
    ConnectionReset,
    ConnectTimeout,
    DWCPError,
    ErrorCode,
    FrameRejected,
    FrameTooLarge,
    IncompleteFrame,
    PeerDeadlineExceeded,
    PeerError,
    ProtocolError,
    RequestExpired,
    TransportError,
    UnexpectedFrame,
    UnknownType,
    UnsupportedVersion,
    is_repeat_fault,
    is_retryable,
    mark_repeat_fault,
)
from .faults import Bandwidth, Corrupt, Drop, Fault, Latency, ResetPeer, Slicer, Stall
from .journal import MailboxStoreError, SQLiteJournal
from .mailbox import Mailboxes, MailboxJournal, StoredMessage, StoreResult
from .peer import DWCPPeer, PeerStatistics
from .protocol import (
    CHECKSUM_SIZE,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Delivery,
    Frame,
    FrameDecoder,
    MessageType,
    PeerInfo,
    encode_frame,
    new_message_id,
)
from .proxy import ChaosProxy, ProxyStatistics
from .relay import Relay, RelayStatistics
from .transport import ConnectionStatistics, DWCPConnection

__all__ = (
    "BadChecksum",
    "BadMagic",
    "BadPayload",
    "Bandwidth",
    "Corrupt",
    "CONNECT",
    "ChaosProxy",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionReset",
    "ConnectionStatistics",
    "CHECKSUM_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "DISCOVER",
    "DWCPConnection",
    "DWCPError",
    "DWCPPeer",
    "DWCPResilienceConfig",
    "DWCPResilientClient",
    "Delivery",
    "Drop",
    "DurableMailboxes",
    "DurableStatistics",
    "ErrorCode",
    "Fault",
    "Frame",
    "FrameDecoder",
    "FrameRejected",
    "FrameTooLarge",
    "HEADER_SIZE",
    "IncompleteFrame",
    "Latency",
    "MailboxJournal",
    "MailboxStoreError",
    "Mailboxes",
    "MessageType",
    "PeerDeadlineExceeded",
    "PeerError",
    "PeerInfo",
    "PeerStatistics",
    "ProtocolError",
    "ProxyStatistics",
    "RECEIVE",
    "Relay",
    "RelayStatistics",
    "RequestExpired",
    "ResetPeer",
    "SEND",
    "SQLiteJournal",
    "Slicer",
    "Stall",
    "StoreResult",
    "StoredMessage",
    "TransportError",
    "UnexpectedFrame",
    "UnknownType",
    "UnsupportedVersion",
    "encode_frame",
    "is_repeat_fault",
    "is_retryable",
    "mark_repeat_fault",
    "new_message_id",
)
