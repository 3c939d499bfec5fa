"""config.json -> settings, without transformers; refusals name the key."""

from __future__ import annotations

import json

import pytest

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS, FULL, SLIDING


def _read(raw):
    from slime_plugins.models.gemma4.config import read_settings

    return read_settings(raw)


def _error():
    from slime_plugins.models.gemma4.config import Gemma4ConfigError

    return Gemma4ConfigError


@pytest.mark.parametrize("layout", ["causal_lm", "conditional_generation"])
def test_both_layouts_give_the_same_settings_as_transformers(layout):
    from transformers import Gemma4TextConfig

    s = _read(g4util.config_json(CONFIGS["dense"], layout))
    ref = Gemma4TextConfig(**CONFIGS["dense"])
    assert s.layout == layout
    assert s.layer_types == tuple(ref.layer_types)
    assert (s.global_head_dim, s.num_global_key_value_heads) == (32, 1)
    assert [s.layer_head_dim(i) for i in range(4)] == [16, 32, 16, 32]
    assert [s.layer_k_eq_v(i) for i in range(4)] == [False, True, False, True]
    assert s.rope[FULL].proportional and s.rope[FULL].partial_rotary_factor == 0.25
    assert s.rope[SLIDING].theta == 10_000.0 and not s.rope[SLIDING].proportional
    assert s.final_logit_softcapping == 2.0 and s.tie_word_embeddings


def test_global_kv_heads_apply_only_with_k_eq_v_as_in_transformers():
    raw = dict(g4util.config_json(CONFIGS["dense"]), attention_k_eq_v=False)
    assert _read(raw).num_global_key_value_heads == CONFIGS["dense"]["num_key_value_heads"]


def test_per_layer_config_as_newer_transformers_saves_it():
    from transformers import Gemma4TextConfig

    saved = Gemma4TextConfig(**CONFIGS["dense"]).to_dict()  # global_head_dim -> per_layer_config
    saved.pop("global_head_dim", None)
    s = _read(saved)
    assert (s.global_head_dim, s.num_global_key_value_heads) == (32, 1)
    saved["per_layer_config"]["1"] = {"head_dim": 64}
    with pytest.raises(_error(), match="different shapes"):
        _read(saved)


def test_last_layer_is_forced_global_and_default_pattern_is_five_to_one():
    raw = dict(g4util.config_json(CONFIGS["dense"]), layer_types=[SLIDING] * 4)
    assert _read(raw).layer_types[-1] == FULL
    raw = dict(g4util.config_json(CONFIGS["dense"]), num_hidden_layers=12)
    raw.pop("layer_types")
    assert [t == FULL for t in _read(raw).layer_types] == [i in (5, 11) for i in range(12)]


@pytest.mark.parametrize("key,value,named", [
    ("hidden_size_per_layer_input", 256, "hidden_size_per_layer_input"),
    ("num_kv_shared_layers", 2, "num_kv_shared_layers"),
    ("use_bidirectional_attention", "all", "use_bidirectional_attention"),
    ("hidden_activation", "silu", "hidden_activation"),
])
def test_unsupported_features_are_refused_naming_the_key(key, value, named):
    with pytest.raises(_error(), match=named):
        _read(dict(g4util.config_json(CONFIGS["dense"]), **{key: value}))


def test_per_layer_inputs_are_on_when_the_key_is_absent_as_in_transformers():
    raw = g4util.config_json(CONFIGS["dense"])
    raw.pop("hidden_size_per_layer_input")
    with pytest.raises(_error(), match="hidden_size_per_layer_input = 256"):
        _read(raw)


def test_not_gemma4_and_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(_error(), match="not a Gemma4 config"):
        _read(dict(g4util.config_json(CONFIGS["dense"]), model_type="llama"))
    with pytest.raises(_error(), match="no such file"):
        _read(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(_error(), match="not valid JSON"):
        _read(tmp_path)


def test_hf_config_stand_in_where_transformers_has_no_gemma4(tmp_path, monkeypatch):
    import transformers

    from slime_plugins.models.gemma4.config import Gemma4HFConfig, is_gemma4_checkpoint, load_hf_config

    (tmp_path / "config.json").write_text(json.dumps(g4util.config_json(CONFIGS["moe"], "conditional_generation")))
    assert is_gemma4_checkpoint(tmp_path)

    def refuse(*a, **k):  # what transformers 4.57.1 says for an unknown model type
        raise ValueError("The checkpoint you are trying to load has model type `gemma4` ...")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    hf = load_hf_config(tmp_path)
    assert isinstance(hf, Gemma4HFConfig) and "gemma4" in type(hf).__name__.lower()
    # what slime's _hf_validate_args reads
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_hidden_layers) == (64, 4, 3)
    assert hf.intermediate_size == 96 and hf.tie_word_embeddings is True and hf.rms_norm_eps == 1e-6
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model type"):
        load_hf_config(tmp_path)


def test_parallel_sizes_that_do_not_split_are_named():
    from slime_plugins.models.gemma4.config import check_parallelism

    s = _read(g4util.config_json(CONFIGS["moe"]))
    check_parallelism(s, tp=2, ep=8)
    with pytest.raises(_error(), match="num_key_value_heads = 2 is not divisible by tensor parallel size 4"):
        check_parallelism(s, tp=4)
    with pytest.raises(_error(), match="num_experts = 8 is not divisible by expert parallel size 3"):
        check_parallelism(s, ep=3)


def test_provider_names_megatron_flags_that_disagree_with_the_checkpoint(tmp_path):
    from argparse import Namespace

    from slime_plugins.models.gemma4.provider import check_megatron_args, megatron_args_for

    s = _read(g4util.config_json(CONFIGS["moe"]))
    good = Namespace(hf_checkpoint=str(tmp_path), padded_vocab_size=256, **megatron_args_for(s))
    check_megatron_args(s, good)
    bad = Namespace(**dict(vars(good), moe_router_topk=4, ffn_hidden_size=100))
    with pytest.raises(_error(), match=r"--ffn-hidden-size is 100, the checkpoint says 96; --moe-router-topk is 4"):
        check_megatron_args(s, bad)
    cp = Namespace(**dict(vars(good), allgather_cp=True, context_parallel_size=2))
    with pytest.raises(_error(), match="allgather-cp"):
        check_megatron_args(s, cp)
