"""The shared vocabulary: clock, errors, outcomes, events, policies, operation context."""

from .clock import Clock, loop_time
from .context import OperationContext, current_context, current_deadline
from .errors import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    NotCallable,
    RateLimited,
    Rejected,
    ResilienceError,
)
from .events import Event, Listener, Listeners
from .outcome import Classifier, ExceptionMatcher, Outcome, ResultPredicate
from .policy import Pipeline, Policy, PolicyBase, TaskLocalStack

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
    "NotCallable",
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
    "current_context",
    "current_deadline",
    "loop_time",
)
