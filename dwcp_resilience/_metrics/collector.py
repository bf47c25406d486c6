"""``ResilienceCollector``: the primitives' statistics as Prometheus metrics, read at scrape time.

Nothing happens on the hot path: the primitives keep plain counters and bucket counts, and the
collector calls each tracked primitive's ``statistics()`` when the registry is scraped (pull).

- **Registry**: ``registry=`` is injectable (default: ``prometheus_client.REGISTRY``). All collectors
  created for the same registry and namespace share one registered collector, so two managers (or
  two test cases) that use the same names never raise ``Duplicated timeseries`` (the Go package
  panicked). :meth:`ResilienceCollector.close` unregisters when the last one closes. A name that
  another collector of the registry already uses fails at construction with a message saying so.
- **Same names**: two tracked primitives with the same name share their series: counters and
  histograms add up, gauges combine by their family's rule (worst state, lowest health, ...).
- **Cardinality**: at most ``max_label_values`` distinct identities (a breaker name, a
  ``(checker, check)`` pair, ...) per kind of primitive; the rest fold into ``"other"`` (their
  counts merge there), in tracking order, so a series never changes identity while it is tracked.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..core.validate import check_int
from ._families import FAMILIES
from ._readers import READERS, Sink, classify

__all__ = ("OTHER", "ResilienceCollector")

_log = logging.getLogger("dwcp_resilience")

OTHER = "other"
"""The label value that names beyond the cardinality cap fold into."""

_NAMESPACE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

T = TypeVar("T")


class _Fold:
    """Admit identities per kind in order, up to ``cap``; fold the rest into ``"other"``."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: dict[str, set[tuple[str, ...]]] = {}

    def __call__(self, kind: str, ident: tuple[str, ...]) -> tuple[str, ...]:
        seen = self.seen.get(kind)
        if seen is None:
            seen = self.seen[kind] = set()
        if ident in seen:
            return ident
        if len(seen) < self.cap:
            seen.add(ident)
            return ident
        return (OTHER,) * len(ident)


Entry = tuple[str, Any, Any]  # (kind, primitive, its statistics() when already read, else None)


def _expand(tracked: Iterable[tuple[str, Any]]) -> list[Entry]:
    """Tracked objects -> unique primitives in order (managers, retry budgets and the local
    policies of fleet primitives opened).

    A manager is read through ``statistics(operation)`` once per operation: its snapshot carries the
    operation's counts and its policies' statistics, which are used as they are.
    """
    out: list[Entry] = []
    seen: set[int] = set()

    def add(kind: str | None, obj: Any, snapshot: Any = None) -> None:
        if kind is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if kind == "manager":
            for operation in obj.operations():
                stats = obj.statistics(operation)
                out.append(("operation", obj, (obj.name, stats)))
                for key, policy in obj.components(operation).items():
                    add(classify(policy), policy, stats.policies.get(key))
            add(classify(obj.health), obj.health)
            add(classify(obj.degradation), obj.degradation)
            return
        out.append((kind, obj, snapshot))
        if kind in ("retry", "hedge") and obj.budget is not None:
            add(classify(obj.budget), obj.budget)
        elif kind == "fleet_breaker":  # its local breaker's own families (once, if tracked too)
            add(classify(obj.breaker), obj.breaker)
        elif kind == "fleet_budget":
            add(classify(obj.local), obj.local)

    for kind, obj in tracked:
        add(kind, obj)
    return out


def _build(namespace: str, tracked: Iterable[tuple[str, Any]], cap: int) -> list[Metric]:
    sink = Sink()
    fold = _Fold(cap)
    for kind, primitive, snapshot in _expand(tracked):
        try:
            READERS[kind](primitive.statistics() if snapshot is None else snapshot, fold, sink)
        except Exception:  # a broken primitive must not break the scrape
            _log.exception("dwcp_resilience metrics: cannot read %r", primitive)
    families: list[Metric] = []
    for family in FAMILIES:
        name = family.name(namespace)
        labels = list(family.labels)
        series = sink.values[family.key]
        if family.type == "histogram":
            hist = HistogramMetricFamily(name, family.help, labels=labels)
            bounds = [*map(floatToGoString, family.buckets), "+Inf"]
            for values, (counts, total) in series.items():
                hist.add_metric(list(values), list(zip(bounds, counts, strict=True)), total)
            families.append(hist)
            continue
        metric: CounterMetricFamily | GaugeMetricFamily
        if family.type == "counter":
            metric = CounterMetricFamily(name, family.help, labels=labels)
        else:
            metric = GaugeMetricFamily(name, family.help, labels=labels)
        for values, value in series.items():
            metric.add_metric(list(values), value)
        families.append(metric)
    return families


class _Hub:
    """The one collector registered per (registry, namespace): it reads every handle's primitives."""

    def __init__(self, namespace: str, cap: int) -> None:
        self.namespace = namespace
        self.cap = cap
        self.handles: list[ResilienceCollector] = []

    def collect(self) -> Iterator[Metric]:
        tracked = [entry for handle in list(self.handles) for entry in handle._snapshot()]
        return iter(_build(self.namespace, tracked, self.cap))

    def describe(self) -> Iterator[Metric]:
        return iter(_build(self.namespace, (), self.cap))


