"""slime's colocated RL cycle with SGLang's real engine serving Gemma4 (GPU machine; issue 24).

Each step, as slime's train.py runs it with --colocate --offload-rollout:

1. rollout: SGLang's HTTP server (launched by slime's own SGLangEngine / launch_server_process,
   on 127.0.0.1) samples N continuations of each of a few prompts, the requests of one prompt
   sharing its prefix in the radix cache, with the log-probabilities of the tokens it generated
   (and, for the MoE, the routed experts: `return_routed_experts`, as slime's generate asks);
2. release: `release_memory_occupation` (weights, KV cache and CUDA graphs, no CPU backup);
3. train: our Megatron Gemma4 (slime patch, `local` spec, our attention kernels) scores the same
   tokens, then takes one Adam step of a policy-gradient loss on them; the MoE replays the
   engine's routed experts (slime's RoutingReplay, stage replay_forward);
4. resume the weights, push every parameter through slime's colocated path: slime's
   convert_to_hf (our Gemma4ToHF) and `_send_to_colocated_engine` (FlattenedTensorBucket,
   MultiprocessingSerializer, `update_weights_from_tensor` with load_format flattened_bucket),
   its `.remote` and `ray.get` made direct calls (no Ray here);
5. resume the KV cache and the CUDA graphs.

Checked per step: the gap, mean |log p(SGLang) - log p(Megatron)| over the generated tokens, stays
within 1.5 x the step-0 gap + 0.01. After the last push: SGLang's log-probabilities equal, bit for
bit, those of a fresh SGLang server loaded from the pushed tensors (same graphs setting), on a
scoring prefill and a greedy decode, one request at a time.

Controls (each must FAIL the gap check): `--control stale-rope` serves a Gemma4 whose RoPE
frequencies are kept outside parameters and buffers, as before the fix (engine_cycle_site/
sitecustomize.py does this inside SGLang's processes); `--control skip-push` skips the weight push
from step 2 on.

sgl-kernel cannot be installed on the GPU machine (its wheel is for another torch): SGLang runs
with the test shim in sgl_kernel_shim/ (GEMMA4_SHIM_LOG collects the ops it replaced; the
results name them), SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1, and the PyTorch sampling backend.

    python3 engine_cycle.py --kind dense --steps 20 --out results.jsonl [--graphs off] [--control ...]

Needs on sys.path: the patched SGLang tree (SGLANG_TREE), slime (GEMMA4_SLIME_TREE) and Megatron
(GEMMA4_MEGATRON_TREE) with their series applied, and the wheels SGLang's server imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from argparse import Namespace
from pathlib import Path

HERE = Path(__file__).resolve().parent
STACK = HERE.parents[1]
SHIM = HERE / "sgl_kernel_shim"
SITE = HERE / "engine_cycle_site"
STANDINS = HERE / "import_standins"  # only where the real package is absent (the GPU machine)


def setup_paths(control: str) -> None:
    """The trees first on sys.path and on PYTHONPATH (SGLang's processes are spawned)."""
    paths = [str(SHIM)] + [os.environ[k] for k in ("SGLANG_TREE", "GEMMA4_SLIME_TREE", "GEMMA4_MEGATRON_TREE")
                           if os.environ.get(k)]
    if control == "stale-rope":
        paths.insert(0, str(SITE))
    import importlib.util

    if importlib.util.find_spec("IPython") is None:
        paths.append(str(STANDINS))
    for p in reversed(paths):
        sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["GEMMA4_CYCLE_CONTROL"] = control
    os.environ.setdefault("SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK", "1")
    sys.path[:0] = [str(HERE), str(STACK / "tests" / "gemma4"), str(STACK / "tests" / "image")]


def install_import_standins() -> list[str]:
    """Ray and sglang_router are imported by slime's modules used here but not called on this path
    (no Ray actors, no router); where they are absent, minimal modules stand in, in this process."""
    import importlib.util

    made = []
    if importlib.util.find_spec("ray") is None:
        ray = types.ModuleType("ray")
        ray.get = lambda refs, *a, **k: refs  # the engine calls below are already synchronous
        ray.ObjectRef = type("ObjectRef", (), {})
        actor = types.ModuleType("ray.actor")
        actor.ActorHandle = type("ActorHandle", (), {})
        ray.actor = actor
        sys.modules.update({"ray": ray, "ray.actor": actor})
        made.append("ray")
    if importlib.util.find_spec("sglang_router") is None:
        router = types.ModuleType("sglang_router")
        router.__version__ = "0.0.0"
        sys.modules["sglang_router"] = router
        made.append("sglang_router")
    return made


# ----------------------------------------------------------------------------- configs

def wide_configs():
    """One sliding and one global layer at each target's published width (vocabulary cut to 8192)."""
    import ckpt
    import g4util

    out = {}
    for name, size in (("wide-dense", "31B"), ("wide-moe", "26B-A4B")):
        pub = g4util.PUBLISHED[size]
        cfg = dict(ckpt.DENSE, **{k: v for k, v in pub.items() if k != "num_hidden_layers"})
        cfg.update(num_hidden_layers=2, layer_types=[ckpt.SLIDING, ckpt.FULL], vocab_size=8192,
                   sliding_window=128, initializer_range=0.02, attention_k_eq_v=True)
        out[name] = cfg
    return out


def write_checkpoint(dest: Path, kind: str) -> tuple[dict, dict]:
    import ckpt

    if kind not in ckpt.CONFIGS:
        ckpt.CONFIGS.update(wide_configs())
    if not (dest / "model.safetensors").exists():
        ckpt.write(dest, kind)
    if not (dest / "tokenizer.json").exists():
        write_tokenizer(dest)
    return ckpt.read(dest)


def write_tokenizer(dest: Path) -> None:
    """A word-level tokenizer (the image tier's): the server runs with its tokenizer and
    detokenizer managers, as slime starts it (slime never passes --skip-tokenizer-init)."""
    from slime_step import tokenizer_files

    conf = json.loads((dest / "config.json").read_text())
    for name, body in tokenizer_files(conf).items():
        (dest / name).write_text(json.dumps(body))


# ----------------------------------------------------------------------------- the engine (slime's)

def sglang_args(ckpt_dir: Path, kind: str, graphs: bool, moe: bool, mem: float) -> Namespace:
    """The fields of slime's args that its SGLangEngine reads (flags of the run scripts)."""
    return Namespace(
        hf_checkpoint=str(ckpt_dir), seed=1234, offload_rollout=True, colocate=True, num_gpus_per_node=1,
        rollout_num_gpus_per_engine=1, sglang_pp_size=1, sglang_dp_size=1, sglang_ep_size=1,
        use_rollout_routing_replay=moe, fp16=False, rollout_external=False, sglang_router_ip=None,
        sglang_router_port=None, debug_rollout_only=False, use_critic=False,
        # what the run scripts pass as --sglang-*; chunked prefill small enough that prompts are chunked
        sglang_attention_backend="triton", sglang_sampling_backend="pytorch", sglang_skip_tokenizer_init=False,
        sglang_mem_fraction_static=mem, sglang_context_length=2048, sglang_chunked_prefill_size=256,
        sglang_cuda_graph_max_bs=16, sglang_disable_cuda_graph=not graphs, sglang_dtype="bfloat16",
        sglang_log_level="warning", sglang_max_running_requests=64,
        sglang_grammar_backend="none",  # no structured output here; the GPU machine has no xgrammar
        # read by slime's convert_to_hf and named_params_and_buffers (Megatron args in a real run)
        q_lora_rank=None, num_experts=None,
    )


def start_engine(args: Namespace):
    from slime.backends.sglang_utils.sglang_engine import SGLangEngine

    from gpu import free_port

    engine = SGLangEngine(args, rank=0)
    port, nccl = free_port(), free_port()
    try:
        engine.init(dist_init_addr=f"127.0.0.1:{free_port()}", port=port, nccl_port=nccl, host="127.0.0.1")
    except BaseException:
        stop(engine)
        raise
    return engine


def stop(engine) -> None:
    """The server process tree this script started, and nothing else (slime's SGLangEngine.shutdown
    also deregisters from a router, which this run has not)."""
    from sglang.srt.utils import kill_process_tree

    proc = getattr(engine, "process", None)
    if proc is not None and proc.is_alive():
        kill_process_tree(proc.pid)
        proc.join(60)


def post(engine, path: str, body: dict, timeout: float = 600.0):
    import requests

    r = requests.post(f"http://{engine.server_host}:{engine.server_port}/{path}", json=body, timeout=timeout)
    r.raise_for_status()
    return r.json()


def rollout(engine, prompts: list[list[int]], n: int, max_new: int, moe: bool, temperature=1.0):
    """n samples of each prompt, one request each (as slime sends them), in one batch."""
    body = {"input_ids": [p for p in prompts for _ in range(n)],
            "sampling_params": {"max_new_tokens": max_new, "temperature": temperature, "ignore_eos": True},
            "return_logprob": True}
    if moe:
        body["return_routed_experts"] = True
    out = post(engine, "generate", body)
    samples = []
    for ids, r in zip(body["input_ids"], out):
        meta = r["meta_info"]
        gen = [t for _, t, _ in meta["output_token_logprobs"]]
        lps = [lp for lp, _, _ in meta["output_token_logprobs"]]
        s = {"prompt": ids, "tokens": ids + gen, "logprobs": lps}
        if moe:
            import numpy as np
            import pybase64

            s["experts"] = np.frombuffer(pybase64.b64decode(meta["routed_experts"].encode("ascii")), dtype=np.int32)
        samples.append(s)
    return samples


def score(engine, seqs: list[list[int]]):
    """SGLang's log p of every token after the first, and a greedy decode's, one request at a time
    (the same batch shapes in any server); the top-5 alternatives at each decode step too."""
    out = []
    for s in seqs:
        r = post(engine, "generate", {"input_ids": s, "sampling_params": {"max_new_tokens": 8, "temperature": 0.0},
                                      "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 5})
        m = r["meta_info"]
        out.append({"prefill": [x[0] for x in m["input_token_logprobs"][1:]],
                    "decode": [x[:2] for x in m["output_token_logprobs"]],
                    "top": m.get("output_top_logprobs")})
    return out


class _Remote:
    """`handle.method.remote(**kw)` -> the method called now (slime's code calls engines through Ray)."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return types.SimpleNamespace(remote=getattr(self._engine, name))


def push(engine, model, args: Namespace, version: int, gloo) -> list:
    """Every parameter through slime's colocated path; returns the HF tensors sent (bf16, CPU)."""
    import torch
    from slime.backends.megatron_utils.megatron_to_hf import convert_to_hf
    from slime.backends.megatron_utils.update_weight.update_weight_from_tensor import _send_to_colocated_engine

    from slime.backends.megatron_utils.update_weight.common import named_params_and_buffers

    engine.pause_generation()
    engine.flush_cache()
    named = []
    for name, p in named_params_and_buffers(args, [model]):  # slime's iterator: parameters, and the
        # buffers it sends (expert_bias; Gemma4's layer_scalar)
        named += convert_to_hf(args, "gemma4", name, p.detach().to(torch.bfloat16))
    refs, keep = _send_to_colocated_engine(named, ipc_engine=_Remote(engine), ipc_gather_src=0,
                                           ipc_gather_group=gloo, weight_version=version)
    del keep
    torch.cuda.ipc_collect()
    engine.continue_generation()
    return [(n, t.detach().cpu()) for n, t in named]


# ----------------------------------------------------------------------------- training side

def megatron_model(conf, state):
    import torch
    from gpu import megatron

    return megatron(conf, state, torch.float32, "local", "cuda", "flash")


def fill_replay(model, experts, n_tokens: int, layers: int, topk: int):
    """Every router's RoutingReplay holds this sample's experts (SGLang returns tokens - 1 rows; the
    last row, which scores no generated token, repeats the one before)."""
    import torch

    e = torch.from_numpy(experts.copy()).view(n_tokens - 1, layers, topk)
    e = torch.cat([e, e[-1:]], 0).long().cuda()
    routers = [layer.mlp.router for layer in model.decoder.layers]
    for i, r in enumerate(routers):
        r.routing_replay.top_indices_list = [e[:, i].contiguous()]
        r.routing_replay.forward_index = 0
        r.routing_replay.backward_index = 0


def megatron_logprobs(model, samples, moe: bool, conf: dict, grad=False, stage="replay_forward"):
    import torch

    out = []
    with torch.set_grad_enabled(grad):
        for s in samples:
            seq = s["tokens"]
            if moe:
                os.environ["ROUTING_REPLAY_STAGE"] = stage
                if stage == "replay_forward":
                    fill_replay(model, s["experts"], len(seq), conf["num_hidden_layers"], conf["top_k_experts"])
            ids = torch.tensor([seq], device="cuda")
            logits = model(input_ids=ids, position_ids=None, attention_mask=None)[0]
            lp = torch.log_softmax(logits.float(), -1)[:-1].gather(-1, ids[0, 1:, None])[:, 0]
            out.append(lp[len(s["prompt"]) - 1:] if grad else lp[len(s["prompt"]) - 1:].detach().cpu())
    return out


def routing_disagreement(model, samples, conf) -> list[float]:
    """Per MoE layer: the share of (token, slot) choices where Megatron's own routing (on its own
    hidden states) differs from the experts SGLang returned."""
    import torch

    layers, topk = conf["num_hidden_layers"], conf["top_k_experts"]
    maps = []
    routers = [layer.mlp.router for layer in model.decoder.layers]
    hooks = [r.register_forward_hook(lambda m, i, o: maps.append(o[1].detach())) for r in routers]
    diff, total = torch.zeros(layers), 0
    try:
        os.environ["ROUTING_REPLAY_STAGE"] = "fallthrough"
        with torch.no_grad():
            for s in samples:
                maps.clear()
                seq = s["tokens"]
                model(input_ids=torch.tensor([seq], device="cuda"), position_ids=None, attention_mask=None)
                e = torch.from_numpy(s["experts"].copy()).view(len(seq) - 1, layers, topk).long()
                for i, mp in enumerate(maps):
                    mine = mp[: len(seq) - 1].cpu()
                    theirs = torch.zeros_like(mine).scatter_(1, e[:, i], True)
                    diff[i] += (mine & ~theirs).sum().item()
                total += (len(seq) - 1) * topk
    finally:
        for h in hooks:
            h.remove()
    return (diff / max(total, 1)).tolist()


def train_step(model, opt, samples, moe, conf) -> float:
    """One Adam step of a policy-gradient loss (reward: share of even tokens, normalised)."""
    import torch

    gen = [s["tokens"][len(s["prompt"]):] for s in samples]
    reward = torch.tensor([sum(t % 2 == 0 for t in g) / max(len(g), 1) for g in gen], device="cuda")
    adv = (reward - reward.mean()) / (reward.std() + 1e-6)
    lps = megatron_logprobs(model, samples, moe, conf, grad=True)
    loss = -sum(adv[i] * lps[i].sum() for i in range(len(samples))) / len(samples)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


# ----------------------------------------------------------------------------- the cycle

def shim_ops(log: Path) -> list[str]:
    return sorted({line.split()[1] for line in log.read_text().splitlines()}) if log.exists() else []


def cycle(a, kind: str, work: Path, emit) -> dict:
    import torch
    import torch.distributed as dist

    conf, state = write_checkpoint(work / "ckpt" / kind, kind)
    moe = bool(conf.get("enable_moe_block"))
    if moe:
        os.environ["ENABLE_ROUTING_REPLAY"] = "1"
    import g4util

    g4util.init_single_rank()
    gloo = dist.new_group([0], backend="gloo")
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(0)
    args = sglang_args(work / "ckpt" / kind, kind, a.graphs == "on", moe, a.mem)
    args.vocab_size = conf["vocab_size"]
    args.num_experts = conf.get("num_experts") if moe else None
    t0 = time.monotonic()
    engine = start_engine(args)
    ready = time.monotonic() - t0
    model = megatron_model(conf, state)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(7)
    window = conf["sliding_window"]
    per_step, gap0 = [], None
    ok = True
    try:
        for step in range(a.steps):
            ts = time.monotonic()
            # prompts past the window: lengths around 1.5 windows, continuations of a quarter window
            prompts = [torch.randint(3, conf["vocab_size"], (window + window // 2 + 7 * i,), generator=g).tolist()
                       for i in range(a.prompts)]
            samples = rollout(engine, prompts, a.n, a.max_new, moe)
            engine.release_memory_occupation()
            train_lp = megatron_logprobs(model, samples, moe, conf)
            sgl_lp = [torch.tensor(s["logprobs"]) for s in samples]
            d = torch.cat([(x.double() - y.double()).abs() for x, y in zip(sgl_lp, train_lp)])
            gap = float(d.mean())
            rec = {"step": step, "gap_mean": gap, "gap_max": float(d.max()), "tokens": int(d.numel())}
            if moe:
                rec["routing_disagreement_per_layer"] = routing_disagreement(model, samples[:4], conf)
            if gap0 is None:
                gap0 = gap
            limit = 1.5 * gap0 + 0.01
            rec["limit"] = limit
            rec["within"] = gap <= limit
            ok &= rec["within"]
            rec["loss"] = train_step(model, opt, samples, moe, conf)
            engine.resume_memory_occupation(tags=["weights"])
            if a.control == "skip-push" and step >= 1:
                rec["pushed"] = 0
            else:
                sent = push(engine, model, args, step + 1, gloo)
                rec["pushed"] = len(sent)
            engine.resume_memory_occupation(tags=["kv_cache", "cuda_graph"])
            rec["seconds"] = time.monotonic() - ts
            per_step.append(rec)
            emit(dict(kind=kind, graphs=a.graphs, control=a.control, **rec))
            print(f"[cycle] {kind} step {step}: gap {gap:.5f} (limit {limit:.5f}) max {rec['gap_max']:.4f} "
                  f"loss {rec['loss']:.4f} pushed {rec['pushed']} {rec['seconds']:.1f} s", flush=True)
        reload = None
        if a.reload and a.control == "none":
            reload = reload_check(engine, sent, conf, work / "pushed" / kind, a, moe)
            ok &= reload["bitwise_equal"]
    finally:
        stop(engine)
    return dict(kind=kind, graphs=a.graphs, control=a.control, steps=a.steps, engine_ready_s=ready,
                gap0=gap0, gap_last=per_step[-1]["gap_mean"] if per_step else None,
                gap_max_over_steps=max(r["gap_mean"] for r in per_step) if per_step else None,
                all_within=all(r["within"] for r in per_step), reload=reload, ok=ok)


def reload_check(engine, sent, conf, dest: Path, a, moe) -> dict:
    """The pushed tensors as a checkpoint; a fresh server on it; both score the same sequences."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    src = Path(engine.args.hf_checkpoint)
    for f in src.glob("*.json"):  # config, generation config, tokenizer: all but the weights
        (dest / f.name).write_text(f.read_text())
    tensors = {n: t.contiguous() for n, t in sent}
    missing = [n for n in load_file(str(src / "model.safetensors")) if n not in tensors]
    if missing:  # the push must carry the whole model (layer scalars included)
        raise RuntimeError(f"the push left out {len(missing)} checkpoint tensors, e.g. {missing[:4]}")
    save_file(tensors, str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(99)
    w = conf["sliding_window"]
    seqs = [torch.randint(3, conf["vocab_size"], (w * 2 + 5 * i,), generator=g).tolist() for i in range(3)]
    before = score(engine, seqs)
    args2 = sglang_args(dest, "reload", a.graphs == "on", moe, a.mem)
    fresh = start_engine(args2)
    try:
        after = score(fresh, seqs)
    finally:
        stop(fresh)
    equal = before == after
    first = None
    if not equal:
        for i, (x, y) in enumerate(zip(before, after)):
            for k in ("prefill", "decode", "top"):
                if x[k] != y[k]:
                    first = f"sequence {i} {k}"
                    break
            if first:
                break
    return dict(bitwise_equal=equal, sequences=len(seqs), first_difference=first,
                tensors=len(tensors), graphs=a.graphs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="dense", help="dense, moe, wide-dense, wide-moe (comma-separated)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--graphs", choices=["on", "off"], default="on")
    ap.add_argument("--control", choices=["none", "stale-rope", "skip-push"], default="none")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mem", type=float, default=0.25, help="SGLang's mem_fraction_static")
    ap.add_argument("--no-reload", dest="reload", action="store_false")
    ap.add_argument("--work", default="/tmp/engine-cycle")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    setup_paths(a.control)
    standins = install_import_standins()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    shim_log = work / "shim-ops.txt"
    os.environ["GEMMA4_SHIM_LOG"] = str(shim_log)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(d):
        with out.open("a") as f:
            f.write(json.dumps(d) + "\n")

    rc = 0
    for kind in a.kind.split(","):
        try:
            res = cycle(a, kind, work, emit)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            res = dict(kind=kind, graphs=a.graphs, control=a.control, ok=False, error=f"{type(e).__name__}: {e}")
        res["shim_ops"] = shim_ops(shim_log)
        res["import_standins"] = standins
        expect_fail = a.control != "none"
        res["verdict"] = ("control failed as it must" if not res["ok"] else "CONTROL PASSED: the check is blind") \
            if expect_fail else ("pass" if res["ok"] else "FAIL")
        if res["ok"] == expect_fail or "error" in res:
            rc = 1
        emit(dict(summary=True, **res))
        print("[cycle] summary " + json.dumps(res), flush=True)
    from sglang.srt.utils import kill_process_tree

    kill_process_tree(None, include_parent=False)  # whatever this script started and left running
    return rc


if __name__ == "__main__":
    sys.exit(main())
