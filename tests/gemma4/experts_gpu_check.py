"""The grouped experts (experts.py) on a GPU in bf16, against Megatron's per-expert loop (run by
hand on a GPU machine; the CPU tests are test_experts.py).

A two-layer model at the 26B-A4B widths (128 experts of 704, top 8; vocabulary cut to 32768),
random weights, one forward and backward of a logsumexp loss.  Reference: the same weights in
fp32 through the per-expert loop.  For the logits and every parameter's gradient, the grouped
path's mean bf16 error against that reference must be at most 1.25x the loop's own mean bf16
error (plus 1e-6 of the reference's scale): the grouped products may round differently, not worse.  Prints
one JSON line per compared tensor group and the verdict; exit status 1 on a failure.

    python3 tests/gemma4/experts_gpu_check.py [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

S, F = "sliding_attention", "full_attention"
CFG = dict(vocab_size=32768, head_dim=256, global_head_dim=512, sliding_window=1024, hidden_size_per_layer_input=0,
           final_logit_softcapping=30.0, num_hidden_layers=2, layer_types=[S, F], attention_k_eq_v=True,
           hidden_size=2816, intermediate_size=2112, num_attention_heads=16, num_key_value_heads=8,
           num_global_key_value_heads=2, enable_moe_block=True, num_experts=128, top_k_experts=8,
           moe_intermediate_size=704, initializer_range=0.02)


def grads_of(model, ids, impl):
    for m in model.modules():
        if hasattr(m, "impl") and hasattr(m, "why_not_grouped"):
            m.impl = impl
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, position_ids=None, attention_mask=None)
    logits.float().logsumexp(-1).mean().backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float(), grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("experts_gpu_check.py needs a CUDA GPU")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29541", rank=0, world_size=1)
    import g4util
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    torch.manual_seed(0)
    model, settings = g4util.megatron_model(CFG, dtype=torch.float32, use_cpu_initialization=False,
                                            moe_token_dispatcher_type="alltoall")
    model = model.cuda()
    # at the init scale the router's top 8 of 128 are near-ties that bf16 flips; widen its scores so
    # that both precisions route the same tokens to the same experts (a trained router is decisive)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("router.proj.weight") or n.endswith("router.weight"):
                p.mul_(50.0)
    ids = torch.randint(0, settings.vocab_size, (1, args.seq), device="cuda")
    ref_logits, ref_grads = grads_of(model, ids, "loop")
    model = model.to(torch.bfloat16)
    results, ok = [], True
    runs = {impl: grads_of(model, ids, impl) for impl in ("grouped", "loop")}

    def compare(name, ref, grouped, loop):
        nonlocal ok
        scale = ref.abs().max().item() or 1.0
        eg = (grouped - ref).abs().mean().item()
        el = (loop - ref).abs().mean().item()
        passed = eg <= 1.25 * el + 1e-6 * scale
        ok &= passed
        results.append(dict(tensor=name, ref_scale=scale, grouped_mean_err=eg, loop_mean_err=el,
                            grouped_max_err=(grouped - ref).abs().max().item(),
                            loop_max_err=(loop - ref).abs().max().item(), ok=passed))

    compare("logits", ref_logits, runs["grouped"][0], runs["loop"][0])
    groups = {}
    for n in ref_grads:
        key = n.split(".local_experts.")[0] + ".local_experts.*" if ".local_experts." in n else n
        groups.setdefault(key, []).append(n)
    for key, names in groups.items():
        cat = lambda g: torch.cat([g[n].flatten() for n in names])  # noqa: E731
        compare(key, cat(ref_grads), cat(runs["grouped"][1]), cat(runs["loop"][1]))
    for r in results:
        print(json.dumps(r))
    print(f"grouped experts vs the per-expert loop, bf16 against fp32: {'PASS' if ok else 'FAIL'} "
          f"({sum(r['ok'] for r in results)}/{len(results)} tensor groups)")
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
