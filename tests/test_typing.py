"""What a user's type checker sees: mypy --strict on user code that imports the installed package,
and the typed options of the manager's ``register_*`` methods kept equal to the policies' own."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dwcp_resilience import (
    BreakerOptions,
    CircuitBreaker,
    ErrorBudget,
    ErrorBudgetOptions,
    Fallback,
    FallbackOptions,
    Hedge,
    HedgeOptions,
    Retry,
    RetryOptions,
)

mypy_api = pytest.importorskip("mypy.api")

GOOD = """
from typing import assert_type

from dwcp_resilience import (
    CircuitBreaker,
    Fallback,
    ResilienceManager,
    Retry,
    RetryEvent,
    RetryScheduled,
)
from dwcp_resilience.testing import RecordingListener

breaker = CircuitBreaker("payments", max_failures=3)
retry = Retry("payments", max_retries=2)
rm = ResilienceManager("svc")
rm.register_circuit_breaker("payments", max_failures=3, failure=ConnectionError)
rm.register_retry_policy("payments", max_retries=2, retry_on=ConnectionError)
rm.register_rate_limiter("payments", rate=100.0, burst=10)
rm.register_error_budget("payments", slo=0.99, min_requests=10)


async def fetch(url: str) -> bytes:
    return url.encode()


async def main() -> bytes:
    return await breaker.call(retry.call, fetch, "https://example.invalid")


events: RecordingListener[RetryEvent] = RecordingListener()
assert_type(events.of_type(RetryScheduled), list[RetryScheduled])

cached = Fallback("payments", value=b"")
rm.register_hedge("payments", delay=0.05, budget_ratio=0.2)


async def with_fallback() -> bytes:
    return await cached.call(fetch, "https://example.invalid")


async def from_cache(exc: Exception) -> str:
    return "cached"


async def maybe_text() -> bytes | str:
    return await Fallback("p", handler=from_cache).call(fetch, "https://example.invalid")
"""

BAD = {
    "misspelt option": (
        'rm.register_circuit_breaker("y", max_failurs=3)',
        'Unexpected keyword argument "max_failurs"',
    ),
    "wrong option type": (
        'rm.register_retry_policy("y", wait_rejected="yes")',
        'has incompatible type "str"; expected "bool"',
    ),
    "old keyword": ('rm.register_rate_limiter("y", rps=10, burst=1)', 'keyword argument "rps"'),
    "wrong argument type": (
        'bad = CircuitBreaker("y").call(fetch, 3)',
        'incompatible type "int"; expected "str"',
    ),
    "a fallback's answer is part of the result type": (
        "async def text() -> bytes:\n    return await Fallback('p', value=0).call(fetch, 'x')",
        'Incompatible return value type (got "bytes | int", expected "bytes")',
    ),
    "misspelt hedge option": (
        'rm.register_hedge("y", budget_ration=0.1)',
        'Unexpected keyword argument "budget_ration"',
    ),
    "of_type is typed by the kind asked": (
        "events.of_type(RetryScheduled)[0].reason",
        '"RetryScheduled" has no attribute "reason"',
    ),
}


def test_mypy_strict_accepts_user_code_and_catches_its_mistakes(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    for index, (line, _) in enumerate(BAD.values()):
        (tmp_path / f"bad{index}.py").write_text(
            GOOD + "\n\n" + textwrap.dedent(line) + "  # the mistake\n"
        )
    # A user's mypy, not ours: a config of its own (ours has overrides for the bench peers and
    # optional extras, which mypy 1.10, the lowest allowed, reports as unused sections).
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    out, err, _status = mypy_api.run(
        [
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *(str(path) for path in sorted(tmp_path.glob("*.py"))),
        ]
    )
    assert err == ""
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert not [line for line in errors if "good.py" in line], out
    for index, (what, (_, message)) in enumerate(BAD.items()):
        found = [line for line in errors if f"bad{index}.py" in line]
        assert len(found) == 1, (what, out)
        assert message in found[0], (what, found[0])


def _keywords(fn: Any) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(fn).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


@pytest.mark.parametrize(
    ("options", "policy", "passed_by_the_manager"),
    [
        (
            BreakerOptions,
            CircuitBreaker,
            {"name", "max_failures", "reset_timeout", "timeout", "clock"},
        ),
        (RetryOptions, Retry, {"name", "max_retries", "backoff"}),
        (ErrorBudgetOptions, ErrorBudget, {"name", "slo", "window", "clock"}),
        (HedgeOptions, Hedge, {"name", "delay", "max_hedged_attempts", "clock"}),
        (FallbackOptions, Fallback, {"name", "value", "handler", "degradation", "clock"}),
    ],
)
def test_register_options_name_every_other_keyword_of_the_policy(
    options: Any, policy: Any, passed_by_the_manager: set[str]
) -> None:
    keywords = _keywords(policy) - {"self"}
    assert set(options.__annotations__) == keywords - passed_by_the_manager
