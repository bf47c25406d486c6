"""DWCP frames: a fixed 40-byte header, a payload of bounded size with its checksum, and an
incremental decoder.

DWCP (Distributed WAN Communication Protocol, the Go package's name for it) is the example
peer-to-peer message protocol: framed requests and replies over TCP.

Header (big-endian, :data:`HEADER_SIZE` = 40 bytes)::

    offset  size  field
    0       4     magic         b"DWCP"
    4       1     version       3 (2 had no deadline, 1 no checksums)
    5       1     type          a MessageType
    6       2     flags         FLAG_* bits (unknown bits are ignored)
    8       16    message id    correlation id: a reply carries the id of its request
    24      8     length        payload length in bytes, at most the receiver's ``max_payload``
    32      4     budget        u32 ms: the time left before the sender's deadline, when it sent
                                the frame (0: no deadline); 0 on replies
    36      4     header crc    CRC-32 of bytes 0-35

then ``length`` payload bytes, then the payload's CRC-32 (4 bytes) when ``length > 0``. The checks
catch what TCP's 16-bit checksum lets through (a middlebox rewriting bytes and fixing the TCP
checksum): every burst error of up to 32 bits and all but 2**-32 of the others. They are
``zlib.crc32`` (CRC-32/ISO-HDLC): as strong as CRC-32C for this, and in the standard library.
The header has its own check, so a corrupted length or type is caught at the header, before a
body is awaited; the magic and version are checked first, so a stream that is not DWCP, or a peer
of another version, gets that error rather than a checksum error.

The budget is relative, as gRPC's ``grpc-timeout`` header is, because the clocks of two hosts
differ: the sender writes ``ceil(deadline - now)`` in milliseconds (:func:`budget_ms`: rounded up,
so the receiver never gives up before the sender, and saturated at ``2**32 - 1``, about 49.7 days),
and the receiver turns it back into a deadline on its own clock from the moment the frame arrived
(:func:`budget_deadline`). The time the frame spent on the wire is not subtracted (gRPC's is not
either): a relative budget cannot know it. A request whose deadline has passed is never sent (0
means "none", there is no "expired" value), so the budget of a request is at least 1 ms.

Version 3 is a version of its own, not version 2 with a flag: a version-2 receiver ignores the
reserved bytes and unknown flags, so it would serve a request with a deadline as one without and
forward nothing of it. Each side refuses the other's frames with ``UnsupportedVersion`` instead.

The message id of a SEND is also the message's idempotency key: a retried send reuses it, and the
peer stores it once. Every other request takes a fresh random id.

Payloads (``str`` fields are a u8 length then UTF-8, so at most 255 bytes)::

    HELLO        node_id: str, address: str        (the answer is a HELLO with the peer's own)
    SEND         recipient: str, sender: str, body  -> ACK (FLAG_DUPLICATE if already stored);
                 FLAG_RELAYED when a peer relays it to the next hop (which keeps it, never relays)
    RECEIVE      node_id: str                      -> DELIVER
    DELIVER      message_id: 16 bytes, sender: str, body; FLAG_EMPTY and no payload if none waits,
                 FLAG_REDELIVERED if it was handed out before without an acknowledgement
    DELIVER_ACK  node_id: str, message_id: 16 bytes -> ACK
    DISCOVER     (empty)                           -> PEERS: u16 count, then node_id: str, address: str
    PING         any bytes                         -> PONG with the same bytes
    ERROR        code: u16, retry_after: u32 ms (0: none), detail: UTF-8 rest
                                                   (the answer to a request that failed);
                 FLAG_CLOSING if the connection ends with it

Everything here is pure: :func:`encode_frame` and :class:`FrameDecoder` do no I/O. The decoder takes
bytes in slices of any size (down to one byte) and checks each header as soon as it has it, so a
garbage stream or a 2**63 length prefix fails at once, without waiting for or allocating a body.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from os import urandom as _urandom
from typing import NamedTuple

from .errors import (
    BadChecksum,
    BadMagic,
    BadPayload,
    FrameTooLarge,
    IncompleteFrame,
    UnknownType,
    UnsupportedVersion,
)

__all__ = (
    "CHECKSUM_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "Delivery",
    "FLAG_CLOSING",
    "FLAG_DUPLICATE",
    "FLAG_EMPTY",
    "FLAG_REDELIVERED",
    "FLAG_RELAYED",
    "Frame",
    "FrameDecoder",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_BUDGET_MS",
    "MessageType",
    "PeerInfo",
    "VERSION",
    "budget_deadline",
    "budget_ms",
    "decode_deliver",
    "decode_deliver_ack",
    "decode_error",
    "decode_error_retry_after",
    "decode_hello",
    "decode_peers",
    "decode_receive",
    "decode_send",
    "encode_deliver",
    "encode_deliver_ack",
    "encode_error",
    "encode_frame",
    "encode_hello",
    "encode_peers",
    "encode_receive",
    "encode_send",
    "new_message_id",
)

MAGIC = b"DWCP"
VERSION = 3
HEADER_SIZE = 40
CHECKSUM_SIZE = 4
DEFAULT_MAX_PAYLOAD = 1 << 20
"""1 MiB: the default maximum payload of a frame."""

FLAG_DUPLICATE = 0x1
"""On an ACK of a SEND: the message id was already known, nothing new was stored."""
FLAG_EMPTY = 0x2
"""On a DELIVER: no message is waiting; the payload is empty."""
FLAG_REDELIVERED = 0x4
"""On a DELIVER: this message was handed out before and not acknowledged."""
FLAG_CLOSING = 0x8
"""On an ERROR: the sender closes the connection after it (it could not read a frame, or refuses
the connection); the request was not processed, and may be sent again on a new connection."""
FLAG_RELAYED = 0x10
"""On a SEND: a peer relays it for its sender (the next hop keeps it, and never relays it again)."""
MAX_BUDGET_MS = 0xFFFFFFFF
"""The largest budget a header carries (about 49.7 days); a longer one is sent as this."""

_HEADER = struct.Struct(">4sBBH16sQI")  # without its crc
_CRC = struct.Struct(">I")
_crc32 = zlib.crc32
_HEADER_BODY = _HEADER.size  # the header bytes its crc covers
_MAGIC_LEN = len(MAGIC)
_ID_SIZE = 16
_MAX_STR = 255
_INF = math.inf
_MAX_BUDGET_S = MAX_BUDGET_MS / 1000.0


class MessageType(IntEnum):
    """The type byte of a frame."""

    HELLO = 1
    SEND = 2
    ACK = 3
    RECEIVE = 4
    DELIVER = 5
    DELIVER_ACK = 6
    DISCOVER = 7
    PEERS = 8
    PING = 9
    PONG = 10
    ERROR = 11


_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}


class Frame(NamedTuple):
    """One decoded frame (``budget_ms``: see :func:`budget_ms`; 0 for none)."""

    type: MessageType
    message_id: bytes
    payload: bytes = b""
    flags: int = 0
    budget_ms: int = 0


class PeerInfo(NamedTuple):
    """A peer as HELLO and PEERS carry it; ``node_id`` is empty for a seed known only by address."""

    node_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed out by RECEIVE; acknowledge it with its ``message_id``."""

    message_id: bytes
    sender: str
    body: bytes
    redelivered: bool = False


