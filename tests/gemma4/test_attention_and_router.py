"""The sliding window on every single-process attention path, dual RoPE, and the router alone."""

from __future__ import annotations

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS, SLIDING


def _all_sliding(layers: int):
    cfg = dict(CONFIGS["dense"], num_hidden_layers=layers, layer_types=[SLIDING] * layers)
    model, settings = g4util.megatron_model(cfg, layer_types=[SLIDING] * layers)
    with torch.no_grad():  # random weights of a visible size (the init is tiny)
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    return model, settings


def _run(model, ids, packed):
    if packed is None:
        return model(input_ids=ids, position_ids=None, attention_mask=None)
    return model(input_ids=ids, position_ids=None, attention_mask=None, packed_seq_params=packed)


@pytest.mark.parametrize("path", ["unpacked", "packed"])
@pytest.mark.parametrize("layers", [1, 2])
def test_tokens_beyond_the_window_change_nothing(mpu, path, layers):
    model, settings = _all_sliding(layers)
    window = settings.sliding_window
    reach = layers * (window - 1)  # how far back an output can see through `layers` sliding layers
    torch.manual_seed(3)
    seq = 24
    ids = torch.randint(0, settings.vocab_size, (1, seq))
    if path == "packed":
        # a short sequence first: positions restart, the window is counted inside the second one
        head = torch.randint(0, settings.vocab_size, (1, 5))
        full = torch.cat([head, ids], dim=1)
        packed, offset = g4util.packed_params([5, seq]), 5
    else:
        full, packed, offset = ids, None, 0
    base = _run(model, full, packed)[0]
    last = offset + seq - 1
    for back, should_change in ((reach + 1, False), (reach + 6, False), (reach, True)):
        changed = full.clone()
        changed[0, last - back] = (changed[0, last - back] + 1) % settings.vocab_size
        out = _run(model, changed, packed)[0]
        moved = (out[last] - base[last]).abs().max().item()
        assert (moved > 1e-6) == should_change, (back, moved)
    if path == "packed":
        # the other sequence of the pack never sees this one
        changed = full.clone()
        changed[0, offset:] = (changed[0, offset:] + 1) % settings.vocab_size
        assert torch.equal(_run(model, changed, packed)[0][:offset], base[:offset])


