"""SGLang v0.5.9's Gemma4 at tensor parallel size 2 on the CPU, against transformers.

Two processes (tp_worker.py), one rank each, set up SGLang's parallel state over gloo (a file
rendezvous; gloo on the loopback interface) as ModelRunner does on a CPU without sgl_kernel: every
all-reduce and all-gather (embedding, o_proj, MLP down_proj, FusedMoE, the LM head's gather) is
SGLang's GroupCoordinator taking its CPU branch, torch.distributed over the gloo group.  Each
rank builds the model, loads transformers' whole checkpoint through the model's load_weights
(the weight loaders take the rank's shard), and runs a batched prefill of two sequences longer
than the window (5) and decode steps past it, on the hybrid sliding-window pool with eviction.

The tiny dense config has 4 query heads, 2 sliding KV heads (one per rank) and one global KV head
with attention_k_eq_v, which TP 2 must replicate (the 31B's 4 global KV heads at TP 8); in the
MoE config every layer has 2 KV heads (one per rank) and the experts are split by FusedMoE's TP.
Checked: each rank's attention layers and KV pools hold that rank's heads, and what they hold
after the prefill is transformers' cache for those heads; rank 0's logits (every prefill
position, every decode step) are within 1e-5 of transformers' largest logit; rank 1's are the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gemma4"))

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sgltree  # noqa: E402

BUILT = sgltree.build_or_skip()

import g4util  # noqa: E402

WORKER = HERE / "tp_worker.py"
TP = 2
TOL = 1e-5
VOCAB = 192  # a multiple of 64, as in test_sglang_gemma4.py
CONFIGS = {k: dict(g4util.CONFIGS[k], vocab_size=VOCAB) for k in ("dense", "moe")}
PROMPTS = [[3, 5, 7, 9, 11, 13, 2, 4, 6, 8, 10, 12, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
DECODE = [[30, 31], [40, 50], [41, 51], [42, 52], [43, 53]]  # both sequences go on past the window
TIMEOUT_S = 300


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def hf_reference(kind):
    """transformers' model, its logits over each whole sequence (prompt + decoded tokens) and its
    cache after each prompt alone."""
    hf = g4util.hf_model(CONFIGS[kind], seed=0)
    full = [p + [step[i] for step in DECODE] for i, p in enumerate(PROMPTS)]
    with torch.no_grad():
        logits = [hf(torch.tensor([s])).logits[0] for s in full]
        caches = []
        for p in PROMPTS:
            out = hf(torch.tensor([p]), use_cache=True)
            cache = out.cache if "cache" in out else out.past_key_values  # transformers 5 renamed it
            caches.append([(layer.keys[0], layer.values[0]) for layer in cache.layers])  # [heads, T, d]
    return hf, logits, caches


def run_ranks(tmp_path, cases):
    cases_path = tmp_path / "cases.pt"
    torch.save(cases, cases_path)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", SGLANG_HARNESS_DEVICE="cpu")  # a CPU test wherever it runs
    procs, logs = [], []
    for rank in range(TP):
        log = open(tmp_path / f"rank{rank}.log", "w+")
        cmd = [sys.executable, str(WORKER), str(rank), str(TP), init, str(BUILT.path),
               str(cases_path), str(tmp_path / f"result{rank}.pt")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline, timed_out = time.monotonic() + TIMEOUT_S, False
    try:
        # A rank that fails leaves the other waiting in a collective: stop it.
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results, failures = [], []
    for rank, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        text = log.read()
        log.close()
        path = tmp_path / f"result{rank}.pt"
        stopped = f"no result (stopped{f' after {TIMEOUT_S} s' if timed_out else ''})"
        res = torch.load(path, weights_only=True) if path.exists() else {"error": stopped}
        results.append(res)
        if "error" in res or p.returncode != 0:
            msg = f"rank {rank} (exit {p.returncode}): {res.get('error')}\n--- its output:\n{text[-3000:]}"
            failures.append((res.get("failed_at", float("inf")), msg))
    # The rank that failed first comes first (the others fail in a collective after it, or are stopped).
    assert not failures, "\n\n".join(msg for _, msg in sorted(failures))
    return results


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    """Both configs through one pair of ranks (one start-up of SGLang per rank)."""
    refs, cases = {}, {}
    for kind in CONFIGS:
        hf, logits, caches = hf_reference(kind)
        refs[kind] = (logits, caches)
        cases[kind] = dict(config=g4util.config_json(CONFIGS[kind]), state=hf.state_dict(),
                           prompts=PROMPTS, decode=DECODE)
    start = time.monotonic()
    results = run_ranks(tmp_path_factory.mktemp("tp2"), cases)
    print(f"TP={TP} ranks ran both configs in {time.monotonic() - start:.1f} s")
    return refs, [r["cases"] for r in results]


def rank_heads(total: int, rank: int):
    """The KV heads rank `rank` holds of `total`, as QKVParallelLinear shards them: split when
    total >= TP, else each head replicated over TP // total ranks."""
    per = max(1, total // TP)
    replicas = max(1, TP // total)
    start = (rank // replicas) * per
    return slice(start, start + per)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_each_rank_holds_its_kv_heads(tp_run, kind):
    (_, caches), results = tp_run[0][kind], tp_run[1]
    totals = [keys.shape[0] for keys, _ in caches[0]]
    if kind == "dense":
        assert totals == [2, 1, 2, 1]  # the global layers' single K=V head: replicated at TP 2
    for layer, total in enumerate(totals):  # layer by layer: the first failure is the cause
        per = max(1, total // TP)
        for rank, res in enumerate(results):
            res = res[kind]
            assert res["kv_pool_kind"] == "swa"
            assert res["heads"][layer] == (CONFIGS[kind]["num_attention_heads"] // TP, per, per), (rank, layer)
            assert res["pool_heads"][layer] == (per, per), (rank, layer)
            heads = rank_heads(total, rank)
            for seq, (hf_cache, keys, values) in enumerate(zip(caches, *res["kv"][layer])):
                want_k, want_v = (t[heads].transpose(0, 1) for t in hf_cache[layer])  # [T, heads, d]
                assert keys.shape == want_k.shape and values.shape == want_v.shape, (rank, layer, seq)
                assert rel(keys, want_k) < TOL, ("K", "rank", rank, "layer", layer, "seq", seq)
                assert rel(values, want_v) < TOL, ("V", "rank", rank, "layer", layer, "seq", seq)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_logits_match_transformers(tp_run, kind):
    (ref, _), results = tp_run[0][kind], tp_run[1]
    got = results[0][kind]
    for seq, (prompt, logits) in enumerate(zip(PROMPTS, got["prefill"])):
        assert logits.shape == (len(prompt), VOCAB)
        assert rel(logits, ref[seq][: len(prompt)]) < TOL, ("prefill", seq)
    for step, logits in enumerate(got["decode"]):
        for seq, prompt in enumerate(PROMPTS):
            assert rel(logits[seq], ref[seq][len(prompt) + step]) < TOL, ("decode", step, seq)
    other = results[1][kind]  # the LM head's all-gather gives every rank the same logits
    assert all(torch.equal(a, b) for a, b in zip(got["prefill"], other["prefill"]))
    assert all(torch.equal(a, b) for a, b in zip(got["decode"], other["decode"]))
