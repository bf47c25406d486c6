"""The pure core of the peer's connection slots, driven by a Hypothesis state machine."""

from __future__ import annotations

import itertools
import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp_resilience.dwcp.slots import ConnectionSlots, Slot

MAX, PER_SOURCE, EVICT = 4, 3, 1.0
SOURCES = st.sampled_from(["a", "b", "c"])


class SlotsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.slots = ConnectionSlots(
            max_connections=MAX,
            max_per_source=PER_SOURCE,
            idle_timeout=5.0,
            frame_timeout=2.0,
            send_timeout=3.0,
            evict_after=EVICT,
        )
        self.now = 0.0
        self.live: list[Slot] = []
        self.closes: dict[int, int] = {}
        self.keys = itertools.count()

    def _close_of(self, key: int) -> None:
        self.closes[key] = self.closes.get(key, 0) + 1

    @rule(seconds=st.floats(0.0, 3.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(source=SOURCES)
    def connect(self, source: str) -> None:
        before = {id(s): s.unproductive_since() for s in self.live}
        key = next(self.keys)
        result = self.slots.admit(source, self.now, lambda: self._close_of(key))
        if isinstance(result, Slot):
            evicted = [s for s in self.live if s.closed_by == "evicted"]
            for victim in evicted:  # only one that waited at least evict_after
                assert self.now - before[id(victim)] >= EVICT - 1e-9
            self.live = [s for s in self.live if s.closed_by is None]
            self.live.append(result)
        else:
            assert result > 0 and math.isfinite(result)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def activity(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(self.live))
        what = data.draw(st.sampled_from(["frame", "busy", "done"]))
        if what == "frame":
            slot.frame_since = self.now if slot.frame_since is None else slot.frame_since
        elif what == "busy":
            slot.busy = True
        else:
            slot.busy = False
            slot.frame_since = None
            slot.since = self.now

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(self.live))
        self.slots.release(slot)
        self.live.remove(slot)

    @rule()
    def watchdog(self) -> None:
        self.slots.expire(self.now)
        for slot in self.live:
            if slot.closed_by in ("idle", "frame", "send"):
                assert not slot.busy or slot.sending
        self.live = [s for s in self.live if s.closed_by is None]

    @invariant()
    def bounded(self) -> None:
        assert len(self.slots) == len(self.live) <= MAX
        per: dict[str, int] = {}
        for slot in self.live:
            per[slot.source] = per.get(slot.source, 0) + 1
        assert dict(self.slots.by_source()) == per
        assert all(n <= PER_SOURCE for n in per.values())
        assert all(n == 1 for n in self.closes.values())  # closed at most once each


SlotsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestSlots = SlotsMachine.TestCase
