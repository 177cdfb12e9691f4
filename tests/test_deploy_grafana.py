"""deploy/grafana: one dashboard with a datasource variable, job/instance filters on every
query, and the panels an on-call engineer needs. (test_deploy_prometheus_live.py runs every
query against a real Prometheus.)"""

from __future__ import annotations

import json
import re
from typing import Any

from deploytools import DEPLOY

DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
SELECTOR = re.compile(r"\b(supertonic_\w+|up)\b(\{[^}]*\})?")
FILTER = 'job=~"$job", instance=~"$instance"'


def _dashboard() -> dict[str, Any]:
    (path,) = DASHBOARDS
    return json.loads(path.read_text())


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def test_there_is_exactly_one_dashboard_file() -> None:
    assert [p.name for p in DASHBOARDS] == ["supertonic-grpc.json"]


def test_variables_datasource_job_and_instance() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert v["datasource"]["uid"] == "${datasource}", name
    assert '{job=~"$job"}' in variables["instance"]["query"]["query"]


def test_every_panel_reads_the_selected_datasource() -> None:
    for panel in _panels(_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_series_selector_is_filtered_by_job_and_instance() -> None:
    exprs = [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        selectors = SELECTOR.findall(expr)
        assert selectors, expr
        for name, labels in selectors:
            assert labels.startswith("{" + FILTER), f"{name} unfiltered in {expr}"


def test_the_issues_panels_are_all_there() -> None:
    panels = _panels(_dashboard()["panels"])
    text = " ".join(
        f"{p['title']} {' '.join(t['expr'] for t in p.get('targets', []))}" for p in panels
    )
    for needle in (
        "histogram_quantile(0.5, sum by (rpc, le) (rate(supertonic_time_to_first_audio",
        "histogram_quantile(0.95, sum by (rpc, le) (rate(supertonic_time_to_first_audio",
        "histogram_quantile(0.99, sum by (rpc, le) (rate(supertonic_time_to_first_audio",
        "Gapless share",
        "supertonic_underruns_total",
        "sum by (rpc, code) (rate(supertonic_requests_total",
        "RESOURCE_EXHAUSTED",
        "sum by (instance, priority) (supertonic_queue_depth",
        "supertonic_batch_size_bucket",
        "rate(supertonic_audio_seconds_total",
        "supertonic_active_streams",
        "supertonic_queue_wait_seconds",
        "supertonic_compute_seconds",
        "supertonic_model_info",
        "supertonic_device_memory_bytes",
    ):
        assert needle in text, needle


def test_model_state_panel_shows_demo_in_red() -> None:
    (panel,) = [p for p in _panels(_dashboard()["panels"]) if p["title"] == "Model state"]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert mapping["options"]["1"] == {"text": "DEMO", "color": "red", "index": 1}
    assert mapping["options"]["0"]["text"] == "REAL"
