"""The cluster launchers from one set of values: the Slurm batch script and the KubeRay manifests.

    python cluster/render.py slurm [--image TAG] [--values FILE] [--set KEY=VALUE ...] [--out FILE]
    python cluster/render.py k8s    --image TAG  [--values FILE] [--set KEY=VALUE ...] [--out DIR]
    python cluster/render.py slurm --update-template   # rewrite the block in cluster/slurm/gemma4.sbatch

`make slurm-script` and `make k8s-manifests` call it. The values are cluster/values.toml (a file of
your own with --values: the same keys, any subset); Ray's version is the image's, read from
docker/Dockerfile (ARG RAY_VERSION), so the launchers and the image cannot disagree. The image is
given as a registry reference (registry.example.com/team/gemma4-stack:TAG); the Slurm script gets
it in pyxis's form (registry.example.com#team/gemma4-stack:TAG), see pyxis_image().
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

CLUSTER = Path(__file__).resolve().parent
ROOT = CLUSTER.parent
sys.path.insert(0, str(ROOT / "build"))

from patchstack.image import dockerfile_args  # noqa: E402  (one reader of the Dockerfile's ARGs)

VALUES = CLUSTER / "values.toml"
TEMPLATE = CLUSTER / "slurm" / "gemma4.sbatch"
BEGIN, END = "# >>> generated\n", "# <<< generated\n"
# the knobs that are #SBATCH lines, not environment defaults
SBATCH_KEYS = ("job_name", "partition", "account", "time", "exclusive")


class ValuesError(Exception):
    pass


# ------------------------------------------------------------------ values


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_values(path: Path | None = None, overrides: list[str] = (), image: str | None = None) -> dict:
    """The values: cluster/values.toml, updated by `path` (same keys, any subset) and by KEY=VALUE
    overrides (`nodes=4`, `slurm.exclusive=false`). Unknown keys and wrong types are errors that
    name the key, the file and the expected type."""
    base = _flat(tomllib.loads(VALUES.read_text()))
    values = dict(base)

    def put(key: str, value, where: str) -> None:
        if key not in base:
            raise ValuesError(f"{where}: unknown key {key!r}; the keys are those of {VALUES.relative_to(ROOT)}: "
                              + ", ".join(sorted(base)))
        want = type(base[key])
        if want is int and isinstance(value, bool) or not isinstance(value, want):
            raise ValuesError(f"{where}: {key} must be {want.__name__} (like {base[key]!r}), not {value!r}")
        values[key] = value

    if path is not None:
        try:
            user = _flat(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValuesError(f"cannot read the values file {path}: {e}") from None
        for k, v in user.items():
            put(k, v, str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValuesError(f"--set {item!r}: expected KEY=VALUE")
        want = type(base.get(key.strip(), ""))
        try:
            # strings as they are (a TOML-quoted one is unquoted), the rest as TOML values
            quoted = want is str and text[:1] in ("'", '"')
            value = tomllib.loads(f"v = {text}")["v"] if want is not str or quoted else text
        except tomllib.TOMLDecodeError:
            raise ValuesError(f"--set {item!r}: {text!r} is not a {want.__name__}") from None
        put(key.strip(), value, f"--set {item}")
    if image is not None:
        values["image"] = image
    if values["image"] and re.search(r"\s", values["image"]):
        raise ValuesError(f"image {values['image']!r} has white space: give the tag `make image` printed")
    for k in ("nodes", "gpus_per_node"):
        if values[k] < 1:
            raise ValuesError(f"{k} must be at least 1, not {values[k]}")
    for k, top in (("k8s.backoff_limit", 100), ("k8s.active_deadline_seconds", 2**31 - 1),
                   ("k8s.ttl_seconds_after_finished", 2**31 - 1)):
        if not 0 <= values[k] <= top:
            raise ValuesError(f"{k} must be from 0 to {top}, not {values[k]}")
    values["ray_version"] = ray_version()
    return values


def ray_version() -> str:
    v = dockerfile_args(ROOT).get("RAY_VERSION", "")
    if not re.fullmatch(r"\d+\.\d+\.\d+", v):
        raise ValuesError(f"docker/Dockerfile has no pinned 'ARG RAY_VERSION=<x.y.z>' (found {v!r})")
    return v


# ------------------------------------------------------------------ the image's name

# The two forms pyxis reads as something other than a Docker Hub name, for the error messages.
PYXIS_FORMS = ("a registry reference, registry.example.com/team/gemma4-stack:<tag> (written for pyxis as "
               "registry.example.com#team/gemma4-stack:<tag>), or a squashfs file made on a machine that has "
               "the image with `enroot import -o /shared/gemma4.sqsh dockerd://<tag>` (an absolute path on a "
               "file system every node mounts)")


def _registry_host(component: str) -> bool:
    """Docker's rule for the first component of a reference: a registry host has a dot or a port,
    or is localhost; anything else is a Docker Hub namespace or image name."""
    return "." in component or ":" in component or component == "localhost"


def pyxis_image(image: str, allow_docker_hub: bool = False) -> str:
    """The image as pyxis's --container-image takes it: [USER@][REGISTRY#]IMAGE[:TAG], or a squashfs
    file when it starts with / or . (pyxis hands anything else to enroot as docker://<image>).

    - empty, a path (/x.sqsh, ./x.sqsh), or already in pyxis's form (has '#'): unchanged;
    - dockerd://<tag> (the Docker daemon on each node; pyxis's current sources take it): unchanged;
    - a registry reference, host/path:tag (the host has a dot or a port, or is localhost), becomes
      host#path:tag (a USER@ before the host is kept), the form in which enroot asks that registry;
    - anything else (gemma4-stack:tag, team/gemma4-stack:tag) names an image on Docker Hub, where
      enroot would look for it: refused unless allow_docker_hub."""
    if not image or image[0] in "/." or "#" in image or image.startswith("dockerd://"):
        return image
    if "://" in image:
        raise ValuesError(f"image {image!r}: give it without a scheme (pyxis adds docker:// itself): "
                          + PYXIS_FORMS)
    m = re.fullmatch(r"(?:([^/@#]+)@)?([^/#]+)/(.+)", image)
    if m and _registry_host(m.group(2)):
        user, host, rest = m.groups()
        return f"{user + '@' if user else ''}{host}#{rest}"
    if allow_docker_hub:
        return image
    raise ValuesError(f"image {image!r} names no registry, so pyxis would look for it on Docker Hub "
                      f"(a local tag is not seen by enroot); give {PYXIS_FORMS}; or, for an image that is on "
                      "Docker Hub, slurm.allow_docker_hub = true (make slurm-script SET=slurm.allow_docker_hub=true)")


def k8s_image_note(image: str) -> str | None:
    """A warning for a Kubernetes image without a registry host: the kubelet uses a node's own copy
    (imagePullPolicy IfNotPresent) and pulls it from Docker Hub on a node without one."""
    m = re.fullmatch(r"(?:[^/@#]+@)?([^/#]+)/.+", image)
    if m and _registry_host(m.group(1)):
        return None
    return (f"warning: image {image!r} names no registry: a node that does not have it already pulls it from "
            "Docker Hub (imagePullPolicy IfNotPresent); push it (make push REGISTRY=registry.example.com/team) "
            "and give registry.example.com/team/gemma4-stack:<tag>")


# ------------------------------------------------------------------ Slurm


def _dq(text: str) -> str:
    """`text` inside a double-quoted shell word."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def slurm_block(v: dict) -> str:
    """The generated block of the batch script: #SBATCH lines, then one default per knob."""
    lines = [f"#SBATCH --job-name={v['slurm.job_name']}", f"#SBATCH --nodes={v['nodes']}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={v['gpus_per_node']}"]
    for key in ("partition", "account", "time"):
        if v[f"slurm.{key}"]:
            lines.append(f"#SBATCH --{key}={v[f'slurm.{key}']}")
    if v["slurm.exclusive"]:
        lines.append("#SBATCH --exclusive")
    lines.append("#SBATCH --output=slurm-%j.out")
    env = {"IMAGE": pyxis_image(v["image"], v["slurm.allow_docker_hub"]), "RAY_VERSION": v["ray_version"],
           "MODEL_SCRIPT": v["model_script"], "GPUS_PER_NODE": str(v["gpus_per_node"])}
    for key in ("shared_dir", "hf_checkpoint", "data_dir", "save_dir"):
        env[key.upper()] = v[key]
    for key, value in v.items():
        if key.startswith("slurm.") and key[6:] not in SBATCH_KEYS:
            env[key[6:].upper()] = str(int(value)) if isinstance(value, bool) else str(value)
    lines += [f': "${{{name}={_dq(value)}}}"' for name, value in env.items()]
    return BEGIN + "\n".join(lines) + "\n" + END


def render_slurm(v: dict, template: str | None = None) -> str:
    text = TEMPLATE.read_text() if template is None else template
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValuesError(f"{TEMPLATE} has no '{BEGIN.strip()}' ... '{END.strip()}' block")
    return text[:start] + slurm_block(v) + text[end + len(END):]


# ------------------------------------------------------------------ Kubernetes (KubeRay)

RUN_LABEL = "gemma4-stack.github.io/run"


def _container(v: dict, name: str, head: bool) -> dict:
    k = lambda key: v[f"k8s.{key}"]  # noqa: E731
    limits: dict = {"nvidia.com/gpu": v["gpus_per_node"]}
    requests: dict = {"nvidia.com/gpu": v["gpus_per_node"]}
    for key in ("cpu", "memory"):
        if k(key):
            limits[key] = requests[key] = k(key)
    env = [{"name": "NUM_NODES", "value": str(v["nodes"])},
           {"name": "GPUS_PER_NODE", "value": str(v["gpus_per_node"])},
           {"name": "HF_CHECKPOINT", "value": v["hf_checkpoint"]},
           {"name": "DATA_DIR", "value": v["data_dir"]},
           {"name": "SAVE_DIR", "value": v["save_dir"]}]
    if head:  # the run script runs on the head: torch's rendezvous is the head pod
        env.append({"name": "MASTER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    c = {"name": name, "image": v["image"], "imagePullPolicy": "IfNotPresent", "env": env,
         "resources": {"limits": limits, "requests": requests},
         "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"},
                          {"name": "shared", "mountPath": v["shared_dir"]}]}
    if head:
        c["ports"] = [{"name": "gcs-server", "containerPort": k("gcs_port")},
                      {"name": "dashboard", "containerPort": k("dashboard_port")},
                      {"name": "client", "containerPort": k("client_port")}]
    return c


