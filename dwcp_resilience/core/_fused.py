"""Admission gates: the private synchronous protocol that lets admission policies share one frame.

Every coroutine frame between a task and its callee is resumed on each suspension of the callee, so
a stack of ``policy.call`` layers costs per suspension, not only per call. The circuit breaker, the
rate limiter and the bulkhead decide admission with plain ``def`` s (their pure cores); they expose
that decision as an :class:`Admission`. Two composers use it:

- the manager enters its outermost admission (the bulkhead) in its own frame;
- :func:`fuse` replaces a breaker followed by a rate limiter with one hand-inlined frame (the
  breaker admission's ``pair``), which runs the pair at about the chain's cost with one frame fewer
  per suspension (``bench --only admission_contended,stack``: ``Pipeline`` 22-25x against 27x).

Other runs are left as the policies' own ``call`` chain: a generic runner that calls each
``enter``/``exit`` measured slower than the chain it replaces (bulkhead > breaker > limiter: 12.8x
against 10.7x on a no-op, 1.55x against 1.48x around a yielding op).

The protocol, per admission:

- ``enter()`` decides without awaiting: it returns a *ticket* (any object, handed back to ``exit``),
  raises the policy's :class:`~dwcp_resilience.Rejected` subclass (nothing is held then), or returns
  :data:`WAIT`: the caller must ``await wait()`` instead, the policy's own waiting path (the rate
  limiter's FIFO queue, the bulkhead's queue), which returns the ticket or raises.
- ``exit(ticket, exc, result)`` is called exactly once for every ticket: ``exc`` is ``None`` after a
  return (``result`` is the callee's result), else the exception that ended the run: the callee's,
  a cancellation, or an inner admission's rejection (which the policy sees exactly as it would see
  it from an inner ``policy.call``). ``exit`` must not raise. ``None`` means "nothing to do on exit".

When an inner ``enter`` (or ``wait``) raises, the admissions already entered are exited with that
exception before it propagates: nothing leaks, and each outer policy sees the inner rejection (or
cancellation) exactly as the unfused chain ``outer.call(inner.call, fn)`` showed it.

A policy opts in with ``_admission() -> Admission | None`` (``None``: not fusable, e.g. a breaker
with its own per-call ``timeout``, or a subclass that overrides ``call``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

__all__ = ()  # private: the policies and the composers (Pipeline, the manager) import it


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
    #: the policy has none for it), called as ``run(fn, *args, **kwargs)`` with the semantics of
    #: ``policy.call(inner_policy.call, fn, *args, **kwargs)``.
    pair: Callable[[Admission], Callable[..., Awaitable[Any]] | None] | None = None
    #: ``take_at(now)``: admit at once at the caller's reading ``now`` of the policy's own clock
    #: (True), or change nothing (False); for a composer that reads the clock once for several
    #: policies (the manager's lane). ``None``: the policy has no such path.
    take_at: Callable[[float], bool] | None = None
    #: ``ready()``: whether ``enter()`` would admit at once now, without raising or waiting
    #: (reads only); for a composer that checks every policy before it takes from any.
    ready: Callable[[], bool] | None = None


def admission_of(policy: object) -> Admission | None:
    """The policy's :class:`Admission`, or ``None`` if it has none (or cannot be fused now)."""
    make = getattr(policy, "_admission", None)
    if make is None:
        return None
    admission: Admission | None = make()
    return admission


class _Inlined:
    """Two policies run by the outer one's hand-inlined runner (its admission's ``pair``)."""

    __slots__ = ("call", "name", "policies")

    def __init__(self, policies: tuple[Any, Any], call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call
        self.policies = policies
        self.name = "+".join(getattr(p, "name", type(p).__name__) for p in policies)

    def __repr__(self) -> str:
        return f"<Fused {self.name}>"


def _paired(outer: object, inner: object) -> Callable[..., Awaitable[Any]] | None:
    """The hand-inlined runner of ``outer`` around ``inner``, if ``outer`` has one for it."""
    first = admission_of(outer)
    if first is None or first.pair is None:
        return None
    second = admission_of(inner)
    return None if second is None else first.pair(second)


def fuse(policies: Sequence[Any]) -> list[Any]:
    """``policies`` (outermost first) with each adjacent pair that has a hand-inlined runner (a
    breaker followed by a rate limiter) replaced by one layer; every other policy stays as it is."""
    out: list[Any] = []
    index = 0
    while index < len(policies):
        call = _paired(*policies[index : index + 2]) if index + 1 < len(policies) else None
        if call is None:
            out.append(policies[index])
            index += 1
        else:
            out.append(_Inlined((policies[index], policies[index + 1]), call))
            index += 2
    return out
