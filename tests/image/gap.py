"""The rollout / training log-probability gap: per-token log p of the next token from two engines
on the same weights and tokens, each also against an fp32 reference, and the bound it is held to.

Used by the image's gpu tier (SGLang's server or its model classes against our Megatron model;
the `te` spec against the `local` one) and by tests/sglang_gemma4/gpu_check.py, which measured the
figures the bound rests on.

The bound: mean |log p(rollout) - log p(train)| <= BOUND x the smaller of the two engines' own
mean distance from the fp32 reference (their bf16 noise floor on these weights).
Why: two engines that compute the same function in bf16 differ only in rounding, and their gap is
then a fraction of either one's own rounding error; measured on one H200 for SGLang's model
classes against our Megatron model (docs/measured.md, "Gemma4 in SGLang"): 0.20 of the floor for
the dense model (0.042 against 0.21) and 0.37 for the MoE (0.097 against 0.26; expert choices
that flip between engines add to it). A different function (a norm in the wrong place, a
transposed expert, a wrong RoPE or scale) moves one engine away from the reference by more than
its floor, and the gap with it. BOUND = 0.5 sits above both measurements and below the floor.
Its limit: a change that touches a few tokens only (a window one key too wide) moves the mean by
little; the per-token maximum is printed beside it for that reason.
"""

from __future__ import annotations

BOUND = 0.5


def token_logprobs(logits, seq):
    """log p(seq[i+1] | seq[:i+1]) for every position but the last, in float64."""
    import torch

    lp = torch.log_softmax(logits.double(), dim=-1)
    return lp[:-1].gather(-1, torch.tensor(seq[1:], device=lp.device)[:, None])[:, 0]


def record(rollout: list, train: list, reference: list) -> dict:
    """Per-token log-probabilities (one tensor per sequence from each side) -> the gap's figures."""
    import torch

    a, b, r = (torch.cat([x.double().cpu() for x in side]) for side in (rollout, train, reference))
    g, ar, br = (a - b).abs(), (a - r).abs(), (b - r).abs()
    return dict(tokens=int(g.numel()), rollout_vs_train_mean=float(g.mean()), rollout_vs_train_max=float(g.max()),
                rollout_vs_fp32_mean=float(ar.mean()), rollout_vs_fp32_max=float(ar.max()),
                train_vs_fp32_mean=float(br.mean()), train_vs_fp32_max=float(br.max()))


def verdict(rec: dict, bound: float = BOUND) -> tuple[bool, str]:
    """Whether the gap is within the bound, and the sentence that says so with the figures."""
    floor = min(rec["rollout_vs_fp32_mean"], rec["train_vs_fp32_mean"])
    limit = bound * floor
    ok = rec["rollout_vs_train_mean"] <= limit
    text = (f"gap mean {rec['rollout_vs_train_mean']:.4f} / max {rec['rollout_vs_train_max']:.3f} over "
            f"{rec['tokens']} tokens; bf16 floor (vs fp32) rollout {rec['rollout_vs_fp32_mean']:.4f}, train "
            f"{rec['train_vs_fp32_mean']:.4f}; bound {bound} x {floor:.4f} = {limit:.4f}: "
            + ("within" if ok else "EXCEEDED"))
    return ok, text
