"""cluster/render.py and the values: one place for every knob and for Ray's version, errors that
say what to fix, and the committed batch script in step with both."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "cluster"))

import render  # noqa: E402


def test_the_committed_batch_script_is_what_the_values_and_the_dockerfile_give():
    """cluster/slurm/gemma4.sbatch runs as committed: its generated block must be current
    (`python cluster/render.py slurm --update-template` rewrites it)."""
    committed = render.TEMPLATE.read_text()
    assert render.render_slurm(render.load_values(), committed) == committed


def test_rays_version_is_the_dockerfiles_everywhere():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    (pin,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    assert render.ray_version() == pin
    assert f': "${{RAY_VERSION={pin}}}"' in render.TEMPLATE.read_text()
    assert '"ray[default]==${RAY_VERSION}"' in dockerfile
    # the Slurm test image installs the same Ray
    lock = (HERE / "image" / "ray-requirements.txt").read_text()
    assert re.search(rf"^ray=={re.escape(pin)} --hash=sha256:[0-9a-f]{{64}}$", lock, re.M)
    # every wheel of the test image pinned by version and sha256
    reqs = [line for line in lock.splitlines() if line and not line.startswith("#")]
    assert reqs and all(re.fullmatch(r"[a-z0-9.-]+==\S+ --hash=sha256:[0-9a-f]{64}", r) for r in reqs)


def test_sbatch_lines_and_defaults_follow_the_values(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('nodes = 16\ngpus_per_node = 4\nmodel_script = "/root/slime/scripts/run-gemma4-26B-A4B.sh"\n'
                 '[slurm]\npartition = "h200"\nexclusive = false\nray_port_base = 30000\n')
    text = render.render_slurm(render.load_values(f, ["slurm.account=proj-1"], image="reg.example.com/x:1"))
    block = text[text.index(render.BEGIN):text.index(render.END)]
    for line in ("#SBATCH --nodes=16", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=h200",
                 "#SBATCH --account=proj-1", ': "${IMAGE=reg.example.com#x:1}"', ': "${RAY_PORT_BASE=30000}"',
                 ': "${MODEL_SCRIPT=/root/slime/scripts/run-gemma4-26B-A4B.sh}"', ': "${GPUS_PER_NODE=4}"'):
        assert line in block.splitlines(), line
    assert "--exclusive" not in block
    # the rest of the script is the template's, unchanged
    assert text.replace(block, "") == render.TEMPLATE.read_text().replace(
        render.TEMPLATE.read_text()[render.TEMPLATE.read_text().index(render.BEGIN):
                                    render.TEMPLATE.read_text().index(render.END)], "")


def test_a_value_with_shell_characters_stays_one_value(tmp_path):
    v = render.load_values(overrides=['slurm.container_mounts=/a b:/c,$HOME/"x":/y`id`'])
    block = render.slurm_block(v)
    line = next(x for x in block.splitlines() if x.startswith(': "${CONTAINER_MOUNTS='))
    out = subprocess.run(["bash", "-c", f"unset CONTAINER_MOUNTS; {line}; printf %s \"$CONTAINER_MOUNTS\""],
                         capture_output=True, text=True)
    assert out.stdout == '/a b:/c,$HOME/"x":/y`id`'


@pytest.mark.parametrize("sets, message", [
    (["gpus=8"], "unknown key 'gpus'"),
    (["nodes=two"], "nodes=two': 'two' is not a int"),
    (["nodes=0"], "nodes must be at least 1"),
    (["slurm.exclusive=1"], "slurm.exclusive must be bool"),
    (["k8s.gcs_port=true"], "k8s.gcs_port must be int"),
    (["nodes"], "expected KEY=VALUE"),
])
def test_bad_values_are_refused_with_the_key_and_what_it_should_be(sets, message):
    with pytest.raises(render.ValuesError) as e:
        render.load_values(overrides=sets)
    assert message in str(e.value)


def test_a_values_file_with_an_unknown_key_names_the_file(tmp_path):
    f = tmp_path / "v.toml"
    f.write_text("[slurm]\nray_port = 1\n")
    with pytest.raises(render.ValuesError, match=rf"{re.escape(str(f))}: unknown key 'slurm.ray_port'"):
        render.load_values(f)


def test_the_command_line_writes_both_and_exits_2_on_bad_input(tmp_path, capsys):
    assert render.main(["slurm", "--image", "reg.example.com/x:1", "--out", str(tmp_path / "g.sbatch")]) == 0
    assert ': "${IMAGE=reg.example.com#x:1}"' in (tmp_path / "g.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(tmp_path / "g.sbatch")]).returncode == 0
    assert render.main(["k8s", "--image", "reg.example.com/x:1", "--out", str(tmp_path / "k8s")]) == 0
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == ["pvc.yaml", "raycluster.yaml", "rayjob.yaml"]
    assert '"reg.example.com/x:1"' in (tmp_path / "k8s" / "rayjob.yaml").read_text()
    assert "warning" not in capsys.readouterr().err
    assert render.main(["k8s", "--out", str(tmp_path / "none")]) == 2
    assert "no image" in capsys.readouterr().err and not (tmp_path / "none" / "rayjob.yaml").exists()


# ------------------------------------------------------------------ the image's name for pyxis and Kubernetes

# pyxis takes [USER@][REGISTRY#]IMAGE[:TAG] or a squashfs path (one starting with / or .) and hands
# anything else to enroot as docker://<image>, which asks Docker Hub unless REGISTRY# is given.
DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize("given, pyxis", [
    ("registry.example.com/gemma4-stack:t1", "registry.example.com#gemma4-stack:t1"),
    ("registry.example.com/team/gemma4-stack:t1", "registry.example.com#team/gemma4-stack:t1"),
    ("registry.example.com:5000/team/gemma4-stack:t1", "registry.example.com:5000#team/gemma4-stack:t1"),
    ("localhost/gemma4-stack:t1", "localhost#gemma4-stack:t1"),
    ("alice@registry.example.com/team/gemma4-stack:t1", "alice@registry.example.com#team/gemma4-stack:t1"),
    (f"registry.example.com/gemma4-stack@{DIGEST}", f"registry.example.com#gemma4-stack@{DIGEST}"),
    # already pyxis's: unchanged
    ("registry.example.com#team/gemma4-stack:t1", "registry.example.com#team/gemma4-stack:t1"),
    ("/shared/gemma4.sqsh", "/shared/gemma4.sqsh"),
    ("./gemma4.sqsh", "./gemma4.sqsh"),
    ("dockerd://gemma4-stack:t1", "dockerd://gemma4-stack:t1"),
    ("", ""),
])
def test_pyxis_gets_the_registry_in_its_own_form(given, pyxis):
    assert render.pyxis_image(given) == pyxis
    v = render.load_values(image=given)
    assert f': "${{IMAGE={pyxis}}}"' in render.slurm_block(v).splitlines()


@pytest.mark.parametrize("name", ["gemma4-stack:slime-3cdec0cc_megatron-3714d81d_sglang-v0.5.9_gemma4-1_s0123456789ab",
                                  "gemma4-stack", "team/gemma4-stack:t1", f"gemma4-stack@{DIGEST}"])
def test_a_name_pyxis_would_look_up_on_docker_hub_is_refused_unless_allowed(name, tmp_path, capsys):
    with pytest.raises(render.ValuesError) as e:
        render.render_slurm(render.load_values(image=name))
    message = str(e.value)
    assert "\n" not in message and "Docker Hub" in message
    for form in ("registry.example.com/team/gemma4-stack:<tag>", "registry.example.com#team/gemma4-stack:<tag>",
                 "enroot import -o /shared/gemma4.sqsh dockerd://<tag>", "slurm.allow_docker_hub"):
        assert form in message, form
    # the command line: exit 2, the one line on stderr, no script written
    out = tmp_path / "g.sbatch"
    assert render.main(["slurm", "--image", name, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Docker Hub" in err and not out.exists()
    # allowed: passed on as it is, and the script's own check is told so
    v = render.load_values(overrides=["slurm.allow_docker_hub=true"], image=name)
    block = render.slurm_block(v).splitlines()
    assert f': "${{IMAGE={name}}}"' in block and ': "${ALLOW_DOCKER_HUB=1}"' in block


def test_a_scheme_other_than_dockerd_is_refused():
    with pytest.raises(render.ValuesError, match="without a scheme"):
        render.pyxis_image("docker://registry.example.com/gemma4-stack:t1")


def _sbatch_until_the_image_check(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The batch script run by bash outside Slurm, stopped right after its IMAGE check: SHARED_DIR
    does not exist, so a script that accepts the image dies on that next check instead."""
    base = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SHARED_DIR": str(tmp_path / "absent")}
    return subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("image, allow, accepted", [
    ("gemma4-stack:t1", None, False),
    ("registry.example.com/team/gemma4-stack:t1", None, False),  # pyxis would ask Docker Hub for it
    ("registry.example.com#team/gemma4-stack:t1", None, True),
    ("/shared/gemma4.sqsh", None, True),
    ("gemma4-stack:t1", "1", True),
])
def test_the_committed_script_checks_an_image_given_at_submission(image, allow, accepted, tmp_path):
    env = {"IMAGE": image, **({"ALLOW_DOCKER_HUB": allow} if allow else {})}
    res = _sbatch_until_the_image_check(render.TEMPLATE, tmp_path, **env)
    assert res.returncode == 1, res.stderr
    refused = "names no registry, so pyxis would look for it on Docker Hub" in res.stderr
    assert refused != accepted, res.stderr
    if accepted:
        assert "SHARED_DIR=" in res.stderr and "is not a directory" in res.stderr, res.stderr
    else:
        assert "registry.example.com#team/gemma4-stack:<tag>" in res.stderr and "enroot import" in res.stderr


