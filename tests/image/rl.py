"""The rl tier (1 GPU used; colocated), two checks of one RL step on the tiny checkpoint.

**slime's own train.py** (slime_step.py): the stack's Gemma4 run scripts (run-gemma4-31B.sh for the
dense checkpoint, run-gemma4-26B-A4B.sh for the MoE, with `--use-rollout-routing-replay`) start
slime's `train.py` through their launcher with a private Ray head (127.0.0.1, token auth, stopped by
its PID), the tiny model's flags and data appended through EXTRA_ARGS. Two rollouts, one train
step after each, slime's weight update into SGLang in between. Read from slime's log: both rollouts,
both train steps and the update happened, and the update arrived:

    gap1 <= 1.5 x gap0 + 0.01   and   moved >= 2 x (1.5 x gap0 + 0.01)

gap0, gap1: slime's `train/train_rollout_logprob_abs_diff` at steps 0 and 1 (mean |log p(train) -
log p(SGLang)| over the rollout's tokens, the trained model scoring before its step); moved: slime's
`rollout/log_probs - rollout/ref_log_probs` at rollout 1 (the reference is the initial policy,
`--use-kl-loss` with coefficient 0). Stale weights in SGLang would put gap1 at about the step's
movement; samples from the stale policy would make `moved` negative. slime_step.py's docstring
has the argument. For the MoE the same run checks routing replay: slime's actor raises when a
rollout lacks SGLang's routed experts and asserts that every MoE layer received them.

**The stack's parts** (this file's worker), a finer check without Ray or slime's loop:

1. rollout: SGLang's engine (`sglang.Engine`, Triton attention) samples continuations of a few
   prompts, with their log-probabilities;
2. train step: our Megatron Gemma4 (the `te` spec where Transformer Engine is installed, else
   `local`; fp32 master weights) takes one Adam step of a policy-gradient loss on those samples
   (reward: the share of even token ids, a stand-in with a gradient);
3. weight update: every parameter through the converter slime's weight sync uses (`Gemma4ToHF`)
   into the engine (`update_weights_from_tensor`, the call slime's colocated sync makes);
4. second rollout: the engine scores the same tokens again.

There the update arrived when, after it, SGLang agrees with the trained model about as well as it
agreed with the untrained one before the step (mean |log p| difference no more than 1.5 x, plus
0.01), while the step moved the model's log-probabilities by at least twice that agreement.

Both need the real image on a GPU node (SGLang with sgl-kernel, Ray, slime, Megatron, TE): neither
the engine step nor slime's train.py step has run in this project, which has no GPU node with the
image (the parts step ran on one H200 with SGLang's model classes in place of the engine,
`--engine harness`). What is missing is reported as skipped by name.

    python3 rl.py --work DIR --results DIR/rl.jsonl      # the parts worker
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STACK = HERE.parents[1]
TIER = "rl"
KINDS = ("dense", "moe")


def run(img, rep, work: Path, gpus: int) -> None:
    """The worker in its own process; its lines become results (as gpu.run)."""
    import subprocess

    from report import FAIL, Result

    lines = work / "rl.jsonl"
    lines.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("GEMMA4_SLIME_TREE", str(img.trees["slime"]))
    env.setdefault("GEMMA4_MEGATRON_TREE", str(img.trees["megatron"]))
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # colocated on one GPU, whatever the node has
    p = subprocess.run([sys.executable, str(HERE / "rl.py"), "--work", str(work), "--results", str(lines)],
                       env=env, capture_output=True, text=True)
    (work / "rl.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    n = 0
    if lines.exists():
        for line in lines.read_text().splitlines():
            d = json.loads(line)
            n += 1
            rep.add(Result(TIER, d["name"], d["component"], d["status"], d["detail"], d.get("pin", ""),
                           d.get("todo", ""), d.get("seconds", 0.0), d.get("figures", {})))
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-4:]) or "no output"
        rep.add(Result(TIER, "rl tier worker", "rl tier", FAIL, f"the worker exited {p.returncode} having "
                       f"reported {n} checks: {tail}", "", f"read {work / 'rl.log'}"))
    slime_steps(img, rep, work, gpus)


def slime_steps(img, rep, work: Path, gpus: int) -> None:
    """slime's train.py on the tiny checkpoints (slime_step.py), then what the MoE run says about
    routing replay."""
    import subprocess

    import slime_step
    from report import FAIL, PASS, SKIP, Result

    try:
        pin = img.manifest.upstream("slime").commit[:12]
    except Exception:  # noqa: BLE001 - a test's image may have no manifest; the pin is only reported
        pin = ""
    moe = None
    for kind in slime_step.KINDS:
        t0 = time.monotonic()
        name, src = f"slime train.py step {kind}", work / "ckpt" / kind
        if not (src / "model.safetensors").exists():
            p = subprocess.run([sys.executable, str(HERE / "ckpt.py"), str(src), kind], capture_output=True,
                               text=True)
            if p.returncode != 0:
                r = rep.add(Result(TIER, name, "tiny checkpoint", FAIL, f"ckpt.py exited {p.returncode}: "
                                   f"{p.stderr.strip()[-300:]}", "", "read the message"))
                moe = r if kind == "moe" else moe
                continue
        try:
            status, detail, figures, todo = slime_step.step(img.trees["slime"], img.trees["megatron"], src, work,
                                                            kind, gpus)
        except Exception as e:  # noqa: BLE001 - a step that raises has failed; say how
            status, detail, figures = FAIL, f"{type(e).__name__}: {e}", {}
            todo = f"read the message and {work / f'slime-{kind}'}"
        status = {"pass": PASS, "skip": SKIP}.get(status, FAIL)
        r = rep.add(Result(TIER, name, "slime", status, detail, pin, todo, round(time.monotonic() - t0, 1), figures))
        moe = r if kind == "moe" else moe
    if moe is None:
        return
    if moe.status == PASS:
        rep.add(Result(TIER, "routing replay (moe)", "slime", PASS,
                       "the MoE step ran with --use-rollout-routing-replay in effect (checked in the run script's "
                       "dry run): SGLang returned the routed experts of every token (slime's actor raises when a "
                       "rollout lacks them) and each MoE layer's router got its record (slime asserts the count), "
                       f"in both train steps; rollout/train gap with replay {moe.figures.get('gap0', float('nan')):.4f}",
                       pin, figures={"gap0": moe.figures.get("gap0")}))
    else:
        rep.add(Result(TIER, "routing replay (moe)", "slime", moe.status,
                       f"decided by the MoE step, which did not pass: {moe.detail[:300]}", pin,
                       moe.todo if moe.status == FAIL else ""))


def mean_abs(a, b) -> float:
    import torch

    return float(torch.cat([(x.double().cpu() - y.double().cpu()).abs() for x, y in zip(a, b)]).mean())


def arrived(before_gap: float, after_gap: float, moved: float, stale: float) -> tuple[bool, str]:
    """The update arrived: SGLang agrees with the trained model after the sync about as well as with
    the untrained one before (1.5 x + 0.01), and the step moved the model by twice that."""
    limit = 1.5 * before_gap + 0.01
    ok = after_gap <= limit and moved >= 2 * limit
    text = (f"mean |log p| SGLang vs Megatron: before the step {before_gap:.4f}, after the sync {after_gap:.4f} "
            f"(limit {limit:.4f}); the step moved Megatron's by {moved:.4f} (needs >= {2 * limit:.4f}); "
            f"SGLang after vs before {stale:.4f}")
    return ok, text


def logprobs(model, seqs, device, grad=False):
    """Our Megatron model's log p of every token after the first, one tensor per sequence."""
    import torch

    out = []
    with torch.set_grad_enabled(grad):
        for s in seqs:
            logits = model(input_ids=torch.tensor([s], device=device), position_ids=None, attention_mask=None)[0]
            lp = torch.log_softmax(logits.float(), -1)[:-1].gather(-1, torch.tensor(s[1:], device=device)[:, None])[:, 0]
            out.append(lp if grad else lp.detach())
    return out


