"""Shared pieces of the Gemma4 tests: where the code comes from, tiny configs, both models.

The Gemma4 code lives in patches (patches/slime/.../series, group gemma4).  By default
it is materialised from them (no slime source needed: the modules are files the patches
create) and run on megatron-core from PyPI.  GEMMA4_SLIME_TREE / GEMMA4_MEGATRON_TREE
point the same tests at fully patched pinned trees instead (tests/test_gemma4_pinned.py
does that whenever the sources are reachable).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import sys
from pathlib import Path

try:
    import pytest
except ImportError:  # the GPU benchmark imports this module where pytest may be absent
    pytest = None

ROOT = Path(__file__).resolve().parents[2]
MATERIALISED = ROOT / "out" / "gemma4" / "slime"
ONLY = ("slime_plugins/models/gemma4/*", "slime/backends/megatron_utils/megatron_to_hf/gemma4.py",
        "slime/utils/tokenizer_compat.py", "scripts/gemma4/*", "scripts/run-gemma4-*.sh", "scripts/models/gemma4-*.sh",
        "tools/gemma4_*.py")

SLIDING, FULL = "sliding_attention", "full_attention"


def setup_paths() -> str:
    """Put the Gemma4 code (and a pinned Megatron, if asked) first on sys.path; say which."""
    megatron = os.environ.get("GEMMA4_MEGATRON_TREE")
    slime = os.environ.get("GEMMA4_SLIME_TREE")
    if megatron:
        sys.path.insert(0, megatron)
    if slime:
        sys.path.insert(0, slime)
        return f"slime tree {slime}"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "build"))
    cmd = [sys.executable, "-m", "patchstack", "materialise", "slime", "--gemma4", "--dest", str(MATERIALISED)]
    for glob in ONLY:
        cmd += ["--only", glob]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode not in (0, 3) or "slime_plugins/models/gemma4/modules.py" not in res.stdout:
        raise RuntimeError(f"materialising the Gemma4 patches failed:\n{res.stdout}\n{res.stderr}")
    sys.path.insert(0, str(MATERIALISED))
    return f"materialised from the patches into {MATERIALISED}"


def init_single_rank():
    """A one-rank gloo process group with Megatron's parallel state (TP = PP = EP = CP = 1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        # a file rendezvous: "tcp://" would start torch's TCPStore, which listens on every interface
        fd, path = tempfile.mkstemp(prefix="gemma4-rendezvous-")
        os.close(fd)
        os.unlink(path)
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    return parallel_state


if pytest is not None:
    # A fixture here rather than in a conftest.py: a second conftest module would shadow tests/conftest.py.
    @pytest.fixture(scope="session")
    def mpu():
        return init_single_rank()


# ----------------------------------------------------------------------------- tiny configs

# Dense: sliding and global layers, K=V on the global ones (no v_proj), a window shorter than
# the test sequences, a soft-cap small enough to bend the logits.
DENSE = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    global_head_dim=32,
    num_global_key_value_heads=1,
    attention_k_eq_v=True,
    layer_types=[SLIDING, FULL, SLIDING, FULL],
    sliding_window=5,
    hidden_size_per_layer_input=0,
    final_logit_softcapping=2.0,
    initializer_range=0.1,
    rope_parameters={
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    },
)

# MoE: every layer has the dense MLP and the routed experts; global layers keep v_proj.
MOE = dict(
    DENSE,
    attention_k_eq_v=False,
    num_global_key_value_heads=None,
    layer_types=[SLIDING, SLIDING, FULL],
    num_hidden_layers=3,
    enable_moe_block=True,
    num_experts=8,
    top_k_experts=2,
    moe_intermediate_size=32,
)

CONFIGS = {"dense": DENSE, "moe": MOE}

# The published widths of both targets (the global layers' KV head counts, 4 and 2, are assumptions).
PUBLISHED = {
    "31B": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=60, num_attention_heads=32,
                num_key_value_heads=16, num_global_key_value_heads=4),
    "26B-A4B": dict(hidden_size=2816, intermediate_size=2112, num_hidden_layers=30, num_attention_heads=16,
                    num_key_value_heads=8, num_global_key_value_heads=2, enable_moe_block=True,
                    num_experts=128, top_k_experts=8, moe_intermediate_size=704),
}


def published_config_json(size: str) -> dict:
    """config.json of a Gemma4ForConditionalGeneration checkpoint at a target's published widths."""
    raw = dict(PUBLISHED[size], head_dim=256, global_head_dim=512, attention_k_eq_v=True, sliding_window=1024,
               vocab_size=262_144, hidden_size_per_layer_input=0, final_logit_softcapping=30.0)
    return config_json(raw, "conditional_generation")


def importable(name: str) -> bool:
    """Whether a module can be found (False also when a parent package is missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def config_json(cfg: dict, layout: str = "causal_lm") -> dict:
    """config.json as a released checkpoint writes it (global_head_dim etc. as keys)."""
    text = {k: v for k, v in cfg.items() if v is not None}
    if layout == "causal_lm":
        return dict(text, model_type="gemma4_text", architectures=["Gemma4ForCausalLM"])
    return {
        "model_type": "gemma4",
        "architectures": ["Gemma4ForConditionalGeneration"],
        "text_config": dict(text, model_type="gemma4_text"),
        "vision_config": {"model_type": "gemma4_vision"},
        "tie_word_embeddings": True,
    }


def hf_model(cfg: dict, seed: int = 0, dtype=None):
    """transformers' Gemma4ForCausalLM with random weights, norms, scales and layer scalars off 1."""
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(seed)
    conf = Gemma4TextConfig(**{k: v for k, v in cfg.items() if v is not None})
    conf._attn_implementation = "eager"
    model = Gemma4ForCausalLM(conf).float().eval()
    perturb(model)
    if dtype is not None:
        model = model.to(dtype)
    return model


