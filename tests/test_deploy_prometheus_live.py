"""A real Prometheus scrapes a live server under a short load and evaluates every query of
the Grafana dashboard and every rule of deploy/prometheus through its HTTP API.

One Prometheus run (scrape and rule evaluation every second) is shared by all tests here.
A panel or a rule whose query returns nothing is a bug, so each must return at least one
sample with a finite value. The exceptions are checked to be valid PromQL only: the GPU-only
queries (device memory, which must return nothing on a CPU server), and queries of metrics
other branches add while the server does not export them yet (ARRIVING_METRICS).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import yaml
from deploytools import DEPLOY, Daemon, http_get, prom_api, require_tool, wait_for
from prometheus_client.parser import text_string_to_metric_families

from loadtest.spawn import free_port
from supertonic_client.client import SupertonicClient

pytestmark = pytest.mark.slow

PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "supertonic-grpc.json"
# Metrics only a CUDA server exports: their panels are empty on CPU by design.
GPU_ONLY_METRICS = ("supertonic_device_memory_bytes",)
# Metrics that other branches add (step occupancy: the step-level scheduler; unary requests
# in progress: the hardening work). While the server does not export them, their queries are
# only checked to be valid; as soon as it does, they must return data like every other one.
ARRIVING_METRICS = ("supertonic_running_chunks", "supertonic_active_unary_requests")
# What Grafana puts in place of its built-in variables; the dashboard's own variables are
# set to the live target, so the test also proves the job/instance filters match it.
RATE_INTERVAL = "1m"
TEXT = "Dashboards need data. This stream makes some. It has three short sentences."


@dataclass
class PromRun:
    url: str
    job: str
    instance: str
    exported: frozenset[str]  # metric families with samples at the server


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, rows included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def recording_rules() -> list[str]:
    groups = yaml.safe_load((PROM_DIR / "recording.rules.yml").read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"]]


def render(expr: str, run: PromRun) -> str:
    """The query as Grafana sends it with this job and instance selected."""
    text = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in (("job", run.job), ("instance", run.instance)):
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in text, f"unknown variable left in {text}"
    return text


def _test_config(metrics_port: int) -> dict[str, Any]:
    """The shipped example config with this server as its target and test intervals."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return config


def _load(address: str) -> int:
    """A short mixed load: concurrent streams, unary calls, a voice list; returns RPCs."""

    def one_stream(seed: int) -> int:
        with SupertonicClient(address, timeout=120) as tts:
            chunks = list(tts.stream(TEXT, steps=1, seed=seed, first_chunk_chars=30))
            assert chunks
            return 1

    def one_clip(seed: int) -> int:
        with SupertonicClient(address, timeout=120) as tts:
            assert tts.synthesize("A whole clip at once.", steps=1, seed=seed).audio.size
            tts.voices()
            return 2

    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(one_stream, s) for s in range(4)]
        jobs += [pool.submit(one_clip, s) for s in range(2)]
        return sum(job.result(timeout=180) for job in jobs)


def _server_requests(metrics_url: str) -> float:
    families = text_string_to_metric_families(http_get(metrics_url).decode())
    return sum(
        s.value for f in families for s in f.samples if s.name == "supertonic_requests_total"
    )


def _exported(metrics_url: str) -> frozenset[str]:
    families = text_string_to_metric_families(http_get(metrics_url).decode())
    return frozenset(f.name for f in families if f.samples)


