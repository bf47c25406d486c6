"""The shipped operations files: promtool checks and unit-tests the alert rules; the dashboard and the
printer cover every metric family.

promtool comes with the Debian package ``prometheus`` (``scripts/install-sysdeps.sh``). Without it
these tests skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from dwcp_resilience.ops import (
    FILES,
    alert_tests,
    alerts,
    dashboard,
    dashboard_queries,
    path,
    print_ops,
    write_ops,
)
from dwcp_resilience.ops._dashboard import render_dashboard
from dwcp_resilience.prometheus import FAMILIES


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def alert_names(text: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)", text, flags=re.MULTILINE)


_CASE = re.compile(
    r"- alertname: (\w+)\n\s+eval_time: (\w+)[^\n]*\n\s+exp_alerts:( \[\])?", flags=re.MULTILINE
)


def minutes(duration: str) -> float:
    scale = {"d": 1440.0, "h": 60.0, "m": 1.0, "s": 1 / 60}
    return sum(float(n) * scale[unit] for n, unit in re.findall(r"(\d+)([dhms])", duration))


def cases(text: str) -> list[tuple[str, float, bool]]:
    """``(alert, eval minutes, fires)`` for every case of the promtool test file."""
    return [(name, minutes(at), not empty) for name, at, empty in _CASE.findall(text)]


def failed_cases(output: str) -> set[tuple[str, float]]:
    return {
        (name, minutes(at)) for name, at in re.findall(r"alertname: (\w+), time: (\w+)", output)
    }


def replace_alert_exprs(text: str, expr: str) -> str:
    """Every alert's ``expr`` (one line or a block) replaced by ``expr``; recording rules kept."""
    out: list[str] = []
    lines = text.splitlines()
    in_alert, skip_deeper = False, -1
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_deeper >= 0:
            if line.strip() and indent > skip_deeper:
                continue
            skip_deeper = -1
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            in_alert = True
        elif stripped.startswith("- record:"):
            in_alert = False
        if in_alert and stripped.startswith("expr:"):
            out.append(" " * indent + f"expr: {expr}")
            skip_deeper = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(path("alerts")), cwd=path("alerts").parent)
    assert result.returncode == 0, result.stdout + result.stderr
    text = alerts()
    rules = len(alert_names(text)) + len(re.findall(r"^\s*- record: ", text, flags=re.MULTILINE))
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", FILES["tests"], cwd=path("tests").parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_design_notes_four_alerts_and_the_added_ones_are_there() -> None:
    names = alert_names(alerts())
    assert names[:4] == [
        "DWCPCircuitBreakerOpen",
        "DWCPHighFailureRate",
        "DWCPHealthCheckFailing",
        "DWCPErrorBudgetExhausted",
    ]
    assert {"DWCPErrorBudgetBurnRateCritical", "DWCPDegraded", "DWCPEmergencyMode"} <= set(names)
    assert len(names) == len(set(names))


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    found = cases(alert_tests())
    for name in alert_names(alerts()):
        kinds = {fires for alert, _, fires in found if alert == name}
        assert kinds == {True, False}, name
    assert {alert for alert, _, _ in found} == set(alert_names(alerts()))


def test_the_unit_tests_catch_an_alert_that_never_fires(promtool: str, tmp_path: Path) -> None:
    """Every firing case fails when every alert's expression is empty."""
    write_ops(tmp_path)
    (tmp_path / "alerts.yml").write_text(replace_alert_exprs(alerts(), "vector(1) < 0"))
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    failed = failed_cases(result.stdout + result.stderr)
    for name, at, fires in cases(alert_tests()):
        if fires:
            assert (name, at) in failed, (name, at)


def test_the_unit_tests_catch_an_alert_that_always_fires(promtool: str, tmp_path: Path) -> None:
    """Every non-firing case fails when every alert's expression always holds."""
    write_ops(tmp_path)
    (tmp_path / "alerts.yml").write_text(replace_alert_exprs(alerts(), "vector(1)"))
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    failed = failed_cases(result.stdout + result.stderr)
    for name, at, fires in cases(alert_tests()):
        if not fires:
            assert (name, at) in failed, (name, at)


def test_another_namespace_gets_rules_and_tests_that_pass(promtool: str, tmp_path: Path) -> None:
    written = write_ops(tmp_path, namespace="acme")
    text = written["alerts"].read_text()
    assert "acme_circuit_breaker_state == 2" in text
    assert "acme:error_budget_error_ratio:rate1h" in text
    assert not re.search(r"^[^#]*\bdwcp[_:]", text, flags=re.MULTILINE)
    assert "acme_circuit_breaker_state" in dashboard_queries("acme")[0][1]
    result = run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_only_use_metrics_the_collector_exposes() -> None:
    exposed = {f"dwcp_{family.key}" for family in FAMILIES}
    exprs = " ".join(re.findall(r"expr: ([^\n]+(?:\n {10,}[^\n]+)*)", alerts()))
    used = set(re.findall(r"\bdwcp_[a-z0-9_]+", exprs))
    assert used
    assert used <= exposed, used - exposed


def test_the_dashboard_has_a_panel_per_metric_family() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    covered: dict[str, int] = {}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        metrics = {
            re.sub(r"_bucket$", "", m)
            for target in panel["targets"]
            for m in re.findall(r"\bdwcp_[a-z0-9_]+", target["expr"])
        }
        assert len(metrics) == 1, (panel["title"], metrics)
        (metric,) = metrics
        covered[metric] = covered.get(metric, 0) + 1
    assert covered == {f"dwcp_{family.key}": 1 for family in FAMILIES}
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]


@pytest.mark.parametrize("what", sorted(FILES))
def test_print_ops_prints_each_file(what: str) -> None:
    out = io.StringIO()
    print_ops(what, file=out)
    assert out.getvalue() == path(what).read_text()
    renamed = io.StringIO()
    print_ops(what, namespace="acme", file=renamed)
    assert "acme_" in renamed.getvalue()
    if what == "dashboard":
        assert json.loads(renamed.getvalue())["panels"]


def test_print_ops_writes_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    print_ops("alerts")
    assert "DWCPCircuitBreakerOpen" in capsys.readouterr().out


def test_print_ops_refuses_unknown_things() -> None:
    with pytest.raises(ValueError, match="alerts, tests, dashboard"):
        print_ops("grafana")
    with pytest.raises(ValueError, match="namespace"):
        print_ops("alerts", namespace="bad-name")


def test_the_files_are_package_data() -> None:
    for name in FILES.values():
        assert (Path(__file__).parents[1] / "dwcp_resilience" / "ops" / name).is_file()
        assert path(next(k for k, v in FILES.items() if v == name)).is_file()


def test_the_shipped_dashboard_is_the_generated_one() -> None:
    """After adding a family, regenerate: ``python -m dwcp_resilience.ops._dashboard``."""
    assert path("dashboard").read_text() == render_dashboard()


def test_the_fleet_alert_and_rows_watch_every_fleet_primitive() -> None:
    """Any instance on local state (the min over instances) for 2 minutes; one row per fleet kind."""
    text = alerts()
    assert "DWCPFleetOnLocalState" in alert_names(text)
    assert "expr: min by (kind, name) (dwcp_fleet_shared_state) == 0\n        for: 2m" in text
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows[-4:] == [
        "Fleet state (Redis)",
        "Fleet rate limiters",
        "Fleet breakers",
        "Fleet error budgets",
    ]
