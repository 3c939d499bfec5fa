"""What SGLang's engine expects of the Gemma4 model, and what the model must refuse (issue 24,
the CPU parts), on SGLang's own classes (harness.py, sgltree.py) and tiny configs.

1. No state outside parameters and buffers: SGLang's memory saver (slime's colocated mode,
   every step) releases the weights' memory, writes back named_buffers() (stashed by
   `_export_static_state`) and gets the parameters back through load_weights. A tensor kept
   anywhere else is left pointing at released memory.
2. The router's scores equal the trainer's (our Megatron router, `--moe-router-dtype fp32`)
   bit for bit on bf16 hidden states, and so do the chosen experts.
3. Every setting the model cannot serve with is refused by ServerArgs, naming the flag.
4. The load formats: the checkpoint load is checked for completeness once, later partial
   updates never are, whichever loader filled the model first.
5. --enable-return-routed-experts on the dense model is refused up front.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gemma4"))

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import sgltree  # noqa: E402

BUILT = sgltree.build_or_skip()

import harness  # noqa: E402

harness.setup_sglang(BUILT.path)

import g4util  # noqa: E402
from g4util import FULL, SLIDING, mpu  # noqa: E402,F401  (mpu: fixture)
from torch import nn  # noqa: E402

from sglang.srt.configs.gemma4 import Gemma4TextConfig  # noqa: E402
from sglang.srt.managers.scheduler_update_weights_mixin import (  # noqa: E402
    _export_static_state,
    _import_static_state,
)
from sglang.srt.models import gemma4_causal  # noqa: E402
from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402

CONFIGS = {k: dict(v, vocab_size=192) for k, v in g4util.CONFIGS.items()}
SEQ = [3, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10, 12, 14]


def checkpoint(kind, seed=0):
    """transformers' Gemma4 state dict (norms, scales, layer scalars off 1), fp32."""
    return {k: v.detach().clone() for k, v in g4util.hf_model(CONFIGS[kind], seed=seed).state_dict().items()}


def text_config(kind):
    return Gemma4TextConfig(**g4util.config_json(CONFIGS[kind]))


def sgl_model(kind, state=None, dtype=torch.float32):
    return harness.build_model(Gemma4ForCausalLM, text_config(kind), dtype, state)


def prefill_logits(model):
    runner = harness.CpuModelRunner(model)
    out = runner.prefill([SEQ])
    runner.release(out.reqs)
    return out.logits[0]


# ------------------------------------------------------------------ 1. parameters and buffers

# nn.Module's own bookkeeping (_parameters, _buffers, _modules, hooks, ...): not model state.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))

# Upstream SGLang modules on Gemma4's path that hold tensors outside parameters and buffers on
# purpose, by exact (class, attribute), with the reason. Our own modules are never listed.
# None so far, on the CPU path here: the walk goes through SGLang's linear, embedding, norm,
# attention, TopK and FusedMoE modules and the helper objects they hold (quant methods, MoE
# runner and dispatcher, configs). The one container that could fill, UnquantizedFusedMoEMethod.
# _cache_permute_indices, is only filled by the flashinfer TRT-LLM MoE runner, which ServerArgs
# refuses for Gemma4; were it filled, this walk would report it.
ALLOWED: dict = {}


def stray_tensors(model):
    """[(where, tensor)] for every tensor the model's modules hold in an attribute (directly, in a
    dict/list/tuple/set, or in a plain SGLang helper object) that is neither a registered
    parameter nor a registered buffer of the model; and for a module held that way that is not
    one of the model's registered submodules (its state is invisible to the same walk)."""
    registered = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    submodules = {id(m) for m in model.modules()}
    found, seen = [], set()

    def walk(value, where, owner, attr, depth):
        if isinstance(value, torch.Tensor):
            if id(value) not in registered and (type(owner).__name__, attr) not in ALLOWED:
                found.append((where, value))
            return
        if isinstance(value, nn.Module):
            if id(value) not in submodules:
                for name, t in list(value.named_parameters()) + list(value.named_buffers()):
                    found.append((f"{where} (a module outside the model's tree).{name}", t))
            return
        if depth > 4 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}[{k!r}]", owner, attr, depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]", owner, attr, depth + 1)
        elif type(value).__module__.startswith("sglang.") and hasattr(value, "__dict__") \
                and not isinstance(value, type) and not callable(value):
            for k, v in vars(value).items():
                walk(v, f"{where}.{k}", owner, attr, depth + 1)

    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr not in _MODULE_INTERNALS:
                walk(value, f"{path or '<model>'}.{attr} ({type(module).__name__})", module, attr, 0)
    return found


