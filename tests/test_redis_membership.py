"""FleetBreaker membership and ``QuorumShare`` against a real redis-server: members heartbeat with
every poll, leave on exit, expire when they stop; the threshold moves with the live count.

In-process fleets (one backend per member, as separate processes would have) and, at the end,
fleets of 4 to 12 real processes joining, leaving and being killed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import Process

from dwcp_resilience import BreakerState, BreakerStateChanged, CircuitBreaker, CircuitOpen, Event
from dwcp_resilience.redis import (
    FleetBreaker,
    FleetBreakerFollowed,
    FleetFallback,
    QuorumShare,
    RedisBackend,
)
from dwcp_resilience.redis.server import RedisServer
from dwcp_resilience.testing import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

NAME = "payments"
HALF = QuorumShare(0.5)  # half of the other live members, and at least 2


async def _fail() -> None:
    raise RuntimeError("sick")


async def _ok() -> str:
    return "ok"


async def eventually(check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.01)


class Member:
    """One in-process fleet member: its own backend (and guard), local breaker and fleet breaker,
    running ``async with`` in a task of its own (members join and leave in any order)."""

    def __init__(self, url: str, instance: str, **options: Any) -> None:
        self.recorder: RecordingListener[Event] = RecordingListener()
        guard = CircuitBreaker("guard", max_failures=1, reset_timeout=0.1, half_open_successes=1,
                               timeout=2.0)  # fmt: skip
        self.backend = RedisBackend(url, instance=instance, timeout=2.0, breaker=guard)
        self.breaker = CircuitBreaker(NAME, max_failures=1, reset_timeout=60.0,
                                      half_open_successes=1, listeners=[self.recorder])  # fmt: skip
        options.setdefault("poll_interval", 0.05)
        options.setdefault("window", 30.0)
        self.fleet = FleetBreaker(self.backend, self.breaker, listeners=[self.recorder], **options)
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            async with self.backend, self.fleet:
                await eventually(lambda: self.fleet.statistics().polls > 0, "a first poll")
                task_status.started()
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def start(self, task_group: anyio.abc.TaskGroup) -> Member:
        await task_group.start(self._run)
        return self

    async def stop(self) -> None:
        """Leave ``async with``: the watcher stops and the member leaves at once."""
        self._stop.set()
        await self._stopped.wait()

    def crash(self) -> None:
        """Stop reaching Redis without leaving (as a killed or partitioned process): no more
        heartbeats; the others see it expire after the member TTL."""
        self.backend.breaker.force_open()

    async def fail(self) -> None:
        with pytest.raises(RuntimeError):
            await self.breaker.call(_fail)
        assert self.breaker.state is BreakerState.OPEN

    def members(self) -> int:
        return self.fleet.statistics().members

    def sees(self, members: int, needed: int, reporters: int | None = None) -> bool:
        stats = self.fleet.statistics()
        return (
            stats.members == members
            and stats.reports_needed == needed
            and (reporters is None or stats.last_reporters == reporters)
        )

    def reasons(self) -> list[str]:
        return [e.reason for e in self.recorder.events if isinstance(e, BreakerStateChanged)]


class Group(list[Member]):
    """The members of one test, and the task group they run in."""

    def __init__(self, url: str, task_group: anyio.abc.TaskGroup) -> None:
        super().__init__()
        self.url = url
        self.task_group = task_group

    async def add(self, instance: str, **options: Any) -> Member:
        member = await Member(self.url, instance, **options).start(self.task_group)
        self.append(member)
        return member


@asynccontextmanager
async def members(url: str, count: int, **options: Any) -> AsyncIterator[Group]:
    async with anyio.create_task_group() as task_group:
        group = Group(url, task_group)
        try:
            for i in range(count):
                await group.add(f"node-{i}", **options)
            yield group
        finally:
            for member in group:
                await member.stop()


async def all_see(group: list[Member], members: int, needed: int, reporters: int | None = None,
                  limit: float = 10.0) -> None:  # fmt: skip
    for member in group:
        await eventually(
            lambda m=member: m.sees(members, needed, reporters),  # type: ignore[misc]
            f"{member.fleet.instance} to see {members} members, {needed} needed, "
            f"{reporters} reporters (it has {member.fleet.statistics()})",
            limit,
        )


# -- membership -----------------------------------------------------------------------------------


async def test_members_join_with_their_first_poll_and_leave_on_exit(
    anyio_backend: Any, redis_url: str
) -> None:
    """A TTL of 30 s: only the leave on exit can make the count drop within the test."""
    async with members(redis_url, 3, quorum=HALF, member_ttl=30.0) as group:
        await all_see(group, members=3, needed=2)
        late = await group.add("late", quorum=HALF, member_ttl=30.0)
        await all_see(group, members=4, needed=2)
        assert late.fleet.statistics().member_ttl == 30.0
        started = time.monotonic()
        await late.stop()
        await all_see(group[:3], members=3, needed=2)
        assert time.monotonic() - started < 5.0  # far below the 30 s TTL
        assert "3 members" in repr(group[0].fleet)


async def test_a_member_that_stops_polling_expires_after_the_ttl(
    anyio_backend: Any, redis_url: str
) -> None:
    async with members(redis_url, 4, quorum=HALF, member_ttl=0.4) as group:
        await all_see(group, members=4, needed=2)
        lost = group[3]
        lost.crash()
        crashed_at = time.monotonic()
        await all_see(group[:3], members=3, needed=2)
        assert time.monotonic() - crashed_at >= 0.3  # expired by its TTL, not removed
        # The lost member keeps its last view, and says it is stale.
        await eventually(lambda: not lost.fleet.shared, "the lost member's fallback")
        assert lost.members() == 4
        lost.backend.breaker.reset()  # it reaches Redis again: it joins with its next poll
        await all_see(group, members=4, needed=2)


async def test_a_cancelled_body_still_leaves(anyio_backend: Any, redis_url: str) -> None:
    async with members(redis_url, 2, quorum=HALF, member_ttl=30.0) as group:
        leaving = Member(redis_url, "leaving", quorum=HALF, member_ttl=30.0)
        async with leaving.backend:
            with anyio.move_on_after(0.3) as scope:
                async with leaving.fleet:
                    await anyio.sleep(10)
            assert scope.cancelled_caught
        await all_see(group, members=2, needed=2)


async def test_exit_with_redis_down_is_bounded_and_quiet(anyio_backend: Any) -> None:
    with RedisServer() as server:
        async with members(server.url, 1, quorum=HALF) as (member,):
            server.stop()
            await eventually(lambda: not member.fleet.shared, "the fallback")
            started = time.monotonic()
            await member.stop()  # the leave fails: the membership would expire instead
            assert time.monotonic() - started < 5.0
            assert await member.fleet.leave() is False


# -- the share quorum -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(4, 13))
async def test_one_sick_member_never_opens_the_fleet_half_of_them_do(
    anyio_backend: Any, redis_url: str, size: int
) -> None:
    """``QuorumShare(0.5)`` in a fleet of ``size``: half of the *other* live members (at least 2)
    must report, so one sick member never opens the others, and half of all members (rounded up)
    always does. Reports one short of that leave everyone closed."""
    needed = max(2, math.ceil((size - 1) / 2))
    assert 2 <= needed <= math.ceil(size / 2)
    async with members(redis_url, size, quorum=HALF) as group:
        await all_see(group, members=size, needed=needed)
        sick, healthy = group[:needed], group[needed:]
        for count, member in enumerate(sick[:-1], start=1):
            await member.fail()
            await all_see(healthy, members=size, needed=needed, reporters=count)
        await anyio.sleep(0.2)  # several more polls: still no quorum
        for member in [sick[-1], *healthy]:  # the ones not sick yet
            assert member.breaker.state is BreakerState.CLOSED
            assert await member.breaker.call(_ok) == "ok"
        await sick[-1].fail()
        for member in healthy:
            await eventually(lambda m=member: m.breaker.state is BreakerState.OPEN,  # type: ignore[misc]
                             f"{member.fleet.instance} to follow")  # fmt: skip
            assert member.reasons() == ["fleet_quorum"]
            (followed,) = member.recorder.of_type(FleetBreakerFollowed)
            assert followed.quorum == needed and followed.members == size
            assert followed.reporters == tuple(m.fleet.instance for m in sick)
            with pytest.raises(CircuitOpen):
                await member.breaker.call(_ok)
        for member in sick:  # their own breakers opened by themselves; nothing followed
            assert member.reasons() == ["consecutive_failures"]


async def test_a_fresh_fleet_does_not_follow_its_first_reporter(
    anyio_backend: Any, redis_url: str
) -> None:
    """Two live members: the other's report is 100 % of the others, but the minimum is 2."""
    async with members(redis_url, 2, quorum=HALF) as group:
        first, second = group
        await all_see(group, members=2, needed=2)
        await first.fail()
        await all_see([second], members=2, needed=2, reporters=1)
        await anyio.sleep(0.2)
        assert second.breaker.state is BreakerState.CLOSED
        third = await group.add("node-2", quorum=HALF)
        await all_see([second, third], members=3, needed=2, reporters=1)
        await third.fail()  # 2 of the 2 others: the second follows
        await eventually(lambda: second.breaker.state is BreakerState.OPEN, "the follow")
        assert second.reasons() == ["fleet_quorum"]


