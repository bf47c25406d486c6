"""``ChaosProxy``: a TCP proxy on loopback that injects network faults, toxiproxy-style.

Faults (each with a ``direction``: ``"upstream"`` is client to target, ``"downstream"`` target to
client, ``"both"``), applied to every chunk read while they are active, in this order:

- :class:`Drop` (probability): the connection is reset (RST, both sides) instead of forwarding;
- :class:`Corrupt` (probability, skip): one bit of one byte past ``skip`` is flipped, and the chunk
  is forwarded (what TCP's checksum misses when a middlebox rewrites it);
- :class:`Stall`: the chunk is swallowed and the connection stays open (toxiproxy ``timeout=0``:
  accept and never answer);
- :class:`ResetPeer` (after_bytes): forward the first ``after_bytes`` bytes of the chunk (default: half
  of it, so a frame is cut in the middle), then reset both sides (SO_LINGER 0 then close);
- :class:`Latency` (delay, jitter, probability): wait ``delay`` plus or minus up to ``jitter``
  seconds, for every chunk or only for a ``probability`` share of them (a latency tail);
- :class:`Slicer` (size, delay) and :class:`Bandwidth` (bytes per second): forward the chunk in
  segments of ``size`` bytes (``delay`` between them) and pace them to the rate.

Which faults are active: the ones set at runtime with :meth:`ChaosProxy.set_faults`, plus those of the
schedule: a list of ``(start_offset, duration, fault)`` in seconds since the proxy started
(``duration`` may be ``inf``), or a callable ``elapsed -> faults``. Randomness (jitter, drops) comes
from one ``random.Random(seed)``. ``statistics()`` counts what was injected. Only listen on loopback.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass
from typing import Literal

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ..core.clock import loop_time
from ..core.validate import check_int, check_name, check_number
from ._service import BackgroundService, accept_forever
from .faults import (
    FAULT_TYPES,
    Bandwidth,
    Corrupt,
    Direction,
    Drop,
    Fault,
    Latency,
    ResetPeer,
    Schedule,
    Slicer,
    Stall,
    check_schedule,
)

__all__ = ("ChaosProxy", "ProxyStatistics")

_READ_SIZE = 65536
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """A snapshot of what the proxy did and injected."""

    connections_total: int
    connections_active: int
    connect_failures: int
    bytes_upstream: int
    bytes_downstream: int
    delayed_chunks: int
    throttled_chunks: int
    sliced_segments: int
    stalled_chunks: int
    stalled_bytes: int
    resets: int
    drops: int
    corrupted_chunks: int = 0


class _Abort(Exception):
    """Raised inside a pump to reset the whole connection."""


class ChaosProxy(BackgroundService):
    """``ChaosProxy(target_host, target_port, *, listen_port=0, schedule=(), seed=None)``.

    Use ``async with ChaosProxy(...) as proxy:`` and connect to ``proxy.port``; switch faults at
    runtime with :meth:`set_faults` / :meth:`clear_faults` or :meth:`set_schedule`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        schedule: Schedule = (),
        seed: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = check_name(target_host, "target_host")
        self.target_port = check_int(target_port, "target_port", min_value=1, max_value=65535)
        self.listen_host = check_name(listen_host, "listen_host")
        self._listen_port = check_int(listen_port, "listen_port", min_value=0, max_value=65535)
        self._schedule = check_schedule(schedule)
        self._connect_timeout = check_number(
            connect_timeout, "connect_timeout", min_value=0, allow_zero=False
        )
        self.rng = random.Random(seed)
        self._manual: tuple[Fault, ...] = ()
        self._started_at: float | None = None
        self._port: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._total = self._active = self._connect_failures = 0
        self._bytes = {"upstream": 0, "downstream": 0}
        self._delayed = self._throttled = self._slices = 0
        self._stalled = self._stalled_bytes = self._resets = self._drops = 0
        self._corrupted = 0

    # -- faults --------------------------------------------------------------------------------------

    def set_faults(self, *faults: Fault) -> None:
        """Replace the runtime faults (they add to the schedule's)."""
        for fault in faults:
            if not isinstance(fault, FAULT_TYPES):
                raise TypeError(f"not a Fault: {fault!r}")
        self._manual = faults

    def clear_faults(self) -> None:
        """Remove the runtime faults (the schedule stays)."""
        self._manual = ()

    def set_schedule(self, schedule: Schedule) -> None:
        """Replace the schedule; its offsets count from now."""
        self._schedule = check_schedule(schedule)
        self._started_at = loop_time()

    def active_faults(self, direction: Direction = "both") -> tuple[Fault, ...]:
        """The faults active now for chunks going ``direction``."""
        started = self._started_at
        scheduled = () if started is None else tuple(self._schedule(loop_time() - started))
        faults = self._manual + scheduled
        if direction == "both":
            return faults
        return tuple(f for f in faults if f.direction in (direction, "both"))

    # -- reading -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (``RuntimeError`` before it started)."""
        if self._port is None:
            raise RuntimeError("proxy is not serving")
        return self._port

    def statistics(self) -> ProxyStatistics:
        """A snapshot of the counters."""
        return ProxyStatistics(
            self._total,
            self._active,
            self._connect_failures,
            self._bytes["upstream"],
            self._bytes["downstream"],
            self._delayed,
            self._throttled,
            self._slices,
            self._stalled,
            self._stalled_bytes,
            self._resets,
            self._drops,
            self._corrupted,
        )

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port else "not serving"
        return (
            f"<ChaosProxy {where} -> {self.target_host}:{self.target_port} "
            f"active={self._active} faults={len(self.active_faults())}>"
        )

    # -- lifetime ------------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and proxy until cancelled; ``task_status.started(port)`` once listening."""
        listener = await anyio.create_tcp_listener(
            local_host=self.listen_host, local_port=self._listen_port
        )
        async with listener, anyio.create_task_group() as tg:
            self._port = listener.extra(SocketAttribute.local_port)
            if self._started_at is None:
                self._started_at = loop_time()
            task_status.started(self._port)
            try:
                await accept_forever(listener, self._handle, tg, name="chaos proxy")
            finally:
                self._port = None

    def _already_serving(self) -> str:
        return "proxy is already serving"

    # -- proxying ------------------------------------------------------------------------------------

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self._total += 1
        self._active += 1
        upstream: anyio.abc.SocketStream | None = None
        abort = True
        try:
            try:
                with anyio.fail_after(self._connect_timeout):
                    upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            except OSError:  # refused, unreachable, or the connect timeout
                self._connect_failures += 1
                return
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, client, upstream, "upstream")
                    tg.start_soon(self._pump, upstream, client, "downstream")
                abort = False
            except* (_Abort, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # reset both sides below
        finally:
            self._active -= 1
            with anyio.CancelScope(shield=True):  # close both, also while being cancelled
                for stream in (client, upstream):
                    if stream is not None:
                        if abort:
                            _linger_zero(stream)
                        await anyio.aclose_forcefully(stream)

    async def _pump(
        self,
        src: anyio.abc.SocketStream,
        dst: anyio.abc.SocketStream,
        direction: Literal["upstream", "downstream"],
    ) -> None:
        while True:
            try:
                data = await src.receive(_READ_SIZE)
            except anyio.EndOfStream:
                try:
                    await dst.send_eof()
                except RuntimeError as exc:  # uvloop: the other side's handle is closed already
                    raise _Abort from exc
                return
            faults = self.active_faults(direction)
            if not faults:
                self._bytes[direction] += len(data)
                await dst.send(data)
                continue
            await self._inject(data, dst, direction, faults)

    async def _inject(
        self,
        data: bytes,
        dst: anyio.abc.SocketStream,
        direction: Literal["upstream", "downstream"],
        faults: tuple[Fault, ...],
    ) -> None:
        rng = self.rng
        slicer: Slicer | None = None
        bandwidth: Bandwidth | None = None
        for fault in faults:
            if isinstance(fault, Drop) and rng.random() < fault.probability:
                self._drops += 1
                raise _Abort
        for fault in faults:
            if (
                isinstance(fault, Corrupt)
                and len(data) > fault.skip
                and rng.random() < fault.probability
            ):
                at = rng.randrange(fault.skip, len(data))
                data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
                self._corrupted += 1
        for fault in faults:
            if isinstance(fault, Stall):
                self._stalled += 1
                self._stalled_bytes += len(data)
                return
        for fault in faults:
            if isinstance(fault, ResetPeer):
                cut = len(data) // 2 if fault.after_bytes is None else fault.after_bytes
                head = data[: min(cut, len(data))]
                if head:
                    self._bytes[direction] += len(head)
                    await dst.send(head)
                self._resets += 1
                raise _Abort
        for fault in faults:
            if isinstance(fault, Latency):
                # the random draw only for a partial latency: seeded schedules stay as they were
                if fault.probability < 1.0 and rng.random() >= fault.probability:
                    continue
                delay = fault.delay
                if fault.jitter:
                    delay = max(0.0, delay + rng.uniform(-fault.jitter, fault.jitter))
                self._delayed += 1
                await anyio.sleep(delay)
            elif isinstance(fault, Slicer) and slicer is None:
                slicer = fault
            elif isinstance(fault, Bandwidth) and (
                bandwidth is None or fault.rate < bandwidth.rate
            ):
                bandwidth = fault
        if slicer is None and bandwidth is None:
            self._bytes[direction] += len(data)
            await dst.send(data)
            return
        if slicer is not None:
            size = slicer.size
        else:
            assert bandwidth is not None
            size = max(1, int(bandwidth.rate / 20))  # 50 ms worth per segment
        if bandwidth is not None:
            self._throttled += 1
        for start in range(0, len(data), size):
            piece = data[start : start + size]
            self._bytes[direction] += len(piece)
            if slicer is not None:
                self._slices += 1
            await dst.send(piece)
            if slicer is not None and slicer.delay:
                await anyio.sleep(slicer.delay)
            if bandwidth is not None:
                await anyio.sleep(len(piece) / bandwidth.rate)


def _linger_zero(stream: anyio.abc.SocketStream) -> None:
    """Make the next close send RST instead of FIN."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except (OSError, anyio.TypedAttributeLookupError, AttributeError):
        # Already closed: gone, or (anyio on uvloop) its raw socket is None.
        return
