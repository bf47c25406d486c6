"""Admission gates: the private synchronous protocol that lets admission policies share one frame.

Every coroutine frame between a task and its callee is resumed on each suspension of the callee, so
a stack of ``policy.call`` layers costs per suspension, not only per call. The circuit breaker, the
rate limiter and the bulkhead decide admission with plain ``def`` s (their pure cores); they expose
that decision as an :class:`Admission`, and :func:`fuse` runs consecutive admissions in one frame:
enter each in order (outermost first), ``await`` the inner callee once, exit each in reverse order.

The protocol, per admission:

- ``enter()`` decides without awaiting: it returns a *ticket* (any object, handed back to ``exit``),
  raises the policy's :class:`~dwcp_resilience.Rejected` subclass (nothing is held then), or returns
  :data:`WAIT`: the caller must ``await wait()`` instead, the policy's own waiting path (the rate
  limiter's FIFO queue, the bulkhead's queue), which returns the ticket or raises.
- ``exit(ticket, exc, result)`` is called exactly once for every ticket: ``exc`` is ``None`` after a
  return (``result`` is the callee's result), else the exception that ended the run: the callee's,
  a cancellation, or an inner admission's rejection (which the policy sees exactly as it would see
  it from an inner ``policy.call``). ``exit`` must not raise. ``None`` means "nothing to do on exit".

When a later ``enter`` (or ``wait``) raises, the admissions already entered are exited with that
exception, innermost first, before it propagates: nothing leaks, and each outer policy sees the inner
rejection (or cancellation) exactly as the unfused chain ``outer.call(inner.call, fn)`` showed it.

A policy opts in with ``_admission() -> Admission | None`` (``None``: not fusable, e.g. a breaker
with its own per-call ``timeout``, or a subclass that overrides ``call``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, ParamSpec, TypeVar

__all__ = ()  # private: the policies and the composers (Pipeline, the manager) import it

P = ParamSpec("P")
T = TypeVar("T")


class _Wait:
    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Any = _Wait()
"""What ``enter()`` returns when admission needs the policy's async waiting path (``wait()``)."""


class Admission(NamedTuple):
    """One policy's admission, as bound methods (see the module docstring)."""

    enter: Callable[[], object]
    wait: Callable[[], Awaitable[object]]
    exit: Callable[[object, BaseException | None, object], None] | None
    policy: object
    #: ``pair(inner)``: a hand-inlined runner for this admission around ``inner`` (``None`` if
    #: the policy has none for it). Same contract as :meth:`Fused.call`; saves the calls to
    #: ``enter``/``exit`` on the fast paths.
    pair: Callable[[Admission], Callable[..., Awaitable[Any]] | None] | None = None


def admission_of(policy: object) -> Admission | None:
    """The policy's :class:`Admission`, or ``None`` if it has none (or cannot be fused now)."""
    make = getattr(policy, "_admission", None)
    if make is None:
        return None
    admission: Admission | None = make()
    return admission


class Fused:
    """Consecutive admission policies run in one coroutine frame (outermost first).

    ``Fused(a, b).call(fn)`` behaves as ``a.call(b.call, fn)``: the same admissions, rejections,
    outcomes and statistics, in the same order, with one frame instead of one per layer.
    """

    __slots__ = ("_a", "_all", "_b", "name", "policies")

    def __init__(self, admissions: Sequence[Admission]) -> None:
        if len(admissions) < 2:
            raise ValueError("Fused needs at least two admissions")
        # Plain tuples: unpacking one is a single C-level step on the hot path.
        self._all = tuple((a.enter, a.wait, a.exit) for a in admissions)
        self._a = self._all[0]
        self._b = self._all[1]
        self.policies = tuple(a.policy for a in admissions)
        self.name = "+".join(getattr(p, "name", type(p).__name__) for p in self.policies)

    def __repr__(self) -> str:
        return f"<Fused {self.name}>"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Enter every admission, run ``fn(*args, **kwargs)``, exit them in reverse order."""
        enter, wait, exit_a = self._a
        ticket_a = enter()
        if ticket_a is WAIT:
            ticket_a = await wait()
        enter, wait, exit_b = self._b
        try:
            ticket_b = enter()
            if ticket_b is WAIT:
                ticket_b = await wait()
        except BaseException as exc:
            if exit_a is not None:
                exit_a(ticket_a, exc, None)
            raise
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            try:
                if exit_b is not None:
                    exit_b(ticket_b, exc, None)
            finally:
                if exit_a is not None:
                    exit_a(ticket_a, exc, None)
            raise
        try:
            if exit_b is not None:
                exit_b(ticket_b, None, result)
        finally:
            if exit_a is not None:
                exit_a(ticket_a, None, result)
        return result


class FusedN(Fused):
    """:class:`Fused` for three admissions or more (a loop instead of the unrolled pair)."""

    __slots__ = ()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Enter every admission, run ``fn(*args, **kwargs)``, exit them in reverse order."""
        entered: list[tuple[Callable[[object, BaseException | None, object], None], object]] = []
        try:
            for enter, wait, exit_ in self._all:
                ticket = enter()
                if ticket is WAIT:
                    ticket = await wait()
                if exit_ is not None:
                    entered.append((exit_, ticket))
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _exit_all(entered, exc, None)
            raise
        _exit_all(entered, None, result)
        return result


class _Inlined:
    """A run of admissions whose outermost policy supplied a hand-inlined runner (``pair``)."""

    __slots__ = ("call", "name", "policies")

    def __init__(self, admissions: Sequence[Admission], call: Callable[..., Awaitable[Any]]):
        self.call = call
        self.policies = tuple(a.policy for a in admissions)
        self.name = "+".join(getattr(p, "name", type(p).__name__) for p in self.policies)

    def __repr__(self) -> str:
        return f"<Fused {self.name}>"


def _exit_all(
    entered: list[tuple[Callable[[object, BaseException | None, object], None], object]],
    exc: BaseException | None,
    result: object,
) -> None:
    """Exit innermost first; every exit runs even if one raises (the first error propagates)."""
    if not entered:
        return
    exit_, ticket = entered.pop()
    try:
        exit_(ticket, exc, result)
    finally:
        _exit_all(entered, exc, result)


def fuse(policies: Sequence[Any]) -> list[Any]:
    """``policies`` (outermost first) with each run of two or more fusable ones replaced by one
    :class:`Fused`. A lone fusable policy stays as it is: its own ``call`` is one frame already."""
    out: list[Any] = []
    run: list[Admission] = []

    def flush() -> None:
        if len(run) == 2:
            pair = run[0].pair
            call = None if pair is None else pair(run[1])
            out.append(Fused(run) if call is None else _Inlined(run, call))
        elif len(run) > 2:
            out.append(FusedN(run))
        else:
            out.extend(a.policy for a in run)
        run.clear()

    for policy in policies:
        admission = admission_of(policy)
        if admission is None:
            flush()
            out.append(policy)
        else:
            run.append(admission)
    flush()
    return out
