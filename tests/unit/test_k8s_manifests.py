"""deploy/k8s: each overlay renders with the pinned kustomize, every object is valid against the Kubernetes schemas
(and the KEDA and Prometheus operator CRDs), and the manifests keep the rules of running thumbs on a cluster.

No cluster is needed. kustomize and the CRDs come from devtools/test-tools/kustomize.sh (into .thumbs/tools);
the Kubernetes schemas ship inside the kubernetes-validate package.
"""
from __future__ import annotations

import base64
import copy
import ipaddress
import re
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.model import FETCHED, REQUESTED
from services.common.settings import PREFIX, Settings
from services.fetcher import guard
from thumbs_devtools.versions import load as load_versions

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
INSTALL = ROOT / "devtools" / "test-tools" / "kustomize.sh"
TOOLS = ROOT / ".thumbs" / "tools"
KUSTOMIZE = TOOLS / "bin" / "kustomize"
CRDS = TOOLS / "crds"
OVERLAYS = ("local", "production")
KUBERNETES_VERSION = "1.37"  # the newest release whose schemas kubernetes-validate ships
MISSING_TOOLS = f"run `bash {INSTALL.relative_to(ROOT)}` first (the test prerequisite of `make test`)"

IMAGE_UID = 10001  # deploy/Dockerfile
# Objects the production overlay refers to and an operator creates out of band (overlays/production).
OUT_OF_BAND = {"local": set(), "production": {("Secret", "thumbs-secrets"), ("ConfigMap", "thumbs-ca")}}
# Every long-running process but the API: each has its own Deployment, command, metrics port and monitor.
STAGES = ("fetcher", "resizer", "projector", "notifier", "stats")
# What each autoscaled stage consumes: the ScaledObject must scale on one of these topics.
SCALED_ON = {"fetcher": {REQUESTED}, "resizer": {FETCHED}}
CONTAINER_SECURITY = {
    "runAsNonRoot": True, "runAsUser": IMAGE_UID, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}
# Nothing the fetcher may reach on all ports: the private, loopback and link-local ranges, everything the
# SSRF guard refuses, and in IPv6 all but global unicast 2000::/3 (which the guard alone admits) and 6to4, whose
# embedded IPv4 address the guard judges but a network policy cannot.
FORBIDDEN = list(dict.fromkeys([
    *map(ipaddress.ip_network, (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10",
        "::1/128", "fc00::/7", "fe80::/10", "::/3", "4000::/2", "8000::/1", "2002::/16",
    )),
    *guard.FORBIDDEN_V4, *guard.FORBIDDEN_V6,
]))
PUBLIC = [ipaddress.ip_network("8.8.8.8/32"), ipaddress.ip_network("2001:4860:4860::8888/128")]

Obj = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- rendering and schemas -------------------------------------------------------------------------------------

def pinned(name: str) -> str:
    """A version the install script pins (`NAME=value` at the start of a line)."""
    found = re.search(rf"^{name}=(\S+)", INSTALL.read_text(), re.MULTILINE)
    assert found, f"{INSTALL} pins no {name}"
    return found.group(1)


def kustomize_problem() -> str | None:
    if not KUSTOMIZE.is_file():
        return f"kustomize is missing at {KUSTOMIZE}: {MISSING_TOOLS}"
    version = subprocess.run([KUSTOMIZE, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if version != pinned("KUSTOMIZE_VERSION"):
        return f"{KUSTOMIZE} is {version or 'broken'}, not the pinned {pinned('KUSTOMIZE_VERSION')}: {MISSING_TOOLS}"
    return None


def test_the_pinned_kustomize_is_installed() -> None:
    """Fails, never skips, without the tool: the other tests of this module then error in their set-up."""
    problem = kustomize_problem()
    assert problem is None, problem


@pytest.fixture(scope="module")
def kustomize() -> Path:
    if (problem := kustomize_problem()) is not None:
        pytest.fail(problem, pytrace=False)
    return KUSTOMIZE


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def deployments(self) -> dict[str, Obj]:
        """thumbs Deployments by component (api, fetcher, ...)."""
        return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in self.of_kind("Deployment")
                if d["metadata"]["labels"].get("app.kubernetes.io/name") == "thumbs"}

    def thumbs_workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "Job")
                and o["metadata"]["labels"].get("app.kubernetes.io/name") == "thumbs"]

    def env(self) -> dict[str, str]:
        """The THUMBS_* variables the api container gets from its ConfigMap and Secret (the same for every pod)."""
        values: dict[str, str] = {}
        for source in container(self.deployments()["api"])["envFrom"]:
            if "configMapRef" in source:
                values |= self.named("ConfigMap", source["configMapRef"]["name"])["data"]  # type: ignore[index]
            elif (secret := self.named("Secret", source["secretRef"]["name"])) is not None:
                values |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        return values

    def settings(self) -> Settings:
        return Settings.from_env(self.env())


