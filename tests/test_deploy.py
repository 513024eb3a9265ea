"""Deployment files checked by the tools they are written for, and against the code's contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.config import load_config
from daemon.telemetry import Metrics

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """The path of a checker CI installs; outside CI a missing one skips the test."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(os.sys.executable).parent))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


def run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def exported_families() -> set[str]:
    metrics = Metrics(CollectorRegistry(), ["c"], "test")
    names = set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
    return names


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus")
    out = run(promtool, "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test_and_uses_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    families = exported_families()
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]
        for name in re.findall(r"stocksync_\w+", rule["expr"]):
            assert name in families, name


def test_the_prometheus_rule_resource_carries_the_same_alerts() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    resource = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == alerts


def test_kubernetes_manifests_validate() -> None:
    validate = tool("kubernetes-validate")
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = [DEPLOY / "k8s" / name for name in kustomization["resources"]]
    files.append(DEPLOY / "k8s" / "secret.example.yaml")
    assert all(f.exists() for f in files)
    core = [
        str(f)
        for f in files
        if yaml.safe_load(f.read_text())["apiVersion"] != "monitoring.coreos.com/v1"
    ]
    run(validate, "--strict", *core)


def test_kubernetes_deployment_keeps_its_promises() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "limits" in container["resources"]
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    toml = configmap["data"]["stocksync.toml"]
    timeout = float(re.search(r'shutdown_timeout = "(\d+)s"', toml).group(1))  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] > timeout


def test_kubernetes_config_is_a_valid_stocksync_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    for name in secret["stringData"]:
        monkeypatch.setenv(name, "x" * 20)
    path = tmp_path / "stocksync.toml"
    path.write_text(configmap["data"]["stocksync.toml"])
    config = load_config(path, ADAPTERS)
    assert config.daemon.listen.startswith("0.0.0.0:")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    stocksync = shutil.which("stocksync", path=str(Path(os.sys.executable).parent))
    assert stocksync is not None
    unit = (DEPLOY / "systemd" / "stocksync.service").read_text()
    assert (
        "Type=notify" in unit
        and "WatchdogSec=" in unit
        and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    )
    # verify checks that ExecStart exists: point it at this environment's command.
    local = tmp_path / "stocksync.service"
    local.write_text(unit.replace("/opt/stocksync/bin/stocksync", stocksync))
    run(analyze, "verify", str(local))


def test_systemd_example_config_reads_its_secrets_from_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = (DEPLOY / "systemd" / "stocksync.service").read_text()
    for credential in re.findall(r"LoadCredential=([\w-]+):", unit):
        (tmp_path / credential).write_text("c" * 20)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = load_config(DEPLOY / "systemd" / "stocksync.toml", ADAPTERS)
    assert config.keycrm.api_key.get_secret_value() == "c" * 20


def test_dockerfile_lints_clean() -> None:
    hadolint = tool("hadolint")
    run(hadolint, str(ROOT / "Dockerfile"))
    text = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r"^USER \d+", text, re.M)
    assert 'ENTRYPOINT ["stocksync"]' in text  # exec form: PID 1 gets the signals


def test_grafana_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "stocksync.json").read_text())
    families = exported_families()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("lag", "pending", "push outcomes", "budget"):
        assert wanted in titles
    for expr in exprs:
        for name in re.findall(r"(?:stocksync|process)_\w+", expr):
            assert name in families, name


def test_grafana_dashboard_shows_every_instance() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "stocksync.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    for panel in dashboard["panels"]:
        assert panel.get("description", "").strip(), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            # max()/min() without the instance would hide a stale instance behind a healthy one
            assert not re.search(r"\b(max|min|avg)\s*(by\s*\([^)]*\))?\s*\(", expr), expr
            for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
                assert "instance" in clause, expr
            for selector in re.findall(r"\{([^}]*)\}", expr):
                assert 'instance=~"$instance"' in selector and 'job=~"$job"' in selector, expr
            ranges = re.findall(r"\[([^\]]+)\]", expr)
            rates = re.findall(r"\brate\(", expr)
            assert ranges.count("$__rate_interval") >= len(rates), expr
            assert "{{instance}}" in target["legendFormat"], expr


def test_every_alert_keeps_job_instance_and_channel() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    for name, expr in exprs.items():
        # an aggregation must keep the instance: `by (channel)` alone merges two daemons
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            assert {"job", "instance"} <= {c.strip() for c in clause.split(",")}, name
        assert "without" not in expr, name
        assert "absent(stocksync" not in expr, name  # misses a dead instance while another exports
    assert 'up{job="stocksync"} == 0' in exprs.values()
    assert 'absent(up{job="stocksync"})' in exprs.values()
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    assert 'instance="a:9108"' in tests and 'instance="b:9108"' in tests


def test_operator_resources_carry_the_label_kube_prometheus_stack_selects_on() -> None:
    for name in ("prometheusrule.yaml", "servicemonitor.yaml"):
        resource = yaml.safe_load((DEPLOY / "k8s" / name).read_text())
        assert "release" in resource["metadata"]["labels"], name
