"""The Gemma4 RL run scripts (slime `gemma4` series: scripts/run-gemma4-31B.sh,
scripts/run-gemma4-26B-A4B.sh and scripts/gemma4/launch.sh).

Everywhere (the scripts are materialised from the patches): shellcheck, the dry run prints the
commands, no broad kill, every service on 127.0.0.1 and Ray with token authentication, knobs
that are wrong are named. On the patched pinned trees (tests/test_gemma4_pinned.py): the printed
train.py command parses with slime's and Megatron's parsers, every flag accepted, and the
topology suits the checkpoint (the provider's own check).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import g4util

SCRIPTS = ("run-gemma4-31B.sh", "run-gemma4-26B-A4B.sh")
MODES = ("colocate", "disaggregate")


def _tree() -> Path:
    import slime_plugins.models.gemma4 as pkg

    tree = Path(pkg.__file__).resolve().parents[3]
    if not (tree / "scripts" / "gemma4" / "launch.sh").is_file():
        pytest.skip(f"no run scripts in {tree}")
    return tree


def dry_run(script: str, **env) -> subprocess.CompletedProcess:
    tree = _tree()
    full = dict(os.environ, DRY_RUN="1", **env)
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "MODE"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(["bash", str(tree / "scripts" / script)], env=full, capture_output=True, text=True,
                          timeout=60)


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def train_args(cmds: list[list[str]]) -> list[str]:
    (submit,) = [c for c in cmds if c[:3] == ["ray", "job", "submit"]]
    rest = submit[submit.index("--") + 1:]
    assert rest[0] == "python3" and rest[1].endswith("/train.py"), rest[:2]
    return rest[2:]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_scripts_pass_shellcheck():
    tree = _tree()
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck; .ci/run installs it)")
    files = [tree / "scripts" / s for s in SCRIPTS] + [tree / "scripts" / "gemma4" / "launch.sh"]
    res = subprocess.run(["shellcheck", "-x", *map(str, files)], cwd=tree / "scripts", capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_prints_a_private_ray_head_on_loopback_and_the_job(script, mode):
    res = dry_run(script, MODE=mode)
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert [c[:3] for c in cmds] == [["ray", "start", "--head"], ["ray", "job", "submit"]], res.stdout
    head = cmds[0]
    assert "--block" in head  # the script ends it by its PID, which takes its node's processes down
    assert flag(head, "--dashboard-host") == "127.0.0.1" and flag(head, "--node-ip-address") == "127.0.0.1"
    submit = cmds[1]
    assert flag(submit, "--address") == f"http://127.0.0.1:{flag(head, '--dashboard-port')}"
    args = train_args(cmds)
    assert flag(args, "--loss-mask-type") == "gemma4" and flag(args, "--megatron-to-hf-mode") == "raw"
    assert flag(args, "--rm-type") == "math"
    # slime's raw mode asserts on a run with neither: --load (the save folder) resumes a run that
    # saved a Megatron checkpoint, else slime loads --ref-load, the HF checkpoint, directly
    assert flag(args, "--ref-load") == flag(args, "--hf-checkpoint")
    assert flag(args, "--load") == flag(args, "--save")
    moe = "26B" in script
    assert ("--use-rollout-routing-replay" in args) == moe
    gpus = 8
    if mode == "colocate":
        assert "--colocate" in args and flag(args, "--actor-num-gpus-per-node") == str(gpus)
    else:
        actor, rollout = int(flag(args, "--actor-num-gpus-per-node")), int(flag(args, "--rollout-num-gpus"))
        assert "--colocate" not in args and actor + rollout == gpus
        assert rollout % int(flag(args, "--rollout-num-gpus-per-engine")) == 0


def test_no_broad_kill_and_no_service_beyond_loopback():
    tree = _tree()
    for path in [tree / "scripts" / s for s in SCRIPTS] + [tree / "scripts" / "gemma4" / "launch.sh"]:
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert not re.search(r"\b(pkill|killall)\b", code), path
        assert not re.search(r"\bray\s+stop\b", code), path
        assert "0.0.0.0" not in code, path
        for kill in re.findall(r"\bkill\b[^\n;|&]*", code):
            if "-0 " in kill:
                continue  # a liveness probe
            assert "RAY_HEAD_PID" in kill, f"{path.name}: '{kill}' ends something the script did not start"


def test_two_runs_on_one_node_get_different_ports_and_ray_uses_a_token():
    a, b = (commands(dry_run("run-gemma4-31B.sh").stdout)[0] for _ in range(2))
    assert flag(a, "--port") != flag(b, "--port") and flag(a, "--dashboard-port") != flag(b, "--dashboard-port")
    launch = (_tree() / "scripts" / "gemma4" / "launch.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in launch and "umask 077" in launch


def test_an_existing_cluster_is_used_and_not_started():
    res = dry_run("run-gemma4-26B-A4B.sh", RAY_ADDRESS="http://10.1.2.3:8265", RAY_AUTH_TOKEN_PATH="/shared/token")
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert [c[:3] for c in cmds] == [["ray", "job", "submit"]]
    assert flag(cmds[0], "--address") == "http://10.1.2.3:8265"
    res = dry_run("run-gemma4-26B-A4B.sh", RAY_ADDRESS="http://10.1.2.3:8265")
    assert res.returncode != 0 and "RAY_AUTH_TOKEN_PATH" in res.stderr


@pytest.mark.parametrize("env, named", [
    (dict(MODE="both"), "MODE=both"),
    (dict(GPUS_PER_NODE="eight"), "GPUS_PER_NODE=eight"),
    (dict(MODE="disaggregate", ACTOR_GPUS="8"), "ACTOR_GPUS=8"),
    (dict(WANDB="yes"), "WANDB=yes"),
    (dict(PROMPT_LEN="0"), "PROMPT_LEN=0"),
    (dict(SWA_RATIO="0"), "SWA_RATIO=0"),
    (dict(SWA_RATIO="1.5"), "SWA_RATIO=1.5"),
])
def test_a_wrong_knob_is_named(env, named):
    res = dry_run("run-gemma4-31B.sh", **env)
    assert res.returncode == 2 and named in res.stderr, res.stderr
    assert not commands(res.stdout)


def test_a_real_run_names_a_missing_checkpoint(tmp_path):
    tree = _tree()
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "RAY_ADDRESS")}
    env["HF_CHECKPOINT"] = str(tmp_path / "nowhere")
    res = subprocess.run(["bash", str(tree / "scripts" / "run-gemma4-31B.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and f"HF_CHECKPOINT={tmp_path / 'nowhere'}" in res.stderr, res.stderr


# ------------------------------------------------------------------ the pinned parsers


TARGETS = {"run-gemma4-31B.sh": "31B", "run-gemma4-26B-A4B.sh": "26B-A4B"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_parses_with_the_pinned_slime_and_megatron(script, mode, tmp_path, monkeypatch):
    pytest.importorskip("megatron.training.arguments", reason="megatron.training is not in megatron-core from PyPI")
    if not (_tree() / "slime" / "utils" / "arguments.py").is_file():
        pytest.skip("slime's argument parser is not here (materialised Gemma4 files only): "
                    "runs on the patched pinned trees")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sglang_gemma4"))
    import sgltree

    built = sgltree.build_or_skip()  # slime's SGLang arguments are SGLang's ServerArgs
    import harness

    harness.setup_sglang(built.path)
    import argparse

    import stubs

    stubs.install()  # httpx, ray ...: imported by slime's argument modules, not used by the parsers

    from slime.backends.sglang_utils.arguments import add_sglang_arguments
    from slime.utils.arguments import get_slime_extra_args_provider

    from megatron.training.arguments import parse_args

    from slime_plugins.models.gemma4.config import read_settings
    from slime_plugins.models.gemma4.provider import build_config, check_megatron_args

    (tmp_path / "config.json").write_text(json.dumps(g4util.published_config_json(TARGETS[script])))
    res = dry_run(script, MODE=mode, HF_CHECKPOINT=str(tmp_path))
    assert res.returncode == 0, res.stderr
    args = train_args(commands(res.stdout))

    # the --sglang-* flags: slime's SGLang parser (SGLang's own options) takes every one of them
    sglang = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_sglang_arguments(sglang)
    _, rest = sglang.parse_known_args(args)
    leftover_sglang = [a for a in rest if a.startswith("--sglang-")]
    assert not leftover_sglang, leftover_sglang
    # everything else: Megatron's parser with slime's arguments, unknown flags refused
    sglang_dests = {a.dest for a in sglang._actions}
    strict = []
    skip = 0
    for i, a in enumerate(args):
        if skip:
            skip -= 1
            continue
        if a.startswith("--sglang-") or (a.startswith("--") and a[2:].replace("-", "_") in sglang_dests
                                         and a != "--rollout-num-gpus-per-engine"):
            action = next(x for x in sglang._actions if a in x.option_strings)
            skip = 0 if action.nargs == 0 else 1
            continue
        strict.append(a)
    monkeypatch.setattr("sys.argv", ["train.py", *strict])
    parsed = parse_args(extra_args_provider=get_slime_extra_args_provider(), ignore_unknown_args=False)
    assert parsed.loss_mask_type == "gemma4"
    parsed.params_dtype, parsed.padded_vocab_size = __import__("torch").float32, 262_144
    settings = read_settings(tmp_path)
    check_megatron_args(settings, parsed)  # the flags agree with the checkpoint
    from slime_plugins.models.gemma4.config import check_parallelism

    check_parallelism(settings, parsed.tensor_model_parallel_size, parsed.expert_model_parallel_size)
    build_config(parsed, settings)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("response,prompt", [(1024, 512), (4096, 512), (8192, 512), (16384, 2048), (32768, 256)])
def test_the_kv_split_follows_the_lengths(script, response, prompt):
    # SGLang frees a decoding request's sliding-window KV older than the window once per window of
    # steps (ScheduleBatch's SWA eviction): a sample holds at most two windows of it, while its
    # prompt, shared by the prompt's samples, stays whole in the radix cache. The ratio passed must
    # cover that need and not waste more than a hundredth; past two windows per sample, 1.
    size = "26B-A4B" if "26B" in script else "31B"
    window = g4util.published_config_json(size)["text_config"]["sliding_window"]
    res = dry_run(script, RESPONSE_LEN=str(response), PROMPT_LEN=str(prompt))
    assert res.returncode == 0, res.stderr
    args = train_args(commands(res.stdout))
    ratio = float(flag(args, "--sglang-swa-full-tokens-ratio"))
    n = int(flag(args, "--n-samples-per-prompt"))
    need = (prompt + n * 2 * window) / (prompt + n * response)
    assert min(need, 1.0) <= ratio <= min(need + 0.01, 1.0), (ratio, need)
    assert args.count("--sglang-swa-full-tokens-ratio") == 1


def test_a_kv_split_set_by_hand_is_passed_as_given():
    res = dry_run("run-gemma4-31B.sh", SWA_RATIO="0.3", RESPONSE_LEN="8192")
    assert res.returncode == 0, res.stderr
    assert flag(train_args(commands(res.stdout)), "--sglang-swa-full-tokens-ratio") == "0.3"
