"""The test-only sgl-kernel stand-in (sgl_kernel_shim/) that lets SGLang's engine run on the GPU machine:
its ops against plain references, and the rule that everything it does not provide fails loudly."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SHIM = Path(__file__).resolve().parent / "sgl_kernel_shim"


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    saved = sys.modules.pop("sgl_kernel", None)
    sys.path.insert(0, str(SHIM))
    try:
        mod = importlib.import_module("sgl_kernel")
        assert getattr(mod, "SHIM", False), mod.__file__
        yield mod
    finally:
        sys.path.remove(str(SHIM))
        sys.modules.pop("sgl_kernel", None)
        if saved is not None:
            sys.modules["sgl_kernel"] = saved


def reference_align(topk_ids, num_experts, block_size):
    """The layout the Triton fused-MoE kernel reads, built the slow obvious way."""
    flat = topk_ids.reshape(-1).tolist()
    n = len(flat)
    sorted_ids, experts = [], []
    for e in range(num_experts):
        mine = [i for i, x in enumerate(flat) if x == e]
        padded = -(-len(mine) // block_size) * block_size
        sorted_ids += mine + [n] * (padded - len(mine))
        experts += [e] * (padded // block_size)
    return sorted_ids, experts


@pytest.mark.parametrize("tokens,topk,experts,block", [(4, 3, 5, 4), (37, 8, 17, 16), (1, 2, 9, 64), (300, 4, 129, 16)])
def test_moe_align_block_size_matches_the_reference(shim, tokens, topk, experts, block):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.stack([torch.randperm(experts - 1, generator=g)[:topk] for _ in range(tokens)]).int()
    n = ids.numel()
    cap = n + (experts + 1) * (block - 1) if n >= experts + 1 else n * block
    sorted_ids = torch.full((cap,), -7, dtype=torch.int32)
    exp_ids = torch.full((-(-cap // block),), -7, dtype=torch.int32)
    post = torch.empty(1, dtype=torch.int32)
    cums = torch.empty(experts + 2, dtype=torch.int32)
    shim.moe_align_block_size(ids, experts, block, sorted_ids, exp_ids, post, cums, True)
    want_ids, want_exp = reference_align(ids, experts, block)
    total = int(post)
    assert total == len(want_ids)
    assert sorted_ids[:total].tolist() == want_ids
    assert exp_ids[: total // block].tolist() == want_exp
    assert (sorted_ids[total:] == n).all()  # padding everywhere else


def test_norm_and_activation_match_fp32_references(shim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, generator=g).bfloat16()
    w = torch.randn(64, generator=g).bfloat16()
    xf = x.double()
    want = (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()).bfloat16()
    assert torch.equal(shim.rmsnorm(x, w, 1e-6), want)
    h = torch.randn(5, 2 * 32, generator=g).bfloat16()
    a, b = h[:, :32].double(), h[:, 32:].double()
    gelu_tanh = 0.5 * a * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (a + 0.044715 * a**3)))
    out = torch.empty(5, 32, dtype=torch.bfloat16)
    shim.gelu_tanh_and_mul(h, out)
    assert (out.double() - (gelu_tanh * b)).abs().max() <= 2 ** -7 * (gelu_tanh * b).abs().max()


def test_unprovided_ops_fail_loudly_naming_the_op(shim):
    from sgl_kernel import top_k_top_p_sampling_from_probs  # importable: SGLang imports many at module level

    with pytest.raises(NotImplementedError, match="sgl_kernel.top_k_top_p_sampling_from_probs"):
        top_k_top_p_sampling_from_probs(None)
    # submodules are absent but for the ones SGLang imports unguarded: its ImportError fallbacks apply
    assert sorted(p.name for p in (SHIM / "sgl_kernel").glob("*.py")) == ["__init__.py", "kvcacheio.py", "quantization.py"]
    assert not any("Finder" in k for k in vars(shim))
    # loaded from its file: the CPU harness's own import stand-ins may sit first on sys.meta_path
    spec = importlib.util.spec_from_file_location("sgl_kernel.kvcacheio", SHIM / "sgl_kernel" / "kvcacheio.py")
    kvcacheio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kvcacheio)
    transfer_kv_per_layer = kvcacheio.transfer_kv_per_layer
    with pytest.raises(NotImplementedError, match="sgl_kernel.kvcacheio.transfer_kv_per_layer"):
        transfer_kv_per_layer()


def test_ops_used_are_logged(shim, tmp_path, monkeypatch):
    log = tmp_path / "ops"
    monkeypatch.setenv("GEMMA4_SHIM_LOG", str(log))
    monkeypatch.setattr(shim, "_used", set())
    shim.silu_and_mul(torch.ones(2, 4))
    shim.silu_and_mul(torch.ones(2, 4))
    assert [line.split()[1] for line in log.read_text().splitlines()] == ["silu_and_mul"]


def test_the_image_never_gets_the_shim():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build"))
    from patchstack.image import SUITE_FILES

    assert not any("sgl_kernel_shim" in f or f in ("tests", "tests/sglang_gemma4") for f in SUITE_FILES)
