"""cluster/slurm/gemma4.sbatch on a real two-node Slurm (Debian's slurm-wlm in Docker containers on
an internal network, tests/cluster/slurm_cluster.py), with Ray from PyPI, fake GPUs through GRES and
a CPU stand-in for the run script (fake_run.sh: `ray job submit` of one task per node-sized GPU
bundle). pyxis is stood in for by a SPANK plugin that makes srun accept its flags and records them:
image import, mounts and GPUs inside enroot containers are not exercised here.

Skipped with the reason where there is no Docker engine or no debootstrap."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "cluster"))

import render  # noqa: E402
import slurm_cluster  # noqa: E402

IMAGE = "registry.example.org/team/gemma4-stack:test"
PYXIS_IMAGE = "registry.example.org#team/gemma4-stack:test"  # what `make slurm-script` gives pyxis
SHARED = slurm_cluster.SHARED
# What the tests change from cluster/values.toml: nodes shared by two jobs, a short start time,
# the containers' 2 GiB /dev/shm, a small object store (the nodes have 2 cores and little memory).
TEST_VALUES = ["slurm.exclusive=false", "slurm.time=", "slurm.ray_start_timeout=240", "slurm.shm_min_gib=1",
               "slurm.ray_start_args=--object-store-memory=100000000"]


@pytest.fixture(scope="module")
def cluster():
    why = slurm_cluster.why_not_available()
    if why:
        pytest.skip(why)
    tag = slurm_cluster.build_image(out=lambda line: print(line, flush=True))
    c = slurm_cluster.Cluster(tag).start()
    for f in ("fake_run.sh", "fake_train.py"):
        shutil.copyfile(HERE / f, c.shared / f)
    (c.shared / "models" / "gemma-4-31B-it").mkdir(parents=True)
    (c.shared / "data").mkdir()
    try:
        yield c
    finally:
        c.stop()


def script(c, name: str, *sets: str) -> str:
    """The project's batch script as `make slurm-script` writes it, with the test's values."""
    v = render.load_values(overrides=[*TEST_VALUES, *sets], image=IMAGE)
    (c.shared / name).write_text(render.render_slurm(v))
    return f"{SHARED}/{name}"


def submit(c, path: str, **env: str) -> int:
    return c.sbatch(path, env={"MODEL_SCRIPT": f"{SHARED}/fake_run.sh", **env})


def wait_for(pred, what: str, timeout: float = 240, job=None, c=None):
    """Poll `pred` until it is true; with a job, give up as soon as that job has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if job is not None and c.job(job)["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING"):
            raise AssertionError(f"job {job} ended ({c.job(job)['JobState']}) before {what}\n{c.output(job)}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{c.output(job)}" if job else ""))


def assert_nothing_left(c) -> None:
    """No process of any job on either node, once Slurm has finished the steps."""
    for node in ("n1", "n2"):
        left = []

        def clean() -> bool:
            left[:] = c.processes(node)
            return not left

        try:
            wait_for(clean, f"the job's processes on {node} to end", timeout=60)
        except AssertionError:
            raise AssertionError(f"processes left on {node}: {left}") from None


def records(c, job: int) -> list[str]:
    f = c.shared / "pyxis-record" / f"{job}.steps"
    return f.read_text().splitlines() if f.exists() else []


def in_container(c, node: str, code: str, env: dict[str, str] | None = None, timeout: float = 90):
    return c.exec(node, "timeout", str(int(timeout)), "python3", "-c", code, check=False, env=env, timeout=timeout + 30)


HTTP = """import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]} if len(sys.argv) > 2 else {})
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError as e:
    print("unreachable", e)
"""


def http(c, node: str, url: str, token: str | None = None) -> str:
    args = ["timeout", "60", "python3", "-c", HTTP, url] + ([token] if token else [])
    return c.exec(node, *args, check=False).stdout.strip()


def run_job(c, name: str, **env) -> tuple[int, dict[str, str], str]:
    """The project's sbatch script (as `name`) submitted with env, waited for: id, state, output."""
    job = submit(c, script(c, name), **env)
    return job, c.wait(job), c.output(job)


