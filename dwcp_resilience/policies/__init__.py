"""The policies: one concept per module."""

from .timeout import Timeout

__all__ = ("Timeout",)
