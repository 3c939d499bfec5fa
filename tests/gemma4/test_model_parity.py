"""Megatron Gemma4 against transformers' Gemma4 (the reference) on tiny random configs, fp32, CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS, rel_max

LOGIT_TOL = 1e-5
GRAD_TOL = 1e-4


def _pair(kind):
    hf = g4util.hf_model(CONFIGS[kind])
    model, settings = g4util.megatron_model(CONFIGS[kind])
    g4util.load_from_hf(model, settings, hf.state_dict())
    return hf, model, settings


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_unpacked_logits_loss_and_gradients_match_transformers(mpu, kind):
    hf, model, settings = _pair(kind)
    torch.manual_seed(1)
    ids = torch.randint(1, settings.vocab_size, (2, 17))
    ids[0, 4] = ids[1, 11] = settings.pad_token_id  # the pad row: no gradient through its lookup
    labels = torch.randint(0, settings.vocab_size, (2, 17))

    ref = hf(ids).logits
    ours = model(input_ids=ids, position_ids=None, attention_mask=None)
    assert ours.shape == ref.shape
    assert rel_max(ours, ref) < LOGIT_TOL, rel_max(ours, ref)

    ref_loss = F.cross_entropy(ref.flatten(0, 1), labels.flatten())
    loss = F.cross_entropy(ours.flatten(0, 1), labels.flatten())
    assert abs(loss.item() - ref_loss.item()) < LOGIT_TOL * ref_loss.abs().item()

    ref_loss.backward()
    loss.backward()
    ours_grads = g4util.hf_named_grads(model, settings)
    ref_grads = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
    ref_grads.pop("lm_head.weight", None)  # tied: the same tensor as the embedding
    assert set(ours_grads) == set(ref_grads)
    worst = max(((rel_max(ours_grads[n], g), n) for n, g in ref_grads.items()))
    assert worst[0] < GRAD_TOL, worst


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_packed_thd_input_matches_transformers_per_sequence(mpu, kind):
    hf, model, settings = _pair(kind)
    torch.manual_seed(2)
    lengths = [7, 13, 4]
    seqs = [torch.randint(0, settings.vocab_size, (1, n)) for n in lengths]
    ref = torch.cat([hf(s).logits[0] for s in seqs])
    ours = model(input_ids=torch.cat(seqs, dim=1), position_ids=None, attention_mask=None,
                 packed_seq_params=g4util.packed_params(lengths))[0]
    assert rel_max(ours, ref) < LOGIT_TOL, rel_max(ours, ref)

    labels = torch.randint(0, settings.vocab_size, (sum(lengths),))
    F.cross_entropy(ref, labels).backward()
    F.cross_entropy(ours, labels).backward()
    ours_grads = g4util.hf_named_grads(model, settings)
    for name, p in hf.named_parameters():
        if p.grad is not None and name != "lm_head.weight":
            assert rel_max(ours_grads[name], p.grad) < GRAD_TOL, name


def test_layer_scalar_and_softcap_take_effect(mpu):
    # The parity above must not hold by accident: changing a layer scalar or the cap moves the logits.
    hf, model, settings = _pair("dense")
    ids = torch.randint(0, settings.vocab_size, (1, 9))
    with torch.no_grad():
        base = model(input_ids=ids, position_ids=None, attention_mask=None)
        model.decoder.layers[1].layer_scalar.mul_(2.0)
        assert rel_max(model(input_ids=ids, position_ids=None, attention_mask=None), base) > 1e-3
        model.decoder.layers[1].layer_scalar.div_(2.0)
        model.output_layer.gemma4_softcap = 1e6  # as good as no cap
        uncapped = model(input_ids=ids, position_ids=None, attention_mask=None)
    assert rel_max(uncapped, base) > 1e-2
    assert torch.allclose(torch.tanh(uncapped / settings.final_logit_softcapping) * settings.final_logit_softcapping,
                          base, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_distributed_checkpoint_has_one_key_per_layer_with_its_own_shape(mpu, kind):
    # what Megatron's distributed checkpointing saves when slime checkpoints a run: sliding and
    # global layers differ in shape, so they must not be stacked under one key
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    model, settings = g4util.megatron_model(CONFIGS[kind])
    entries = [v for v in model.sharded_state_dict().values() if isinstance(v, (ShardedTensor, ShardedTensorFactory))]
    sharded = {v.key: v for v in entries}
    dense = [v.key for v in entries if ".experts." not in v.key]  # experts share a key along their axis
    assert len(set(dense)) == len(dense), "two tensors saved under one key"
    for name, p in model.named_parameters():
        if ".experts." in name:  # Megatron keys experts by its own expert axis
            assert any(k.startswith(name.split(".experts.")[0] + ".experts.") for k in sharded), name
            continue
        assert name in sharded, name
        if isinstance(sharded[name], ShardedTensor):
            assert tuple(sharded[name].local_shape) == tuple(p.shape) == tuple(sharded[name].global_shape), name
    for i in range(settings.num_hidden_layers):
        assert f"decoder.layers.{i}.layer_scalar" in sharded
    # without one key per layer, sliding and global linear_qkv (different shapes) would share a key
    assert sharded["decoder.layers.0.self_attention.linear_qkv.weight"].local_shape != \
        sharded[f"decoder.layers.{settings.layer_types.index('full_attention')}.self_attention.linear_qkv.weight"].local_shape


@pytest.mark.parametrize("scattered", [False, True])
def test_pad_lookups_pass_no_gradient_in_either_embedding_layout(mpu, scattered):
    # [batch, seq, hidden] as the lookup returns it, or [seq, batch, hidden] as it returns it
    # under sequence parallelism (reduce_scatter_embeddings)
    from types import SimpleNamespace

    from slime_plugins.models.gemma4.model import _no_grad_for_padding

    ids = torch.tensor([[5, 0, 7], [0, 3, 3]])
    module = SimpleNamespace(gemma4_pad_token_id=0, reduce_scatter_embeddings=scattered)
    emb = torch.randn(2, 3, 4, requires_grad=True)
    out = emb.transpose(0, 1) if scattered else emb
    result = _no_grad_for_padding(module, (ids,), out.contiguous())
    assert result.is_contiguous()  # sequence parallelism all-gathers it next, which needs that
    result.sum().backward()
    assert (emb.grad.abs().sum(-1) == 0).tolist() == (ids == 0).tolist()
