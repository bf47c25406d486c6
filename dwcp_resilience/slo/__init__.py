"""Observe and react: health monitoring, error and latency budgets, degradation, load shedding."""

from .checks import CheckResult, CompositeCheck, HealthCheck, PingCheck, ThresholdCheck, evaluate
from .degradation import (
    DegradationLevel,
    DegradationManager,
    DegradationStatistics,
    DegradationThresholds,
    EmergencyMode,
    LevelChanged,
    level_for_ratio,
)
from .error_budget import (
    BurnRateAlert,
    BurnRateStatus,
    ErrorBudget,
    ErrorBudgetEvent,
    ErrorBudgetExhausted,
    ErrorBudgetRecovered,
    ErrorBudgetStatistics,
)
from .health import CheckStatus, HealthChanged, HealthMonitor, HealthMonitorStatistics
from .latency_budget import (
    LatencyBudget,
    LatencyBudgetEvent,
    LatencyBudgetExhausted,
    LatencyBudgetRecovered,
    LatencyBudgetStatistics,
    check_percentile,
)
from .shedding import FeatureFlags, LoadShed, LoadShedder, LoadShedderStatistics

__all__ = (
    "BurnRateAlert",
    "BurnRateStatus",
    "CheckResult",
    "CheckStatus",
    "CompositeCheck",
    "DegradationLevel",
    "DegradationManager",
    "DegradationStatistics",
    "DegradationThresholds",
    "EmergencyMode",
    "ErrorBudget",
    "ErrorBudgetEvent",
    "ErrorBudgetExhausted",
    "ErrorBudgetRecovered",
    "ErrorBudgetStatistics",
    "FeatureFlags",
    "HealthChanged",
    "HealthCheck",
    "HealthMonitor",
    "HealthMonitorStatistics",
    "LatencyBudget",
    "LatencyBudgetEvent",
    "LatencyBudgetExhausted",
    "LatencyBudgetRecovered",
    "LatencyBudgetStatistics",
    "LevelChanged",
    "LoadShed",
    "LoadShedder",
    "LoadShedderStatistics",
    "PingCheck",
    "ThresholdCheck",
    "check_percentile",
    "evaluate",
    "level_for_ratio",
)
