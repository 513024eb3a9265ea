"""Deployment files checked by the tools they are written for, and against the code's contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from adapters import ADAPTERS
from daemon.config.deployment import load_deployment
from daemon.config.settings import load_config
from daemon.core.telemetry import Metrics

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s" / "base"
HA = DEPLOY / "k8s" / "ha"
MERCHANTS = DEPLOY / "k8s" / "merchants"
SYSTEMD_MERCHANTS = DEPLOY / "systemd" / "merchants"


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


def exported_labels() -> dict[str, set[str]]:
    """Every sample name exported (`_total`, `_bucket` ...) and the labels it carries."""
    metrics = Metrics(CollectorRegistry(), "test")
    metrics.for_merchant("default", ["c"])
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def exported_families() -> set[str]:
    return set(exported_labels())


def merchant_metrics(expr: str) -> bool:
    """Whether the expression reads a family labelled by merchant."""
    labels = exported_labels()
    return any("merchant" in labels.get(n, set()) for n in re.findall(r"stocksync_\w+", expr))


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
    resource = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == alerts


def test_kubernetes_manifests_validate() -> None:
    validate = tool("kubernetes-validate")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [K8S / name for name in kustomization["resources"]]
    files.append(DEPLOY / "k8s" / "secret.example.yaml")
    assert all(f.exists() for f in files)
    core = [
        str(f)
        for f in files
        if yaml.safe_load(f.read_text())["apiVersion"] != "monitoring.coreos.com/v1"
    ]
    run(validate, "--strict", *core)


def test_kubernetes_deployment_keeps_its_promises() -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
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
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())
    toml = configmap["data"]["stocksync.toml"]
    timeout = float(re.search(r'shutdown_timeout = "(\d+)s"', toml).group(1))  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] > timeout


def test_kubernetes_config_is_a_valid_stocksync_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    for name in secret["stringData"]:
        monkeypatch.setenv(name, "x" * 20)
    path = tmp_path / "stocksync.toml"
    path.write_text(configmap["data"]["stocksync.toml"])
    config = load_config(path, ADAPTERS)
    assert config.daemon.listen.startswith("0.0.0.0:")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "stocksync.service").read_text()
    assert (
        "Type=notify" in unit
        and "WatchdogSec=" in unit
        and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    )
    _verify_unit(tmp_path)


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


def test_grafana_dashboard_shows_every_instance_and_merchant() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "stocksync.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"job", "instance", "merchant"} <= set(variables)
    for name in ("instance", "merchant"):
        assert variables[name]["multi"] and variables[name]["includeAll"], name
    labels = exported_labels()
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
            # every read of a merchant's family is filtered by the variable and keeps the label
            for name, selector in re.findall(r"(stocksync_\w+)\{([^}]*)\}", expr):
                if "merchant" in labels[name]:
                    assert 'merchant=~"$merchant"' in selector, expr
            if merchant_metrics(expr):
                for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
                    assert "merchant" in clause, expr
                assert "{{merchant}}" in target["legendFormat"], expr
            ranges = re.findall(r"\[([^\]]+)\]", expr)
            rates = re.findall(r"\brate\(", expr)
            assert ranges.count("$__rate_interval") >= len(rates), expr
            assert "{{instance}}" in target["legendFormat"], expr


def test_every_alert_keeps_job_instance_merchant_and_channel() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    # The one rule about the replicas together: whether any of them leads the merchant.
    across_replicas = {"StocksyncNoLeader": {"job", "merchant"}}
    for rule in rules:
        name, expr = rule["alert"], rule["expr"]
        # an aggregation must keep the instance: `by (channel)` alone merges two daemons, and
        # `by (job, instance, channel)` two merchants' channels of one name
        merchant = {"merchant"} if merchant_metrics(expr) else set()
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            keeps = across_replicas.get(name, {"job", "instance"}) | merchant
            assert keeps <= {c.strip() for c in clause.split(",")}, name
        if merchant:
            assert "$labels.merchant" in rule["annotations"]["summary"], name
        assert "without" not in expr, name
        assert "absent(stocksync" not in expr, name  # misses a dead instance while another exports
    assert 'up{job="stocksync"} == 0' in exprs.values()
    assert 'absent(up{job="stocksync"})' in exprs.values()
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    assert 'instance="a:9108"' in tests and 'instance="b:9108"' in tests
    # two merchants on one instance, one stuck: the alert names that one alone
    assert 'instance="a:9108",merchant="acme"' in tests
    assert 'instance="a:9108",merchant="bolt"' in tests


def test_operator_resources_carry_the_label_kube_prometheus_stack_selects_on() -> None:
    for name in ("prometheusrule.yaml", "servicemonitor.yaml"):
        resource = yaml.safe_load((K8S / name).read_text())
        assert "release" in resource["metadata"]["labels"], name


def _documents(path: Path) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _render(overlay: Path, tmp_path: Path) -> list[dict[str, object]]:
    """The overlay as kustomize builds it (kubectl's built-in kustomize); skipped without it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the overlay)")
    rendered = tmp_path / f"{overlay.name}.yaml"
    rendered.write_text(run(kubectl, "kustomize", str(overlay)))
    return _documents(rendered)


def _validate_strict(documents: list[dict[str, object]], tmp_path: Path, *extra: Path) -> None:
    """kubernetes-validate --strict over every core resource (not the operator's) and `extra`."""
    validate = tool("kubernetes-validate")
    core = []
    for index, doc in enumerate([*documents, *(d for p in extra for d in _documents(p))]):
        if str(doc["apiVersion"]).startswith("monitoring.coreos.com/"):
            continue
        path = tmp_path / f"{index}.yaml"
        path.write_text(yaml.safe_dump(doc))
        core.append(str(path))
    run(validate, "--strict", *core)


def test_kubernetes_base_still_applies_from_deploy_k8s() -> None:
    top = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]
    overlay = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert "../base" in overlay["resources"]
    assert all((HA / entry).exists() for entry in overlay["resources"] if entry != "../base")


