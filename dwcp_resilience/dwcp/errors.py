"""The errors of the DWCP example: malformed bytes, broken connections, and answers from the peer.

Three kinds, kept apart so a breaker or a retry can classify them::

    ResilienceError
    └── DWCPError                         root of the DWCP example's own errors
        ├── ProtocolError                 malformed bytes on the wire; that connection is unusable
        │   ├── BadMagic                  the frame does not start with b"DWCP" (garbage, HTTP, TLS)
        │   ├── UnsupportedVersion        a header version we do not speak
        │   ├── UnknownType               a message type we do not know
        │   ├── FrameTooLarge             a declared payload over the maximum (e.g. a 2**63 prefix)
        │   ├── IncompleteFrame           end of stream in the middle of a frame
        │   ├── BadPayload                a well-framed payload that does not parse
        │   └── UnexpectedFrame           a frame that makes no sense here (a reply to nothing, ...)
        ├── TransportError                (also ConnectionError, so OSError) the socket failed
        │   ├── ConnectFailed             could not connect (refused, unreachable)
        │   │   └── ConnectTimeout        (also TimeoutError) the connect timeout fired
        │   └── ConnectionLost            an established connection broke
        │       ├── ConnectionReset       RST / broken pipe
        │       └── ConnectionClosed      end of stream at a frame boundary, or closed locally
        ├── PeerError                     the peer answered with an ERROR frame (``code``, ``detail``)
        │   └── PeerDeadlineExceeded      (also DeadlineExceeded, so TimeoutError) code
        │                                 DEADLINE_EXCEEDED: the request's budget ran out there
        └── RequestExpired                (also DeadlineExceeded) the deadline had passed before
                                          the request was sent: nothing was sent

:func:`is_retryable` says which of them a retry may resend: every ``TransportError`` and
``ProtocolError`` (the connection is dropped, the request never got a valid answer, and DWCP requests
are idempotent by message id), and a ``PeerError`` whose code is transient (mailbox full, busy,
forward failed). Not a ``PeerDeadlineExceeded``: the budget it carried was the caller's.
"""

from __future__ import annotations

from enum import IntEnum

from ..core.errors import DeadlineExceeded, ResilienceError

__all__ = (
    "BadChecksum",
    "BadMagic",
    "BadPayload",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionReset",
    "DWCPError",
    "ErrorCode",
    "FrameRejected",
    "FrameTooLarge",
    "IncompleteFrame",
    "PeerDeadlineExceeded",
    "PeerError",
    "ProtocolError",
    "RequestExpired",
    "TransportError",
    "UnexpectedFrame",
    "UnknownType",
    "UnsupportedVersion",
    "is_repeat_fault",
    "is_retryable",
    "mark_repeat_fault",
)


class ErrorCode(IntEnum):
    """The code carried by an ERROR frame (u16 on the wire)."""

    BAD_FRAME = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_TYPE = 3
    FRAME_TOO_LARGE = 4
    INCOMPLETE_FRAME = 5
    BAD_PAYLOAD = 6
    UNEXPECTED_FRAME = 7
    MAILBOX_FULL = 8
    BUSY = 9
    INTERNAL = 10
    BAD_CHECKSUM = 11
    DEADLINE_EXCEEDED = 12
    """The request's deadline (its header's budget) passed before the peer could do it, or, at a
    relay, before the next hop answered (the next hop may have stored it then)."""
    FORWARD_FAILED = 13
    """A relay could not hand the request to the next hop (or got no answer within its own
    ``forward_timeout``); transient: a resend with the same message id is stored once."""


_TRANSIENT_CODES = frozenset(
    {ErrorCode.MAILBOX_FULL, ErrorCode.BUSY, ErrorCode.INTERNAL, ErrorCode.FORWARD_FAILED}
)
PROTOCOL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.INCOMPLETE_FRAME,
        ErrorCode.BAD_PAYLOAD,
        ErrorCode.UNEXPECTED_FRAME,
        ErrorCode.BAD_CHECKSUM,
    }
)
"""The codes that say a frame could not be read (as opposed to a refusal of the request)."""


class DWCPError(ResilienceError):
    """Root of the DWCP example's errors."""