class OldRope(nn.Module):
    """Gemma4Rope as it was: inverse frequencies in a plain dict (plus a per-device cache),
    which the memory saver neither stashes nor restores."""

    def __init__(self, config):
        super().__init__()
        self.inv_freq = {
            SLIDING: gemma4_causal.rope_inv_freq(config.rope_parameters[SLIDING], config.swa_head_dim),
            FULL: gemma4_causal.rope_inv_freq(config.rope_parameters[FULL], config.head_dim),
        }
        self._cache = {}

    def forward(self, positions, dtype):
        out = {}
        for kind, inv in self.inv_freq.items():
            freqs = positions.float()[:, None] * inv[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            out[kind] = (emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :])
        return out


def with_old_rope(model):
    model.model.rope = OldRope(model.config)
    return model


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_no_tensor_outside_parameters_and_buffers(kind):
    model = sgl_model(kind, checkpoint(kind))
    harness.CpuModelRunner(model).prefill([SEQ])  # whatever a forward may cache, cached
    stray = stray_tensors(model)
    if stray:
        pytest.fail("tensors outside parameters and buffers (lost when the memory saver releases "
                    "the weights):\n" + "\n".join(f"  {where}: {tuple(t.shape)} {t.dtype}" for where, t in stray))


def test_the_walk_finds_the_old_rope_dict():
    """Control: the old RoPE (a dict of tensors) put back into the model is caught, by name."""
    stray = stray_tensors(with_old_rope(sgl_model("dense")))
    where = sorted(w for w, _ in stray)
    assert where == [f"model.rope.inv_freq (OldRope)[{FULL!r}]",
                     f"model.rope.inv_freq (OldRope)[{SLIDING!r}]"], where


def release_and_resume(model, state):
    """What SGLang's memory saver and slime do to the model between two rollouts:
    `_export_static_state` (named_buffers), the weights' memory released (every tensor the
    model allocated, wherever held, becomes garbage: NaN here), resumed, `_import_static_state`,
    then the parameters sent again through load_weights (slime's weight sync; here the
    checkpoint's tensors, as update_weights_from_disk would send)."""
    stash = _export_static_state(model)
    held = [t for t in model.parameters()] + [t for t in model.buffers()]
    held += [t for _, t in stray_tensors(model)]
    with torch.no_grad():
        for t in held:
            t.data.fill_(float("nan")) if t.is_floating_point() else t.data.fill_(-7)
    _import_static_state(model, stash)
    model.load_weights((k, v.clone()) for k, v in state.items())


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_release_and_resume_gives_the_same_logits_bitwise(kind):
    state = checkpoint(kind)
    model = sgl_model(kind, state)
    before = prefill_logits(model)
    release_and_resume(model, state)
    assert torch.equal(prefill_logits(model), before)


def test_release_and_resume_breaks_a_rope_dict():
    """Control: with the old RoPE dict the same cycle leaves the frequencies released."""
    state = checkpoint("dense")
    model = with_old_rope(sgl_model("dense", state))
    before = prefill_logits(model)
    assert torch.isfinite(before).all()
    release_and_resume(model, state)
    assert not torch.equal(prefill_logits(model), before)


# ------------------------------------------------------------------ 2. the router


def _routers(model):
    return [m for m in model.modules() if type(m).__name__ == "Gemma4Router"]


def _chosen(ids, experts):
    """[tokens, experts] bool: which experts each token goes to."""
    return torch.zeros(ids.shape[0], experts, dtype=torch.bool).scatter_(1, ids.long(), True)


