"""DWCP frames: round trips, arbitrary splits, and every malformed input -> the right ProtocolError."""

from __future__ import annotations

import math
import struct
import zlib

import pytest
from helpers import ID, header
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.core.errors import DeadlineExceeded, ResilienceError
from dwcp_resilience.dwcp.errors import (
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
    is_retryable,
)
from dwcp_resilience.dwcp.protocol import (
    CHECKSUM_SIZE,
    DEFAULT_MAX_PAYLOAD,
    FLAG_EMPTY,
    FLAG_REDELIVERED,
    HEADER_SIZE,
    MAGIC,
    MAX_BUDGET_MS,
    VERSION,
    Delivery,
    Frame,
    FrameDecoder,
    MessageType,
    PeerInfo,
    budget_deadline,
    budget_ms,
    decode_deliver,
    decode_deliver_ack,
    decode_error,
    decode_error_retry_after,
    decode_hello,
    decode_peers,
    decode_receive,
    decode_send,
    encode_deliver,
    encode_deliver_ack,
    encode_error,
    encode_frame,
    encode_hello,
    encode_peers,
    encode_receive,
    encode_send,
    new_message_id,
)

frames_st = st.builds(
    Frame,
    st.sampled_from(list(MessageType)),
    st.binary(min_size=16, max_size=16),
    st.binary(max_size=300),
    st.integers(0, 0xFFFF),
    st.one_of(st.just(0), st.integers(1, MAX_BUDGET_MS)),
)


def encode(frame: Frame) -> bytes:
    return encode_frame(
        frame.type, frame.message_id, frame.payload, frame.flags, budget_ms=frame.budget_ms
    )


def decode_in_pieces(
    data: bytes, cuts: list[int], max_payload: int = DEFAULT_MAX_PAYLOAD
) -> list[Frame]:
    decoder = FrameDecoder(max_payload)
    out: list[Frame] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.extend(decoder.frames(data[start:cut]))
        start = cut
    decoder.eof()
    assert decoder.buffered == 0
    return out


# -- round trips ---------------------------------------------------------------------------------


def test_header_is_40_bytes_with_its_checksum_then_the_payload_and_its_checksum() -> None:
    data = encode_frame(MessageType.PING, ID, b"abc", 5, budget_ms=1500)
    assert len(data) == HEADER_SIZE + 3 + CHECKSUM_SIZE == 47
    assert data[:4] == b"DWCP"
    assert data[4] == VERSION == 3
    assert data[5] == MessageType.PING
    assert struct.unpack(">H", data[6:8]) == (5,)
    assert data[8:24] == ID
    assert struct.unpack(">Q", data[24:32]) == (3,)
    assert struct.unpack(">I", data[32:36]) == (1500,)  # the budget, in ms
    assert struct.unpack(">I", data[36:40]) == (zlib.crc32(data[:36]),)
    assert data[40:43] == b"abc"
    assert struct.unpack(">I", data[43:]) == (zlib.crc32(b"abc"),)
    assert len(encode_frame(MessageType.PING, ID)) == HEADER_SIZE  # no payload, no payload crc
    assert encode_frame(MessageType.PING, ID)[32:36] == bytes(4)  # no deadline: 0


@pytest.mark.parametrize("offset", range(47))
def test_any_flipped_byte_is_caught(offset: int) -> None:
    data = bytearray(encode_frame(MessageType.SEND, ID, b"abc"))
    data[offset] ^= 0x10
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().frames(bytes(data))
    if offset < 4:
        assert isinstance(info.value, BadMagic)
    elif offset == 4:
        assert isinstance(info.value, UnsupportedVersion)
    else:
        assert isinstance(info.value, BadChecksum)
        assert info.value.code is ErrorCode.BAD_CHECKSUM
        # A header checksum failure names no frame: its id may be the corrupted part.
        assert info.value.message_id == (ID if offset >= HEADER_SIZE else None)


@given(frames_st)
def test_frame_round_trip(frame: Frame) -> None:
    assert FrameDecoder().frames(encode(frame)) == [frame]


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_st, max_size=8), st.lists(st.integers(0, 4000), max_size=30))
def test_any_sequence_split_anywhere_decodes_to_the_same_frames(
    frames: list[Frame], cuts: list[int]
) -> None:
    """Frames concatenated and cut at arbitrary points come out whole, in order."""
    data = b"".join(encode(f) for f in frames)
    cuts = [c for c in cuts if c <= len(data)]
    assert decode_in_pieces(data, cuts) == frames


@settings(max_examples=50, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=4))
def test_one_byte_slices_decode(frames: list[Frame]) -> None:
    data = b"".join(encode(f) for f in frames)
    assert decode_in_pieces(data, list(range(len(data)))) == frames


