"""``DWCPResilientClient``: a DWCP client whose every operation runs through a ResilienceManager.

The Go package's client sent nothing and discovered a hard-coded list; this one talks to real peers
over TCP (:class:`~dwcp_resilience.dwcp.transport.DWCPConnection`), with the Go client's operation
names and defaults (:class:`DWCPResilienceConfig`):

===========================  =================================================================
operation                    protections (Go defaults)
===========================  =================================================================
``network-send``             bulkhead 100/50/5 s, retry 3 x (0.1 s .. 10 s, x2, jitter),
                             breaker 5 failures / 30 s attempt timeout / open 0.25 s
                             doubling to 2 s (Go: a fixed 60 s reset),
                             token bucket 1000/s burst 100, error budget 99.9 % / 24 h,
                             latency budget p95 <= 100 ms
``network-receive``          bulkhead, retry, breaker 5 / 30 s / 0.25 s .. 2 s
``peer-discovery``           retry, hedge (``discover_hedge``: after the p95 of recent
                             discoveries, 0.25 s until 20 are known; 10 % budget),
                             breaker ``max_failures // 2`` / 30 s / 0.25 s .. 2 s
``concurrent-connections``   bulkhead 100/50/5 s, connect timeout
===========================  =================================================================

Delivery guarantees:

- **Send is at-least-once with an idempotent id.** A message gets its id once, before the first
  attempt; every retry sends the same id and the peer stores it once. So a retried send is delivered
  once, and a send that failed for the caller (retries and deadline exhausted) may or may not have
  been stored, but is never stored twice.
- **Receive acknowledges after delivery.** The peer leases a message to the connection; the client
  hands it to ``handler`` (or returns it) and only then acknowledges it. A connection lost in between
  makes the peer hand the message out again; the client drops ids it has already delivered, so the
  application sees each message once. A failed acknowledgement does not fail the receive (the
  message is returned, its id remembered, and the redelivery dropped); a receive cancelled before
  it returns does not remember the id, so the message comes again.

After any failed attempt the connection it used is closed and the next attempt reconnects: a
stalled or half-broken connection is never reused.

**Discovery is hedged** (it only reads): when a discovery is slower than ``discover_hedge`` (by
default the 95th percentile of recent successful ones), a second attempt starts on a spare
connection to the same peer (opened on first use and kept), and the first answer wins. The loser
is cancelled and, like any attempt cancelled on a connection, closes it (a request that slow on it
suggests it is stalled). At most 10 % of discoveries (or 1 a second) are hedged; a failed discovery
is left to the retry. ``discover_hedge=None`` turns it off.

Deadlines travel on the wire: every request frame carries the time left before the innermost
deadline in force when it is written (the ``OperationContext``'s, the operation's total deadline,
the attempt timeout, an enclosing anyio cancel scope: the earliest), and the peer refuses work
whose deadline passed before it got to it with ``DEADLINE_EXCEEDED``. The caller then gets
:class:`~dwcp_resilience.dwcp.errors.PeerDeadlineExceeded` (a ``TimeoutError``), which the
breakers count as a failure, like a timeout, and the retry does not resend. A request whose
deadline has passed before it is written is not sent
(:class:`~dwcp_resilience.dwcp.errors.RequestExpired`, a timeout like the attempt timeout's).

Recovery after a peer restart takes seconds, not minutes, without hammering a dead peer:

- **One fault per connection.** Many requests share one connection; when it breaks they all fail
  at once. Only the first failure per connection counts in the breakers; the others are neutral
  (still retried). A peer killed under 16 concurrent requests is one failure, not sixteen.
- **Short, growing open periods.** An opened breaker stays open ``circuit_reset_initial``
  (0.25 s), doubling at every opening in a row up to ``circuit_reset_time`` (2 s): a dead peer
  sees at most one probe per breaker every 2 s, and a peer that returns is used again within 2 s.
  ``circuit_reset_initial = circuit_reset_time = 60.0`` is the Go package's fixed 60 s.
- **Health checks probe early.** When the ping check of a peer succeeds, every open breaker of
  this client ends its open period (:meth:`~dwcp_resilience.CircuitBreaker.end_open_period`): the
  next call is a half-open probe, without waiting for the rest of the open period.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any

import anyio

from ..core.context import OperationContext
from ..core.errors import DeadlineExceeded
from ..core.validate import check_int, check_name, check_number
from ..manager import ResilienceManager, ResilienceSnapshot
from ..policies.hedge import Percentile, hedge_attempt
from ..slo.checks import PingCheck
from .errors import (
    ConnectFailed,
    DWCPError,
    PeerDeadlineExceeded,
    is_repeat_fault,
    is_retryable,
    mark_repeat_fault,
)
from .protocol import Delivery, PeerInfo, new_message_id
from .transport import DWCPConnection

__all__ = ("DWCPResilienceConfig", "DWCPResilientClient", "SEND", "RECEIVE", "DISCOVER", "CONNECT")

SEND = "network-send"
RECEIVE = "network-receive"
DISCOVER = "peer-discovery"
CONNECT = "concurrent-connections"


def _failure(exc: BaseException) -> bool:
    """What counts as a failure of a DWCP attempt in the breakers."""
    return is_retryable(exc) or isinstance(exc, TimeoutError)


def _worth_retrying(exc: BaseException) -> bool:
    """What a retry sends again: a failure, but not a peer's ``DEADLINE_EXCEEDED`` (the budget it
    ran out of was the innermost deadline in force, the caller's)."""
    return not isinstance(exc, PeerDeadlineExceeded) and _failure(exc)


