"""deploy/: the Kubernetes manifests against the ``kubernetes`` package's models (no cluster is
reachable here), their references to each other, and the compose file — each checked against
the real ``modelbus`` command line, so a renamed option fails here rather than in a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from kubernetes import client as k8s

from proxy.cli import main
from proxy.cli.serve import health, serve

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append(
                    (f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
                )
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def _normalized(value: Any) -> Any:
    """JSON-equal form: the models serialize ints and strings as given, drop None."""
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def test_there_are_manifests() -> None:
    kinds = sorted({doc["kind"] for _, doc in documents()})
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service"]


@pytest.mark.parametrize(
    ("where", "document"), documents(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_each_manifest_is_a_valid_object_with_no_unknown_field(
    where: str, document: dict[str, Any]
) -> None:
    api = k8s.ApiClient()
    model = MODELS[(document["apiVersion"], document["kind"])]
    # A missing required field, or one of the wrong type, raises here.
    obj = api.deserialize(json.dumps(document), model, "application/json")
    # The models drop fields they do not know: a typo (``readinesProbe``) comes back missing.
    assert _normalized(api.sanitize_for_serialization(obj)) == _normalized(document), where


def _parse(command: click.Command, args: list[str]) -> click.Context:
    return command.make_context(command.name or "", list(args), resilient_parsing=False)


def test_the_proxy_deployment_runs_serve_and_probes_its_health() -> None:
    deployment = by_kind("Deployment")["modelbus-proxy"]
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert deployment["spec"]["replicas"] >= 2
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve"
    options = _parse(serve, [arg.replace("$(MODELBUS_NAMESPACE)", "ns") for arg in args[1:]])
    health_file = options.params["health_file"]
    assert options.params["no_embedded_bus"] is True
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["modelbus", "health"], probe
        checked = _parse(health, command[2:])
        assert checked.params["path"] == health_file, probe
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(health_file.parent) in mounts  # the probe and the service see one file

    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["MODELBUS_ENTITY"].startswith("/keys/")
    [named] = [item for item in container["env"] if item["name"] == "MODELBUS_INSTANCE"]
    assert named["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # one name per pod
    secret = by_kind("Secret")[pod["spec"]["volumes"][0]["secret"]["secretName"]]
    mounted = {
        Path(path).name
        for path in [env["MODELBUS_ENTITY"], env["PGPASSFILE"], *env["MODELBUS_PROOF"].split(":")]
    }
    assert mounted <= set(secret["stringData"])
    config = by_kind("ConfigMap")[container["envFrom"][0]["configMapRef"]["name"]]["data"]
    assert config["MODELBUS_REGISTRY"].startswith("postgresql://")
    artifacts = config["MODELBUS_ARTIFACTS"].removeprefix("file://")
    assert artifacts in mounts
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"][3:]]
    assert claims == list(by_kind("PersistentVolumeClaim"))
    assert ":" not in config["MODELBUS_REGISTRY"].split("//")[1].split("@")[0]  # no password


def test_the_metrics_service_selects_the_proxies_metrics_port() -> None:
    service = by_kind("Service")["modelbus-metrics"]
    pod = by_kind("Deployment")["modelbus-proxy"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports


def test_the_mosquitto_configmap_is_deploy_mosquitto_conf() -> None:
    config = by_kind("ConfigMap")["modelbus-mosquitto"]["data"]["mosquitto.conf"]
    assert config.strip() == (DEPLOY / "mosquitto.conf").read_text().strip()
    broker = by_kind("Deployment")["modelbus-mosquitto"]["spec"]["template"]["spec"]
    assert broker["volumes"][0]["configMap"]["name"] == "modelbus-mosquitto"


def test_the_compose_file_runs_three_proxies_on_the_shared_parts() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    proxies = sorted(name for name in services if name.startswith("proxy-"))
    assert proxies == ["proxy-1", "proxy-2", "proxy-3"]
    assert {"mosquitto", "postgres", "s3"} <= set(services)
    for name in proxies:
        proxy = services[name]
        command = [
            arg.replace(
                "${NAMESPACE:?set NAMESPACE to the contents of deploy/secrets/namespace}", "ns"
            )
            for arg in proxy["command"]
        ]
        assert command[0] == "serve"
        _parse(serve, command[1:])
        assert proxy["environment"]["MODELBUS_REGISTRY"].startswith(
            "postgresql://modelbus@postgres"
        )
        assert proxy["environment"]["MODELBUS_BUS"] == "mqtt://mosquitto:1883"
        assert proxy["environment"]["MODELBUS_INSTANCE"] == name  # each beats as itself
        assert set(proxy["secrets"]) <= set(compose["secrets"])
        check = proxy["healthcheck"]["test"]
        _parse(health, check[3:])
    assert len({services[name]["volumes"][0] for name in proxies}) == 3  # a data dir each
    shared = {services[name]["volumes"][1] for name in proxies}  # one artifact volume
    assert shared == {"artifacts:/artifacts"}
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")  # made by make-secrets.sh, git-ignored


def test_the_root_options_the_manifests_rely_on_exist() -> None:
    names = {param.envvar for param in main.params if isinstance(param, click.Option)}
    assert {"MODELBUS_BUS", "MODELBUS_ENTITY", "MODELBUS_PROOF"} <= names
    assert any(param.envvar == "MODELBUS_REGISTRY" for param in serve.params)
