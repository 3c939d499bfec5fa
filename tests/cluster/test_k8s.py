"""The KubeRay manifests (cluster/render.py k8s): RayJob and RayCluster against KubeRay v1.7.0's CRD
schemas, closed as the API server closes them (unknown fields rejected, types checked); the core
objects (the claim, the pod templates) against Kubernetes' own schemas (kubernetes-validate,
offline); and what no schema sees: ports, token mode, no dashboard outside the cluster, GPUs,
one pod per node, the image tag, Ray's version.

The CRDs are read from the folder KUBERAY_CRDS names (KubeRay v1.7.0's helm chart `crds/`; on our
CI machines a copy kept beside the checkout is found without it), checked by sha256; they are not
copied into the repository. Without them the CRD checks are skipped and say so; the rest runs."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "cluster"))

import render  # noqa: E402

K8S_VERSION = "1.33.0"  # the Kubernetes API whose schemas the core objects are checked against
CRDS = {  # KubeRay v1.7.0 (commit 59d663ae), ray-operator/config/crd/bases/
    "RayJob": ("ray.io_rayjobs.yaml", "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"),
    "RayCluster": ("ray.io_rayclusters.yaml", "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"),
}
IMAGE = "registry.example.org/team/gemma4-stack:slime-3cdec0cc_megatron-3714d81d_sglang-v0.5.9_gemma4-1_s0123456789ab"


def manifests(*sets: str, image: str = IMAGE) -> dict:
    return render.render_k8s(render.load_values(overrides=list(sets), image=image))


# ------------------------------------------------------------------ KubeRay's CRD schemas


def closed(schema: dict) -> dict:
    """A CRD's structural schema as JSON Schema with the API server's rules: an object's fields are
    the listed ones (others are unknown, which the server drops and `kubectl --validate=strict`
    refuses) unless x-kubernetes-preserve-unknown-fields; int-or-string takes either."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in s:
        s["properties"] = {k: closed(v) for k, v in s["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = closed(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = closed(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [closed(x) for x in s[key]]
    return s


def crd_folders() -> list[Path]:
    """Where the CRDs may be: KUBERAY_CRDS, else ../shared next to this checkout or, for a clone of
    a local checkout (a fresh clone made for CI), next to the checkout it was cloned from."""
    if os.environ.get("KUBERAY_CRDS"):
        return [Path(os.environ["KUBERAY_CRDS"])]
    roots = [REPO]
    res = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"], capture_output=True,
                         text=True)
    origin = Path(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip().startswith("/") else None
    if origin is not None and origin.is_dir():
        roots.append(origin.resolve())
    return [root.parent / "shared" / "kuberay-crds-v1.7.0" for root in roots]


@pytest.fixture(scope="module")
def crd_validators():
    folders = crd_folders()
    folder = next((f for f in folders if all((f / name).exists() for name, _ in CRDS.values())), None)
    if folder is None:
        pytest.skip(f"KubeRay v1.7.0's CRDs are not in {' nor '.join(map(str, folders))} (set KUBERAY_CRDS to "
                    "their folder): the manifests were not checked against KubeRay's schemas")
    out = {}
    for kind, (name, sha) in CRDS.items():
        f = folder / name
        data = f.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{f} is not KubeRay v1.7.0's {name}"
        crd = yaml.safe_load(data)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[kind] = jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))
    return out


def errors(validators, obj) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[obj["kind"]].iter_errors(obj)]


def test_rayjob_and_raycluster_fit_kuberays_schemas(crd_validators):
    m = manifests()
    for name in ("rayjob.yaml", "raycluster.yaml"):
        assert errors(crd_validators, m[name]) == [], name
    # as written to disk too: the YAML reads back as the same objects
    assert yaml.safe_load(render.to_yaml(m["rayjob.yaml"])) == m["rayjob.yaml"]


@pytest.mark.parametrize("path, value, expect", [
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParam"), {}, "'rayStartParam' was unexpected"),
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "replica"), 1, "'replica' was unexpected"),
    (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "gpus"), 8, "'gpus' was unexpected"),
    (("spec", "rayClusterSpec", "authOptions", "mode"), "password", "is not one of"),
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"), "1", "is not of type 'integer'"),
    (("spec", "rayClusterSpec", "rayVersion"), 2.54, "is not of type 'string'"),
    (("spec", "shutdownAfterJobFinishes"), "yes", "is not of type 'boolean'"),
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-gpus"), 8, "is not of type 'string'"),
])
def test_the_schema_check_refuses_unknown_fields_and_wrong_types(crd_validators, path, value, expect):
    job = copy.deepcopy(manifests()["rayjob.yaml"])
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors(crd_validators, job)
    assert any(expect in e for e in found), found


# ------------------------------------------------------------------ core objects, Kubernetes' own schemas


def core_errors(obj) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return e.message
    return None


def pod_templates(m) -> list[dict]:
    out = []
    for name in ("rayjob.yaml", "raycluster.yaml"):
        spec = m[name]["spec"].get("rayClusterSpec", m[name]["spec"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            out.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                        "template": group["template"]})
    return out