def new_message_id() -> bytes:
    """A fresh random 16-byte message id."""
    return _urandom(_ID_SIZE)


_NOISE_MS = 1e-4


def budget_ms(remaining: float) -> int:
    """The header's budget for ``remaining`` seconds before a deadline: milliseconds rounded up
    (so a receiver never gives up before the sender; an excess under 0.1 µs is float error and
    not rounded up), at least 1, at most :data:`MAX_BUDGET_MS`; 0 (none) for ``inf``.

    Raises:
        ValueError: ``remaining`` is not above 0 (the deadline has passed: send nothing), or NaN.
    """
    if not remaining > 0.0:
        raise ValueError(f"remaining must be > 0 seconds, got {remaining!r}")
    if remaining >= _MAX_BUDGET_S:
        return 0 if remaining == _INF else MAX_BUDGET_MS
    # Less than 0.1 µs over a whole ms is the float error of `deadline - now` (readings of one
    # clock: ~4e-12 s at 1e4 s of uptime, ~1.5e-8 s at 1e8 s), not time: rounding it up would give
    # a next hop a ms more than it was given (a budget of 300 arrived, 301 passed on at once).
    return max(1, math.ceil(remaining * 1000.0 - _NOISE_MS))


def budget_deadline(budget: int, arrived: float) -> float:
    """The deadline, on the receiver's clock, of a frame with ``budget`` ms that arrived at
    ``arrived`` (``inf`` for a budget of 0)."""
    return arrived + budget * 0.001 if budget else _INF


