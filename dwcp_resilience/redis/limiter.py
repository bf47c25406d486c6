"""``RedisRateLimiter``: one GCRA bucket shared by every process of a fleet, on Redis.

The same API and semantics as the local :class:`~dwcp_resilience.RateLimiter` where they make
sense (``try_acquire`` is ``async`` here, since it asks Redis): ``rate`` tokens per second, at most
``burst`` at once, ``n > burst`` refused at once, :class:`~dwcp_resilience.RateLimited` with
``retry_after``, ``call``, ``@limiter`` and ``async with``. Every process that uses the same backend
namespace and ``name`` shares the bucket.

**The script.** One Lua script (:mod:`~dwcp_resilience.redis._gcra`) decides each request
atomically in one round trip, on Redis' own clock (``TIME``), so process clocks do not matter. A
waiting ``acquire`` *reserves*: the script moves the bucket's ``tat`` forward and answers with the
admission time, and the caller sleeps until then (no polling; waiters are paced, first come first
served in the order their calls reach Redis). A request whose admission lies past ``max_wait``
(or the enclosing deadline) is refused at once and reserves nothing. The key expires when the
bucket would be full again. Across the fleet, for every window ``w``: ``admitted <= burst + rate*w``,
on Redis' clock, at the moment the script decides (a reserved slot; for a leased token, any moment
it may be used). Like every Redis limiter, a reply's network delay shifts its use a little later.

**Leases (precision and fairness against round trips).** A round trip costs about what the peers'
cost (limits, pyrate-limiter: one ``EVALSHA`` each), so the default takes more than one token per
round trip when it can: a call that finds the shared bucket more than half full may take up to
``lease_max`` tokens, serves the extras to later acquires of this process locally (no await, no
round trip) for ``lease_ttl`` seconds, and drops what is left after that. The lease's size adapts
to this process' demand: it doubles while round trips come less than ``lease_ttl`` apart and halves
when a lease expired with tokens left, so a quiet process leases nothing. The bound stays exact
for the *use* times: the script counts a lease's tokens as arriving at ``t0 + lease_ttl``, the
latest moment any of them may be used (a token used anywhere in ``[t0, t0 + lease_ttl]``; without
that charge the bound would be off by up to ``rate * lease_ttl``). The price: leased tokens left
unused, and the charge when the bucket had less debt than ``lease_ttl``, are capacity lost, and a
process holding a lease is served before the others for its lifetime. Both are limited: extras come
only out of the upper half of the bucket, so a bucket under pressure serves one exact request per
round trip and the fleet still reaches ``rate``. ``lease_max=1`` turns leasing off (the default for
``burst < 32``). Concurrent acquirers are not coalesced into one call: each makes its own round
trip, which keeps per-request ``max_wait`` and reservations simple.

**Cancellation.** A reservation made for a waiter that is cancelled while it sleeps is lost, not
given back (giving back shared time safely would need another round trip and a fence against the
reservations made after it): the fleet admits less, never more. So is a lease's unused remainder.

**Redis down or slow** (:class:`~dwcp_resilience.redis.BackendUnavailable`): with
``on_unavailable="local"`` (the default: *fail-open, bounded*), each process admits through a local
:class:`~dwcp_resilience.RateLimiter` of ``rate / fleet_size`` and ``burst // fleet_size`` (at
least 1), so a fleet of ``fleet_size`` processes stays near the shared rate (a request larger than
the local burst is refused, ``retry_after=None``); with ``"reject"``
(fail closed) every request is refused with ``RateLimited(retry_after=None)`` whose ``__cause__`` is
the ``BackendUnavailable``. Either way one :class:`~dwcp_resilience.redis.FleetFallback` event is
emitted per outage, and every call tries Redis first: the backend's guard breaker answers at once
while open and lets one probe through per ``reset_timeout``, so the first call after Redis is back
returns to shared state (one :class:`~dwcp_resilience.redis.FleetRestored`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, ParamSpec, TypeVar

import anyio

from ..core.context import current_deadline
from ..core.errors import RateLimited, not_callable
from ..core.events import Event, Listeners
from ..core.policy import PolicyBase
from ..core.validate import check_int, check_name, check_number
from ..policies.ratelimit import RateLimiter
from ..policies.ratelimit_core import check_request
from ._backend import BackendUnavailable, FallbackTracker, RedisBackend
from ._gcra import GCRA_LUA

__all__ = ("RedisRateLimiter", "RedisRateLimiterStatistics")

P = ParamSpec("P")
T = TypeVar("T")

_monotonic = time.monotonic
_INF = math.inf
_NO_WAIT = -1.0
_FOREVER_US = 1e300  # "no bound" for the script (Lua's tonumber of "inf" is not portable)
_ADMITTED = 1
_RESERVED = 2


@dataclass(frozen=True, slots=True)
class RedisRateLimiterStatistics:
    """A snapshot of one process' view of a shared rate limiter.

    :ivar name: the limiter's name (the shared key's last part).
    :ivar rate: tokens per second, fleet-wide.
    :ivar burst: the bucket's capacity, fleet-wide.
    :ivar admitted: requests this process admitted (shared, leased and local).
    :ivar rejected: requests refused (no tokens in time, or Redis down with ``"reject"``).
    :ivar cancelled: waiting requests cancelled (their reservation is lost).
    :ivar shared: admissions decided by Redis in a round trip of their own.
    :ivar leased: admissions served from this process' lease (also shared state).
    :ivar local: admissions decided by the local fallback limiter while Redis was unavailable.
    :ivar round_trips: script calls made (failed ones included).
    :ivar fallbacks: outages: times this limiter left shared state.
    :ivar on_shared: True while the limiter uses shared state.
    :ivar lease_left: leased tokens this process may still use.
    """

    name: str
    rate: float
    burst: int
    admitted: int
    rejected: int
    cancelled: int
    shared: int
    leased: int
    local: int
    round_trips: int
    fallbacks: int
    on_shared: bool
    lease_left: int


class RedisRateLimiter(PolicyBase):
    """A GCRA rate limiter shared by a fleet through Redis: ``rate`` tokens/s, ``burst`` at once.

    Args:
        backend: the guarded Redis connection; the bucket's key is
            ``backend.key("limiter", name)``.
        name: the shared bucket's name (and the name in errors, statistics and events).
        rate: tokens per second for the whole fleet; finite and > 0.
        burst: the bucket's capacity (it starts full) and the largest request; an int >= 1.
        max_wait: how long ``call``, ``@limiter`` and ``async with`` wait for a token (and the
            default of ``acquire``); ``None`` or ``inf``: as long as needed; ``0``: never.
        lease_max: the most tokens one round trip may take for this process (``1``: no leasing;
            default ``min(64, burst // 16)``, at least 1).
        lease_ttl: seconds a lease may be used (and the bucket time it is charged); > 0, finite.
        fleet_size: how many processes share the limiter; the local fallback runs at
            ``rate / fleet_size`` and ``burst // fleet_size`` (at least 1).
        on_unavailable: ``"local"`` (fail-open, bounded: the local fallback) or ``"reject"``
            (fail closed: ``RateLimited(retry_after=None)``) while Redis is unavailable.
        listeners: called with :class:`~dwcp_resilience.redis.FleetFallback` and
            :class:`~dwcp_resilience.redis.FleetRestored`.

    Raises:
        ValueError: a number out of range (``rate`` <= 0, NaN or inf, ``burst`` < 1, ...) or an
            unknown ``on_unavailable``.
        TypeError: an argument of the wrong type (``True`` as a number included).
    """

    __slots__ = (
        "_backend", "_burst", "_fleet_size", "_interval_us", "_key", "_last_trip", "_lease_left",
        "_lease_max", "_lease_reply", "_lease_t0", "_lease_ttl", "_lease_until", "_lease_us",
        "_lease_want", "_local", "_max_wait", "_name", "_on_unavailable", "_rate", "_script",
        "_tracker", "admitted", "cancelled", "leased", "local", "rejected", "round_trips",
        "shared",
    )  # fmt: skip

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        *,
        rate: float,
        burst: int,
        max_wait: float | None = None,
        lease_max: int | None = None,
        lease_ttl: float = 0.02,
        fleet_size: int = 1,
        on_unavailable: Literal["local", "reject"] = "local",
        listeners: Iterable[Callable[[Event], None]] = (),
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise TypeError(f"backend must be a RedisBackend, got {type(backend).__name__}")
        self._name = check_name(name)
        self._rate = check_number(rate, "rate", min_value=0.0, allow_zero=False)
        self._burst = check_int(burst, "burst", min_value=1)
        self._max_wait = _INF if max_wait is None else _check_wait(max_wait)
        if lease_max is None:
            lease_max = max(1, min(64, self._burst // 16))
        self._lease_max = check_int(lease_max, "lease_max", min_value=1)
        self._lease_ttl = check_number(lease_ttl, "lease_ttl", min_value=0.0, allow_zero=False)
        self._fleet_size = check_int(fleet_size, "fleet_size", min_value=1)
        if not isinstance(on_unavailable, str):
            raise TypeError(f"on_unavailable must be a str, got {type(on_unavailable).__name__}")
        if on_unavailable not in ("local", "reject"):
            raise ValueError(f"on_unavailable must be 'local' or 'reject', got {on_unavailable!r}")
        self._on_unavailable = on_unavailable
        self._backend = backend
        self._key = backend.key("limiter", self._name)
        self._script = backend.register_script(GCRA_LUA)
        self._interval_us = repr(1e6 / self._rate)  # script arguments, formatted once
        self._lease_us = repr(self._lease_ttl * 1e6)
        self._tracker = FallbackTracker(f"limiter:{self._name}", Listeners(listeners))
        self._local: RateLimiter | None = None
        self._lease_left = 0
        self._lease_until = -_INF  # local monotonic time the lease is good until
        self._lease_t0 = 0  # Redis time (µs) the lease was granted at
        self._lease_reply = 0.0  # local monotonic time its reply arrived
        self._lease_want = min(2, self._lease_max)  # the next lease's size (adaptive)
        self._last_trip = -_INF  # local monotonic time of the last round trip
        self.admitted = 0
        self.rejected = 0
        self.cancelled = 0
        self.shared = 0
        self.leased = 0
        self.local = 0
        self.round_trips = 0

    # -- reading ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The shared bucket's name."""
        return self._name

    @property
    def rate(self) -> float:
        """Tokens per second, fleet-wide."""
        return self._rate

    @property
    def burst(self) -> int:
        """The bucket's capacity, fleet-wide."""
        return self._burst

    @property
    def key(self) -> str:
        """The Redis key holding the bucket."""
        return self._key

    @property
    def max_wait(self) -> float:
        """The default wait bound (``inf``: as long as needed)."""
        return self._max_wait

    @property
    def backend(self) -> RedisBackend:
        """The guarded Redis connection."""
        return self._backend

    def statistics(self) -> RedisRateLimiterStatistics:
        """A snapshot of this process' counters."""
        return RedisRateLimiterStatistics(
            name=self._name,
            rate=self._rate,
            burst=self._burst,
            admitted=self.admitted,
            rejected=self.rejected,
            cancelled=self.cancelled,
            shared=self.shared,
            leased=self.leased,
            local=self.local,
            round_trips=self.round_trips,
            fallbacks=self._tracker.fallbacks,
            on_shared=self._tracker.shared,
            lease_left=self._lease_left if _monotonic() < self._lease_until else 0,
        )

    def __repr__(self) -> str:
        mode = "shared" if self._tracker.shared else "local"
        return (
            f"<RedisRateLimiter {self._name!r} rate={self._rate:g}/s burst={self._burst} "
            f"[{mode}, admitted {self.admitted}, rejected {self.rejected}]>"
        )

    def _check_n(self, n: int) -> None:
        check_request(n, self._burst)

    # -- acquiring -------------------------------------------------------------------------------

    async def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens now if the shared bucket has them; never waits.

        Raises:
            ValueError: if ``n`` < 1 or ``n`` > ``burst``.
        """
        if n.__class__ is not int or n != 1:
            self._check_n(n)
        try:
            await self._admit(n, _NO_WAIT)
        except RateLimited:
            return False
        return True

    async def acquire(self, n: int = 1, max_wait: float | None = None) -> None:
        """Take ``n`` tokens, reserving them and waiting up to ``max_wait`` seconds if needed.

        Args:
            n: how many tokens; ``1 <= n <= burst``.
            max_wait: the longest wait; ``None`` means the limiter's ``max_wait``.

        Raises:
            RateLimited: at once, if the tokens cannot be had within ``max_wait`` (nor before the
                enclosing deadline); ``retry_after`` says when they would be there (``None`` when
                Redis is unavailable and ``on_unavailable="reject"``).
            ValueError: if ``n`` < 1 or ``n`` > ``burst``, or ``max_wait`` < 0.
        """
        if n.__class__ is not int or n != 1:
            self._check_n(n)
        await self._admit(n, self._max_wait if max_wait is None else _check_wait(max_wait))

    async def _admit(self, n: int, limit: float) -> int:
        """Admit ``n`` tokens (waiting up to ``limit`` s; ``-1``: never), or raise ``RateLimited``.

        Returns the admission time in Redis' clock (µs): the script's ``now``, or the reserved
        slot; for a token taken from a lease, the lease's time plus the local time elapsed since.
        """
        if self._lease_left >= n and _monotonic() < self._lease_until:
            self._lease_left -= n
            self.leased += 1
            self.admitted += 1
            return self._lease_t0 + int((_monotonic() - self._lease_reply) * 1e6)
        if limit > 0.0:
            outer = current_deadline()
            if outer != _INF:
                limit = min(limit, max(0.0, outer - anyio.current_time()))
        wait_us = _NO_WAIT if limit < 0.0 else (_FOREVER_US if limit == _INF else limit * 1e6)
        sent = _monotonic()
        want = self._lease_want
        if self._lease_max > 1:
            # Size leases by this process' demand: double while round trips come within a
            # lease's lifetime, halve when a lease expired with tokens left.
            if sent - self._last_trip < self._lease_ttl:
                want = self._lease_want = min(2 * want, self._lease_max)
            elif self._lease_left > 0:
                want = self._lease_want = max(1, want // 2)
            self._last_trip = sent
            self._lease_left = 0
        self.round_trips += 1
        try:
            reply = await self._backend.run(
                self._script,
                keys=[self._key],
                args=[self._interval_us, self._burst, n, want, self._lease_us, repr(wait_us), ""],
            )
        except BackendUnavailable as exc:
            self._tracker.failed(exc)
            return await self._fallback(n, limit, exc)
        received = _monotonic()
        self._tracker.succeeded()
        code, now_us, granted, wait = (int(x) for x in reply)
        if code == _ADMITTED:
            if granted > n:
                self._lease_left = granted - n
                self._lease_until = sent + self._lease_ttl
                self._lease_t0 = now_us
                self._lease_reply = received
            self.shared += 1
            self.admitted += 1
            return now_us
        if code == _RESERVED:
            target = received + wait / 1e6
            try:
                # A timer may fire early (uvloop rounds to ms): sleep again until it is due.
                while (left := target - _monotonic()) > 0.0:  # noqa: ASYNC110
                    await anyio.sleep(left)
            except BaseException:
                self.cancelled += 1
                raise
            self.shared += 1
            self.admitted += 1
            return now_us + wait
        self.rejected += 1
        raise RateLimited(self._name, wait / 1e6 if wait >= 0 else None)

    async def _fallback(self, n: int, limit: float, exc: BackendUnavailable) -> int:
        if self._on_unavailable == "reject":
            self.rejected += 1
            raise RateLimited(self._name, None) from exc
        local = self._local
        if local is None:
            local = self._local = RateLimiter(
                f"{self._name}:local",
                rate=self._rate / self._fleet_size,
                burst=max(1, self._burst // self._fleet_size),
            )
        if n > local.burst:
            self.rejected += 1
            raise RateLimited(self._name, None) from exc
        if limit < 0.0:
            if not local.try_acquire(n):
                self.rejected += 1
                raise RateLimited(self._name, None) from exc
        else:
            try:
                await local.acquire(n, limit)
            except RateLimited:
                self.rejected += 1
                raise
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                raise
        self.local += 1
        self.admitted += 1
        return -1

    # -- the three idioms ------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take one token (waiting up to ``max_wait``), then run ``fn(*args, **kwargs)``.

        Raises:
            RateLimited: if no token can be had in time; ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        if self._lease_left >= 1 and _monotonic() < self._lease_until:
            self._lease_left -= 1
            self.leased += 1
            self.admitted += 1
        else:
            await self._admit(1, self._max_wait)
        return await fn(*args, **kwargs)

    async def __aenter__(self) -> RedisRateLimiter:
        await self.acquire(1)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def _check_wait(max_wait: object) -> float:
    return check_number(max_wait, "max_wait", min_value=0.0, allow_inf=True)