class ProtocolError(DWCPError):
    """Bytes on the wire that are not a valid DWCP frame; the connection carrying them is unusable.

    ``message_id`` is the id of the offending frame when its header could be read (so the peer can
    address its ERROR answer), else ``None``.
    """

    code: ErrorCode = ErrorCode.BAD_FRAME

    def __init__(self, detail: str, *, message_id: bytes | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.message_id = message_id

    def __str__(self) -> str:
        return self.detail


class BadChecksum(ProtocolError):
    """A frame's header or payload does not match its checksum: it was corrupted in transit.

    The receiver answers ERROR ``BAD_CHECKSUM`` and closes the connection. Nothing in it can be
    trusted, not even its message id, so a client that gets ``BAD_CHECKSUM`` for a request
    raises this (a protocol error on its connection, retried on a new one), not a
    :class:`PeerError`.
    """

    code = ErrorCode.BAD_CHECKSUM


class FrameRejected(ProtocolError):
    """The peer could not read a frame of ours (``code``: ``BAD_CHECKSUM`` when it was corrupted
    on the way, ``BAD_FRAME``, ``UNSUPPORTED_VERSION``, ...) and closed the connection: a fault of
    that connection, retried on a new one, not a refusal of the request."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"the peer could not read our frame ({_code_name(code)}): {detail}")
        self.code = code  # type: ignore[assignment]  # the peer's code, possibly unknown here
        self.args = (code, detail)  # what copy.copy rebuilds it from


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class BadMagic(ProtocolError):
    """The stream does not start a frame with the magic bytes: garbage, HTTP, a TLS alert."""

    code = ErrorCode.BAD_FRAME


class UnsupportedVersion(ProtocolError):
    """The header names a protocol version this side does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownType(ProtocolError):
    """The header names a message type this side does not know."""

    code = ErrorCode.UNKNOWN_TYPE


class FrameTooLarge(ProtocolError):
    """The declared payload length is over the maximum (checked at the header, before any body)."""

    code = ErrorCode.FRAME_TOO_LARGE


class IncompleteFrame(ProtocolError):
    """The stream ended in the middle of a frame (not a short read, not a hang)."""

    code = ErrorCode.INCOMPLETE_FRAME


class BadPayload(ProtocolError):
    """A well-framed payload that does not parse for its message type."""

    code = ErrorCode.BAD_PAYLOAD


class UnexpectedFrame(ProtocolError):
    """A valid frame that makes no sense where it arrived (a reply sent to a peer, a wrong reply)."""

    code = ErrorCode.UNEXPECTED_FRAME


class TransportError(DWCPError, ConnectionError):
    """The socket under a DWCP connection failed (also a ``ConnectionError``, so an ``OSError``)."""


class ConnectFailed(TransportError):
    """The TCP connection could not be established (refused, unreachable)."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """The connect timeout fired before the TCP connection was established."""


class ConnectionLost(TransportError):
    """An established connection broke; requests in flight on it got no answer."""


class ConnectionReset(ConnectionLost):
    """The connection was reset (RST, broken pipe)."""


class ConnectionClosed(ConnectionLost):
    """The stream ended at a frame boundary, or the connection was closed on this side."""


class PeerError(DWCPError):
    """The peer answered a request with an ERROR frame.

    Args:
        code: the :class:`ErrorCode` (or an unknown int code from a newer peer).
        detail: the peer's message.
    """

    def __init__(self, code: int, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(code, detail, retry_after)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after  # seconds, when the peer said (a BUSY peer does)

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (mailbox full, peer busy)."""
        return self.code in _TRANSIENT_CODES

    def __str__(self) -> str:
        name = _code_name(self.code)
        return f"peer error {name}: {self.detail}" if self.detail else f"peer error {name}"


class PeerDeadlineExceeded(PeerError, DeadlineExceeded):
    """The peer answered ``DEADLINE_EXCEEDED``: the budget the request carried ran out before the
    peer could do it (it waited behind other work there), or, at a relay, before the next hop
    answered. Also a :class:`~dwcp_resilience.DeadlineExceeded`, so a ``TimeoutError``; not
    retryable (that budget was the caller's). Refused before the work started, nothing was
    stored; refused by a relay after it forwarded, the next hop may have stored the message (a
    resend with the same id is then a duplicate)."""

    def __init__(
        self,
        code: int = ErrorCode.DEADLINE_EXCEEDED,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        # Both parents' __init__ take other arguments: set what each one's methods read.
        Exception.__init__(self, code, detail, retry_after)
        self.code, self.detail, self.retry_after = code, detail, retry_after
        self.name, self.timeout = "dwcp-peer", None

    def __repr__(self) -> str:
        return f"PeerDeadlineExceeded({self.code!r}, {self.detail!r})"


class RequestExpired(DWCPError, DeadlineExceeded):
    """The deadline in force had passed when a request was to be written: nothing was sent (the
    header's budget cannot say "already expired", and a peer should not be asked for work whose
    caller has given up). Also a :class:`~dwcp_resilience.DeadlineExceeded`, so a
    ``TimeoutError``."""

    def __init__(self, name: str = "dwcp-request") -> None:
        DeadlineExceeded.__init__(self, name)

    def __repr__(self) -> str:
        return f"RequestExpired({self.name!r})"


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed DWCP request may be sent again (on a new connection where needed)."""
    if isinstance(exc, TransportError | ProtocolError):
        return True
    if isinstance(exc, PeerError):
        return exc.retryable
    return False


_REPEAT = "_dwcp_repeat_fault"


def mark_repeat_fault(exc: Exception) -> None:
    """Mark ``exc`` as a repeat of a fault already counted: another request on the same connection
    failed first (a connection shared by many requests fails them all at once)."""
    setattr(exc, _REPEAT, True)
    exc.add_note("(the same connection failure as an earlier request: counted once)")


def is_repeat_fault(exc: BaseException) -> bool:
    """Whether ``exc`` was marked by :func:`mark_repeat_fault` (a breaker's ``ignore=``)."""
    return getattr(exc, _REPEAT, False) is True
