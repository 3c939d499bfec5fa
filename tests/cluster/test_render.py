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
    text = render.render_slurm(render.load_values(f, ["slurm.account=proj-1"], image="reg/x:1"))
    block = text[text.index(render.BEGIN):text.index(render.END)]
    for line in ("#SBATCH --nodes=16", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=h200",
                 "#SBATCH --account=proj-1", ': "${IMAGE=reg/x:1}"', ': "${RAY_PORT_BASE=30000}"',
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
    assert render.main(["slurm", "--image", "reg/x:1", "--out", str(tmp_path / "g.sbatch")]) == 0
    assert ': "${IMAGE=reg/x:1}"' in (tmp_path / "g.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(tmp_path / "g.sbatch")]).returncode == 0
    assert render.main(["k8s", "--image", "reg/x:1", "--out", str(tmp_path / "k8s")]) == 0
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == ["pvc.yaml", "raycluster.yaml", "rayjob.yaml"]
    assert render.main(["k8s", "--out", str(tmp_path / "none")]) == 2
    assert "no image" in capsys.readouterr().err and not (tmp_path / "none" / "rayjob.yaml").exists()
