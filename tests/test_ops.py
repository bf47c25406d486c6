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
    DEFAULT_RUNBOOK_URL,
    FILES,
    alert_tests,
    alerts,
    dashboard,
    dashboard_queries,
    path,
    print_ops,
    runbook_anchors,
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


# What may still say "dwcp" under another namespace: the package's own name.
_LEFTOVER = re.compile(r"dwcp(?!_resilience\b)", flags=re.IGNORECASE)


@pytest.mark.parametrize(
    ("namespace", "prefix"), [("acme", "Acme"), ("my_app", "MyApp"), ("", "Resilience")]
)
def test_another_namespace_renames_everything_and_promtool_passes(
    promtool: str, tmp_path: Path, namespace: str, prefix: str
) -> None:
    """Metrics, recording rules, groups, alerts, annotations, comments and the dashboard's title,
    uid and tags follow the namespace; the renamed rules and their tests pass promtool."""
    base = "https://wiki.example.org/ops/runbook.md"
    written = write_ops(tmp_path, namespace=namespace, runbook_url=base)
    text = written["alerts"].read_text()
    metric = f"{namespace}_" if namespace else ""
    record = namespace or "resilience"
    assert f"expr: {metric}circuit_breaker_state == 2" in text
    assert f"{record}:error_budget_error_ratio:rate1h" in text
    names = alert_names(text)
    assert names == [prefix + name.removeprefix("DWCP") for name in alert_names(alerts())]
    groups = re.findall(r"^  - name: (\w+)$", text, flags=re.MULTILINE)
    assert len(groups) == 4 and all(g.startswith(metric) for g in groups), groups
    assert f'metric namespace "{namespace}"' in text.splitlines()[0]
    assert f'summary: "{record} circuit breaker {{{{ $labels.name }}}} is open"' in text
    for what, target in written.items():
        leftovers = [line for line in target.read_text().splitlines() if _LEFTOVER.search(line)]
        assert leftovers == [], (what, leftovers)
    board = json.loads(written["dashboard"].read_text())
    assert board["title"] == f"{record} resilience"
    assert board["uid"] == (f"{namespace}-resilience" if namespace else "resilience")
    assert board["tags"] == [namespace, "resilience"]
    assert f"{metric}circuit_breaker_state" in dashboard_queries(namespace)[0][1]
    assert set(runbook_anchors(text).values()) == set(runbook_anchors().values())
    assert text.count(f'runbook_url: "{base}#') == len(names)
    result = run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_grafana_uid_stays_within_40_characters() -> None:
    board = dashboard("a" * 60)
    assert board["uid"] == ("a" * 60 + "-resilience")[:40]


# --- runbook links ---------------------------------------------------------------------------------

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """``{anchor: section text}`` of every ``## `` section of docs/runbook.md."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {
        github_anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_every_alert_links_to_its_own_runbook_section() -> None:
    anchors = runbook_anchors()
    names = alert_names(alerts())
    assert list(anchors) == names
    sections = runbook_sections()
    for name, anchor in anchors.items():
        assert anchor == name.removeprefix("DWCP").lower()
        assert anchor in sections, f"{name}: no section #{anchor} in docs/runbook.md"
        body = sections[anchor]
        assert f"`{name}`" in body, name
        for part in ("**What it means.**", "**First checks.**", "**What to change.**"):
            assert part in body, (name, part)
    assert set(sections) == set(anchors.values()), "a runbook section without an alert"
    assert alerts().count(f'runbook_url: "{DEFAULT_RUNBOOK_URL}#') == len(names)


def test_the_runbook_links_between_its_sections_resolve() -> None:
    sections = runbook_sections()
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links
    assert set(links) <= set(sections)


def test_every_firing_case_expects_the_runbook_url() -> None:
    """promtool compares all annotations, so each firing case lists its alert's runbook_url."""
    tests = alert_tests()
    anchors = runbook_anchors()
    expected = re.findall(
        r"- alertname: (\w+)\n(?:(?!\s*- alertname).*\n)*?\s+runbook_url: \"[^\"#]+#([a-z-]+)\"",
        tests,
    )
    assert len(expected) == sum(1 for _, _, fires in cases(tests) if fires)
    assert all(anchors[name] == anchor for name, anchor in expected)


def test_the_runbook_url_base_is_configurable() -> None:
    base = "https://runbooks.example.org/dwcp"
    text = alerts(runbook_url=base)
    assert DEFAULT_RUNBOOK_URL not in text
    assert text.count(f'runbook_url: "{base}#') == len(alert_names(text))
    assert DEFAULT_RUNBOOK_URL not in alert_tests(runbook_url=base)
    assert f"{base}#circuitbreakeropen" in alert_tests(runbook_url=base)
    out = io.StringIO()
    print_ops("alerts", runbook_url=base, file=out)
    assert out.getvalue() == text


@pytest.mark.parametrize(
    "url",
    ["docs/runbook.md", "/runbook.md", "ftp://host/runbook.md", "https://host/r.md#x",
     'https://host/"r.md', "https://host/a b.md", "https://", 7],
)  # fmt: skip
def test_a_bad_runbook_url_is_refused(url: object) -> None:
    with pytest.raises(ValueError, match="runbook_url must be an absolute http"):
        alerts(runbook_url=url)  # type: ignore[arg-type]


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
    assert rows[-6:] == [
        "Fleet state (Redis)",
        "Fleet membership and quorum",
        "Fleet rate limiters",
        "Fleet breakers",
        "Fleet error budgets",
        "Fleet error budgets, fleet-wide (latest snapshot)",
    ]


def test_the_fleet_membership_and_snapshot_rows_hold_their_families() -> None:
    """Membership and quorum in one row, the fleet-wide budget snapshot in another; each panel
    groups by the identity labels its family has."""
    rows: dict[str, list[str]] = {}
    current = ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            continue
        rows.setdefault(current, []).append(panel["targets"][0]["expr"])
    assert rows["Fleet membership and quorum"] == [
        "dwcp_fleet_members",
        "dwcp_fleet_breaker_reports_needed",
    ]
    snapshot = rows["Fleet error budgets, fleet-wide (latest snapshot)"]
    assert snapshot == [
        "dwcp_fleet_budget_snapshot_requests",
        "dwcp_fleet_budget_snapshot_failures",
        "dwcp_fleet_budget_snapshot_remaining",
        "dwcp_fleet_budget_snapshot_burn_rate",
        "dwcp_fleet_budget_snapshot_exhausted",
        "sum by (budget) (rate(dwcp_fleet_budget_snapshots_total[$__rate_interval]))",
    ]


def test_the_fleet_budget_alert_reads_the_fleet_wide_snapshot() -> None:
    """The highest snapshot over instances, so one instance's older snapshot cannot fire it."""
    text = alerts()
    assert "DWCPFleetErrorBudgetExhausted" in alert_names(text)
    expr = "expr: max by (budget) (dwcp_fleet_budget_snapshot_remaining) < 0.1\n        for: 10m"
    assert expr in text
