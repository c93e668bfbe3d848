"""The Kubernetes manifests in deploy/: valid shapes (a trimmed Kubernetes schema) and the security they promise.

No cluster is involved: every manifest is parsed, validated against `tests/data/k8s/k8s-trimmed.schema.json`
(hand-trimmed from the Kubernetes API reference) and checked for the walls docs/security.md attributes to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from policy.config import GreenloopConfig, load_config_text

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMA = Path(__file__).resolve().parent / "data" / "k8s" / "k8s-trimmed.schema.json"
KINDS = ("Deployment", "Service", "NetworkPolicy", "Secret", "ConfigMap")
APP_KEY_SECRET = "greenloop-github-app"
SIDECAR = "mcp"
RECONCILER = "reconciler"
MCP_PORT = 8765


# --------------------------------------------------------------------------------------------------------------
# Loading.


@cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _documents() if doc.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    found = _of_kind(kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _pod()["containers"]}


@cache
def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/$defs/{kind}", "$defs": _schema()["$defs"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _errors(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    if kind not in KINDS:
        return [f"kind {kind!r} is not one of {KINDS}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(str(kind)).iter_errors(doc)]


def _secret_volumes(secret: str) -> set[str]:
    return {v["name"] for v in _pod().get("volumes", []) if v.get("secret", {}).get("secretName") == secret}


def _config_for(container: str) -> GreenloopConfig:
    """greenloop.toml from the ConfigMap, overlaid with the container's environment (secrets as stand-ins)."""
    c = _containers()[container]
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    for e in c.get("env", []):
        if "valueFrom" in e:
            stand_in = "postgresql+asyncpg://u@db/greenloop" if e["name"].endswith("DATABASE_URL") else "x" * 40
            env[e["name"]] = stand_in
    text = _one("ConfigMap")["data"]["greenloop.toml"]
    return load_config_text(text, source=f"deploy/configmap.yaml ({container})", env=env)


def _mounted_by(secret: str) -> set[str]:
    volumes = _secret_volumes(secret)
    return {name for name, c in _containers().items() for m in c.get("volumeMounts", []) if m["name"] in volumes}


