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
their four gradients. Bars from the issue are printed next to the figures. Time per step:
CUDA events around steps run back to back, gradients fresh each step (timed, fresh_backward);
figures before 2026-11-29 (git history of bench/results) synchronised the host after every
step and accumulated the gradients (BENCH_OLD_TIMING=1 still does). On the same kernels that
changes the global layers by at most 1% at 8k and 32k; the sliding layers' steps of a few
milliseconds lose more (4k: 139 instead of 217 TFLOP/s; 32k: 274 instead of 290), and peak
memory at 32k reads 1.28-1.34x io with the accumulated gradients instead of 1.00x.

--variants times our step with other tile tables and lists each kernel's time (profiler; with
--rounds N the tables take turns N times and the median is shown);
--flex-variants tries other forms of the FlexAttention anchor and shows the fastest.

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
# --flex-variants: other ways to run the same FlexAttention anchor (the table shows the fastest
# of those that ran, and names it); "expand": K/V repeated to every query head instead of enable_gqa
FLEX_VARIANTS = {
    "gqa": dict(tiles=FLEX_TILES, expand=False),
    "expand": dict(tiles=FLEX_TILES, expand=True),
}


def pairs(S: int, window) -> int:
    if window is None or window >= S:
        return S * (S + 1) // 2
    return window * (window + 1) // 2 + (S - window) * window


OLD_TIMING = os.environ.get("BENCH_OLD_TIMING") == "1"


def timed(fn, iters):
    """Median seconds per step.  After two warm-up steps, each of `iters` timings runs `reps`
    steps back to back between two CUDA events (no host synchronisation in between, as in a
    model, where the CPU queues layers ahead of the GPU), with reps chosen so that a timing
    lasts about 50 ms; slow steps are timed one by one.  BENCH_OLD_TIMING=1: the timing used
    before 2026-11-29 (host synchronised after every step), for comparison."""
    if OLD_TIMING:
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
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    reps = max(1, min(50, int(0.05 / max(time.perf_counter() - t, 1e-6))))
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return sorted(times)[len(times) // 2]


def fresh_backward(out, grad, leaves):
    """out.backward(grad) into fresh gradients: in a model q, k and v are activations whose
    gradients flow on, never accumulated, so the step must not time an accumulation."""
    if not OLD_TIMING:  # before 2026-11-29 the gradients accumulated over the steps
        for t in leaves:
            t.grad = None
    out.backward(grad)


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
        fresh_backward(o, do, (q, k, v))
    return fn


def step_flex(S, H, G, D, window, variant="gqa"):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    tiles, expand = FLEX_VARIANTS[variant]["tiles"], FLEX_VARIANTS[variant]["expand"]

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
        if expand:
            o = flex(q, k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1),
                     block_mask=block, scale=1.0, kernel_options=tiles)
        else:
            o = flex(q, k, v, block_mask=block, scale=1.0, enable_gqa=True, kernel_options=tiles)
        fresh_backward(o, do, (q, k, v))
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
        fresh_backward(o, do, (q, k, v))
    return fn


STEPS = {"ours": step_ours, "flex": step_flex, "sdpa": step_sdpa_mask}


def measure(impl, layer, S, iters, flex_variant="gqa"):
    shape = LAYERS[layer]
    H, G, D, window = shape["H"], shape["G"], shape["D"], shape["window"]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        if impl == "flex":
            fn = step_flex(S, H, G, D, window, flex_variant)
        else:
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
    row = dict(impl=impl, layer=layer, S=S, ms=sec * 1e3, tflops=flops / sec / 1e12,
               peak_gib=peak / 2**30, peak_over_io=peak / io)
    if impl == "flex":
        row["variant"] = flex_variant
    return row


def measure_flex(layer, S, iters, variants):
    """The fastest of the FlexAttention variants asked for (each row is kept in `tried`)."""
    rows = [dict(measure("flex", layer, S, iters, v), variant=v) for v in variants]
    ok = [r for r in rows if "ms" in r]
    best = dict(min(ok, key=lambda r: r["ms"]) if ok else rows[0])
    if len(rows) > 1:
        best["tried"] = rows
    return best


def passes(layer, S, iters):
    """Our step's time per kernel (torch profiler, CUDA time per launch, the passes run one
    after the other), with the executed TFLOP/s of each: forward 2 units, dK/dV 4, dQ 3 of
    2 * pairs * heads * head_dim."""
    from torch.profiler import ProfilerActivity, profile

    from slime_plugins.models.gemma4 import attention as A

    shape = LAYERS[layer]
    H, G, D, window = shape["H"], shape["G"], shape["D"], shape["window"]
    # one kernel at a time: with dK/dV on its side stream the profiler would give dQ the
    # time the two passes shared
    saved = os.environ.get("GEMMA4_ATTENTION_TILES")
    table = json.loads(saved or "{}")
    table[f"dkdv/{D}"] = dict(A._tiles("dkdv", D), side=False)
    os.environ["GEMMA4_ATTENTION_TILES"] = json.dumps(table)
    try:
        fn = step_ours(S, H, G, D, window)
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
    finally:
        if saved is None:
            os.environ.pop("GEMMA4_ATTENTION_TILES", None)
        else:
            os.environ["GEMMA4_ATTENTION_TILES"] = saved
    unit = 2 * pairs(S, window) * H * D
    units = {"_fwd_kernel": 2, "_dkdv_kernel": 4, "_dq_kernel": 3, "_delta_kernel": 0}
    out, other = {}, []
    for ev in prof.key_averages():
        if ev.key in units:
            ms = ev.device_time_total / ev.count / 1e3
            out[ev.key] = dict(ms=ms, executed_tflops=units[ev.key] * unit / ms / 1e9)
        elif ev.device_time_total > 0:
            other.append((ev.device_time_total / iters / 1e3, ev.key))
    if os.environ.get("BENCH_OTHER_KERNELS"):
        for ms, key in sorted(other, reverse=True)[:6]:
            print(f"    other kernel per step: {ms:.3f} ms {key[:90]}")
    return out


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