def _prom_sum(url: str, query: str) -> float | None:
    result = prom_api(url, "query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def _groups_evaluated_after(url: str, moment: float) -> bool:
    """Every rule group has been evaluated since `moment` (a Unix time)."""
    groups = prom_api(url, "rules")["groups"]
    for group in groups:
        # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", group["lastEvaluation"]).replace("Z", "+00:00")
        if datetime.fromisoformat(stamp).timestamp() <= moment:
            return False
    return bool(groups)


@pytest.fixture(scope="module")
def prom(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromRun]:
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(_test_config(live_server.running.metrics_port)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with Daemon(argv, work / "prometheus.log") as daemon:
        try:
            wait_for(lambda: http_get(f"{url}/-/ready").startswith(b"Prometheus"), 60, "ready")
            instance = f"127.0.0.1:{live_server.running.metrics_port}"
            run = PromRun(url, "supertonic", instance, _exported(live_server.metrics_url))
            wait_for(lambda: _prom_sum(url, 'up{job="supertonic"}') == 1, 30, "target up")
            # Counted at the server itself: Prometheus may not have scraped earlier tests' calls.
            before = _server_requests(live_server.metrics_url)
            rpcs = _load(live_server.address)
            # Scraped after the load: Prometheus has counted every request of it.
            wait_for(
                lambda: (_prom_sum(url, "sum(supertonic_requests_total)") or 0) >= before + rpcs,
                30,
                "the load to be scraped",
            )
            scraped = time.time()
            wait_for(lambda: _groups_evaluated_after(url, scraped), 30, "a rule evaluation")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{daemon.log_tail()}") from None
        yield run


def _problem(query: str, result: list[dict[str, Any]]) -> str | None:
    if not result:
        return "no data"
    values = [float(series["value"][1]) for series in result]
    if not any(math.isfinite(v) for v in values):
        return f"only non-finite values {values}"
    return None


def _gpu_only(expr: str) -> bool:
    return any(metric in expr for metric in GPU_ONLY_METRICS)


def _arriving(expr: str, prom: PromRun) -> bool:
    return any(m in expr and m not in prom.exported for m in ARRIVING_METRICS)


def test_every_dashboard_query_returns_data(prom: PromRun) -> None:
    queries = [(title, expr) for title, expr in dashboard_queries() if not _gpu_only(expr)]
    assert len(queries) >= 20
    problems = []
    for title, expr in queries:
        query = render(expr, prom)
        result = prom_api(prom.url, "query", query=query)["result"]  # valid PromQL
        problem = None if _arriving(expr, prom) else _problem(query, result)
        if problem:
            problems.append(f"{title}: {query}: {problem}")
    assert not problems, "\n".join(problems)


def test_gpu_only_queries_are_valid_and_empty_on_cpu(prom: PromRun) -> None:
    gpu = [(title, expr) for title, expr in dashboard_queries() if _gpu_only(expr)]
    assert gpu, "the dashboard lost its device memory panel"
    for _title, expr in gpu:
        # prom_api asserts "success": the query parses and evaluates.
        assert prom_api(prom.url, "query", query=render(expr, prom))["result"] == []


def test_dashboard_variables_list_the_live_target(prom: PromRun) -> None:
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector, label = match.groups()
        values = prom_api(prom.url, f"label/{label}/values", **{"match[]": render(selector, prom)})
        assert getattr(prom, label) in values, (variable["name"], values)


def test_every_recording_rule_returns_data(prom: PromRun) -> None:
    names = recording_rules()
    problems = []
    for name in names:
        result = prom_api(prom.url, "query", query=f'{name}{{job="{prom.job}"}}')["result"]
        problem = _problem(name, result)
        if problem:
            problems.append(f"{name}: {problem}")
    assert not problems, "\n".join(problems)


def test_prometheus_evaluates_every_rule_without_error(prom: PromRun) -> None:
    groups = prom_api(prom.url, "rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    shipped = recording_rules() + [
        rule["alert"]
        for group in yaml.safe_load((PROM_DIR / "alerts.rules.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    assert sorted(rules) == sorted(shipped)
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def test_the_hpa_metric_of_prometheus_adapter_returns_data(prom: PromRun) -> None:
    rules = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "rules.yaml").read_text())
    for rule in rules["rules"]:
        # What the adapter sends for one pod; here the target's job/instance stand in for
        # the namespace/pod labels the Prometheus Operator adds in a cluster.
        series = rule["seriesQuery"].split("{")[0]
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'job="{prom.job}",instance="{prom.instance}"')
            .replace("<<.GroupBy>>", "instance")
        )
        result = prom_api(prom.url, "query", query=query)["result"]
        assert _problem(query, result) is None, query
        assert result[0]["metric"] == {"instance": prom.instance}


def test_demo_weights_alert_goes_off_for_a_demo_server(prom: PromRun) -> None:
    # The test server runs demo weights: the alert must at least be pending (its `for` is
    # one minute, longer than this test waits).
    def state() -> str | None:
        for alert in prom_api(prom.url, "alerts")["alerts"]:
            if alert["labels"]["alertname"] == "SupertonicDemoWeights":
                return str(alert["state"])
        return None

    assert wait_for(state, 15, "the demo alert") in {"pending", "firing"}
