"""``FleetBreaker``: a quorum (advisory) circuit breaker shared across a fleet on Redis.

Each instance keeps its own :class:`~dwcp_resilience.CircuitBreaker`, which decides every call
locally (no Redis round trip on the call path). Only one decision is shared: "instance X opened
breaker N at time t". A fleet breaker follows the others by a quorum rule, so one sick node cannot
poison the fleet (Polly #287).

Keys and scripts (``<ns>`` is the backend's namespace, ``<name>`` the fleet breaker's name; one
hash tag per name, so a Redis Cluster keeps them in one slot):

- ``{<ns>:breaker:<name>}:opened``, a sorted set: member = instance id, score = the Redis server time
  (ms, from ``TIME`` inside the script) of that instance's latest opening;
- ``{<ns>:breaker:<name>}:members``, a sorted set of the live members: instance -> Redis time of its
  latest poll, which is its heartbeat;
- ``{<ns>:breaker:<name>}:events``, a pub/sub channel: the publish script announces every report on
  it so followers react at once. Messages can be lost, so followers also poll every
  ``poll_interval``. In a Redis Cluster the ``PUBLISH`` reaches subscribers on every node; the
  asyncio cluster client subscribes from redis-py 8 on (with an older one, followers learn by
  polling only).

The layout and the scripts are described in :mod:`dwcp_resilience.redis._breaker_lua`.

Publishing: when the local breaker opens by itself (CLOSED or HALF_OPEN -> OPEN, not manual, and not
a fleet-caused trip), the watcher publishes a report with one script (``ZADD GT`` + cleanup +
``PEXPIRE`` + ``PUBLISH``, one round trip). A trip caused by the fleet (reason ``"fleet_quorum"``)
is never reported, so reports do not cascade.

Quorum rule (one home: :mod:`dwcp_resilience.redis._quorum`): an instance trips its local breaker
(``breaker.trip("fleet_quorum")``) when enough *other* instances reported an opening within the
last ``window`` seconds of Redis time (an ``int`` quorum: that many; a
:class:`~dwcp_resilience.redis.QuorumShare`: ``max(minimum, ceil(fraction * others))`` of the
``others`` live members, counting live members' reports only), its local breaker is CLOSED (not
disabled), and at least one of those reports is newer than the reports it has already acted on.
Its own reports never count (its breaker already acted on them). Reports seen while the local
breaker is OPEN or HALF_OPEN are absorbed: once its own half-open probes close it again, the same
reports do not re-open it (recovery stays local). All instances of one fleet breaker should use the
same ``window``, ``quorum`` and ``member_ttl``.

A fleet starting up: an instance is a member from its first poll. Until then its own view counts no
one, and while few members are live, ``QuorumShare.minimum`` (default 2) is what protects: 1 report
of 1 other live member is 100 %, yet it needs 2. When members leave or expire the threshold falls
with them, and the next poll trips if the reports already there now reach it.

Redis unavailable (fail-open to local decisions): publishing and polling errors never reach calls;
the local breaker keeps deciding alone, and the quorum is not evaluated (the membership and
reporter counts keep their last values; ``shared`` says they are stale). The first failure emits
one :class:`~dwcp_resilience.redis.FleetFallback`, the next successful poll one
:class:`~dwcp_resilience.redis.FleetRestored`. On return, this instance's latest own opening is
published again if it is younger than ``window`` (a report missed during the outage, dated by its
age; or one Redis lost in a restart, with its original score: ``ZADD GT`` makes this idempotent
and it is announced only if it changed the set). A poll that no longer finds this instance's
published report while it is younger than ``window`` (a restart between two polls, no error seen)
publishes it again the same way.

Background work (no fire-and-forget task): ``async with fleet_breaker:`` opens a task group that
the caller's block owns, with the watcher (publish, poll-and-heartbeat, quorum) and the pub/sub
listener; leaving the block cancels both, then removes this instance from the members (bounded by
the backend's ``timeout``, shielded from an outer cancellation).

``redis.asyncio`` is asyncio-only: a fleet breaker runs on asyncio and uvloop.

This module is over 400 lines because it is mostly one class, :class:`FleetBreaker`, whose
publishing, polling and fallback code share its state; the quorum decision is in ``_quorum``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import anyio
from anyio.abc import TaskGroup

from ..core.clock import Clock, loop_time
from ..core.events import Event, Listeners
from ..core.validate import check_name, check_number
from ..policies.breaker import BreakerState, BreakerStateChanged, CircuitBreaker
from ._backend import UNAVAILABLE, BackendUnavailable, FallbackTracker, RedisBackend
from ._breaker_lua import POLL_LUA, PUBLISH_LUA
from ._breaker_types import FleetBreakerFollowed, FleetBreakerStatistics
from ._quorum import QuorumFollower, QuorumShare, check_quorum, count_reports, reports_needed

__all__ = ("FLEET_QUORUM", "FleetBreaker", "FleetBreakerFollowed", "FleetBreakerStatistics")

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("dwcp_resilience")

#: The ``reason`` of a trip caused by the fleet's quorum (never re-published as a report).
FLEET_QUORUM = "fleet_quorum"


class FleetBreaker:
    """Share a local breaker's openings with a fleet, and follow the fleet by a quorum rule.

    The local ``breaker`` keeps deciding every call on its own; use it (or :meth:`call`) as usual.
    The fleet breaker only publishes the local breaker's own openings and trips it when a quorum
    of other instances opened within ``window`` seconds (see the module docs). It needs a
    running watcher: use it as ``async with fleet_breaker:`` (the watcher stops on exit, and this
    instance leaves the members).

    Args:
        backend: the Redis connection (its ``instance`` is this process' id in shared state).
        breaker: the local breaker to share and to trip.
        name: the shared name (default: the breaker's name); instances with the same name and
            namespace form one fleet breaker.
        quorum: how many *other* instances must report an opening within ``window``: an int
            >= 1, or a :class:`~dwcp_resilience.redis.QuorumShare` of the other live members
            (``QuorumShare(0.5)``: half of them, and at least 2).
        window: seconds (of Redis server time) a report counts; finite and > 0.
        poll_interval: seconds between polls of the shared state, each one a heartbeat (pub/sub
            makes followers react sooner; polling covers lost messages); finite and > 0.
        member_ttl: seconds a member stays live after its latest poll; finite and at least
            ``2 * poll_interval`` (one late poll does not drop a member). Default
            ``3 * poll_interval``.
        listeners: called inline with :class:`FleetBreakerFollowed`,
            :class:`~dwcp_resilience.redis.FleetFallback` and
            :class:`~dwcp_resilience.redis.FleetRestored`.
        clock: a monotonic clock used to date openings (default: the running loop's).

    Raises:
        TypeError: a setting has the wrong type (``True`` is not a number).
        ValueError: a setting is out of range, NaN or infinite.
    """

    __slots__ = (
        "_attached",
        "_backend",
        "_breaker",
        "_channel",
        "_clock",
        "_follower",
        "_key",
        "_last_reporters",
        "_last_score",
        "_listeners",
        "_member_ttl",
        "_member_ttl_ms",
        "_members",
        "_members_key",
        "_name",
        "_needed",
        "_opened_at",
        "_pending",
        "_poll",
        "_poll_interval",
        "_polls",
        "_publish",
        "_published",
        "_quorum",
        "_quorum_trips",
        "_republish",
        "_task_group",
        "_tracker",
        "_wake",
        "_window",
        "_window_ms",
    )

    def __init__(
        self,
        backend: RedisBackend,
        breaker: CircuitBreaker,
        *,
        name: str | None = None,
        quorum: int | QuorumShare = 2,
        window: float = 30.0,
        poll_interval: float = 1.0,
        member_ttl: float | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise TypeError(f"backend must be a RedisBackend, got {type(backend).__name__}")
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {type(breaker).__name__}")
        self._backend = backend
        self._breaker = breaker
        self._name = check_name(breaker.name if name is None else name)
        self._quorum = check_quorum(quorum)
        self._window = check_number(window, "window", min_value=0, allow_zero=False)
        self._window_ms = max(1, math.ceil(self._window * 1000))
        self._poll_interval = check_number(
            poll_interval, "poll_interval", min_value=0, allow_zero=False
        )
        if member_ttl is None:
            self._member_ttl = 3 * self._poll_interval
        else:
            self._member_ttl = check_number(member_ttl, "member_ttl", min_value=0, allow_zero=False)
            if self._member_ttl < 2 * self._poll_interval:
                raise ValueError(
                    f"member_ttl must be >= 2 * poll_interval ({2 * self._poll_interval:g}), got "
                    f"{member_ttl!r}: a member would expire between two polls"
                )
        self._member_ttl_ms = max(1, math.ceil(self._member_ttl * 1000))
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        self._clock: Clock = loop_time if clock is None else clock
        self._listeners: Listeners[Event] = Listeners(listeners)
        self._tracker = FallbackTracker(f"fleet-breaker:{self._name}", self._listeners)
        # One hash tag for the keys the poll script reads together (one Redis Cluster slot).
        self._key = backend.key("breaker", self._name, "opened")
        self._members_key = backend.key("breaker", self._name, "members")
        self._channel = backend.key("breaker", self._name, "events")
        self._publish: Any = backend.register_script(PUBLISH_LUA)
        self._poll: Any = backend.register_script(POLL_LUA)
        # Own openings: the latest one (local clock) and, once published, its Redis score.
        self._opened_at: float | None = None
        self._last_score: int | None = None
        self._pending = False  # the latest own opening is not in Redis yet
        self._republish = False  # Redis came back: make sure the latest opening is there
        self._follower = QuorumFollower()
        self._published = self._quorum_trips = self._last_reporters = self._polls = 0
        self._members = 0  # live members at the last poll (0: not polled yet)
        self._needed = reports_needed(self._quorum, 0)
        self._wake: anyio.Event | None = None
        self._task_group: TaskGroup | None = None
        breaker.add_listener(self._on_breaker_event)
        self._attached = True

    def close(self) -> None:
        """Stop reporting the local breaker's openings: detach from it (idempotent).

        The local breaker holds this fleet breaker through its listener until then; call it (after
        leaving ``async with``) when the fleet breaker is dropped and the local breaker lives on.
        """
        if self._attached:
            self._attached = False
            self._breaker.remove_listener(self._on_breaker_event)

    # -- introspection -----------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker:
        """The local breaker (it decides every call)."""
        return self._breaker

    @property
    def name(self) -> str:
        """The shared name."""
        return self._name

    @property
    def instance(self) -> str:
        """This instance's id in shared state (the backend's)."""
        return self._backend.instance

    @property
    def shared(self) -> bool:
        """True while Redis is reachable; False while decisions are local only."""
        return self._tracker.shared

    def statistics(self) -> FleetBreakerStatistics:
        """A frozen snapshot of the counters."""
        return FleetBreakerStatistics(
            name=self._name,
            instance=self._backend.instance,
            quorum=self._quorum,
            window=self._window,
            member_ttl=self._member_ttl,
            shared=self._tracker.shared,
            state=self._breaker.state,
            reports_published=self._published,
            reports_pending=int(self._pending),
            quorum_trips=self._quorum_trips,
            fallbacks=self._tracker.fallbacks,
            last_reporters=self._last_reporters,
            polls=self._polls,
            members=self._members,
            reports_needed=self._needed,
        )

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Register a listener for the fleet events."""
        self._listeners.add(listener)

    def __repr__(self) -> str:
        mode = "shared" if self._tracker.shared else "local-only"
        return (
            f"<FleetBreaker {self._name!r} {self._breaker.state} quorum={self._quorum} "
            f"window={self._window:g}s {mode}, {self._members} members, "
            f"{self._published} published, {self._quorum_trips} followed>"
        )

    # -- the call path: the local breaker alone ----------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``breaker.call(fn, ...)``: the local breaker decides (no Redis round trip).

        Raises:
            CircuitOpen: the local breaker refused the call (the callee did not run).
        """
        return await self._breaker.call(fn, *args, **kwargs)

    # -- local openings ----------------------------------------------------------------------------

    def _on_breaker_event(self, event: Event) -> None:
        if not isinstance(event, BreakerStateChanged):
            return
        if (
            event.new is BreakerState.OPEN
            and event.old is not BreakerState.OPEN
            and not event.manual
            and event.reason != FLEET_QUORUM
        ):
            self._opened_at = self._clock()
            self._last_score = None
            self._pending = True
            wake = self._wake
            if wake is not None:
                wake.set()

    # -- the watcher -------------------------------------------------------------------------------

    async def __aenter__(self) -> FleetBreaker:
        if self._task_group is not None:
            raise RuntimeError(f"fleet breaker {self._name!r} is already running")
        if not self._attached:
            raise RuntimeError(f"fleet breaker {self._name!r} is closed")
        self._wake = anyio.Event()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._watch, name=f"fleet-breaker:{self._name}:watch")
        if hasattr(
            self._backend.client, "pubsub"
        ):  # an asyncio RedisCluster has it from redis-py 8
            task_group.start_soon(self._listen, name=f"fleet-breaker:{self._name}:listen")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        self._wake = None
        if task_group is None:
            return
        task_group.cancel_scope.cancel()
        try:
            await task_group.__aexit__(exc_type, exc, tb)
        finally:
            # Leave the members now rather than a member_ttl later: bounded by the backend's
            # timeout, shielded from an outer cancellation; a failure only means we expire instead.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * self._backend.timeout):
                await self.leave()

    async def leave(self) -> bool:
        """Remove this instance from the live members (``async with`` does it on exit).

        Returns False when Redis is unavailable (the membership then expires after
        ``member_ttl``). The next poll, if the watcher still runs, joins again.
        """
        try:
            await self._backend.run(
                self._backend.client.zrem, self._members_key, self._backend.instance
            )
        except BackendUnavailable:
            return False
        return True

    async def sync(self) -> None:
        """One watcher round now: publish a pending own opening, then poll (a heartbeat too) and
        apply the quorum rule. The watcher calls it every ``poll_interval`` and on every pub/sub
        message; Redis failures are absorbed (fallback), never raised."""
        try:
            if self._pending or self._republish:
                await self._publish_latest()
            await self._poll_once()
        except BackendUnavailable as exc:
            self._tracker.failed(exc)

    async def _watch(self) -> None:
        while True:
            self._wake = anyio.Event()
            wake = self._wake
            try:
                await self.sync()
            except Exception:  # a bug (script error, ...): log it, never break the caller's calls
                _log.exception("fleet breaker %r: watcher round failed", self._name)
            with anyio.move_on_after(self._poll_interval):
                await wake.wait()

    async def _listen(self) -> None:
        """Wake the watcher on every pub/sub report; resubscribe after connection errors."""
        while True:
            pubsub: Any = self._backend.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._poll_interval
                    )
                    if message is not None and self._wake is not None:
                        self._wake.set()
            except UNAVAILABLE:
                pass  # polling covers the gap; try again after a poll interval
            except Exception:
                _log.exception("fleet breaker %r: pub/sub listener failed; retrying", self._name)
            finally:
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._backend.timeout),
                    contextlib.suppress(Exception),  # closing a dead connection may fail
                ):
                    await pubsub.aclose()
            await anyio.sleep(self._poll_interval)

    async def _publish_latest(self) -> None:
        opened_at = self._opened_at
        if opened_at is None:
            self._pending = self._republish = False
            return
        age = self._clock() - opened_at
        if age >= self._window:  # too old to count anywhere: nothing to (re)publish
            self._pending = self._republish = False
            return
        known = "" if self._last_score is None else str(self._last_score)
        age_ms = max(0, int(age * 1000))
        score, changed = await self._backend.run(
            self._publish,
            keys=[self._key],
            args=[self._backend.instance, self._window_ms, age_ms, known, self._channel],
        )
        self._tracker.succeeded()
        if self._opened_at == opened_at:  # not superseded by a newer opening meanwhile
            self._last_score = int(score)
            self._pending = self._republish = False
        if changed:
            self._published += 1

    async def _poll_once(self) -> None:
        me = self._backend.instance
        reply = await self._backend.run(
            self._poll,
            keys=[self._key, self._members_key],
            args=[me, self._window_ms, self._member_ttl_ms],
        )
        was_shared = self._tracker.shared
        self._tracker.succeeded()
        self._polls += 1
        if not was_shared:
            # Back from an outage: the next round makes sure our latest report is there.
            self._republish = True
        reports: dict[str, float] = {}
        live: set[str] = set()
        for i in range(2, len(reply) - 2, 3):
            member = reply[i]
            instance = member.decode() if isinstance(member, bytes) else str(member)
            reports[instance] = float(reply[i + 1])
            if int(reply[i + 2]):
                live.add(instance)
        count = count_reports(self._quorum, me, reports, live, int(reply[1]))
        self._members, self._needed = count.members, count.needed
        self._last_reporters = len(count.reporters)
        opened_at = self._opened_at
        if (
            me not in reports
            and self._last_score is not None
            and opened_at is not None
            and self._clock() - opened_at < self._window
        ):
            # Our published report is gone (Redis restarted between two polls, or a flush):
            # publish it again while it can still count (a no-op once it is out of the window).
            self._republish = True
        if self._republish and self._wake is not None:
            self._wake.set()
        breaker = self._breaker
        closed = (
            count.reached
            and breaker.state is BreakerState.CLOSED
            and not breaker.statistics().disabled
        )
        if not self._follower.observe(count, closed):
            return  # no quorum, nothing new, or absorbed by a local breaker acting on its own
        breaker.trip(FLEET_QUORUM)
        self._quorum_trips += 1
        if self._listeners:
            self._listeners.emit(
                FleetBreakerFollowed(
                    self._name, self._clock(), count.reporters, count.needed, count.members
                )
            )
