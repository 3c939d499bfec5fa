"""Gemma4 training attention on one GPU: our Triton kernels, FlexAttention with tuned tiles,
and the SDPA-on-a-boolean-mask path the model used before (until it runs out of memory),
side by side, forward + backward, bf16, one packed sequence per step.

    python3 bench/attention.py [--seqs 4096 8192 16384 32768 65536] [--skip flex sdpa] [--model]
    python3 bench/attention.py --sweep global --seqs 8192     # try tile sizes for our kernels

Layer shapes are the 31B's: global layers 32 query heads, 4 KV heads of 512, causal;
sliding layers 32 query heads, 16 KV heads of 256, window 1024. Softmax scale 1.0.

TFLOP/s count attended (query, key) pairs only: forward 4 * pairs * heads * head_dim, and
the backward 2.5 times that (the convention FlashAttention's papers use), so fwd+bwd is
14 * pairs * heads * head_dim. Peak memory is torch's peak allocation over the step,
inputs included, and is also given as a multiple of the bytes of q, k, v, the output and
their four gradients. Bars from the issue are printed next to the figures.

--model adds tokens/s of a two-layer (one sliding, one global) 31B-shaped Megatron model
(vocabulary 32768), forward + backward at S = 32768, with the old attention and the new one.
Needs a CUDA GPU; the Gemma4 code is materialised from the patches (or GEMMA4_SLIME_TREE).
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

LAYERS = {
    "global": dict(H=32, G=4, D=512, window=None),
    "sliding": dict(H=32, G=16, D=256, window=1024),
}
# FlexAttention at head_dim 512 needs small tiles to fit in shared memory (FACTS.md anchors)
FLEX_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 32,
              "num_stages": 1}


def pairs(S: int, window) -> int:
    if window is None or window >= S:
        return S * (S + 1) // 2
    return window * (window + 1) // 2 + (S - window) * window


def timed(fn, iters):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def inputs(S, H, G, D, layout):
    gen = torch.Generator(device="cuda").manual_seed(0)
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    # unit-RMS q and k as Gemma4's norms give them, scaled down so softmax is not one-hot
    q, k, v, do = r(S, H, D), r(S, G, D), r(S, G, D), r(S, H, D)
    q, k = q * D**-0.25, k * D**-0.25
    if layout == "bhsd":
        q, k, v, do = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v, do))
    return [t.requires_grad_() for t in (q, k, v)] + [do]


def step_ours(S, H, G, D, window):
    from slime_plugins.models.gemma4 import attention as A

    lay = A.build_layout([S], 1, 0, window, "cuda")
    q, k, v, do = inputs(S, H, G, D, "shd")

    def fn():
        o, _ = A.attend(q, k, v, lay.q_lo, lay.q_hi, 1.0, use_kernel=True)
        o.backward(do)
    return fn


def step_flex(S, H, G, D, window):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask(b, h, qi, ki):
        ok = ki <= qi
        if window is not None:
            ok = ok & (qi - ki < window)
        return ok

    torch._dynamo.reset()  # one compile per shape; past dynamo's recompile limit flex runs eagerly, O(S^2)
    block = create_block_mask(mask, 1, 1, S, S, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    q, k, v, do = inputs(S, H, G, D, "bhsd")

    def fn():
        o = flex(q, k, v, block_mask=block, scale=1.0, enable_gqa=True, kernel_options=FLEX_TILES)
        o.backward(do)
    return fn


def step_sdpa_mask(S, H, G, D, window):
    import torch.nn.functional as F

    q, k, v, do = inputs(S, H, G, D, "bhsd")
    pos = torch.arange(S, device="cuda")
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= (pos[:, None] - pos[None, :]) < window

    def fn():
        kh = k.repeat_interleave(H // G, dim=1)
        vh = v.repeat_interleave(H // G, dim=1)
        o = F.scaled_dot_product_attention(q, kh, vh, attn_mask=mask[None, None], scale=1.0)
        o.backward(do)
    return fn


STEPS = {"ours": step_ours, "flex": step_flex, "sdpa": step_sdpa_mask}


def measure(impl, layer, S, iters):
    shape = LAYERS[layer]
    H, G, D, window = shape["H"], shape["G"], shape["D"], shape["window"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn = STEPS[impl](S, H, G, D, window)
        sec = timed(fn, iters if impl != "sdpa" or S < 32768 else 1)
    except torch.OutOfMemoryError:
        return dict(impl=impl, layer=layer, S=S, error="out of memory")
    except Exception as e:  # a compile failure of the baseline is reported, not fatal
        return dict(impl=impl, layer=layer, S=S, error=f"{type(e).__name__}: {str(e)[:200]}")
    finally:
        fn = None
    peak = torch.cuda.max_memory_allocated()
    io = 2 * (2 * S * H * D + 2 * S * G * D) * 2  # q, o, k, v and their gradients, bf16
    flops = 14 * pairs(S, window) * H * D
    return dict(impl=impl, layer=layer, S=S, ms=sec * 1e3, tflops=flops / sec / 1e12,
                peak_gib=peak / 2**30, peak_over_io=peak / io)


def bars(layer, rows):
    """The issue's bars, checked against our rows of this run."""
    ours = {r["S"]: r for r in rows if r["impl"] == "ours" and "ms" in r}
    out = []
    if layer == "global":
        for S in (8192, 32768):
            if S in ours:
                out.append(f"global {S}: {ours[S]['tflops']:.0f} TFLOP/s (bar 150, goal 300)")
    else:
        if 32768 in ours and 65536 in ours:
            out.append(f"sliding time 64k / 32k = {ours[65536]['ms'] / ours[32768]['ms']:.2f} (bar <= 2.2)")
        if ours:
            out.append(f"sliding best {max(r['tflops'] for r in ours.values()):.0f} TFLOP/s (bar 200)")
    if 32768 in ours:
        out.append(f"{layer} peak at 32k = {ours[32768]['peak_over_io']:.2f} x io (bar <= 1.5)")
    return out


