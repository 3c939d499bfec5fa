"""The `local` spec's grouped experts (experts.py) against Megatron's own per-expert loop and
transformers, on the CPU: forward, every gradient, empty experts, the stacked weight layout and
what happens when something moves the parameters."""

from __future__ import annotations

import logging

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS, rel_max


def _experts(model):
    return [m for n, m in model.named_modules() if n.endswith("mlp.experts") or n.endswith("moe.experts")]


def _model(dtype, impl, seed=0):
    torch.manual_seed(seed)
    extra = {"moe_router_dtype": "fp64"} if dtype == torch.float64 else {}
    model, settings = g4util.megatron_model(CONFIGS["moe"], dtype=dtype, gemma4_experts=impl, **extra)
    hf = g4util.hf_model(CONFIGS["moe"], seed=seed, dtype=dtype)
    hf.config._experts_implementation = "eager"  # transformers' per-expert loop: it runs in fp64
    g4util.load_from_hf(model, settings, hf.state_dict())
    return model, hf, settings


def _inputs(e, n_tokens_per_expert, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = e.local_experts[0].linear_fc1.weight.shape[1]
    n = sum(n_tokens_per_expert)
    x = torch.randn(n, hidden, generator=g, dtype=dtype).requires_grad_(True)
    probs = torch.rand(n, generator=g, dtype=torch.float32 if dtype != torch.float64 else dtype).requires_grad_(True)
    return x, probs, torch.tensor(n_tokens_per_expert)


def _run(e, x, probs, counts, dy):
    for p in e.parameters():
        p.grad = None
    x.grad = probs.grad = None
    y, bias = e(x, counts, probs)
    assert bias is None
    y.backward(dy)
    grads = {n: p.grad.clone() for n, p in e.named_parameters()}
    return y.detach(), x.grad.clone(), probs.grad.clone(), grads


def test_the_model_uses_the_grouped_experts_and_their_names_are_sequential_mlps(mpu):
    from megatron.core.transformer.moe.experts import SequentialMLP
    from slime_plugins.models.gemma4.experts import Gemma4Experts

    model, _, _ = _model(torch.float32, "grouped")
    experts = _experts(model)
    assert experts and all(isinstance(e, Gemma4Experts) and isinstance(e, SequentialMLP) for e in experts)
    assert all(e.why_not_grouped() is None for e in experts)
    names = [n for n, _ in experts[0].named_parameters()]
    assert names == [f"local_experts.{j}.linear_fc{k}.weight" for j in range(8) for k in (1, 2)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grouped_equals_megatrons_loop_with_empty_experts(mpu, dtype):
    """fp64 runs the grouped products as a per-expert loop of their own (torch has no fp64 grouped
    product), fp32 through torch._grouped_mm where this torch has it: both against SequentialMLP's
    forward on the same weights, including experts that receive no token (their gradient is 0)."""
    model, _, _ = _model(dtype, "grouped")
    e = _experts(model)[0]
    counts = [3, 0, 5, 1, 0, 7, 2, 4]  # two experts without a token
    x, probs, tpe = _inputs(e, counts, dtype)
    dy = torch.randn(sum(counts), x.shape[1], dtype=dtype, generator=torch.Generator().manual_seed(3))
    ours = _run(e, x, probs, tpe, dy)
    e.impl = "loop"
    ref = _run(e, x, probs, tpe, dy)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel_max(ours[0], ref[0]) < tol
    assert rel_max(ours[1], ref[1]) < tol
    assert rel_max(ours[2], ref[2]) < tol
    assert set(ours[3]) == set(ref[3])
    for n in ref[3]:
        if n.startswith(("local_experts.1.", "local_experts.4.")):
            assert ours[3][n].abs().max() == 0 and ref[3][n].abs().max() == 0, n
        else:
            assert rel_max(ours[3][n], ref[3][n]) < tol, n


def test_native_grouped_product_agrees_with_the_loop_definition():
    """The two grouped forms the experts use, torch's against `_loop_mm` (skipped where torch has no
    CPU grouped product)."""
    from slime_plugins.models.gemma4.experts import _loop_mm

    if not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no _grouped_mm")
    counts = [2, 0, 5, 3]
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    a = torch.randn(10, 16)
    b = torch.randn(4, 16, 8)
    try:
        got = torch._grouped_mm(a, b, offs=offs)
    except RuntimeError as err:
        pytest.skip(f"torch {torch.__version__} has no CPU grouped product: {err}")
    assert rel_max(got, _loop_mm(a, b, counts)) < 1e-6
    dy = torch.randn(10, 8)
    assert rel_max(torch._grouped_mm(a.t(), dy, offs=offs), _loop_mm(a.t(), dy, counts)) < 1e-6


def test_weights_are_one_block_and_stay_one_after_a_dtype_conversion(mpu):
    from slime_plugins.models.gemma4.experts import stacked_view

    model, _, _ = _model(torch.float32, "grouped")
    model = model.double()
    for e in _experts(model):
        for name in ("linear_fc1", "linear_fc2"):
            ws = [getattr(x, name).weight for x in e.local_experts]
            view = stacked_view(ws)
            assert view is not None and view.dtype == torch.float64, name
            # a view, not a copy: writing the block writes the parameter
            with torch.no_grad():
                view[3].zero_()
            assert ws[3].abs().max() == 0


def test_parameters_moved_elsewhere_still_give_the_loops_result_and_say_so(mpu, caplog):
    """As Megatron's distributed optimizer does: each parameter re-homed into another buffer.
    The grouped path then stacks a copy per call (logged) and trains the parameters themselves."""
    from slime_plugins.models.gemma4 import experts as mod

    model, _, _ = _model(torch.float64, "grouped")
    e = _experts(model)[0]
    buf = torch.zeros(sum(p.numel() + 64 for p in e.parameters()), dtype=torch.float64)
    at = 0
    for p in reversed(list(e.parameters())):  # reverse order with gaps: no constant forward step
        n = p.numel()
        buf[at:at + n].copy_(p.data.flatten())
        p.data = buf[at:at + n].view_as(p)
        at += n + 64
    assert mod.stacked_view([x.linear_fc1.weight for x in e.local_experts]) is None
    counts = [4, 1, 0, 2, 3, 2, 1, 5]
    x, probs, tpe = _inputs(e, counts, torch.float64, seed=1)
    dy = torch.randn(sum(counts), x.shape[1], dtype=torch.float64)
    mod._said.clear()
    with caplog.at_level(logging.INFO, logger=mod.__name__):
        ours = _run(e, x, probs, tpe, dy)
    assert "not one stacked block" in caplog.text
    e.impl = "loop"
    ref = _run(e, x, probs, tpe, dy)
    for a, b in zip(ours[:3], ref[:3]):
        assert rel_max(a, b) < 1e-12
    assert all(rel_max(ours[3][n], ref[3][n]) < 1e-12 or ref[3][n].abs().max() == 0 for n in ref[3])


def test_a_token_count_that_does_not_match_the_tokens_is_refused(mpu):
    model, _, _ = _model(torch.float32, "grouped")
    e = _experts(model)[0]
    x, probs, _ = _inputs(e, [2] * 8, torch.float32)
    with pytest.raises(ValueError, match="16 tokens for tokens_per_expert summing to 15"):
        e(x, torch.tensor([2] * 7 + [1]), probs)


def test_an_unknown_implementation_is_refused(mpu):
    with pytest.raises(ValueError, match="gemma4_experts must be one of"):
        _model(torch.float32, "batched")


@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_whole_moe_model_matches_transformers(mpu, impl):
    """The independent reference: transformers' Gemma4 MoE (its per-expert loop), fp32, logits and
    every gradient, within the tolerances of test_model_parity.py.  (Both models keep some fp32
    steps even when built in fp64, about 6e-7 apart, so fp64 would not be a sharper test here;
    grouped against loop is checked to 1e-12 in fp64 above.)"""
    import torch.nn.functional as F

    model, hf, settings = _model(torch.float32, impl)
    ids = torch.randint(1, settings.vocab_size, (2, 13), generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, settings.vocab_size, (2, 13), generator=torch.Generator().manual_seed(6))
    ref = hf(ids).logits
    ours = model(input_ids=ids, position_ids=None, attention_mask=None)
    assert rel_max(ours, ref) < 1e-5
    F.cross_entropy(ref.flatten(0, 1), labels.flatten()).backward()
    F.cross_entropy(ours.flatten(0, 1), labels.flatten()).backward()
    got = g4util.hf_named_grads(model, settings)
    want = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None and n != "lm_head.weight"}
    assert set(got) == set(want)
    worst = max((rel_max(got[n], g), n) for n, g in want.items())
    assert worst[0] < 1e-4, worst
