"""The fleet backend's connection: one ``redis.asyncio`` client, guarded by our own policies.

Every Redis call of the fleet primitives goes through :meth:`RedisBackend.run`: a per-call
:class:`~dwcp_resilience.Timeout` inside a :class:`~dwcp_resilience.CircuitBreaker`. When Redis is
down, slow, or the guard breaker is open, ``run`` raises :class:`BackendUnavailable` (at once, while
the guard is open, so a dead Redis costs no connect attempt per call) and the primitive falls back to
its local state. A :class:`FallbackTracker` per primitive turns those outcomes into one
:class:`FleetFallback` event when the primitive leaves shared state and one :class:`FleetRestored`
when it is back, however many calls fail in between.

Redis' own errors that are not about reachability (a script error, a wrong key type) are bugs, not
outages: they propagate unchanged and do not trip the guard. A cluster in the middle of a failover
(``CLUSTERDOWN``, an uncovered slot, a redirect loop that ran out of hops, ``TRYAGAIN``) and a
replica that refuses writes (``READONLY``) are outages.

**Deployments.** One server (``Redis``), a Redis Cluster (``RedisBackend(url, cluster=True)`` or
``client=redis.asyncio.RedisCluster(...)``), or a primary watched by Sentinel
(``client=Sentinel(...).master_for(service)``). Every script runs by ``EVALSHA`` with its keys
declared, and the client loads it again when a server answers ``NOSCRIPT`` (a restarted server, or
a replica promoted by a failover: Redis does not replicate its script cache).

**Keys** are ``{<namespace>:<kind>:<name>}[:...]``: the part in braces is a Redis Cluster *hash
tag*, so every key of one primitive lives in one slot and each of its scripts runs on one node.
Every primitive gives its keys a TTL, so a fleet that stops using a name leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.lowlevel
import redis.asyncio as redis_asyncio
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.clock import Clock, loop_time
from ..core.errors import CircuitOpen, DeadlineExceeded, ResilienceError
from ..core.events import Event, Listeners
from ..core.validate import check_name, check_number
from ..policies.breaker import CircuitBreaker
from ..policies.timeout import Timeout

__all__ = (
    "BackendUnavailable",
    "FallbackTracker",
    "FleetFallback",
    "FleetRestored",
    "RedisBackend",
)

P = ParamSpec("P")
T = TypeVar("T")

#: Redis Cluster's "not now": ``CLUSTERDOWN``/``MASTERDOWN`` and a redirect loop that ran out of
#: hops (``ClusterError``), ``TRYAGAIN`` during a resharding, a slot no node serves, and no node
#: reachable at all (redis-py 8.2 raises ``RedisClusterUnreachableError`` for it; 5.0 a plain
#: ``RedisClusterException``, which also means misuse and so stays a bug here); ``READONLY``: a
#: server that became a replica refuses writes.
_FAILING_OVER: tuple[type[Exception], ...] = (
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    ReadOnlyError,
    *(
        (redis_errors.RedisClusterUnreachableError,)
        if hasattr(redis_errors, "RedisClusterUnreachableError")
        else ()
    ),
)

#: What counts as "Redis is not there": connection and timeout errors, socket errors, a cluster
#: or replica in the middle of a failover, and our own per-call deadline. Everything else Redis
#: raises (a script error, a wrong key type, ...) is a bug and propagates.
UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    DeadlineExceeded,
    *_FAILING_OVER,
)

#: A Redis client the backend can use: one server (also a Sentinel-managed primary) or a cluster.
RedisClient = redis_asyncio.Redis | RedisCluster


_CAUGHT: tuple[type[Exception], ...] = (CircuitOpen, *UNAVAILABLE)
# A cluster client's first contact: older redis-py raise a plain RedisClusterException when no
# node answers.
_CONNECT_FAILED: tuple[type[Exception], ...] = (RedisClusterException, *UNAVAILABLE)


class BackendUnavailable(ResilienceError):
    """Redis could not be used for this call (down, too slow, or the guard breaker is open).

    The fleet primitives catch it and fall back to local state; ``__cause__`` is the Redis, socket,
    deadline or :class:`~dwcp_resilience.CircuitOpen` error behind it.
    """


@dataclass(frozen=True, slots=True)
class FleetFallback(Event):
    """A fleet primitive lost Redis and now runs on local state (``reason``: what failed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class FleetRestored(Event):
    """A fleet primitive reached Redis again and is back on shared state after ``down_for`` s."""

    down_for: float


def _default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisBackend:
    """A Redis connection for the fleet primitives, guarded by a breaker and a per-call timeout.

    Args:
        url: where Redis is (not with ``client``): ``redis://host:port/db``, or with
            ``cluster=True`` any node of a Redis Cluster (``redis://host:port``).
        cluster: ``url`` is a Redis Cluster: use a ``redis.asyncio.RedisCluster``, which finds
            every node from that one and follows ``MOVED``/``ASK`` redirects.
        client: an existing ``redis.asyncio.Redis`` (a Sentinel-managed one from
            ``Sentinel.master_for`` included) or ``redis.asyncio.RedisCluster`` to use instead
            (its own timeouts and retries are kept; give it a socket timeout and no retries, as
            ours does: a failed call falls back at once). It is not closed by :meth:`aclose`.
        namespace: the first part of every key, so fleets can share one Redis; no braces (they
            would change the keys' hash tag).
        instance: this process' identity in shared state (default ``host:pid:random``).
        timeout: seconds a single Redis call may take before it counts as unavailable.
        breaker: the guard; the default opens after 3 consecutive unavailable calls and probes
            again after 1 s, so a dead Redis is retried once a second, not on every call.

    Raises:
        TypeError: ``client`` is not a ``Redis`` or ``RedisCluster``, or a setting has the
            wrong type.
        ValueError: ``client`` with ``cluster=True``, a namespace with braces, or a bad number.

    Use it as an async context manager (or call :meth:`aclose`) to close the connection pool.
    ``redis.asyncio`` is asyncio-only: the fleet primitives run on asyncio and uvloop, not trio.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        client: RedisClient | None = None,
        namespace: str = "dwcp",
        instance: str | None = None,
        timeout: float = 0.25,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._namespace = check_name(namespace, "namespace")
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must not contain braces, got {namespace!r}")
        self._instance = check_name(instance, "instance") if instance is not None else None
        self._timeout = check_number(timeout, "timeout", min_value=0, allow_zero=False)
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be a bool, got {type(cluster).__name__}")
        if client is not None:
            if not isinstance(client, (redis_asyncio.Redis, RedisCluster)):
                raise TypeError(
                    "client must be a redis.asyncio.Redis or RedisCluster, "
                    f"got {type(client).__name__}"
                )
            if cluster:
                raise ValueError("cluster=True builds a client from url: not with client=")
            self._owns_client = False
        else:
            # No retries in the client (the asyncio Retry class: redis-py >= 8.2 warns on the
            # synchronous one): the guard breaker owns retries, and a failed call falls back to
            # local state at once. Without one, redis-py >= 6 would retry three times.
            # RedisCluster still follows MOVED and ASK redirects (they are not retries).
            options: dict[str, Any] = {
                "socket_timeout": self._timeout,
                "socket_connect_timeout": self._timeout,
                "retry": Retry(NoBackoff(), 0),
            }
            if cluster:
                # The socket timeouts stay `timeout` for a cluster too: they also bound what
                # redis-py may still await after our deadline cancelled a call. They are per read,
                # so the first slot fetch, outside the deadline (see `_learn_slots`), gets
                # `timeout` for each of its reads rather than for all of them.
                client = RedisCluster.from_url(url, **options)
            else:
                client = redis_asyncio.Redis.from_url(url, **options)
            self._owns_client = True
        self._client: RedisClient = client
        # A cluster client learns the slot map on its first command; until we have seen it learn
        # once, `run` does that first (see `_learn_slots`).
        self._slots_known = not isinstance(client, RedisCluster)
        self._learning = False
        self._guard = breaker or CircuitBreaker(
            f"redis:{self._namespace}",
            max_failures=3,
            reset_timeout=1.0,
            half_open_successes=1,
            failure=UNAVAILABLE,
        )
        # The per-call deadline, inside the guard (so that the cluster's first slot fetch, which
        # also goes through the guard, is not under it).
        self._deadline = Timeout(self._timeout, name=f"redis:{self._namespace}.timeout")

    @property
    def client(self) -> RedisClient:
        """The underlying ``Redis`` or ``RedisCluster`` (unguarded: prefer :meth:`run`)."""
        return self._client

    @property
    def cluster(self) -> bool:
        """True when the client is a ``RedisCluster``."""
        return isinstance(self._client, RedisCluster)

    @property
    def breaker(self) -> CircuitBreaker:
        """The guard breaker: open while Redis is considered down."""
        return self._guard

    @property
    def namespace(self) -> str:
        """The prefix of every key."""
        return self._namespace

    @property
    def instance(self) -> str:
        """This process' identity in shared state."""
        if self._instance is None:
            self._instance = _default_instance()
        return self._instance

    @property
    def timeout(self) -> float:
        """Seconds a single Redis call may take."""
        return self._timeout

    def key(self, kind: str, name: str, *parts: str) -> str:
        """``{<namespace>:<kind>:<name>}[:part...]``, the key layout of every fleet primitive.

        The braces are a Redis Cluster hash tag: every key with the same namespace, kind and name
        hashes to one slot, so a script may touch all of them. (A name with a ``}`` ends the tag
        early; the keys of one primitive still share it.)
        """
        tag = f"{{{self._namespace}:{kind}:{name}}}"
        return ":".join((tag, *parts)) if parts else tag

    def register_script(self, source: str) -> Any:
        """A Lua script run by SHA (``EVALSHA`` with its keys, so a cluster routes it to their
        slot's node; loaded again when a server answers ``NOSCRIPT``: a restarted server, or a
        replica that a failover promoted)."""
        return self._client.register_script(source)

    async def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one Redis call under the guard, cut at ``timeout``.

        Raises:
            BackendUnavailable: Redis is down or slow, or the guard breaker is open (no call made).
        """
        try:
            if not self._slots_known:
                if self._learning:  # not the guard's business: Redis may be fine
                    raise BackendUnavailable("the cluster's slot map is being fetched")
                await self._guard.call(self._learn_slots)
            return await self._guard.call(self._deadline.call, fn, *args, **kwargs)
        except _CAUGHT as exc:
            raise BackendUnavailable(f"redis unavailable: {exc!r}") from exc

    async def _learn_slots(self) -> None:
        """Let the cluster client learn its slot map (and command table) before its first call.

        The fetch is not under the per-call deadline: cut at ``timeout``, redis-py tears the
        half-built client down inside that cancellation and leaves its sockets open, and on a
        loaded machine every next call was cut again, so the fleet stayed on local state for good.
        What bounds the fetch is the client's own socket timeouts, per connect and per read (ours:
        ``timeout`` each), which fail it with an error that the guard counts. One call
        fetches at a time (through `run`); the others meanwhile fall back at once, uncounted.
        """
        client = self._client
        assert isinstance(client, RedisCluster)
        self._learning = True
        try:
            await client.initialize()
        except RedisClusterException as exc:
            if isinstance(exc, UNAVAILABLE):
                raise
            # Older redis-py raise a plain RedisClusterException when no node answers.
            raise RedisConnectionError(f"no cluster node answered: {exc}") from exc
        finally:
            self._learning = False
        self._slots_known = True

    async def ping(self) -> bool:
        """True when Redis answers a PING through the guard."""
        try:
            await self.run(self._client.ping)
        except BackendUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection pool (only when this backend created the client).

        The close runs to its end also in a cancelled scope (a task group shutting down, a
        deadline that passed): cut short, redis-py leaves its sockets open. It is bounded by
        ``max(1, 4 * timeout)`` seconds; a cancellation that arrived meanwhile is raised after.
        """
        if self._owns_client:
            with anyio.CancelScope(shield=True), anyio.move_on_after(max(1.0, 4 * self._timeout)):
                await self._client.aclose()
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def connect(self) -> bool:
        """Learn a cluster's slots now, so that the first calls do not pay for it.

        A ``RedisCluster`` asks a node for the slot map (and command metadata) before its first
        command, which can take longer than one call's ``timeout`` (about 0.05 s on an idle
        loopback, several times that on a loaded machine). ``async with backend`` calls this.
        The fetch is not cut short (a cut one leaves connections open in redis-py, and would be
        cut again next time): the client's socket timeouts bound each of its reads and connects.
        It never raises for an unreachable cluster (the first calls then fall back as usual, and
        learn the slots once a node answers), and does nothing for one server, whose client
        connects within a call. Returns True when the client is ready.
        """
        if self._slots_known:
            return True
        try:
            await self._learn_slots()
        except _CONNECT_FAILED:
            return False
        return True

    async def __aenter__(self) -> RedisBackend:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<RedisBackend namespace={self._namespace!r} guard={self._guard.state.name.lower()}>"
        )