def test_a_run_completes_on_both_nodes_with_the_dashboard_on_loopback_and_a_token(cluster):
    c = cluster
    path = script(c, "run.sbatch")
    hold = f"{SHARED}/hold-run"
    job = submit(c, path, FAKE_HOLD=hold)
    # The driver is waiting: the Ray cluster is up. Probe it from the outside.
    wait_for(lambda: (c.shared / "hold-run.waiting").exists(), "the run script to start", job=job, c=c)
    env = dict(line.split("=", 1) for line in (c.shared / "checkpoints" / "gemma4-31B" / f"driver-env-{job}.txt")
               .read_text().splitlines())
    head_ip, n2_ip = c.ip("n1"), c.ip("n2")
    dash = int(re.fullmatch(r"http://127\.0\.0\.1:(\d+)", env["RAY_ADDRESS"]).group(1))
    gcs = dash - 1
    assert env["MASTER_ADDR"] == head_ip and env["NUM_NODES"] == "2" and env["GPUS_PER_NODE"] == "8"
    assert env["HF_CHECKPOINT"] == f"{SHARED}/models/gemma-4-31B-it" and env["RAY_AUTH_MODE"] == "token"
    # ports offset by the job id: slot = job id % 25, 500 ports each from 20000
    assert gcs == 20000 + (job % 25) * 500 and env["MASTER_PORT"] == str(gcs + 9)
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token_file.parent == Path(SHARED) / f"gemma4-job-{job}"
    host_token = c.shared / token_file.relative_to(SHARED)
    assert oct(host_token.stat().st_mode & 0o777) == "0o600"
    token = host_token.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)

    # The dashboard answers on 127.0.0.1 only, and there only with the token.
    assert http(c, "n1", f"http://127.0.0.1:{dash}/api/version", token) == "200"
    assert http(c, "n1", f"http://127.0.0.1:{dash}/api/version") == "401"
    assert http(c, "n1", f"http://127.0.0.1:{dash}/api/version", "0" * 64) == "403"  # another token
    for node in ("n1", "n2"):
        got = http(c, node, f"http://{head_ip}:{dash}/api/version", token)
        assert got.startswith("unreachable") and "refused" in got, (node, got)
    # A Ray client without the token (or with another) is refused by the GCS; with it, it connects.
    connect = f"import ray; ray.init(address='{head_ip}:{gcs}'); print('CONNECTED', len(ray.nodes()))"
    for node, env_ in (("n2", {}), ("n2", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})):
        p = in_container(c, node, connect, env=env_)
        assert "CONNECTED" not in p.stdout and p.returncode != 0, (env_, p.stdout, p.stderr[-1500:])
    p = in_container(c, "n2", connect, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    assert "CONNECTED 2" in p.stdout, p.stderr[-2000:]

    (c.shared / "hold-run").touch()
    info = c.wait(job)
    out = c.output(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), out
    result = json.loads((c.shared / "checkpoints" / "gemma4-31B" / f"result-{job}.json").read_text())
    assert sorted(t["host"] for t in result["tasks"]) == ["n1", "n2"]
    assert {t["ip"] for t in result["tasks"]} == {head_ip, n2_ip}
    assert all(sorted(t["gpus"]) == [str(i) for i in range(8)] for t in result["tasks"])
    for log in ("ray-head.log", "ray-worker-n2.log"):
        assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in (c.shared / f"gemma4-job-{job}" / log).read_text(), log
    assert result["cluster"]["GPU"] == 16
    # every step went through pyxis's flags: the image, the shared folder and /dev/shm mounted
    steps = records(c, job)
    mounts = f"--container-mounts={SHARED}:{SHARED},/dev/shm:/dev/shm"
    assert {line.split()[0] for line in steps} == {"host=n1", "host=n2"}
    assert all(f"--container-image={PYXIS_IMAGE} " in line and mounts in line and f"--container-name=gemma4-{job}" in line
               for line in steps), steps
    assert not host_token.exists(), "the token outlives its job"
    assert "Ray is ready: 2 nodes, 16 GPUs" in out
    # teardown: Ray's steps got SIGTERM and ended within the time-out, nothing had to be forced
    # (the two background steps reach slurmctld in either order, and a readiness probe may come
    # between them: which ids they get is not fixed, their names and the workers' node are)
    stopped = re.search(r"stopping the Ray steps \(SIGTERM to steps ([\w.= -]+)\)", out)
    assert stopped, out
    named = {name: step for step, name in (s.split("=") for s in stopped.group(1).split())}
    assert set(named) == {"gemma4-ray-head", "gemma4-ray-workers"}, out
    on_n2 = {line.split()[1].removeprefix("step=") for line in steps if line.startswith("host=n2 ")}
    assert on_n2 == {named["gemma4-ray-workers"].removeprefix(f"{job}.")}, (on_n2, out)
    assert named["gemma4-ray-head"].startswith(f"{job}.") and named["gemma4-ray-head"] != named["gemma4-ray-workers"], out
    assert "did not end within" not in out, out
    assert_nothing_left(c)


def test_a_failing_run_script_fails_the_job_with_its_exit_code(cluster):
    """Also the head's address from an interface (HEAD_IFACE), as on nodes with several networks."""
    c = cluster
    job, info, out = run_job(c, "fail.sbatch", FAKE_EXIT="7", HEAD_IFACE="eth0")
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "7:0"), out
    assert "the run script exited with 7" in out
    assert f"head n1 at {c.ip('n1')} (from interface eth0)" in out
    env = (c.shared / "checkpoints" / "gemma4-31B" / f"driver-env-{job}.txt").read_text()
    assert f"MASTER_ADDR={c.ip('n1')}\n" in env
    assert_nothing_left(c)


