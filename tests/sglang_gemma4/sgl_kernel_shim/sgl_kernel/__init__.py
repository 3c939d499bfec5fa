"""A test-only stand-in for sgl-kernel, for running SGLang v0.5.9's engine on a GPU machine where the
real sgl-kernel cannot be installed (its wheel is built for torch 2.9.1; the machine has another).

It is never part of the image (the image has the real sgl-kernel; `build/patchstack/image.py` copies
only the files in SUITE_FILES), and nothing made through it is reported as the real thing: every op
it provides writes its name, once per process, to the file named by GEMMA4_SHIM_LOG (and logs a
warning), so a run can list which of sgl-kernel's ops were replaced.

What it provides is what SGLang calls on Gemma4's path with CUDA (RMSNorm, GeLU-and-mul, the MoE
block alignment for the Triton fused-MoE runner), written in PyTorch to the ops' documented
semantics: fp32 arithmetic inside, one rounding to the output dtype. Every other name resolves to a
function that raises NotImplementedError naming the op, so an unexpected path fails loudly instead
of computing something else (SGLang imports many of them at module level). Submodules
(sgl_kernel.flash_attn, sgl_kernel.scalar_type, ...) do not exist: SGLang's own ImportError
fallbacks take over there, as with an sgl-kernel build that lacks them.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

__version__ = "0.0.0+gemma4-stack-test-shim"
SHIM = True

_logger = logging.getLogger("sgl_kernel_shim")
_used: set[str] = set()


def _note(op: str) -> None:
    if op in _used:
        return
    _used.add(op)
    _logger.warning("sgl_kernel shim: %s replaced by a PyTorch implementation (not sgl-kernel)", op)
    path = os.environ.get("GEMMA4_SHIM_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {op}\n")


# ----------------------------------------------------------------------------- norms


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def _put(y: torch.Tensor, out):
    if out is None:
        return y
    out.copy_(y)
    return out


def _add_then_norm(input, residual, weight, eps):
    """residual += input (summed in fp32, stored in the dtype); input = rmsnorm(that sum)."""
    s = input.float() + residual.float()
    residual.copy_(s.to(residual.dtype))
    input.copy_(_rms(s, weight, eps).to(input.dtype))


def rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    _note("rmsnorm")
    return _put(_rms(input, weight, eps).to(input.dtype), out)


def fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    _note("fused_add_rmsnorm")
    _add_then_norm(input, residual, weight, eps)


def gemma_rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    """Gemma's convention (1 + weight); Gemma4 itself uses the plain one."""
    _note("gemma_rmsnorm")
    return _put(_rms(input, weight.float() + 1.0, eps).to(input.dtype), out)


def gemma_fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    _note("gemma_fused_add_rmsnorm")
    _add_then_norm(input, residual, weight.float() + 1.0, eps)


# ----------------------------------------------------------------------------- activations


def _act_and_mul(name, act, input, out=None, enable_pdl=None):
    _note(name)
    d = input.shape[-1] // 2
    return _put((act(input[..., :d].float()) * input[..., d:].float()).to(input.dtype), out)


def gelu_tanh_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul("gelu_tanh_and_mul", lambda a: F.gelu(a, approximate="tanh"), input, out)


def gelu_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul("gelu_and_mul", F.gelu, input, out)


def silu_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul("silu_and_mul", F.silu, input, out)


# ----------------------------------------------------------------------------- MoE


def moe_align_block_size(
    topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
    cumsum_buffer, pad_sorted_token_ids=False,
):
    """The Triton fused-MoE runner's token layout, in place, without host synchronisation (so it
    can be captured in a CUDA graph): the (token, slot) indices grouped by expert, each expert's
    group padded to a multiple of block_size with the value topk_ids.numel(); the expert of every
    block; the padded total. num_experts counts the extra id SGLang reserves for filtered experts
    (-1, mapped to the last id)."""
    _note("moe_align_block_size")
    flat = topk_ids.reshape(-1).long()
    n = flat.numel()
    flat = torch.where(flat < 0, torch.full_like(flat, num_experts - 1), flat)
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    starts[1:] = torch.cumsum(padded, 0)
    cumsum_buffer[: num_experts + 1].copy_(starts.to(cumsum_buffer.dtype))
    num_tokens_post_pad.reshape(-1)[:1].copy_(starts[-1:].to(num_tokens_post_pad.dtype))
    first = torch.cumsum(counts, 0) - counts  # where each expert's tokens begin in sorted order
    order = torch.sort(flat, stable=True).indices
    expert_of = flat[order]
    pos = starts[expert_of] + torch.arange(n, device=flat.device) - first[expert_of]
    if pad_sorted_token_ids:
        sorted_token_ids.fill_(n)
    sorted_token_ids.scatter_(0, pos, order.to(sorted_token_ids.dtype))
    blocks = torch.arange(experts_ids.numel(), device=flat.device) * block_size
    which = torch.searchsorted(starts[1:], blocks, right=True).clamp_(max=num_experts - 1)
    experts_ids.copy_(which.to(experts_ids.dtype))


def moe_sum_reduce(input, output, routed_scaling_factor=1.0):
    _note("moe_sum_reduce")
    output.copy_((input.float().sum(dim=1) * routed_scaling_factor).to(output.dtype))


# ----------------------------------------------------------------------------- everything else


def _missing(qualname: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel shim: {qualname} is not provided by the test shim (the real sgl-kernel is not "
            "installed on this machine); this code path cannot run here"
        )

    op.__name__ = qualname.rsplit(".", 1)[-1]
    op.__qualname__ = qualname
    op.shim_missing = True
    return op


# SGLang registers fake (meta) implementations for some of sgl-kernel's torch ops at import, which
# needs the ops to exist: they are defined here with the real ops' argument lists and a CUDA
# implementation that raises, like the other ops this shim does not provide.
_SCHEMAS = {
    "sgl_per_token_group_quant_8bit": "(Tensor input, Tensor(a!) output_q, Tensor(b!) output_s, int group_size, "
    "float eps, float fp8_min, float fp8_max, bool scale_ue8m0) -> ()",
    "sgl_per_token_group_quant_fp8": "(Tensor input, Tensor(a!) output_q, Tensor(b!) output_s, int group_size, "
    "float eps, float fp8_min, float fp8_max, bool scale_ue8m0) -> ()",
    "sgl_per_token_quant_fp8": "(Tensor input, Tensor(a!) output_q, Tensor(b!) output_s) -> ()",
    "fp8_scaled_mm": "(Tensor mat_a, Tensor mat_b, Tensor scales_a, Tensor scales_b, ScalarType out_dtype, "
    "Tensor? bias=None) -> Tensor",
    "moe_fused_gate": "(Tensor input_tensor, Tensor bias, int num_expert_group, int topk_group, int topk, "
    "int num_fused_shared_experts=0, float routed_scaling_factor=0, bool apply_routed_scaling_factor_on_output="
    "False) -> Tensor[]",
}
_LIB = torch.library.Library("sgl_kernel", "FRAGMENT")
for _name, _schema in _SCHEMAS.items():
    _LIB.define(_name + _schema)
    _LIB.impl(_name, _missing(f"torch.ops.sgl_kernel.{_name}"), "CUDA")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(f"sgl_kernel.{name}")
