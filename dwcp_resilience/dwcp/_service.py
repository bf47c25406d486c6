"""``BackgroundService``: ``start()``/``aclose()``/``async with`` around a ``serve()`` method.

The peer and the chaos proxy both listen in a task group of their own that lives between
``start()`` and ``aclose()`` (called from the same task), so a test or the demo can run one beside
its own code without a task group of its own.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
import anyio.abc

__all__ = ()


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
