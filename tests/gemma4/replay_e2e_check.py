"""Rollout routing replay for Gemma4, end to end, on the CPU (pinned trees only).

    python replay_e2e_check.py    (GEMMA4_SLIME_TREE: a whole patched slime tree;
                                   GEMMA4_MEGATRON_TREE: Megatron with slime's patch;
                                   SGLANG_TREE: the patched SGLang tree)

The path of one sample, each step by the real code of its engine:
1. SGLang's Gemma4 (our SGLang series) runs a rollout (a prefill and greedy decode steps) with
   SGLang's routed-experts capturer enabled, as its ModelRunner drives it (capture per MoE
   layer, on_forward_end after every forward); the request's experts are read back with
   get_routed_experts and encoded as the detokenizer encodes them (base64 int32).
2. slime's `generate` (sglang_rollout.py) receives that response (its HTTP post replaced by
   the response) and decodes the experts into the sample, with `--num-layers` and
   `--moe-router-topk` as the 26B-A4B script sets them (shape: tokens - 1, layers, top-k).
3. slime's actor `fill_routing_replay` (actor.py) pads and slices them per layer into the
   RoutingReplay of every Gemma4 router; the count of MoE layers must come out equal to the
   number of routers (every Gemma4 layer is MoE; the dense MLP branch is not routed).
4. Our Megatron Gemma4 runs forward with ROUTING_REPLAY_STAGE=replay_forward: every layer's
   routing map must be the experts SGLang chose, token by token.

SGLang's model holds other weights than the training model (as after a policy update before
the weight sync), so its choices differ from the training model's own: the replay, not a
coincidence, is what makes them equal. Modules absent from the test environment that the
code under test only imports (Ray, HTTP clients, loggers; listed at the end) are stubbed; pinned
host memory and the CUDA copies of RoutingReplay are replaced by plain CPU tensors.
Prints one line per check and OK last.
"""

from __future__ import annotations

import asyncio
import os
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "sglang_gemma4"))

import stubs  # noqa: E402

