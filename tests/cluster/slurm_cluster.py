"""A real two-node Slurm for the tests, in Docker containers on an internal network.

The image (tests/cluster/image) is Debian's Slurm on the debootstrapped Debian base that the smoke
build uses (patchstack.image.debian_rootfs), with Ray from hash-pinned PyPI wheels and the SPANK
plugin that records pyxis's flags. It is tagged by the sha256 of its recipe and built only when
that tag is missing.

The network is an `--internal` Docker network that the fixture creates and removes: each node has
its own network namespace and address (as on a real cluster, so Ray's node addresses, the head's
address and "reachable only on 127.0.0.1" mean what they mean there), and nothing on it can reach
any other address.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "image"
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "build"))

from patchstack import image, preflight  # noqa: E402
from patchstack.errors import StackError  # noqa: E402

IMAGE_REPO = "gemma4-stack-slurm-test"
BASE_TAG = "gemma4-stack-slurm-test-base:bookworm-minbase"
SHARED = "/shared"  # the shared directory, at the same path on both nodes


def docker(*args: str, check: bool = True, timeout: float = 600, input: str | None = None
           ) -> subprocess.CompletedProcess:
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


def why_not_available() -> str | None:
    """None when this machine can run the Slurm tests, else the reason."""
    if shutil.which("docker") is None:
        return "no docker command (ci/docker-engine.sh installs one)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (ci/docker-engine.sh installs it)"
    try:
        image.client()
    except StackError as e:
        return f"no Docker engine: {e.message}"
    return None


def recipe_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(RECIPE.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def image_tag() -> str:
    return f"{IMAGE_REPO}:{recipe_hash()[:16]}"


def _exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def build_image(out=print) -> str:
    """The test image, built once per recipe (its tag is the recipe's hash)."""
    tag = image_tag()
    if _exists(tag):
        return tag
    t0 = time.monotonic()
    if not _exists(BASE_TAG):
        rootfs = image.debian_rootfs(out)
        out(f"docker import {rootfs} -> {BASE_TAG}")
        image.import_rootfs(rootfs, BASE_TAG)
    with tempfile.TemporaryDirectory(prefix="slurm-test-ctx-") as d:
        ctx = Path(d)
        for f in RECIPE.iterdir():
            if f.is_file():
                shutil.copyfile(f, ctx / f.name)
        out("pip download of the hash-pinned Ray wheels ...")
        code, tail = image.run_with_heartbeat(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "--only-binary=:all:",
             "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             *[a for p in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
                           "linux_x86_64", "any") for a in ("--platform", p)],
             "-r", str(ctx / "ray-requirements.txt"), "-d", str(ctx / "wheels")], "pip download", out)
        if code != 0:
            raise RuntimeError(f"pip download of the Ray wheels failed: {tail}")
        out(f"docker build {tag} (apt: Slurm, munge, gcc; Ray offline) ...")
        code, tail = image.run_with_heartbeat(
            ["docker", "build", "--network", "host", "--build-arg", f"BASE={BASE_TAG}",
             "--label", f"{preflight.CLONE_LABEL}={preflight.clone_id()}", "-t", tag, str(ctx)],
            "docker build", out)
        if code != 0:
            raise RuntimeError(f"docker build of the Slurm test image failed: {tail}")
    out(f"built {tag} in {time.monotonic() - t0:.0f} s")
    return tag


class Cluster:
    """Two Slurm nodes, n1 (controller and node) and n2, sharing /shared (a host folder)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.id = uuid.uuid4().hex[:8]
        self.net = f"gemma4-slurm-test-{self.id}"
        self.names = {n: f"gemma4-slurm-{self.id}-{n}" for n in ("n1", "n2")}
        self.shared = Path(tempfile.mkdtemp(prefix="gemma4-slurm-shared-"))

    def start(self, timeout: float = 120) -> "Cluster":
        try:
            docker("network", "create", "--internal", self.net)
            for n, name in self.names.items():
                docker("run", "-d", "--init", "--name", name, "--hostname", n, "--network", self.net,
                       "--network-alias", n, "--shm-size", "2g", "-v", f"{self.shared}:{SHARED}", self.tag)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.exec("n1", "sinfo", "-h", "-N", "-o", "%N %t", check=False)
            states = dict(line.split() for line in p.stdout.splitlines() if line.strip())
            if states.get("n1") == "idle" and states.get("n2") == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"the Slurm nodes did not become idle in {timeout:.0f} s: {p.stdout} {p.stderr}\n"
                           + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {n}: {self.exec(n, 'sh', '-c', 'tail -n 30 /var/log/slurm*.log', check=False).stdout}"
                         for n in self.names)

    def stop(self) -> None:
        for name in self.names.values():
            docker("rm", "-f", name, check=False)
        docker("network", "rm", self.net, check=False)
        # files the nodes wrote as root in the shared folder
        subprocess.run(["rm", "-rf", str(self.shared)], check=False)

    def exec(self, node: str, *cmd: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
        args = ["exec"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        return docker(*args, self.names[node], *cmd, check=check, timeout=timeout)

    def ip(self, node: str) -> str:
        return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                      self.names[node]).stdout.strip()

    def sbatch(self, script: str, *args: str, env: dict[str, str] | None = None) -> int:
        p = self.exec("n1", "sbatch", "--parsable", "--chdir", SHARED, *args, script, env=env)
        return int(p.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        p = self.exec("n1", "scontrol", "show", "job", "-o", str(job_id))
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", p.stdout))

    def wait(self, job_id: int, timeout: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return info
            time.sleep(1)
        raise RuntimeError(f"job {job_id} did not finish in {timeout:.0f} s: {self.job(job_id)}\n"
                           + self.output(job_id))

    def output(self, job_id: int) -> str:
        f = self.shared / f"slurm-{job_id}.out"
        return f.read_text(errors="replace") if f.exists() else f"(no {f.name})"

    def processes(self, node: str) -> list[str]:
        """Every process on the node that is not part of the node itself (init, munge, Slurm, sleep)."""
        p = self.exec(node, "ps", "-eo", "pid=,args=")
        keep = ("docker-init", "munged", "slurmctld", "slurmscriptd", "slurmd", "sleep infinity", "ps -eo", "bash /usr/local/bin/node.sh")
        return [line.strip() for line in p.stdout.splitlines() if line.strip() and not any(k in line for k in keep)]
