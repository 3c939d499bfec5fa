"""HF <-> Megatron weight conversion: key contract, bit-exact round trips under TP/PP/EP, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS


def _imports():
    from slime_plugins.models.gemma4 import weights

    return weights


def _hf_state(kind, seed=0):
    return {k: v.clone() for k, v in g4util.hf_model(CONFIGS[kind], seed=seed).state_dict().items()}


def _expected_keys(state, settings):
    keys = set(state)
    if settings.tie_word_embeddings:
        keys.discard("lm_head.weight")  # tied: not in a saved checkpoint, not sent to SGLang
    return keys


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_converter_emits_exactly_transformers_keys_and_shapes(mpu, kind):
    w = _imports()
    state = _hf_state(kind)
    model, settings = g4util.megatron_model(CONFIGS[kind])
    g4util.load_from_hf(model, settings, state)
    conv = w.Gemma4ToHF(settings)
    emitted = {}
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar")]
    for name, tensor in named:
        for hf_name, t in conv.convert("module.module." + name, tensor.detach()):
            assert hf_name not in emitted, f"{hf_name} emitted twice"
            emitted[hf_name] = t
    assert not conv.pending
    assert set(emitted) == _expected_keys(state, settings)
    for k, t in emitted.items():
        assert t.shape == state[k].shape, k
        assert torch.equal(t, state[k]), k
    # the weight map's own idea of the checkpoint agrees with transformers
    wmap = w.Gemma4WeightMap(settings)
    assert set(wmap.hf_keys()) == _expected_keys(state, settings)
    assert all(wmap.hf_shape(k) == tuple(state[k].shape) for k in wmap.hf_keys())


def _simulated_round_trip(settings, state, tp, ep, pp, expert_layout):
    """HF -> per-rank Megatron shards -> (slime's gathers, simulated) -> HF."""
    w = _imports()
    wmap = w.Gemma4WeightMap(settings, expert_layout=expert_layout)
    layers = settings.num_hidden_layers
    per_stage = [layers // pp + (1 if s < layers % pp else 0) for s in range(pp)]
    conv = w.Gemma4ToHF(settings)
    out = {}
    offset = 0
    for stage, count in enumerate(per_stage):
        shards = {}  # (tp_rank, ep_rank) -> {name: tensor}
        for tp_rank in range(tp):
            for ep_rank in range(ep):
                par = w.Parallel(tp_size=tp, tp_rank=tp_rank, ep_size=ep, ep_rank=ep_rank,
                                 layer_offset=offset, num_layers=count,
                                 pre_process=stage == 0, post_process=stage == pp - 1)
                shards[(tp_rank, ep_rank)] = dict(wmap.hf_to_mcore(state.__getitem__, par))
        names = shards[(0, 0)].keys()
        for name in names:
            if ".experts." in name:
                # experts differ per EP rank; slime renames the local index to the global one
                for ep_rank in range(ep):
                    t = shards[(0, ep_rank)][name]
                    local = int(name.split("local_experts.")[1].split(".")[0]) if "local_experts." in name \
                        else int(name.rsplit("weight", 1)[1])
                    glob = local + ep_rank * (settings.num_experts // ep)
                    gname = name.replace(f"local_experts.{local}.", f"local_experts.{glob}.") \
                        if "local_experts." in name else name[: -len(str(local))] + str(glob)
                    gname = gname.replace("decoder.layers.", "decoder.layers.#").split("#")
                    li, rest = gname[1].split(".", 1)
                    full = f"module.module.decoder.layers.{int(li) + offset}.{rest}"
                    for k, v in conv.convert(full, t):
                        out[k] = v
                continue
            full_tensor = w.merge_tp(name, [shards[(r, 0)][name] for r in range(tp)])
            if name.startswith("decoder.layers."):
                li, rest = name[len("decoder.layers."):].split(".", 1)
                name = f"decoder.layers.{int(li) + offset}.{rest}"
            for k, v in conv.convert("module.module." + name, full_tensor):
                out[k] = v
        offset += count
    assert not conv.pending
    return out


@pytest.mark.parametrize("kind,tp,ep,pp,layout", [
    ("dense", 1, 1, 1, "sequential"),
    ("dense", 2, 1, 2, "sequential"),
    ("moe", 1, 1, 1, "grouped"),
    ("moe", 2, 2, 1, "sequential"),
    ("moe", 2, 2, 3, "grouped"),
    ("moe", 1, 4, 2, "sequential"),
])
def test_round_trip_is_bit_exact_for_every_key(kind, tp, ep, pp, layout):
    state = _hf_state(kind)
    settings = g4util.settings_for(CONFIGS[kind])
    back = _simulated_round_trip(settings, state, tp, ep, pp, layout)
    assert set(back) == _expected_keys(state, settings)
    for k in back:
        assert torch.equal(back[k], state[k]), k


def test_last_pipeline_stage_gets_its_copy_of_tied_embeddings():
    w = _imports()
    settings = g4util.settings_for(CONFIGS["dense"])
    state = _hf_state("dense")
    wmap = w.Gemma4WeightMap(settings)
    last = dict(wmap.hf_to_mcore(state.__getitem__, w.Parallel(tp_size=2, tp_rank=1, layer_offset=2, num_layers=2,
                                                                pre_process=False, post_process=True)))
    half = settings.vocab_size // 2
    assert torch.equal(last["output_layer.weight"], state["model.embed_tokens.weight"][half:])
    assert "embedding.word_embeddings.weight" not in last
    single = dict(wmap.hf_to_mcore(state.__getitem__, w.Parallel()))
    assert "output_layer.weight" not in single  # one stage: the output layer uses the embedding itself


def test_tp2_shards_are_what_megatron_tp_ranks_hold():
    # Each TP rank holds whole KV groups of linear_qkv and [gate shard; up shard] of fc1.
    w = _imports()
    settings = g4util.settings_for(CONFIGS["dense"])
    state = _hf_state("dense")
    wmap = w.Gemma4WeightMap(settings)
    r1 = dict(wmap.hf_to_mcore(state.__getitem__, w.Parallel(tp_size=2, tp_rank=1)))
    d, H = settings.head_dim, settings.hidden_size
    q = state["model.layers.0.self_attn.q_proj.weight"].view(2, 2 * d, H)  # 2 groups of 2 heads
    k = state["model.layers.0.self_attn.k_proj.weight"].view(2, d, H)
    v = state["model.layers.0.self_attn.v_proj.weight"].view(2, d, H)
    assert torch.equal(r1["decoder.layers.0.self_attention.linear_qkv.weight"], torch.cat([q[1], k[1], v[1]]))
    gate = state["model.layers.0.mlp.gate_proj.weight"]
    up = state["model.layers.0.mlp.up_proj.weight"]
    half = gate.shape[0] // 2
    assert torch.equal(r1["decoder.layers.0.mlp.linear_fc1.weight"], torch.cat([gate[half:], up[half:]]))
    # K=V global layer: no v rows at all
    q3 = state["model.layers.1.self_attn.q_proj.weight"]
    assert r1["decoder.layers.1.self_attention.linear_qkv.weight"].shape[0] == (q3.shape[0] + 32) // 2


def _save_checkpoint(tmp_path, kind, layout="causal_lm", extra=None, drop=()):
    from safetensors.torch import save_file

    state = _hf_state(kind)
    settings = g4util.settings_for(CONFIGS[kind], layout)
    if layout == "conditional_generation":
        # the multimodal model as transformers lays it out: a vision tower beside the text model
        from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

        vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, head_dim=16)
        text = Gemma4TextConfig(**{k: v for k, v in CONFIGS[kind].items() if v is not None})
        full = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                           audio_config=None)).state_dict()
        renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
                   for k, v in state.items()}
        assert set(renamed) <= set(full)
        state = dict(full, **renamed)
        assert any(k.startswith("model.vision_tower.") for k in state)
    state.pop("lm_head.weight")
    for k in drop:
        state.pop(k)
    state.update(extra or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(g4util.config_json(CONFIGS[kind], layout)))
    return settings