def test_a_head_that_cannot_start_fails_the_job_and_the_run_script_never_runs(cluster):
    c = cluster
    job, info, out = run_job(c, "nohead.sbatch", RAY_HEAD_ARGS="--num-gpus=eight")
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "1:0"), out
    assert re.search(r"ERROR: the Ray head step ended \(exit [1-9]\d*\) before Ray was ready", out), out
    assert "running bash" not in out
    assert not (c.shared / "checkpoints" / "gemma4-31B" / f"driver-env-{job}.txt").exists()
    assert_nothing_left(c)


def test_an_image_with_another_ray_version_fails_the_job(cluster):
    c = cluster
    job, info, out = run_job(c, "version.sbatch", RAY_VERSION="2.0.0")
    assert info["JobState"] == "FAILED", out
    assert "this script is pinned to 2.0.0" in out and "has Ray " + render.ray_version() in out, out
    assert_nothing_left(c)


def test_a_cancelled_job_leaves_nothing_running(cluster):
    c = cluster
    job = submit(c, script(c, "cancel.sbatch"), FAKE_HOLD=f"{SHARED}/hold-cancel")
    wait_for(lambda: (c.shared / "hold-cancel.waiting").exists(), "the run script to start", job=job, c=c)
    c.exec("n1", "scancel", str(job))
    info = c.wait(job, timeout=120)
    assert info["JobState"] == "CANCELLED", c.output(job)
    assert_nothing_left(c)


def test_a_loopback_head_address_is_refused_before_anything_starts(cluster):
    c = cluster
    job, info, out = run_job(c, "loop.sbatch", HEAD_IP="127.0.0.1")
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "1:0"), out
    assert "127.0.0.1, a loopback address other nodes cannot reach: set HEAD_IP" in out
    assert records(c, job) == []


def test_two_jobs_at_once_on_the_same_nodes_do_not_collide(cluster):
    c = cluster
    path = script(c, "half.sbatch", "gpus_per_node=4")
    # The second job is submitted once the first one's cluster is up (two Ray clusters starting at
    # once on two cores can miss Ray's own 30 s start-up limit); then both clusters are up at the
    # same time, on the same two nodes, until both run scripts are released.
    jobs = []
    for name in ("hold-a", "hold-b"):
        jobs.append(submit(c, path, FAKE_HOLD=f"{SHARED}/{name}"))
        wait_for(lambda: (c.shared / f"{name}.waiting").exists(), f"run script {name} to start", timeout=300,
                 job=jobs[-1], c=c)
    assert all(c.job(j)["JobState"] == "RUNNING" and c.job(j)["NodeList"] == "n[1-2]" for j in jobs)
    for name in ("hold-a", "hold-b"):
        (c.shared / name).touch()
    for j in jobs:
        info = c.wait(j)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), c.output(j)
    results = [json.loads((c.shared / "checkpoints" / "gemma4-31B" / f"result-{j}.json").read_text()) for j in jobs]
    for r in results:  # each run saw its own cluster: 2 nodes x 4 GPUs, not the other job's
        assert r["cluster"]["GPU"] == 8 and sorted(t["host"] for t in r["tasks"]) == ["n1", "n2"]
        assert all(len(t["gpus"]) == 4 for t in r["tasks"])
    # Slurm gave each job its own four GPUs of a node, and Ray handed out those: on each node the
    # two jobs' tasks got disjoint devices, together all eight
    gpus = [{t["host"]: set(t["gpus"]) for t in r["tasks"]} for r in results]
    for node in ("n1", "n2"):
        assert not gpus[0][node] & gpus[1][node] and gpus[0][node] | gpus[1][node] == {str(i) for i in range(8)}, gpus
    for j in jobs:  # the steps saw Slurm's allocation (pyxis passes it into the container)
        for log in ("ray-head.log", "ray-worker-n2.log"):
            seen = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", (c.shared / f"gemma4-job-{j}" / log).read_text())
            assert seen and len(seen.group(1).split(",")) == 4, (j, log)
    envs = [(c.shared / "checkpoints" / "gemma4-31B" / f"driver-env-{j}.txt").read_text() for j in jobs]
    ports = [re.search(r"RAY_ADDRESS=http://127.0.0.1:(\d+)", e).group(1) for e in envs]
    assert ports[0] != ports[1]
    assert_nothing_left(c)


def test_the_test_plugin_records_only_the_flags_a_step_was_given(cluster):
    """The pyxis stand-in itself: a step without container flags leaves no record, one with them a
    line with exactly those flags, on the node it ran on."""
    c = cluster
    p = c.exec("n1", "sbatch", "--parsable", "-N", "2", "--wrap",
               "srun -N1 -n1 -w n2 true && srun -N1 -n1 -w n2 --container-image=x:1 --container-writable true")
    job = int(p.stdout.strip())
    info = c.wait(job, timeout=60)
    assert info["JobState"] == "COMPLETED"
    assert records(c, job) == ["host=n2 step=1 --container-image=x:1 --container-writable"]
