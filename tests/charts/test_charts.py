"""The Helm charts under charts/, rendered by the real Helm engine (helm-python-sdk: Helm v4's Go SDK through
ctypes, no helm binary) and checked against Kubernetes' own OpenAPI schemas (kubernetes-validate), the CRDs that
`meshctl crds` prints, the seed manifests, and the code they configure.

Run from the repository root: scripts/test-charts.sh (or .venv-charts/bin/python -m pytest tests/charts -q).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions, latest_version

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
CHART_NAMES = ["base", "control", "ztunnel", "cni"]
NAMESPACE = "istio-system"

# Oldest supported: 1.30, the first release whose pod-bound service account tokens carry the
# authentication.kubernetes.io/node-name extra by default (ServiceAccountTokenPodNodeInfo, beta in 1.30). The
# control plane's TokenReview authentication of ztunnel (control/src/token_review.rs) refuses a node proxy token
# without it. Newest: the newest schemas the pinned kubernetes-validate ships.
OLDEST_K8S = "1.30"
NEWEST_K8S = kubernetes_validate.utils.major_minor(latest_version())
K8S_VERSIONS = [OLDEST_K8S, NEWEST_K8S]

# ztunnel's capabilities, each explained in charts/ztunnel/values.yaml.
ZTUNNEL_CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN"}
# The node agent: setns into pods (SYS_ADMIN), iptables there (NET_ADMIN, NET_RAW), other processes' namespaces
# under /host/proc (SYS_PTRACE).
CNI_AGENT_CAPABILITIES = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}

# A non-default values set per chart: several replicas behind an HPA, monitoring on, another image and resources.
CUSTOM_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "300Mi"},
    "limits": {"cpu": "3", "memory": "2Gi", "ephemeral-storage": "1Gi"},
}
CUSTOM_VALUES: dict[str, dict[str, Any]] = {
    "base": {},
    "control": {
        "image": {"repository": "registry.example/mesh", "tag": "v9.9.9", "pullPolicy": "Always"},
        "dashboards": {"labels": {"grafana_dashboard": "1", "team": "observability"}},
        "imagePullSecrets": ["regcred"],
        "replicaCount": 3,
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7, "targetCPUUtilizationPercentage": 60},
        "pluginCa": {"enabled": True, "secretName": "my-cacerts"},
        "serviceMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "prom"}},
        "prometheus": {"scrape": False},
        "resources": CUSTOM_RESOURCES,
        "trustDomain": "example.org",
        "rootNamespace": "mesh-root",
        "logLevel": "debug",
        "nodeProxyServiceAccounts": ["istio-system/ztunnel", "other/ztunnel"],
        "waypoint": {"image": "registry.example/mesh/waypoint:custom"},
        "podLabels": {"team": "net"},
        "podAnnotations": {"example.org/owner": "net"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    },
    "ztunnel": {
        "image": {"repository": "registry.example/mesh", "tag": "v9.9.9", "pullPolicy": "Always"},
        "serviceMonitor": {"enabled": True, "interval": "30s", "labels": {}},
        "prometheus": {"scrape": False},
        "resources": CUSTOM_RESOURCES,
        "trustDomain": "example.org",
        "logLevel": "debug",
        "controlPlane": {
            "address": "https://control.mesh.svc:15012",
            "tlsName": "istiod.istio-system.svc",
            "rootCertConfigMap": "mesh-root",
            "tokenExpirationSeconds": 3600,
        },
        "runDir": "/run/mesh",
        "terminationGracePeriodSeconds": 60,
    },
    "cni": {
        "image": {"repository": "registry.example/mesh", "tag": "v9.9.9", "pullPolicy": "Always"},
        "resources": CUSTOM_RESOURCES,
        "cni": {"binDir": "/home/kubernetes/bin", "confDir": "/etc/cni/conf.d"},
        "ztunnelRunDir": "/run/mesh",
    },
}
VALUE_SETS = ["default", "custom"]


def values_for(chart: str, which: str) -> dict[str, Any]:
    return {} if which == "default" else copy.deepcopy(CUSTOM_VALUES[chart])


def render(chart: str, values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
           release: str | None = None) -> list[dict[str, Any]]:
    """Every object the chart's templates render (CRDs under crds/ are not templates: see `crds`)."""
    with helm.Chart.load(CHARTS / chart) as c:
        manifests = c.render(values or {}, name=release or chart, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objects.append(doc)
    return objects


def crds() -> list[dict[str, Any]]:
    with helm.Chart.load(CHARTS / "base") as c:
        files = c.crds
    assert files, "charts/base has no CRDs under crds/"
    return [doc for f in files for doc in yaml.safe_load_all(f["data"]) if doc is not None]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where}/{c['name']}", c


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def rust_sources() -> Iterator[Path]:
    """The workspace's Rust files (not target/), wherever the crates are split."""
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in ("target", ".git") and not d.startswith(".venv")]
        for f in files:
            if f.endswith(".rs"):
                yield Path(root) / f


def rust_file_with(marker: str) -> Path:
    """The one Rust file containing `marker`: found by content, so moving code between crates does not break it."""
    found = [f for f in rust_sources() if marker in f.read_text(errors="replace")]
    assert len(found) == 1, f"expected one Rust file with {marker!r}, found {found}: update the chart and this test"
    return found[0]


def rust_env_names(source: Path) -> set[str]:
    """Environment variable names a file reads: env_override("X"), std::env::var("X"), clap's env = "X"."""
    pattern = re.compile(r'(?:env_override\(\s*|env::var\(\s*|env\s*=\s*)"([A-Z][A-Z0-9_]*)"')
    return set(pattern.findall(source.read_text()))


