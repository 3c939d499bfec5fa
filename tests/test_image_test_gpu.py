"""The gpu and rl tiers of `make image-test`, as far as they run without a GPU: the checkpoint
generator against transformers' Gemma4, the gap's bound, a dry run of the gpu tier on the CPU
(SGLang's model classes in Triton's interpreter, what needs a GPU or the image skipped by name), and
the rl step's weight-sync payload reaching SGLang's model classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "image"))
sys.path.insert(0, str(REPO / "tests" / "sglang_gemma4"))
sys.path.insert(0, str(REPO / "tests" / "gemma4"))

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import ckpt  # noqa: E402
import gap  # noqa: E402
import rl  # noqa: E402


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_the_generated_checkpoint_is_what_transformers_gemma4_loads(kind, tmp_path):
    tf = pytest.importorskip("transformers")
    if not hasattr(tf, "Gemma4ForCausalLM"):
        pytest.skip(f"transformers {tf.__version__} has no Gemma4")
    dest = ckpt.write(tmp_path / kind, kind)
    conf, state = ckpt.read(dest)
    keep = {k: v for k, v in conf.items() if k not in ("model_type", "architectures", "torch_dtype")}
    model = tf.Gemma4ForCausalLM(tf.Gemma4TextConfig(**keep))
    res = model.load_state_dict(state, strict=False)
    assert res.unexpected_keys == [] and res.missing_keys == ["lm_head.weight"]  # tied to the embedding
    assert model.config.tie_word_embeddings
    again = ckpt.tensors(ckpt.CONFIGS[kind], seed=0)
    assert all(torch.equal(again[k].to(torch.bfloat16).float(), v) for k, v in state.items())  # same seed, same weights


def test_the_gap_bound_is_half_the_smaller_bf16_floor():
    rec = dict(tokens=10, rollout_vs_train_mean=0.04, rollout_vs_train_max=0.3, rollout_vs_fp32_mean=0.2,
               train_vs_fp32_mean=0.1, rollout_vs_fp32_max=1, train_vs_fp32_max=1)
    assert gap.verdict(rec)[0]
    rec["rollout_vs_train_mean"] = 0.051  # above 0.5 x 0.1
    ok, text = gap.verdict(rec)
    assert not ok and "EXCEEDED" in text and "0.0500" in text


def test_update_arrived_only_when_sglang_follows_the_trained_model():
    assert rl.arrived(before_gap=0.1, after_gap=0.11, moved=0.6, stale=0.6)[0]
    assert not rl.arrived(before_gap=0.1, after_gap=0.6, moved=0.6, stale=0.0)[0]  # stale weights
    assert not rl.arrived(before_gap=0.1, after_gap=0.1, moved=0.2, stale=0.2)[0]  # a step too small to see


def _sglang_tree():
    import sgltree

    return sgltree.build_or_skip().path


def test_gpu_tier_dry_run_on_the_cpu_reports_and_skips_by_name(tmp_path):
    pytest.importorskip("megatron.core")
    env = dict(os.environ, SGLANG_TREE=str(_sglang_tree()))
    p = subprocess.run([sys.executable, str(REPO / "tests" / "image" / "gpu.py"), "--work", str(tmp_path),
                        "--results", str(tmp_path / "r.jsonl"), "--device", "cpu", "--smoke", "--kinds", "dense"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    got = {d["name"]: d for d in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert got["checkpoint dense"]["status"] == "pass"
    if "transformer_engine" not in sys.modules:
        assert got["te vs local dense"]["status"] == "skip" and "Transformer Engine" in got["te vs local dense"]["detail"]
    g = got["rollout/train gap, SGLang model classes, dense"]
    assert g["status"] == "pass" and g["figures"]["rollout_vs_train_max"] < 1e-4
    assert got["SGLang server answers, dense"]["status"] == "skip"
    assert "sgl-kernel" in got["SGLang server answers, dense"]["detail"]


def test_the_rl_steps_sync_payload_is_the_trained_model_in_sglangs_model_classes(tmp_path):
    """The rl tier's step on the CPU, in fp32, with SGLang's model classes standing in for its
    engine: after one Adam step, the converter's payload loaded into SGLang gives the trained
    model's log-probabilities; without it SGLang keeps the old ones."""
    pytest.importorskip("megatron.core")
    import harness

    harness.setup_sglang(_sglang_tree())
    import g4util
    from gpu import megatron
    from sglang.srt.configs.gemma4 import Gemma4TextConfig
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

    g4util.init_single_rank()
    conf, state = ckpt.read(ckpt.write(tmp_path / "dense", "dense", dtype="float32"))
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, conf["vocab_size"], (14,), generator=g).tolist() for _ in range(3)]
    model = megatron(conf, state, torch.float32, "local", "cpu", "reference")
    before = rl.logprobs(model, seqs, "cpu")
    rl.train_step(model, seqs, 8, "cpu", lr=1e-2)
    after = rl.logprobs(model, seqs, "cpu")

    def sglang_logprobs(sgl):
        runner = harness.CpuModelRunner(sgl)
        out = runner.prefill(seqs)
        runner.release(out.reqs)
        return [gap.token_logprobs(lg, s) for s, lg in zip(seqs, out.logits)]

    sgl = harness.build_model(Gemma4ForCausalLM, Gemma4TextConfig(**conf), torch.float32, state)
    sgl_before = sglang_logprobs(sgl)
    loaded = sgl.load_weights(rl.sync_payload(model, conf))
    assert {n for n, _ in sgl.named_parameters()} - {"lm_head.weight"} <= loaded
    sgl_after = sglang_logprobs(sgl)
    before_gap, after_gap = rl.mean_abs(sgl_before, before), rl.mean_abs(sgl_after, after)
    moved = rl.mean_abs(after, before)
    assert before_gap < 1e-4 and after_gap < 1e-4 and moved > 0.05, (before_gap, after_gap, moved)
    assert rl.arrived(before_gap, after_gap, moved, rl.mean_abs(sgl_after, sgl_before))[0]
    assert not rl.arrived(before_gap, rl.mean_abs(sgl_before, after), moved, 0.0)[0]  # had nothing arrived