@settings(max_examples=200, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=4), st.data())
def test_eof_inside_a_frame_is_incomplete_frame(frames: list[Frame], data: st.DataObject) -> None:
    """Cut inside the last frame: the frames before it come out, then eof() raises IncompleteFrame."""
    encoded = [encode(f) for f in frames]
    before = b"".join(encoded[:-1])
    cut = data.draw(st.integers(1, len(encoded[-1]) - 1))
    decoder = FrameDecoder()
    assert decoder.frames(before + encoded[-1][:cut]) == frames[:-1]
    with pytest.raises(IncompleteFrame, match="end of stream inside a frame"):
        decoder.eof()


# -- the budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (1e-9, 1),  # a sliver left is 1 ms, never 0 (which means "no deadline")
        (0.001, 1),
        (0.001001, 2),  # rounded up: the receiver never gives up before the sender
        (0.25, 250),
        (30.0, 30_000),
        (MAX_BUDGET_MS / 1000, MAX_BUDGET_MS),
        (1e12, MAX_BUDGET_MS),  # saturates
        (math.inf, 0),  # no deadline
        ((37264.59 + 0.3) - 37264.59, 300),  # 0.3000000000029104: float error, not a ms more
    ],
)
def test_budget_ms(remaining: float, expected: int) -> None:
    assert budget_ms(remaining) == expected


@pytest.mark.parametrize("remaining", [0.0, -0.001, -math.inf, math.nan])
def test_budget_ms_refuses_a_passed_deadline(remaining: float) -> None:
    with pytest.raises(ValueError, match="remaining"):
        budget_ms(remaining)


@given(
    st.floats(min_value=1e-6, max_value=MAX_BUDGET_MS / 1000, allow_nan=False),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
def test_a_budget_never_ends_before_the_senders_deadline_and_is_at_most_1_ms_later(
    remaining: float, arrived: float
) -> None:
    """Sent at ``now`` with ``remaining`` s, received at ``arrived``: the receiver's deadline is
    ``arrived + remaining``, up to 1 ms later (the rounding), never earlier (but for the 0.1 µs
    that :func:`budget_ms` takes for float error)."""
    budget = budget_ms(remaining)
    assert 1 <= budget <= MAX_BUDGET_MS
    deadline = budget_deadline(budget, arrived)
    slack = deadline - (arrived + remaining)
    assert -1e-7 - 1e-9 * max(1.0, abs(arrived) + remaining) <= slack < 0.001 + 1e-9 * abs(arrived)


@given(
    st.integers(min_value=1, max_value=MAX_BUDGET_MS - 1),
    st.floats(min_value=0.0, max_value=1e8, allow_nan=False),  # a loop clock after 3 years
)
def test_a_hop_that_passes_a_budget_on_at_once_passes_on_no_more(
    budget: int, arrived: float
) -> None:
    """A relay turns the budget it got into a deadline on its clock and writes what is left: read
    at the same clock reading, that is the budget it got, never a ms more (CI, uvloop: 300 -> 301,
    where the clock's ms resolution made both readings equal)."""
    assert budget_ms(budget_deadline(budget, arrived) - arrived) == budget


def test_budget_deadline_of_no_budget_is_inf() -> None:
    assert budget_deadline(0, 123.0) == math.inf
    assert budget_deadline(1500, 10.0) == pytest.approx(11.5)


def test_eof_after_three_of_the_length_bytes() -> None:
    """R51: EOF in the middle of the length field -> IncompleteFrame, not a short read."""
    decoder = FrameDecoder()
    assert decoder.frames(encode_frame(MessageType.PING, ID, b"x")[: HEADER_SIZE - 5]) == []
    with pytest.raises(IncompleteFrame):
        decoder.eof()


def test_max_payload_is_inclusive() -> None:
    data = encode_frame(MessageType.SEND, ID, b"x" * 100, max_payload=100)
    assert FrameDecoder(100).frames(data)[0].payload == b"x" * 100


def test_payload_codecs_round_trip() -> None:
    assert decode_hello(encode_hello("node-é", "127.0.0.1:1")) == PeerInfo("node-é", "127.0.0.1:1")
    assert decode_send(encode_send("b", "a", b"\x00body")) == ("b", "a", b"\x00body")
    assert decode_receive(encode_receive("b")) == "b"
    mid = new_message_id()
    assert decode_deliver(encode_deliver(mid, "a", b"x")) == Delivery(mid, "a", b"x")
    redelivered = decode_deliver(encode_deliver(mid, "a", b"x"), FLAG_REDELIVERED)
    assert redelivered is not None
    assert redelivered.redelivered
    assert decode_deliver(b"", FLAG_EMPTY) is None
    assert decode_deliver_ack(encode_deliver_ack("b", mid)) == ("b", mid)
    peers = (PeerInfo("", "127.0.0.1:9"), PeerInfo("p2", "127.0.0.1:10"))
    assert decode_peers(encode_peers(peers)) == peers
    assert decode_peers(encode_peers([])) == ()
    assert decode_error(encode_error(ErrorCode.BUSY, "busy")) == (ErrorCode.BUSY, "busy")
    for retry_after, seconds in [
        (None, None),
        (0.0001, 0.001),
        (1.5, 1.5),
        (math.inf, 0xFFFFFFFF / 1000),
    ]:
        assert decode_error_retry_after(encode_error(ErrorCode.BUSY, "", retry_after)) == seconds


def test_new_message_ids_are_16_random_bytes() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 for i in ids)