# Where the code under test lives, found by content.
CONTROL_CONFIG_RS = 'env_override("CONFIG_SOURCE"'
ZTUNNEL_CONFIG_RS = 'env_override("ZTUNNEL_RUN_DIR"'
CNI_INSTALL_RS = 'env = "MESH_CNI_CONF_DIR"'


# ---------------------------------------------------------------------------------------------------------------
# 1. Rendering and lint


@pytest.mark.parametrize("which", VALUE_SETS)
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_chart_renders_and_lints_clean(chart: str, which: str) -> None:
    values = values_for(chart, which)
    objects = render(chart, values)
    if chart != "base":
        assert objects, f"{chart} rendered nothing"
    for o in objects:
        if o["kind"] in ("Role", "RoleBinding"):
            # The CA Secret's Role lives where the Secret is: the root namespace.
            assert o["metadata"]["namespace"] == values.get("rootNamespace", NAMESPACE), o["metadata"]
        elif o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mesh"
    report = helm.lint(CHARTS / chart, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report
    # The only finding left is informational.
    assert {m["error"] for m in report["messages"]} <= {"icon is recommended"}, report


def test_charts_are_versioned_as_asked() -> None:
    for chart in CHART_NAMES:
        with helm.Chart.load(CHARTS / chart) as c:
            meta = c.metadata
        assert (meta["apiVersion"], meta["name"], meta["version"], meta["appVersion"]) == (
            "v2",
            chart,
            "0.1.0",
            "0.1.0",
        )


def test_control_defaults() -> None:
    objects = render("control")
    assert kinds(objects) == {"ServiceAccount", "ConfigMap", "Deployment", "Service", "ClusterRole", "ClusterRoleBinding",
                              "Role", "RoleBinding"}
    dep = one(objects, "Deployment", "control")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "control"
    assert pod["metadata"]["labels"]["app"] == "control"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15014"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "control"
    assert c["image"] == "ghcr.io/mesh/control:0.1.0"
    assert c["command"] == ["control"]
    env = env_of(c)
    assert env["CONFIG_SOURCE"] == "kubernetes"
    assert env["TRUST_DOMAIN"] == "cluster.local"
    assert env["ROOT_NAMESPACE"] == "istio-system"
    assert env["RUST_LOG"] == "info"
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15014}
    svc = one(objects, "Service")
    assert svc["metadata"]["name"] == "istiod"
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("grpc-xds", 15012), ("http-monitoring", 15014)}
    config = yaml.safe_load(one(objects, "ConfigMap", "control-config")["data"]["config.yaml"])
    assert config == {
        "waypointDeployment": {
            "image": "ghcr.io/mesh/waypoint:0.1.0",
            "controlPlaneAddress": "https://istiod.istio-system.svc:15012",
        },
        "nodeProxyServiceAccounts": ["istio-system/ztunnel"],
    }


def test_control_custom_values() -> None:
    objects = render("control", values_for("control", "custom"))
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"} <= kinds(objects)
    dep = one(objects, "Deployment", "control")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "control"}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]
    assert not any(k.startswith("prometheus.io/") for k in pod["metadata"]["annotations"])
    assert pod["metadata"]["labels"]["team"] == "net"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "registry.example/mesh/control:v9.9.9"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == CUSTOM_RESOURCES
    assert env_of(c)["TRUST_DOMAIN"] == "example.org"
    assert env_of(c)["ROOT_NAMESPACE"] == "mesh-root"
    assert {v["name"]: v.get("secret") for v in pod["spec"]["volumes"]}["cacerts"] == {"secretName": "my-cacerts"}
    config = yaml.safe_load(one(objects, "ConfigMap", "control-config")["data"]["config.yaml"])
    assert config["pluginCa"] == {"certChain": "/etc/cacerts/cert-chain.pem", "key": "/etc/cacerts/ca-key.pem"}
    assert config["nodeProxyServiceAccounts"] == ["istio-system/ztunnel", "other/ztunnel"]
    assert config["waypointDeployment"]["image"] == "registry.example/mesh/waypoint:custom"
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"


DASHBOARDS = {"mesh-overview.json": "mesh-overview.json", "mesh-service.json": "service.json",
              "mesh-workload.json": "workload.json", "mesh-ztunnel.json": "ztunnel.json",
              "mesh-waypoint.json": "waypoint.json", "mesh-control-plane.json": "control-plane.json"}