def try_variants(layer, S, variants, rounds=1):
    """Our step with each of the given tile tables (JSON objects in TILES' override form,
    'pass/head_dim' -> tiles; keys not given keep TILES), then its kernels one by one.
    rounds > 1: the tables take turns, `rounds` times (7 steps each), and each line gives the
    median TFLOP/s with the lowest and highest, so that machine drift hits all of them alike."""
    results = {text: [] for text in variants}
    for _ in range(rounds):
        for text in variants:
            os.environ["GEMMA4_ATTENTION_TILES"] = text
            results[text].append(measure("ours", layer, S, 3 if rounds == 1 else 7))
    for text, rs in results.items():
        os.environ["GEMMA4_ATTENTION_TILES"] = text
        bad = [r["error"] for r in rs if "ms" not in r]
        if bad:
            print(f"{layer} S={S} {text}: {bad[0]}", flush=True)
            continue
        ms = sorted(r["ms"] for r in rs)
        tf = sorted(r["tflops"] for r in rs)
        line = f"{layer} S={S} {text}: step {ms[len(ms) // 2]:.1f} ms, {tf[len(tf) // 2]:.1f} TFLOP/s"
        if rounds > 1:
            line += f" (median of {rounds}, {tf[0]:.1f}-{tf[-1]:.1f})"
        per = passes(layer, S, 2)
        line += " | " + ", ".join(f"{k.strip('_').replace('_kernel', '')} {v['ms']:.2f} ms"
                                  f" ({v['executed_tflops']:.0f})" for k, v in per.items())
        print(line, flush=True)
    os.environ.pop("GEMMA4_ATTENTION_TILES", None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--layers", nargs="*", default=list(LAYERS))
    ap.add_argument("--skip", nargs="*", default=[], choices=list(STEPS))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--model", action="store_true", help="also a 2-layer 31B-shaped model at S=32768")
    ap.add_argument("--sweep", choices=list(LAYERS))
    ap.add_argument("--kinds", nargs="*", default=["fwd", "dkdv", "dq"], help="passes to sweep")
    ap.add_argument("--variants", nargs="*", help="tile tables (JSON) to time our step and its kernels with")
    ap.add_argument("--rounds", type=int, default=1, help="--variants: take turns this many times (median, range)")
    ap.add_argument("--flex-variants", nargs="*", default=list(FLEX_VARIANTS), choices=list(FLEX_VARIANTS),
                    help="FlexAttention forms to try; the fastest is shown")
    ap.add_argument("--json", help="append every row to this JSON-lines file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU")
    import g4util  # noqa: F401  (puts the Gemma4 code on sys.path)

    if args.sweep:
        for S in args.seqs:
            sweep(args.sweep, S, args.kinds)
        return
    if args.variants is not None:
        for layer in args.layers:
            for S in args.seqs:
                try_variants(layer, S, args.variants or ["{}"], args.rounds)
        return
    device = torch.cuda.get_device_name()
    rows = []
    for layer in args.layers:
        print(f"\n{layer} layers ({LAYERS[layer]}), {device}, bf16, forward+backward")
        print(f"{'S':>6} | " + " | ".join(f"{impl:>30}" for impl in STEPS if impl not in args.skip))
        failed = set()
        notes = []
        for S in args.seqs:
            cells = []
            for impl in STEPS:
                if impl in args.skip:
                    continue
                if impl in failed:
                    r = dict(impl=impl, layer=layer, S=S, error="skipped after out of memory")
                elif impl == "flex":
                    r = measure_flex(layer, S, args.iters, args.flex_variants)
                else:
                    r = measure(impl, layer, S, args.iters)
                if r.get("error") == "out of memory":
                    failed.add(impl)
                r["device"] = device
                rows.append(r)
                cells.append(f"{r['tflops']:5.0f} TFLOP/s {r['ms']:8.1f} ms {r['peak_gib']:5.1f} GiB"
                             if "ms" in r else r["error"][:30])
                if impl == "flex" and "tried" in r:
                    notes.append(f"  flex at {S}: " + ", ".join(
                        f"{t['variant']} {t['tflops']:.0f} TFLOP/s" if "ms" in t else f"{t['variant']} {t['error'][:40]}"
                        for t in r["tried"]))
            print(f"{S:>6} | " + " | ".join(f"{c:>30}" for c in cells), flush=True)
        for line in notes:
            print(line)
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
