"""Two Gemma4 layers (one sliding, one global) at the 31B and 26B-A4B widths, in bf16 on a GPU:
our Megatron model against transformers' Gemma4, same weights, same tokens.

Prints, per model: max and mean |logit difference|, both relative to the reference's logit
scale; the noise floor (each bf16 model against transformers in fp32 on the same weights: with
random weights, unit-RMS q/k and softmax scale 1, attention is very peaked and bf16 rounding
alone moves logits a lot); for the MoE, how often layer 0 picks the same experts; forward tokens/s of both and
forward+backward tokens/s of ours; for the MoE also our forward with Megatron's per-expert loop
in place of the grouped experts (the `local` spec's path before experts.py). Needs a CUDA GPU, torch, transformers >= 5.5.3 and
megatron-core; the Gemma4 code is materialised from the patches (or GEMMA4_SLIME_TREE).

    python3 bench/gemma4_bf16_layers.py [--seq 4096] [--iters 10]

Widths: 31B (hidden 5376, 32 heads, 16 KV heads of 256, FFN 21504) and 26B-A4B (hidden 2816,
16 heads, 8 KV heads, FFN 2112, 128 experts of 704, top 8) as slime's and Google's model cards
give them; window 1024 and vocabulary 262144. The global layers' KV head count is not in any
source reachable here: 4 (31B) and 2 (26B-A4B) are assumptions, said again in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gemma4"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

S, F = "sliding_attention", "full_attention"
COMMON = dict(vocab_size=262_144, head_dim=256, global_head_dim=512, sliding_window=1024,
              hidden_size_per_layer_input=0, final_logit_softcapping=30.0, num_hidden_layers=2,
              layer_types=[S, F], attention_k_eq_v=True)
MODELS = {
    "31B": dict(COMMON, hidden_size=5376, intermediate_size=21504, num_attention_heads=32,
                num_key_value_heads=16, num_global_key_value_heads=4),
    "26B-A4B": dict(COMMON, hidden_size=2816, intermediate_size=2112, num_attention_heads=16,
                    num_key_value_heads=8, num_global_key_value_heads=2, enable_moe_block=True,
                    num_experts=128, top_k_experts=8, moe_intermediate_size=704),
}


def timed(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def run(name, cfg, seq, iters):
    import g4util
    from slime_plugins.models.gemma4.weights import Gemma4WeightMap, load_into
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(0)
    conf = Gemma4TextConfig(**cfg)
    conf._attn_implementation = "sdpa"
    with torch.device("cuda"):
        hf = Gemma4ForCausalLM(conf).to(torch.bfloat16).eval()
        # .to(bf16) also casts transformers' RoPE inv_freq buffers, which then put long positions
        # off by radians; rebuild them in fp32 (our model keeps its frequencies fp32 for the same reason)
        hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config)
    # at the init scale every token's 128 router scores are near-ties and which 8 win is bf16
    # noise; a trained router is decisive, so widen the scores
    g4util.perturb(hf, layer_scalar=0.75, router_spread=50.0)
    settings = g4util.settings_for(cfg)
    model, _ = g4util.megatron_model(cfg, dtype=torch.bfloat16, use_cpu_initialization=False,
                                     perform_initialization=False, moe_token_dispatcher_type="alltoall")
    model = model.cuda()
    state = hf.state_dict()
    load_into(model, Gemma4WeightMap(settings).hf_to_mcore(state.__getitem__))

    ids = torch.randint(0, settings.vocab_size, (1, seq), device="cuda")
    picks = {}
    if settings.enable_moe_block:
        hf.model.layers[0].router.register_forward_hook(lambda m, i, o: picks.__setitem__("hf", o[2]))
        model.decoder.layers[0].mlp.router.register_forward_hook(lambda m, i, o: picks.__setitem__("ours", o[1]))
    with torch.no_grad():
        ref = hf(ids).logits.float()
        ours = model(input_ids=ids, position_ids=None, attention_mask=None).float()
        # the noise floor: both bf16 models against transformers in fp32 on the same (bf16) weights
        hf32 = hf.float()
        exact = hf32(ids).logits.float()
        hf = hf32.to(torch.bfloat16)
        hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config).cuda()
        del hf32
    diff = (ours - ref).abs()
    scale = ref.abs().max().item()
    out = {
        "model": name, "seq": seq, "device": torch.cuda.get_device_name(),
        "logit_scale": scale,
        "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
        "max_rel_diff": diff.max().item() / scale, "mean_rel_diff": diff.mean().item() / scale,
        "argmax_agreement": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "ours_bf16_vs_fp32_mean_abs": (ours - exact).abs().mean().item(),
        "transformers_bf16_vs_fp32_mean_abs": (ref - exact).abs().mean().item(),
        "ours_bf16_vs_fp32_max_abs": (ours - exact).abs().max().item(),
        "transformers_bf16_vs_fp32_max_abs": (ref - exact).abs().max().item(),
    }
    del exact
    if picks:
        hf_map = torch.zeros_like(picks["ours"]).scatter_(1, picks["hf"], True)
        out["same_experts_share"] = (hf_map == picks["ours"]).all(-1).float().mean().item()
    with torch.no_grad():
        out["fwd_tokens_per_s_ours"] = seq / timed(lambda: model(input_ids=ids, position_ids=None, attention_mask=None), iters)
        out["fwd_tokens_per_s_transformers"] = seq / timed(lambda: hf(ids).logits, iters)
        experts = [m for n, m in model.named_modules() if n.endswith("mlp.experts") and hasattr(m, "impl")]
        if experts:
            # the same model with Megatron's per-expert loop (what the local spec ran before)
            out["experts"] = experts[0].impl
            for m in experts:
                m.impl = "loop"
            out["fwd_tokens_per_s_ours_loop_experts"] = seq / timed(
                lambda: model(input_ids=ids, position_ids=None, attention_mask=None), iters)
            for m in experts:
                m.impl = out["experts"]

    def step():
        model(input_ids=ids, position_ids=None, attention_mask=None).float().logsumexp(-1).mean().backward()

    out["fwd_bwd_tokens_per_s_ours"] = seq / timed(step, max(3, iters // 2))
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["assumed_global_kv_heads"] = cfg["num_global_key_value_heads"]
    del hf, model, ref, ours
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gemma4_bf16_layers.py needs a CUDA GPU")
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    for name in args.models:
        r = run(name, MODELS[name], args.seq, args.iters)
        print(json.dumps(r))
        print(f"{name}: bf16 logits vs transformers: max |diff| {r['max_abs_diff']:.4g} "
              f"(mean {r['mean_abs_diff']:.4g}, logit scale {r['logit_scale']:.3g}); "
              f"argmax agreement {r['argmax_agreement']:.4f}"
              + (f"; same experts {r['same_experts_share']:.4f}" if "same_experts_share" in r else "")
              + f"; against transformers fp32, mean |diff|: ours {r['ours_bf16_vs_fp32_mean_abs']:.4g}, "
              f"transformers bf16 {r['transformers_bf16_vs_fp32_mean_abs']:.4g}"
              + f"; fwd {r['fwd_tokens_per_s_ours']:.0f} tok/s (transformers {r['fwd_tokens_per_s_transformers']:.0f}"
              + (f"; ours with the per-expert loop {r['fwd_tokens_per_s_ours_loop_experts']:.0f}"
                 if "fwd_tokens_per_s_ours_loop_experts" in r else "") + "),"
              f" fwd+bwd {r['fwd_bwd_tokens_per_s_ours']:.0f} tok/s, peak {r['peak_gib']:.1f} GiB", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