def test_kubernetes_ha_overlay_keeps_its_promises() -> None:
    patch = yaml.safe_load((HA / "deployment-patch.yaml").read_text())
    spec = patch["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    base = yaml.safe_load((K8S / "deployment.yaml").read_text())
    labels = base["spec"]["template"]["metadata"]["labels"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels
    pdb = yaml.safe_load((HA / "poddisruptionbudget.yaml").read_text())
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    # The database connection comes from a Secret; no value of it sits in the manifests.
    (container,) = pod["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {"PGHOST", "PGUSER", "PGDATABASE", "STOCKSYNC_DB_PASSWORD"} <= set(refs)
    assert {ref["name"] for ref in refs.values()} == {"stocksync-db-app"}
    secret = yaml.safe_load((HA / "db-secret.example.yaml").read_text())
    assert {ref["key"] for ref in refs.values()} <= set(secret["stringData"])


def test_kubernetes_ha_config_is_a_valid_postgresql_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = yaml.safe_load((HA / "configmap-patch.yaml").read_text())
    for name in yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())["stringData"]:
        monkeypatch.setenv(name, "x" * 20)
    monkeypatch.setenv("STOCKSYNC_DB_PASSWORD", "p" * 20)
    path = tmp_path / "stocksync.toml"
    path.write_text(configmap["data"]["stocksync.toml"])
    config = load_config(path, ADAPTERS)
    assert config.daemon.database is not None
    assert config.daemon.database_password is not None
    assert config.daemon.lease_ttl == 15
    patch = yaml.safe_load((HA / "deployment-patch.yaml").read_text())
    pod = patch["spec"]["template"]["spec"]
    timeout = config.daemon.shutdown_timeout
    assert pod.get("terminationGracePeriodSeconds", 30) > timeout


def test_kubernetes_ha_overlay_renders_and_validates(tmp_path: Path) -> None:
    documents = _render(HA, tmp_path)
    kinds = {str(doc["kind"]): doc for doc in documents}
    assert "PersistentVolumeClaim" not in kinds  # the state is in PostgreSQL
    assert {"Deployment", "PodDisruptionBudget", "ConfigMap", "Service"} <= set(kinds)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 3  # type: ignore[index]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
    assert not any("persistentVolumeClaim" in v for v in volumes)
    _validate_strict(documents, tmp_path, HA / "db-secret.example.yaml")


def _verify_unit(tmp_path: Path, drop_in: Path | None = None) -> str:
    """`systemd-analyze verify` of the unit (and a drop-in beside it, as systemd finds one)."""
    analyze = tool("systemd-analyze")
    stocksync = shutil.which("stocksync", path=str(Path(os.sys.executable).parent))
    assert stocksync is not None
    unit = (DEPLOY / "systemd" / "stocksync.service").read_text()
    # verify checks that ExecStart exists: point it at this environment's command.
    local = tmp_path / "stocksync.service"
    local.write_text(unit.replace("/opt/stocksync/bin/stocksync", stocksync))
    if drop_in is not None:
        folder = tmp_path / "stocksync.service.d"
        folder.mkdir(exist_ok=True)
        (folder / "merchants.conf").write_text(drop_in.read_text())
    return run(analyze, "verify", str(local))


def _credentials_as_systemd_loads_them(unit: str, root: Path, into: Path) -> None:
    """What `LoadCredential=ID:PATH` puts in $CREDENTIALS_DIRECTORY (PATH under `root`): a file
    as ID; a folder's files, recursively, as ID_<path below the folder, '/' made '_'>
    (systemd.exec(5), Credentials; src/core/exec-credential.c). An empty one resets the list."""
    lines: list[str] = []
    for line in unit.splitlines():
        if line.startswith("LoadCredential="):
            value = line.removeprefix("LoadCredential=")
            lines = [*lines, value] if value else []
    into.mkdir()
    for line in lines:
        name, path = line.split(":", 1)
        source = root / path.lstrip("/")
        if source.is_dir():
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                sub = file.relative_to(source).as_posix().replace("/", "_")
                (into / f"{name}_{sub}").write_bytes(file.read_bytes())
        else:
            (into / name).write_bytes(source.read_bytes())


def _file_secrets(node: object) -> list[str]:
    """Every `*_file` value of a TOML document: the credentials it names."""
    if isinstance(node, list):
        return [s for item in node for s in _file_secrets(item)]
    if isinstance(node, dict):
        return [
            s
            for key, value in node.items()
            for s in ([value] if key.endswith("_file") else _file_secrets(value))
        ]
    return []


def test_systemd_merchants_drop_in_verifies(tmp_path: Path) -> None:
    drop_in = SYSTEMD_MERCHANTS / "stocksync.service.d" / "merchants.conf"
    out = _verify_unit(tmp_path, drop_in)
    assert "merchants.conf" not in out, out  # every key of the drop-in is known to systemd
    # ...and verify did read the drop-in: a key it does not know is named
    (tmp_path / "stocksync.service.d" / "merchants.conf").write_text(
        drop_in.read_text() + "NoSuchKey=1\n"
    )
    assert "merchants.conf" in run(
        tool("systemd-analyze"), "verify", str(tmp_path / "stocksync.service")
    )


def test_systemd_merchants_example_loads_every_merchant_from_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_in = (SYSTEMD_MERCHANTS / "stocksync.service.d" / "merchants.conf").read_text()
    main = re.search(r"^Environment=STOCKSYNC_CONFIG=(/etc/stocksync/\S+)$", drop_in, re.M)
    assert main is not None
    main_file = SYSTEMD_MERCHANTS / Path(main.group(1)).name
    daemon = tomllib.loads(main_file.read_text())["daemon"]
    folder = main_file.parent / daemon["merchants"]
    # The secrets as the README installs them: /etc/stocksync/credentials/merchants/<m>/<name>.
    root = tmp_path / "root"
    admin = root / "etc/stocksync/credentials" / daemon["admin_token_file"]
    admin.parent.mkdir(parents=True)
    admin.write_text("admin-token-value-0123456789")
    names = sorted(f.stem for f in folder.glob("*.toml"))
    assert len(names) >= 2
    for name in names:
        document = tomllib.loads((folder / f"{name}.toml").read_text())
        secrets = _file_secrets(document)
        assert secrets and "channel" in document, name
        for secret in secrets:
            # each merchant names its own credentials only: merchants_<merchant>_<file>
            assert secret.startswith(f"merchants_{name}_"), (name, secret)
            file = root / "etc/stocksync/credentials/merchants" / name / secret.split("_", 2)[2]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(f"{secret}-value-0123456789")
    unit = (DEPLOY / "systemd" / "stocksync.service").read_text()
    credentials = tmp_path / "credentials"
    _credentials_as_systemd_loads_them(unit + "\n" + drop_in, root, credentials)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    deployment = load_deployment(main_file, ADAPTERS)
    assert deployment.broken == {}
    assert sorted(deployment.merchants) == names
    for name, config in deployment.merchants.items():
        assert config.keycrm.api_key.get_secret_value().startswith(f"merchants_{name}_")
        assert config.daemon.state == Path(daemon["state"]) / f"{name}.db"
    # the state folder is inside the unit's StateDirectory, which the sandbox lets it write
    assert Path(daemon["state"]).is_relative_to("/var/lib/stocksync")
    assert "StateDirectory=stocksync" in unit


def _merchants_overlay(tmp_path: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    documents = _render(MERCHANTS, tmp_path)
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    return documents, deployment


def _configmap(documents: list[dict[str, object]], prefix: str) -> dict[str, str]:
    (found,) = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and str(d["metadata"]["name"]).startswith(prefix)  # type: ignore[index]
    ]
    return found["data"]  # type: ignore[return-value]


def test_kubernetes_merchants_overlay_renders_and_validates(tmp_path: Path) -> None:
    documents, deployment = _merchants_overlay(tmp_path)
    pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    assert deployment["spec"]["replicas"] == 3  # type: ignore[index]  # sharded, on PostgreSQL
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in documents)
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, v in volumes.items() if "configMap" in v and "merchants" in n]
    generated = volumes[name]["configMap"]["name"]
    # The ConfigMap is generated from the merchants' files (its name carries their hash, so a
    # changed set rolls the replicas over), every file of the folder, nothing else.
    files = _configmap(documents, "stocksync-merchants-")
    assert str(generated).startswith("stocksync-merchants-")
    assert set(files) == {f.name for f in (MERCHANTS / "merchants").glob("*.toml")}
    # It is mounted where the main file says the merchants are.
    env = {e["name"]: e.get("value") for e in container["env"]}
    main = Path(str(env["STOCKSYNC_CONFIG"]))
    assert mounts["config"] == str(main.parent)
    daemon = tomllib.loads(_configmap(documents, "stocksync-config")[main.name])["daemon"]
    assert main.parent / daemon["merchants"] == Path(mounts[name])
    assert daemon["state"].startswith("postgresql://")
    _validate_strict(documents, tmp_path, MERCHANTS / "secrets.example.yaml")


