"""slime's weight sync sends Gemma4's layer scalars with the parameters (slime patch 0005).

They are buffers (from the checkpoint, not trained). An engine that did not load them from the
checkpoint (SGLang's `--load-format dummy`) serves the right model only if the sync carries them.
Checked on one gloo rank through slime's own code: the colocated path (HfWeightIteratorDirect, the
iterator UpdateWeightFromTensor uses) and the distributed one (all_gather_param, as
UpdateWeightFromDistributed calls it per tensor). Each sends every checkpoint tensor exactly once,
layer scalars included, with the trained values. Pinned trees only (slime's weight-sync code).
slime's SGLang helpers module (`megatron_utils/sglang.py`, which imports SGLang) is a stand-in for
the length of the test: on this path it only patches torch's IPC reductions.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from unittest import mock

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)


def _whole_slime_tree():
    if not g4util.importable("slime.backends.megatron_utils.update_weight.common"):
        pytest.skip("slime's weight-sync code is not here (materialised Gemma4 modules only): "
                    "runs on the patched pinned trees (tests/test_gemma4_pinned.py)")


CUDA = dict(current_device=lambda: "cpu", synchronize=lambda *a, **k: None)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_both_sync_paths_send_every_tensor_layer_scalars_included(kind, mpu, tmp_path):  # noqa: F811
    _whole_slime_tree()
    with mock.patch.dict(sys.modules, {"slime.backends.megatron_utils.sglang": mock.MagicMock()}):
        _check_sync(kind, tmp_path)


def _check_sync(kind, tmp_path):
    from slime.backends.megatron_utils.megatron_to_hf import convert_to_hf
    from slime.backends.megatron_utils.update_weight.common import all_gather_param, named_params_and_buffers
    from slime.backends.megatron_utils.update_weight.hf_weight_iterator_direct import HfWeightIteratorDirect
    from slime.utils import distributed_utils

    cfg = g4util.CONFIGS[kind]
    hf_state = g4util.hf_model(cfg).state_dict()
    model, settings = g4util.megatron_model(cfg)
    g4util.load_from_hf(model, settings, hf_state)
    from megatron.core import tensor_parallel

    for param in model.parameters():  # as Megatron's get_model does for every parameter
        tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    scalars = [m for n, m in model.named_buffers() if n.endswith("layer_scalar")]
    assert scalars, "the Megatron Gemma4 has no layer_scalar buffers"
    for i, b in enumerate(scalars):  # values the checkpoint does not have: the sync must carry these
        b.fill_(0.25 + 0.125 * i)
    module = g4util.slime_wrapped(model)
    (tmp_path / "config.json").write_text(json.dumps(g4util.config_json(cfg)))
    args = Namespace(num_experts=cfg.get("num_experts"), hf_checkpoint=str(tmp_path), vocab_size=settings.vocab_size,
                     update_weight_buffer_size=1 << 20, megatron_to_hf_mode="raw", q_lora_rank=None)
    distributed_utils.init_gloo_group()  # once per process (it keeps the group it made)

    def check(sent, path):
        names = [n for n, _ in sent]
        assert len(names) == len(set(names)), f"{path}: a tensor sent twice"
        prefix = "model.language_model." if any(n.startswith("model.language_model.") for n in hf_state) else "model."
        want = {n.replace(prefix, "model.", 1) for n in hf_state if not n.startswith("lm_head.")}
        got = {n.replace(prefix, "model.", 1) for n in names}
        assert got == want, f"{path}: missing {sorted(want - got)[:4]}, extra {sorted(got - want)[:4]}"
        sent_scalars = [float(t) for n, t in sent if n.endswith("layer_scalar")]
        assert sorted(sent_scalars) == sorted(float(b) for b in scalars), path

    with mock.patch.multiple(torch.cuda, **CUDA):
        local = dict(named_params_and_buffers(args, [module]))
        it = HfWeightIteratorDirect(args=args, model=[module], model_name="gemma4", quantization_config=None)
        colocated = [t for chunk in it.get_hf_weight_chunks(local) for t in chunk]
        distributed = []
        for name, param in named_params_and_buffers(args, [module]):
            distributed += convert_to_hf(args, "gemma4", name, all_gather_param(name, param))
    check(colocated, "colocated (HfWeightIteratorDirect)")
    check(distributed, "distributed (all_gather_param)")
