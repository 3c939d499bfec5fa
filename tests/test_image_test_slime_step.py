"""The rl tier's slime step (tests/image/slime_step.py) as far as it runs without a GPU, Ray or
SGLang: the Megatron flags from the tiny checkpoints' config.json, the tokenizer and data files,
the dry run of the real Gemma4 run scripts with the tier's EXTRA_ARGS, reading slime's log (excerpts
in the format slime's loggers print, as Ray forwards them) and the arrived / not-arrived decision,
the run's failure and timeout paths with a stand-in run script, and the skips that name what is
missing. The real run needs the real image on a GPU node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "image"))

import slime_step as S  # noqa: E402


def _ckpt(tmp_path: Path, kind: str) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    import ckpt

    return ckpt.write(tmp_path / "ckpt" / kind, kind)


def _conf(kind: str) -> dict:
    import ckpt

    return ckpt.config_json(ckpt.CONFIGS[kind])


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize("kind", S.KINDS)
def test_the_model_flags_are_the_checkpoints(kind):
    conf = _conf(kind)
    got = S.effective(S.model_flags(conf))
    want = {"--num-layers": conf["num_hidden_layers"], "--hidden-size": conf["hidden_size"],
            "--ffn-hidden-size": conf["intermediate_size"], "--num-attention-heads": conf["num_attention_heads"],
            "--num-query-groups": conf["num_key_value_heads"], "--kv-channels": conf["head_dim"],
            "--norm-epsilon": conf["rms_norm_eps"], "--vocab-size": conf["vocab_size"]}
    if kind == "moe":
        want |= {"--num-experts": conf["num_experts"], "--moe-router-topk": conf["top_k_experts"],
                 "--moe-ffn-hidden-size": conf["moe_intermediate_size"]}
    assert {k: float(v[0]) for k, v in got.items()} == {k: float(v) for k, v in want.items()}


@pytest.mark.parametrize("kind", S.KINDS)
def test_the_model_flags_agree_with_the_gemma4_providers_own_mapping(kind):
    """slime_plugins/models/gemma4/provider.py's megatron_args_for is what the provider checks the
    flags against at start-up; the tier's flags must give the same values."""
    sys.path.insert(0, str(REPO / "tests" / "gemma4"))
    import g4util

    g4util.setup_paths()
    pytest.importorskip("megatron.core")
    from slime_plugins.models.gemma4.config import read_settings
    from slime_plugins.models.gemma4.provider import megatron_args_for

    conf = _conf(kind)
    want = megatron_args_for(read_settings(conf))
    got = S.effective(S.model_flags(conf))
    for dest, value in want.items():
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            assert (flag in got) == value, flag
        else:
            assert float(got[flag][0]) == float(value), flag


def test_a_config_without_a_needed_field_is_named():
    conf = _conf("moe")
    del conf["top_k_experts"]
    with pytest.raises(S.StepError, match="top_k_experts"):
        S.model_flags(conf)


def test_the_kind_must_match_the_checkpoint(tmp_path):
    with pytest.raises(S.StepError, match="dense Gemma4 but the moe run script"):
        S.extra_args(_conf("dense"), "moe", tmp_path)


def test_the_batch_is_one_optimizer_step_a_rollout(tmp_path):
    got = S.effective(S.extra_args(_conf("dense"), "dense", tmp_path))
    rollout = int(got["--rollout-batch-size"][0]) * int(got["--n-samples-per-prompt"][0])
    assert int(got["--global-batch-size"][0]) == rollout  # slime: one train step per rollout
    assert "--ref-load" not in got  # the run scripts' own, checked on their command
    assert "--use-kl-loss" in got and got["--kl-loss-coef"] == ["0"]
    assert float(got["--lr"][0]) == S.LR and got["--rm-type"] == ["f1"]


def test_a_work_folder_with_spaces_is_refused(tmp_path):
    with pytest.raises(S.StepError, match="without spaces"):
        S.run_env({}, ckpt_dir=tmp_path / "a b", data_dir=tmp_path, save_dir=tmp_path, megatron=tmp_path, extra=[])


