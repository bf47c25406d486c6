"""An httpx client protected by a retry that honours Retry-After, a circuit breaker, a rate limiter
and an attempt timeout, with Prometheus metrics, against a flaky local server.

Run it: ``python examples/http_client.py`` (needs httpx: ``pip install 'dwcp-resilience[http]'``).

The example starts its own HTTP/1.1 server on 127.0.0.1 (a free port; plain asyncio, no
dependency). The server misbehaves by the arrival order of requests: it resets connections, hangs,
answers 503 with ``Retry-After: 1`` and 429 with ``Retry-After: 2``, and goes through a short outage
in which it resets every connection. 150 concurrent calls go through, outermost first::

    Retry -> CircuitBreaker -> RateLimiter -> Timeout(0.5 s) -> httpx

- the retry (``dwcp_resilience.http``) retries transport errors (``httpx.ConnectError`` and
  ``RemoteProtocolError`` are no ``OSError``), our attempt timeout, and 429/502/503/504 responses;
  it waits what ``Retry-After`` asks even above its backoff's ``max_delay`` (0.5 s here), and waits
  out an open breaker (``wait_rejected=True``: a ``CircuitOpen`` says when to come back);
- the breaker counts transport errors, timeouts and 5xx responses, not 429;
- the rate limiter paces every attempt that reaches the wire (200/s, burst 20);
- metrics are read from the policies at scrape time (``ResilienceCollector``), no push.

It prints what happened and a few metric lines, and exits 0 when every call got a 200.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from dwcp_resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ExponentialBackoff,
    Pipeline,
    RateLimiter,
    Retry,
    RetryEvent,
    RetryScheduled,
    Timeout,
)
from dwcp_resilience.http import is_retryable_response, is_transient_error, retry_after_hint
from dwcp_resilience.prometheus import ResilienceCollector

CALLS = 150
OUTAGE_AT = 40  # the request (by arrival) that starts the outage
OUTAGE = 0.5  # seconds during which every connection is reset
RESPONSES = {
    "ok": (200, "OK", ()),
    "503": (503, "Service Unavailable", (("Retry-After", "1"),)),
    "429": (429, "Too Many Requests", (("Retry-After", "2"),)),
}


class FlakyServer:
    """A small HTTP/1.1 server (keep-alive, GET only) that misbehaves on a fixed schedule."""

    def __init__(self) -> None:
        self.requests = 0
        self.seen: Counter[str] = Counter()
        self.outage_until = 0.0
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    def action(self, n: int) -> str:
        """What request number ``n`` (0-based, by arrival) gets."""
        now = time.monotonic()
        if n == OUTAGE_AT:
            self.outage_until = now + OUTAGE
        if now < self.outage_until or n % 12 == 3:
            return "reset"
        if n % 15 == 5:
            return "hang"
        if n % 10 == 7:
            return "503"
        if n % 30 == 9:
            return "429"
        return "ok"

    async def __aenter__(self) -> FlakyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        handlers = list(self._connections.values())
        for writer in list(self._connections):  # idle keep-alive connections end their handlers
            writer.transport.abort()
        await asyncio.gather(*handlers)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")  # GET: no body
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                action = self.action(self.requests)
                self.requests += 1
                self.seen[action] += 1
                if action == "reset":
                    writer.transport.abort()
                    return
                if action == "hang":
                    await reader.read()  # until the client gives up and closes the connection
                    return
                status, reason, extra = RESPONSES[action]
                body = f"{action}\n".encode()
                head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
                head += [f"{name}: {value}" for name, value in extra]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            del self._connections[writer]
            writer.close()


async def main() -> int:
    registry = CollectorRegistry()
    collector = ResilienceCollector(namespace="dwcp", registry=registry)
    hinted: list[float] = []  # waits for a response's Retry-After longer than max_delay
    breaker_waits: list[float] = []  # waits for an open breaker (CircuitOpen.retry_after)

    def on_retry(event: RetryEvent) -> None:
        if isinstance(event, RetryScheduled):
            if event.exception is CircuitOpen:
                breaker_waits.append(event.delay)
            elif event.exception is None and event.delay > backoff.max_delay:
                hinted.append(event.delay)

    backoff = ExponentialBackoff(initial_delay=0.05, max_delay=0.5, multiplier=2.0, jitter=True)
    retry = collector.track(
        Retry(
            "api",
            max_retries=10,
            backoff=backoff,
            retry_on=is_transient_error,
            retry_on_result=is_retryable_response,
            retry_after=retry_after_hint,
            max_retry_after=10.0,
            wait_rejected=True,
            listeners=[on_retry],
        )
    )
    breaker = collector.track(
        CircuitBreaker(
            "api",
            max_failures=5,
            reset_timeout=1.0,
            half_open_max_calls=1,
            half_open_successes=1,
            half_open_max_wait=0.6,
            failure=is_transient_error,
        )
    )
    limiter = collector.track(RateLimiter("api", rate=200.0, burst=20))
    pipeline = Pipeline(retry, breaker, limiter, Timeout(0.5, name="attempt"), name="api")

    async with FlakyServer() as server:
        print(f"flaky server on 127.0.0.1:{server.port}")
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", limits=limits
        ) as c:
            started = time.monotonic()
            results = await asyncio.gather(
                *(pipeline.call(c.get, f"/item/{i}") for i in range(CALLS)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started

    statuses = Counter(
        r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in results
    )
    ok = statuses.get(200, 0)
    print(
        f"{CALLS} concurrent calls in {elapsed:.1f} s: {ok} x 200, other outcomes: "
        f"{ {k: v for k, v in statuses.items() if k != 200} or 'none' }"
    )
    seen = server.seen
    print(
        f"server saw {server.requests} requests: {seen['ok']} ok, {seen['reset']} reset, "
        f"{seen['hang']} hung, {seen['503']} x 503 (Retry-After: 1), "
        f"{seen['429']} x 429 (Retry-After: 2)"
    )
    r = retry.statistics()
    print(
        f"retry: {r.retries} retries; {len(hinted)} waited a response's Retry-After above "
        f"max_delay={backoff.max_delay:g} s (up to {max(hinted, default=0.0):g} s), "
        f"{len(breaker_waits)} waited out the open breaker; gave up: {r.total_failures}"
    )
    b = breaker.statistics()
    opened = sum(n for (_, to), n in b.state_changes.items() if to is BreakerState.OPEN)
    print(
        f"breaker: {b.state.name.lower()} now; opened {opened} time(s), refused {b.rejected} "
        f"attempts without touching the server"
    )
    lim = limiter.statistics()
    print(f"rate limiter: {lim.allowed} attempts admitted at {lim.rate:g}/s")
    print("metrics (a few lines of the scrape):")
    wanted = (
        "dwcp_circuit_breaker_state{",
        "dwcp_circuit_breaker_requests_total{",
        'dwcp_retry_attempts_total{attempt="1"',
        'dwcp_retry_attempts_total{attempt="2"',
        "dwcp_retry_success_total{",
        "dwcp_rate_limiter_allowed_total{",
    )
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(wanted):
            print("  " + line)
    collector.close()
    return 0 if ok == CALLS else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
