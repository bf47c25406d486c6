"""Helpers for testing code that uses ``dwcp_resilience``: virtual time and recording listeners.

- :class:`FakeClock`: a manual monotonic clock to inject as ``clock=`` into a primitive (pure-core
  tests, no loop at all).
- :func:`run_virtual`: run an async function on asyncio (with looptime's virtual loop) or on trio
  (with ``MockClock(autojump_threshold=0)``), so sleeps and timeouts take no real time.
- :func:`anyio_backends`: the ``anyio_backend`` parameters for a pytest fixture that runs each async
  test on asyncio and trio in virtual time, and on uvloop in real time.
- :class:`RecordingListener`: a listener that keeps every event it receives.

looptime, trio and uvloop are test-time dependencies (the ``dev`` extra); they are imported only when
the helper that needs them is called.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .core.events import Event

__all__ = ("FakeClock", "RecordingListener", "anyio_backends", "run_virtual")

T = TypeVar("T")
E = TypeVar("E", bound=Event)


class FakeClock:
    """A manual monotonic clock: ``clock()`` reads it, ``clock.advance(dt)`` moves it forward.

    Args:
        start: the initial reading.
    """

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must be finite and >= 0)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("a monotonic clock only moves forward by a finite amount")
        self.now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now!r}>"


class RecordingListener(Generic[E]):
    """A listener that appends every event it receives to ``events``."""

    def __init__(self) -> None:
        self.events: list[E] = []

    def __call__(self, event: E) -> None:
        self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """The recorded events that are instances of ``kind``."""
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        self.events.clear()


def anyio_backends(*, uvloop: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """``anyio_backend`` values: asyncio on a looptime loop, trio with an autojump MockClock, and
    (with ``uvloop=True``, when it is installed) uvloop in real time."""
    import looptime  # noqa: PLC0415
    import trio.testing  # noqa: PLC0415

    backends: list[tuple[str, dict[str, Any]]] = [
        ("asyncio", {"loop_factory": looptime.new_event_loop}),
        ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}),
    ]
    if uvloop:
        try:
            import uvloop as uvloop_module  # noqa: PLC0415
        except ImportError:  # pragma: no cover - optional
            pass
        else:
            backends.append(("asyncio", {"loop_factory": uvloop_module.new_event_loop}))
    return backends


def run_virtual(fn: Callable[[], Awaitable[T]], *, backend: str = "asyncio") -> T:
    """Run ``fn()`` to completion in virtual time on ``backend`` ("asyncio" or "trio")."""
    import anyio  # noqa: PLC0415

    async def main() -> T:
        return await fn()

    if backend == "asyncio":
        import looptime  # noqa: PLC0415

        return anyio.run(
            main, backend="asyncio", backend_options={"loop_factory": looptime.new_event_loop}
        )
    if backend == "trio":
        import trio.testing  # noqa: PLC0415

        clock = trio.testing.MockClock(autojump_threshold=0)
        return anyio.run(main, backend="trio", backend_options={"clock": clock})
    raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
