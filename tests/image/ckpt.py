"""A tiny random Gemma4 checkpoint in Hugging Face's layout (config.json + model.safetensors), dense
or MoE, for the image's gpu and rl tiers.

Written from the config alone: the tensor names and shapes of transformers' Gemma4ForCausalLM
(`model.layers.{i}.self_attn.q_proj.weight`, stacked experts `experts.gate_up_proj` (E, 2*I, H)
and `experts.down_proj` (E, H, I), per-layer `layer_scalar`, tied embeddings), so it needs neither
transformers (the image's 4.57.1 has no Gemma4) nor either engine's converters: both engines read
it through their own loaders. tests/test_image_test.py loads it into transformers' Gemma4 with
no missing or unexpected tensor where transformers has Gemma4.

The configs are tiny in width and depth but keep Gemma4's head shapes (head_dim 256 on sliding
layers with a window of 64, 512 on global ones), so the attention kernels run at the real head
dims: the same configs as tests/sglang_gemma4/gpu_check.py. Weights: normal(0, initializer_range)
for matrices; norms, router scales, per-expert scales and layer scalars moved off 1, so that a
parameter used in the wrong place shows.

    python3 ckpt.py DEST {dense|moe} [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SLIDING, FULL = "sliding_attention", "full_attention"
ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
DENSE = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, global_head_dim=512,
    num_global_key_value_heads=1, attention_k_eq_v=True, layer_types=[SLIDING, FULL, SLIDING, FULL],
    sliding_window=64, hidden_size_per_layer_input=0, final_logit_softcapping=30.0,
    initializer_range=0.05, rope_parameters=ROPE,
)
MOE = dict(DENSE, attention_k_eq_v=False, num_global_key_value_heads=None, layer_types=[SLIDING, SLIDING, FULL],
           num_hidden_layers=3, enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=128)
CONFIGS = {"dense": DENSE, "moe": MOE}


def config_json(cfg: dict) -> dict:
    """config.json as a released text checkpoint writes it."""
    return dict({k: v for k, v in cfg.items() if v is not None}, model_type="gemma4_text",
                architectures=["Gemma4ForCausalLM"], tie_word_embeddings=True, torch_dtype="bfloat16",
                bos_token_id=2, eos_token_id=1, pad_token_id=0, rms_norm_eps=1e-6, max_position_embeddings=4096)


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint and its shape."""
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        full = kind == FULL
        hd = cfg["global_head_dim"] if full else cfg["head_dim"]
        kv = (cfg.get("num_global_key_value_heads") or cfg["num_key_value_heads"]) if full else cfg["num_key_value_heads"]
        out[p + "self_attn.q_proj.weight"] = (heads * hd, h)
        out[p + "self_attn.k_proj.weight"] = (kv * hd, h)
        if not (full and cfg.get("attention_k_eq_v")):
            out[p + "self_attn.v_proj.weight"] = (kv * hd, h)
        out[p + "self_attn.o_proj.weight"] = (h, heads * hd)
        out[p + "self_attn.q_norm.weight"] = (hd,)
        out[p + "self_attn.k_norm.weight"] = (hd,)
        inter = cfg["intermediate_size"]
        out[p + "mlp.gate_proj.weight"] = (inter, h)
        out[p + "mlp.up_proj.weight"] = (inter, h)
        out[p + "mlp.down_proj.weight"] = (h, inter)
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            out[p + norm + ".weight"] = (h,)
        if cfg.get("enable_moe_block"):
            e, mi = cfg["num_experts"], cfg["moe_intermediate_size"]
            out[p + "router.proj.weight"] = (e, h)
            out[p + "router.scale"] = (h,)
            out[p + "router.per_expert_scale"] = (e,)
            out[p + "experts.gate_up_proj"] = (e, 2 * mi, h)
            out[p + "experts.down_proj"] = (e, h, mi)
            for norm in ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"):
                out[p + norm + ".weight"] = (h,)
        out[p + "layer_scalar"] = (1,)
    return out


def tensors(cfg: dict, seed: int = 0):
    """The checkpoint's tensors in fp32 (a generator seeded here, so the same seed gives the same
    weights on any machine)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    std = cfg["initializer_range"]
    out = {}
    for name, shape in shapes(cfg).items():
        if name.endswith("layer_scalar"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("per_expert_scale"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("norm.weight") or name.endswith("router.scale"):
            t = 1.0 + 0.3 * torch.randn(shape, generator=g)
        else:
            t = std * torch.randn(shape, generator=g)
        out[name] = t
    return out


def write(dest: Path, kind: str, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """config.json and model.safetensors for `kind` (dense | moe) in `dest`; returns dest."""
    import torch
    from safetensors.torch import save_file

    cfg = CONFIGS[kind]
    dest.mkdir(parents=True, exist_ok=True)
    conf = config_json(cfg)
    conf["torch_dtype"] = dtype
    (dest / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1,
                                                             "pad_token_id": 0}) + "\n")
    cast = getattr(torch, dtype)
    save_file({k: v.to(cast).contiguous() for k, v in tensors(cfg, seed).items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt", "written-by": "gemma4-stack tests/image/ckpt.py", "seed": str(seed)})
    return dest


def read(dest: Path) -> tuple[dict, dict]:
    """(config dict, fp32 tensors) of a checkpoint written by write()."""
    from safetensors.torch import load_file

    conf = json.loads((dest / "config.json").read_text())
    return conf, {k: v.float() for k, v in load_file(str(dest / "model.safetensors")).items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest")
    ap.add_argument("kind", choices=sorted(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write(Path(a.dest), a.kind, a.seed))