def encode_frame(
    type: MessageType,
    message_id: bytes,
    payload: bytes = b"",
    flags: int = 0,
    *,
    budget_ms: int = 0,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """The bytes of one frame. ``ValueError`` for a bad id, flags, budget or a payload over
    ``max_payload``."""
    if len(message_id) != _ID_SIZE:
        raise ValueError(f"message_id must be {_ID_SIZE} bytes, got {len(message_id)}")
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes is over max_payload={max_payload}")
    try:  # struct checks the ranges of flags and budget_ms (a check of our own costs ~100 ns)
        head = _HEADER.pack(MAGIC, VERSION, type, flags, message_id, len(payload), budget_ms)
    except struct.error as exc:
        if not isinstance(flags, int) or not 0 <= flags <= 0xFFFF:
            raise ValueError(f"flags must fit in 16 bits, got {flags!r}") from None
        if not isinstance(budget_ms, int) or not 0 <= budget_ms <= MAX_BUDGET_MS:
            raise ValueError(f"budget_ms must fit in 32 bits, got {budget_ms!r}") from None
        raise ValueError(f"cannot encode this header: {exc}") from None
    head += _CRC.pack(_crc32(head))
    if not payload:
        return head
    return b"".join((head, payload, _CRC.pack(_crc32(payload))))


class FrameDecoder:
    """Turns a byte stream, fed in slices of any size, into frames.

    ``feed(data)`` buffers; ``next_frame()`` returns the next complete frame, ``None`` when more bytes
    are needed, or raises a :class:`ProtocolError` subclass at the first malformed frame (the frames
    before it come out first). ``eof()`` raises :class:`IncompleteFrame` if the stream ended mid-frame.
    The buffer holds at most one frame's worth of bytes plus what was fed since the last frame that
    came out, so a caller that drains ``next_frame()`` after each ``feed`` keeps memory bounded.
    """

    __slots__ = ("_buf", "_max_payload")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int):
            raise TypeError(f"max_payload must be an int, got {type(max_payload).__name__}")
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, got {max_payload}")
        self._buf = bytearray()
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream."""
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more bytes are needed."""
        buf = self._buf
        size = len(buf)
        if size < HEADER_SIZE:
            if buf[:_MAGIC_LEN] != MAGIC[:size]:
                raise BadMagic(f"bad magic {bytes(buf[:_MAGIC_LEN])!r}: not a DWCP stream")
            if size > _MAGIC_LEN and buf[_MAGIC_LEN] != VERSION:  # e.g. a shorter version-1 header
                raise UnsupportedVersion(
                    f"unsupported protocol version {buf[_MAGIC_LEN]} (this side speaks {VERSION})",
                    message_id=bytes(buf[8:24]) if size >= 24 else None,
                )
            return None
        magic, version, type_, flags, message_id, length, budget = _HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise BadMagic(f"bad magic {magic!r}: not a DWCP stream")
        if version != VERSION:
            raise UnsupportedVersion(
                f"unsupported protocol version {version} (this side speaks {VERSION})",
                message_id=message_id,
            )
        (crc,) = _CRC.unpack_from(buf, _HEADER_BODY)
        if _crc32(memoryview(buf)[:_HEADER_BODY]) != crc:
            raise BadChecksum("header checksum mismatch: the frame was corrupted in transit")
        kind = _TYPES.get(type_)
        if kind is None:
            raise UnknownType(f"unknown message type {type_}", message_id=message_id)
        if length > self._max_payload:
            raise FrameTooLarge(
                f"declared payload of {length} bytes is over the maximum of {self._max_payload}",
                message_id=message_id,
            )
        if not length:
            del buf[:HEADER_SIZE]
            return Frame(kind, message_id, b"", flags, budget)
        end = HEADER_SIZE + length
        if size < end + CHECKSUM_SIZE:
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        (crc,) = _CRC.unpack_from(buf, end)
        if _crc32(payload) != crc:
            raise BadChecksum(
                "payload checksum mismatch: the frame was corrupted in transit",
                message_id=message_id,
            )
        del buf[: end + CHECKSUM_SIZE]
        return Frame(kind, message_id, payload, flags, budget)

    def frames(self, data: bytes | bytearray | memoryview = b"") -> list[Frame]:
        """Feed ``data`` and return every frame now complete (raises at the first malformed one)."""
        if data:
            self._buf += data
        out: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def eof(self) -> None:
        """The stream ended: raise :class:`IncompleteFrame` if a frame was cut short."""
        if self._buf:
            got = len(self._buf)
            raise IncompleteFrame(f"end of stream inside a frame ({got} bytes of it received)")

    def __repr__(self) -> str:
        return f"<FrameDecoder max_payload={self._max_payload} buffered={len(self._buf)}>"


