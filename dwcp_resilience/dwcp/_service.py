"""``BackgroundService``: ``start()``/``aclose()``/``async with`` around a ``serve()`` method.

The peer and the chaos proxy both listen in a task group of their own that lives between
``start()`` and ``aclose()`` (called from the same task), so a test or the demo can run one beside
its own code without a task group of its own.

:func:`accept_forever` is their accept loop. anyio's ``Listener.serve`` ends at the first failed
``accept()``, so running out of file descriptors would stop a server for good; here, as in trio's
``serve_listeners``, a capacity error (EMFILE, ENFILE, ENOMEM, ENOBUFS) is logged and retried after
:data:`ACCEPT_RETRY_DELAY`, and a connection that died in the backlog (ECONNABORTED, EPROTO) is skipped.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, NoReturn, Self

import anyio
import anyio.abc

__all__ = ()

log = logging.getLogger("dwcp_resilience.dwcp")

ACCEPT_RETRY_DELAY = 0.1
"""Seconds a server waits after ``accept()`` failed for lack of descriptors or memory."""

_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO})


async def accept_forever(
    listener: anyio.abc.Listener[Any],
    handler: Callable[[Any], Coroutine[Any, Any, None]],
    tg: anyio.abc.TaskGroup,
    *,
    name: str,
    on_capacity_error: Callable[[OSError], None] | None = None,
) -> NoReturn:
    """Accept connections and start ``handler(stream)`` for each in ``tg`` until cancelled.

    A ``MultiListener`` (what ``anyio.create_tcp_listener`` returns) gets one such loop per socket.

    Raises:
        OSError: an ``accept()`` error that is neither a capacity error nor a dead connection.
    """
    subs: list[anyio.abc.Listener[Any]] | None = getattr(listener, "listeners", None)
    if subs is not None:
        if len(subs) != 1:
            for sub in subs:
                tg.start_soon(_accept_loop, sub, handler, tg, name, on_capacity_error)
            await anyio.sleep_forever()
        listener = subs[0]
    await _accept_loop(listener, handler, tg, name, on_capacity_error)


async def _accept_loop(
    listener: Any,  # a SocketListener (or anything with ``accept()``)
    handler: Callable[[Any], Coroutine[Any, Any, None]],
    tg: anyio.abc.TaskGroup,
    name: str,
    on_capacity_error: Callable[[OSError], None] | None,
) -> NoReturn:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in _SKIP_ERRNOS:
                continue
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            if on_capacity_error is not None:
                on_capacity_error(exc)
            log.warning("%s: accept failed (%s); retrying in %gs", name, exc, ACCEPT_RETRY_DELAY)
            await anyio.sleep(ACCEPT_RETRY_DELAY)
            continue
        tg.start_soon(handler, stream)


class BackgroundService:
    """Mixin: subclasses define ``serve(*, task_status)`` and set ``self._tg = None`` in ``__init__``."""

    _tg: anyio.abc.TaskGroup | None

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        raise NotImplementedError

    def _already_serving(self) -> str:
        return f"{type(self).__name__} is already serving"

    async def start(self) -> None:
        """Start serving in the background; call :meth:`aclose` from the same task.

        Raises:
            RuntimeError: if it is serving already.
        """
        if self._tg is not None:
            raise RuntimeError(self._already_serving())
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.serve)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tg = tg

    async def aclose(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