def _pod(v: dict, name: str, head: bool) -> dict:
    run = v["k8s.name"]
    return {
        "metadata": {"labels": {RUN_LABEL: run}},
        "spec": {
            "containers": [_container(v, name, head)],
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": v["k8s.shm_size"]}},
                        {"name": "shared", "persistentVolumeClaim": {"claimName": v["k8s.shared_claim"]}}],
            # one pod per node: no two pods of this run on the same host
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {RUN_LABEL: run}}, "topologyKey": "kubernetes.io/hostname"}]}},
        },
    }


def ray_cluster_spec(v: dict) -> dict:
    k = lambda key: v[f"k8s.{key}"]  # noqa: E731
    gpus = str(v["gpus_per_node"])
    workers = v["nodes"] - 1
    return {
        "rayVersion": v["ray_version"],
        "enableInTreeAutoscaling": False,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {"port": str(k("gcs_port")), "dashboard-port": str(k("dashboard_port")),
                               "ray-client-server-port": str(k("client_port")), "num-gpus": gpus},
            "template": _pod(v, "ray-head", head=True),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
            "rayStartParams": {"num-gpus": gpus},
            "template": _pod(v, "ray-worker", head=False),
        }],
    }


def _meta(v: dict, name: str) -> dict:
    return {"name": name, "namespace": v["k8s.namespace"],
            "labels": {"app.kubernetes.io/name": "gemma4-stack", RUN_LABEL: v["k8s.name"]}}