@pytest.mark.parametrize("layout", ["causal_lm", "conditional_generation"])
def test_a_checkpoint_loads_into_megatron_and_gives_transformers_logits(mpu, tmp_path, layout, caplog):
    w = _imports()
    _save_checkpoint(tmp_path, "moe", layout)
    model, settings = g4util.megatron_model(CONFIGS["moe"])
    with caplog.at_level("INFO"):
        w.load_hf_checkpoint([model], tmp_path)
    if layout == "conditional_generation":
        assert "vision_tower" in caplog.text and "ignored" in caplog.text
    hf = g4util.hf_model(CONFIGS["moe"])
    ids = torch.randint(0, settings.vocab_size, (2, 11))
    assert g4util.rel_max(model(input_ids=ids, position_ids=None, attention_mask=None), hf(ids).logits) < 1e-5


def test_unknown_and_missing_checkpoint_keys_are_named(mpu, tmp_path):
    w = _imports()
    _save_checkpoint(tmp_path, "dense", extra={"model.layers.0.self_attn.mystery.weight": torch.zeros(1)})
    model, _ = g4util.megatron_model(CONFIGS["dense"])
    with pytest.raises(w.Gemma4WeightError, match=r"model\.layers\.0\.self_attn\.mystery\.weight"):
        w.load_hf_checkpoint([model], tmp_path)
    _save_checkpoint(tmp_path, "dense", drop=["model.layers.2.mlp.up_proj.weight"])
    with pytest.raises(w.Gemma4WeightError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
        w.load_hf_checkpoint([model], tmp_path)
    # a tower key is only "ignored" in the multimodal layout; in a text-only checkpoint it is unknown
    _save_checkpoint(tmp_path, "dense", extra={"model.vision_tower.x.weight": torch.zeros(1)})
    with pytest.raises(w.Gemma4WeightError, match="vision_tower"):
        w.load_hf_checkpoint([model], tmp_path)


def test_megatron_names_the_converter_does_not_know_are_errors():
    w = _imports()
    conv = w.Gemma4ToHF(g4util.settings_for(CONFIGS["moe"]))
    with pytest.raises(w.Gemma4WeightError, match="self_attention.linear_qkv.bias"):
        conv.convert("module.module.decoder.layers.0.self_attention.linear_qkv.bias", torch.zeros(1))
    with pytest.raises(w.Gemma4WeightError, match="layer 7"):
        conv.convert("module.module.decoder.layers.7.input_layernorm.weight", torch.zeros(1))
    with pytest.raises(w.Gemma4WeightError, match="expert 8"):
        conv.convert("module.module.decoder.layers.0.mlp.experts.linear_fc1.weight8", torch.zeros(1))


def test_experts_are_sent_stacked_once_all_have_arrived():
    w = _imports()
    settings = g4util.settings_for(CONFIGS["moe"])
    conv = w.Gemma4ToHF(settings)
    E, inter, H = settings.num_experts, settings.moe_intermediate_size, settings.hidden_size
    tensors = [torch.full((2 * inter, H), float(e)) for e in range(E)]
    order = list(range(E))[::-1]  # any arrival order
    for n, e in enumerate(order):
        got = conv.convert(f"module.module.decoder.layers.2.mlp.experts.linear_fc1.weight{e}", tensors[e])
        if n < E - 1:
            assert got == [] and conv.pending == [f"layer 2 linear_fc1: {n + 1}/{E} experts"]
    (name, stacked), = got
    assert name == "model.layers.2.experts.gate_up_proj" and stacked.shape == (E, 2 * inter, H)
    assert [stacked[e, 0, 0].item() for e in range(E)] == [float(e) for e in range(E)]


def test_layer_scalars_are_read_once_and_a_missing_one_is_named(mpu, tmp_path):
    w = _imports()
    settings = _save_checkpoint(tmp_path, "dense", drop=["model.layers.3.layer_scalar"])
    with pytest.raises(w.Gemma4WeightError, match=r"layer\(s\) \[3\].*model\.layers\.3\.layer_scalar"):
        w.broadcast_layer_scalars(tmp_path, settings)
    values = w.broadcast_layer_scalars(tmp_path, settings, allow_missing=True)
    assert torch.isnan(values[3]) and not torch.isnan(values[:3]).any()
    model, _ = g4util.megatron_model(CONFIGS["dense"])
    assert w.apply_layer_scalars([model], values) == 3
    state = _hf_state("dense")
    for i in range(3):
        assert model.decoder.layers[i].layer_scalar.item() == state[f"model.layers.{i}.layer_scalar"].item()
    assert model.decoder.layers[3].layer_scalar.item() == 1.0


def test_slime_entry_point_dispatches_every_spelling(tmp_path):
    from argparse import Namespace

    import importlib.util

    import slime_plugins.models.gemma4.config as cfg_module

    # slime's megatron_to_hf package imports triton and more in its __init__: load our file alone
    tree = cfg_module.__file__.rsplit("/slime_plugins/", 1)[0]
    spec = importlib.util.spec_from_file_location(
        "gemma4_megatron_to_hf", f"{tree}/slime/backends/megatron_utils/megatron_to_hf/gemma4.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    convert_gemma4_to_hf, is_gemma4_name = entry.convert_gemma4_to_hf, entry.is_gemma4_name

    assert all(map(is_gemma4_name, ["gemma4", "gemma-4-31b-it", "Gemma4Config", "gemma4hfconfig", "GEMMA_4"]))
    assert not any(map(is_gemma4_name, ["gemma3", "glm4", "gemma-3-4b", "qwen3moe"]))
    (tmp_path / "config.json").write_text(json.dumps(g4util.config_json(CONFIGS["dense"])))
    args = Namespace(hf_checkpoint=str(tmp_path))
    out = convert_gemma4_to_hf(args, "module.module.decoder.layers.0.pre_mlp_layernorm.weight", torch.ones(64))
    assert [n for n, _ in out] == ["model.layers.0.pre_feedforward_layernorm.weight"]