# -- malformed input -----------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=64).filter(lambda b: not MAGIC.startswith(b[:4])))
def test_garbage_is_bad_magic(garbage: bytes) -> None:
    with pytest.raises(BadMagic):
        FrameDecoder().frames(garbage)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x15\x03\x03\x00\x02\x02\x28",  # a TLS fatal alert (handshake_failure)
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello start
        b"\x00",
    ],
    ids=["http-response", "http-request", "tls-alert", "tls-hello", "zero-byte"],
)
def test_foreign_protocols_are_bad_magic_at_the_first_wrong_byte(data: bytes) -> None:
    """R53: garbage fails as soon as one byte differs from the magic, even fed one byte at a time."""
    decoder = FrameDecoder()
    with pytest.raises(BadMagic):
        for i in range(len(data)):
            decoder.frames(data[i : i + 1])
    assert i < 4


def test_magic_prefix_waits_for_more() -> None:
    decoder = FrameDecoder()
    assert decoder.frames(b"DW") == []
    with pytest.raises(BadMagic):
        decoder.frames(b"X")


def test_unsupported_version_names_the_frame() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        FrameDecoder().frames(header(MessageType.PING, 0, version=1))
    assert info.value.message_id == ID
    assert "version 1 (this side speaks 3)" in str(info.value)


def test_a_version_2_frame_is_refused_not_read_without_its_deadline() -> None:
    """Version 2 had the same 40-byte header with bytes 32-35 reserved: read as version 3, its
    requests would carry no deadline. It is refused instead, at the version byte."""
    with pytest.raises(UnsupportedVersion, match=r"version 2 \(this side speaks 3\)") as info:
        FrameDecoder().frames(header(MessageType.SEND, 0, version=2))
    assert info.value.message_id == ID
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_a_version_1_header_is_refused_before_it_is_complete() -> None:
    v1 = struct.pack(">4sBBH16sQ", b"DWCP", 1, MessageType.PING, 0, ID, 0)  # 32 bytes
    with pytest.raises(UnsupportedVersion) as info:
        FrameDecoder().frames(v1)
    assert info.value.message_id == ID
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("type_", [0, 12, 200, 255])
def test_unknown_type(type_: int) -> None:
    with pytest.raises(UnknownType, match=str(type_)) as info:
        FrameDecoder().frames(header(type_, 0))
    assert info.value.message_id == ID


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, DEFAULT_MAX_PAYLOAD + 1])
def test_too_large_fails_at_the_header_without_a_body(length: int) -> None:
    """A 2**63 length prefix is refused as soon as the header is in, before any body byte."""
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge) as info:
        decoder.frames(header(MessageType.SEND, length))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == HEADER_SIZE  # nothing was allocated for the body


def test_max_payload_plus_one_is_too_large() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder(10).frames(encode_frame(MessageType.PING, ID, b"x" * 11))