def test_kubernetes_merchants_load_with_the_secrets_the_pod_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents, deployment = _merchants_overlay(tmp_path)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    # Each Secret's keys become variables as envFrom names them (with its prefix, if any).
    examples = (MERCHANTS / "secrets.example.yaml", DEPLOY / "k8s" / "secret.example.yaml")
    secrets: dict[str, Any] = {
        d["metadata"]["name"]: d["stringData"]
        for path in examples
        for d in yaml.safe_load_all(path.read_text())
        if d
    }
    for source in container["envFrom"]:
        for key in secrets[source["secretRef"]["name"]]:
            name = source.get("prefix", "") + key
            monkeypatch.setenv(name, f"{name}-value-0123456789")  # each its own: tokens differ
    monkeypatch.setenv("STOCKSYNC_DB_PASSWORD", "p" * 20)
    folder = tmp_path / "merchants"
    folder.mkdir()
    for name, text in _configmap(documents, "stocksync-merchants-").items():
        (folder / name).write_text(text)
    main = _configmap(documents, "stocksync-config")["stocksync.toml"]
    path = tmp_path / "stocksync.toml"
    path.write_text(
        main.replace('merchants = "/etc/stocksync/merchants"', f'merchants = "{folder}"')
    )
    assert str(folder) in path.read_text()
    deployment_config = load_deployment(path, ADAPTERS)
    assert deployment_config.broken == {}
    assert set(deployment_config.merchants) == {
        f.removesuffix(".toml") for f in _configmap(documents, "stocksync-merchants-")
    }
    assert deployment_config.daemon.database is not None
    for name, config in deployment_config.merchants.items():
        assert (
            config.keycrm.api_key.get_secret_value()
            == f"{name.upper()}_KEYCRM_API_KEY-value-0123456789"
        )