def test_the_run_env_starts_a_private_ray_head():
    env = S.run_env({"RAY_ADDRESS": "http://10.0.0.1:8265", "RAY_AUTH_TOKEN_PATH": "/x", "PATH": "/bin"},
                    ckpt_dir=Path("/c"), data_dir=Path("/d"), save_dir=Path("/s"), megatron=Path("/m"),
                    extra=["--lr", "0.01"])
    assert "RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN_PATH" not in env and "DRY_RUN" not in env
    assert env["BIND_ADDRESS"] == "127.0.0.1" and env["GPUS_PER_NODE"] == "1" and env["MODE"] == "colocate"
    assert env["EXTRA_ARGS"] == "--lr 0.01" and env["NUM_ROLLOUT"] == "2" and env["PATH"] == "/bin"


# ------------------------------------------------------------------ tokenizer and data


def _tokenizer_check(ck: Path) -> dict:
    code = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(ck)!r}, trust_remote_code=True)
        text = tok.apply_chat_template([{{"role": "user", "content": "t4 t17 t511"}}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        print(json.dumps(dict(cls=type(tok).__name__, text=text, ids=ids, dec=tok.decode([9, 1, 300], skip_special_tokens=True),
                              eos=tok.eos_token_id, pad=tok.pad_token_id, bos=tok.bos_token_id, n=len(tok))))
    """)
    return code


@pytest.mark.parametrize("where", ["venv", "transformers 4.57.1"])
def test_the_tokenizer_round_trips_words_and_ids(tmp_path, where):
    pytest.importorskip("transformers")
    env = dict(os.environ)
    if where != "venv":
        tf457 = REPO / "out" / "tf457"
        if not (tf457 / "transformers").is_dir():
            pytest.skip(f"no transformers 4.57.1 at {tf457} (pip install --target {tf457} transformers==4.57.1)")
        env["PYTHONPATH"] = str(tf457)
    ck = tmp_path / "ck"
    ck.mkdir()
    conf = _conf("dense")
    (ck / "config.json").write_text(json.dumps(conf))
    for name, body in S.tokenizer_files(conf).items():
        (ck / name).write_text(json.dumps(body))
    res = subprocess.run([sys.executable, "-c", _tokenizer_check(ck)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["text"] == "t4 t17 t511" and got["ids"] == [4, 17, 511]
    assert got["dec"] == "t9 t300"  # the EOS skipped as SGLang's detokenizer skips it
    assert (got["eos"], got["pad"], got["bos"], got["n"]) == (1, 0, 2, conf["vocab_size"])


def test_the_data_is_prompts_and_labels_in_the_vocabulary(tmp_path):
    train, ev = S.write_data(tmp_path, 512)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) == S.N_PROMPTS and len(rows) % S.ROLLOUT_BATCH == 0
    vocab = {S.word(i) for i in range(len(S.SPECIAL), 512)}
    for r in rows:
        assert set(r) == {"prompt", "label"}
        assert len(r["prompt"].split()) == S.PROMPT_WORDS and len(r["label"].split()) == S.LABEL_WORDS
        assert set(r["prompt"].split()) <= vocab and set(r["label"].split()) <= vocab
    assert S.write_data(tmp_path / "again", 512)[0].read_text() == train.read_text()  # seeded
    assert ev.read_text().splitlines() == train.read_text().splitlines()[:2]


# ------------------------------------------------------------------ the real run scripts, dry


def _scripts_tree() -> Path:
    sys.path.insert(0, str(REPO / "tests" / "gemma4"))
    import g4util

    g4util.setup_paths()
    import slime_plugins.models.gemma4 as pkg

    tree = Path(pkg.__file__).resolve().parents[3]
    if not (tree / "scripts" / "gemma4" / "launch.sh").is_file():
        pytest.skip(f"no run scripts in {tree}")
    return tree


@pytest.mark.parametrize("kind", S.KINDS)
def test_the_run_scripts_dry_run_carries_the_tiers_flags(kind, tmp_path):
    tree = _scripts_tree()
    src = _ckpt(tmp_path, kind)
    dest = tmp_path / f"slime-{kind}"
    conf = S.prepare(src, dest)
    assert {p.name for p in (dest / "ckpt").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                          "tokenizer_config.json"}
    extra = S.extra_args(conf, kind, dest / "ckpt")
    env = S.run_env(dict(os.environ, RAY_ADDRESS="http://10.1.2.3:8265"), ckpt_dir=dest / "ckpt",
                    data_dir=dest / "data", save_dir=dest / "save", megatron=tmp_path / "megatron", extra=extra,
                    dry_run=True)
    res = subprocess.run(["bash", str(tree / S.RUN_SCRIPTS[kind])], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    head = [ln for ln in res.stdout.splitlines() if ln.startswith("+ ray start")]
    assert len(head) == 1 and "--node-ip-address 127.0.0.1" in head[0] and "--num-gpus 1" in head[0], res.stdout
    argv = S.train_command(res.stdout)
    assert S.check_command(argv, extra, kind, dest / "ckpt") == []
    got = S.effective(argv)
    assert got["--ref-load"] == [str(dest / "ckpt")]
    # a run script without it is caught by name
    bare = [a for i, a in enumerate(argv) if a != "--ref-load" and (i == 0 or argv[i - 1] != "--ref-load")]
    assert any(w.startswith("--ref-load is 'missing'") for w in S.check_command(bare, extra, kind, dest / "ckpt"))
    assert got["--num-layers"] == [str(conf["num_hidden_layers"])]  # the 31B's / 26B's 60 / 30 overridden
    assert got["--hf-checkpoint"] == [str(dest / "ckpt")] and got["--num-rollout"] == ["2"]
    assert got["--rollout-max-response-len"] == [str(S.RESPONSE_LEN)]
    assert ("--use-rollout-routing-replay" in got) == (kind == "moe")


@pytest.mark.parametrize("kind", S.KINDS)
def test_slimes_own_parser_accepts_the_command_and_the_provider_agrees(kind, tmp_path, monkeypatch):
    """The dry run's train.py command through slime's parse_args (its SGLang, Megatron and slime
    parsers and validations, the HF config check) and the Gemma4 provider's own check of the flags
    against the checkpoint. Needs the patched pinned slime and Megatron trees (GEMMA4_SLIME_TREE,
    GEMMA4_MEGATRON_TREE); Megatron asks CUDA for the device's capability (grouped GEMM), which is
    answered as an H200's."""
    tree = _scripts_tree()  # also puts GEMMA4_SLIME_TREE and GEMMA4_MEGATRON_TREE first on the path
    pytest.importorskip("megatron.training.arguments", reason="megatron.training is not in megatron-core from PyPI")
    if not (tree / "slime" / "utils" / "arguments.py").is_file():
        pytest.skip("slime's argument parser is not here (materialised Gemma4 files only): runs on the patched "
                    "pinned trees (GEMMA4_SLIME_TREE, GEMMA4_MEGATRON_TREE)")
    sys.path.insert(0, str(REPO / "tests" / "sglang_gemma4"))
    import sgltree

    built = sgltree.build_or_skip()
    import harness

    harness.setup_sglang(built.path)
    import stubs

    stubs.install()
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    src = _ckpt(tmp_path, kind)
    dest = tmp_path / f"slime-{kind}"
    conf = S.prepare(src, dest)
    extra = S.extra_args(conf, kind, dest / "ckpt")
    env = S.run_env(dict(os.environ), ckpt_dir=dest / "ckpt", data_dir=dest / "data", save_dir=dest / "save",
                    megatron=tmp_path / "megatron", extra=extra, dry_run=True)
    res = subprocess.run(["bash", str(tree / S.RUN_SCRIPTS[kind])], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    monkeypatch.setattr("sys.argv", ["train.py", *S.train_command(res.stdout)])
    from slime.utils.arguments import parse_args
    from slime_plugins.models.gemma4.config import check_parallelism, read_settings
    from slime_plugins.models.gemma4.provider import check_megatron_args

    args = parse_args()
    assert (args.num_layers, args.hidden_size, args.num_attention_heads) == (
        conf["num_hidden_layers"], conf["hidden_size"], conf["num_attention_heads"])
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.expert_model_parallel_size,
            args.rollout_num_gpus, args.rollout_num_gpus_per_engine) == (1, 1, 1, 1, 1)
    assert args.colocate and args.offload_train and args.offload_rollout  # slime's colocated mode
    assert args.load == str(dest / "ckpt") and args.use_kl_loss and args.kl_loss_coef == 0  # weights from the HF dir
    assert (args.num_rollout, args.rollout_batch_size, args.n_samples_per_prompt, args.global_batch_size) == (
        S.NUM_ROLLOUT, S.ROLLOUT_BATCH, S.N_SAMPLES, S.ROLLOUT_BATCH * S.N_SAMPLES)
    assert args.rm_type == "f1" and args.lr == S.LR and args.skip_eval_before_train
    assert args.rollout_max_response_len == S.RESPONSE_LEN
    assert args.use_rollout_routing_replay == (kind == "moe")
    if kind == "moe":
        assert (args.num_experts, args.moe_router_topk) == (conf["num_experts"], conf["top_k_experts"])
    args.padded_vocab_size = getattr(args, "padded_vocab_size", None) or conf["vocab_size"]
    settings = read_settings(dest / "ckpt")
    check_megatron_args(settings, args)  # raises, naming the flag, where a flag disagrees with config.json
    check_parallelism(settings, args.tensor_model_parallel_size, args.expert_model_parallel_size)


def test_a_script_flag_after_the_tiers_is_caught():
    extra = ["--num-layers", "4", "--lr", "0.01", "--use-kl-loss"]
    argv = ["--colocate"] + extra + ["--num-layers", "60"]
    wrong = S.check_command(argv, extra, "dense")
    assert wrong == ["--num-layers is '60', the tier asked for '4'"]
    assert "--use-kl-loss is missing" in S.check_command(["--colocate", "--num-layers", "4", "--lr", "1e-2"], extra,
                                                         "dense")
    assert S.check_command(["--colocate"] + extra, extra, "moe") == [
        "--use-rollout-routing-replay is not set for the MoE run"]


# ------------------------------------------------------------------ slime's log


ACTOR = "(MegatronTrainRayActor pid=4242) "
MANAGER = "(RolloutManager pid=4100) "


def _t(i: int) -> str:
    return f"[2026-11-29 01:{10 + i:02d}:00] "


def _mem(i: int, when: str) -> str:
    return (f"{ACTOR}{_t(i)}memory_utils.py:47 - [Rank 0] Memory-Usage {when} update_weights: {{'gpu': '0', "
            "'total_GB': 139.81, 'free_GB': 96.3, 'used_GB': 43.51, 'allocated_GB': 2.1, 'reserved_GB': 3.0, "
            "'host_total_GB': 2015.5, 'host_available_GB': 1890.2, 'host_used_GB': 110.4, 'host_free_GB': 1500.1}")


def slime_log(*, gap=(0.03, 0.031), lp=(-6.2391, -5.3102), ref=(-6.2391, -6.1847), sgl=(-6.2402, -5.3127),
              update=True, rollouts=2, colour=False) -> str:
    """A log as `ray job submit` prints it for the tier's run: slime's lines (format
    "[%(asctime)s] %(filename)s:%(lineno)d - %(message)s", slime/utils/logging_utils.py) with Ray's
    actor prefix; the metrics dicts as slime's f-strings print them."""
    out = ["Job submission server address: http://127.0.0.1:8265",
           f"{_t(0)}placement_group.py:60 - Creating placement group with 1 GPUs...",
           _mem(0, "before"), _mem(0, "after")]
    for n in range(rollouts):
        out.append(f"{MANAGER}{_t(n)}rollout.py:1188 - perf {n}: {{'rollout/response_len/mean': 40.0, "
                   "'rollout/response_len/median': 40.0, 'rollout/response_len/max': 40, 'rollout/response_len/min': 40, "
                   "'rollout/zero_std/count_0.0': 1, 'rollout/repetition_frac': 0.0, 'rollout/truncated_ratio': 1.0, "
                   "'perf/rollout_time': 4.81, 'perf/tokens_per_gpu_per_sec': 266.1, "
                   "'perf/longest_sample_tokens_per_sec': 8.3}")
        out.append(f"{ACTOR}{_t(n)}data.py:201 - rollout {n}: {{'rollout/response_lengths': 40.0, "
                   f"'rollout/rewards': 0.0, 'rollout/raw_reward': 0.0894, 'rollout/truncated': 1.0, "
                   f"'rollout/log_probs': {lp[n]}, 'rollout/ref_log_probs': {ref[n]}, "
                   f"'rollout/rollout_log_probs': {sgl[n]}, 'rollout/advantages': 0.0012, 'rollout/returns': 0.0012}}")
        out.append(f"{ACTOR}{_t(n)}model.py:655 - step {n}: {{'train/loss': -0.0131, 'train/pg_loss': -0.0131, "
                   f"'train/entropy_loss': 6.2337, 'train/pg_clipfrac': 0.0, 'train/ppo_kl': 0.0, "
                   f"'train/train_rollout_logprob_abs_diff': {gap[n]}, 'train/kl_loss': 0.0, "
                   "'train/grad_norm': 0.8214, 'train/lr-pg_0': 0.01, 'train/lr-pg_1': 0.01, 'train/step': "
                   f"{n}}}")
        out.append(f"{ACTOR}{_t(n)}train_metric_utils.py:44 - perf {n}: {{'perf/actor_train_time': 1.2, "
                   "'perf/log_probs_time': 0.3, 'perf/ref_log_probs_time': 0.3}")
        if update:
            out += [_mem(n, "before"), _mem(n, "after")]
    out.append("------------------------------------------")
    out.append("Job 'raysubmit_8b1c' succeeded")
    if colour:
        out = [f"\x1b[36m{ln[:ln.index(')') + 1]}\x1b[0m{ln[ln.index(')') + 1:]}" if ln.startswith("(") else ln
               for ln in out]
    return "\n".join(out) + "\n"


def test_the_log_is_read():
    log = S.parse_log(slime_log(colour=True))
    assert sorted(log.manager_rollout) == [0, 1] and sorted(log.actor_rollout) == [0, 1]
    assert log.actor_step[1]["train/train_rollout_logprob_abs_diff"] == 0.031
    assert log.actor_rollout[1]["rollout/ref_log_probs"] == -6.1847
    assert log.events[:4] == [("update_weights", -1), ("rollout", 0), ("step", 0), ("update_weights", -1)]
    assert log.unreadable == []


def test_nan_inf_and_numpy_scalars_in_a_metrics_dict_are_read():
    d = S.metrics_dict("{'a': nan, 'b': -inf, 'c': np.float64(0.25), 'd': [1, 2], 'e': None}")
    assert d["a"] != d["a"] and d["b"] == float("-inf") and d["c"] == 0.25 and d["d"] == [1, 2] and d["e"] is None
    with pytest.raises(ValueError):
        S.metrics_dict("{'a': __import__('os').getcwd()}")


def test_an_update_that_arrived_passes():
    ok, text, fig = S.decide(S.parse_log(slime_log()))
    assert ok, text
    assert fig["gap0"] == 0.03 and abs(fig["limit"] - 0.055) < 1e-12 and abs(fig["moved"] - (-5.3102 + 6.1847)) < 1e-9
    assert "NOT MET" not in text and fig["failed"] == []


def test_stale_weights_in_sglang_fail():
    """SGLang kept the initial weights: rollout 1 was sampled from the initial policy (SGLang's
    log-probabilities are the reference's, up to rounding), which the trained model now finds
    less likely, and the trained model disagrees with SGLang by about the step's movement."""
    ok, text, fig = S.decide(S.parse_log(slime_log(gap=(0.03, 0.71), lp=(-6.2391, -6.9), ref=(-6.2391, -6.2214),
                                                   sgl=(-6.2402, -6.2231))))
    assert not ok
    assert fig["failed"] == ["arrived", "moved"], text
    assert "rollout 1 0.7100 (<= 0.0550) NOT MET" in text
    assert "SGLang does not serve the trained weights" in S.todo_for(fig["failed"])


def test_a_step_too_small_to_tell_fails():
    ok, _, fig = S.decide(S.parse_log(slime_log(lp=(-6.2391, -6.2001), ref=(-6.2391, -6.2214))))
    assert not ok and fig["failed"] == ["moved"]
    assert "all-equal rewards give GRPO no gradient" in S.todo_for(fig["failed"])


def test_a_reference_that_is_not_the_initial_policy_fails():
    ok, _, fig = S.decide(S.parse_log(slime_log(ref=(-6.5, -6.1847))))
    assert not ok and fig["failed"] == ["reference"]


def test_no_weight_update_between_the_rollouts_fails():
    ok, text, fig = S.decide(S.parse_log(slime_log(update=False)))
    assert not ok and fig["failed"] == ["events"]
    assert "a weight update between train step 0 and rollout 1" in text


def test_a_run_that_stopped_after_one_rollout_fails():
    ok, text, _ = S.decide(S.parse_log(slime_log(rollouts=1)))
    assert not ok
    assert "rollout 1 (the rollout manager's `perf 1` line)" in text and "train step 1 (`step 1`)" in text


def test_without_the_reference_the_metrics_are_named():
    text = slime_log().replace("'rollout/ref_log_probs'", "'rollout/other'")
    ok, detail, fig = S.decide(S.parse_log(text))
    assert not ok and fig["failed"] == ["metrics"] and "rollout/ref_log_probs" in detail


# ------------------------------------------------------------------ running, with stand-ins


def _fake_tree(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A slime tree whose run scripts are stand-ins: the dry run prints a `ray job submit` line
    with the script's own flags then EXTRA_ARGS (as launch.sh does); the run does `body`."""
    slime, megatron = tmp_path / "slime", tmp_path / "megatron"
    (slime / "scripts").mkdir(parents=True)
    (slime / "train.py").write_text("")
    (megatron / "megatron").mkdir(parents=True)
    for kind, rel in S.RUN_SCRIPTS.items():
        replay = "--use-rollout-routing-replay" if kind == "moe" else ""
        (slime / rel).write_text(textwrap.dedent(f"""\
            set -euo pipefail
            if [ "${{DRY_RUN:-0}}" = 1 ]; then
              echo "+ ray start --head --block --node-ip-address 127.0.0.1 --num-gpus $GPUS_PER_NODE"
              echo "+ ray job submit --address http://127.0.0.1:8265 -- python3 {slime}/train.py --colocate --num-layers 60 --ref-load $HF_CHECKPOINT {replay} $EXTRA_ARGS"
              exit 0
            fi
            """) + body)
    return slime, megatron


def _bin(tmp_path: Path) -> str:
    b = tmp_path / "bin"
    b.mkdir(exist_ok=True)
    (b / "ray").write_text("#!/bin/sh\nexit 0\n")
    (b / "ray").chmod(0o755)
    return f"{b}:{os.environ['PATH']}"


def test_a_run_is_read_and_decided(tmp_path, monkeypatch):
    src = _ckpt(tmp_path, "moe")
    log = tmp_path / "canned.log"
    log.write_text(slime_log())
    slime, megatron = _fake_tree(tmp_path, f'test -f "$HF_CHECKPOINT/tokenizer.json"\ncat {log}\n')
    monkeypatch.setenv("PATH", _bin(tmp_path))
    status, detail, fig, todo = S.step(slime, megatron, src, tmp_path / "work", "moe", 1, find_spec=lambda m: object())
    assert status == "pass", (detail, todo)
    assert "routing replay" in detail and fig["gap1"] == 0.031
    assert (tmp_path / "work" / "slime-moe" / "slime.log").read_text() == log.read_text()


def test_a_run_that_fails_names_its_log(tmp_path, monkeypatch):
    src = _ckpt(tmp_path, "dense")
    slime, megatron = _fake_tree(tmp_path, 'echo "Traceback (most recent call last):"\necho "AssertionError: boom"\n'
                                           "exit 1\n")
    monkeypatch.setenv("PATH", _bin(tmp_path))
    status, detail, _, todo = S.step(slime, megatron, src, tmp_path / "work", "dense", 1, find_spec=lambda m: object())
    assert status == "FAIL" and "exited 1" in detail and "AssertionError: boom" in detail
    assert str(tmp_path / "work" / "slime-dense" / "slime.log") in todo


def test_a_run_that_stepped_but_exited_non_zero_fails_and_says_how_far_it_got(tmp_path, monkeypatch):
    """E.g. the checkpoint save after the last rollout breaks: the failure keeps what the log shows."""
    src = _ckpt(tmp_path, "dense")
    log = tmp_path / "canned.log"
    log.write_text(slime_log() + "RuntimeError: saving the checkpoint failed\n")
    slime, megatron = _fake_tree(tmp_path, f"cat {log}\nexit 1\n")
    monkeypatch.setenv("PATH", _bin(tmp_path))
    status, detail, fig, _ = S.step(slime, megatron, src, tmp_path / "work", "dense", 1, find_spec=lambda m: object())
    assert status == "FAIL" and "exited 1" in detail and "saving the checkpoint failed" in detail
    assert "(the step as far as the log shows: reference vs trained" in detail and fig["failed"] == []


def test_a_run_script_that_drops_the_tiers_flags_fails_before_running(tmp_path, monkeypatch):
    src = _ckpt(tmp_path, "dense")
    slime, megatron = _fake_tree(tmp_path, "exit 0\n")
    script = slime / S.RUN_SCRIPTS["dense"]
    script.write_text(script.read_text().replace("$EXTRA_ARGS", "$EXTRA_ARGS --num-layers 60"))
    monkeypatch.setenv("PATH", _bin(tmp_path))
    status, detail, _, _ = S.step(slime, megatron, src, tmp_path / "work", "dense", 1, find_spec=lambda m: object())
    assert status == "FAIL" and "--num-layers is '60', the tier asked for '4'" in detail


def test_a_run_past_its_time_is_stopped_and_cleans_up(tmp_path, monkeypatch):
    """The stand-in traps EXIT as launch.sh does (that is where launch.sh stops its Ray head by
    PID); the tier's stop must let that trap run although a foreground command is running."""
    src = _ckpt(tmp_path, "dense")
    marker = tmp_path / "cleaned"
    slime, megatron = _fake_tree(tmp_path, f"trap 'echo yes > {marker}' EXIT\ntrap 'exit 143' TERM\nsleep 60\n")
    monkeypatch.setenv("PATH", _bin(tmp_path))
    t0 = time.monotonic()
    status, detail, _, _ = S.step(slime, megatron, src, tmp_path / "work", "dense", 1, timeout=2,
                                  find_spec=lambda m: object())
    assert status == "FAIL" and "did not finish within 2 s" in detail
    assert marker.read_text().strip() == "yes" and time.monotonic() - t0 < 30


# ------------------------------------------------------------------ skips, by name


def test_no_gpu_skips_naming_it(tmp_path):
    slime, megatron = _fake_tree(tmp_path, "exit 0\n")
    status, detail, _, _ = S.step(slime, megatron, tmp_path, tmp_path / "w", "dense", 0)
    assert status == "skip" and detail.startswith("GPU:")


def test_missing_pieces_skip_naming_them(tmp_path, monkeypatch):
    slime, megatron = _fake_tree(tmp_path, "exit 0\n")
    with_ray = _bin(tmp_path)
    assert S.preflight(tmp_path / "none", megatron, "moe", 1).startswith("slime: no scripts/run-gemma4-26B-A4B.sh")
    assert S.preflight(slime, tmp_path / "none", "dense", 1).startswith("Megatron-LM: no tree")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert S.preflight(slime, megatron, "dense", 1).startswith("Ray: `ray` is not on PATH")
    monkeypatch.setenv("PATH", with_ray)
    status, detail, _, _ = S.step(slime, megatron, tmp_path, tmp_path / "w", "dense", 1,
                                  find_spec=lambda m: None if m in ("sglang", "sgl_kernel") else object())
    assert status == "skip" and detail.startswith("sglang, sgl_kernel not installed")


def test_the_rl_tier_reports_the_slime_steps_and_routing_replay(tmp_path):
    """rl.slime_steps on an image without the Gemma4 run scripts: both steps and routing replay
    are skipped, each naming slime; the NOT_YET skips are gone."""
    import rl
    from report import Report

    for kind in S.KINDS:
        _ckpt(tmp_path / "work", kind)

    class Img:
        trees = {"slime": tmp_path / "slime-without-scripts", "megatron": tmp_path / "megatron"}
        manifest = None

    rep = Report(out=lambda line: None)
    rl.slime_steps(Img(), rep, tmp_path / "work", gpus=1)
    got = {r.name: (r.status, r.component, r.detail) for r in rep.results}
    assert set(got) == {"slime train.py step dense", "slime train.py step moe", "routing replay (moe)"}
    for name, (status, comp, detail) in got.items():
        assert status == "skip" and comp == "slime", name
    assert "run-gemma4-26B-A4B.sh" in got["slime train.py step moe"][2]
    assert "decided by the MoE step" in got["routing replay (moe)"][2]
    assert not hasattr(rl, "NOT_YET")


def test_the_image_carries_the_slime_step(tmp_path):
    sys.path.insert(0, str(REPO / "build"))
    from patchstack import image

    image.copy_suite(REPO, tmp_path)
    assert (tmp_path / "tests" / "image" / "slime_step.py").read_text() == (REPO / "tests/image/slime_step.py").read_text()


@pytest.mark.parametrize("moe_status", ["pass", "FAIL"])
def test_routing_replay_follows_the_moe_step(tmp_path, monkeypatch, moe_status):
    import rl
    from report import Report

    for kind in S.KINDS:
        _ckpt(tmp_path / "work", kind)
    seen = []

    def fake_step(slime, megatron, src, work, kind, gpus):
        seen.append((kind, src, gpus))
        status = moe_status if kind == "moe" else "pass"
        return status, f"{kind} {status}", {"gap0": 0.0123}, "" if status == "pass" else "look at the MoE log"

    monkeypatch.setattr(S, "step", fake_step)

    class Img:
        trees = {"slime": tmp_path / "slime", "megatron": tmp_path / "megatron"}
        manifest = None

    rep = Report(out=lambda line: None)
    rl.slime_steps(Img(), rep, tmp_path / "work", gpus=1)
    assert [k for k, _, _ in seen] == ["dense", "moe"] and seen[1][1] == tmp_path / "work" / "ckpt" / "moe"
    replay = {r.name: r for r in rep.results}["routing replay (moe)"]
    if moe_status == "pass":
        assert replay.status == "pass" and "0.0123" in replay.detail and "--use-rollout-routing-replay" in replay.detail
    else:
        assert replay.status == "FAIL" and replay.todo == "look at the MoE log" and "moe FAIL" in replay.detail