def test_control_ships_the_grafana_dashboards() -> None:
    """Each dashboard file, unchanged, in one ConfigMap Grafana's sidecar loads; off when disabled. (That every
    query returns data is tested against a real Prometheus in tests/tests/prometheus.rs.)"""
    cm = one(render("control"), "ConfigMap", "mesh-grafana-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(cm["data"]) == set(DASHBOARDS)
    files = sorted(p.name for p in (CHARTS / "control" / "dashboards").glob("*.json"))
    assert files == sorted(DASHBOARDS.values()), "a dashboard file the ConfigMap does not ship"
    for key, file in DASHBOARDS.items():
        shipped = json.loads(cm["data"][key])
        assert shipped == json.loads((CHARTS / "control" / "dashboards" / file).read_text())
        assert shipped["title"].startswith("Mesh / ") and shipped["panels"]
    custom = one(render("control", values_for("control", "custom")), "ConfigMap", "mesh-grafana-dashboards")
    assert custom["metadata"]["labels"]["team"] == "observability"
    off = render("control", {"dashboards": {"enabled": False}})
    assert [o["metadata"]["name"] for o in off if o["kind"] == "ConfigMap"] == ["control-config"]


def test_control_pdb_follows_replicas_without_hpa() -> None:
    objects = render("control", {"replicaCount": 2, "pluginCa": {"enabled": True, "secretName": "cacerts"}})
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "HorizontalPodAutoscaler" not in kinds(objects)


def test_control_runs_several_replicas_on_one_root() -> None:
    # Without a plug-in CA the replicas share the root in the istio-ca-secret Secret (control/src/ca_secret.rs),
    # so several replicas and the HPA render without pluginCa, each able to read and create that Secret.
    assert "pub const SECRET: &str = \"istio-ca-secret\"" in rust_file_with("pub const SECRET: &str").read_text()
    for values in ({"replicaCount": 3}, {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 3,
                                                          "targetCPUUtilizationPercentage": 80}}):
        objects = render("control", values)
        role = one(objects, "Role", "control")
        assert role["metadata"]["namespace"] == "istio-system"
        assert granted(role["rules"]) == ROLE
        binding = one(objects, "RoleBinding", "control")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "control", "namespace": "istio-system"}]


ROLE = {("", "secrets"): {"get", "create"}, ("coordination.k8s.io", "leases"): {"get", "create", "update"}}


def test_role_matches_the_code() -> None:
    """The Role is exactly the namespaced calls: the CA Secret's get_opt (get) and create; the Lease's get_opt,
    create and replace (update); nothing else."""
    secret = rust_file_with("pub const SECRET: &str").read_text()
    assert "Api<Secret>" in secret and ".get_opt(SECRET)" in secret and ".create(" in secret
    assert not re.search(r"\.(list|watch|replace|patch|delete)\(", secret), "a Secret call the Role does not grant"
    lease = rust_file_with("pub const LEASE: &str").read_text()
    assert "Api<Lease>" in lease and ".get_opt(LEASE)" in lease and ".create(" in lease and ".replace(" in lease
    assert not re.search(r"\.(list|watch|patch|delete)\(", lease), "a Lease call the Role does not grant"
    rules = yaml.safe_load((CHARTS / "control" / "files" / "role-rules.yaml").read_text())
    assert granted(rules) == ROLE


def test_control_config_file_has_only_fields_the_control_plane_knows() -> None:
    # control/src/config.rs `Config` (deny_unknown_fields), camelCase.
    known = {
        "configSource", "trustDomain", "rootNamespace", "waypointDeployment", "configDir", "caDir", "pluginCa",
        "trustedRoots", "grpcAddr", "monitoringAddr", "certificateTtl", "pollInterval", "debounce", "nodeTokens",
        "workloadTokens", "nodeProxyServiceAccounts",
    }
    source = rust_file_with(CONTROL_CONFIG_RS).read_text()
    for field in known:
        snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), field)
        assert f"pub {snake}:" in source, f"control's Config has no field {snake}: update the chart and this test"
    for which in VALUE_SETS:
        config = yaml.safe_load(
            one(render("control", values_for("control", which)), "ConfigMap", "control-config")["data"]["config.yaml"])
        assert set(config) <= known
        assert set(config["waypointDeployment"]) <= {"image", "controlPlaneAddress", "trustDomain"}


def test_env_vars_are_only_those_the_code_reads() -> None:
    # RUST_LOG: tracing_subscriber's EnvFilter::try_from_default_env (mesh_core::process::init_tracing).
    assert "try_from_default_env" in rust_file_with("pub fn init_tracing").read_text()
    control_reads = rust_env_names(rust_file_with(CONTROL_CONFIG_RS)) | {"RUST_LOG"}
    ztunnel_reads = rust_env_names(rust_file_with(ZTUNNEL_CONFIG_RS)) | {"RUST_LOG"}
    assert {"CONFIG_SOURCE", "TRUST_DOMAIN", "ROOT_NAMESPACE", "CA_DIR"} <= control_reads
    assert {"NODE_NAME", "TRUST_DOMAIN", "ZTUNNEL_RUN_DIR"} <= ztunnel_reads
    cni_reads = rust_env_names(rust_file_with(CNI_INSTALL_RS)) | {"RUST_LOG"}
    assert {"MESH_CNI_BIN_DIR", "MESH_CNI_CONF_DIR", "ZTUNNEL_RUN_DIR"} <= cni_reads
    for which in VALUE_SETS:
        for chart, reads in (("control", control_reads), ("ztunnel", ztunnel_reads), ("cni", cni_reads)):
            for where, c in containers(render(chart, values_for(chart, which))):
                unknown = set(env_of(c)) - reads
                assert not unknown, f"{where} sets {unknown}, which the code never reads"


