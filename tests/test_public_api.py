"""Keep ``__all__`` honest: complete, sorted, importable, and documented."""

from __future__ import annotations

import importlib
import pkgutil
import types

import dwcp_resilience


def _modules() -> list[types.ModuleType]:
    found = [dwcp_resilience]
    for info in pkgutil.walk_packages(dwcp_resilience.__path__, "dwcp_resilience."):
        if info.name.endswith("__main__"):
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ImportError as exc:  # an optional extra that is not installed
            if exc.name not in {"redis", "rich", "matplotlib"}:
                raise
    return found


def test_root_all_is_sorted_and_unique() -> None:
    names = list(dwcp_resilience.__all__)
    assert isinstance(dwcp_resilience.__all__, tuple)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_root_all_is_importable() -> None:
    for name in dwcp_resilience.__all__:
        assert hasattr(dwcp_resilience, name), name


def test_root_exports_every_public_name_of_public_modules() -> None:
    """Every name in a core/policies/slo module's __all__ is exported from the package root."""
    exported = set(dwcp_resilience.__all__)
    for module in _modules():
        short = module.__name__.split(".")
        if len(short) < 3 or short[1] not in {"core", "policies", "slo"}:
            continue
        module_all = getattr(module, "__all__", None)
        assert module_all is not None, f"{module.__name__} has no __all__"
        assert list(module_all) == sorted(module_all), f"{module.__name__}.__all__ not sorted"
        if short[2] in {
            "validate",
            "ratelimit_core",
            "bulkhead_core",
            "concurrency_core",
            "throttle_core",
            "breaker_core",
            "breaker_windows",
            "retry_core",
            "hedge_core",
            "hedge_delay",
            "hedge_race",
        }:
            continue  # internal helper modules
        missing = set(module_all) - exported
        assert not missing, f"{module.__name__} exports {sorted(missing)} not in the root"


def test_every_module_has_a_docstring() -> None:
    for module in _modules():
        assert module.__doc__, module.__name__


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in dwcp_resilience.__all__:
        obj = getattr(dwcp_resilience, name)
        ours = (getattr(obj, "__module__", None) or "").startswith("dwcp_resilience")
        if ours and (isinstance(obj, type) or callable(obj)):
            assert obj.__doc__, name