def perturb(model, layer_scalar: float | None = None, router_spread: float = 1.0) -> None:
    """Move what transformers initialises to 1 (norm weights, router scales, per-expert scales,
    layer scalars) off 1, so that a parameter used in the wrong place shows; `router_spread`
    widens the router's scores (at the init scale they are near-ties)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("router.scale"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("per_expert_scale"):
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith("router.proj.weight"):
                p.mul_(router_spread)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(layer_scalar if layer_scalar is not None else 0.5 + torch.rand(1).item())


def settings_for(cfg: dict, layout: str = "causal_lm"):
    from slime_plugins.models.gemma4.config import read_settings

    return read_settings(config_json(cfg, layout))


def slime_wrapped(inner):
    """The model as slime's actor holds it, DDP(Float16Module(model)): parameter names module.module.*"""
    import torch

    for _ in range(2):
        outer = torch.nn.Module()
        outer.module, outer.config = inner, inner.config
        inner = outer
    return inner


def megatron_model(cfg: dict, dtype=None, layer_types=None, pre_process=True, post_process=True, **config_overrides):
    import torch
    from slime_plugins.models.gemma4.model import Gemma4Model, build_transformer_config

    settings = settings_for(cfg)
    overrides = dict(use_cpu_initialization=True, params_dtype=dtype or torch.float32,
                     moe_token_dispatcher_type="allgather")
    if layer_types is not None:
        overrides["gemma4_layer_types"] = tuple(layer_types)
    overrides.update(config_overrides)
    config = build_transformer_config(settings, **overrides)
    return Gemma4Model(config, vocab_size=settings.vocab_size, max_sequence_length=256, pre_process=pre_process,
                       post_process=post_process,
                       share_embeddings_and_output_weights=settings.tie_word_embeddings).eval(), settings


def cpu_checkpoint_writer(setattr_=setattr) -> None:
    """Megatron's torch_dist writer syncs CUDA before reading the tensors and puts its failure flag
    on the current CUDA device; on a machine without CUDA (every tensor on the CPU, gloo) both
    become no-ops. `setattr_`: pytest's monkeypatch.setattr to undo it after a test."""
    import torch

    if not torch.cuda.is_available():
        setattr_(torch.cuda, "synchronize", lambda *a, **k: None)
        setattr_(torch.cuda, "current_device", lambda: "cpu")


def load_from_hf(model, settings, state: dict, par=None):
    from slime_plugins.models.gemma4.weights import Gemma4WeightMap, Parallel, load_into

    wmap = Gemma4WeightMap(settings)
    return load_into(model, wmap.hf_to_mcore(lambda k: state[k], par or Parallel()))


def hf_named_grads(model, settings) -> dict:
    """Our parameters' gradients, renamed and re-laid out as HF tensors (through the converter)."""
    from slime_plugins.models.gemma4.weights import Gemma4ToHF

    conv = Gemma4ToHF(settings)
    out = {}
    for name, p in model.named_parameters():
        for hf_name, t in conv.convert(name, p.grad):
            out[hf_name] = t
    assert not conv.pending
    return out


def flash_attn_contract(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                      causal=False, window_size=(-1, -1), shift=0):
    """flash-attn's documented varlen contract, computed in fp64: per segment, with seqlen_q /
    seqlen_k, query i sees keys [i + sk - sq - left, i + sk - sq + right]; causal sets right
    to 0; a row that sees nothing gives 0.  A stand-in where flash-attn is not installed (CPU
    tests, gpu_attention_check.py --standin); shift widens the window, for tests of the check."""
    import torch

    H, G, D = q.shape[1], k.shape[1], q.shape[2]
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    left, right = window_size
    if causal:
        right = 0
    outs = []
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        qs = q[cq[s]:cq[s + 1]].double()
        ks = k[ck[s]:ck[s + 1]].double().repeat_interleave(H // G, 1)
        vs = v[ck[s]:ck[s + 1]].double().repeat_interleave(H // G, 1)
        sq, sk = qs.shape[0], ks.shape[0]
        i, j = torch.arange(sq, device=q.device)[:, None], torch.arange(sk, device=q.device)[None, :]
        ok = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
        if left >= 0:
            ok &= j >= i + sk - sq - left - shift
        if right >= 0:
            ok &= j <= i + sk - sq + right
        sc = torch.einsum("thd,uhd->htu", qs, ks) * scale
        p = torch.softmax(sc.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
        outs.append(torch.einsum("htu,uhd->thd", p, vs))
    return torch.cat(outs).to(q.dtype)


def packed_params(lengths: list[int]):
    import torch
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))


def rel_max(a, b) -> float:
    """max |a - b| relative to max |b| (the reference's scale)."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


SOURCE = setup_paths()
