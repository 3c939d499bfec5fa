"""The model scripts and the provider against Megatron's own argument parser (pinned trees only).

megatron.training is not in the megatron-core release on PyPI, so these run where the suite runs
on the pinned trees (tests/test_gemma4_pinned.py). The config.json files use the published
widths of both models; the global layers' KV head counts (4, 2) are assumptions.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

import g4util

SCRIPTS = {"gemma4-31B.sh": "31B", "gemma4-26B-A4B.sh": "26B-A4B"}  # model script: target


def _tree():
    import slime_plugins.models.gemma4 as pkg

    tree = Path(pkg.__file__).resolve().parents[3]
    if not (tree / "scripts" / "models").is_dir():
        pytest.skip("the slime tree is not here (materialised modules only): runs on the pinned trees")
    pytest.importorskip("megatron.training.arguments", reason="megatron.training is not in megatron-core from PyPI")
    return tree


def _parse(script: Path, monkeypatch, *extra):
    from megatron.training.arguments import parse_args

    body = re.search(r"MODEL_ARGS=\((.*?)\n\)", script.read_text(), re.S).group(1)

    def slime_args(parser):  # the two slime flags the scripts use
        parser.add_argument("--hf-checkpoint")
        parser.add_argument("--custom-model-provider-path")
        return parser

    monkeypatch.setattr("sys.argv", ["train.py", *shlex.split(body, comments=True), *extra])
    args = parse_args(extra_args_provider=slime_args, ignore_unknown_args=True)
    args.params_dtype, args.padded_vocab_size = torch.float32, 262_144
    return args


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_model_scripts_agree_with_the_checkpoint_and_build_a_config(script, tmp_path, monkeypatch):
    from slime_plugins.models.gemma4.config import read_settings
    from slime_plugins.models.gemma4.provider import build_config, check_megatron_args

    tree = _tree()
    (tmp_path / "config.json").write_text(json.dumps(g4util.published_config_json(SCRIPTS[script])))
    args = _parse(tree / "scripts" / "models" / script, monkeypatch, "--hf-checkpoint", str(tmp_path))
    assert args.custom_model_provider_path == "slime_plugins.models.gemma4.provider.model_provider"
    settings = read_settings(tmp_path)
    check_megatron_args(settings, args)
    config = build_config(args, settings)
    assert config.gated_linear_unit and config.activation_func.__name__ == "gelu_tanh"
    assert not config.bias_activation_fusion and not config.add_bias_linear and config.qk_layernorm
    assert (config.gemma4_global_kv_channels, config.gemma4_sliding_window) == (512, 1024)
    assert config.gemma4_layer_types[5] == "full_attention" and config.gemma4_layer_types[0] == "sliding_attention"
    if settings.enable_moe_block:
        assert (config.num_moe_experts, config.moe_router_topk, config.moe_router_dtype) == (128, 8, "fp32")
    # a flag that disagrees with the checkpoint is named
    args.num_attention_heads += 1
    with pytest.raises(Exception, match="--num-attention-heads"):
        check_megatron_args(settings, args)
