"""The fused final-logit soft-cap (softcap.py) in Triton's interpreter against fp64 PyTorch:
forward and backward, large and tiny values, a size that is not a multiple of the block."""

from __future__ import annotations

import pytest
import torch

import g4util  # noqa: F401  (puts the Gemma4 code on sys.path)
from slime_plugins.models.gemma4 import softcap as SC

pytestmark = pytest.mark.skipif(SC.triton is None, reason="Triton is not installed")


def test_kernels_match_fp64_forward_and_backward():
    torch.manual_seed(0)
    cap = 30.0
    x = torch.randn(3, SC.BLOCK + 37) * 40  # well past the cap both ways
    x[0, :5] = torch.tensor([0.0, 1e-6, -1e-6, 1e4, -1e4])
    dy = torch.randn_like(x)
    xs = x.clone().requires_grad_()
    y = SC.softcap(xs, cap, use_kernel=True)
    y.backward(dy)
    xr = x.double().requires_grad_()
    yr = torch.tanh(xr / cap) * cap
    yr.backward(dy.double())
    assert float((y.double() - yr).abs().max()) < 1e-5 * cap
    assert float((xs.grad.double() - xr.grad).abs().max()) < 1e-5
    assert float(y.abs().max()) <= cap
    assert torch.equal(y[0, 3:5], torch.tensor([cap, -cap]))  # saturated, not NaN


def test_cpu_default_is_pytorch_and_agrees():
    x = torch.randn(7, 11) * 5
    plain = SC.softcap(x, 2.0)  # a CPU tensor: the PyTorch operations
    assert torch.equal(plain, torch.tanh(x / 2.0) * 2.0)
    assert float((SC.softcap(x, 2.0, use_kernel=True) - plain).abs().max()) < 1e-6