def test_ztunnel_daemonset() -> None:
    objects = render("ztunnel")
    assert kinds(objects) == {"ServiceAccount", "ConfigMap", "DaemonSet"}
    ds = one(objects, "DaemonSet", "ztunnel")
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["serviceAccountName"] == "ztunnel"
    assert spec.get("hostNetwork") is not True
    (c,) = spec["containers"]
    assert c["name"] == "ztunnel" and c["image"] == "ghcr.io/mesh/ztunnel:0.1.0"
    env = env_of(c)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["ZTUNNEL_RUN_DIR"] == "/var/run/ztunnel"
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {p["containerPort"] for p in c["ports"]} >= {15020}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["run-dir"]["hostPath"]["path"] == "/var/run/ztunnel"
    (token,) = volumes["istio-token"]["projected"]["sources"]
    # The audience control/src/token_review.rs asks the TokenReview for.
    rust_file_with('pub const AUDIENCE: &str = "istio-ca";')
    assert token["serviceAccountToken"]["audience"] == "istio-ca"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    config = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])
    cp = config["controlPlane"]
    assert cp["address"] == "https://istiod.istio-system.svc:15012"
    assert cp["tokenFile"] == f"{mounts['istio-token']}/{token['serviceAccountToken']['path']}"
    assert cp["rootCert"] == f"{mounts['istiod-ca-cert']}/root-cert.pem"
    assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    assert c["args"] == ["--config", f"{mounts['config']}/config.yaml"]
    # core/src/control.rs `ControlPlane` (deny_unknown_fields).
    assert set(cp) <= {"address", "rootCert", "tlsName", "tokenFile"}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "15020")


def test_ztunnel_custom_values() -> None:
    objects = render("ztunnel", values_for("ztunnel", "custom"))
    svc = one(objects, "Service", "ztunnel-metrics")
    assert svc["spec"]["clusterIP"] == "None"
    sm = one(objects, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    ds = one(objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/mesh/ztunnel:v9.9.9"
    assert env_of(c)["ZTUNNEL_RUN_DIR"] == "/run/mesh"
    assert {v["name"]: v for v in spec["volumes"]}["run-dir"]["hostPath"]["path"] == "/run/mesh"
    config = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])
    assert config["controlPlane"]["address"] == "https://control.mesh.svc:15012"
    assert not any(k.startswith("prometheus.io/") for k in ds["spec"]["template"]["metadata"]["annotations"])