def _open_periods(initial: float, longest: float) -> Callable[[int], float]:
    """A breaker's open period after ``n`` openings in a row: ``initial``, doubling to ``longest``."""

    def open_duration(n: int) -> float:
        return min(longest, initial * 2.0 ** min(n - 1, 64))

    return open_duration


DISCOVER_HEDGE = Percentile(0.95, window=200, min_samples=20, fallback=0.25, minimum=0.002)
"""The default ``discover_hedge``: the p95 of the last 200 discoveries, 0.25 s until 20 are known,
never under 2 ms (two ticks of uvloop's millisecond loop clock: below that, on uvloop, most hedges
went to discoveries that were not slow, and the budget ran dry for those that were)."""


@dataclass(frozen=True, slots=True)
class DWCPResilienceConfig:
    """The Go ``DWCPResilienceConfig`` (same defaults), plus what a real client needs.

    Attributes (Go): max_failures 5, circuit_timeout 30 s (per attempt), circuit_reset_time (the
    longest open period: 2 s here, Go's fixed 60 s), max_retries 3, initial_retry_delay 0.1 s,
    max_retry_delay 10 s, retry_multiplier 2.0, health_check_interval 10 s,
    health_check_timeout 5 s (used here, unlike Go),
    requests_per_second 1000, burst_size 100, max_concurrent 100, max_queue_size 50,
    max_wait_time 5 s. Added: ``node_id`` (this client's mailbox name), ``peers`` ("host:port"; the
    first is the default peer), ``connect_timeout``, ``operation_deadline`` (total seconds per
    operation, ``None`` for none), ``availability_slo``/``latency_target``,
    ``circuit_reset_initial`` (the first open period, doubling at each opening in a row up to
    ``circuit_reset_time``; set both to 60.0 for the Go behaviour), ``discover_hedge`` (the delay
    after which a discovery is hedged: seconds, a :class:`~dwcp_resilience.Percentile`, or
    ``None`` for no hedging; default the p95 of the last 200, 0.25 s until 20 are known).
    """

    node_id: str = "client"
    peers: tuple[str, ...] = ()
    max_failures: int = 5
    circuit_timeout: float = 30.0
    circuit_reset_time: float = 2.0
    circuit_reset_initial: float = 0.25
    max_retries: int = 3
    initial_retry_delay: float = 0.1
    max_retry_delay: float = 10.0
    retry_multiplier: float = 2.0
    health_check_interval: float = 10.0
    health_check_timeout: float = 5.0
    requests_per_second: float = 1000.0
    burst_size: int = 100
    max_concurrent: int = 100
    max_queue_size: int = 50
    max_wait_time: float = 5.0
    connect_timeout: float = 5.0
    operation_deadline: float | None = None
    availability_slo: float = 0.999
    availability_window: float = 24 * 3600.0
    latency_target: float = 0.1
    seen_ids: int = field(default=100_000)
    discover_hedge: float | Percentile | None = DISCOVER_HEDGE

    def __post_init__(self) -> None:
        check_name(self.node_id, "node_id")
        if isinstance(self.peers, str) or not all(isinstance(p, str) and p for p in self.peers):
            raise TypeError("peers must be a sequence of 'host:port' strings")
        object.__setattr__(self, "peers", tuple(self.peers))
        check_int(self.max_failures, "max_failures", min_value=1)
        check_int(self.max_retries, "max_retries", min_value=0)
        check_int(self.burst_size, "burst_size", min_value=1)
        check_int(self.max_concurrent, "max_concurrent", min_value=1)
        check_int(self.max_queue_size, "max_queue_size", min_value=0)
        check_int(self.seen_ids, "seen_ids", min_value=1)
        for name in (
            "circuit_timeout",
            "circuit_reset_time",
            "circuit_reset_initial",
            "max_retry_delay",
            "max_wait_time",
            "health_check_interval",
            "health_check_timeout",
            "connect_timeout",
            "requests_per_second",
            "latency_target",
            "availability_window",
        ):
            check_number(getattr(self, name), name, min_value=0.0, allow_zero=False)
        check_number(self.initial_retry_delay, "initial_retry_delay", min_value=0.0)
        check_number(self.retry_multiplier, "retry_multiplier", min_value=0.0)
        check_number(
            self.availability_slo,
            "availability_slo",
            min_value=0.0,
            allow_zero=False,
            max_value=1.0,
        )
        if self.operation_deadline is not None:
            check_number(
                self.operation_deadline, "operation_deadline", min_value=0.0, allow_zero=False
            )
        if self.discover_hedge is not None and not isinstance(self.discover_hedge, Percentile):
            check_number(self.discover_hedge, "discover_hedge", min_value=0.0, allow_inf=True)
        if self.circuit_reset_initial > self.circuit_reset_time:
            raise ValueError(
                f"circuit_reset_initial ({self.circuit_reset_initial}) must not exceed "
                f"circuit_reset_time ({self.circuit_reset_time})"
            )


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"peer address must be 'host:port', got {address!r}")
    return host, int(port)


