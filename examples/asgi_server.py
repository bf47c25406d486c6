"""Server-side protection for an ASGI app: a bulkhead and load shedding that answer 503 with a
``Retry-After`` computed from their state, as ASGI middleware.

Run it: ``python examples/asgi_server.py`` (the clients need httpx: ``pip install
'dwcp-resilience[http]'``; the middleware itself needs nothing beyond ``dwcp_resilience``).

:class:`Protect` wraps any ASGI application (a raw callable here; a framework's app the same way,
``app = Protect(app, bulkhead=..., shedder=...)``). For each HTTP request:

1. it reports the load, the requests in flight and queued, to a ``LoadShedder``, which drops a
   share of requests once the load is above its ``max_load``: 503 with ``Retry-After`` = the time
   the backlog above ``max_load`` takes to drain;
2. it runs the request inside a ``Bulkhead`` (at most ``max_concurrent`` at once, a bounded queue,
   a maximum wait); when the queue is full or the wait runs out: 503 with ``Retry-After`` = the time
   the whole backlog takes to drain.

The drain times come from the bulkhead's state (running and queued requests, its permit count) and
the mean service time the middleware measures (an exponentially weighted average), rounded up to
whole seconds. Other scopes (``lifespan``, ``websocket``) pass through untouched.

The example drives the protected app in-process (``httpx.ASGITransport``): one burst of plain
requests, to show the refusals and their ``Retry-After``, then one burst through a client ``Retry``
that honours ``Retry-After`` (``dwcp_resilience.http``), which gets every answer. It exits 0 when
the first burst saw both answers and refusals and the second got a 200 for every request.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx

from dwcp_resilience import (
    Bulkhead,
    BulkheadFull,
    ConstantBackoff,
    LoadShedder,
    Retry,
    RetryEvent,
    RetryScheduled,
)
from dwcp_resilience.http import format_retry_after, is_retryable_response, retry_after_hint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BURST = 60
WORK = 0.1  # seconds of work per request in the demo app


class Protect:
    """ASGI middleware: load shedding, then a bulkhead; refusals are 503 with ``Retry-After``.

    Args:
        app: the ASGI application to protect.
        bulkhead: bounds the requests that run at once (and those that wait).
        shedder: drops a share of the requests while the load is above its ``max_load``.
        service_time: the first guess of a request's duration, in seconds, until one is measured.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        bulkhead: Bulkhead,
        shedder: LoadShedder,
        service_time: float = 0.1,
    ) -> None:
        self.app = app
        self.bulkhead = bulkhead
        self.shedder = shedder
        self.service_time = service_time  # seconds, an exponentially weighted mean
        self.refused: Counter[str] = Counter()

    def load(self) -> int:
        """Requests in flight: holding a permit or queued for one."""
        bulkhead = self.bulkhead
        return bulkhead.max_concurrent - bulkhead.available + bulkhead.queued

    def drain_time(self, requests: float) -> float:
        """Seconds for ``requests`` requests to go through at the bulkhead's concurrency."""
        return max(requests, 1.0) * self.service_time / self.bulkhead.max_concurrent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        load = self.load()
        self.shedder.update_load(load)
        if self.shedder.should_shed():
            wait = self.drain_time(load - self.shedder.max_load)
            await self.refuse(send, "shed", wait)
            return
        admitted = False
        try:
            async with self.bulkhead:
                admitted = True
                started = anyio.current_time()
                await self.app(scope, receive, send)
                took = anyio.current_time() - started
                self.service_time += 0.2 * (took - self.service_time)
        except BulkheadFull:
            if admitted:  # the app's own bulkhead, not ours: not ours to answer
                raise
            await self.refuse(send, "full", self.drain_time(self.load()))

    async def refuse(self, send: Send, reason: str, wait: float) -> None:
        """Answer 503 with ``Retry-After`` (whole seconds, rounded up) and say why."""
        self.refused[reason] += 1
        body = f"overloaded ({reason}), retry after {wait:.2f} s\n".encode()
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", format_retry_after(wait).encode()),
            (b"x-refused-by", reason.encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """The protected app: a raw ASGI callable that does ``WORK`` seconds of work."""
    await anyio.sleep(WORK)
    body = b"hello\n"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def describe(responses: list[httpx.Response]) -> str:
    kinds = Counter(
        "200" if r.status_code == 200 else f"503 {r.headers.get('x-refused-by', '?')}"
        for r in responses
    )
    text = f"{kinds['200']} x 200, {kinds['503 shed']} x 503 shed, {kinds['503 full']} x 503 full"
    refused = [r for r in responses if r.status_code == 503]
    if refused:
        hints = sorted({int(r.headers["retry-after"]) for r in refused})
        computed = [float(r.text.split("retry after ")[1].split(" s")[0]) for r in refused]
        text += (
            f"; Retry-After: {', '.join(map(str, hints))} s (computed waits "
            f"{min(computed):.2f}-{max(computed):.2f} s, rounded up)"
        )
    return text


async def main() -> int:
    bulkhead = Bulkhead("app", max_concurrent=8, max_queue=16, max_wait=1.0)
    shedder = LoadShedder("app", max_load=16, rng=7)
    app = Protect(hello, bulkhead=bulkhead, shedder=shedder)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        print(f"ASGI app behind Protect: {bulkhead!r}, shedding above a load of 16")
        responses = await asyncio.gather(*(client.get(f"/{i}") for i in range(BURST)))
        print(f"burst of {BURST} plain requests: {describe(responses)}")
        first = Counter(r.status_code for r in responses)
        hints_ok = all(
            float(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503
        )

        waits: list[float] = []

        def on_retry(event: RetryEvent) -> None:
            if isinstance(event, RetryScheduled):
                waits.append(event.delay)

        retry = Retry(
            "client",
            max_retries=6,
            backoff=ConstantBackoff(delay=0.05),
            retry_on_result=is_retryable_response,
            retry_after=retry_after_hint,
            listeners=[on_retry],
        )
        responses = await asyncio.gather(*(retry.call(client.get, f"/{i}") for i in range(BURST)))
        print(
            f"burst of {BURST} requests through a Retry that honours Retry-After: "
            f"{describe(responses)}, after {len(waits)} retries that waited what the server "
            f"asked ({', '.join(f'{w:g}' for w in sorted(set(waits))) or 'nothing'} s)"
        )
        second = Counter(r.status_code for r in responses)
    stats = bulkhead.statistics()
    print(
        f"server side: {stats.admitted} requests served, shed {shedder.statistics().shed}, "
        f"bulkhead refused {stats.rejected} (queue full {stats.rejected_full}, waited too long "
        f"{stats.timed_out}); mean service time {app.service_time:.3f} s"
    )
    success = first[200] > 0 and first[503] > 0 and hints_ok and second[200] == BURST
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