def test_good_frames_before_a_bad_one_come_out_first() -> None:
    good = encode_frame(MessageType.PING, ID, b"1")
    decoder = FrameDecoder()
    decoder.feed(good + good + b"garbage!" * 5)
    assert decoder.next_frame() == Frame(MessageType.PING, ID, b"1")
    assert decoder.next_frame() == Frame(MessageType.PING, ID, b"1")
    with pytest.raises(BadMagic):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("decode", "payload"),
    [
        (decode_hello, b""),
        (decode_hello, b"\x05ab"),
        (decode_hello, b"\x01a\x00extra"),
        (decode_hello, b"\x02\xff\xfe\x00"),
        (decode_send, b"\x00\x00body"),
        (decode_send, b"\x03ab"),
        (decode_receive, b"\x00"),
        (decode_receive, b"\x01ab"),
        (decode_deliver, b"short"),
        (decode_deliver_ack, b"\x01b" + b"x" * 15),
        (decode_peers, b"\x00\x02\x00\x00"),
        (decode_peers, b"\x00"),
        (decode_error, b"\x00"),
    ],
)
def test_bad_payloads(decode: object, payload: bytes) -> None:
    assert callable(decode)
    with pytest.raises(BadPayload):
        decode(payload)


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="message_id"):
        encode_frame(MessageType.PING, b"short")
    with pytest.raises(ValueError, match="max_payload"):
        encode_frame(MessageType.PING, ID, b"xx", max_payload=1)
    with pytest.raises(ValueError, match="flags"):
        encode_frame(MessageType.PING, ID, flags=1 << 16)
    with pytest.raises(ValueError, match="budget_ms"):
        encode_frame(MessageType.PING, ID, budget_ms=MAX_BUDGET_MS + 1)
    with pytest.raises(ValueError, match="budget_ms"):
        encode_frame(MessageType.PING, ID, budget_ms=-1)
    with pytest.raises(ValueError, match="budget_ms"):
        encode_frame(MessageType.PING, ID, budget_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flags"):
        encode_frame(MessageType.PING, ID, flags=-1)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_frame(300, ID)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node_id"):
        encode_hello("x" * 256)
    with pytest.raises(ValueError, match="message_id"):
        encode_deliver(b"x", "a", b"")
    with pytest.raises(ValueError, match="message_id"):
        encode_deliver_ack("a", b"x")


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_decoder_config(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_payload"):
        FrameDecoder(value)  # type: ignore[arg-type]


def test_decoder_repr_shows_buffer() -> None:
    decoder = FrameDecoder(64)
    decoder.feed(b"DWC")
    assert repr(decoder) == "<FrameDecoder max_payload=64 buffered=3>"


# -- the error tree --------------------------------------------------------------------------------


def test_error_tree_keeps_protocol_and_connection_errors_apart() -> None:
    for cls in (BadMagic, UnsupportedVersion, UnknownType, FrameTooLarge, IncompleteFrame):
        assert issubclass(cls, ProtocolError)
        assert not issubclass(cls, OSError)
    assert issubclass(ProtocolError, DWCPError)
    assert issubclass(DWCPError, ResilienceError)
    for transport in (
        ConnectFailed,
        ConnectTimeout,
        ConnectionLost,
        ConnectionReset,
        ConnectionClosed,
    ):
        assert issubclass(transport, TransportError)
        assert issubclass(transport, ConnectionError)
        assert not issubclass(transport, ProtocolError)
    assert issubclass(ConnectTimeout, TimeoutError)
    assert not issubclass(PeerError, OSError | ProtocolError)
    # A deadline refused by the peer, or passed before sending: what a caller catches as a timeout.
    for deadline in (PeerDeadlineExceeded, RequestExpired):
        assert issubclass(deadline, DeadlineExceeded)
        assert issubclass(deadline, TimeoutError)
        assert issubclass(deadline, DWCPError)
        assert not issubclass(deadline, ProtocolError | TransportError)
    assert issubclass(PeerDeadlineExceeded, PeerError)


def test_is_retryable() -> None:
    assert is_retryable(ConnectionReset("x"))
    assert is_retryable(ConnectTimeout("x"))
    assert is_retryable(IncompleteFrame("x"))
    assert is_retryable(UnexpectedFrame("x"))
    assert is_retryable(PeerError(ErrorCode.MAILBOX_FULL))
    assert is_retryable(PeerError(ErrorCode.BUSY))
    assert not is_retryable(PeerError(ErrorCode.BAD_PAYLOAD))
    assert not is_retryable(ValueError("x"))
    assert is_retryable(PeerError(ErrorCode.FORWARD_FAILED))  # the next hop, resent by id
    assert not is_retryable(PeerDeadlineExceeded(ErrorCode.DEADLINE_EXCEEDED))
    assert not is_retryable(RequestExpired())


def test_deadline_errors_read_as_both_parents() -> None:
    refused = PeerDeadlineExceeded(ErrorCode.DEADLINE_EXCEEDED, "waited 12 ms of 10 ms")
    assert str(refused) == "peer error DEADLINE_EXCEEDED: waited 12 ms of 10 ms"
    assert (refused.code, refused.detail, refused.retry_after) == (
        12,
        "waited 12 ms of 10 ms",
        None,
    )
    assert (refused.name, refused.timeout) == ("dwcp-peer", None)
    assert not refused.retryable
    assert (
        repr(refused)
        == "PeerDeadlineExceeded(<ErrorCode.DEADLINE_EXCEEDED: 12>, 'waited 12 ms of 10 ms')"
    )
    expired = RequestExpired()
    assert str(expired) == "'dwcp-request': deadline exceeded"
    assert repr(expired) == "RequestExpired('dwcp-request')"


def test_peer_error_str() -> None:
    assert str(PeerError(ErrorCode.BUSY, "full up")) == "peer error BUSY: full up"
    assert str(PeerError(999)) == "peer error 999"
    assert not PeerError(999).retryable