class DWCPResilientClient:
    """A resilient DWCP client (see the module docstring).

    Args:
        config: the configuration (Go defaults).
        manager: a manager to register the operations in (default: a new one named "dwcp").

    Use it as an async context manager: it runs health monitoring (a ping check per peer) and
    closes its connections on exit.
    """

    def __init__(
        self, config: DWCPResilienceConfig, *, manager: ResilienceManager | None = None
    ) -> None:
        if not isinstance(config, DWCPResilienceConfig):
            raise TypeError("config must be a DWCPResilienceConfig")
        self.config = config
        self.manager = manager or ResilienceManager(
            "dwcp",
            health_interval=config.health_check_interval,
            health_timeout=config.health_check_timeout,
        )
        self._connections: dict[str, DWCPConnection] = {}
        # A second connection per peer for hedged attempts: not the one the slow attempt is on.
        self._spares: dict[str, DWCPConnection] = {}
        # Connections whose failure an operation's breaker has counted already (one fault each).
        self._faulted: weakref.WeakSet[DWCPConnection] = weakref.WeakSet()
        # send_message's fast path: the default peer, the node id, the operation's context
        self._default = config.peers[0] if config.peers else ""
        self._node = config.node_id
        self._send_ctx = OperationContext(SEND)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._id_prefix = new_message_id()[:8]
        self._id_counter = itertools.count()
        self.sent = self.delivered = self.duplicates_dropped = 0
        self._register()

    def _register(self) -> None:
        c, rm = self.config, self.manager
        for operation in (SEND, RECEIVE, CONNECT):
            rm.register_bulkhead(operation, c.max_concurrent, c.max_queue_size, c.max_wait_time)
        for operation, failures in (
            (SEND, c.max_failures),
            (RECEIVE, c.max_failures),
            (DISCOVER, max(1, c.max_failures // 2)),
        ):
            rm.register_retry_policy(
                operation,
                c.max_retries,
                c.initial_retry_delay,
                c.max_retry_delay,
                c.retry_multiplier,
                True,
                retry_on=_worth_retrying,
            )
            # record_latency: network calls cost ~100 us, two clock reads do not show, and the
            # breaker's request-duration histogram (a Go metric) then has data.
            rm.register_circuit_breaker(
                operation,
                failures,
                c.circuit_timeout,
                c.circuit_reset_time,
                failure=_failure,
                ignore=is_repeat_fault,
                open_duration=_open_periods(c.circuit_reset_initial, c.circuit_reset_time),
                record_latency=True,
            )
        if c.discover_hedge is not None:
            # On slowness only: a failed discovery is the retry's to back off and try again.
            rm.register_hedge(
                DISCOVER, c.discover_hedge, hedge_on=_failure, hedge_after_failure=False
            )
        rm.register_rate_limiter(SEND, c.requests_per_second, c.burst_size)
        rm.register_timeout(CONNECT, c.connect_timeout)
        rm.register_error_budget(SEND, c.availability_slo, c.availability_window)
        rm.register_latency_budget(SEND, c.latency_target, 95.0, 1000)
        if c.operation_deadline is not None:
            for operation in (SEND, RECEIVE, DISCOVER, CONNECT):
                rm.register_deadline(operation, c.operation_deadline)
        for address in c.peers:
            self.manager.register_health_check(PingCheck(f"peer-{address}", self._pinger(address)))

    def _pinger(self, address: str) -> Callable[[], Awaitable[bool]]:
        async def ping() -> bool:
            conn = await self._connection(address)
            try:
                await conn.ping()
            except BaseException:
                await self._discard(address, conn)
                raise
            self._probe_early()
            return True

        return ping

    def _probe_early(self) -> None:
        """A peer answered a health check: end every open period, so the next call probes."""
        for operation in (SEND, RECEIVE, DISCOVER):
            breaker = self.manager.circuit_breaker(operation)
            if breaker is not None:
                breaker.end_open_period("health_check")

    def _peer(self, peer: str | None) -> str:
        if peer is not None:
            _split(peer)
            return peer
        if not self.config.peers:
            raise ValueError("no peer given and the config lists none")
        return self.config.peers[0]

    # --- connections ----------------------------------------------------------------------------

    async def establish_connection(self, peer: str | None = None) -> DWCPConnection:
        """Connect to ``peer`` (default: the first configured) through ``concurrent-connections``."""
        address = self._peer(peer)
        host, port = _split(address)
        timeout = self.config.connect_timeout

        async def connect(ctx: OperationContext) -> DWCPConnection:
            conn = await DWCPConnection.connect(host, port, connect_timeout=timeout)
            try:
                await conn.hello(self.config.node_id)
            except BaseException:
                await conn.aclose()
                raise
            return conn

        try:
            return await self.manager.execute_with_all_protections(CONNECT, connect)
        except DeadlineExceeded as exc:
            raise ConnectFailed(f"connect to {address} timed out") from exc

    async def _connection(self, address: str, *, spare: bool = False) -> DWCPConnection:
        pool = self._spares if spare else self._connections
        conn = pool.get(address)
        if conn is not None and conn.usable:
            return conn
        conn = await self.establish_connection(address)
        old = pool.get(address)
        if old is not None and old is not conn and old.usable:
            await conn.aclose()  # another task connected meanwhile: share its connection
            return old
        pool[address] = conn
        return conn

    async def _discard(
        self, address: str, conn: DWCPConnection, exc: BaseException | None = None
    ) -> None:
        """Close ``conn`` after a failed request. An operation's failure ``exc`` after the first
        one on the same connection is the same fault seen by another request: it is marked so,
        and the breakers do not count it again (``exc=None``: a health check, counted nowhere)."""
        for pool in (self._connections, self._spares):
            if pool.get(address) is conn:
                del pool[address]
        if isinstance(exc, Exception):
            if conn in self._faulted:
                mark_repeat_fault(exc)
            else:
                self._faulted.add(conn)
        with anyio.CancelScope(shield=True):
            await conn.aclose()

    async def _on(
        self,
        address: str,
        action: Callable[[DWCPConnection], Awaitable[object]],
        *,
        spare: bool = False,
    ) -> object:
        conn = await self._connection(address, spare=spare)
        try:
            return await action(conn)
        except BaseException as exc:
            await self._discard(address, conn, exc)
            raise

    # --- operations -----------------------------------------------------------------------------

    def send_message(
        self,
        recipient: str,
        body: bytes,
        *,
        peer: str | None = None,
        message_id: bytes | None = None,
        ctx: OperationContext | None = None,
    ) -> Coroutine[Any, Any, bytes]:
        """Store ``body`` in ``recipient``'s mailbox on ``peer``; ``await`` it for the message id.

        The id is fixed before the first attempt, so retries are idempotent. A plain function
        returning the manager's coroutine (one frame fewer on every socket suspension); a bad
        ``peer`` raises when called, nothing is sent until awaited.
        """
        address = self._peer(peer) if peer is not None or not self._default else self._default
        if message_id is None:  # unique: a random 64-bit prefix per client, then a counter
            mid = self._id_prefix + next(self._id_counter).to_bytes(8, "big")
        else:
            mid = message_id
        # A partial, not a closure: two allocations instead of a function and six cells.
        send = partial(self._send_attempt, address, recipient, body, mid)
        return self.manager.execute_with_all_protections(ctx or self._send_ctx, send)

    async def _send_attempt(
        self, address: str, recipient: str, body: bytes, mid: bytes, _: OperationContext
    ) -> bytes:
        """One attempt of :meth:`send_message` (one frame: every socket suspension resumes each
        frame of the stack)."""
        conn = self._connections.get(address)
        if conn is None or conn._broken is not None:  # not conn.usable, without the property call
            conn = await self._connection(address)
        try:
            await conn.send(recipient, body, sender=self._node, message_id=mid)
        except BaseException as exc:
            await self._discard(address, conn, exc)
            raise
        self.sent += 1  # here, not in send_message: it has no frame of its own
        return mid

    async def receive_message(
        self,
        handler: Callable[[Delivery], Awaitable[None]] | None = None,
        *,
        peer: str | None = None,
        ctx: OperationContext | None = None,
    ) -> Delivery | None:
        """Take the oldest message for this client from ``peer`` (``None`` when there is none).

        With ``handler``, the message is acknowledged only after ``handler`` returns; without it,
        after it is handed to the caller. Messages already delivered are acknowledged and skipped.
        """
        address = self._peer(peer)
        node = self.config.node_id

        async def receive(_: OperationContext) -> Delivery | None:
            async def on(conn: DWCPConnection) -> Delivery | None:
                while True:
                    delivery = await conn.receive(node)
                    if delivery is None:
                        return None
                    if delivery.message_id in self._seen:
                        self.duplicates_dropped += 1
                        await conn.ack(node, delivery.message_id)
                        continue
                    if handler is not None:
                        await handler(delivery)
                        self._remember(delivery.message_id)  # handled: never again
                    try:
                        await conn.ack(node, delivery.message_id)
                    except DWCPError:
                        # The message is ours: hand it over anyway. The peer hands it out again
                        # (no ack), and the remembered id drops it then.
                        await self._discard(address, conn)
                    self._remember(delivery.message_id)  # returned: never again
                    return delivery

            result = await self._on(address, on)
            return result if isinstance(result, Delivery) else None

        delivery = await self.manager.execute_with_all_protections(ctx or RECEIVE, receive)
        if delivery is not None:
            self.delivered += 1
        return delivery

    def _remember(self, message_id: bytes) -> None:
        seen = self._seen
        seen[message_id] = None
        if len(seen) > self.config.seen_ids:
            seen.popitem(last=False)

    async def discover_peers(self, *, peer: str | None = None) -> tuple[PeerInfo, ...]:
        """The peers ``peer`` knows (its seeds and those that said hello)."""
        address = self._peer(peer)

        async def discover(_: OperationContext) -> tuple[PeerInfo, ...]:
            async def on(conn: DWCPConnection) -> tuple[PeerInfo, ...]:
                return await conn.discover()

            # A hedged attempt runs on the spare connection: not on the one that is slow.
            result = await self._on(address, on, spare=hedge_attempt() > 1)
            assert isinstance(result, tuple)
            return result

        return await self.manager.execute_with_all_protections(DISCOVER, discover)

    # --- health, metrics, lifetime ------------------------------------------------------------------

    def is_healthy(self) -> bool:
        """The manager's health (every peer's ping check)."""
        return self.manager.is_healthy()

    def metrics(self) -> ResilienceSnapshot:
        """A frozen snapshot of every operation's statistics (``get_all_metrics``)."""
        return self.manager.get_all_metrics()

    async def aclose(self) -> None:
        """Close every connection."""
        connections = [*self._connections.values(), *self._spares.values()]
        self._connections, self._spares = {}, {}
        with anyio.CancelScope(shield=True):
            for conn in connections:
                await conn.aclose()

    async def __aenter__(self) -> DWCPResilientClient:
        await self.manager.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.manager.__aexit__(exc_type, exc, tb)
        finally:
            await self.aclose()
