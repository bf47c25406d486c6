"""dwcp_resilience: an asyncio-native resilience toolkit (anyio: asyncio, uvloop and trio).

The public API is re-exported here; ``__all__`` is kept complete and sorted by a test.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .core.clock import Clock, loop_time
from .core.context import OperationContext, current_context, current_deadline
from .core.errors import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    RateLimited,
    Rejected,
    ResilienceError,
)
from .core.events import Event, Listener, Listeners
from .core.outcome import Classifier, ExceptionMatcher, Outcome, ResultPredicate
from .core.policy import Pipeline, Policy, PolicyBase, TaskLocalStack
from .policies.timeout import Timeout

try:
    __version__ = _version("dwcp-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = (
    "BulkheadFull",
    "CircuitOpen",
    "Classifier",
    "Clock",
    "DeadlineExceeded",
    "Event",
    "ExceptionMatcher",
    "Listener",
    "Listeners",
    "OperationContext",
    "Outcome",
    "Pipeline",
    "Policy",
    "PolicyBase",
    "RateLimited",
    "Rejected",
    "ResilienceError",
    "ResultPredicate",
    "TaskLocalStack",
    "Timeout",
    "current_context",
    "current_deadline",
    "loop_time",
)
