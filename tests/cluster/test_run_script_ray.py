"""The Gemma4 run script with its own Ray (no RAY_ADDRESS), for real.

The slime `gemma4` series' scripts/run-gemma4-31B.sh (materialised from the patches) runs in the
Slurm test image (Ray at the image's pin, from hash-pinned wheels) in a container with no network,
with a stand-in train.py beside it. Checked: the private Ray head starts with token
authentication and answers, the job runs and the script's exit status is the job's, the dashboard
listens on 127.0.0.1 only, and when the script has exited no Ray process is left.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "gemma4"))

import slurm_cluster  # noqa: E402

FAKE_TRAIN = textwrap.dedent('''
    """Stand-in for slime's train.py: records what it was given and what listens, exits as told."""
    import json, socket, sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    listening = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A":  # LISTEN
            ip, port = f[1].split(":")
            listening.append([socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)])
    (here / "train-result.json").write_text(json.dumps({"argv": sys.argv[1:], "listening": listening}))
    sys.exit(int((here / "exit-code").read_text()))
''')

DASHBOARD = 8290


@pytest.fixture(scope="module")
def image():
    why = slurm_cluster.why_not_available()
    if why:
        pytest.skip(why)
    return slurm_cluster.build_image()


def _run(image, tmp_path, exit_code: int):
    import g4util  # the slime run scripts, materialised from the patches

    work = tmp_path / "w"
    slime = work / "slime"
    shutil.copytree(g4util.MATERIALISED / "scripts", slime / "scripts")
    (slime / "train.py").write_text(FAKE_TRAIN)
    (slime / "exit-code").write_text(str(exit_code))
    (work / "ckpt").mkdir()
    (work / "ckpt" / "config.json").write_text("{}")
    (work / "data" / "gsm8k").mkdir(parents=True)
    for name in ("train", "test"):
        (work / "data" / "gsm8k" / f"{name}.jsonl").write_text("{}\n")
    inner = ("HF_CHECKPOINT=/w/ckpt DATA_DIR=/w/data SAVE_DIR=/w/save MEGATRON_DIR=/w GPUS_PER_NODE=2 "
             f"RAY_PORT=6390 RAY_DASHBOARD_PORT={DASHBOARD} bash /w/slime/scripts/run-gemma4-31B.sh; rc=$?; "
             "sleep 2; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done > /w/after.txt; "
             "exit $rc")
    res = slurm_cluster.docker("run", "--rm", "--network", "none", "--shm-size=1g", "-v", f"{work}:/w",
                               image, "bash", "-c", inner, check=False, timeout=600)
    return res, work


def test_the_private_ray_runs_the_job_on_loopback_and_leaves_nothing(image, tmp_path):
    res, work = _run(image, tmp_path, 0)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Ray ready after" in res.stderr
    got = json.loads((work / "slime" / "train-result.json").read_text())
    assert "--loss-mask-type" in got["argv"] and "gemma4" in got["argv"]
    dashboard = [ip for ip, port in got["listening"] if port == DASHBOARD]
    assert dashboard and set(dashboard) == {"127.0.0.1"}, got["listening"]
    left = [line for line in (work / "after.txt").read_text().splitlines()
            if line.strip() and ("ray" in line or "raylet" in line or "gcs_server" in line)]
    assert not left, left
    assert "stopping the Ray head this script started" in res.stderr
    assert not list((work).glob("gemma4-run.*"))  # nothing left in the shared folder either


def test_a_failing_job_fails_the_script(image, tmp_path):
    res, work = _run(image, tmp_path, 3)
    assert res.returncode != 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (work / "slime" / "train-result.json").is_file()  # the job ran, and failed
    left = [line for line in (work / "after.txt").read_text().splitlines()
            if line.strip() and ("raylet" in line or "gcs_server" in line)]
    assert not left, left