def render_k8s(v: dict) -> dict[str, dict]:
    """The manifests, by file name: the shared volume's claim, a RayCluster (interactive use) and a
    RayJob (a run: its cluster is made for it and deleted after it)."""
    if not v["image"]:
        raise ValuesError("no image: give the tag `make image` printed, pushed to a registry "
                          "(make k8s-manifests IMAGE=registry.example.com/team/gemma4-stack:<tag>)")
    if v["image"][0] in "/." or "#" in v["image"] or "://" in v["image"]:
        raise ValuesError(f"image {v['image']!r} is a pyxis/enroot form; Kubernetes pulls a registry reference: "
                          "registry.example.com/team/gemma4-stack:<tag>")
    k = lambda key: v[f"k8s.{key}"]  # noqa: E731
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(v, k("shared_claim")),
           "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": k("shared_size")}}}}
    if k("storage_class"):
        pvc["spec"]["storageClassName"] = k("storage_class")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _meta(v, k("name")),
               "spec": ray_cluster_spec(v)}
    # The run script submits its own Ray job when RAY_ADDRESS is the dashboard's address; the
    # entrypoint runs on the head, where the dashboard is on 127.0.0.1.
    entry = f"env RAY_ADDRESS=http://127.0.0.1:{k('dashboard_port')} bash {v['model_script']}"
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(v, k("name")),
           "spec": {"entrypoint": entry, "shutdownAfterJobFinishes": True,
                    "ttlSecondsAfterFinished": k("ttl_seconds_after_finished"),
                    "backoffLimit": k("backoff_limit"),
                    "rayClusterSpec": ray_cluster_spec(v)}}
    if k("active_deadline_seconds"):
        job["spec"]["activeDeadlineSeconds"] = k("active_deadline_seconds")
    return {"pvc.yaml": pvc, "raycluster.yaml": cluster, "rayjob.yaml": job}