async def test_the_threshold_falls_when_members_leave(anyio_backend: Any, redis_url: str) -> None:
    """8 members, 3 sick: 3 < 4 needed (half of 7 others). One healthy member leaves: 7 members,
    3 needed (half of 6), and the reports already there open the remaining healthy ones (no new
    report)."""
    async with members(redis_url, 8, quorum=HALF, member_ttl=30.0) as group:
        sick, leaving, staying = group[:3], group[3:4], group[4:]
        await all_see(group, members=8, needed=4)
        for member in sick:
            await member.fail()
        await all_see([*leaving, *staying], members=8, needed=4, reporters=3)
        await anyio.sleep(0.2)
        assert all(m.breaker.state is BreakerState.CLOSED for m in [*leaving, *staying])
        for member in leaving:
            await member.stop()
        for member in staying:
            await eventually(lambda m=member: m.breaker.state is BreakerState.OPEN,  # type: ignore[misc]
                             "the follow")  # fmt: skip
            (followed,) = member.recorder.of_type(FleetBreakerFollowed)
            assert (followed.members, followed.quorum) == (7, 3)
            assert followed.reporters == ("node-0", "node-1", "node-2")


async def test_reports_of_members_that_expired_do_not_count(
    anyio_backend: Any, redis_url: str
) -> None:
    """6 members; 2 report and then vanish. They leave the count (4 live, 2 needed) and their
    reports leave the numerator with them: nobody follows. An absolute quorum of 2 would."""
    async with members(redis_url, 6, quorum=HALF, member_ttl=0.4) as group:
        gone, rest = group[:2], group[2:]
        await all_see(group, members=6, needed=3)
        for member in gone:
            await member.fail()
        await all_see(rest, members=6, needed=3, reporters=2)  # both reports are in Redis
        for member in gone:
            member.crash()
        await all_see(rest, members=4, needed=2, reporters=0)
        await anyio.sleep(0.3)
        assert all(m.breaker.state is BreakerState.CLOSED for m in rest)
    async with members(redis_url, 3, quorum=2) as (one, two, three):
        await one.fail()
        await two.fail()
        for member in (one, two):
            await eventually(lambda m=member: m.fleet.statistics().reports_published == 1,  # type: ignore[misc]
                             "the report")  # fmt: skip
            member.crash()
        await eventually(lambda: three.breaker.state is BreakerState.OPEN, "the absolute quorum")


