"""SGLang's Gemma4 on a GPU: SGLang's Triton attention kernels compiled for the GPU at Gemma4's
head dims (512 on global layers, 256 with a window on sliding ones), against transformers, and
the rollout / training log-probability gap in bf16 against our Megatron model.

Run on a GPU machine (no sgl-kernel needed: every op but the Triton kernels takes SGLang's
forward_native path, see harness.py):

    SGLANG_HARNESS_DEVICE=cuda SGLANG_TREE=<patched tree>/python \\
    GEMMA4_SLIME_TREE=<materialised slime gemma4 files> python3 tests/sglang_gemma4/gpu_check.py OUT.jsonl

Configs: tiny in width and depth, real in head shape (head_dim 256 sliding / 512 global, a
window of 64, K=V global layers in the dense one; every layer MoE in the other), sequences of
160 and 97 tokens, 24 decode steps and a chunked prefill, all past the window.

* fp32, TRITON_F32_DEFAULT=ieee (Triton's dot products otherwise use TF32): max |diff| relative
  to transformers' largest logit, next to transformers' own eager-vs-SDPA spread.
* bf16: per-token log-probabilities of the next token, SGLang vs our Megatron model (local
  spec), both in bf16 from the same weights; and each against transformers in fp32 (the noise
  floor of bf16 itself).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
os.environ.setdefault("SGLANG_HARNESS_DEVICE", "cuda")
DEV = os.environ["SGLANG_HARNESS_DEVICE"]
# GPU_CHECK_SMOKE=1: short sequences, a few steps (a dry run of this script on the CPU)
SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
LENGTHS, STEPS, CHUNK = ((20, 13), 3, 8) if SMOKE else ((160, 97), 24, 48)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "gemma4"))
sys.path.insert(0, str(HERE.parent / "image"))  # gap.py: the gap's figures and bound, shared with make image-test

import torch  # noqa: E402

import harness  # noqa: E402

harness.setup_sglang()

import g4util  # noqa: E402
import gap  # noqa: E402
from sglang.srt.configs.gemma4 import Gemma4TextConfig  # noqa: E402
from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM  # noqa: E402

S, F = g4util.SLIDING, g4util.FULL
DENSE = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, global_head_dim=512,
    num_global_key_value_heads=1, attention_k_eq_v=True, layer_types=[S, F, S, F],
    sliding_window=8 if SMOKE else 64, hidden_size_per_layer_input=0, final_logit_softcapping=30.0,
    initializer_range=0.05,
    rope_parameters=g4util.DENSE["rope_parameters"],
)
MOE = dict(DENSE, attention_k_eq_v=False, num_global_key_value_heads=None, layer_types=[S, S, F],
           num_hidden_layers=3, enable_moe_block=True, num_experts=8, top_k_experts=2,
           moe_intermediate_size=128)
CONFIGS = {"dense": DENSE, "moe": MOE}


def seqs(vocab):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def hf_on_gpu(cfg, dtype=torch.float32, impl="eager"):
    hf = g4util.hf_model(cfg)  # fp32 on the CPU, norms and scales moved off 1
    hf.config._attn_implementation = impl
    return hf.to(DEV, dtype)


def hf_logits(hf, seq):
    with torch.no_grad():
        return hf(torch.tensor([seq], device=DEV)).logits[0].float()


def fp32_parity(kind, out):
    cfg = CONFIGS[kind]
    hf = hf_on_gpu(cfg)
    conf = Gemma4TextConfig(**g4util.config_json(cfg))
    model = harness.build_model(Gemma4ForCausalLM, conf, torch.float32, hf.state_dict())
    runner = harness.CpuModelRunner(model, kv_pool="swa", max_total_tokens=2048, context_len=1024)
    ss = seqs(cfg["vocab_size"])
    t = time.time()
    pre = runner.prefill(ss)
    worst = {"prefill": max(rel(l, hf_logits(hf, s)) for s, l in zip(ss, pre.logits))}
    nxt, dec = [5, 6], 0.0
    for step in range(STEPS):
        d = runner.decode_step(pre.reqs, nxt)
        for i, s in enumerate(ss):
            s.append(nxt[i])
            dec = max(dec, rel(d.logits[i], hf_logits(hf, s)[-1]))
        nxt = [int(d.logits[0].argmax()), int(d.logits[1].argmax())]
    worst["decode"] = dec
    runner.release(pre.reqs)
    ch = runner.chunked_prefill([ss[0]], chunk_size=CHUNK)
    worst["chunked_prefill"] = rel(ch.logits[0], hf_logits(hf, ss[0]))
    runner.release(ch.reqs)
    sdpa = hf_on_gpu(cfg, impl="sdpa")
    worst["transformers_eager_vs_sdpa"] = max(rel(hf_logits(sdpa, s), hf_logits(hf, s)) for s in ss)
    rec = dict(check="fp32_parity", kind=kind, seconds=round(time.time() - t, 1), **worst)
    print(json.dumps(rec), flush=True)
    out.write(json.dumps(rec) + "\n")


def bf16_gap(kind, out):
    cfg = CONFIGS[kind]
    hf = g4util.hf_model(cfg)
    ref = hf.to(DEV)  # fp32 reference
    state = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
    g4util.init_single_rank()
    mcore, settings = g4util.megatron_model(cfg, dtype=torch.bfloat16)
    g4util.load_from_hf(mcore, settings, {k: v.to(torch.bfloat16) for k, v in state.items()})
    mcore = mcore.to(DEV)
    conf = Gemma4TextConfig(**g4util.config_json(cfg))
    sgl = harness.build_model(Gemma4ForCausalLM, conf, torch.bfloat16, state)
    runner = harness.CpuModelRunner(sgl, kv_pool="swa", max_total_tokens=2048, context_len=1024)
    ss = seqs(cfg["vocab_size"])
    pre = runner.prefill(ss)
    rollout, training, reference = [], [], []
    for s, l in zip(ss, pre.logits):
        with torch.no_grad():
            train = mcore(input_ids=torch.tensor([s], device=DEV), position_ids=None, attention_mask=None)[0]
        reference.append(gap.token_logprobs(hf_logits(ref, s), s))
        rollout.append(gap.token_logprobs(l, s))
        training.append(gap.token_logprobs(train.float(), s))
    rec = dict(check="bf16_logprob_gap", kind=kind, **gap.record(rollout, training, reference))
    rec["within_bound"], rec["verdict"] = gap.verdict(rec)
    print(json.dumps(rec), flush=True)
    out.write(json.dumps(rec) + "\n")
    runner.release(pre.reqs)


def main(path):
    with open(path, "w") as out:
        meta = dict(check="env", gpu=torch.cuda.get_device_name() if DEV == "cuda" else "cpu", torch=torch.__version__,
                    triton=__import__("triton").__version__,
                    transformers=__import__("transformers").__version__,
                    triton_f32_default=os.environ.get("TRITON_F32_DEFAULT"))
        print(json.dumps(meta), flush=True)
        out.write(json.dumps(meta) + "\n")
        for kind in ("dense", "moe"):
            fp32_parity(kind, out)
        for kind in ("dense", "moe"):
            bf16_gap(kind, out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check.jsonl")