# -- payloads --------------------------------------------------------------------------------------


def _put_str(out: bytearray, value: str, field: str) -> None:
    raw = value.encode()
    if len(raw) > _MAX_STR:
        raise ValueError(f"{field} must be at most {_MAX_STR} bytes of UTF-8, got {len(raw)}")
    out.append(len(raw))
    out += raw


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise BadPayload(f"payload too short for {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def string(self, what: str) -> str:
        (n,) = self.take(1, what)
        try:
            return self.take(n, what).decode()
        except UnicodeDecodeError:
            raise BadPayload(f"{what} is not UTF-8") from None

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def done(self, what: str) -> None:
        if self.pos != len(self.data):
            raise BadPayload(f"{len(self.data) - self.pos} trailing bytes after {what}")


def encode_hello(node_id: str, address: str = "") -> bytes:
    """HELLO payload: who is speaking and where it serves (empty for a client)."""
    out = bytearray()
    _put_str(out, node_id, "node_id")
    _put_str(out, address, "address")
    return bytes(out)


def decode_hello(payload: bytes) -> PeerInfo:
    """Parse a HELLO payload."""
    r = _Reader(payload)
    info = PeerInfo(r.string("node_id"), r.string("address"))
    r.done("HELLO")
    return info


def encode_send(recipient: str, sender: str, body: bytes) -> bytes:
    """SEND payload."""
    out = bytearray()
    _put_str(out, recipient, "recipient")
    _put_str(out, sender, "sender")
    out += body
    return bytes(out)


def decode_send(payload: bytes) -> tuple[str, str, bytes]:
    """Parse a SEND payload into (recipient, sender, body)."""
    r = _Reader(payload)
    recipient = r.string("recipient")
    if not recipient:
        raise BadPayload("SEND needs a recipient")
    return recipient, r.string("sender"), r.rest()


def encode_receive(node_id: str) -> bytes:
    """RECEIVE payload: whose mailbox to read."""
    out = bytearray()
    _put_str(out, node_id, "node_id")
    return bytes(out)


def decode_receive(payload: bytes) -> str:
    """Parse a RECEIVE payload."""
    r = _Reader(payload)
    node_id = r.string("node_id")
    r.done("RECEIVE")
    if not node_id:
        raise BadPayload("RECEIVE needs a node id")
    return node_id


def encode_deliver(message_id: bytes, sender: str, body: bytes) -> bytes:
    """DELIVER payload (the frame's own id is the RECEIVE's; the message's id is in here)."""
    if len(message_id) != _ID_SIZE:
        raise ValueError(f"message_id must be {_ID_SIZE} bytes, got {len(message_id)}")
    out = bytearray(message_id)
    _put_str(out, sender, "sender")
    out += body
    return bytes(out)


def decode_deliver(payload: bytes, flags: int = 0) -> Delivery | None:
    """Parse a DELIVER payload; ``None`` when ``flags`` says the mailbox was empty."""
    if flags & FLAG_EMPTY:
        return None
    r = _Reader(payload)
    message_id = r.take(_ID_SIZE, "message id")
    sender = r.string("sender")
    return Delivery(message_id, sender, r.rest(), bool(flags & FLAG_REDELIVERED))


def encode_deliver_ack(node_id: str, message_id: bytes) -> bytes:
    """DELIVER_ACK payload: the reader's node id and the delivered message's id."""
    if len(message_id) != _ID_SIZE:
        raise ValueError(f"message_id must be {_ID_SIZE} bytes, got {len(message_id)}")
    out = bytearray()
    _put_str(out, node_id, "node_id")
    out += message_id
    return bytes(out)


def decode_deliver_ack(payload: bytes) -> tuple[str, bytes]:
    """Parse a DELIVER_ACK payload into (node_id, message_id)."""
    r = _Reader(payload)
    node_id = r.string("node_id")
    message_id = r.take(_ID_SIZE, "message id")
    r.done("DELIVER_ACK")
    return node_id, message_id


def encode_peers(peers: tuple[PeerInfo, ...] | list[PeerInfo]) -> bytes:
    """PEERS payload."""
    if len(peers) > 0xFFFF:
        raise ValueError(f"at most {0xFFFF} peers fit in one PEERS frame, got {len(peers)}")
    out = bytearray(struct.pack(">H", len(peers)))
    for node_id, address in peers:
        _put_str(out, node_id, "node_id")
        _put_str(out, address, "address")
    return bytes(out)


def decode_peers(payload: bytes) -> tuple[PeerInfo, ...]:
    """Parse a PEERS payload."""
    r = _Reader(payload)
    (count,) = struct.unpack(">H", r.take(2, "peer count"))
    peers = tuple(PeerInfo(r.string("node_id"), r.string("address")) for _ in range(count))
    r.done("PEERS")
    return peers


def encode_error(code: int, detail: str = "", retry_after: float | None = None) -> bytes:
    """ERROR payload: a u16 code, a u32 ``retry_after`` in milliseconds (0: none; a BUSY peer
    says when to come back; saturated at ``2**32 - 1``, ``inf`` included) and a UTF-8 detail (cut
    to 1 KiB)."""
    if retry_after is None:
        millis = 0
    elif retry_after >= _MAX_BUDGET_S:  # inf: a peer none of whose slots will free up
        millis = 0xFFFFFFFF
    else:
        millis = max(1, math.ceil(retry_after * 1000))
    return _ERROR_HEAD.pack(code, millis) + detail.encode()[:1024]


def decode_error(payload: bytes) -> tuple[int, str]:
    """Parse an ERROR payload into (code, detail)."""
    if len(payload) < _ERROR_HEAD.size:
        raise BadPayload("ERROR payload too short for its code and retry_after")
    (code, _) = _ERROR_HEAD.unpack_from(payload)
    return code, payload[_ERROR_HEAD.size :].decode(errors="replace")


def decode_error_retry_after(payload: bytes) -> float | None:
    """The ``retry_after`` (seconds) of an ERROR payload, ``None`` if it gives none."""
    if len(payload) < _ERROR_HEAD.size:
        raise BadPayload("ERROR payload too short for its code and retry_after")
    (_, millis) = _ERROR_HEAD.unpack_from(payload)
    return millis / 1000 if millis else None


_ERROR_HEAD = struct.Struct(">HI")
