"""The fused final-logit soft-cap (softcap.py) on a GPU in bf16 against fp64 (run by hand on a GPU
machine; the CPU tests are test_softcap.py).

Logits of 4096 tokens x 262144 entries (the 26B-A4B's and 31B's vocabulary), scaled past the cap.
The fused kernels' forward and backward errors against fp64 must be no larger than those of the
three PyTorch operations it replaces, in bf16 (1.01x, plus one bf16 ulp at the cap for the
forward); it prints both, the time of each, and PASS or FAIL (exit status 1).

    python3 tests/gemma4/softcap_gpu_check.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def timed(fn, iters=10):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main():
    if not torch.cuda.is_available():
        sys.exit("softcap_gpu_check.py needs a CUDA GPU")
    import g4util  # noqa: F401  (puts the Gemma4 code on sys.path)
    from slime_plugins.models.gemma4.softcap import softcap

    cap = 30.0
    torch.manual_seed(0)
    x = (torch.randn(4096, 262144, device="cuda") * 25).to(torch.bfloat16)
    dy = torch.randn_like(x)
    exact_y = torch.tanh(x.double() / cap) * cap
    exact_dx = dy.double() * (1 - torch.tanh(x.double() / cap) ** 2)
    res = {}
    for name, use in (("fused", True), ("pytorch", False)):
        xs = x.clone().requires_grad_()
        y = softcap(xs, cap, use_kernel=use)
        y.backward(dy)
        res[name] = ((y.double() - exact_y).abs().max().item(), (xs.grad.double() - exact_dx).abs().max().item())
        del y, xs
        xs = x.clone().requires_grad_()
        fwd = timed(lambda: softcap(xs, cap, use_kernel=use))
        res[name] += (fwd, timed(lambda: softcap(xs, cap, use_kernel=use).backward(dy)) - fwd)
    for name, (ey, edx, tf, tb) in res.items():
        print(f"{name:8s} max |y - fp64| {ey:.4g}  max |dx - fp64| {edx:.4g}  forward {tf * 1e3:.2f} ms  "
              f"backward {tb * 1e3:.2f} ms")
    ulp = cap * 2 ** -8
    ok = res["fused"][0] <= 1.01 * res["pytorch"][0] + ulp and res["fused"][1] <= 1.01 * res["pytorch"][1]
    print("soft-cap fused vs PyTorch in bf16 against fp64:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
