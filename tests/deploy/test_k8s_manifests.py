"""deploy/k8s: built-in kinds validated offline against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), custom resources against structural schemas, and the pieces
checked against each other and against the worker's configuration contract."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.common import (
    CONTRACT_ENV,
    DOCKERFILE,
    K8S_DIR,
    load_yaml,
    load_yaml_all,
)
from tests.deploy.crd_schemas import CRD_SCHEMAS, RABBITMQ_TRIGGER_METADATA
from worker import config as worker_config

# The oldest Kubernetes minor still commonly run, and the newest the package knows.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())

MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{d['kind']}", d) for p in MANIFEST_FILES for d in load_yaml_all(p)]


def one(kind: str) -> dict[str, Any]:
    found = [d for _name, d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate_builtin(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def validate_crd(doc: dict[str, Any]) -> None:
    schema = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft202012Validator(schema).validate(doc)


def is_crd(doc: dict[str, Any]) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS


def container() -> dict[str, Any]:
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (250m, 1, 256Mi) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def config() -> dict[str, str]:
    return one("ConfigMap")["data"]


def secret(name: str) -> dict[str, Any]:
    found = [d for _n, d in documents() if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one Secret {name}, found {len(found)}"
    return found[0]


def secret_ref(env_name: str) -> dict[str, str]:
    """The secretKeyRef the container reads `env_name` from."""
    (env,) = [e for e in container()["env"] if e["name"] == env_name]
    ref: dict[str, str] = env["valueFrom"]["secretKeyRef"]
    return ref


class TestSchemas:
    """Every document validates; broken ones do not."""

    @pytest.mark.parametrize("version", K8S_VERSIONS)
    @pytest.mark.parametrize(
        ("name", "doc"),
        [(n, d) for n, d in documents() if not is_crd(d)],
        ids=[n for n, d in documents() if not is_crd(d)],
    )
    def test_builtin_kinds_validate(self, name: str, doc: dict[str, Any], version: str) -> None:
        """Strict OpenAPI validation (unknown fields rejected) of built-in kinds."""
        validate_builtin(doc, version)

    @pytest.mark.parametrize(
        ("name", "doc"),
        [(n, d) for n, d in documents() if is_crd(d)],
        ids=[n for n, d in documents() if is_crd(d)],
    )
    def test_custom_resources_validate(self, name: str, doc: dict[str, Any]) -> None:
        """ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication: structure."""
        validate_crd(doc)

    def test_every_kind_is_covered(self) -> None:
        """No document escapes both validators (a kind without a schema would)."""
        for _name, doc in documents():
            if is_crd(doc):
                continue
            # Raises SchemaNotFoundError for a kind kubernetes-validate does not know.
            validate_builtin(doc, K8S_VERSIONS[-1])
        kinds = {d["kind"] for _n, d in documents()}
        assert {
            "ServiceMonitor",
            "ScaledObject",
            "PrometheusRule",
            "TriggerAuthentication",
        } <= kinds

    def test_keda_rabbitmq_trigger_metadata(self) -> None:
        """The rabbitmq trigger uses only keys the KEDA scaler reads, with valid values."""
        (trigger,) = one("ScaledObject")["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        jsonschema.Draft202012Validator(RABBITMQ_TRIGGER_METADATA).validate(trigger["metadata"])

    def test_hpa_behavior_is_a_valid_autoscaling_v2_behavior(self) -> None:
        """KEDA passes advanced.horizontalPodAutoscalerConfig.behavior to an autoscaling/v2 HPA."""
        behavior = one("ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"][
            "behavior"
        ]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "probe"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "behavior": behavior,
            },
        }
        validate_builtin(hpa, K8S_VERSIONS[-1])

    def test_validators_reject_mistakes(self) -> None:
        """A misspelt field, a wrong type and a bad CRD field are all caught."""
        deployment = copy.deepcopy(one("Deployment"))
        deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_builtin(deployment, K8S_VERSIONS[-1])
        deployment = copy.deepcopy(one("Deployment"))
        deployment["spec"]["replicas"] = "two"
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_builtin(deployment, K8S_VERSIONS[-1])
        scaled = copy.deepcopy(one("ScaledObject"))
        scaled["spec"]["maxReplicas"] = 10
        with pytest.raises(jsonschema.ValidationError):
            validate_crd(scaled)
        monitor = copy.deepcopy(one("ServiceMonitor"))
        monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
        with pytest.raises(jsonschema.ValidationError):
            validate_crd(monitor)


class TestKustomization:
    """The kustomization applies everything but the example Secret."""

    def test_resources_are_the_manifests(self) -> None:
        """Every manifest is listed once; the example Secret is deliberately not."""
        kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
        listed = kustomization["resources"]
        assert len(listed) == len(set(listed))
        expected = {p.name for p in MANIFEST_FILES} - {"secret.example.yaml"}
        assert set(listed) == expected
        assert kustomization["namespace"] == one("Namespace")["metadata"]["name"]

    def test_kustomize_build(self, tmp_path: Path) -> None:
        """`kubectl kustomize` renders it (offline); the output validates too."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip(
                "kubectl not installed (optional: the manifests are validated file by file)"
            )
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S_DIR)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        out = tmp_path / "rendered.yaml"
        out.write_text(result.stdout)
        rendered = load_yaml_all(out)
        assert len(rendered) == sum(
            len(load_yaml_all(K8S_DIR / name))
            for name in load_yaml(K8S_DIR / "kustomization.yaml")["resources"]
        )
        for doc in rendered:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "intentus", doc["kind"]
            assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "intentusnet"
            if is_crd(doc):
                validate_crd(doc)
            else:
                validate_builtin(doc, K8S_VERSIONS[-1])


