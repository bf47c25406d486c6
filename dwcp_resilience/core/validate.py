"""Config validation shared by every primitive: errors name the field.

Rules (DESIGN.md): NaN, negatives, zero where zero means nothing, ``True`` passed as a number, and
wrong types raise ``ValueError``/``TypeError`` at construction. ``inf`` only where documented.
"""

from __future__ import annotations

import math

__all__ = ("check_int", "check_name", "check_number")


def check_name(name: object, field: str = "name") -> str:
    """A non-empty string."""
    if not isinstance(name, str):
        raise TypeError(f"{field} must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{field} must not be empty")
    return name


def check_number(
    value: object,
    field: str,
    *,
    min_value: float | None = None,
    allow_zero: bool = True,
    allow_inf: bool = False,
    allow_none: bool = False,
    max_value: float | None = None,
) -> float:
    """A real number (int or float, not bool), not NaN, within the given bounds; returned as float.

    ``min_value`` is inclusive unless ``allow_zero`` is false and ``min_value`` is 0.
    """
    if value is None and allow_none:
        return math.nan  # callers that allow None check for it before using the number
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{field} must not be NaN")
    if math.isinf(number) and not allow_inf:
        raise ValueError(f"{field} must be finite")
    if min_value is not None and number < min_value:
        raise ValueError(f"{field} must be >= {min_value:g}, got {number!r}")
    if not allow_zero and number == 0:
        raise ValueError(f"{field} must not be zero")
    if max_value is not None and number > max_value:
        raise ValueError(f"{field} must be <= {max_value:g}, got {number!r}")
    return number


def check_int(
    value: object, field: str, *, min_value: int | None = None, max_value: int | None = None
) -> int:
    """An ``int`` (not bool) within the given inclusive bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {type(value).__name__}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{field} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{field} must be <= {max_value}, got {value}")
    return value