def test_cni_daemonset() -> None:
    for which in VALUE_SETS:
        values = values_for("cni", which)
        objects = render("cni", values)
        ds = one(objects, "DaemonSet", "mesh-cni-node")
        spec = ds["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["tolerations"] == [{"operator": "Exists"}]
        (c,) = spec["containers"]
        assert c["command"] == ["mesh-cni-agent"]
        cni = values.get("cni", {"binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d"})
        host = {v["hostPath"]["path"]: v["name"] for v in spec["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        for d in (cni["binDir"], cni["confDir"]):
            assert d in host, f"{d} not mounted from the host"
            assert mounts[host[d]] == f"/host{d}"
        env = env_of(c)
        assert (env["MESH_CNI_BIN_DIR"], env["MESH_CNI_CONF_DIR"]) == (f"/host{cni['binDir']}", f"/host{cni['confDir']}")
        # The run directory the runtime's mesh-cni plugin writes into is the one ztunnel reads.
        assert env["ZTUNNEL_RUN_DIR"] == values.get("ztunnelRunDir", "/var/run/ztunnel")
        # Kubernetes mode, with the host's /proc and namespace paths where the agent looks for pods.
        assert (env["MESH_CNI_MODE"], env["MESH_CNI_INSTALL"]) == ("kubernetes", "true")
        assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert mounts[host["/proc"]] == env["MESH_CNI_PROC_DIR"] == "/host/proc"
        netns = values.get("netnsDir", "/var/run/netns")
        assert mounts[host[netns]] == netns
        assert spec["automountServiceAccountToken"] is True
        caps = c["securityContext"]["capabilities"]
        assert caps["drop"] == ["ALL"] and set(caps["add"]) == {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}
        assert c["securityContext"]["privileged"] is False


def test_cni_rbac_matches_the_agent_code() -> None:
    """The agent reads Pods and Namespaces (watch, list, get) and writes nothing: exactly what its ClusterRole grants."""
    kube_rs = rust_file_with("pub struct View {").read_text()
    kinds = set(re.findall(r"Api::<(\w+)>", kube_rs))
    assert kinds == {"Pod", "Namespace"}, kinds
    assert "watcher::watcher(" in kube_rs and re.search(r"\.get(_opt)?\(", kube_rs)
    assert not re.search(r"\.(create|patch|replace|delete)\(", kube_rs), "the agent writes to the API server"
    objects = render("cni")
    role = one(objects, "ClusterRole", "mesh-cni")
    assert granted(role["rules"]) == {("", "pods"): {"get", "list", "watch"}, ("", "namespaces"): {"get", "list", "watch"}}
    binding = one(objects, "ClusterRoleBinding", "mesh-cni")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mesh-cni", "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == "mesh-cni"


@pytest.mark.parametrize("which", VALUE_SETS)
def test_the_agent_accepts_what_the_cni_chart_sets(which: str) -> None:
    values = values_for("cni", which)
    (c,) = [c for _, c in containers(render("cni", values))]
    env = {"PATH": os.environ.get("PATH", "")}
    for name, value in env_of(c).items():
        env[name] = value if isinstance(value, str) else DOWNWARD[value["fieldRef"]["fieldPath"]]
    done = subprocess.run([str(binary(c["command"][0])), "--check-config", *c.get("args", [])], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert (effective["mode"], effective["install"], effective["nodeName"]) == ("kubernetes", True, "node-1")
    assert effective["runDir"] == values.get("ztunnelRunDir", "/var/run/ztunnel")
    assert effective["procDir"] == "/host/proc"


# ---------------------------------------------------------------------------------------------------------------
# 2. Kubernetes' schemas


def test_supported_versions_are_shipped() -> None:
    shipped = {kubernetes_validate.utils.major_minor(v) for v in all_versions()}
    assert OLDEST_K8S in shipped and NEWEST_K8S in shipped, shipped


def check_service_monitor(sm: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """By hand: no OpenAPI schema for the Prometheus Operator's CRD ships with kubernetes-validate."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = sm["spec"]["selector"]["matchLabels"]
    services = [o for o in objects if o["kind"] == "Service"
                and selector.items() <= o["metadata"].get("labels", {}).items()]
    assert services, f"ServiceMonitor {sm['metadata']['name']} selects no rendered Service"
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", ep["interval"])
        assert ep["path"] == "/metrics"
        for svc in services:
            assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("which", VALUE_SETS)
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_objects_pass_kubernetes_validate_strict(chart: str, which: str, version: str) -> None:
    objects = render(chart, values_for(chart, which))
    if chart == "base":
        objects = crds()  # apiextensions.k8s.io/v1 CustomResourceDefinition has a schema: validated like the rest
    checked = 0
    for o in objects:
        if o["kind"] == "ServiceMonitor":
            # Skipped by kubernetes-validate (no schema for monitoring.coreos.com); checked by hand instead.
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(o, version, strict=True)
            check_service_monitor(o, objects)
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{chart} {o['kind']}/{o['metadata']['name']} invalid for {version}: {path}: {e.message}")
        checked += 1
    assert checked > 0


def test_kubernetes_validate_catches_a_bad_object() -> None:
    """The strict check above can fail: an unknown field in a container is rejected."""
    dep = one(render("control"), "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["resouces"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, NEWEST_K8S, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# 3. values.schema.json rejects typos


TYPOS = [
    ("control", {"resouces": {}}, "resouces"),
    ("control", {"image": {"tagg": "v1"}}, "tagg"),
    ("control", {"resources": {"limits": {"memroy": "1Gi"}}}, "memroy"),
    ("control", {"serviceMonitor": {"enabeld": True}}, "enabeld"),
    ("control", {"autoscaling": {"enabled": "yes"}}, "enabled"),
    ("ztunnel", {"resouces": {}}, "resouces"),
    ("ztunnel", {"image": {"tagg": "v1"}}, "tagg"),
    ("ztunnel", {"controlPlane": {"adress": "https://x:15012"}}, "adress"),
    ("ztunnel", {"capabilities": ["NET_ADMIN", "SYS_ADMIN", "ALL"]}, "capabilities"),
    ("ztunnel", {"tolerations": [{"operater": "Exists"}]}, "operater"),
    ("cni", {"cni": {"binDri": "/opt/cni/bin"}}, "binDri"),
    ("cni", {"image": {"tagg": "v1"}}, "tagg"),
    ("base", {"crds": {"enabled": False}}, "crds"),
]


@pytest.mark.parametrize(("chart", "values", "key"), TYPOS, ids=[f"{c}-{k}" for c, _, k in TYPOS])
def test_typo_in_values_fails_the_render(chart: str, values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(key)):
        render(chart, values)


def test_every_schema_object_level_rejects_unknown_keys() -> None:
    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            if node.get("type") == "object":
                extra = node.get("additionalProperties")
                # Maps whose keys the user chooses (labels, annotations, nodeSelector) take strings only.
                if extra is not False and extra != {"type": "string"}:
                    yield path
                if extra == {"type": "string"} and node.get("properties"):
                    yield path
            for k, v in node.items():
                yield from walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}/{i}")

    for chart in CHART_NAMES:
        with helm.Chart.load(CHARTS / chart) as c:
            schema = c.schema
        assert schema is not None, f"{chart} has no values.schema.json"
        assert schema["additionalProperties"] is False
        open_levels = list(walk(schema, ""))
        assert not open_levels, f"{chart}: object levels accepting unknown keys: {open_levels}"


# ---------------------------------------------------------------------------------------------------------------
# 4. The CRDs are what `meshctl crds` prints


def meshctl() -> Path:
    path = Path(os.environ.get("MESHCTL", REPO / "target" / "debug" / "meshctl"))
    if not path.is_file():
        pytest.fail(f"{path} does not exist: run `cargo build --bins` first (or set MESHCTL to a meshctl binary)")
    return path


def set_flags(chart: str, values: dict[str, Any], prefix: str = "") -> list[str]:
    """`values` as meshctl's flags, as one would pass them to `helm install`: --set CHART.KEY=VALUE (lists as
    {a,b} or KEY[i].SUB=VALUE), --set-string for strings (so "3" stays a string)."""
    def text(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    out: list[str] = []
    for k, v in values.items():
        key = prefix + k.replace(".", "\\.")
        if isinstance(v, dict):
            out += set_flags(chart, v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out += set_flags(chart, x, f"{key}[{i}].")
        elif isinstance(v, list):
            out += ["--set", f"{chart}.{key}={{{','.join(text(x) for x in v)}}}"]
        elif isinstance(v, str):
            out += ["--set-string", f"{chart}.{key}={v}"]
        else:
            out += ["--set", f"{chart}.{key}={text(v)}"]
    return out


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for o in objects:
        labels = o["metadata"].get("labels", {})
        # The one intended difference: who manages the objects.
        if labels.get("app.kubernetes.io/managed-by") in ("Helm", "meshctl"):
            labels["app.kubernetes.io/managed-by"] = "<installer>"
        for tmpl in [o.get("spec", {}).get("template", {})]:
            t_labels = tmpl.get("metadata", {}).get("labels", {})
            if t_labels.get("app.kubernetes.io/managed-by") in ("Helm", "meshctl"):
                t_labels["app.kubernetes.io/managed-by"] = "<installer>"
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = o
    return out


@pytest.mark.parametrize("which", VALUE_SETS)
def test_meshctl_install_renders_what_helm_renders(which: str) -> None:
    """One source of truth: `meshctl install` renders the charts themselves; with the same values it prints the
    very objects the real Helm engine renders for `helm install mesh-<chart> charts/<chart>`, and the namespace."""
    args = [f for chart in ("control", "cni", "ztunnel") for f in set_flags(chart, values_for(chart, which))]
    done = subprocess.run([meshctl(), "install", *args], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    ours = keyed([d for d in yaml.safe_load_all(done.stdout) if d])
    helm_objects = crds() + [o for chart in ("control", "cni", "ztunnel")
                             for o in render(chart, values_for(chart, which), release=f"mesh-{chart}")]
    theirs = keyed(helm_objects)
    assert ours.pop(("Namespace", "", NAMESPACE)) == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key
    # Applied in an order kubectl can follow: the namespace, then the CRDs, then everything else.
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert kinds[0] == "Namespace" and set(kinds[1:10]) == {"CustomResourceDefinition"}


def test_meshctl_install_rejects_a_typo_and_uninstall_keeps_the_crds() -> None:
    done = subprocess.run([meshctl(), "install", "--set", "cni.cni.binDri=/x"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert "chart cni" in done.stderr and "binDri" in done.stderr, done.stderr
    install = [d for d in yaml.safe_load_all(subprocess.run([meshctl(), "install"], capture_output=True, text=True,
                                                             check=True).stdout) if d]
    gone = [d for d in yaml.safe_load_all(subprocess.run([meshctl(), "uninstall"], capture_output=True, text=True,
                                                          check=True).stdout) if d]
    kept = [o for o in install if o["kind"] not in ("CustomResourceDefinition", "Namespace")]
    assert gone == list(reversed(kept))
    purged = [d for d in yaml.safe_load_all(subprocess.run([meshctl(), "uninstall", "--purge"], capture_output=True,
                                                            text=True, check=True).stdout) if d]
    assert purged == list(reversed(install))


def test_base_crds_equal_meshctl_crds() -> None:
    out = subprocess.run([meshctl(), "crds"], capture_output=True, check=True, cwd=REPO).stdout
    vendored = (CHARTS / "base" / "crds" / "crds.yaml").read_bytes()
    assert vendored == out, "charts/base/crds/crds.yaml is stale: target/debug/meshctl crds > charts/base/crds/crds.yaml"


def rbac_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((CHARTS / "control" / "files" / "rbac-rules.yaml").read_text())


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def test_clusterrole_is_the_machine_readable_rules_whatever_the_values() -> None:
    for which in VALUE_SETS:
        role = one(render("control", values_for("control", which)), "ClusterRole")
        assert role["rules"] == rbac_rules()
    binding = one(render("control"), "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "control", "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_rbac_matches_the_code() -> None:
    """Every watched kind (WATCHED in the control plane's kube.rs) readable, TokenReview creatable, the waypoint
    objects applied and deleted, and nothing else."""
    kube_rs = rust_file_with("pub const WATCHED: &[Watched]").read_text()
    watched = set(re.findall(r'Watched\(\s*"([^"]*)",\s*"[^"]*",\s*"[^"]*",\s*"([^"]+)",?\s*\)', kube_rs))
    assert len(watched) >= 13, watched
    deploy = rust_file_with("pub struct WaypointDeployment").read_text()
    applied = set(re.findall(r'gvk\("([^"]*)", "[^"]*", "[^"]*", "([^"]+)"\)', deploy))
    assert applied == {("", "serviceaccounts"), ("apps", "deployments"), ("", "services")}
    assert "Patch::Apply" in deploy and ".delete(" in deploy
    expected: dict[tuple[str, str], set[str]] = {k: {"get", "list", "watch"} for k in watched}
    expected[("authentication.k8s.io", "tokenreviews")] = {"create"}
    for k in applied:
        expected.setdefault(k, set()).update({"create", "patch", "delete"})
    # The root certificate's ConfigMap in every namespace: applied, never read or deleted.
    root_cert = rust_file_with("pub struct RootCertPublisher").read_text()
    assert '"configmaps"' in root_cert and "Patch::Apply" in root_cert
    assert not re.search(r"\.(get|get_opt|list|watch|delete|replace)\(", root_cert)
    expected[("", "configmaps")] = {"create", "patch"}
    assert granted(rbac_rules()) == expected


def test_every_crd_is_watched_and_readable() -> None:
    reads = {k for k, verbs in granted(rbac_rules()).items() if {"list", "watch"} <= verbs}
    served = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in crds()}
    assert len(served) == 9, served
    assert served <= reads, f"CRDs the control plane cannot watch: {served - reads}"
    mesh_groups = {g for g, _ in served}
    assert {k for k in reads if k[0] in mesh_groups} == served, "RBAC grants a mesh kind that has no CRD"


# ---------------------------------------------------------------------------------------------------------------
# 5. The seed manifests validate against the CRDs' schemas


def seed_dir() -> Path:
    d = Path(os.environ.get("SEED_DIR", REPO.parent / "shared" / "seed" / "manifests"))
    if not d.is_dir():
        pytest.fail(f"seed manifests not found at {d}: set SEED_DIR")
    return d


def k8s_to_jsonschema(node: Any) -> Any:
    """A structural (Kubernetes OpenAPI v3) schema as plain JSON Schema, as the API server applies it with
    strict field validation: `x-kubernetes-int-or-string` allows an integer or a string, `nullable` allows null,
    `x-kubernetes-preserve-unknown-fields` keeps unknown fields, and any other object with `properties` rejects
    fields it does not declare."""
    if isinstance(node, list):
        return [k8s_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: k8s_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in node:
        out["properties"] = {k: k8s_to_jsonschema(v) for k, v in node["properties"].items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def schema_for(obj: dict[str, Any]) -> dict[str, Any]:
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in crds():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"]:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    assert v["served"], f"{obj['apiVersion']} {obj['kind']} is not served"
                    schema = k8s_to_jsonschema(v["schema"]["openAPIV3Schema"])
                    # apiVersion, kind and metadata (ObjectMeta) are the API server's to check, not the CRD schema's.
                    schema["properties"].update(
                        apiVersion={"const": obj["apiVersion"]}, kind={"const": obj["kind"]}, metadata={"type": "object"}
                    )
                    return schema
    raise AssertionError(f"no CRD serves {obj['apiVersion']} {obj['kind']}")


def seed_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = []
    for f in sorted(seed_dir().glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                objects.append((f.name, doc))
    assert objects, f"no seed manifests in {seed_dir()}"
    return objects


def test_seed_manifests_validate_against_the_crd_schemas() -> None:
    for name, obj in seed_objects():
        try:
            jsonschema.validate(obj, schema_for(obj), cls=jsonschema.Draft7Validator)
        except jsonschema.ValidationError as e:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {e.json_path}: {e.message}")


def test_crd_schema_check_can_fail() -> None:
    """An unknown spec field and a wrongly typed one are both rejected, so the test above means something."""
    for name, obj in seed_objects():
        schema = schema_for(obj)
        unknown = copy.deepcopy(obj)
        unknown["spec"]["definitelyNotAField"] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(unknown, schema, cls=jsonschema.Draft7Validator)
        wrong_type = copy.deepcopy(obj)
        wrong_type["spec"] = "not an object"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong_type, schema, cls=jsonschema.Draft7Validator)


def test_int_or_string_accepts_both_and_nothing_else() -> None:
    schema = k8s_to_jsonschema({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}})
    jsonschema.validate({"port": 8080}, schema)
    jsonschema.validate({"port": "http"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"port": [1]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"prot": 1}, schema)


# ---------------------------------------------------------------------------------------------------------------
# 6. Resources, privileges, capabilities


@pytest.mark.parametrize("which", VALUE_SETS)
@pytest.mark.parametrize("chart", ["control", "ztunnel", "cni"])
def test_every_container_has_requests_and_limits(chart: str, which: str) -> None:
    found = list(containers(render(chart, values_for(chart, which))))
    assert found
    for where, c in found:
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: resources.{kind} lacks cpu or memory"
        if which == "custom":
            assert res == CUSTOM_RESOURCES


@pytest.mark.parametrize("which", VALUE_SETS)
@pytest.mark.parametrize("chart", ["control", "ztunnel", "cni"])
def test_no_container_is_privileged_and_capabilities_are_minimal(chart: str, which: str) -> None:
    for where, c in containers(render(chart, values_for(chart, which))):
        sc = c["securityContext"]
        assert sc.get("privileged") is False, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        added = set(sc["capabilities"].get("add", []))
        expected = {"ztunnel": ZTUNNEL_CAPABILITIES, "cni": CNI_AGENT_CAPABILITIES}.get(chart, set())
        assert added == expected, f"{where} adds {added}"


def test_ztunnel_capabilities_are_the_documented_set() -> None:
    values_text = (CHARTS / "ztunnel" / "values.yaml").read_text()
    with helm.Chart.load(CHARTS / "ztunnel") as c:
        assert set(c.values["capabilities"]) == ZTUNNEL_CAPABILITIES
    for cap in ZTUNNEL_CAPABILITIES | {"NET_RAW", "SYS_PTRACE"}:
        # Each granted capability says why; each usual one left out says why not.
        assert re.search(rf"^# - {cap}: \S", values_text, re.M), f"values.yaml does not explain {cap}"


# ---------------------------------------------------------------------------------------------------------------
# 5. What the charts set, fed to the real binaries


def binary(name: str) -> Path:
    path = REPO / "target" / "debug" / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build --bins` first")
    return path


# Values the kubelet fills from the downward API, as a node would.
DOWNWARD = {"spec.nodeName": "node-1", "metadata.name": "pod-1", "metadata.namespace": "istio-system"}


def check_config(chart: str, values: dict[str, Any], tmp_path: Path, edit: Any = None) -> subprocess.CompletedProcess:
    """Runs the chart's container command with its args and env, and the config file from its ConfigMap (at a
    temporary path), adding --check-config: the binary loads and validates exactly what the chart gives it."""
    objects = render(chart, values)
    (where, c), = [(w, c) for w, c in containers(objects) if c["name"] == chart]
    config_map = one(objects, "ConfigMap", f"{chart}-config")
    text = config_map["data"]["config.yaml"]
    if edit:
        text = edit(text)
    config = tmp_path / f"{chart}.yaml"
    config.write_text(text)
    args = list(c.get("args", []))
    assert args[0] == "--config", args
    args[1] = str(config)
    env = {"PATH": os.environ.get("PATH", "")}
    for name, value in env_of(c).items():
        env[name] = value if isinstance(value, str) else DOWNWARD[value["fieldRef"]["fieldPath"]]
    return subprocess.run([str(binary(c["command"][0])), "--check-config", *args], env=env, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("which", VALUE_SETS)
@pytest.mark.parametrize("chart", ["control", "ztunnel"])
def test_the_binaries_accept_what_the_charts_set(chart: str, which: str, tmp_path: Path) -> None:
    values = values_for(chart, which)
    done = check_config(chart, values, tmp_path)
    assert done.returncode == 0, f"{chart} ({which}) rejects its chart's settings:\n{done.stderr}"
    effective = json.loads(done.stdout)
    # What the values say is what the process would run with.
    assert effective["trustDomain"] == values.get("trustDomain", "cluster.local")
    if chart == "control":
        assert effective["configSource"] == "kubernetes"
        assert effective["rootNamespace"] == values.get("rootNamespace", "istio-system")
    else:
        assert effective["nodeName"] == "node-1"
        assert effective["runDir"] == values.get("runDir", "/var/run/ztunnel")


@pytest.mark.parametrize("chart", ["control", "ztunnel"])
def test_a_key_the_code_does_not_read_fails_the_check(chart: str, tmp_path: Path) -> None:
    done = check_config(chart, values_for(chart, "default"), tmp_path, edit=lambda t: t + "notAKnownSetting: 1\n")
    assert done.returncode != 0
    assert "unknown field `notAKnownSetting`" in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------------------------
# 6. The README's "Install on Kubernetes" section, command by command


def install_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install on Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def set_values(args: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for i, a in enumerate(args):
        if a == "--set":
            key, value = args[i + 1].split("=", 1)
            node = values
            *path, last = key.split(".")
            for k in path:
                node = node.setdefault(k, {})
            node[last] = {"true": True, "false": False}.get(value, value)
    return values


def test_the_readme_meshctl_install_commands_work() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install on Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n")[2].split("```", 1)[0]
    commands = [line.split("|")[0].split() for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["meshctl", "install"], ["meshctl", "uninstall"]], commands
    rendered = []
    for words in commands:
        done = subprocess.run([str(binary("meshctl")), *words[1:]], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        rendered.append([d for d in yaml.safe_load_all(done.stdout) if d])
    installed, deleted = rendered
    images = [c["image"] for o in installed if o["kind"] in ("Deployment", "DaemonSet")
              for c in o["spec"]["template"]["spec"]["containers"]]
    assert len(images) == 3 and all(i.startswith("registry.example/mesh/") for i in images), images
    assert {o["kind"] for o in deleted} & {"CustomResourceDefinition", "Namespace"} == set()


def test_every_install_command_in_the_readme_works(tmp_path: Path) -> None:
    commands = install_commands()
    assert len(commands) >= 9, commands
    seen = set()
    for cmd in commands:
        words = cmd.split()
        if words[0] == "helm":
            # helm install NAME CHART -n NAMESPACE [...]: render that chart with those values in that namespace.
            assert words[1] == "install", cmd
            chart = Path(words[3])
            assert (REPO / chart / "Chart.yaml").exists(), cmd
            namespace = words[words.index("-n") + 1]
            objects = render(chart.name, set_values(words), namespace=namespace)
            for o in objects:
                if o["kind"] in ("Deployment", "DaemonSet"):
                    for c in o["spec"]["template"]["spec"]["containers"]:
                        assert c["image"].startswith("registry.example/mesh/"), (cmd, c["image"])
            seen.add("helm " + chart.name)
        elif words[0] == "meshctl":
            left = cmd.split("|")[0].split()
            done = subprocess.run([str(binary("meshctl")), *left[1:]], capture_output=True, text=True, timeout=30)
            if left[1] == "check":
                # Exit 1 is a node that is not ready (this machine has no CNI): the lines must say what to do.
                assert done.returncode in (0, 1) and "checks" in done.stdout, done.stdout + done.stderr
            else:
                assert done.returncode == 0, done.stderr
                # What is piped to `kubectl apply` is valid for the control plane too.
                (tmp_path / "piped.yaml").write_text(done.stdout)
                analyzed = subprocess.run([str(binary("meshctl")), "analyze", str(tmp_path)], capture_output=True,
                                          text=True, timeout=30)
                assert analyzed.returncode == 0, analyzed.stdout + analyzed.stderr
            seen.add("meshctl " + left[1])
        elif words[:3] == ["kubectl", "label", "namespace"]:
            key, value = words[4].split("=")
            model = rust_file_with('pub const LABEL_DATAPLANE_MODE').read_text()
            assert f'pub const LABEL_DATAPLANE_MODE: &str = "{key}";' in model and value == "ambient", cmd
            seen.add("kubectl label")
        elif words[:3] == ["kubectl", "apply", "-f"]:
            target = REPO / words[3]
            assert target.is_dir(), cmd
            analyzed = subprocess.run([str(binary("meshctl")), "analyze", str(target)], capture_output=True,
                                      text=True, timeout=30)
            assert analyzed.returncode == 0, analyzed.stdout
            seen.add("kubectl apply")
        elif words[0] == "cargo" or words[0] == "skopeo":
            # The image build is run by tests/tests/image.rs (scripts/build-image.sh, then runc); skopeo needs a
            # registry: the layout it copies from is what that test checks.
            assert (REPO / "tests" / "tests" / "image.rs").read_text().count("build-image.sh") >= 1
            seen.add(words[0])
        else:
            pytest.fail(f"a README install command no test runs: {cmd}")
    assert {"helm base", "helm control", "helm cni", "helm ztunnel", "meshctl check", "meshctl waypoint",
            "kubectl label", "kubectl apply"} <= seen, seen
