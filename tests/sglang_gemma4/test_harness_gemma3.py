"""Proof of the CPU harness on a model v0.5.9 already has: Gemma3ForCausalLM against transformers.

A tiny random Gemma3 (sliding and global layers, a window shorter than the sequences, final
soft-cap) is built in transformers, its weights go through SGLang's load_weights, and the logits
of prefill (a ragged batch), decode past the window, chunked prefill (and a mixed EXTEND batch)
are compared, with SGLang's TritonAttnBackend run by Triton's interpreter. It checks the harness
on a model SGLang itself ships, and records v0.5.9's own decode window for Gemma3 (one key short,
an expected failure) next to our Gemma4's.

Shims for SGLang's gemma3_causal (written for transformers 4.57) on transformers 5.24, all in this
file: the old rope attributes on the config SGLang gets, the "default" rope (gone from
transformers 5's table) for the SGLang module and its rotary class, `_tied_weights_keys` as
transformers 5 wants it, eager attention (SGLang's classes derive from PreTrainedModel).
"""

from __future__ import annotations

import copy

import pytest

import harness
import sgltree

# the tree the Gemma4 tests use: one process imports one sglang
harness.setup_sglang(sgltree.build_or_skip().path)

import torch  # noqa: E402

# The interpreter divides by a zero denominator in rows a kernel masks out entirely (then drops them).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

WINDOW = 4
SLIDING, FULL = "sliding_attention", "full_attention"
CFG = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    layer_types=[SLIDING, FULL, SLIDING],
    sliding_window=WINDOW,
    query_pre_attn_scalar=16,
    final_logit_softcapping=3.0,
    initializer_range=0.1,
    rope_parameters={
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
    },
)
TOL = 1e-5  # max |sglang - transformers| / max |transformers|
PROMPTS = [[5, 9, 3, 7, 1, 2, 8, 4, 6, 10, 11], [3, 3, 4, 60, 21, 90, 17]]
LONG = [5, 9, 3, 7, 1, 2, 8, 4, 6, 10, 11, 12, 13, 14]


def _sglang_config(cfg):
    """transformers 5's Gemma3TextConfig as v0.5.9's gemma3_causal reads it (4.57 attributes)."""
    c = copy.deepcopy(cfg)
    c.rope_theta = cfg.rope_parameters[FULL]["rope_theta"]
    c.rope_local_base_freq = cfg.rope_parameters[SLIDING]["rope_theta"]
    c.rope_scaling = None
    c._attn_implementation = "eager"
    return c


def _default_rope(config, device=None, seq_len=None):
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def _sglang_gemma3_class():
    from sglang.srt.models import gemma3_causal

    if "default" not in gemma3_causal.ROPE_INIT_FUNCTIONS:
        # transformers 5 dropped "default" from its table (each model class computes it): patch
        # the name SGLang's module looks up, and give SGLang's rotary class the method
        # transformers' post_init weight initialisation looks for.
        gemma3_causal.ROPE_INIT_FUNCTIONS = {**gemma3_causal.ROPE_INIT_FUNCTIONS, "default": _default_rope}
        gemma3_causal.Gemma3RotaryEmbedding.compute_default_rope_parameters = staticmethod(_default_rope)

    class Gemma3ForCausalLM(gemma3_causal.Gemma3ForCausalLM):
        _tied_weights_keys = None  # a list in v0.5.9; transformers 5 wants a dict or None

    return Gemma3ForCausalLM


_MODELS: dict = {}


def models(dtype):
    """(transformers reference, SGLang model), same random weights, built once per dtype."""
    if dtype not in _MODELS:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**CFG, attn_implementation="eager")
        torch.manual_seed(0)
        hf = Gemma3ForCausalLM(cfg)
        with torch.no_grad():  # norms start at zero (scale 1 + w): make them count
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.2)
        hf = hf.to(dtype).eval()
        sg = harness.build_model(_sglang_gemma3_class(), _sglang_config(cfg), dtype, hf.state_dict())
        _MODELS[dtype] = (hf, sg)
    return _MODELS[dtype]


def reference(hf, seq):
    with torch.no_grad():
        return hf(torch.tensor([seq])).logits[0]


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prefill_ragged_batch(dtype):
    hf, sg = models(dtype)
    runner = harness.CpuModelRunner(sg)
    out = runner.prefill(PROMPTS)
    for got, seq in zip(out.logits, PROMPTS):
        # LogitsProcessor._copy_logits_to_buffer returns float32 logits whatever the model dtype
        assert got.dtype == torch.float32 and got.shape == (len(seq), CFG["vocab_size"])
        assert rel(got, reference(hf, seq)) < TOL
    # SGLang's own output (last position of each request) is the same computation.
    assert rel(out.next_token_logits, torch.stack([g[-1] for g in out.logits])) < TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_past_the_window(dtype):
    """Two requests decoding together, from prompts of 3 and 2 tokens to 9 and 8 (window 4)."""
    hf, sg = models(dtype)
    seqs = [LONG[:9], PROMPTS[1] + [40]]
    refs = [reference(hf, s) for s in seqs]
    # The window the backend hands decode its keys from: w (see the xfail below for w - 1).
    runner = harness.CpuModelRunner(sg, sliding_window_size=WINDOW)
    out = runner.prefill([seqs[0][:3], seqs[1][:2]])
    reqs = out.reqs
    for step in range(6):
        pos = [3 + step, 2 + step]
        dec = runner.decode_step(reqs, [s[p] for s, p in zip(seqs, pos)])
        for i in range(2):
            assert rel(dec.logits[i], refs[i][pos[i]]) < TOL, (step, i)
    assert [r.seq_len for r in reqs] == [9, 8]