def _bf16_projection(router, x):
    """The router as it was: norm and scales as now, the projection in bf16 (ReplicatedLinear)."""
    y = gemma4_causal.rms_norm_no_scale(x, router.eps) * router.scale * (router.hidden_size**-0.5)
    out, _ = router.proj(y)
    return out.float()


def test_router_equals_the_trainers_bitwise_in_bf16(mpu):
    """SGLang's Gemma4Router.logits against our Megatron router's gating (moe_router_dtype fp32)
    on the same bf16 weights and bf16 hidden states: equal bit for bit, and the same experts
    chosen for every token. Control: the old bf16 projection gives other logits and, on some
    tokens, other experts (the rate is printed)."""
    cfg = CONFIGS["moe"]
    state = checkpoint("moe")
    mcore, settings = g4util.megatron_model(cfg, dtype=torch.bfloat16)
    g4util.load_from_hf(mcore, settings, state)
    sgl = sgl_model("moe", state, dtype=torch.bfloat16)
    experts, tokens = cfg["num_experts"], 4096
    gen = torch.Generator().manual_seed(0)
    flips = total = 0
    for layer, (ours, theirs) in enumerate(zip(sgl.model.layers, _routers(mcore))):
        assert torch.equal(ours.router.proj.weight, theirs.weight)  # the same weights, as a precondition
        x = (3 * torch.randn(tokens, cfg["hidden_size"], generator=gen)).to(torch.bfloat16)
        with torch.no_grad():
            logits = ours.router.logits(x)
            want = theirs.gating(x)
            assert logits.dtype == want.dtype == torch.float32
            assert torch.equal(logits, want), layer
            ids = ours.topk(x, logits).topk_ids
            _, routing_map = theirs(x)
            assert torch.equal(_chosen(ids, experts), routing_map), layer
            old = _bf16_projection(ours.router, x)
            assert not torch.equal(old, want)
            old_ids = ours.topk(x, old).topk_ids
        flips += int((_chosen(old_ids, experts) != routing_map).any(-1).sum())
        total += tokens
    print(f"old bf16 router projection vs the trainer's fp32 one (tiny config, {experts} experts, top "
          f"{cfg['top_k_experts']}): other experts for {flips} of {total} token-layers ({flips / total:.2%})")
    assert flips > 0


def test_router_disagreement_at_the_26b_widths():
    """The same comparison at the 26B-A4B router's widths (hidden 2816, 128 experts, top 8),
    random weights (std 0.02, no trained checkpoint here): how often a bf16 projection picks
    another expert set than the fp32 one. Printed; only asserted to be non-zero."""
    pub = g4util.PUBLISHED["26B-A4B"]
    conf = Gemma4TextConfig(**g4util.config_json(dict(CONFIGS["moe"], hidden_size=pub["hidden_size"],
                                                      num_experts=pub["num_experts"],
                                                      top_k_experts=pub["top_k_experts"])))
    with torch.device("cpu"):
        router = gemma4_causal.Gemma4Router(conf).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.proj.weight.copy_(0.02 * torch.randn(router.proj.weight.shape, generator=gen))
        router.scale.copy_(1 + 0.3 * torch.randn(router.scale.shape, generator=gen))
        x = (3 * torch.randn(4096, pub["hidden_size"], generator=gen)).to(torch.bfloat16)
        new, old = router.logits(x), _bf16_projection(router, x)
    k = pub["top_k_experts"]
    sets = [_chosen(torch.topk(v, k, dim=-1).indices, pub["num_experts"]) for v in (new, old)]
    rate = float((sets[0] != sets[1]).any(-1).float().mean())
    print(f"26B-A4B widths, random router weights: a bf16 projection changes the top-{k} set of "
          f"{rate:.2%} of tokens")
    assert rate > 0


# ------------------------------------------------------------------ 3./5. ServerArgs refusals


@pytest.fixture
def gpu_like(monkeypatch):
    """Full ServerArgs.__post_init__ on this CPU machine, as on a GPU one: device "cpu" only
    keeps it from probing CUDA; its CPU-only step, which would pick the intel_amx attention
    backend before the model's adjustments, is left out (no GPU step does that)."""
    monkeypatch.setattr(ServerArgs, "_handle_cpu_backends", lambda self: None)


