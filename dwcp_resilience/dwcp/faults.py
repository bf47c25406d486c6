"""The faults a :class:`~dwcp_resilience.dwcp.proxy.ChaosProxy` injects, and its schedules.

Each fault is a frozen dataclass validated at construction (``ValueError``/``TypeError`` naming the
field) with a ``direction``: ``"upstream"`` (client to target), ``"downstream"`` (target to client) or
``"both"``. A schedule is a list of ``(start_offset, duration, fault)`` in seconds since the proxy
started (``duration`` may be ``inf``), or a callable ``elapsed -> faults``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..core.validate import check_int, check_number

__all__ = (
    "Bandwidth",
    "Corrupt",
    "Direction",
    "Drop",
    "Fault",
    "Latency",
    "ResetPeer",
    "Schedule",
    "Slicer",
    "Stall",
    "check_schedule",
)

Direction = Literal["upstream", "downstream", "both"]
_DIRECTIONS = ("upstream", "downstream", "both")


def _check_direction(direction: object) -> None:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")


@dataclass(frozen=True, slots=True)
class Latency:
    """Delay each chunk by ``delay`` +/- up to ``jitter`` seconds (never below zero); with
    ``probability`` below 1, only that share of the chunks (a latency tail: most chunks pass at
    once, a few are slow)."""

    delay: float
    jitter: float = 0.0
    direction: Direction = "both"
    probability: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.delay, "delay", min_value=0)
        check_number(self.jitter, "jitter", min_value=0)
        _check_direction(self.direction)
        check_number(self.probability, "probability", min_value=0, max_value=1)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Cap the throughput at ``rate`` bytes per second."""

    rate: float
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_number(self.rate, "rate", min_value=0, allow_zero=False)
        _check_direction(self.direction)


@dataclass(frozen=True, slots=True)
class ResetPeer:
    """Forward ``after_bytes`` of the next chunk (default: half of it), then reset the connection."""

    after_bytes: int | None = None
    direction: Direction = "downstream"

    def __post_init__(self) -> None:
        if self.after_bytes is not None:
            check_int(self.after_bytes, "after_bytes", min_value=0)
        _check_direction(self.direction)


@dataclass(frozen=True, slots=True)
class Stall:
    """Swallow every chunk; keep the connection open (accept and never answer)."""

    direction: Direction = "both"

    def __post_init__(self) -> None:
        _check_direction(self.direction)


@dataclass(frozen=True, slots=True)
class Slicer:
    """Forward in segments of ``size`` bytes, ``delay`` seconds apart."""

    size: int = 1
    delay: float = 0.0
    direction: Direction = "downstream"

    def __post_init__(self) -> None:
        check_int(self.size, "size", min_value=1)
        check_number(self.delay, "delay", min_value=0)
        _check_direction(self.direction)


@dataclass(frozen=True, slots=True)
class Drop:
    """Reset the connection instead of forwarding a chunk, with this probability per chunk."""

    probability: float
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_number(self.probability, "probability", min_value=0, max_value=1)
        _check_direction(self.direction)


@dataclass(frozen=True, slots=True)
class Corrupt:
    """Flip one bit of one byte of a chunk, with this probability per chunk, and forward it: a
    middlebox that rewrites payload and fixes the TCP checksum (TCP delivers the bad byte).

    ``skip`` bytes at the start of the chunk are left alone (``skip=40`` with DWCP's 40-byte
    header hits only payloads, or the next frame's header)."""

    probability: float
    skip: int = 0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_number(self.probability, "probability", min_value=0, max_value=1)
        check_int(self.skip, "skip", min_value=0)
        _check_direction(self.direction)


Fault = Latency | Bandwidth | ResetPeer | Stall | Slicer | Drop | Corrupt
FAULT_TYPES = (Latency, Bandwidth, ResetPeer, Stall, Slicer, Drop, Corrupt)
Schedule = Sequence[tuple[float, float, Fault]] | Callable[[float], Iterable[Fault]]


def check_schedule(schedule: Schedule) -> Callable[[float], Iterable[Fault]]:
    """Validate a schedule and return it as a callable ``elapsed -> active faults``."""
    if callable(schedule):
        return schedule
    entries: list[tuple[float, float, Fault]] = []
    for i, entry in enumerate(schedule):
        start, duration, fault = entry
        check_number(start, f"schedule[{i}] start_offset", min_value=0)
        check_number(duration, f"schedule[{i}] duration", min_value=0, allow_inf=True)
        if not isinstance(fault, FAULT_TYPES):
            raise TypeError(f"schedule[{i}] fault must be a Fault, got {type(fault).__name__}")
        entries.append((float(start), float(start) + float(duration), fault))

    def active(elapsed: float) -> list[Fault]:
        return [fault for start, end, fault in entries if start <= elapsed < end]

    return active