_HUBS: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Hub]] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


class ResilienceCollector:
    """Expose tracked primitives' statistics as the ``dwcp_*`` metrics (Go names, types, labels).

    Args:
        namespace: the metric-name prefix (``dwcp`` gives ``dwcp_circuit_breaker_state``); ``""``
            for none.
        registry: the registry to register in (default: ``prometheus_client.REGISTRY``).
        max_label_values: the cardinality cap: distinct names per kind of primitive before the rest
            fold into ``"other"`` (the first collector of a registry and namespace sets it).
        register: ``False`` to register nowhere (call :meth:`collect` yourself, or register the
            collector into a registry of your own).

    Raises:
        ValueError: an invalid namespace, a cap < 1, or a metric name the registry already has from
            another collector.

    Usable as a context manager (``close()`` at exit). Track with :meth:`track` (any primitive, a
    :class:`~dwcp_resilience.ResilienceManager`) and stop with :meth:`untrack`.
    """

    def __init__(
        self,
        namespace: str = "dwcp",
        *,
        registry: CollectorRegistry | None = None,
        max_label_values: int = 1000,
        register: bool = True,
    ) -> None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if namespace and not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace must be a valid metric name prefix, got {namespace!r}")
        self.namespace = namespace
        self.max_label_values = check_int(max_label_values, "max_label_values", min_value=1)
        self._tracked: dict[int, tuple[str, Any]] = {}
        self._hub: _Hub | None = None
        self.registry: CollectorRegistry | None = None
        if register:
            self._attach(REGISTRY if registry is None else registry)

    def _attach(self, registry: CollectorRegistry) -> None:
        with _HUBS_LOCK:
            hubs = _HUBS.setdefault(registry, {})
            hub = hubs.get(self.namespace)
            if hub is None:
                hub = _Hub(self.namespace, self.max_label_values)
                try:
                    registry.register(hub)
                except ValueError as exc:
                    raise ValueError(
                        f"dwcp_resilience metrics under namespace {self.namespace!r} collide with "
                        f"metrics already in this registry ({exc}); pass another namespace= or "
                        "registry="
                    ) from None
                hubs[self.namespace] = hub
            hub.handles.append(self)
        self._hub = hub
        self.registry = registry

    def close(self) -> None:
        """Stop exposing this collector's primitives; unregister when no collector is left."""
        hub, registry = self._hub, self.registry
        if hub is None or registry is None:
            return
        with _HUBS_LOCK:
            if self in hub.handles:
                hub.handles.remove(self)
            if not hub.handles:
                hubs = _HUBS.get(registry, {})
                if hubs.get(self.namespace) is hub:
                    del hubs[self.namespace]
                    registry.unregister(hub)
        self._hub = None

    def __enter__(self) -> ResilienceCollector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- tracking ---------------------------------------------------------------------------------

    def track(self, primitive: T) -> T:
        """Expose ``primitive`` (a breaker, retry, retry budget, limiter, bulkhead, health monitor,
        error or latency budget, degradation manager, chaos, hedge, fallback, a
        ``ResilienceManager``, or a fleet primitive: ``RedisRateLimiter``, ``FleetBreaker``,
        ``FleetErrorBudget``); returns it.

        Tracking the same object twice is a no-op; a ``Retry``'s or a ``Hedge``'s budget is tracked
        with it; a manager
        is read whole at every scrape (operations registered later included). A ``FleetBreaker``
        brings its local breaker and a ``FleetErrorBudget`` its local ``ErrorBudget`` (read once,
        even if tracked on their own too). Fleet primitives are read from their ``statistics()``
        snapshots: a scrape never talks to Redis.

        Raises:
            TypeError: if ``primitive`` is none of those.
        """
        kind = classify(primitive)
        if kind is None:
            raise TypeError(
                f"cannot track {type(primitive).__name__}: not a dwcp_resilience primitive"
            )
        self._tracked.setdefault(id(primitive), (kind, primitive))
        return primitive

    def track_manager(self, manager: T) -> T:
        """Expose every policy of ``manager``, its health monitor and its degradation manager."""
        if classify(manager) != "manager":
            raise TypeError(f"expected a ResilienceManager, got {type(manager).__name__}")
        return self.track(manager)

    def untrack(self, primitive: object) -> None:
        """Stop exposing ``primitive`` (no error if it was not tracked)."""
        self._tracked.pop(id(primitive), None)

    def tracked(self) -> tuple[object, ...]:
        """The tracked objects, in tracking order."""
        return tuple(obj for _, obj in self._snapshot())

    def _snapshot(self) -> list[tuple[str, Any]]:
        return list(self._tracked.values())

    # --- the Collector protocol -----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every family, read from this collector's primitives now (a family may have no sample)."""
        return iter(_build(self.namespace, self._snapshot(), self.max_label_values))

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (what a registry checks names against)."""
        return iter(_build(self.namespace, (), self.max_label_values))

    def __repr__(self) -> str:
        where = "unregistered" if self._hub is None else "registered"
        return (
            f"<ResilienceCollector namespace={self.namespace!r} {where}, "
            f"{len(self._tracked)} tracked, cap {self.max_label_values}>"
        )