def server_args(tmp_path, kind="dense", config=None, **flags):
    """ServerArgs for a Gemma4 checkpoint folder (config.json only), through __post_init__."""
    raw = dict(g4util.config_json(CONFIGS[kind]), **(config or {}))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return ServerArgs(model_path=str(tmp_path), device="cpu", **flags)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_defaults_are_accepted(gpu_like, tmp_path, kind):
    sa = server_args(tmp_path, kind)
    assert sa.get_attention_backends() == ("triton", "triton")


def test_one_side_set_to_triton_is_accepted(gpu_like, tmp_path):
    """--prefill-attention-backend triton alone: the unset decode side takes Gemma4's default
    (it used to be refused as "--decode-attention-backend None")."""
    sa = server_args(tmp_path, prefill_attention_backend="triton")
    assert sa.get_attention_backends() == ("triton", "triton")


@pytest.mark.parametrize("flags,named", [
    (dict(prefill_attention_backend="fa3"), "--prefill-attention-backend fa3 (for prefill)"),
    (dict(decode_attention_backend="flashinfer"), "--decode-attention-backend flashinfer (for decode)"),
    (dict(attention_backend="fa3", prefill_attention_backend="triton"), "--attention-backend fa3 (for decode)"),
    (dict(attention_backend="fa3"), "--attention-backend fa3 (for prefill and decode)"),
])
def test_attention_refusal_names_the_flag_actually_set(gpu_like, tmp_path, flags, named):
    with pytest.raises(ValueError) as err:
        server_args(tmp_path, **flags)
    text = str(err.value)
    assert named in text and "None" not in text, text
    assert "Set --attention-backend triton" in text