def train_step(model, seqs, prompt_len: int, device, lr: float) -> float:
    """One Adam step of a policy-gradient loss on the sampled continuations (reward: the share of
    even token ids, normalised across the samples); returns the loss."""
    import torch

    gen = [s[prompt_len:] for s in seqs]
    reward = torch.tensor([sum(t % 2 == 0 for t in g) / max(len(g), 1) for g in gen], device=device)
    adv = (reward - reward.mean()) / (reward.std() + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lps = logprobs(model, seqs, device, grad=True)
    loss = -sum(adv[i] * lps[i][prompt_len - 1:].sum() for i in range(len(seqs))) / len(seqs)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def sync_payload(model, conf: dict, dtype=None) -> list:
    """Every parameter through the converter slime's weight sync uses: (HF name, tensor) pairs."""
    from slime_plugins.models.gemma4.config import read_settings
    from slime_plugins.models.gemma4.weights import Gemma4ToHF

    conv = Gemma4ToHF(read_settings(conf))
    named = []
    for pname, p in model.named_parameters():
        for n, t in conv.convert(pname, p.detach()):
            named.append((n, t.to(dtype) if dtype is not None else t))
    if conv.pending:
        raise RuntimeError(f"the converter kept experts back: {conv.pending}")
    return named


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--engine", choices=["server", "harness"], default="server",
                    help="harness: SGLang's model classes in this process stand in for its engine (no sampling: "
                         "random continuations), where sgl-kernel is missing (the GPU machine of this project)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    sys.path[:0] = [str(HERE), str(STACK / "tests" / "gemma4")]
    from gpu import Out, megatron

    out = Out(Path(a.results), TIER)
    import importlib.util

    import torch

    if a.engine == "harness":
        return harness_steps(a, out, work)
    missing = [m for m in ("sgl_kernel", "sglang") if importlib.util.find_spec(m) is None]
    if missing or not torch.cuda.is_available():
        why = f"{', '.join(missing)} not installed" if missing else "no CUDA device"
        for kind in a.kinds.split(","):
            out(f"colocated step {kind}", "SGLang engine + Megatron", "skip", f"{why}: SGLang's engine cannot run")
        return 0

    import ckpt
    import g4util

    backend = "te" if importlib.util.find_spec("transformer_engine") is not None else "local"
    g4util.init_single_rank()
    if torch.cuda.is_available():  # Transformer Engine's modules initialise under Megatron's CUDA RNG tracker
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(0)
    import sglang

    for kind in a.kinds.split(","):
        name = f"colocated step {kind}"
        t0 = time.monotonic()
        dest = work / "ckpt" / kind
        if not (dest / "model.safetensors").exists():
            ckpt.write(dest, kind)
        conf, state = ckpt.read(dest)
        engine = None
        try:
            engine = sglang.Engine(model_path=str(dest), attention_backend="triton", skip_tokenizer_init=True,
                                   dtype="bfloat16", mem_fraction_static=0.3, context_length=1024,
                                   cuda_graph_max_bs=8, random_seed=0, log_level="error")
            g = torch.Generator().manual_seed(11)
            prompts = [torch.randint(3, conf["vocab_size"], (24,), generator=g).tolist() for _ in range(4)]
            got = engine.generate(input_ids=prompts, sampling_params=dict(max_new_tokens=16, temperature=1.0, ignore_eos=True),
                                  return_logprob=True)
            seqs = [p + list(r["output_ids"]) for p, r in zip(prompts, got)]

            def score():  # SGLang's log p of every token of the sequences after the first
                res = engine.generate(input_ids=seqs, sampling_params=dict(max_new_tokens=1, temperature=0.0),
                                      return_logprob=True, logprob_start_len=0)
                return [torch.tensor([x[0] for x in r["meta_info"]["input_token_logprobs"][1:]]) for r in res]

            sgl_before = score()
            model = megatron(conf, state, torch.float32, backend, "cuda", "flash")
            before = logprobs(model, seqs, "cuda")
            loss = train_step(model, seqs, len(prompts[0]), "cuda", a.lr)
            after = logprobs(model, seqs, "cuda")
            named = sync_payload(model, conf, torch.bfloat16)
            engine.update_weights_from_tensor(named_tensors=named, flush_cache=True)
            sgl_after = score()

            before_gap = mean_abs(sgl_before, before)
            after_gap = mean_abs(sgl_after, after)
            moved = mean_abs(after, before)
            stale = mean_abs(sgl_after, sgl_before)
            ok, text = arrived(before_gap, after_gap, moved, stale)
            figures = dict(before_gap=before_gap, after_gap=after_gap, moved=moved, sglang_moved=stale,
                           loss=loss, tensors_sent=len(named), backend=backend, lr=a.lr)
            out(name, "SGLang engine + Megatron", "pass" if ok else "FAIL",
                f"rollout of {len(seqs)} x 16 tokens, one Adam step ({backend} spec), {len(named)} tensors synced "
                f"through Gemma4ToHF: {text}", figures=figures, seconds=time.monotonic() - t0,
                todo="" if ok else "the weights SGLang serves after the sync are not the trained ones: compare "
                "the converter's names with SGLang's load_weights (tests/sglang_gemma4/test_cross_engine.py)")
        except Exception as e:  # noqa: BLE001
            out(name, "SGLang engine + Megatron", "FAIL", f"{type(e).__name__}: {e}",
                todo=f"see {work}/rl.log")
        finally:
            if engine is not None:
                engine.shutdown()
    return 0


def harness_steps(a, out, work: Path) -> int:
    """The same step with SGLang's model classes (tests/sglang_gemma4/harness.py, Triton kernels
    compiled, other ops native) in place of the engine: no sampling, so the continuations are random
    tokens; the step, the sync payload and the rescoring are the engine run's."""
    import importlib.util

    import torch

    sys.path.insert(0, str(STACK / "tests" / "sglang_gemma4"))
    os.environ.setdefault("SGLANG_HARNESS_DEVICE", "cuda")
    import harness

    harness.setup_sglang()
    import ckpt
    import g4util
    from gap import token_logprobs
    from gpu import megatron
    from sglang.srt.configs.gemma4 import Gemma4TextConfig
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

    backend = "te" if importlib.util.find_spec("transformer_engine") is not None else "local"
    g4util.init_single_rank()
    for kind in a.kinds.split(","):
        t0 = time.monotonic()
        dest = work / "ckpt" / kind
        if not (dest / "model.safetensors").exists():
            ckpt.write(dest, kind)
        conf, state = ckpt.read(dest)
        g = torch.Generator().manual_seed(11)
        seqs = [torch.randint(3, conf["vocab_size"], (40,), generator=g).tolist() for _ in range(4)]
        sgl = harness.build_model(Gemma4ForCausalLM, Gemma4TextConfig(**conf), torch.bfloat16, state)

        def score():
            runner = harness.CpuModelRunner(sgl, kv_pool="swa", max_total_tokens=2048, context_len=1024)
            pre = runner.prefill(seqs)
            runner.release(pre.reqs)
            return [token_logprobs(lg.float(), s).cpu() for s, lg in zip(seqs, pre.logits)]

        sgl_before = score()
        model = megatron(conf, state, torch.float32, backend, "cuda", "flash")
        before = logprobs(model, seqs, "cuda")
        loss = train_step(model, seqs, 24, "cuda", a.lr)
        after = logprobs(model, seqs, "cuda")
        named = sync_payload(model, conf, torch.bfloat16)
        sgl.load_weights(named)
        sgl_after = score()
        before_gap, after_gap = mean_abs(sgl_before, before), mean_abs(sgl_after, after)
        moved, stale = mean_abs(after, before), mean_abs(sgl_after, sgl_before)
        ok, text = arrived(before_gap, after_gap, moved, stale)
        out(f"colocated step {kind} (SGLang model classes)", "SGLang Gemma4 + Megatron", "pass" if ok else "FAIL",
            f"one Adam step ({backend} spec), {len(named)} tensors through Gemma4ToHF into SGLang's model "
            f"classes (bf16): {text}", figures=dict(before_gap=before_gap, after_gap=after_gap, moved=moved,
                                                      sglang_moved=stale, loss=loss, backend=backend, lr=a.lr),
            seconds=time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
