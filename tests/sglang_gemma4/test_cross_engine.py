"""Training side against rollout side: our Megatron Gemma4 (slime `gemma4` series) and
SGLang's Gemma4 (our SGLang `gemma4` series) on the same weights and tokens, fp32, CPU.

The weights reach SGLang the way slime's weight sync sends them: every Megatron parameter
through our Megatron -> HF converter (`Gemma4ToHF`), into the SGLang model's
`load_weights`, on top of a model first loaded from a *different* checkpoint (so whatever
the stream misses shows). This is the contract test: a name or layout changed on either
side breaks it. Layer scalars are not parameters (slime does not sync them); both sides
take them from the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gemma4"))

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("megatron.core")

import sgltree  # noqa: E402

BUILT = sgltree.build_or_skip()

import harness  # noqa: E402

harness.setup_sglang(BUILT.path)

import g4util  # noqa: E402
from g4util import mpu  # noqa: E402,F401  (fixture)

from sglang.srt.configs.gemma4 import Gemma4TextConfig  # noqa: E402
from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM  # noqa: E402

TOL = 1e-5
CONFIGS = {k: dict(v, vocab_size=192) for k, v in g4util.CONFIGS.items()}
SEQS = [[3, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10, 12, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


def token_logprobs(logits, seq):
    """log p(seq[i+1] | seq[:i+1]) for every position but the last."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return lp[:-1].gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]


def synced_pair(kind):
    from slime_plugins.models.gemma4.weights import Gemma4ToHF

    cfg = CONFIGS[kind]
    hf = g4util.hf_model(cfg, seed=0)
    model, settings = g4util.megatron_model(cfg)
    g4util.load_from_hf(model, settings, hf.state_dict())

    stale = g4util.hf_model(cfg, seed=1).state_dict()  # what SGLang held before the sync
    for k in stale:
        if k.endswith("layer_scalar"):
            stale[k] = hf.state_dict()[k]  # from the checkpoint on both sides
    sgl = harness.build_model(Gemma4ForCausalLM, Gemma4TextConfig(**g4util.config_json(cfg)),
                              torch.float32, stale)

    conv = Gemma4ToHF(settings)
    sent = []
    for name, p in model.named_parameters():
        sent += conv.convert(name, p.detach())
    assert not conv.pending, conv.pending
    loaded = sgl.load_weights(sent)
    params = {n for n, _ in sgl.named_parameters()} - {"lm_head.weight"}
    assert params <= loaded, sorted(params - loaded)
    return model, sgl


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_rollout_logprobs_equal_training_logprobs(mpu, kind):
    model, sgl = synced_pair(kind)
    out = harness.CpuModelRunner(sgl).prefill(SEQS)
    gaps = []
    for seq, logits in zip(SEQS, out.logits):
        with torch.no_grad():
            train = model(input_ids=torch.tensor([seq]), position_ids=None, attention_mask=None)[0]
        gaps.append((token_logprobs(logits, seq) - token_logprobs(train, seq)).abs())
    gap = torch.cat(gaps)
    print(f"{kind}: per-token |log p(rollout) - log p(train)|, fp32: mean {gap.mean():.2e}, max {gap.max():.2e}")
    assert gap.max() < TOL


def test_a_renamed_parameter_breaks_the_sync(mpu):
    """The loader refuses a name it does not know instead of dropping it."""
    model, sgl = synced_pair("dense")
    with pytest.raises(KeyError, match="not a parameter"):
        sgl.load_weights([("model.layers.0.self_attn.q_norm.weight_renamed", torch.ones(16))])
    with pytest.raises(KeyError, match="attention_k_eq_v"):
        sgl.load_weights([("model.layers.1.self_attn.v_proj.weight", torch.ones(32, 64))])
