"""One connection of a DWCP peer: its read-answer-write loop, and the SENDs it has being relayed.

:class:`PeerConnection` reads frames, answers each from the pure
:class:`~dwcp_resilience.dwcp.answers.PeerAnswers` (no ``await`` between reading and writing the
mailboxes), and writes the answers of one read in one send, once a durable store has committed
their changes. The budget of a request's frame counts from the read that brought it; a request
whose deadline passed while it waited behind a SEND being relayed is refused, touching nothing.
With a relay, a SEND for a routed recipient goes to a task of the connection's own task group
(:meth:`PeerConnection.serve`) once a forwarding slot is free, and that task writes its answer
when the next hop has answered, under the lock the loop writes under too.

:class:`~dwcp_resilience.dwcp.peer.DWCPPeer` admits connections and decides what becomes of one
that fails; the counters of the bytes and frames are the peer's (:class:`Traffic`).
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from ..core.clock import loop_time
from .answers import PeerAnswers
from .durable import DurableMailboxes
from .errors import ErrorCode, ProtocolError
from .protocol import (
    FLAG_CLOSING,
    Frame,
    FrameDecoder,
    MessageType,
    budget_deadline,
    encode_error,
    encode_frame,
)
from .relay import Relay
from .slots import Slot

__all__ = ("PeerConnection", "Traffic", "send_closing_error")

log = logging.getLogger("dwcp_resilience.dwcp.peer")

M = MessageType
_READ_SIZE = 65536
_ERROR_SEND_TIMEOUT = 1.0
# The requests whose answers wait for a durable store's commit (a duplicate SEND included: its
# first copy may still be in flight).
_COMMIT_FIRST = frozenset({M.SEND, M.RECEIVE, M.DELIVER_ACK})


class Traffic:
    """A peer's frame and byte counters (plain ints, read by ``statistics()``)."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0


async def send_closing_error(
    stream: anyio.abc.SocketStream,
    message_id: bytes,
    code: ErrorCode,
    detail: str,
    traffic: Traffic,
    *,
    retry_after: float | None = None,
) -> None:
    """Send an ERROR with ``FLAG_CLOSING`` and end our side (give up after a second)."""
    payload = encode_error(code, detail, retry_after)
    frame = encode_frame(M.ERROR, message_id, payload, FLAG_CLOSING)
    with anyio.move_on_after(_ERROR_SEND_TIMEOUT):
        try:
            await stream.send(frame)
            await stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        traffic.frames_out += 1
        traffic.bytes_out += len(frame)


class PeerConnection:
    """One admitted connection (see the module docstring): ``await conn.serve()`` until its
    stream ends (``ProtocolError`` at a malformed frame, after the good frames before it are
    answered)."""

    __slots__ = (
        "_answers",
        "_relay",
        "_store",
        "_traffic",
        "answering",
        "cid",
        "decoder",
        "relaying",
        "send_lock",
        "slot",
        "stream",
        "tg",
    )

    def __init__(
        self,
        cid: int,
        stream: anyio.abc.SocketStream,
        slot: Slot,
        *,
        max_payload: int,
        answers: PeerAnswers,
        store: DurableMailboxes | None,
        relay: Relay | None,
        traffic: Traffic,
    ) -> None:
        self.cid = cid
        self.stream = stream
        self.slot = slot
        self.decoder = FrameDecoder(max_payload)
        self._answers, self._store, self._relay, self._traffic = answers, store, relay, traffic
        self.answering = False  # the loop is answering what it read
        self.relaying = 0  # SENDs being relayed
        self.send_lock: anyio.Lock | None = None
        self.tg: anyio.abc.TaskGroup | None = None

    async def serve(self) -> None:
        """Serve the connection; with a relay, in a task group of its SENDs being relayed, which
        end with it (on end of stream, once they are answered)."""
        if self._relay is None:
            await self._loop()
            return
        failure: Exception | None = None
        self.send_lock = anyio.Lock(fast_acquire=True)
        async with anyio.create_task_group() as tg:
            self.tg = tg
            try:
                await self._loop()
            except Exception as exc:  # out of the task group, which would wrap it in a group
                failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _loop(self) -> None:
        stream, decoder, slot, cid = self.stream, self.decoder, self.slot, self.cid
        store, answers, traffic = self._store, self._answers, self._traffic
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                decoder.eof()  # IncompleteFrame if the stream ended inside a frame
                return
            arrived = loop_time()  # the frames' budgets count from here
            traffic.bytes_in += len(data)
            if not decoder.buffered:
                slot.frame_since = arrived  # a frame begins: frame_timeout runs
            decoder.feed(data)
            slot.busy = self.answering = True
            replies: list[bytes] = []
            error: ProtocolError | None = None
            commit = False
            consumed = 0
            now = arrived  # only a wait here can make a deadline pass
            try:
                while (frame := decoder.next_frame()) is not None:
                    traffic.frames_in += 1
                    consumed += 1
                    reply = answers.answer(cid, frame, arrived, now)
                    if reply is None:  # a SEND to relay: it answers when the next hop has
                        reply = await self._relay_send(frame, arrived)
                        now = loop_time()  # a request behind it may have expired meanwhile
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
                await self._write(b"".join(replies), len(replies))
            if error is not None:
                raise error
            self.answering = False
            slot.busy = self.relaying > 0
            if consumed:
                slot.since = loop_time()  # idle from now
                # What is left (if anything) is the start of the next frame: its time runs now.
                slot.frame_since = slot.since if decoder.buffered else None

    async def _write(self, out: bytes, frames: int) -> None:
        """Send ``out`` (``frames`` answers), under the connection's lock when it has one."""
        slot, lock = self.slot, self.send_lock
        if lock is not None:
            await lock.acquire()
        try:
            slot.since = loop_time()
            slot.sending = True
            await self.stream.send(out)
            slot.sending = False
        finally:
            if lock is not None:
                lock.release()
        self._traffic.frames_out += frames
        self._traffic.bytes_out += len(out)

    async def _relay_send(self, frame: Frame, arrived: float) -> bytes | None:
        """Start relaying ``frame`` once a forwarding slot is free; the answer to send now if its
        deadline passed first, else ``None`` (its task answers)."""
        relay, tg = self._relay, self.tg
        assert relay is not None and tg is not None
        deadline = budget_deadline(frame.budget_ms, arrived)
        if not await relay.admit(deadline):
            return self._answers.refuse_expired(frame, loop_time() - arrived)
        self.relaying += 1
        tg.start_soon(self._relayed, frame, deadline)
        return None

    async def _relayed(self, frame: Frame, deadline: float) -> None:
        """One relayed SEND: forward it, then write the next hop's answer to our client."""
        assert self._relay is not None
        try:
            reply = await self._relay.forward(frame, deadline)
            await self._write(reply, 1)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # our client is gone: its connection is closing
        except Exception:  # never let one relayed SEND take its connection down
            log.exception("peer %r: relaying a SEND failed", self._answers.node_id)
        finally:
            self.relaying -= 1
            if not self.relaying and not self.answering:
                self.slot.busy = False
                self.slot.since = loop_time()