@pytest.fixture(scope="module")
def renders(kustomize: Path) -> dict[str, Rendered]:
    """Every overlay, rendered once for the module."""
    renders = {}
    for overlay in OVERLAYS:
        done = subprocess.run([kustomize, "build", K8S / "overlays" / overlay], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"kustomize build overlays/{overlay} failed:\n{done.stderr}", pytrace=False)
        renders[overlay] = Rendered(overlay, [o for o in yaml.safe_load_all(done.stdout) if o])
    return renders


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


def strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused, as the API server's strict field validation does
    (kubectl's default): every object that lists its properties and does not keep unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) if k != "properties" else {n: strict(s) for n, s in v.items()} for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) → its published openAPIV3Schema, from the CRDs the install script copied."""
    stamp = CRDS / "VERSIONS"
    wanted_versions = f"keda {pinned('KEDA_VERSION')}, prometheus-operator {pinned('PROMETHEUS_OPERATOR_VERSION')}"
    if not stamp.is_file() or stamp.read_text().strip() != wanted_versions:
        pytest.fail(f"the CRDs in {CRDS} are not those of {wanted_versions}: {MISSING_TOOLS}", pytrace=False)
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    wanted = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
              ("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
    if not wanted <= schemas.keys():
        pytest.fail(f"CRDs missing from {CRDS}: {sorted(wanted - schemas.keys())}: {MISSING_TOOLS}", pytrace=False)
    return schemas


def schema_errors(obj: Obj, crd_schemas: dict[tuple[str, str], Any]) -> list[str]:
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if (obj["apiVersion"], obj["kind"]) in crd_schemas:
        validator = jsonschema.Draft4Validator(crd_schemas[obj["apiVersion"], obj["kind"]])
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: no schema: {e.message}"]
    return []


# --- pod helpers -----------------------------------------------------------------------------------------------

def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(workload: Obj) -> Obj:
    """The process container: the first one (the shared patches rely on that too)."""
    return pod_spec(workload)["containers"][0]  # type: ignore[no-any-return]


def all_containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(rendered: Rendered) -> list[Obj]:
    return [o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def port_named(workload: Obj, name: str) -> int:
    ports = {p.get("name"): p["containerPort"] for p in container(workload).get("ports", [])}
    assert name in ports, f"{workload['metadata']['name']} has no port named {name!r}"
    return ports[name]  # type: ignore[no-any-return]


def metrics_port(settings: Settings, component: str) -> int:
    """Where a component serves /metrics: the API on its own port, a stage on THUMBS_<STAGE>_METRICS_PORT."""
    return settings.api_port if component == "api" else int(getattr(settings, f"{component}_metrics_port"))


# --- every object ----------------------------------------------------------------------------------------------

def test_every_object_validates(rendered: Rendered, crd_schemas: dict[tuple[str, str], Any]) -> None:
    errors = [error for obj in rendered.objects for error in schema_errors(obj, crd_schemas)]
    assert not errors, f"overlays/{rendered.overlay}:\n" + "\n".join(errors)


def test_the_schema_check_catches_a_misspelt_field(crd_schemas: dict[tuple[str, str], Any]) -> None:
    """The validation is strict for both kinds of schema: a typo is an error, not an ignored field."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "comand": []}]}},
    }}
    assert any("comand" in e for e in schema_errors(deployment, crd_schemas))
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "pathh": "/metrics"}]}}
    assert any("pathh" in e for e in schema_errors(monitor, crd_schemas))
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "kafka", "metadata": {"lagThreshold": 5}}]}}
    assert any("lagThreshold" in e or "5" in e for e in schema_errors(scaled, crd_schemas))


def test_one_namespace_for_everything(rendered: Rendered) -> None:
    namespaces = rendered.of_kind("Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == ["thumbs"]
    # Pod Security Admission holds every pod of the namespace to the restricted profile.
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "thumbs", f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_reference_names_an_object_of_the_overlay(rendered: Rendered) -> None:
    """Generated names carry a hash: a reference kustomize did not rewrite would name nothing."""
    present = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects} | OUT_OF_BAND[rendered.overlay]
    refs: list[tuple[str, str]] = []
    for workload in workloads(rendered):
        spec = pod_spec(workload)
        refs += [("ServiceAccount", spec["serviceAccountName"])] if "serviceAccountName" in spec else []
        for volume in spec.get("volumes", []):
            refs += [("ConfigMap", volume["configMap"]["name"])] if "configMap" in volume else []
            refs += [("Secret", volume["secret"]["secretName"])] if "secret" in volume else []
        for c in all_containers(workload):
            for source in c.get("envFrom", []):
                refs += [("ConfigMap", source["configMapRef"]["name"])] if "configMapRef" in source else []
                refs += [("Secret", source["secretRef"]["name"])] if "secretRef" in source else []
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                refs += [("Secret", ref["secretKeyRef"]["name"])] if "secretKeyRef" in ref else []
                refs += [("ConfigMap", ref["configMapKeyRef"]["name"])] if "configMapKeyRef" in ref else []
    for auth in rendered.of_kind("TriggerAuthentication"):
        refs += [("Secret", r["name"]) for r in auth["spec"].get("secretTargetRef", [])]
        refs += [("ConfigMap", r["name"]) for r in auth["spec"].get("configMapTargetRef", [])]
    for target in [*rendered.of_kind("ScaledObject"), *rendered.of_kind("HorizontalPodAutoscaler")]:
        refs.append(("Deployment", target["spec"]["scaleTargetRef"]["name"]))
        for trigger in target["spec"].get("triggers", []):
            refs += [("TriggerAuthentication", trigger["authenticationRef"]["name"])] if "authenticationRef" in trigger else []
    missing = sorted(set(refs) - present)
    assert not missing, f"overlays/{rendered.overlay} refers to objects it does not have: {missing}"


# --- processes -------------------------------------------------------------------------------------------------

def test_a_deployment_per_process_running_the_image(rendered: Rendered) -> None:
    deployments = rendered.deployments()
    assert {"api", *STAGES} <= deployments.keys()
    images = {c["image"] for w in rendered.thumbs_workloads() for c in all_containers(w)}
    assert len(images) == 1, f"one image for every process: {images}"
    for component, deployment in deployments.items():
        assert container(deployment)["command"] == ["thumbs", component]


def test_probes(rendered: Rendered) -> None:
    settings = rendered.settings()
    for component, deployment in rendered.deployments().items():
        process = container(deployment)
        paths = {kind: process[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")}
        if component == "api":
            assert paths == {"livenessProbe": "/health", "readinessProbe": "/ready"}
            port = "http"
        else:
            assert paths == {"livenessProbe": "/livez", "readinessProbe": "/readyz"}, component
            port = "metrics"
        assert {process[kind]["httpGet"]["port"] for kind in ("livenessProbe", "readinessProbe")} == {port}
        # The probed port is the one the process listens on, as the settings say.
        assert port_named(deployment, port) == metrics_port(settings, component), component


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        for c in all_containers(workload):
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(bound, {}).keys(), f"{workload['metadata']['name']}/{c['name']}"


def test_the_resizer_cpu_limit_is_whole_cores(rendered: Rendered) -> None:
    """THUMBS_RESIZER_WORKERS=0 sizes the pool from the CPU quota: whole cores, guaranteed, give whole workers."""
    assert rendered.settings().resizer_workers == 0
    resources = container(rendered.deployments()["resizer"])["resources"]
    assert re.fullmatch(r"[1-9][0-9]*", str(resources["limits"]["cpu"])), resources
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


def test_thumbs_containers_run_as_the_image_user_read_only(rendered: Rendered) -> None:
    for workload in rendered.thumbs_workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        assert spec["automountServiceAccountToken"] is False
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in all_containers(workload):
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert {key: c["securityContext"].get(key) for key in CONTAINER_SECURITY} == CONTAINER_SECURITY, where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp for m in c["volumeMounts"]), where


def test_every_pod_meets_the_restricted_pod_security_profile(rendered: Rendered) -> None:
    """The namespace enforces it, so a pod below it would be refused; the local servers included."""
    for workload in workloads(rendered):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload["metadata"]["name"]
        for c in all_containers(workload):
            where, own = f"{workload['metadata']['name']}/{c['name']}", c.get("securityContext", {})
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert own.get("runAsUser", pod.get("runAsUser")) != 0, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("privileged") and not own.get("capabilities", {}).get("add"), where
        assert not any(k in spec for k in ("hostNetwork", "hostPID", "hostIPC")), workload["metadata"]["name"]
        assert not any("hostPath" in v for v in spec.get("volumes", [])), workload["metadata"]["name"]


def test_stages_have_time_to_drain(rendered: Rendered) -> None:
    """A stage finishes in-flight records within 10 s of SIGTERM, then closes its clients."""
    for component, deployment in rendered.deployments().items():
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= 20, component


# --- set-up ----------------------------------------------------------------------------------------------------

def test_a_job_creates_the_topics_and_the_schema(rendered: Rendered) -> None:
    jobs = [j for j in rendered.thumbs_workloads() if j["kind"] == "Job"]
    assert len(jobs) == 1
    command = " ".join(container(jobs[0])["command"])
    assert "thumbs topics --apply" in command and "thumbs migrate" in command
    assert pod_spec(jobs[0])["restartPolicy"] in ("Never", "OnFailure")


def test_processes_start_only_once_topics_and_schema_exist(rendered: Rendered) -> None:
    for component, deployment in rendered.deployments().items():
        init = pod_spec(deployment).get("initContainers", [])
        assert len(init) == 1, component
        command = " ".join(init[0]["command"])
        assert "thumbs topics" in command and "thumbs migrate" in command, component
        assert "--apply" not in command, "applying differences is the Job's, once, not every pod's"
        assert init[0]["image"] == container(deployment)["image"]
        assert init[0]["envFrom"] == container(deployment)["envFrom"], component


# --- settings and secrets --------------------------------------------------------------------------------------

SECRET_SETTINGS = {PREFIX + f.name.upper() for f in fields(Settings) if f.metadata["secret"]}
ALL_SETTINGS = {PREFIX + f.name.upper() for f in fields(Settings)}


def test_settings_are_known_and_valid_for_a_container(rendered: Rendered) -> None:
    env = rendered.env()
    assert set(env) <= ALL_SETTINGS, f"unknown settings: {sorted(set(env) - ALL_SETTINGS)}"
    settings = rendered.settings()  # casts and checks every value
    assert settings.api_host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert settings.state_dir.is_relative_to("/tmp"), "the root filesystem is read-only; /tmp is an emptyDir"
    assert settings.log_format == "json"


def test_no_thumbs_instance_in_deployments(rendered: Rendered) -> None:
    """THUMBS_INSTANCE turns on static membership, which needs the stable pod names of a StatefulSet."""
    assert "THUMBS_INSTANCE" not in rendered.env()
    for deployment in rendered.deployments().values():
        for c in all_containers(deployment):
            assert "THUMBS_INSTANCE" not in {var["name"] for var in c.get("env", [])}


def test_secrets_come_only_from_a_secret(rendered: Rendered) -> None:
    for config_map in rendered.of_kind("ConfigMap"):
        assert not SECRET_SETTINGS & config_map.get("data", {}).keys(), config_map["metadata"]["name"]
    for workload in rendered.thumbs_workloads():
        for c in all_containers(workload):
            assert any("secretRef" in source for source in c["envFrom"]), f"{workload['metadata']['name']}/{c['name']}"
            for var in c.get("env", []):
                assert var["name"] not in SECRET_SETTINGS or "secretKeyRef" in var.get("valueFrom", {}), var["name"]


def test_no_secret_value_is_committed(rendered: Rendered) -> None:
    """Local placeholders are empty; production's Secret is created out of band and is not rendered at all."""
    secrets = rendered.of_kind("Secret")
    if rendered.overlay == "production":
        assert not secrets
        return
    for secret in secrets:
        assert not secret.get("stringData")
        assert all(base64.b64decode(v) == b"" for v in secret.get("data", {}).values()), secret["metadata"]["name"]


# --- the API ---------------------------------------------------------------------------------------------------

def test_a_service_routes_to_the_api(rendered: Rendered) -> None:
    api = rendered.deployments()["api"]
    services = [s for s in rendered.of_kind("Service") if selects({"matchLabels": s["spec"]["selector"]}, pod_labels(api))]
    assert len(services) == 1
    assert {p["targetPort"] for p in services[0]["spec"]["ports"]} == {"http"}


def named_port(workload: Obj, port: int | str) -> int:
    """A container port given by number or by name, as a Service's targetPort or a policy's port."""
    return port if isinstance(port, int) else port_named(workload, port)


def test_the_api_reaches_the_stats_views_through_a_service(rendered: Rendered) -> None:
    """THUMBS_STATS_URL names a Service of the overlay, whose port leads to the stats pods' THUMBS_STATS_PORT."""
    settings = rendered.settings()
    stats = rendered.deployments()["stats"]
    assert port_named(stats, "web") == settings.stats_port
    url = urlsplit(settings.stats_url)
    assert url.scheme == "http" and url.hostname and url.port, settings.stats_url
    service = rendered.named("Service", url.hostname)
    assert service is not None, f"THUMBS_STATS_URL={settings.stats_url}: no Service {url.hostname}"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(stats))
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert named_port(stats, port.get("targetPort", port["port"])) == settings.stats_port


def in_namespace(selector: Obj, workload: Obj) -> bool:
    """Whether a pod selector of this namespace picks the workload's pods (an empty one picks every pod)."""
    return not selector or selects(selector, pod_labels(workload))


def admits_peer(rule: Obj, side: str, peer: Obj, port: int, target: Obj) -> bool:
    """Whether one ingress (side `from`) or egress (side `to`) rule lets traffic between `peer`'s pods and `port` of
    `target`'s pods through, both of this namespace. ipBlocks count as not matching: pod addresses are not fixed."""
    peers = rule.get(side)
    peer_ok = not peers or any(set(p) == {"podSelector"} and in_namespace(p["podSelector"], peer) for p in peers)
    ports = rule.get("ports")
    return peer_ok and (not ports or any("port" not in p or named_port(target, p["port"]) == port for p in ports))


def test_network_policies_let_the_api_and_other_instances_reach_the_stats_views(rendered: Rendered) -> None:
    """GET /stats goes from the API to a stats pod, and from there on to the instance that holds the tables. Policies
    add up: where some select a pod for a direction, one of their rules must let the traffic through."""
    port = rendered.settings().stats_port
    deployments = rendered.deployments()
    stats = deployments["stats"]
    policies = rendered.of_kind("NetworkPolicy")

    def selecting(workload: Obj, direction: str) -> list[Obj]:
        return [p for p in policies if direction in p["spec"].get("policyTypes", ["Ingress"])
                and in_namespace(p["spec"]["podSelector"], workload)]

    for source in (deployments["api"], stats):
        where = f"{source['metadata']['name']} -> {stats['metadata']['name']}:{port}"
        if egress := selecting(source, "Egress"):
            assert any(admits_peer(r, "to", stats, port, stats) for p in egress for r in p["spec"].get("egress", [])), where
        if ingress := selecting(stats, "Ingress"):
            assert any(admits_peer(r, "from", source, port, stats) for p in ingress for r in p["spec"].get("ingress", [])), where


def test_the_api_scales_on_cpu(rendered: Rendered) -> None:
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "thumbs-api"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# --- availability, autoscaling, monitoring ---------------------------------------------------------------------

def test_every_process_has_a_disruption_budget_that_lets_a_drain_through(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for component, deployment in rendered.deployments().items():
        mine = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(mine) == 1, component
        # minAvailable would block every eviction of a single replica; maxUnavailable lets one go at a time.
        assert mine[0]["spec"].get("maxUnavailable", 0) >= 1, component


def test_autoscaled_deployments_leave_the_replica_count_to_the_autoscaler(rendered: Rendered) -> None:
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in [*rendered.of_kind("ScaledObject"),
                                                           *rendered.of_kind("HorizontalPodAutoscaler")]}
    for name in scaled:
        assert "replicas" not in rendered.named("Deployment", name)["spec"], name  # type: ignore[index]


# THUMBS_KAFKA_SASL_MECHANISM → the `sasl` of KEDA's Kafka scaler.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512", "OAUTHBEARER": "oauthbearer"}


def test_fetcher_and_resizer_scale_on_their_lag(rendered: Rendered) -> None:
    if rendered.overlay == "local":
        assert not rendered.of_kind("ScaledObject"), "a bare local cluster has no KEDA"
        return
    settings = rendered.settings()
    deployments = rendered.deployments()
    by_target = {o["spec"]["scaleTargetRef"]["name"]: o for o in rendered.of_kind("ScaledObject")}
    for stage, topics in SCALED_ON.items():
        scaled = by_target[deployments[stage]["metadata"]["name"]]
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        # A consumer beyond the partition count would idle.
        assert scaled["spec"]["maxReplicaCount"] <= settings.topic_partitions, stage
        assert scaled["spec"]["triggers"], stage
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == settings.group(stage)
            assert meta["topic"] in {settings.topic(t) for t in topics}
            assert meta["bootstrapServersFromEnv"] == "THUMBS_KAFKA_BOOTSTRAP"
            assert meta.get("allowIdleConsumers", "false") == "false"
            assert int(meta["lagThreshold"]) > 0
            # KEDA reaches Kafka as the stages do.
            protocol = settings.kafka_security_protocol
            assert meta.get("tls", "disable") == ("enable" if protocol in ("SSL", "SASL_SSL") else "disable"), stage
            if protocol.startswith("SASL"):
                assert meta["sasl"] == KEDA_SASL[settings.kafka_sasl_mechanism]
                auth = rendered.named("TriggerAuthentication", trigger["authenticationRef"]["name"])
                assert auth is not None
                params = {r["parameter"] for r in [*auth["spec"].get("secretTargetRef", []),
                                                   *auth["spec"].get("configMapTargetRef", [])]}
                assert {"username", "password", "ca"} <= params


def test_every_process_is_scraped(rendered: Rendered) -> None:
    if rendered.overlay == "local":
        assert not rendered.of_kind("PodMonitor") and not rendered.of_kind("ServiceMonitor"), \
            "a bare local cluster has no Prometheus operator"
        return
    settings = rendered.settings()
    monitors = rendered.of_kind("PodMonitor")
    for component, deployment in rendered.deployments().items():
        mine = [m for m in monitors if selects(m["spec"]["selector"], pod_labels(deployment))]
        assert len(mine) == 1, component
        (endpoint,) = mine[0]["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
        assert port_named(deployment, endpoint["port"]) == metrics_port(settings, component), component


# --- the network policy of the stages that reach the internet on users' behalf ---------------------------------

OUTBOUND = ("fetcher", "notifier")  # image origins; webhook receivers

def uncovered(network: Network, excepted: list[Network]) -> list[Network]:
    """The parts of `network` that no network in `excepted` covers."""
    left = [network]
    for hole in excepted:
        rest: list[Network] = []
        for part in left:
            if part.version != hole.version or not part.overlaps(hole):
                rest.append(part)
            elif not part.subnet_of(hole):  # type: ignore[arg-type]
                rest.extend(part.address_exclude(hole))  # type: ignore[arg-type]
        left = rest
    return left


def admits(block: Obj, network: Network) -> bool:
    """Whether an ipBlock lets through any address of `network`."""
    cidr = ipaddress.ip_network(block["cidr"])
    if cidr.version != network.version or not cidr.overlaps(network):
        return False
    shared = network if network.subnet_of(cidr) else cidr  # type: ignore[arg-type]
    return bool(uncovered(shared, [ipaddress.ip_network(e) for e in block.get("except", [])]))


def test_the_overlap_check_of_ip_blocks() -> None:
    internet = {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/9", "10.128.0.0/9"]}
    assert not admits(internet, ipaddress.ip_network("10.0.0.0/8"))  # covered by two halves
    assert admits(internet, ipaddress.ip_network("172.16.0.0/12"))
    assert admits({"cidr": "10.1.0.0/16"}, ipaddress.ip_network("10.0.0.0/8"))
    assert not admits({"cidr": "2000::/3"}, ipaddress.ip_network("fc00::/7"))


def egress_policy(rendered: Rendered, component: str) -> Obj:
    deployment = rendered.deployments()[component]
    policies = [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels(deployment))]
    assert len(policies) == 1
    assert "Egress" in policies[0]["spec"]["policyTypes"]
    return policies[0]


def infrastructure_ports(settings: Settings) -> set[int]:
    """DNS, the brokers' ports from the bootstrap list, Cassandra's port."""
    return {53, settings.cassandra_port} | {int(server.rsplit(":", 1)[1]) for server in settings.kafka_bootstrap.split(",")}


@pytest.mark.parametrize("component", OUTBOUND)
def test_it_reaches_the_internet_but_no_private_address(rendered: Rendered, component: str) -> None:
    rules = egress_policy(rendered, component)["spec"]["egress"]
    infrastructure = infrastructure_ports(rendered.settings())
    for rule in rules:
        assert rule.get("to"), "a rule without `to` admits every address"
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports:
            # Kafka, Cassandra and DNS sit in private ranges: only their own ports may lead there.
            assert ports <= infrastructure, f"{ports} are not the ports of DNS, Kafka or Cassandra"
            continue
        for peer in rule["to"]:
            assert set(peer) == {"ipBlock"}, f"a rule on all ports must name addresses: {peer}"
            leaks = [str(n) for n in FORBIDDEN if admits(peer["ipBlock"], n)]
            assert not leaks, f"{peer['ipBlock']['cidr']} lets the {component} reach {leaks}"
    blocks = [peer["ipBlock"] for rule in rules if not rule.get("ports") for peer in rule["to"]]
    for address in PUBLIC:
        assert any(admits(block, address) for block in blocks), f"the {component} cannot reach {address}"


@pytest.mark.parametrize("component", OUTBOUND)
def test_it_reaches_dns_kafka_and_cassandra(rendered: Rendered, component: str) -> None:
    settings = rendered.settings()
    rules = egress_policy(rendered, component)["spec"]["egress"]
    ports = {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule.get("ports", [])}
    kafka = {int(server.rsplit(":", 1)[1]) for server in settings.kafka_bootstrap.split(",")}
    assert {("UDP", 53), ("TCP", 53), ("TCP", settings.cassandra_port)} | {("TCP", p) for p in kafka} <= ports
    # A pod selector without a namespace selector means pods of this namespace: some workload here must match.
    for rule in rules:
        for peer in rule["to"]:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                assert any(selects(peer["podSelector"], pod_labels(w)) for w in workloads(rendered)), peer


# --- local servers ---------------------------------------------------------------------------------------------

def test_local_servers_match_the_pinned_versions() -> None:
    versions = load_versions()
    servers = yaml.safe_load_all((K8S / "overlays" / "local" / "servers.yaml").read_text())
    images = {c["image"] for o in servers if o["kind"] == "StatefulSet" for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"apache/kafka:{versions.kafka}", f"cassandra:{versions.cassandra}"}


def test_local_settings_point_at_the_local_servers(renders: dict[str, Rendered]) -> None:
    local = renders["local"]
    settings = local.settings()
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in local.of_kind("Service")}
    for server in settings.kafka_bootstrap.split(","):
        host, port = server.rsplit(":", 1)
        assert int(port) in services[host]
    assert all(settings.cassandra_port in services[host] for host in settings.cassandra_hosts)


def test_env_files_hold_no_secret_setting() -> None:
    for path in K8S.rglob("*.env"):
        names = {line.split("=", 1)[0].strip() for line in path.read_text().splitlines()
                 if "=" in line and not line.lstrip().startswith("#")}
        assert not names & SECRET_SETTINGS, path


def test_strict_keeps_schemas_that_allow_unknown_fields_open() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"c": {}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
    }}
    made = strict(copy.deepcopy(schema))
    assert made["additionalProperties"] is False and made["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in made["properties"]["open"]
    assert made["properties"]["map"]["additionalProperties"] == {"type": "string"}