def test_the_claim_and_every_pod_template_fit_kubernetes_schemas():
    m = manifests("k8s.cpu=96", "k8s.memory=1800Gi", "k8s.storage_class='nfs'")
    assert core_errors(m["pvc.yaml"]) is None
    assert m["pvc.yaml"]["spec"]["storageClassName"] == "nfs"
    assert pod_templates(m)[0]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "96"
    for t in pod_templates(m):
        assert core_errors(t) is None
    bad = copy.deepcopy(pod_templates(m)[0])
    bad["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert "'volumeMount' was unexpected" in core_errors(bad)
    bad = copy.deepcopy(m["pvc.yaml"])
    bad["spec"]["accessModes"] = "ReadWriteMany"
    assert "is not of type" in core_errors(bad)


# ------------------------------------------------------------------ what a schema cannot see


def groups(obj) -> tuple[dict, list[dict]]:
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    return spec["headGroupSpec"], spec["workerGroupSpecs"]


def test_ports_are_the_values_and_no_dashboard_leaves_the_cluster():
    m = manifests("k8s.dashboard_port=18265", "k8s.gcs_port=16379")
    for name in ("rayjob.yaml", "raycluster.yaml"):
        head, workers = groups(m[name])
        assert head["serviceType"] == "ClusterIP"
        assert head["rayStartParams"]["port"] == "16379" and head["rayStartParams"]["dashboard-port"] == "18265"
        ports = {p["name"]: p for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert ports["dashboard"]["containerPort"] == 18265 and ports["gcs-server"]["containerPort"] == 16379
        assert not any("hostPort" in p for p in ports.values())
        for g in [head, *workers]:
            assert not g["template"]["spec"].get("hostNetwork")
        spec = m[name]["spec"].get("rayClusterSpec", m[name]["spec"])
        assert not spec.get("headServiceAnnotations") and not head.get("enableIngress")
    # nothing rendered is a Service, an Ingress or a Route
    assert {o["kind"] for o in m.values()} == {"PersistentVolumeClaim", "RayCluster", "RayJob"}
    assert m["rayjob.yaml"]["spec"]["entrypoint"].startswith("env RAY_ADDRESS=http://127.0.0.1:18265 bash ")


def test_token_authentication_ray_version_and_the_jobs_lifetime():
    m = manifests("k8s.ttl_seconds_after_finished=120")
    for name in ("rayjob.yaml", "raycluster.yaml"):
        spec = m[name]["spec"].get("rayClusterSpec", m[name]["spec"])
        assert spec["authOptions"] == {"mode": "token"}
        assert spec["rayVersion"] == render.ray_version() == render.dockerfile_args(REPO)["RAY_VERSION"]
        assert spec["enableInTreeAutoscaling"] is False
    job = m["rayjob.yaml"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] == 120


@pytest.mark.parametrize("nodes, gpus", [(2, 8), (4, 8), (1, 4)])
def test_gpus_per_pod_one_pod_per_node_and_the_run_scripts_environment(nodes, gpus):
    m = manifests(f"nodes={nodes}", f"gpus_per_node={gpus}", "k8s.shm_size=128Gi")
    head, workers = groups(m["rayjob.yaml"])
    assert len(workers) == 1 and workers[0]["replicas"] == workers[0]["minReplicas"] == workers[0]["maxReplicas"] == nodes - 1
    for g in [head, *workers]:
        assert g["rayStartParams"]["num-gpus"] == str(gpus)
        pod = g["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus == c["resources"]["requests"]["nvidia.com/gpu"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env["NUM_NODES"] == str(nodes) and env["GPUS_PER_NODE"] == str(gpus)
        assert env["HF_CHECKPOINT"] == "/shared/models/gemma-4-31B-it" and env["SAVE_DIR"].startswith("/shared/")
        mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
        assert volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"] == m["pvc.yaml"]["metadata"]["name"]
        (rule,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert rule["topologyKey"] == "kubernetes.io/hostname"
        assert rule["labelSelector"]["matchLabels"].items() <= g["template"]["metadata"]["labels"].items()
    head_env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert head_env["MASTER_ADDR"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert m["pvc.yaml"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_image_is_the_one_given_and_none_is_refused():
    m = manifests()
    for name in ("rayjob.yaml", "raycluster.yaml"):
        head, workers = groups(m[name])
        assert {g["template"]["spec"]["containers"][0]["image"] for g in [head, *workers]} == {IMAGE}
    with pytest.raises(render.ValuesError, match="no image: give the tag `make image` printed"):
        manifests(image="")
    assert manifests("model_script=/root/slime/scripts/run-gemma4-26B-A4B.sh")["rayjob.yaml"]["spec"][
        "entrypoint"].endswith("bash /root/slime/scripts/run-gemma4-26B-A4B.sh")


def test_retries_and_the_deadline_come_from_the_values():
    job = manifests()["rayjob.yaml"]["spec"]
    assert job["backoffLimit"] == 0 and "activeDeadlineSeconds" not in job  # the defaults: no retry, no limit
    job = manifests("k8s.backoff_limit=3", "k8s.active_deadline_seconds=86400")["rayjob.yaml"]["spec"]
    assert job["backoffLimit"] == 3 and job["activeDeadlineSeconds"] == 86400
    # the RayCluster for interactive use has neither (they are RayJob fields)
    assert "backoffLimit" not in manifests("k8s.backoff_limit=3")["raycluster.yaml"]["spec"]


@pytest.mark.parametrize("bad, named", [("k8s.backoff_limit=-1", "k8s.backoff_limit must be from 0 to 100"),
                                        ("k8s.backoff_limit=1000", "k8s.backoff_limit must be from 0 to 100"),
                                        ("k8s.active_deadline_seconds=-5", "k8s.active_deadline_seconds must be"),
                                        ("k8s.backoff_limit=two", "k8s.backoff_limit")])
def test_a_wrong_retry_setting_is_named(bad, named):
    with pytest.raises(render.ValuesError, match=named):
        manifests(bad)