async def test_redis_down_keeps_the_last_membership_and_decides_locally(
    anyio_backend: Any,
) -> None:
    with RedisServer() as server:
        async with members(server.url, 4, quorum=HALF) as group:
            await all_see(group, members=4, needed=2)
            server.stop()
            for member in group:
                await eventually(lambda m=member: not m.fleet.shared, "the fallback")  # type: ignore[misc]
            await group[0].fail()
            await group[1].fail()
            await anyio.sleep(0.3)
            for member in group:
                assert member.sees(members=4, needed=2)  # the last view, stale
                assert len(member.recorder.of_type(FleetFallback)) == 1
            assert [m.breaker.state for m in group[2:]] == [BreakerState.CLOSED] * 2
            server.start()  # the missed reports are published on return: the others follow
            for member in group[2:]:
                await eventually(lambda m=member: m.breaker.state is BreakerState.OPEN,  # type: ignore[misc]
                                 "the follow after the outage")  # fmt: skip
            await all_see(group, members=4, needed=2)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"member_ttl": 0}, ValueError, "member_ttl"),
        ({"member_ttl": -1.0}, ValueError, "member_ttl"),
        ({"member_ttl": math.nan}, ValueError, "member_ttl"),
        ({"member_ttl": math.inf}, ValueError, "member_ttl"),
        ({"member_ttl": "3"}, TypeError, "member_ttl"),
        ({"member_ttl": True}, TypeError, "member_ttl"),
        ({"member_ttl": 1.5, "poll_interval": 1.0}, ValueError, "member_ttl must be >= 2"),
        ({"quorum": 0.5}, TypeError, "QuorumShare"),
        ({"quorum": QuorumShare}, TypeError, "quorum"),
    ],
)
def test_bad_membership_config_is_refused(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    breaker = CircuitBreaker(NAME)
    with pytest.raises(error, match=match):
        FleetBreaker(backend, breaker, **kwargs)


def test_the_member_ttl_defaults_to_three_polls() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    fleet = FleetBreaker(backend, CircuitBreaker(NAME), quorum=HALF, poll_interval=0.5)
    stats = fleet.statistics()
    assert stats.member_ttl == 1.5
    assert (stats.members, stats.reports_needed, stats.quorum) == (0, 2, HALF)
    assert FleetBreaker(backend, CircuitBreaker("x"), member_ttl=2.0).statistics().member_ttl == 2.0


# -- several processes ----------------------------------------------------------------------------

# One member per process: tests/fleet_member.py (shared with tests/test_redis_breaker.py).
FLEET_MEMBER = str(Path(__file__).with_name("fleet_member.py"))


class Child:
    """A fleet member in its own process, driven line by line over stdin/stdout."""

    def __init__(self, process: Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self._buffer = b""

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")

    async def _read(self) -> None:
        assert self.process.stdout is not None
        self._buffer += await self.process.stdout.receive()
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [line.decode().strip() for line in complete if line.strip()]

    async def expect(self, line: str, within: float = 15.0) -> None:
        """Wait until ``line`` has been printed (now or before)."""
        with anyio.fail_after(within):
            while line not in self.lines:
                await self._read()

    async def ask(self, command: str, prefix: str) -> str:
        """Send ``command`` and return the next line starting with ``prefix``."""
        before = sum(1 for line in self.lines if line.startswith(prefix))
        await self.send(command)
        with anyio.fail_after(15.0):
            while sum(1 for line in self.lines if line.startswith(prefix)) <= before:
                await self._read()
        return [line for line in self.lines if line.startswith(prefix)][-1]

    async def stats(self) -> tuple[int, int, int, str]:
        _, members, needed, reporters, state = (await self.ask("stats", "stats ")).split()
        return int(members), int(needed), int(reporters), state

    async def sees(self, members: int, needed: int, reporters: int | None = None) -> None:
        deadline = time.monotonic() + 20.0
        while True:
            got = await self.stats()
            if got[:2] == (members, needed) and reporters in (None, got[2]):
                return
            assert time.monotonic() < deadline, (self.name, got, (members, needed, reporters))
            await anyio.sleep(0.05)


class ProcessFleet:
    """Children of one fleet breaker; started, quit (leave) and killed (expire) one by one."""

    def __init__(self, url: str, *, poll_interval: float = 0.1, member_ttl: float = 1.0) -> None:
        self.url = url
        self.poll_interval = poll_interval
        self.member_ttl = member_ttl
        self.children: list[Child] = []
        self.count = 0

    async def spawn(self, count: int) -> list[Child]:
        new = []
        for _ in range(count):
            name = f"proc-{self.count}"
            self.count += 1
            process = await anyio.open_process(
                [sys.executable, FLEET_MEMBER, self.url, "server", name, "0.5/2", "60",
                 str(self.poll_interval), str(self.member_ttl), "2.0"],
                stderr=None,
            )  # fmt: skip
            new.append(Child(process, name))
        self.children += new
        for child in new:
            await child.expect("ready", within=60.0)
        return new

    async def quit(self, child: Child) -> None:
        await child.send("quit")
        with anyio.fail_after(15):
            await child.process.wait()
        self.children.remove(child)

    async def kill(self, child: Child) -> None:
        child.process.kill()
        await child.process.wait()
        self.children.remove(child)

    async def aclose(self) -> None:
        for child in self.children:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await child.send("quit")
        with anyio.move_on_after(10):
            for child in self.children:
                await child.process.wait()
        for child in self.children:
            if child.process.returncode is None:
                child.process.kill()
            await child.process.aclose()


@asynccontextmanager
async def process_fleet(url: str, **options: Any) -> AsyncIterator[ProcessFleet]:
    fleet = ProcessFleet(url, **options)
    try:
        yield fleet
    finally:
        with anyio.CancelScope(shield=True):
            await fleet.aclose()


@pytest.mark.slow
async def test_processes_joining_and_leaving_move_the_count_and_the_threshold(
    anyio_backend: Any, redis_url: str
) -> None:
    """4 processes, then 12; 3 fall sick (3 < 6 needed); 4 healthy ones quit (8 live: 3 < 4);
    1 healthy one is killed (7 live after the TTL: 3 needed): the last 4 healthy ones follow."""
    async with process_fleet(redis_url) as fleet:
        first = await fleet.spawn(4)
        for child in first:
            await child.sees(members=4, needed=2)
        await fleet.spawn(8)
        for child in fleet.children:
            await child.sees(members=12, needed=6)
        sick, quitting, killed, staying = (fleet.children[:3], fleet.children[3:7],
                                           fleet.children[7:8], fleet.children[8:])  # fmt: skip
        for child in sick:
            await child.send("fail")
            await child.expect("event OPEN consecutive_failures")
        for child in [*quitting, *killed, *staying]:
            await child.sees(members=12, needed=6, reporters=3)
        for child in quitting:
            await fleet.quit(child)
        for child in [*killed, *staying]:
            await child.sees(members=8, needed=4, reporters=3)
            assert await child.ask("call", "call ") == "call ok True"
        for child in killed:
            await fleet.kill(child)
        for child in staying:
            await child.expect("event OPEN fleet_quorum", within=20.0)
            assert await child.stats() == (7, 3, 3, "OPEN")
            assert await child.ask("call", "call ") == "call rejected False"
        for child in sick:
            assert "event OPEN fleet_quorum" not in child.lines


@pytest.mark.slow
@pytest.mark.parametrize("size", [4, 12])
async def test_processes_one_sick_never_opens_the_fleet_half_do(
    anyio_backend: Any, redis_url: str, size: int
) -> None:
    needed = max(2, math.ceil((size - 1) / 2))  # size // 2 for these even sizes
    async with process_fleet(redis_url) as fleet:
        await fleet.spawn(size)
        sick, healthy = fleet.children[:needed], fleet.children[needed:]
        for child in fleet.children:
            await child.sees(members=size, needed=needed)
        for count, child in enumerate(sick[:-1], start=1):
            await child.send("fail")
            await child.expect("event OPEN consecutive_failures")
            for other in healthy:
                await other.sees(members=size, needed=needed, reporters=count)
                assert await other.ask("call", "call ") == "call ok True"
        await sick[-1].send("fail")
        for child in healthy:
            await child.expect("event OPEN fleet_quorum", within=20.0)
            assert await child.ask("call", "call ") == "call rejected False"
