"""deploy/prometheus: promtool accepts the rules and the config, and the rules' unit tests
(synthetic series, every alert firing and not firing) pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from deploytools import DEPLOY, REPO, require_tool

PROM = DEPLOY / "prometheus"
RULE_FILES = (PROM / "recording.rules.yml", PROM / "alerts.rules.yml")
UNIT_TESTS = sorted((PROM / "tests").glob("*.test.yml"))


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _alerts() -> list[dict]:
    groups = yaml.safe_load((PROM / "alerts.rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules_accepts_every_rule_file() -> None:
    result = _promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_check_config_accepts_the_example_config() -> None:
    result = _promtool("check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = _promtool("test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for alert in _alerts():
        seen = cases.get(alert["alert"], [])
        assert True in seen, f"{alert['alert']}: no unit test where it fires"
        assert False in seen, f"{alert['alert']}: no unit test where it stays quiet"


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    headings = set(re.findall(r"^#+ (\S+)\s*$", operations, re.M))
    for alert in _alerts():
        name, notes = alert["alert"], alert.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), name
        assert notes.get("runbook_url") == f"docs/OPERATIONS.md#{name.lower()}", name
        assert name in headings, f"docs/OPERATIONS.md has no runbook heading for {name}"
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