def model_tokens_per_s(S, iters):
    """A 2-layer 31B-shaped Megatron model, forward + backward, old vs new attention."""
    import g4util

    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    g4util.init_single_rank()
    model_parallel_cuda_manual_seed(1234)
    # the 31B's layer widths; a 32k vocabulary instead of 262k, whose [S, vocab] logits and
    # their gradient at S = 32768 alone would fill the GPU (the attention is what is compared)
    cfg = dict(vocab_size=32_768, head_dim=256, global_head_dim=512, sliding_window=1024,
               hidden_size_per_layer_input=0, final_logit_softcapping=30.0, num_hidden_layers=2,
               layer_types=["sliding_attention", "full_attention"], attention_k_eq_v=True,
               hidden_size=5376, intermediate_size=21504, num_attention_heads=32,
               num_key_value_heads=16, num_global_key_value_heads=4)
    out = {}
    for impl in ("reference", "flash"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model, _ = g4util.megatron_model(cfg, dtype=torch.bfloat16, gemma4_attention=impl,
                                         use_cpu_initialization=False)
        model = model.cuda().train()
        ids = torch.randint(0, cfg["vocab_size"], (1, S), device="cuda")
        packed = g4util.packed_params([S])
        packed.cu_seqlens_q = packed.cu_seqlens_q.cuda()
        packed.cu_seqlens_kv = packed.cu_seqlens_kv.cuda()

        def fn(model=model):
            logits = model(input_ids=ids, position_ids=None, attention_mask=None, packed_seq_params=packed)
            logits.square().mean().backward()
        try:
            sec = timed(fn, iters)
            out[impl] = dict(tokens_per_s=S / sec, peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        except torch.OutOfMemoryError:
            out[impl] = dict(error="out of memory")
        model = fn = None
    return out


def sweep(layer, S, kinds=("fwd", "dkdv", "dq")):
    """Try tile sizes for each of our passes at one S; print each and the best."""
    from slime_plugins.models.gemma4 import attention as A

    D = LAYERS[layer]["D"]
    grid = []
    for bm in ((16, 32, 64) if D > 256 else (32, 64, 128)):
        for bn in ((32, 64) if D > 256 else (32, 64, 128)):
            for stages in (1, 2, 3):
                for warps in (4, 8):
                    grid.append(dict(BM=bm, BN=bn, warps=warps, stages=stages))
    base = {f"{k}/{D}": v for (k, d), v in A.TILES.items() if d == D}
    for kind in kinds:
        best = None
        # dK/dV also with the score tiles transposed (keys x queries: "kt")
        for cfg in grid + ([dict(c, kt=True) for c in grid] if kind == "dkdv" else []):
            os.environ["GEMMA4_ATTENTION_TILES"] = json.dumps(dict(base, **{f"{kind}/{D}": cfg}))
            r = measure("ours", layer, S, 3)
            if "ms" in r:
                print(f"{layer} S={S} {kind} {cfg}: step {r['ms']:.1f} ms, {r['tflops']:.0f} TFLOP/s", flush=True)
                if best is None or r["ms"] < best[0]:
                    best = (r["ms"], cfg)
        if best:
            base[f"{kind}/{D}"] = best[1]
            print(f"BEST {layer} {kind}: {best[1]} ({best[0]:.1f} ms)", flush=True)
    os.environ.pop("GEMMA4_ATTENTION_TILES", None)
    print("TILES", json.dumps(base))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--layers", nargs="*", default=list(LAYERS))
    ap.add_argument("--skip", nargs="*", default=[], choices=list(STEPS))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--model", action="store_true", help="also a 2-layer 31B-shaped model at S=32768")
    ap.add_argument("--sweep", choices=list(LAYERS))
    ap.add_argument("--kinds", nargs="*", default=["fwd", "dkdv", "dq"], help="passes to sweep")
    ap.add_argument("--json", help="append every row to this JSON-lines file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU")
    import g4util  # noqa: F401  (puts the Gemma4 code on sys.path)

    if args.sweep:
        for S in args.seqs:
            sweep(args.sweep, S, args.kinds)
        return
    device = torch.cuda.get_device_name()
    rows = []
    for layer in args.layers:
        print(f"\n{layer} layers ({LAYERS[layer]}), {device}, bf16, forward+backward")
        print(f"{'S':>6} | " + " | ".join(f"{impl:>30}" for impl in STEPS if impl not in args.skip))
        failed = set()
        for S in args.seqs:
            cells = []
            for impl in STEPS:
                if impl in args.skip:
                    continue
                if impl in failed:
                    r = dict(impl=impl, layer=layer, S=S, error="skipped after out of memory")
                else:
                    r = measure(impl, layer, S, args.iters)
                if r.get("error") == "out of memory":
                    failed.add(impl)
                r["device"] = device
                rows.append(r)
                cells.append(f"{r['tflops']:5.0f} TFLOP/s {r['ms']:8.1f} ms {r['peak_gib']:5.1f} GiB"
                             if "ms" in r else r["error"][:30])
            print(f"{S:>6} | " + " | ".join(f"{c:>30}" for c in cells), flush=True)
        for line in bars(layer, [r for r in rows if r["layer"] == layer]):
            print("  " + line)
    if args.model:
        res = model_tokens_per_s(32768, 3)
        print("\n2-layer 31B-shaped model, S=32768, forward+backward:")
        for impl, r in res.items():
            print(f"  {impl:>9}: " + (f"{r['tokens_per_s']:.0f} tokens/s, peak {r['peak_gib']:.1f} GiB" if "tokens_per_s" in r else r["error"]))
        rows.append(dict(model="31B-2layer", S=32768, device=device, **{f"{k}": v for k, v in res.items()}))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    ours_failed = [f"{r['layer']} S={r['S']}: {r['error']}" for r in rows if r.get("impl") == "ours" and "error" in r]
    if ours_failed:  # a baseline may fail (it is reported in its cell); ours may not
        sys.exit("our kernels failed: " + "; ".join(ours_failed))


if __name__ == "__main__":
    main()