_PLAIN = re.compile(r"^[A-Za-z0-9_./-]+$")


def to_yaml(obj, indent: int = 0) -> str:
    """A small YAML writer for the manifests: maps, lists, strings (JSON-quoted, which YAML reads
    as the same string), integers and booleans."""
    pad = "  " * indent

    def scalar(x) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, int):
            return str(x)
        if isinstance(x, str):
            return json.dumps(x)
        raise TypeError(f"cannot write {type(x).__name__} to YAML")

    def key(x: str) -> str:
        return x if _PLAIN.match(x) else json.dumps(x)

    out = []
    if isinstance(obj, dict):
        for k, x in obj.items():
            if isinstance(x, (dict, list)) and x:
                out.append(f"{pad}{key(k)}:\n{to_yaml(x, indent + 1)}")
            else:
                out.append(f"{pad}{key(k)}: {scalar(x) if not isinstance(x, (dict, list)) else ('{}' if isinstance(x, dict) else '[]')}")
    else:
        for x in obj:
            if isinstance(x, dict) and x:
                body = to_yaml(x, indent + 1)
                out.append(f"{pad}- {body.lstrip()}")
            elif isinstance(x, list) and x:
                out.append(f"{pad}-\n{to_yaml(x, indent + 1)}")
            else:
                out.append(f"{pad}- {scalar(x)}")
    return "\n".join(out)


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cluster/render.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=["slurm", "k8s"])
    ap.add_argument("--values", type=Path, help="a values file of your own (keys of cluster/values.toml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one value (nodes=4, slurm.exclusive=false)")
    ap.add_argument("--image", help="the image: registry.example.com/team/gemma4-stack:<tag> (Slurm: also "
                                    "registry.example.com#team/gemma4-stack:<tag> or a .sqsh path)")
    ap.add_argument("--out", type=Path, help="file (slurm) or folder (k8s); default under out/cluster/")
    ap.add_argument("--update-template", action="store_true",
                    help="slurm: rewrite the generated block of cluster/slurm/gemma4.sbatch from cluster/values.toml")
    a = ap.parse_args(argv)
    try:
        if a.update_template:
            if a.target != "slurm" or a.values or a.set or a.image:
                raise ValuesError("--update-template takes no other option: the template holds cluster/values.toml as it is")
            TEMPLATE.write_text(render_slurm(load_values()))
            print(f"updated {TEMPLATE.relative_to(ROOT)}")
            return 0
        v = load_values(a.values, a.set, a.image)
        if a.target == "slurm":
            out = a.out or ROOT / "out" / "cluster" / "gemma4.sbatch"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_slurm(v))
            out.chmod(0o755)
            image = pyxis_image(v["image"], v["slurm.allow_docker_hub"])
            print(f"wrote {out}: {v['nodes']} nodes x {v['gpus_per_node']} GPUs, Ray {v['ray_version']}, "
                  f"image {image or '(none: give IMAGE=<registry>#<image>:<tag> to sbatch)'}")
            print(f"submit: sbatch {out}")
        else:
            out = a.out or ROOT / "out" / "cluster" / "k8s"
            manifests = render_k8s(v)
            if note := k8s_image_note(v["image"]):
                print(f"cluster/render.py: {note}", file=sys.stderr)
            out.mkdir(parents=True, exist_ok=True)
            for name, obj in manifests.items():
                (out / name).write_text(f"# {name}: written by `make k8s-manifests` from cluster/values.toml\n"
                                        + to_yaml(obj) + "\n")
            print(f"wrote {out}/pvc.yaml, raycluster.yaml, rayjob.yaml: {v['nodes']} pods x {v['gpus_per_node']} GPUs, "
                  f"Ray {v['ray_version']}, image {v['image']}")
            print(f"run: kubectl apply -f {out}/pvc.yaml -f {out}/rayjob.yaml")
        return 0
    except ValuesError as e:
        print(f"cluster/render.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
