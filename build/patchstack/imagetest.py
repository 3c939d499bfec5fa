"""`patchstack image-test`: run the image's own test suite (tests/image, shipped in the image at
/opt/gemma4-stack/tests/image) in a container, on this host's GPUs when it has some.

The driver reads the image's labels (the suite compares them with what is inside), decides which
tiers this host can run (static anywhere; gpu and rl need GPUs), starts the container with no
network (services inside bind to loopback) and the results folder mounted, streams the suite's
output and returns its exit status. Results: OUT/results.md (a table), OUT/junit.xml,
OUT/results.jsonl.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_NOT_RUN, EXIT_OK, StackError

SUITE = "/opt/gemma4-stack/tests/image/suite.py"
MOUNT = "/image-test"
TIERS = ("static", "gpu", "rl")


def host_gpus() -> tuple[int, str]:
    """GPUs on this host, as nvidia-smi lists them, and how that was found out."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, "no nvidia-smi on this host"
    try:
        p = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"nvidia-smi -L failed: {e}"
    n = sum(1 for line in p.stdout.splitlines() if line.startswith("GPU "))
    if p.returncode != 0 or n == 0:
        return 0, f"nvidia-smi -L lists no GPU (exit {p.returncode})"
    return n, f"nvidia-smi -L lists {n} GPU{'s' if n != 1 else ''}"


def plan_tiers(tier: str | None, gpus_here: int, why: str) -> tuple[str, dict[str, str]]:
    """The tier to run and, for each tier not run, why. Without GPUs only the static tier runs."""
    if tier is not None and tier not in TIERS:
        raise StackError(f"TIER={tier!r}: choose one of {', '.join(TIERS)}")
    want = tier or "rl"
    if gpus_here == 0 and want != "static":
        return "static", {t: f"no GPU on this host ({why})" for t in TIERS[1:TIERS.index(want) + 1]}
    return want, {}


def device_request(gpus: str | None, gpus_here: int):
    """docker's --gpus as a DeviceRequest: 'all' (default), a count, or device ids '0,1'."""
    import docker

    spec = (gpus or "all").strip()
    if spec == "all":
        return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]]), gpus_here
    if spec.isdigit():
        n = int(spec)
        if n < 1 or n > gpus_here:
            raise StackError(f"GPUS={spec}: this host has {gpus_here} GPU(s)", hint="GPUS=all, a count, or ids like 0,1")
        return docker.types.DeviceRequest(count=n, capabilities=[["gpu"]]), n
    ids = [x.strip() for x in spec.split(",") if x.strip()]
    if not ids or not all(x.isdigit() and int(x) < gpus_here for x in ids):
        raise StackError(f"GPUS={spec!r}: expected 'all', a count, or GPU ids below {gpus_here} like 0,1")
    return docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]]), len(ids)


def suite_command(tier: str, not_run: dict[str, str], gpus: int | None, asked: str | None = None) -> list[str]:
    cmd = ["python3", SUITE, "--tier", tier, "--out", MOUNT, "--labels", f"{MOUNT}/labels.json",
           "--asked", asked or f"{tier}, the default here"]
    for t, why in not_run.items():
        cmd += ["--not-run", f"{t}={why}"]
    if gpus:
        cmd += ["--gpus", str(gpus)]
    return cmd


def outcome(code: int, asked: str | None, not_run: dict[str, str]) -> tuple[int, str]:
    """The command's exit status and verdict from the suite's: a tier the user asked for (TIER=) that
    this host cannot run is never a pass, whatever ran below it (EXIT_NOT_RUN)."""
    if code == EXIT_OK and asked is not None and not_run:
        code = EXIT_NOT_RUN
    if code == EXIT_OK:
        return code, "passed (skips listed above)" + (f"; tier {', '.join(not_run)} not run here, as said above"
                                                      if not_run else "")
    if code == EXIT_FAILED:
        return code, "FAILED: see the table above"
    if code == EXIT_NOT_RUN:
        what = ", ".join(not_run) or asked
        return code, f"NOT RUN (exit 6): tier {what} was asked for and could not run; what ran below it passed"
    return code, f"exit {code}"


def run(image: str, *, tier: str | None, gpus: str | None, out_dir: Path, out=print) -> int:
    from . import image as image_mod

    labels = image_mod.inspect_labels(image)  # says so for a missing image or a foreign one
    n_here, why = host_gpus()
    run_tier, not_run = plan_tiers(tier, n_here, why)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.md", "junit.xml", "results.jsonl"):
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2, sort_keys=True))
    kwargs: dict = dict(network_mode="none", detach=True,
                        volumes={str(out_dir.resolve()): {"bind": MOUNT, "mode": "rw"}})
    n_gpus = None
    if run_tier != "static":
        req, n_gpus = device_request(gpus, n_here)
        kwargs.update(device_requests=[req], ipc_mode="host", shm_size="16g",
                      ulimits=[__import__("docker").types.Ulimit(name="memlock", soft=-1, hard=-1)])
    cmd = suite_command(run_tier, not_run, n_gpus, asked=tier)
    out(f"image-test: {image}: tier {run_tier}" + (f" on {n_gpus} GPU(s)" if n_gpus else "")
        + "".join(f"; tier {t} NOT RUN: {w}" for t, w in not_run.items()))
    out(f"image-test: docker run --network none {'--gpus ' + (gpus or 'all') + ' ' if n_gpus else ''}"
        f"-v {out_dir.resolve()}:{MOUNT} {image} {shlex.join(cmd)}")
    c = image_mod.client()
    ctr = c.containers.run(image, cmd, **kwargs)
    try:
        for chunk in ctr.logs(stream=True, follow=True):
            out(chunk.decode("utf-8", "replace").rstrip("\n"))
        code = ctr.wait()["StatusCode"]
    finally:
        ctr.remove(force=True)
    if not (out_dir / "results.md").exists():
        raise StackError(f"the suite wrote no results (exit {code}): see its output above",
                         hint="an image built before `make image-test` existed has no suite at "
                              f"{SUITE}: rebuild it with make image")
    code, verdict = outcome(code, tier, not_run)
    out(f"image-test: {verdict}; results in {out_dir}/results.md and {out_dir}/junit.xml")
    return code