def test_a_script_written_with_docker_hub_allowed_runs_past_its_image_check(tmp_path):
    v = render.load_values(overrides=["slurm.allow_docker_hub=true"], image="gemma4-stack:t1")
    script = tmp_path / "g.sbatch"
    script.write_text(render.render_slurm(v))
    res = _sbatch_until_the_image_check(script, tmp_path)
    assert res.returncode == 1 and "is not a directory" in res.stderr and "Docker Hub" not in res.stderr, res.stderr


@pytest.mark.parametrize("image", ["registry.example.com#team/gemma4-stack:t1", "/shared/gemma4.sqsh",
                                   "dockerd://gemma4-stack:t1"])
def test_kubernetes_refuses_the_pyxis_only_forms(image):
    with pytest.raises(render.ValuesError, match="Kubernetes pulls a registry reference"):
        render.render_k8s(render.load_values(image=image))


def test_kubernetes_warns_about_an_image_without_a_registry(tmp_path, capsys):
    assert render.main(["k8s", "--image", "gemma4-stack:t1", "--out", str(tmp_path / "k8s")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "Docker Hub" in err and "IfNotPresent" in err
    job = (tmp_path / "k8s" / "rayjob.yaml").read_text()
    assert '"gemma4-stack:t1"' in job and 'imagePullPolicy: "IfNotPresent"' in job
    assert render.k8s_image_note("registry.example.com/team/gemma4-stack:t1") is None
    assert render.k8s_image_note("localhost:5000/gemma4-stack:t1") is None