class TestWorkerDeployment:
    """The Deployment as the worker needs it."""

    def test_probes(self) -> None:
        """Readiness on /readyz, liveness and startup on /healthz, on the metrics port."""
        c = container()
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}

    def test_grace_period_exceeds_shutdown_grace(self) -> None:
        """Kubernetes waits longer than the worker's own grace before SIGKILL."""
        grace = float(config()["INTENTUS_SHUTDOWN_GRACE_S"])
        pod_grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert pod_grace >= grace + 10

    def test_non_root_and_locked_down(self) -> None:
        """Non-root (the image's uid), no privilege escalation, no capabilities, read-only root."""
        pod = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] != 0
        image_user = next(
            line.split()[1]
            for line in DOCKERFILE.read_text().splitlines()
            if line.startswith("USER ")
        )
        assert image_user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
        assert pod["fsGroup"] == pod["runAsGroup"]
        sc = container()["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]

    def test_resources(self) -> None:
        """CPU and memory requested and limited; requests within limits."""
        resources = container()["resources"]
        for key in ("cpu", "memory"):
            assert quantity(resources["requests"][key]) <= quantity(resources["limits"][key])

    def test_metrics_port_matches_config(self) -> None:
        """Container port = INTENTUS_METRICS_ADDR's port, listening on all interfaces."""
        host, _, port = config()["INTENTUS_METRICS_ADDR"].rpartition(":")
        assert host == "0.0.0.0"
        (p,) = container()["ports"]
        assert (p["name"], p["containerPort"]) == ("metrics", int(port))

    def test_records_url_comes_from_a_secret(self) -> None:
        """INTENTUS_RECORDS_URL is a postgresql:// URL read from its own Secret, not the ConfigMap."""
        ref = secret_ref("INTENTUS_RECORDS_URL")
        url = secret(ref["name"])["stringData"][ref["key"]]
        assert urlsplit(url).scheme == "postgresql"
        assert urlsplit(url).password  # a placeholder the operator replaces
        # KEDA reads the AMQP Secret: the database password is not handed to it.
        assert ref["name"] != secret_ref("INTENTUS_AMQP_URL")["name"]
        assert "INTENTUS_RECORDS_URL" not in config()
        assert "INTENTUS_RECORDS_DIR" not in config()  # files are not used here

    def test_worker_accepts_the_configuration(self) -> None:
        """The worker's own loader accepts the ConfigMap plus both example Secrets."""
        env = dict(config())
        for name in ("INTENTUS_AMQP_URL", "INTENTUS_RECORDS_URL"):
            ref = secret_ref(name)
            env[name] = secret(ref["name"])["stringData"][ref["key"]]
        cfg = worker_config.load(env=env)
        assert cfg.records_url == env["INTENTUS_RECORDS_URL"]
        assert "change-me" not in json.dumps(worker_config.describe(cfg), default=str)

    def test_no_shared_volume(self) -> None:
        """No PersistentVolumeClaim and no ReadWriteMany anywhere; the pods mount only /tmp."""
        kinds = {d["kind"] for _n, d in documents()}
        assert "PersistentVolumeClaim" not in kinds
        assert "ReadWriteMany" not in json.dumps([d for _n, d in documents()])
        spec = one("Deployment")["spec"]["template"]["spec"]
        assert all(set(v) == {"name", "emptyDir"} for v in spec["volumes"])
        assert [m["mountPath"] for m in container()["volumeMounts"]] == ["/tmp"]

    def test_env_names_are_the_contract(self) -> None:
        """Only documented INTENTUS_* variables are set (ConfigMap and container env)."""
        names = set(config()) | {e["name"] for e in container()["env"]}
        assert names <= set(CONTRACT_ENV)
        # The passwords live in Secrets.
        assert "INTENTUS_AMQP_URL" not in config()
        assert "INTENTUS_RECORDS_URL" not in config()

    def test_secret_reference_matches_example_and_keda(self) -> None:
        """Deployment and KEDA read the keys the example Secrets define."""
        for name in ("INTENTUS_AMQP_URL", "INTENTUS_RECORDS_URL"):
            assert secret_ref(name)["key"] in secret(secret_ref(name)["name"])["stringData"]
        ref = secret_ref("INTENTUS_AMQP_URL")
        (target,) = one("TriggerAuthentication")["spec"]["secretTargetRef"]
        assert (target["name"], target["key"], target["parameter"]) == (
            ref["name"],
            ref["key"],
            "host",
        )
        assert config()["INTENTUS_QUEUE"]

    def test_selectors_line_up(self) -> None:
        """Service, PDB and ServiceMonitor select the Deployment's pods; ports by name."""
        deployment = one("Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        service = one("Service")
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert (
            one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items()
            <= pod_labels.items()
        )
        monitor = one("ServiceMonitor")
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] == container()["ports"][0]["name"]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == service_port["name"]
        # The alert rules select job="intentus-worker": the job label the ServiceMonitor gives.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "intentus-worker"

    def test_autoscaling_targets_the_request_queue(self) -> None:
        """KEDA scales this Deployment on INTENTUS_QUEUE, never below what the PDB needs."""
        scaled = one("ScaledObject")["spec"]
        deployment = one("Deployment")
        assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        (trigger,) = scaled["triggers"]
        assert trigger["metadata"]["queueName"] == config()["INTENTUS_QUEUE"]
        assert (
            trigger["authenticationRef"]["name"] == one("TriggerAuthentication")["metadata"]["name"]
        )
        min_available = one("PodDisruptionBudget")["spec"]["minAvailable"]
        assert scaled["minReplicaCount"] > min_available
        assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]
        assert deployment["spec"]["replicas"] == scaled["minReplicaCount"]
