"""The gpu tier (one GPU): a tiny random Gemma4 checkpoint, dense and MoE (ckpt.py), and on it

* our Megatron model with the `te` spec against the `local` spec, both bf16 (gap.py's bound, the
  fp32 `local` model as the reference);
* SGLang's server (`python3 -m sglang.launch_server`, Triton attention backend, loopback only)
  loads the checkpoint and answers a request; the log-probabilities it returns for the prompt
  against our Megatron model's: the rollout / training gap, held under gap.BOUND;
* SGLang's Gemma4 model classes in this process (tests/sglang_gemma4/harness.py: SGLang's Triton
  kernels compiled for the GPU, its other ops on their native paths) against our Megatron model:
  the same gap without the server.

The Megatron side of the gaps is the `te` model where Transformer Engine is installed, else the
`local` one (the result says which). What this machine lacks is reported as skipped, by name.

The suite runs this file as a separate process (`run`), so that a crash in a kernel fails the
checks it had not reported yet instead of the whole suite. By hand:

    python3 gpu.py --work DIR --results DIR/gpu.jsonl [--device cpu --smoke]

(--device cpu --smoke: short sequences, the reference attention, SGLang's kernels in Triton's
interpreter: a dry run of this file's logic on a machine without a GPU.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
STACK = HERE.parents[1]
TIER = "gpu"
KINDS = ("dense", "moe")


# ------------------------------------------------------------------ the suite's side


def run(img, rep, work: Path) -> None:
    """Run the worker in its own process and turn its lines into results."""
    from report import FAIL, Result

    work.mkdir(parents=True, exist_ok=True)
    lines = work / "gpu.jsonl"
    lines.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("SGLANG_TREE", str(img.trees["sglang"] / "python"))
    env.setdefault("GEMMA4_SLIME_TREE", str(img.trees["slime"]))
    env.setdefault("GEMMA4_MEGATRON_TREE", str(img.trees["megatron"]))
    env["IMAGE_TEST_TE_PIN"] = img.pins.get("TE_VERSION", "")
    cmd = [sys.executable, str(HERE / "gpu.py"), "--work", str(work), "--results", str(lines)]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (work / "gpu.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    seen = set()
    if lines.exists():
        for line in lines.read_text().splitlines():
            d = json.loads(line)
            seen.add(d["name"])
            rep.add(Result(TIER, d["name"], d["component"], d["status"], d["detail"], d.get("pin", ""),
                           d.get("todo", ""), d.get("seconds", 0.0), d.get("figures", {})))
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-4:]) or "no output"
        rep.add(Result(TIER, "gpu tier worker", "gpu tier", FAIL,
                       f"the worker exited {p.returncode} after {time.monotonic() - t0:.0f} s having reported "
                       f"{len(seen)} checks: {tail}", "",
                       f"read {work / 'gpu.log'}; the check after the last one reported is where it stopped"))


# ------------------------------------------------------------------ the worker


class Out:
    def __init__(self, path: Path, tier: str = TIER):
        self.tier = tier
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a")

    def __call__(self, name, component, status, detail, pin="", todo="", figures=None, seconds=0.0):
        d = dict(name=name, component=component, status=status, detail=detail, pin=pin, todo=todo,
                 figures=figures or {}, seconds=round(seconds, 1))
        self.f.write(json.dumps(d) + "\n")
        self.f.flush()
        print(f"[{self.tier}] {status} {name}: {detail}", flush=True)


def seqs(vocab: int, smoke: bool) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in ((20, 13) if smoke else (160, 97))]


def megatron(conf: dict, state: dict, dtype, backend: str, device: str, attention: str):
    """Our Megatron Gemma4 (slime_plugins) with the given spec, loaded from the HF tensors."""
    import g4util
    from slime_plugins.models.gemma4.config import read_settings
    from slime_plugins.models.gemma4.model import Gemma4Model, build_transformer_config

    settings = read_settings(conf)
    config = build_transformer_config(settings, use_cpu_initialization=True, params_dtype=dtype,
                                      moe_token_dispatcher_type="allgather", gemma4_attention=attention)
    model = Gemma4Model(config, vocab_size=settings.vocab_size, max_sequence_length=1024,
                        share_embeddings_and_output_weights=settings.tie_word_embeddings, backend=backend).eval()
    g4util.load_from_hf(model, settings, {k: v.to(dtype) for k, v in state.items()})
    return model.to(device)


def megatron_logprobs(model, ss, device):
    import torch
    from gap import token_logprobs

    out = []
    with torch.no_grad():
        for s in ss:
            logits = model(input_ids=torch.tensor([s], device=device), position_ids=None, attention_mask=None)[0]
            out.append(token_logprobs(logits.float(), s).cpu())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 30.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


def serve(ckpt: Path, log: Path, ss: list[list[int]], max_new: int = 8, wait_s: float = 900.0):
    """Start SGLang's server on the checkpoint (Triton backend, loopback), send one request with the
    sequences, stop it. Returns (responses, seconds to ready)."""
    import signal

    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(ckpt), "--host", "127.0.0.1",
           "--port", str(port), "--attention-backend", "triton", "--skip-tokenizer-init", "--dtype", "bfloat16",
           "--mem-fraction-static", "0.3", "--context-length", "1024", "--cuda-graph-max-bs", "4",
           "--tp-size", "1"]
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                tail = " | ".join(log.read_text().strip().splitlines()[-5:])
                raise RuntimeError(f"the server exited {proc.returncode} before it was ready: {tail}")
            if time.monotonic() - t0 > wait_s:
                raise RuntimeError(f"the server was not ready after {wait_s:.0f} s (log {log})")
            try:
                if http(f"http://127.0.0.1:{port}/health", timeout=5)[0] == 200:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(2)
        ready = time.monotonic() - t0
        _, got = http(f"http://127.0.0.1:{port}/generate", dict(
            input_ids=ss, sampling_params=dict(max_new_tokens=max_new, temperature=0.0, ignore_eos=True),
            return_logprob=True, logprob_start_len=0), timeout=300)
        return got, ready
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the session this function started, by its id
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--controls", action="store_true",
                    help="also measure the gap with one tensor scaled on the SGLang side (work/controls.jsonl)")
    a = ap.parse_args(argv)
    work, out = Path(a.work), Out(Path(a.results))
    work.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in a.kinds.split(",") if k]
    dev = a.device
    os.environ["SGLANG_HARNESS_DEVICE"] = dev
    if dev == "cuda":
        os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
    else:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything defines a Triton kernel
    sys.path[:0] = [str(HERE), str(STACK / "tests" / "gemma4"), str(STACK / "tests" / "sglang_gemma4")]
    te_pin = os.environ.get("IMAGE_TEST_TE_PIN", "")
    controls = [("model.layers.1.post_attention_layernorm.weight", 1.05),
                ("model.layers.1.post_attention_layernorm.weight", 1.5),
                ("model.layers.{last}.self_attn.k_norm.weight", 1.2)] if a.controls else []

    import torch

    import ckpt
    import gap

    # 1. the checkpoints
    ckpts = {}
    for kind in kinds:
        t0 = time.monotonic()
        dest = ckpt.write(work / "ckpt" / kind, kind)
        conf, state = ckpt.read(dest)
        ckpts[kind] = (dest, conf, state)
        detail = f"{dest}: {len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.1f} M parameters"
        try:
            from transformers import Gemma4ForCausalLM, Gemma4TextConfig  # transformers >= 5.5

            keep = {k: v for k, v in conf.items() if k not in ("model_type", "architectures", "torch_dtype")}
            res = Gemma4ForCausalLM(Gemma4TextConfig(**keep)).load_state_dict(state, strict=False)
            extra = [k for k in res.missing_keys if k != "lm_head.weight"] + list(res.unexpected_keys)
            if extra:
                out(f"checkpoint {kind}", "checkpoint generator", "FAIL", f"{detail}; transformers' Gemma4 "
                    f"disagrees: {extra[:5]}", todo="fix tests/image/ckpt.py shapes()")
                continue
            detail += "; loads into transformers' Gemma4ForCausalLM with every tensor matched"
        except ImportError:
            detail += "; transformers here has no Gemma4 to compare with (the repository's tests do)"
        out(f"checkpoint {kind}", "checkpoint generator", "pass", detail, seconds=time.monotonic() - t0)

    if dev == "cuda" and not torch.cuda.is_available():
        for kind in kinds:
            out(f"te vs local {kind}", "Megatron-LM te spec", "skip", "no CUDA device visible to torch")
        return 0

    # 2. SGLang's model classes in this process (before anything imports sglang); whether the real
    # sgl-kernel is installed is read first (the harness puts stand-ins where it is missing)
    import importlib.util

    has_sgl_kernel = importlib.util.find_spec("sgl_kernel") is not None
    sgl_why = ""
    try:
        import harness

        harness.setup_sglang()
    except Exception as e:  # noqa: BLE001 - reported by name below
        sgl_why = f"SGLang's model classes cannot be set up here: {type(e).__name__}: {e}"
    import g4util

    g4util.init_single_rank()
    if torch.cuda.is_available():  # Transformer Engine's modules initialise under Megatron's CUDA RNG tracker
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(0)
    attention = "reference" if dev == "cpu" else "flash"
    te_why = "" if importlib.util.find_spec("transformer_engine") is not None else \
        "Transformer Engine is not installed here (no module transformer_engine)"

    for kind in kinds:
        dest, conf, state = ckpts[kind]
        ss = seqs(conf["vocab_size"], a.smoke)
        t0 = time.monotonic()
        ref = megatron_logprobs(megatron(conf, state, torch.float32, "local", dev, attention), ss, dev)
        local = megatron_logprobs(megatron(conf, state, torch.bfloat16, "local", dev, attention), ss, dev)
        train, train_name = local, "local"
        if te_why:
            out(f"te vs local {kind}", "Megatron-LM te spec", "skip", te_why, pin=te_pin)
        else:
            try:
                te = megatron_logprobs(megatron(conf, state, torch.bfloat16, "te", dev, attention), ss, dev)
                rec = gap.record(te, local, ref)
                ok, text = gap.verdict(rec)
                out(f"te vs local {kind}", "Megatron-LM te spec", "pass" if ok else "FAIL",
                    f"te against local, bf16: {text}", pin=te_pin, figures=rec, seconds=time.monotonic() - t0,
                    todo="" if ok else "the te spec computes another function than the local one: compare "
                    "the two specs' modules (slime_plugins/models/gemma4/spec.py) layer by layer")
                train, train_name = te, "te"
            except Exception as e:  # noqa: BLE001
                out(f"te vs local {kind}", "Megatron-LM te spec", "FAIL", f"{type(e).__name__}: {e}", pin=te_pin,
                    todo="the te Gemma4 spec does not build or run with this Transformer Engine: see the "
                    "exception; slime_plugins/models/gemma4/spec.py chooses its modules")

        # 3. SGLang's model classes, Triton kernels
        name = f"rollout/train gap, SGLang model classes, {kind}"
        if sgl_why:
            out(name, "SGLang Gemma4", "skip", sgl_why)
        else:
            try:
                from sglang.srt.configs.gemma4 import Gemma4TextConfig as SglConfig
                from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM as SglModel

                t1 = time.monotonic()
                # On the CPU, Triton's interpreter gets bf16 dot products wrong (README): fp32 there,
                # held against the fp32 reference at 1e-4 instead of the bf16 bound.
                fp32 = dev == "cpu"
                sgl = harness.build_model(SglModel, SglConfig(**conf), torch.float32 if fp32 else torch.bfloat16, state)
                runner = harness.CpuModelRunner(sgl, kv_pool="swa", max_total_tokens=2048, context_len=1024)
                pre = runner.prefill(ss)
                roll = [gap.token_logprobs(lg.float(), s).cpu() for s, lg in zip(ss, pre.logits)]
                runner.release(pre.reqs)
                if fp32:
                    rec = gap.record(roll, ref, ref)
                    ok = rec["rollout_vs_train_max"] < 1e-4
                    text = f"fp32 (CPU): max |diff| {rec['rollout_vs_train_max']:.2e} against the fp32 reference, tolerance 1e-4"
                    train_name = "local fp32"
                else:
                    rec = gap.record(roll, train, ref)
                    ok, text = gap.verdict(rec)
                out(name, "SGLang Gemma4", "pass" if ok else "FAIL",
                    f"SGLang model classes (Triton attention) vs Megatron {train_name}: {text}", figures=rec,
                    seconds=time.monotonic() - t1,
                    todo="" if ok else "rollout and training compute different functions: "
                    "tests/sglang_gemma4/gpu_check.py and the CPU contract tests locate it")
                del sgl, runner
                for target, factor in controls:  # a wrong function on purpose: how far the gap moves
                    bad = dict(state)
                    key = target.format(last=len(conf["layer_types"]) - 1)
                    bad[key] = bad[key] * factor
                    m = harness.build_model(SglModel, SglConfig(**conf), torch.bfloat16, bad)
                    r2 = harness.CpuModelRunner(m, kv_pool="swa", max_total_tokens=2048, context_len=1024)
                    p2 = r2.prefill(ss)
                    wrong = [gap.token_logprobs(lg.float(), s).cpu() for s, lg in zip(ss, p2.logits)]
                    r2.release(p2.reqs)
                    rc = gap.record(wrong, train, ref)
                    okc, textc = gap.verdict(rc)
                    line = dict(check="negative_control", kind=kind, tensor=key, factor=factor, caught=not okc, **rc)
                    with open(work / "controls.jsonl", "a") as f:
                        f.write(json.dumps(line) + "\n")
                    print(f"[gpu] control {kind}: {key} x {factor}: {textc}", flush=True)
                    del m, r2
            except Exception as e:  # noqa: BLE001
                out(name, "SGLang Gemma4", "FAIL", f"{type(e).__name__}: {e}",
                    todo="SGLang's Gemma4 model classes fail on this GPU: see the exception")

        # 4. the server
        name = f"SGLang server answers, {kind}"
        srv_why = "" if has_sgl_kernel else "sgl-kernel is not installed here: SGLang's server cannot start"
        if dev != "cuda":
            srv_why = srv_why or "the server needs a GPU"
        if srv_why:
            out(name, "SGLang server", "skip", srv_why)
            out(f"rollout/train gap, SGLang server, {kind}", "SGLang server", "skip", srv_why)
            continue
        try:
            t1 = time.monotonic()
            got, ready = serve(dest, work / f"sglang-server-{kind}.log", ss)
            outs = [len(r.get("output_ids") or []) for r in got]
            ok = all(n == 8 for n in outs)
            out(name, "SGLang server", "pass" if ok else "FAIL",
                f"ready in {ready:.0f} s; one request of {len(ss)} prompts answered with {outs} new tokens "
                f"(Triton backend, {dest})", seconds=time.monotonic() - t1,
                todo="" if ok else f"the server answered without the tokens asked for: {work}/sglang-server-{kind}.log")
            roll = []
            for s, r in zip(ss, got):
                pairs = r["meta_info"]["input_token_logprobs"]
                ids = [p[1] for p in pairs]
                if ids != s:
                    raise RuntimeError(f"the server's prompt tokens differ from the request's ({ids[:5]}...)")
                roll.append(torch.tensor([p[0] for p in pairs[1:]], dtype=torch.float64))
            rec = gap.record(roll, train, ref)
            ok, text = gap.verdict(rec)
            out(f"rollout/train gap, SGLang server, {kind}", "SGLang server", "pass" if ok else "FAIL",
                f"server vs Megatron {train_name}: {text}", figures=rec,
                todo="" if ok else "the served model computes another function than training's: run the "
                "gap on SGLang's model classes (the row above) to tell the server's path from the model")
        except Exception as e:  # noqa: BLE001
            out(name, "SGLang server", "FAIL", f"{type(e).__name__}: {e}",
                todo=f"see {work}/sglang-server-{kind}.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
