"""Gemma4 weight conversion speed on synthetic tensors of the real shapes, both directions.

HF -> Megatron: every tensor of a rank (TP=1, and one rank of TP=8) produced by
Gemma4WeightMap.hf_to_mcore from in-memory HF tensors (QKV packing, GLU interleave, shards).
Megatron -> HF: Gemma4ToHF.convert on full (TP-gathered) parameters, experts stacked.
GB/s counts the bytes of the HF tensors (read, or written). CPU only; no GPU, no disk.

    python3 bench/gemma4_convert.py [--model 31B|26B-A4B] [--layers 3] [--runs 3]

The Gemma4 code is materialised from the patches (as the tests do) unless GEMMA4_SLIME_TREE
is set. Shapes as bench/gemma4_bf16_layers.py (global KV heads there are assumptions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gemma4"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import g4util  # noqa: E402  (puts the Gemma4 code on sys.path)
from gemma4_bf16_layers import MODELS, F, S  # noqa: E402


def synthetic_state(settings, wmap):
    """bf16 tensors of the checkpoint's shapes (values do not matter for speed)."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.empty(wmap.hf_shape(k), dtype=torch.bfloat16).uniform_(-1, 1, generator=gen)
            for k in wmap.hf_keys()}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def best(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="31B")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from slime_plugins.models.gemma4.weights import Gemma4ToHF, Gemma4WeightMap, Parallel, merge_tp

    types = ([S] * 5 + [F]) * (args.layers // 6 + 1)
    cfg = dict(MODELS[args.model], num_hidden_layers=args.layers, layer_types=types[: args.layers - 1] + [F])
    settings = g4util.settings_for(cfg)
    wmap = Gemma4WeightMap(settings, expert_layout="grouped")
    state = synthetic_state(settings, wmap)
    hf_bytes = nbytes(state.values())
    print(f"{args.model}-like, {args.layers} layers ({', '.join(settings.layer_types)}), vocab {settings.vocab_size}: "
          f"{len(state)} HF tensors, {hf_bytes / 1e9:.2f} GB bf16", flush=True)

    t, mcore = best(lambda: dict(wmap.hf_to_mcore(state.__getitem__, Parallel())), args.runs)
    print(f"HF -> Megatron, TP=1:           {t:.3f} s, {hf_bytes / t / 1e9:.2f} GB/s ({len(mcore)} tensors)", flush=True)
    t8, shard = best(lambda: dict(wmap.hf_to_mcore(state.__getitem__, Parallel(tp_size=8, tp_rank=3))), args.runs)
    print(f"HF -> Megatron, TP=8 (rank 3):  {t8:.3f} s, {hf_bytes / t8 / 1e9:.2f} GB/s of checkpoint read, "
          f"{nbytes(shard.values()) / 1e9:.2f} GB kept", flush=True)

    def to_hf():
        conv = Gemma4ToHF(settings)
        out = {}
        for name, tensor in mcore.items():
            for k, v in conv.convert("module.module." + name, merge_tp(name, [tensor])):
                out[k] = v
        assert not conv.pending
        return out

    t2, back = best(to_hf, args.runs)
    out_bytes = nbytes(back.values())
    print(f"Megatron -> HF (full params):   {t2:.3f} s, {out_bytes / t2 / 1e9:.2f} GB/s ({len(back)} tensors)", flush=True)
    assert all(torch.equal(back[k], state[k]) for k in back), "round trip changed a tensor"
    print("round trip bit-exact: yes")


if __name__ == "__main__":
    main()
