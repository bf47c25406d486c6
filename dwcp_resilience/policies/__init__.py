"""The policies, one concept per module: timeout, retry (+ backoff, budget), breaker, rate limiters
(plain, adaptive, keyed), bulkhead, adaptive concurrency limiter, adaptive throttle, chaos.
Everything public is re-exported from the package root."""

__all__ = ()