class FallbackTracker:
    """Whether one fleet primitive is on shared or local state, with an event per change.

    :meth:`failed` after a :class:`BackendUnavailable`, :meth:`succeeded` after a Redis call that
    worked; only the changes between the two modes emit events.
    """

    __slots__ = ("_clock", "_down_since", "_listeners", "_name", "fallbacks")

    def __init__(
        self,
        name: str,
        listeners: Listeners[Event] | Iterable[Callable[[Event], None]] = (),
        clock: Clock | None = None,
    ) -> None:
        self._name = name
        self._listeners: Listeners[Event] = (
            listeners if isinstance(listeners, Listeners) else Listeners(listeners)
        )
        self._clock = clock or loop_time
        self._down_since: float | None = None
        #: how many times this primitive has fallen back to local state.
        self.fallbacks = 0

    @property
    def shared(self) -> bool:
        """True while the primitive uses shared (Redis) state."""
        return self._down_since is None

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: switch to local state (one :class:`FleetFallback` per outage)."""
        if self._down_since is not None:
            return
        now = self._clock()
        self._down_since = now
        self.fallbacks += 1
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if self._listeners:
            self._listeners.emit(FleetFallback(self._name, now, repr(cause)))

    def succeeded(self) -> None:
        """A Redis call worked: back on shared state (one :class:`FleetRestored`)."""
        since = self._down_since
        if since is None:
            return
        now = self._clock()
        self._down_since = None
        if self._listeners:
            self._listeners.emit(FleetRestored(self._name, now, now - since))