# (flags, checkpoint kind, extra config.json keys, what the message must name)
REFUSALS = {
    "quantization": (dict(quantization="fp8"), "dense", None, "--quantization fp8"),
    "modelopt-quant": (dict(modelopt_quant="fp8"), "dense", None, "--modelopt-quant fp8"),
    "torchao": (dict(torchao_config="int8wo"), "dense", None, "--torchao-config int8wo"),
    "fp8-checkpoint": (dict(), "moe", dict(quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"}),
                       "quantization_config, quant_method fp8"),
    "dp-attention": (dict(enable_dp_attention=True, dp_size=2, tp_size=2), "dense", None, "--enable-dp-attention"),
    "no-hybrid-swa": (dict(disable_hybrid_swa_memory=True), "dense", None, "--disable-hybrid-swa-memory"),
    "pp": (dict(pp_size=2), "dense", None, "--pp-size 2"),
    "redundant-experts": (dict(ep_num_redundant_experts=4), "moe", None, "--ep-num-redundant-experts 4"),
    "eplb": (dict(enable_eplb=True), "moe", None, "--enable-eplb"),
    "expert-location": (dict(init_expert_location="/tmp/where.json"), "moe", None, "--init-expert-location"),
    "ep-dispatch": (dict(ep_dispatch_algorithm="static"), "moe", None, "--ep-dispatch-algorithm static"),
    "hicache": (dict(enable_hierarchical_cache=True), "dense", None, "--enable-hierarchical-cache"),
    "moe-runner": (dict(moe_runner_backend="flashinfer_cutlass"), "moe", None, "--moe-runner-backend flashinfer_cutlass"),
    "moe-a2a": (dict(moe_a2a_backend="deepep"), "moe", None, "--moe-a2a-backend deepep"),
    "layered": (dict(load_format="layered"), "dense", None, "--load-format layered"),
    "remote-instance": (dict(load_format="remote_instance"), "dense", None, "--load-format remote_instance"),
    "routed-experts-dense": (dict(enable_return_routed_experts=True), "dense", None, "--enable-return-routed-experts"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_naming_the_flag(gpu_like, tmp_path, case):
    flags, kind, config, named = REFUSALS[case]
    with pytest.raises(ValueError) as err:
        server_args(tmp_path, kind, config, **flags)
    text = str(err.value)
    assert named in text, text
    assert text.startswith("Gemma4ForCausalLM"), text


def test_routed_experts_on_the_moe_model_are_accepted(gpu_like, tmp_path):
    assert server_args(tmp_path, "moe", enable_return_routed_experts=True).enable_return_routed_experts


def _late_override(monkeypatch, step, **settings):
    original = getattr(ServerArgs, step)

    def step_then_override(self):
        original(self)
        for k, v in settings.items():
            setattr(self, k, v)

    monkeypatch.setattr(ServerArgs, step, step_then_override)


@pytest.mark.parametrize("step,settings,named", [
    # as mxfp8 or SGLANG_CUTLASS_MOE do in _handle_moe_kernel_config
    ("_handle_moe_kernel_config", dict(moe_runner_backend="cutlass"), "--moe-runner-backend cutlass"),
    # as --dllm-algorithm does with CUDA graphs on
    ("_handle_dllm_inference", dict(attention_backend="flashinfer"), "--attention-backend flashinfer"),
    # as a GGUF file does in _handle_load_format
    ("_handle_load_format", dict(quantization="gguf"), "--quantization gguf"),
    ("_handle_eplb_and_dispatch", dict(ep_dispatch_algorithm="static"), "--ep-dispatch-algorithm static"),
])
def test_settings_changed_after_the_model_check_are_refused_at_the_end(gpu_like, monkeypatch, tmp_path,
                                                                      step, settings, named):
    """ServerArgs steps that run after the model's adjustments change settings of their own
    accord; the Gemma4 check runs again at the end of __post_init__ and names them."""
    _late_override(monkeypatch, step, **settings)
    with pytest.raises(ValueError) as err:
        server_args(tmp_path, "moe")
    assert named in str(err.value) and "after its first Gemma4 check" in str(err.value)


def test_dllm_algorithm_really_moves_the_attention_backend(gpu_like, tmp_path):
    """The real case behind one override above, unmocked."""
    with pytest.raises(ValueError, match="--attention-backend flashinfer") as err:
        server_args(tmp_path, dllm_algorithm="LowConfidence")
    assert "after its first Gemma4 check" in str(err.value)


# ------------------------------------------------------------------ 4. load formats


def _write_checkpoint(folder, state, kind="dense"):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(g4util.config_json(CONFIGS[kind])))
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def _load(folder, load_format):
    """SGLang's own loader for the format, on the CPU, as ModelRunner calls it."""
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.loader import get_model_loader

    mc = ModelConfig(model_path=str(folder), dtype="float32")
    loader = get_model_loader(LoadConfig(load_format=load_format), mc)
    return loader.load_model(model_config=mc, device_config=DeviceConfig("cpu"))


def _first_bucket(state):
    """What slime's first weight-update bucket may hold: the embedding and a few more."""
    names = ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.norm.weight"]
    return [(n, state[n].clone()) for n in names]


def test_checkpoint_load_through_the_default_loader(tmp_path):
    state = checkpoint("dense")
    model = _load(_write_checkpoint(tmp_path / "ckpt", state), "auto")
    assert torch.equal(prefill_logits(model), prefill_logits(sgl_model("dense", state)))
    model.load_weights(_first_bucket(checkpoint("dense", seed=1)))  # then partial updates


def test_default_loader_refuses_a_checkpoint_missing_a_tensor(tmp_path):
    state = checkpoint("dense")
    del state["model.layers.2.post_feedforward_layernorm.weight"]
    with pytest.raises(ValueError, match="model.layers.2.post_feedforward_layernorm.weight"):
        _load(_write_checkpoint(tmp_path / "ckpt", state), "auto")


def test_default_loader_refuses_a_missing_embedding_too(tmp_path):
    """The check no longer waits for embed_tokens to arrive."""
    state = checkpoint("dense")
    del state["model.embed_tokens.weight"]
    with pytest.raises(ValueError, match="model.embed_tokens.weight"):
        _load(_write_checkpoint(tmp_path / "ckpt", state), "auto")


def test_dummy_load_then_a_partial_update(tmp_path, monkeypatch, caplog):
    """--load-format dummy never calls load_weights; slime's first bucket (with embed_tokens)
    is an update, not a checkpoint load with the rest missing."""
    monkeypatch.setattr(harness.server_args(), "load_format", "dummy")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(g4util.config_json(CONFIGS["dense"])))
    with caplog.at_level("WARNING", logger=gemma4_causal.__name__):
        model = _load(folder, "dummy")
    assert "layer scalars" in caplog.text  # said once: weight sync does not bring them
    bucket = _first_bucket(checkpoint("dense"))
    assert model.load_weights(bucket) == {n for n, _ in bucket}
    assert torch.equal(model.model.embed_tokens.weight, bucket[0][1])


def test_layered_loader_refuses_before_loading_anything(tmp_path):
    """LayeredModelLoader fills the model through load_weights_to_module (never load_weights);
    Gemma4 has none, so SGLang's loader stops (and ServerArgs refuses the format first)."""
    folder = _write_checkpoint(tmp_path / "ckpt", checkpoint("dense"))
    assert not hasattr(Gemma4ForCausalLM, "load_weights_to_module")
    with pytest.raises(ValueError, match="load_weights_to_module"):
        _load(folder, "layered")


def test_remote_instance_fills_parameters_only(monkeypatch):
    """RemoteInstanceModelLoader's transfer-engine path, run for real with a stand-in engine
    (memcpy from a seed model): named_parameters() are copied, then post_load_weights(). After
    it, a partial update is taken. The layer scalars (buffers) do not come across, which is why
    ServerArgs refuses --load-format remote_instance for Gemma4."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.model_loader import loader as sgl_loader

    seed = sgl_model("moe", checkpoint("moe"))
    info = {n: (t.data_ptr(), t.numel(), t.element_size()) for n, t in seed.named_parameters()}
    monkeypatch.setattr(sgl_loader, "get_remote_instance_transfer_engine_info_per_rank",
                        lambda url, rank: ("seed-session", info))

    class Engine:
        def batch_transfer_sync_read(self, session, client_ptrs, seed_ptrs, lengths):
            for dst, src, n in zip(client_ptrs, seed_ptrs, lengths):
                ctypes.memmove(dst, src, n)
            return 0

    model = sgl_model("moe")  # as the loader builds it: _initialize_model, no load_weights
    loader = sgl_loader.RemoteInstanceModelLoader(LoadConfig(load_format="remote_instance"))
    assert loader.load_model_from_remote_instance_by_transfer_engine(model, Engine(), "http://seed", 0)
    for (name, got), (_, want) in zip(model.named_parameters(), seed.named_parameters()):
        assert torch.equal(got, want), name
    model.load_weights(_first_bucket(checkpoint("moe", seed=1)))
    scalars = [(n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar")]
    assert scalars and all(float(b) == 1.0 for _, b in scalars)
    assert all(float(b) != 1.0 for n, b in seed.named_buffers() if n.endswith("layer_scalar"))


@pytest.mark.parametrize("name,tensor,why", [
    ("model.layers.0.mlp.down_proj.weight_scale_inv", torch.ones(1, 1), "a quantization tensor"),
    ("model.layers.0.self_attn.q_proj.weight_scale", torch.ones(1), "a quantization tensor"),
    ("model.layers.1.self_attn.k_proj.input_scale", torch.ones(1), "a quantization tensor"),
    ("model.layers.0.mlp.down_proj.weight", torch.zeros(64, 96).to(torch.float8_e4m3fn), "stored as torch.float8_e4m3fn"),
    ("model.layers.0.mlp.down_proj.qweight", torch.zeros(8, 96, dtype=torch.int32), "a quantization tensor"),
])
def test_quantized_tensors_are_refused_by_name(name, tensor, why):
    model = sgl_model("dense", checkpoint("dense"))
    with pytest.raises(ValueError) as err:
        model.load_weights([(name, tensor)])
    assert repr(name) in str(err.value) and why in str(err.value), str(err.value)


def test_fp8_checkpoint_is_refused_at_load_naming_the_tensor(tmp_path):
    state = checkpoint("dense")
    state["model.layers.0.mlp.down_proj.weight_scale_inv"] = torch.ones(1, 1)
    with pytest.raises(ValueError, match="down_proj.weight_scale_inv"):
        _load(_write_checkpoint(tmp_path / "ckpt", state), "auto")