@pytest.mark.xfail(strict=True, reason=(
    "v0.5.9: Gemma3's get_attention_sliding_window_size() is sliding_window - 1 (the RadixAttention "
    "convention: q - k <= w - 1), but TritonAttnBackend's decode hands a sliding layer the last "
    "model_runner.sliding_window_size keys including the query's own: w - 1 keys, transformers "
    "uses w; extend is right (its kernel masks with the layer's w - 1, giving w keys)"))
def test_decode_with_the_models_own_window_size():
    hf, sg = models(torch.float32)
    seq = LONG[: WINDOW + 1]
    runner = harness.CpuModelRunner(sg)
    assert runner.sliding_window_size == WINDOW - 1
    out = runner.prefill([seq[:WINDOW]])
    dec = runner.decode_step(out.reqs, [seq[WINDOW]])  # position w: first one past w - 1 keys
    assert rel(dec.logits[0], reference(hf, seq)[WINDOW]) < TOL


@pytest.mark.parametrize("chunk", [3, 5])
def test_chunked_prefill(chunk):
    """Chunks after the first are EXTEND with extend_prefix_lens > 0 (the model's own window)."""
    hf, sg = models(torch.float32)
    runner = harness.CpuModelRunner(sg)
    out = runner.chunked_prefill([LONG, PROMPTS[1]], chunk)
    for got, seq in zip(out.logits, [LONG, PROMPTS[1]]):
        assert rel(got, reference(hf, seq)) < TOL


def test_mixed_extend_batch():
    """One EXTEND batch with a continued request (prefix 6) next to a new one (prefix 0)."""
    hf, sg = models(torch.float32)
    runner = harness.CpuModelRunner(sg)
    first = runner.prefill([LONG[:6]])
    out = runner.extend([first.reqs[0], None], [LONG[6:], PROMPTS[0]])
    assert rel(out.logits[0], reference(hf, LONG)[6:]) < TOL
    assert rel(out.logits[1], reference(hf, PROMPTS[0])) < TOL
    assert out.forward_batch.extend_prefix_lens.tolist() == [6, 0]


def test_swa_pool_with_eviction():
    """SWAKVPool + SWATokenToKVPoolAllocator, out-of-window slots freed and reused (12 SWA slots);
    chunked prefill, then decode from the chunked requests' cache."""
    hf, sg = models(torch.float32)
    runner = harness.CpuModelRunner(
        sg, kv_pool="swa", swa_total_tokens=12, evict_swa=True, sliding_window_size=WINDOW
    )
    assert type(runner.token_to_kv_pool).__name__ == "SWAKVPool"
    seqs = [LONG, PROMPTS[1] + [30, 31, 32, 33, 34]]
    refs = [reference(hf, s) for s in seqs]
    out = runner.chunked_prefill([s[:7] for s in seqs], 3)
    for i in range(2):
        assert rel(out.logits[i], refs[i][:7]) < TOL
    reqs = out.reqs
    for p in range(7, 12):
        dec = runner.decode_step(reqs, [s[p] for s in seqs])
        for i in range(2):
            assert rel(dec.logits[i], refs[i][p]) < TOL, (p, i)
    alloc = runner.token_to_kv_pool_allocator
    assert alloc.swa_available_size() < 12 and alloc.full_available_size() == 512 - 24
    # the SWA pool has had to hand out freed slots again: 24 tokens went through 12 slots
    runner.release(reqs)
    assert alloc.swa_available_size() == 12 and alloc.full_available_size() == 512


def test_torch_native_backend_within_the_window():
    """The fallback backend (SDPA, no sliding window) through the same harness, sequences < window."""
    hf, sg = models(torch.float32)
    runner = harness.CpuModelRunner(sg, attention_backend="torch_native")
    seqs = [[5, 9, 3], [7, 1]]
    out = runner.prefill(seqs)
    for got, seq in zip(out.logits, seqs):
        assert rel(got, reference(hf, seq)) < TOL
    dec = runner.decode_step(out.reqs, [2, 8])
    assert rel(dec.logits[0], reference(hf, seqs[0] + [2])[-1]) < TOL
    assert rel(dec.logits[1], reference(hf, seqs[1] + [8])[-1]) < TOL