def test_proportional_rope_rotates_only_its_share():
    from slime_plugins.models.gemma4.config import RopeSpec
    from slime_plugins.models.gemma4.modules import apply_rope, inv_frequencies

    d = 32
    inv = inv_frequencies(RopeSpec(theta=1e6, partial_rotary_factor=0.25, proportional=True), d)
    assert inv.shape == (d // 2,) and (inv[4:] == 0).all() and (inv[:4] > 0).all()
    # the same exponents over the full head_dim as transformers' proportional RoPE
    assert torch.allclose(inv[:4], 1.0 / (1e6 ** (torch.arange(0, 8, 2).float() / d)))
    x = torch.randn(5, 1, 2, d)
    y = apply_rope(x, torch.arange(5)[None], inv)
    rotated = [i for i in range(d) if not torch.allclose(x[..., i], y[..., i])]
    assert rotated == [0, 1, 2, 3, 16, 17, 18, 19]  # pairs (i, i + d/2) for the 4 rotated angles


def test_router_matches_transformers_router(mpu):
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRouter

    from slime_plugins.models.gemma4.model import build_transformer_config
    from slime_plugins.models.gemma4.modules import Gemma4Router

    settings = g4util.settings_for(CONFIGS["moe"])
    config = build_transformer_config(settings, use_cpu_initialization=True, params_dtype=torch.float32)
    hf = g4util.hf_model(CONFIGS["moe"]).model.layers[0].router
    assert isinstance(hf, Gemma4TextRouter)
    ours = Gemma4Router(config=config)
    with torch.no_grad():
        ours.weight.copy_(hf.proj.weight)
        ours.scale.copy_(hf.scale)
        ours.per_expert_scale.copy_(hf.per_expert_scale)
    torch.manual_seed(4)
    x = torch.randn(64, settings.hidden_size) * 3
    _, weights, index = hf(x)
    probs, routing_map = ours(x)
    expected_map = torch.zeros_like(routing_map).scatter_(1, index, True)
    assert torch.equal(routing_map, expected_map)
    assert (probs.gather(1, index) - weights).abs().max().item() < 1e-6
    assert (probs * ~routing_map).abs().max().item() == 0
    # per_expert_scale is applied: it is not the identity here
    assert not torch.allclose(weights.sum(-1), torch.ones(64))


def test_slimes_routing_replay_drives_the_gemma4_router(mpu, monkeypatch):
    """slime's Megatron patch hooks TopKRouter; the Gemma4 router must go through it (pinned trees)."""
    import inspect

    from megatron.core.transformer.moe import moe_utils

    if "routing_replay" not in inspect.getsource(moe_utils):
        pytest.skip("megatron-core without slime's Megatron patch (runs on the pinned trees: test_gemma4_pinned.py)")
    from slime.utils.routing_replay import RoutingReplay

    from slime_plugins.models.gemma4.model import build_transformer_config
    from slime_plugins.models.gemma4.modules import Gemma4Router

    settings = g4util.settings_for(CONFIGS["moe"])
    config = build_transformer_config(settings, use_cpu_initialization=True, params_dtype=torch.float32)
    monkeypatch.setenv("ENABLE_ROUTING_REPLAY", "1")
    router = Gemma4Router(config=config)
    assert isinstance(router.routing_replay, RoutingReplay)
    x = torch.randn(6, settings.hidden_size)
    monkeypatch.setenv("ROUTING_REPLAY_STAGE", "fallthrough")
    _, natural = router(x)
    forced = torch.tensor([[0, 1]] * 6)  # replay: experts 0 and 1 for every token
    if torch.equal(natural.nonzero()[:, 1].view(6, 2).sort(-1).values, forced):
        forced = torch.tensor([[2, 3]] * 6)
    router.routing_replay.top_indices_list = [forced]
    monkeypatch.setattr(RoutingReplay, "pop_forward", lambda self: self.top_indices_list[0])  # no CUDA here
    monkeypatch.setenv("ROUTING_REPLAY_STAGE", "replay_forward")
    probs, routing_map = router(x)
    assert torch.equal(routing_map, torch.zeros_like(routing_map).scatter_(1, forced, True))


def test_rope_frequencies_stay_fp32_when_the_model_is_cast_to_bf16(mpu):
    # Megatron's Float16Module casts the whole model; bf16 frequencies would move RoPE by
    # whole radians at long positions (0.0999... * 4000 in bf16 is off by about 1.5).
    from slime_plugins.models.gemma4.config import FULL as full
    from slime_plugins.models.gemma4.modules import inv_frequencies

    model, settings = g4util.megatron_model(CONFIGS["dense"])
    model = model.to(torch.bfloat16)
    attn = model.decoder.layers[1].self_attention
    used = attn.inv_freq(torch.device("cpu"))
    assert used.dtype == torch.float32
    assert torch.equal(used, inv_frequencies(settings.rope[full], settings.global_head_dim))
    assert not any("inv_freq" in n for n, _ in model.named_buffers())


def test_spec_backends_are_chosen_by_name(mpu):
    from slime_plugins.models.gemma4.spec import get_gemma4_layer_spec

    config = g4util.megatron_model(CONFIGS["moe"])[0].config
    local = get_gemma4_layer_spec(config, 0, "local")
    assert local.submodules.moe is not None and local.params == {"layer_index": 0}
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="'te' Gemma4 spec needs Transformer Engine"):
            get_gemma4_layer_spec(config, 0, "te")
    else:
        te = get_gemma4_layer_spec(config, 0, "te")
        assert te.submodules.moe.submodules.experts.module.__name__ == "TEGroupedMLP"
    with pytest.raises(ValueError, match="unknown Gemma4 backend 'flash'"):
        get_gemma4_layer_spec(config, 0, "flash")
