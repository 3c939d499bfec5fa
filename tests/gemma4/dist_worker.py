"""Two CPU ranks (gloo) running the Gemma4 Megatron model against transformers.

    python dist_worker.py {tp|cp|ckpt|ep|sp|replay|epsync} PORT RESULT_JSON   (ep, sp, replay: GEMMA4_DIST_DEVICE=cuda, 2 GPUs)

tp: tensor parallel 2, weights sharded by the converter, logits and every gradient
    (gathered and merged as slime gathers them) against transformers.
cp: context parallel 2 in Megatron's layout (rank r holds chunks r and 3-r), unpacked
    and packed, logits and gradients against transformers; and on an all-sliding model
    the window holds across the CP boundary.
ckpt: Megatron's distributed checkpoint saved at one layout and loaded at another (TP, PP, EP),
    bit for bit, with a control (run_ckpt).
Run by test_distributed.py; prints nothing on success, the result goes to RESULT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import g4util  # noqa: E402

WORLD = 2
DEVICE = os.environ.get("GEMMA4_DIST_DEVICE", "cpu")  # "cuda": NCCL, one GPU a rank


def _grads_as_hf(model, settings, group, tp):
    from slime_plugins.models.gemma4.weights import Gemma4ToHF, merge_tp

    conv = Gemma4ToHF(settings)
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.contiguous()
        if tp > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(g) for _ in range(tp)]
            dist.all_gather(parts, g, group=group)
            g = merge_tp(name, parts)
        for hf_name, t in conv.convert(name, g):
            out[hf_name] = t
    return out


def _compare_grads(ours, hf):
    worst = 0.0
    for name, p in hf.named_parameters():
        if p.grad is None or name == "lm_head.weight":
            continue
        worst = max(worst, g4util.rel_max(ours[name], p.grad))
    return worst


def _cp_index(total: int, rank: int) -> torch.Tensor:
    """Global token indices CP rank `rank` holds of a sequence of `total` tokens."""
    chunk = total // (2 * WORLD)
    first = torch.arange(rank * chunk, (rank + 1) * chunk)
    second = torch.arange((2 * WORLD - 1 - rank) * chunk, (2 * WORLD - rank) * chunk)
    return torch.cat([first, second])


def run_tp(rank, result):
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from slime_plugins.models.gemma4.weights import Parallel

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=WORLD)
    group = parallel_state.get_tensor_model_parallel_group()
    cfg = dict(g4util.DENSE, num_global_key_value_heads=2)  # every head count splits over 2 ranks
    hf = g4util.hf_model(cfg)
    model, settings = g4util.megatron_model(cfg, tensor_model_parallel_size=WORLD)
    g4util.load_from_hf(model, settings, hf.state_dict(), Parallel(tp_size=WORLD, tp_rank=rank))
    torch.manual_seed(5)
    ids = torch.randint(0, settings.vocab_size, (2, 15))
    labels = torch.randint(0, settings.vocab_size, (2, 15))
    ref = hf(ids).logits
    shard = model(input_ids=ids, position_ids=None, attention_mask=None)  # this rank's vocabulary half
    # Megatron's own gather of the logits allocates on CUDA; gather with autograd instead
    from torch.distributed.nn.functional import all_gather

    ours = torch.cat(all_gather(shard.contiguous(), group=group), dim=-1)
    result["tp_logits"] = g4util.rel_max(ours, ref)
    F.cross_entropy(ref.flatten(0, 1), labels.flatten()).backward()
    # every rank computes the whole loss: scale it so the gather's backward (a sum) counts it once
    (F.cross_entropy(ours.flatten(0, 1), labels.flatten()) / WORLD).backward()
    # what Megatron's finalize_model_grads does: sum q/k norm gradients over TP when qk_layernorm
    for name, p in model.named_parameters():
        if model.config.qk_layernorm and ("q_layernorm" in name or "k_layernorm" in name):
            dist.all_reduce(p.grad, group=group)
    result["tp_grads"] = _compare_grads(_grads_as_hf(model, settings, group, WORLD), hf)


def run_sp(rank, result):
    """Tensor parallel 2 with sequence parallelism and full recompute, on the MoE model (experts
    split by expert-TP too). Megatron's SP collectives and recompute need CUDA: GEMMA4_DIST_DEVICE=cuda."""
    import torch.nn.functional as F
    from megatron.core import parallel_state, tensor_parallel
    from slime_plugins.models.gemma4.weights import Parallel
    from torch.distributed.nn.functional import all_gather

    dev = torch.device(DEVICE, rank)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=WORLD)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    group = parallel_state.get_tensor_model_parallel_group()
    hf = g4util.hf_model(g4util.MOE).to(dev)
    model, settings = g4util.megatron_model(
        g4util.MOE, tensor_model_parallel_size=WORLD, sequence_parallel=True, moe_token_dispatcher_type="alltoall",
        recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    model = model.to(dev).train()
    g4util.load_from_hf(model, settings, hf.state_dict(), Parallel(tp_size=WORLD, tp_rank=rank, etp_size=WORLD,
                                                                   etp_rank=rank))
    torch.manual_seed(8)
    ids = torch.randint(1, settings.vocab_size, (2, 16), device=dev)
    ids[0, 3] = 0  # a pad token: its lookup passes no gradient, under SP too
    labels = torch.randint(0, settings.vocab_size, (2, 16), device=dev)
    ref = hf(ids).logits
    ours = torch.cat(all_gather(model(input_ids=ids, position_ids=None, attention_mask=None).contiguous(),
                                group=group), dim=-1)
    result["sp_logits"] = g4util.rel_max(ours, ref)
    F.cross_entropy(ref.flatten(0, 1), labels.flatten()).backward()
    (F.cross_entropy(ours.flatten(0, 1), labels.flatten()) / WORLD).backward()
    # Megatron's finalize_model_grads: sum over TP the grads of sequence-parallel params and q/k norms
    for name, p in model.named_parameters():
        if getattr(p, "sequence_parallel", False) or "q_layernorm" in name or "k_layernorm" in name:
            dist.all_reduce(p.grad, group=group)
    result["sp_grads"] = _compare_grads(_grads_as_hf(model, settings, group, WORLD), hf)


def run_replay(rank, result):
    """slime's routing replay through the Gemma4 router, for real (its record step pins memory and
    its replay moves indices to CUDA): GEMMA4_DIST_DEVICE=cuda, and the pinned Megatron with slime's
    patch (GEMMA4_MEGATRON_TREE) and slime (GEMMA4_SLIME_TREE) first on the path. Record the
    routing, change the routers' weights, then replay: the recorded experts come back."""
    from megatron.core import parallel_state
    from slime.utils.routing_replay import RoutingReplay

    os.environ["ENABLE_ROUTING_REPLAY"] = "1"
    dev = torch.device(DEVICE, rank)
    parallel_state.initialize_model_parallel(expert_model_parallel_size=WORLD)
    model, settings = g4util.megatron_model(g4util.MOE, expert_model_parallel_size=WORLD,
                                            moe_token_dispatcher_type="alltoall")
    model = model.to(dev)
    routers = [layer.mlp.router for layer in model.decoder.layers]
    assert all(isinstance(r.routing_replay, RoutingReplay) for r in routers)
    maps = []
    for r in routers:
        r.register_forward_hook(lambda m, i, o: maps.append(o[1].clone()))
    ids = torch.randint(0, settings.vocab_size, (2, 15), device=dev)

    def routing(stage):
        os.environ["ROUTING_REPLAY_STAGE"] = stage
        maps.clear()
        with torch.no_grad():
            model(input_ids=ids, position_ids=None, attention_mask=None)
        return [m.clone() for m in maps]

    recorded = routing("record")
    with torch.no_grad():
        for r in routers:
            r.weight.normal_(0, 1.0)
    natural = routing("fallthrough")
    RoutingReplay.clear_all_forward()
    replayed = routing("replay_forward")
    result["replay_layers"] = len(recorded)
    result["replay_changed_without_replay"] = sum(not torch.equal(a, b) for a, b in zip(recorded, natural))
    result["replay_equal"] = all(torch.equal(a, b) for a, b in zip(recorded, replayed))


def run_ep(rank, result):
    """Expert parallel 2 (alltoall dispatcher). Megatron's EP collectives allocate on CUDA, so this
    mode needs GEMMA4_DIST_DEVICE=cuda and two GPUs; each rank gets its own batch (EP ranks are
    data-parallel ranks), the reference sees both batches."""
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from slime_plugins.models.gemma4.weights import Gemma4ToHF, Parallel

    dev = torch.device(DEVICE, rank) if DEVICE == "cuda" else torch.device("cpu")
    parallel_state.initialize_model_parallel(expert_model_parallel_size=WORLD)
    hf = g4util.hf_model(g4util.MOE).to(dev)
    model, settings = g4util.megatron_model(g4util.MOE, expert_model_parallel_size=WORLD,
                                            moe_token_dispatcher_type="alltoall")
    model = model.to(dev)
    g4util.load_from_hf(model, settings, hf.state_dict(), Parallel(ep_size=WORLD, ep_rank=rank))
    torch.manual_seed(7)
    ids = torch.randint(0, settings.vocab_size, (WORLD, 2, 15), device=dev)
    labels = torch.randint(0, settings.vocab_size, (WORLD, 2, 15), device=dev)
    ref = hf(ids.flatten(0, 1)).logits
    ours = model(input_ids=ids[rank], position_ids=None, attention_mask=None)
    result["ep_logits"] = g4util.rel_max(ours, ref.view(WORLD, 2, 15, -1)[rank])
    F.cross_entropy(ref.flatten(0, 1), labels.flatten(), reduction="sum").backward()
    F.cross_entropy(ours.flatten(0, 1), labels[rank].flatten(), reduction="sum").backward()
    n_local = settings.num_experts // WORLD
    conv = Gemma4ToHF(settings)
    errors = {}
    for name, p in model.named_parameters():
        if ".experts." in name:  # this rank's experts saw both ranks' tokens: compare directly
            layer = int(name.split(".")[2])
            local = int(name.split("local_experts.")[1].split(".")[0])
            e = rank * n_local + local
            hf_name = "gate_up_proj" if "linear_fc1" in name else "down_proj"
            ref_grad = getattr(hf.model.layers[layer].experts, hf_name).grad[e]
            errors[name] = (g4util.rel_max(p.grad, ref_grad), float(ref_grad.abs().max()))
            continue
        dist.all_reduce(p.grad)  # the data-parallel gradient sum
        for hf_key, g in conv.convert(name, p.grad):
            ref_grad = hf.get_parameter(hf_key).grad
            errors[name] = (g4util.rel_max(g, ref_grad), float(ref_grad.abs().max()))
    result["ep_grads"] = max(e for e, _ in errors.values())
    result["ep_worst"] = sorted(errors.items(), key=lambda kv: -kv[1][0])[:4]


def _grouped_stand_in(model, settings, hf_state, rank):
    """The model with its experts named as the te spec's TEGroupedMLP names them
    (mlp.experts.linear_fc1.weight{j}), built from the same checkpoint by our loader's grouped
    layout: Transformer Engine is not here, and slime's weight sync reads only names and tensors."""
    from slime_plugins.models.gemma4.weights import Gemma4WeightMap, Parallel

    root = torch.nn.Module()
    root.config = model.config

    def put(name, tensor, like=None):
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        param = torch.nn.Parameter(tensor.detach().clone(), requires_grad=False)
        for attr in ("tensor_model_parallel", "partition_dim", "partition_stride", "parallel_mode"):
            if like is not None and hasattr(like, attr):
                setattr(param, attr, getattr(like, attr))
        node.register_parameter(leaf, param)

    for name, p in model.named_parameters():
        if ".experts." not in name:
            put(name, p.data, like=p)
    grouped = Gemma4WeightMap(settings, expert_layout="grouped")
    for name, t in grouped.hf_to_mcore(lambda k: hf_state[k], Parallel(ep_size=WORLD, ep_rank=rank)):
        if ".experts." in name:
            put(name, t)
            param = root.get_parameter(name)
            param.tensor_model_parallel, param.partition_stride = True, 1
            param.partition_dim = 0 if "linear_fc1" in name else 1
    return root


def run_epsync(rank, result):
    """Expert parallel 2 on the CPU: slime's own weight-sync code, both of its paths, moves every
    expert to the converter under its global index, for both expert layouts (local spec:
    SequentialMLP, mlp.experts.local_experts.{j}.*; te spec: TEGroupedMLP, mlp.experts.*.weight{j}).
    The HF tensors out of the converter must equal the checkpoint's, expert by expert.

    colocated: HfWeightIteratorDirect's _get_megatron_local_param_infos (names gathered over the
    EP group) and _get_megatron_full_params (EP broadcast), then convert_to_hf;
    disaggregated: UpdateWeightFromDistributed's _update_expert_weight_from_distributed and
    _update_expert_bucket_weights_from_distributed (EP all-gather, convert_to_hf), its broadcast to
    SGLang replaced by collecting. CUDA placement is mapped to the CPU (gloo); Ray and SGLang,
    which these modules import but these steps do not use, are stubbed."""
    import functools
    import tempfile
    from argparse import Namespace
    from pathlib import Path
    from unittest import mock

    import stubs

    stubs.install("sglang")
    from megatron.core import parallel_state

    from slime.backends.megatron_utils.update_weight import hf_weight_iterator_direct as direct
    from slime.backends.megatron_utils.update_weight.common import named_params_and_buffers
    from slime.backends.megatron_utils.update_weight.update_weight_from_distributed import (
        UpdateWeightFromDistributed as UWFD,
    )
    from slime.backends.megatron_utils.megatron_to_hf import convert_to_hf
    from slime.utils import distributed_utils
    from slime_plugins.models.gemma4.weights import Parallel

    parallel_state.initialize_model_parallel(expert_model_parallel_size=WORLD)
    distributed_utils.init_gloo_group()
    hf = g4util.hf_model(g4util.MOE)
    hf_state = hf.state_dict()
    model, settings = g4util.megatron_model(g4util.MOE, expert_model_parallel_size=WORLD,
                                            moe_token_dispatcher_type="allgather")  # alltoall needs CUDA streams
    g4util.load_from_hf(model, settings, hf_state, Parallel(ep_size=WORLD, ep_rank=rank))
    wrapped = g4util.slime_wrapped
    layouts = {"local spec (SequentialMLP)": wrapped(model),
               "te spec (TEGroupedMLP names)": wrapped(_grouped_stand_in(model, settings, hf_state, rank))}
    prefix = "model.language_model." if "model.language_model.embed_tokens.weight" in hf_state else "model."
    cuda = dict(current_device=lambda: "cpu", synchronize=lambda *a, **k: None)

    def compare(hf_named):
        experts = {}
        for name, t in hf_named:
            if ".experts." in name:
                experts[name] = t
        want = {k: v for k, v in hf_state.items() if ".experts." in k}
        got = {k.replace(prefix, "model.", 1) if prefix != "model." else k: v for k, v in experts.items()}
        if sorted(got) != sorted(want):
            return f"expert tensors sent {sorted(got)}, checkpoint has {sorted(want)}"
        wrong = [f"{k} expert {e}" for k in want for e in range(want[k].shape[0])
                 if not torch.equal(got[k][e], want[k][e])]
        return wrong or None

    def sync(path, args, module, sent):
        with mock.patch.multiple(torch.cuda, **cuda):
            if path == "colocated":
                # every expert name on exactly one EP rank, or the broadcast below blocks for ever
                names = [n for n, _ in named_params_and_buffers(args, [module]) if ".experts." in n]
                everyone = [None] * WORLD
                dist.all_gather_object(everyone, names)
                shared = set(everyone[0]).intersection(*everyone[1:])
                if shared:
                    raise AssertionError(f"{len(shared)} expert names on every EP rank (e.g. {min(shared)}): "
                                         "rank-local expert indices were not made global")
                infos = direct._get_megatron_local_param_infos(args, [module])
                local = dict(named_params_and_buffers(args, [module]))
                infos = [i for i in infos if ".experts." in i.name]
                for info, full in zip(infos, direct._get_megatron_full_params(infos, local)):
                    sent += convert_to_hf(args, "gemma4", info.name, full)
                return
            fake = Namespace(args=args, model=[module], model_name="gemma4", quantization_config=None,
                             _is_pp_src_rank=True)
            fake._update_bucket_weights_from_distributed = lambda named, pbar=None: sent.extend(named)
            fake._update_expert_bucket_weights_from_distributed = functools.partial(
                UWFD._update_expert_bucket_weights_from_distributed, fake)
            named, size = [], 0
            for name, param in named_params_and_buffers(args, [module]):
                if ".experts." in name:
                    size = UWFD._update_expert_weight_from_distributed(fake, name, param, named, size)
            if named:
                fake._update_expert_bucket_weights_from_distributed(named)

    for label, module in layouts.items():
        for path in ("disaggregated", "colocated"):
            folder = Path(tempfile.mkdtemp(prefix=f"gemma4-epsync-{rank}-"))
            (folder / "config.json").write_text(json.dumps(g4util.config_json(g4util.MOE)))
            args = Namespace(num_experts=settings.num_experts, hf_checkpoint=str(folder), vocab_size=settings.vocab_size,
                             update_weight_buffer_size=1 << 14, megatron_to_hf_mode="raw", q_lora_rank=None)
            sent = []
            try:
                sync(path, args, module, sent)
            except Exception as e:  # noqa: BLE001 - e.g. a collective that timed out: the ranks disagree
                result[f"{label}, {path}"] = f"{type(e).__name__}: {e}"[:500]
                continue
            result[f"{label}, {path}"] = compare(sent)


def run_cp(rank, result):
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.packed_seq_params import PackedSeqParams

    parallel_state.initialize_model_parallel(context_parallel_size=WORLD)
    group = parallel_state.get_context_parallel_group()
    hf = g4util.hf_model(g4util.MOE)
    model, settings = g4util.megatron_model(g4util.MOE, context_parallel_size=WORLD)
    g4util.load_from_hf(model, settings, hf.state_dict())
    torch.manual_seed(6)

    # unpacked: one sequence of 16 tokens, 8 on each rank
    ids = torch.randint(0, settings.vocab_size, (1, 16))
    labels = torch.randint(0, settings.vocab_size, (1, 16))
    idx = _cp_index(16, rank)
    ref = hf(ids).logits
    ours = model(input_ids=ids[:, idx], position_ids=None, attention_mask=None)
    result["cp_unpacked_logits"] = g4util.rel_max(ours, ref[:, idx])
    F.cross_entropy(ref[0], labels[0], reduction="sum").backward()
    F.cross_entropy(ours[0], labels[0, idx], reduction="sum").backward()
    for p in model.parameters():
        dist.all_reduce(p.grad, group=group)
    result["cp_unpacked_grads"] = _compare_grads(_grads_as_hf(model, settings, None, 1), hf)

    # packed: sequences of 12 and 8 tokens, each split in Megatron's CP layout
    lengths = [12, 8]
    seqs = [torch.randint(0, settings.vocab_size, (1, n)) for n in lengths]
    local = torch.cat([s[:, _cp_index(n, rank)] for s, n in zip(seqs, lengths)], dim=1)
    cu = torch.tensor([0, 12, 20], dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                             cu_seqlens_kv_padded=cu, max_seqlen_q=12, max_seqlen_kv=12)
    ours = model(input_ids=local, position_ids=None, attention_mask=None, packed_seq_params=packed)[0]
    ref = torch.cat([hf(s).logits[0, _cp_index(n, rank)] for s, n in zip(seqs, lengths)])
    result["cp_packed_logits"] = g4util.rel_max(ours, ref)

    # the window across the CP boundary: all-sliding, one layer, window 5; the last token of the
    # sequence (held by rank 0, chunk 3) sees tokens 12..15 and not 11 (held by rank 1)
    sliding = [g4util.SLIDING]
    model1, settings1 = g4util.megatron_model(dict(g4util.DENSE, num_hidden_layers=1, layer_types=sliding),
                                              layer_types=sliding, context_parallel_size=WORLD)
    with torch.no_grad():
        for name, p in model1.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    base = model1(input_ids=ids[:, idx], position_ids=None, attention_mask=None)
    moved = {}
    for back in (4, 5):
        changed = ids.clone()
        changed[0, 15 - back] = (changed[0, 15 - back] + 1) % settings1.vocab_size
        out = model1(input_ids=changed[:, idx], position_ids=None, attention_mask=None)
        if rank == 0:  # rank 0 holds global position 15 as its last local token
            moved[back] = (out[0, -1] - base[0, -1]).abs().max().item()
    if rank == 0:
        result["cp_window_inside"] = moved[4]
        result["cp_window_outside"] = moved[5]


def _ckpt_model(cfg, layout, rank, hf_state=None):
    """The model at a layout (dict of Megatron parallel sizes), parallel state set up for it;
    loaded from an HF state when given, else left at its own random initialisation."""
    from megatron.core import parallel_state
    from slime_plugins.models.gemma4.weights import parallel_from_mpu

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(**layout)
    torch.manual_seed(100 + rank)
    extra = {"pipeline_dtype": torch.float32} if layout.get("pipeline_model_parallel_size", 1) > 1 else {}
    model, settings = g4util.megatron_model(cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                                            post_process=parallel_state.is_pipeline_last_stage(), **layout, **extra)
    if hf_state is not None:  # where this rank sits, as slime's HF loader reads it
        g4util.load_from_hf(model, settings, hf_state, parallel_from_mpu(settings, model))
    return model


def run_ckpt(rank, result, path):
    """Megatron's distributed checkpoint of the Gemma4 model saved at one layout and loaded at
    another, each way: every parameter and buffer must equal, bit for bit, the model built at the
    loading layout straight from the same weights. The control moves one rank's piece of one
    tensor in the saved metadata: the check must see it."""
    from megatron.core import dist_checkpointing

    g4util.cpu_checkpoint_writer()
    dense = dict(g4util.DENSE, num_global_key_value_heads=2)  # every head count splits over 2 ranks
    untied = dict(dense, tie_word_embeddings=False)
    cases = [("dense", dense, {"tensor_model_parallel_size": 2}, {}),
             ("dense", dense, {}, {"tensor_model_parallel_size": 2}),
             # untied: Megatron ties the last stage's output layer to the embedding with a CUDA
             # all-reduce at model construction, which CPU ranks cannot run
             ("dense", untied, {"pipeline_model_parallel_size": 2}, {}),
             ("dense", untied, {}, {"pipeline_model_parallel_size": 2}),
             ("moe", g4util.MOE, {"expert_model_parallel_size": 2}, {}),
             ("moe", g4util.MOE, {}, {"expert_model_parallel_size": 2}),
             ("control", dense, {"tensor_model_parallel_size": 2}, {})]
    for i, (kind, cfg, save_at, load_at) in enumerate(cases):
        hf_state = g4util.hf_model(cfg).state_dict()
        where = f"{path}.ckpt{i}"
        if rank == 0:
            os.makedirs(where)
        dist.barrier()
        saved = _ckpt_model(cfg, save_at, rank, hf_state)
        sharded = saved.sharded_state_dict()
        if kind == "control":
            from megatron.core.dist_checkpointing.mapping import ShardedTensor

            t = sharded["decoder.layers.0.mlp.linear_fc2.weight"]  # row-parallel: split on axis 1
            assert isinstance(t, ShardedTensor) and t.axis_fragmentations[1] == 2, t
            # rank r claims the other rank's columns: the two pieces trade places in the checkpoint
            off = list(t.global_offset)
            off[1] = t.local_shape[1] * (1 - off[1] // t.local_shape[1])
            t.global_offset = tuple(off)
        dist_checkpointing.save(sharded, where)
        dist.barrier()
        loaded = _ckpt_model(cfg, load_at, rank)  # another random start
        state = dist_checkpointing.load(loaded.sharded_state_dict(), where)
        loaded.load_state_dict(state, strict=True)
        want = {k: v for k, v in _ckpt_model(cfg, load_at, rank, hf_state).state_dict().items()
                if isinstance(v, torch.Tensor)}  # (not the modules' empty `_extra_state`)
        got = dict(loaded.state_dict())
        differ = sorted(k for k in want if not isinstance(got.get(k), torch.Tensor) or not torch.equal(want[k], got[k]))
        result[f"ckpt{i}"] = {"kind": kind, "save": save_at, "load": load_at, "tensors": len(want),
                              "differ": differ[:8], "n_differ": len(differ)}


def _worker(rank, mode, rendezvous, path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    if DEVICE == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if DEVICE == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=rendezvous, rank=rank, world_size=WORLD)
    result = {}
    try:
        if mode == "ckpt":
            run_ckpt(rank, result, path)
        else:
            {"tp": run_tp, "cp": run_cp, "ep": run_ep, "sp": run_sp, "replay": run_replay,
             "epsync": run_epsync}[mode](rank, result)
    except Exception:  # noqa: BLE001 - reported to the test
        result["error"] = traceback.format_exc()
    with open(f"{path}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    # RENDEZVOUS: a port (tcp://127.0.0.1:PORT; torch's TCPStore then listens on every interface)
    # or an init-method URL such as file:///tmp/rendezvous, which the tests use
    mode, rendezvous, path = sys.argv[1], sys.argv[2], sys.argv[3]
    if rendezvous.isdigit():
        rendezvous = f"tcp://127.0.0.1:{rendezvous}"
    mp.spawn(_worker, args=(mode, rendezvous, path), nprocs=WORLD, join=True)