def _secret_refs(container: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(secret name, key) of every env var and envFrom that reads a Secret."""
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield ref["name"], ref["key"]
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            yield source["secretRef"]["name"], None


# --------------------------------------------------------------------------------------------------------------
# Shapes.


def test_the_manifests_are_the_expected_kinds() -> None:
    kinds = sorted(doc.get("kind", "?") for _, doc in _documents())
    assert kinds == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "Secret", "Secret", "Secret", "Service"])


@pytest.mark.parametrize(
    ("file", "doc"),
    list(_documents()),
    ids=[f"{f}:{d.get('kind')}/{d.get('metadata', {}).get('name')}" for f, d in _documents()],
)
def test_manifest_matches_the_kubernetes_schema(file: str, doc: dict[str, Any]) -> None:
    assert _errors(doc) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["spec"]["template"]["spec"].update(restartPolicy="Sometimes"), "restartPolicy", id="enum"
        ),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
            "readinessprobe",
            id="misspelt-field",
        ),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(protocol="HTTP"),
            "protocol",
            id="protocol-enum",
        ),
        pytest.param(lambda d: d["spec"].pop("selector"), "selector", id="required"),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(
                exec={"command": ["true"]}
            ),
            "livenessProbe",
            id="two-probe-handlers",
        ),
        pytest.param(lambda d: d["spec"].update(replicas="2"), "replicas", id="type"),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(name="Reconciler_1"), "name", id="dns-label"
        ),
    ],
)
def test_the_schema_refuses_broken_deployments(mutate: Any, expected: str) -> None:
    doc = json.loads(json.dumps(_one("Deployment")))
    assert _errors(doc) == []
    mutate(doc)
    errors = _errors(doc)
    assert errors, "the broken manifest passed the schema"
    assert any(expected in e for e in errors), errors


def test_every_object_carries_the_app_label() -> None:
    for _, doc in _documents():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "greenloop", doc["metadata"]["name"]


# --------------------------------------------------------------------------------------------------------------
# The walls docs/security.md attributes to Kubernetes.


def test_only_the_mcp_sidecar_mounts_the_app_key() -> None:
    assert _secret_volumes(APP_KEY_SECRET), f"no volume mounts the {APP_KEY_SECRET} Secret"
    assert _mounted_by(APP_KEY_SECRET) == {SIDECAR}
    _check_key_secret(APP_KEY_SECRET)


def test_one_app_key_and_no_other_container_sees_a_key() -> None:
    # One App: exactly one Secret holds a private key, and only the sidecar mounts any Secret as a file.
    key_secrets = {s["metadata"]["name"] for s in _of_kind("Secret") if any("key.pem" in k for k in s["stringData"])}
    assert key_secrets == {APP_KEY_SECRET}
    secret_volumes = {v["name"] for v in _pod()["volumes"] if "secret" in v}
    for name, c in _containers().items():
        mounted = {m["name"] for m in c.get("volumeMounts", [])} & secret_volumes
        assert mounted == (_secret_volumes(APP_KEY_SECRET) if name == SIDECAR else set()), (name, mounted)
        assert not any(s in key_secrets for s, _ in _secret_refs(c)), f"{name} reads a key from its environment"
        assert not any("PRIVATE_KEY" in e["name"] for e in c.get("env", [])), f"{name} points at a key"
    # The reconciler never opens a key: with server.mcp_url set it observes with the sidecar's read-only token.
    assert _config_for(RECONCILER).server.mcp_url


def _check_key_secret(secret: str) -> None:
    volumes = _secret_volumes(secret)
    for c in [*_pod()["containers"], *_pod().get("initContainers", [])]:
        names = {name for name, _ in _secret_refs(c)}
        assert secret not in names, f"container {c['name']!r} reads {secret} from its environment"
        for m in c.get("volumeMounts", []):
            if m["name"] in volumes:
                assert m.get("readOnly") is True
    for v in _pod()["volumes"]:
        if v["name"] in volumes:
            assert v["secret"].get("defaultMode", 0o644) & 0o007 == 0, f"{secret}: the key file is world-readable"


def test_the_sidecar_reads_the_key_it_mounts() -> None:
    config = _config_for(SIDECAR)
    key_path = config.forge.private_key_path
    assert key_path is not None and config.forge.app_id and config.forge.installation_id
    volumes = _secret_volumes(APP_KEY_SECRET)
    mounts = [m["mountPath"] for m in _containers()[SIDECAR]["volumeMounts"] if m["name"] in volumes]
    assert [Path(key_path).parent] == [Path(m) for m in mounts], (key_path, mounts)


def test_both_containers_know_the_one_apps_bot_login() -> None:
    sidecar, reconciler = _config_for(SIDECAR).forge, _config_for(RECONCILER).forge
    assert sidecar.bot_login == reconciler.bot_login, "the circuit breaker must know the App's login"


def test_the_reconciler_uses_the_sidecar_over_loopback() -> None:
    config = _config_for(RECONCILER)
    assert config.server.mcp_url == f"http://127.0.0.1:{MCP_PORT}/mcp"
    assert config.server.mcp_token_secret is not None
    assert _containers()[RECONCILER]["command"] == ["greenloop", "run"]


def test_the_sidecar_has_a_writable_workspace_dir() -> None:
    config = _config_for(SIDECAR)
    writable = [m["mountPath"] for m in _containers()[SIDECAR]["volumeMounts"] if not m.get("readOnly")]
    assert config.server.workspace_dir in writable, "agent clones need a writable volume"


def test_every_container_is_non_root_read_only_without_capabilities() -> None:
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for c in [*pod["containers"], *pod.get("initContainers", [])]:
        ctx = c["securityContext"]
        assert ctx.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True, c["name"]
        assert ctx.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0, c["name"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx.get("privileged", False) is False, c["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not ctx["capabilities"].get("add"), c["name"]


def test_read_only_containers_get_writable_scratch_volumes() -> None:
    for name, c in _containers().items():
        writable = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
        assert any(m["mountPath"] == "/tmp" for m in writable), f"{name}: no writable /tmp"
        for m in writable:
            volume = next(v for v in _pod()["volumes"] if v["name"] == m["name"])
            assert "emptyDir" in volume, f"{name}: {m['name']} is writable but not scratch space"


def test_every_container_has_probes_and_resource_requests_and_limits() -> None:
    for name, c in _containers().items():
        assert "livenessProbe" in c and "readinessProbe" in c, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"


def test_the_reconciler_probes_healthz_on_its_api_port() -> None:
    c = _containers()[RECONCILER]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in ports or get["port"] in ports.values()


def test_the_mcp_sidecar_listens_on_loopback_only_and_exposes_no_port() -> None:
    c = _containers()[SIDECAR]
    args = c.get("args", [])
    assert "serve-http" in args
    assert "--host=127.0.0.1" in args
    assert f"--port={MCP_PORT}" in args
    assert "--mode=agent" in args
    assert not c.get("ports"), "the sidecar must not declare a container port"
    for probe in ("livenessProbe", "readinessProbe"):
        command = " ".join(c[probe]["exec"]["command"])
        assert f"('127.0.0.1', {MCP_PORT})" in command


def test_the_service_exposes_only_the_api_port_of_the_pods() -> None:
    service = _one("Service")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    api_ports = {p["name"]: p["containerPort"] for p in _containers()[RECONCILER]["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["api"]
    assert "api" in api_ports
    assert _one("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_network_policy_admits_only_the_api_port_and_the_three_destinations() -> None:
    policy = _one("NetworkPolicy")["spec"]
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    api_port = {p["name"]: p["containerPort"] for p in _containers()[RECONCILER]["ports"]}["api"]
    ingress_ports = [(p.get("protocol", "TCP"), p["port"]) for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress_ports in ([("TCP", api_port)], [("TCP", "api")])
    assert MCP_PORT not in [p for _, p in ingress_ports]
    egress = policy["egress"]
    for rule in egress:
        assert rule.get("to"), "an egress rule without `to` allows every destination"
        assert rule.get("ports"), "an egress rule without `ports` allows every port"
    ports = sorted({p["port"] for rule in egress for p in rule["ports"]})
    assert ports == [53, 443, 5432]
    dns = [r for r in egress if any(p["port"] == 53 for p in r["ports"])]
    assert all(peer.get("namespaceSelector") and peer.get("podSelector") for r in dns for peer in r["to"])
    https = [peer["ipBlock"]["cidr"] for r in egress if any(p["port"] == 443 for p in r["ports"]) for peer in r["to"]]
    assert "160.79.104.0/23" in https, "the model API"
    assert len(https) >= 2, "the forge and the model API"
    assert "0.0.0.0/0" not in https


# --------------------------------------------------------------------------------------------------------------
# Secrets and configuration.


def test_secrets_are_marked_placeholders() -> None:
    for secret in _of_kind("Secret"):
        assert secret["metadata"]["annotations"]["greenloop.dev/placeholder"] == "true"
        assert "data" not in secret, "placeholders go in stringData, readable"
        for key, value in secret["stringData"].items():
            assert "REPLACE_ME" in value, f"{secret['metadata']['name']}.{key} is not an obvious placeholder"


def test_every_secret_reference_names_an_existing_secret_and_key() -> None:
    secrets = {s["metadata"]["name"]: set(s["stringData"]) for s in _of_kind("Secret")}
    for c in _pod()["containers"]:
        for name, key in _secret_refs(c):
            assert name in secrets, f"{c['name']}: Secret {name!r} is not in deploy/"
            assert key is None or key in secrets[name], f"{c['name']}: {name}.{key}"
    for volume in _pod()["volumes"]:
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets
            for item in volume["secret"].get("items", []):
                assert item["key"] in secrets[name]


def test_each_container_gets_only_the_secrets_it_needs() -> None:
    refs = {name: set(_secret_refs(c)) for name, c in _containers().items()}
    assert refs[RECONCILER] == {
        ("greenloop-postgres", "database-url"),
        ("greenloop-runtime", "api-token"),
        ("greenloop-runtime", "mcp-token-secret"),
        ("greenloop-runtime", "anthropic-api-key"),
    }
    assert refs[SIDECAR] == {("greenloop-postgres", "database-url"), ("greenloop-runtime", "mcp-token-secret")}
    names = {e["name"] for e in _containers()[SIDECAR]["env"]}
    assert "GREENLOOP_MCP_TOKEN_SECRET" in names  # what `greenloop-mcp serve-http` reads


def test_the_config_map_holds_a_valid_greenloop_toml_with_the_deployments_env() -> None:
    for name, c in _containers().items():
        config = _config_for(name)
        assert config.projects, "the example ConfigMap configures no project"
        assert {e["name"]: e.get("value") for e in c["env"]}["GREENLOOP_CONFIG"] == "/etc/greenloop/greenloop.toml"
    mounts = {m["mountPath"] for c in _containers().values() for m in c["volumeMounts"] if m["name"] == "config"}
    assert mounts == {"/etc/greenloop"}


def test_the_api_listens_on_the_port_the_pod_declares() -> None:
    config = _config_for(RECONCILER)
    ports = {p["name"]: p["containerPort"] for p in _containers()[RECONCILER]["ports"]}
    assert config.server.http_port == ports["api"]
    assert config.server.http_host == "0.0.0.0"  # inside the pod; the NetworkPolicy and Service bound it


def test_images_are_pinned_to_a_version_tag() -> None:
    for name, c in _containers().items():
        image = c["image"]
        assert re.search(r":[0-9][\w.-]*$|@sha256:[0-9a-f]{64}$", image), f"{name}: unpinned image {image!r}"
