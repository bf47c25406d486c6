"""The Policy protocol, the shared idioms, and :class:`Pipeline`.

Every policy offers the same three idioms over one engine:

- ``await policy.call(fn, *args, **kwargs)``;
- ``@policy`` on an ``async def`` (ParamSpec-typed: the wrapper has the wrapped signature);
- ``async with policy:`` where that makes sense (breaker, rate limiter, bulkhead, timeout).

A policy instance is shared by many tasks at once, so per-call state never lives on it: ``call`` keeps
it in locals, and ``async with`` keeps it on a per-task stack (:class:`TaskLocalStack`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from ._fused import fuse
from .errors import not_callable
from .validate import check_name

__all__ = ("Pipeline", "Policy", "PolicyBase", "TaskLocalStack")

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")


class Policy(Protocol):
    """What every policy provides: a name and ``await call(fn, *args, **kwargs)``."""

    @property
    def name(self) -> str:
        """The policy's name (used in errors, events and metrics)."""
        ...

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under this policy and return its result."""
        ...


def check_decorated(fn: object, kind: str) -> None:
    """Refuse what ``@kind`` cannot decorate: a plain (synchronous) function (``TypeError``), or
    something that is not callable at all, such as a coroutine object
    (:class:`~dwcp_resilience.NotCallable`, the coroutine closed). Every policy's decorator checks
    here, once, when it decorates."""
    if not callable(fn):
        raise not_callable(fn)
    if inspect.isfunction(fn) and not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@{kind} needs an async def, got {fn.__qualname__}")


class PolicyBase:
    """Mixin giving a policy the decorator idiom on top of its ``call``."""

    __slots__ = ()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call runs under this policy.

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, type(self).__name__)
        call = self.call

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await call(fn, *args, **kwargs)

        return wrapper


class TaskLocalStack(Generic[S]):
    """A per-task LIFO of per-call state, for ``async with policy:`` on a shared policy.

    Each asyncio or trio task runs in its own :mod:`contextvars` context, so a value pushed in
    ``__aenter__`` is popped by the same task's ``__aexit__`` and never seen by another task.
    """

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[tuple[S, Any] | None] = ContextVar(name, default=None)

    def push(self, item: S) -> None:
        self._var.set((item, self._var.get()))

    def pop(self) -> S:
        node = self._var.get()
        if node is None:
            raise RuntimeError("__aexit__ without a matching __aenter__ in this task")
        self._var.set(node[1])
        return node[0]


class Pipeline(PolicyBase):
    """Policies composed into one, ``policies[0]`` outermost.

    ``Pipeline(retry, breaker, timeout).call(fn)`` runs ``retry.call(breaker.call, timeout.call, fn)``:
    no closure is built per call, the pipeline adds no coroutine frame of its own, and each policy
    sees the call exactly as if it wrapped the next one by hand.

    A :class:`~dwcp_resilience.CircuitBreaker` (without a per-call ``timeout``) followed by a
    :class:`~dwcp_resilience.RateLimiter` is fused: ``Pipeline(breaker, limiter).call(fn)`` admits
    through both, awaits ``fn`` and records the outcome in one frame (a frame costs on every
    suspension of the callee), with the chain's semantics: the breaker sees the limiter's
    ``RateLimited`` and a cancelled wait as neutral outcomes, and a queued limiter waits first in,
    first out. See :mod:`dwcp_resilience.core._fused`.

    ``call`` returns the outermost layer's awaitable without awaiting it; await it at once (a
    :class:`~dwcp_resilience.RateLimiter` outermost takes its token when ``call`` is called).

    Raises:
        TypeError: if an element has no ``call`` method.
    """

    __slots__ = ("__dict__", "_call", "_chain", "_name", "layers", "policies")

    def __init__(self, *policies: Policy, name: str = "pipeline") -> None:
        self._name = check_name(name)
        for policy in policies:
            if not callable(getattr(policy, "call", None)):
                raise TypeError(f"Pipeline element {policy!r} is not a policy (no .call)")
        self.policies: tuple[Policy, ...] = policies
        #: What runs, outermost first: the policies, with a fused breaker + limiter as one layer.
        self.layers: tuple[Policy, ...] = tuple(fuse(policies))
        calls: list[Callable[..., Awaitable[Any]]] = [p.call for p in self.layers]
        self._call: Callable[..., Awaitable[Any]] = calls[0] if calls else _direct
        self._chain: tuple[Callable[..., Awaitable[Any]], ...] = tuple(calls[1:])
        # The hot path: `pipeline.call` finds this C-level partial in the instance dict before the
        # method below (which documents it), so a pipeline adds no Python call of its own; a
        # single fused layer is called directly.
        self.__dict__["call"] = (
            functools.partial(self._call, *self._chain) if self._chain else self._call
        )

    @property
    def name(self) -> str:
        return self._name

    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """Run ``fn(*args, **kwargs)`` through every policy (use it as ``await pipeline.call(...)``).

        (Instances answer ``pipeline.call`` with an equivalent precomputed callable, see
        ``__init__``; this method is what it does.)
        """
        return cast(Coroutine[Any, Any, T], self._call(*self._chain, fn, *args, **kwargs))

    def __repr__(self) -> str:
        inner = " > ".join(getattr(p, "name", type(p).__name__) for p in self.policies)
        return f"<Pipeline {self._name!r}: {inner or 'empty'}>"


async def _direct(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    return await fn(*args, **kwargs)
