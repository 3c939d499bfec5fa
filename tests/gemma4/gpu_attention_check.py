"""Gemma4 attention kernels on a GPU against an fp64 reference (run by hand on a GPU machine).

    python3 tests/gemma4/gpu_attention_check.py [--json out.jsonl] [--standin]

For each layer shape (the 31B's global and sliding layers, and a small odd one) and packed
sequences whose boundaries fall inside a window, with S not a multiple of any tile: the
output, log-sum-exp and the q, k, v gradients of our kernels in bf16, and of the plain
PyTorch reference in bf16, are compared with the reference in fp64 on the same bf16 inputs.
Passes when ours is within 2x the reference's own bf16 error (plus a small floor), and the
kernels in fp32 agree with fp64 to 1e-4 relative. Exit status 1 on a failure.

For the sliding cases, where flash-attn 3 or 2 is installed and passes attention.flash_check,
its path (attention.flash_plan) is held to the same bound; --standin puts a stand-in written
from flash-attn's documented contract in its place on machines without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import g4util  # noqa: E402  (the Gemma4 code on sys.path; the flash-attn stand-in)
from slime_plugins.models.gemma4 import attention as A  # noqa: E402

CASES = [
    ("global 32:4 d512", 32, 4, 512, None, [1000, 1, 517, 1379]),
    ("sliding 32:16 d256 w1024", 32, 16, 256, 1024, [2100, 9, 1500]),
    ("sliding 8:2 d128 w100", 8, 2, 128, 100, [333, 250, 31]),
    ("global 16:2 d512 (26B-A4B)", 16, 2, 512, None, [1200, 801]),
]


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run_case(name, H, G, D, window, lens):
    lay = A.build_layout(lens, 1, 0, window, "cuda")
    T = sum(lens)
    gen = torch.Generator(device="cuda").manual_seed(1)
    def r(*s):
        return torch.randn(*s, device="cuda", generator=gen, dtype=torch.float32)
    q, k, v, do = r(T, H, D) * D**-0.25, r(T, G, D) * D**-0.25, r(T, G, D), r(T, H, D)
    q, k, v, do = (t.bfloat16() for t in (q, k, v, do))  # the same bf16 values for all
    def grads(fn, dtype):
        xs = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
        o, lse = fn(*xs)
        o.backward(do.to(dtype))
        return [o.detach(), lse.detach()] + [x.grad for x in xs]
    ref = grads(lambda a, b, c: A.reference_attend(a, b, c, lay.q_lo, lay.q_hi, 1.0), torch.float64)
    ref16 = grads(lambda a, b, c: A.reference_attend(a, b, c, lay.q_lo, lay.q_hi, 1.0), torch.bfloat16)
    ours16 = grads(lambda a, b, c: A.attend(a, b, c, lay.q_lo, lay.q_hi, 1.0, use_kernel=True), torch.bfloat16)
    ours32 = grads(lambda a, b, c: A.attend(a, b, c, lay.q_lo, lay.q_hi, 1.0, use_kernel=True), torch.float32)
    names = ["out", "lse", "dq", "dk", "dv"]
    rows, ok = [], True
    for i, n in enumerate(names):
        e_ours, e_ref, e32 = rel(ours16[i], ref[i]), rel(ref16[i], ref[i]), rel(ours32[i], ref[i])
        good = e_ours <= 2 * e_ref + 2e-3 and e32 <= 1e-4
        ok &= good
        rows.append(dict(case=name, tensor=n, ours_bf16=e_ours, reference_bf16=e_ref, ours_fp32=e32, ok=good))
        print(f"{name:28} {n:4} ours bf16 {e_ours:.2e}  reference bf16 {e_ref:.2e}  ours fp32 {e32:.2e}  {'ok' if good else 'FAIL'}")
    if window is not None:  # the sliding layers' flash-attn path, where one is installed and chosen
        fa, run = A.flash_plan(lay, window, q)
        if fa is None:
            print(f"{name:28} flash-attn not used: {run}")
        else:
            fa16 = grads(lambda a, b, c: (run(a, b, c, 1.0), ref[1]), torch.bfloat16)
            for i, n in enumerate(names):
                if n == "lse":  # the varlen function returns the output only
                    continue
                e_fa, e_ref = rel(fa16[i], ref[i]), rel(ref16[i], ref[i])
                good = e_fa <= 2 * e_ref + 2e-3
                ok &= good
                rows.append(dict(case=name, tensor=n, impl=fa, bf16=e_fa, reference_bf16=e_ref, ok=good))
                print(f"{name:28} {n:4} {fa} bf16 {e_fa:.2e}  reference bf16 {e_ref:.2e}  {'ok' if good else 'FAIL'}")
    return rows, ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--standin", action="store_true",
                    help="a stand-in 'flash_attn' (g4util.flash_attn_contract) where none is installed, to run "
                         "the sliding layers' flash-attn path: its choice, its check and its arguments")
    args = ap.parse_args()
    if args.standin:
        import types

        sys.modules["flash_attn"] = types.SimpleNamespace(flash_attn_varlen_func=g4util.flash_attn_contract)
    rows, ok = [], True
    for case in CASES:
        r, good = run_case(*case)
        rows += r
        ok &= good
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(dict(r, device=torch.cuda.get_device_name())) + "\n")
    print("all within bounds" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