def detokenizer_method(name):
    """One method of SGLang's DetokenizerManager, compiled from its source file alone (the module
    imports the HTTP server stack, absent here)."""
    import ast

    import sglang.srt.managers.io_struct as io_struct

    path = Path(io_struct.__file__).with_name("detokenizer_manager.py")
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DetokenizerManager"]
    (fn,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    namespace = {}
    import pybase64

    namespace["pybase64"] = pybase64
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def main() -> int:
    os.environ["ENABLE_ROUTING_REPLAY"] = "1"  # read when a router is built
    import torch

    import harness

    harness.setup_sglang()
    import g4util

    stubs.install()
    from sglang.srt.configs.gemma4 import Gemma4TextConfig
    from sglang.srt.layers.moe import routed_experts_capturer as rec
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

    from slime.utils import routing_replay
    from slime.utils.routing_replay import RoutingReplay

    # top 8 of 16 experts, as the 26B-A4B picks 8 (of 128)
    cfg = dict(g4util.CONFIGS["moe"], vocab_size=192, num_experts=16, top_k_experts=8)
    n_layers, topk = cfg["num_hidden_layers"], cfg["top_k_experts"]

    # ---- 1. SGLang: a rollout with the routed-experts capturer on
    real_zeros = torch.zeros

    def zeros(*a, pin_memory=False, **k):  # no pinned host memory without CUDA
        return real_zeros(*a, **k)

    stale = g4util.hf_model(cfg, seed=1)
    for k, v in g4util.hf_model(cfg, seed=0).state_dict().items():
        if k.endswith("layer_scalar"):
            stale.state_dict()[k].copy_(v)
    sgl_config = Gemma4TextConfig(**g4util.config_json(cfg))
    sgl = harness.build_model(Gemma4ForCausalLM, sgl_config, torch.float32, stale.state_dict())
    runner = harness.CpuModelRunner(sgl)
    with mock.patch.object(torch, "zeros", zeros):
        capturer = rec.RoutedExpertsCapturer.create(
            enable=True, model_config=SimpleNamespace(hf_text_config=sgl_config), num_fused_shared_experts=0,
            num_tokens=512, max_running_requests=16, device="cpu")
    saved = rec.get_global_experts_capturer()
    rec.set_global_experts_capturer(capturer)
    prompt = [3, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10, 12, 14]
    try:
        out = runner.prefill([prompt])
        capturer.on_forward_end(out.forward_batch, can_run_graph=False, cuda_graph_batch=0)
        generated = [int(out.next_token_logits[0].argmax())]
        (req,) = out.reqs
        for _ in range(4):
            out = runner.decode_step([req], [generated[-1]])
            capturer.on_forward_end(out.forward_batch, can_run_graph=False, cuda_graph_batch=0)
            generated.append(int(out.next_token_logits[0].argmax()))
        tokens = prompt + generated
        routed = capturer.get_routed_experts(req.req_pool_idx, len(tokens), runner.req_to_token_pool)
    finally:
        rec.set_global_experts_capturer(saved)
    assert tuple(routed.shape) == (len(tokens) - 1, n_layers, topk), routed.shape
    (encoded,) = detokenizer_method("_extract_routed_experts")(None, SimpleNamespace(routed_experts=[routed]))
    print(f"SGLang: {len(tokens)} tokens, routed experts {tuple(routed.shape)} (tokens - 1, layers, top-k), base64")

    # ---- 2. slime's generate decodes the response into the sample
    from slime.rollout import sglang_rollout
    from slime.utils.types import Sample

    args = Namespace(
        ci_test=False, sglang_router_ip="127.0.0.1", sglang_router_port=1, use_rollout_routing_replay=True,
        num_layers=n_layers, moe_router_topk=topk, partial_rollout=False, mask_offpolicy_in_partial_rollout=False,
        sglang_speculative_algorithm=None, hf_checkpoint="unused", sglang_server_concurrency=1, rollout_num_gpus=1,
        rollout_num_gpus_per_engine=1, rollout_temperature=1.0, rollout_top_p=1.0, rollout_top_k=-1,
        rollout_max_response_len=len(generated), rollout_stop=None, rollout_stop_token_ids=None,
        rollout_skip_special_tokens=False, sglang_dp_size=None, use_slime_router=False, router_policy=None,
    )
    meta = {
        "output_token_logprobs": [[-0.5, t, None] for t in generated],
        "routed_experts": encoded,
        "finish_reason": {"type": "length"},
        "prompt_tokens": len(prompt), "completion_tokens": len(generated), "cached_tokens": 0,
    }

    async def post(url, payload, headers=None):
        assert payload["return_routed_experts"] is True and payload["input_ids"] == prompt
        return {"text": "", "meta_info": meta}

    sample = Sample(prompt="", tokens=list(prompt))
    with mock.patch.object(sglang_rollout, "post", post), \
            mock.patch.object(sglang_rollout, "load_tokenizer", lambda *a, **k: None), \
            mock.patch.object(sglang_rollout, "load_processor", lambda *a, **k: None):
        sample = asyncio.run(sglang_rollout.generate(args, sample, {"max_new_tokens": len(generated)}))
    experts = torch.from_numpy(sample.rollout_routed_experts.copy())
    assert sample.tokens == tokens
    assert torch.equal(experts, routed.to(experts.dtype)), "slime decoded other experts than SGLang recorded"
    print("slime generate: the sample holds SGLang's experts, shape", tuple(experts.shape))

    # ---- 3. slime's actor fills the routers' RoutingReplay
    from megatron.core import parallel_state

    from slime.backends.megatron_utils import actor as actor_module

    g4util.init_single_rank()
    RoutingReplay.all_routing_replays.clear()
    model, settings = g4util.megatron_model(cfg)
    g4util.load_from_hf(model, settings, g4util.hf_model(cfg, seed=0).state_dict())
    routers = [layer.mlp.router for layer in model.decoder.layers]
    assert len(RoutingReplay.all_routing_replays) == len(routers) == n_layers

    def record(self, top_indices):  # RoutingReplay.record without pinned memory
        self.top_indices_list.append(top_indices.clone())

    def pop(attr):
        def popper(self):
            value = self.top_indices_list[getattr(self, attr)]
            setattr(self, attr, getattr(self, attr) + 1)
            return value
        return popper

    class Batches:
        def reset(self):
            pass

        def get_next(self, keys):
            return {"rollout_routed_experts": [experts], "tokens": [torch.tensor(tokens)]}

    pad_multiplier = 1
    fake_actor = SimpleNamespace(
        args=Namespace(num_experts=cfg["num_experts"], data_pad_size_multiplier=pad_multiplier,
                       sequence_parallel=False),
        model=[SimpleNamespace(module=model)],
    )
    with mock.patch.object(RoutingReplay, "record", record):
        actor_module.MegatronTrainRayActor.fill_routing_replay(
            fake_actor, [Batches()], [1], {"rollout_routed_experts": [experts]})
    recorded = [r.top_indices_list for r in RoutingReplay.all_routing_replays]
    assert all(len(r) == 1 for r in recorded), [len(r) for r in recorded]
    print(f"slime fill_routing_replay: {len(recorded)} MoE layers filled, {len(routers)} routers")

    # ---- 4. the Megatron Gemma4 replays them
    maps = []
    hooks = [r.register_forward_hook(lambda m, i, o: maps.append(o[1].clone())) for r in routers]
    ids = torch.tensor([tokens])

    def forward(stage):
        os.environ["ROUTING_REPLAY_STAGE"] = stage
        maps.clear()
        with torch.no_grad():
            model(input_ids=ids, position_ids=None, attention_mask=None)
        return [m.clone() for m in maps]

    natural = forward("fallthrough")
    with mock.patch.object(RoutingReplay, "pop_forward", pop("forward_index")):
        RoutingReplay.clear_all_forward()
        replayed = forward("replay_forward")
    for h in hooks:
        h.remove()
    n = len(tokens) - 1  # SGLang returns no experts for the last token; slime pads it
    differ = 0
    for layer, (mp, nat) in enumerate(zip(replayed, natural)):
        chosen = torch.zeros_like(mp[:n]).scatter_(1, experts[:n, layer].long(), True)
        assert torch.equal(mp[:n], chosen), f"layer {layer}: the replayed routing is not SGLang's"
        differ += int(not torch.equal(nat[:n], chosen))
    assert differ > 0, "the training model chose SGLang's experts by itself: the check would not see a broken replay"
    print(f"Megatron replay_forward: every layer routes as SGLang did ({differ} of {n_layers} layers "
          "would have routed otherwise)")
    parallel_state.destroy_model_parallel()
    routing_replay.set_routing_replay(None)
    print("stubbed (absent here):", ", ".join(sorted(stubs.STUBBED)) or "none")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
