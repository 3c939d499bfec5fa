"""Context parallelism of Gemma4's attention on 2 or 4 GPUs (NCCL), against CP = 1 (run by hand).

    python3 tests/gemma4/cp_gpu_check.py CP [--json out.jsonl] [--one-gpu]

Every rank holds chunks r and 2cp-1-r of each packed sequence (Megatron's layout):
1. one global layer (32:4 heads of 512) and one sliding layer (32:16 of 256, window 1024)
   of attention alone, bf16: output and q/k/v gradients of this rank's tokens against
   the same layer run on the whole sequences on one GPU (CP = 1).  The sliding layer runs
   twice: receiving only the window before each chunk (one all-to-all, what the model
   runs) and with every rank's tails all-gathered;
2. a two-layer (sliding, global) bf16 Megatron model: logits and every parameter
   gradient (summed over CP ranks) against the same model with CP switched off;
3. peak memory of a 64k-token global layer, forward + backward, per rank, against CP = 1.
Exit status 1 when a difference exceeds its bound (printed).

--one-gpu: every rank on the first GPU, talking through Gloo instead of NCCL (the kernels,
layouts and autograd are the same; only the transport differs).  For machines with one GPU;
the peak memory per rank is still each process's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import g4util  # noqa: E402

BOUND_OUT, BOUND_GRAD = 1e-2, 2e-2  # relative max difference, bf16


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def local_index(lengths, cp, rank):
    out, start = [], 0
    for n in lengths:
        c = n // (2 * cp)
        out += [torch.arange(start + rank * c, start + (rank + 1) * c),
                torch.arange(start + (2 * cp - 1 - rank) * c, start + (2 * cp - rank) * c)]
        start += n
    return torch.cat(out).cuda()


def op_check(cp, rank, group, H, G, D, window, lengths, exchange=False):
    from slime_plugins.models.gemma4 import attention as A

    T = sum(lengths)
    gen = torch.Generator(device="cuda").manual_seed(11)
    def r(*s):
        return torch.randn(*s, device="cuda", generator=gen).bfloat16()
    q, k, v, do = r(T, H, D) * D**-0.25, r(T, G, D) * D**-0.25, r(T, G, D), r(T, H, D)
    full = A.build_layout(lengths, 1, 0, window, "cuda")
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, _ = A.attend(*xs, full.q_lo, full.q_hi, 1.0)
    ref.backward(do)
    idx = local_index(lengths, cp, rank)
    if exchange:  # as the model's sliding layers: only the rows this rank's keys read
        lay = A.exchange_needed_rows([A.build_layout(lengths, cp, r, window, "cuda") for r in range(cp)], rank)
        received = sum(lay.exchange.recv_counts)
    else:
        lay = A.build_layout(lengths, cp, rank, window, "cuda")
        received = int(lay.tail_index.numel()) * (cp - 1)
    ls = [t[idx].clone().requires_grad_() for t in (q, k, v)]
    out, _ = A.attend(ls[0], A.keys_for(ls[1], lay, group), A.keys_for(ls[2], lay, group), lay.q_lo, lay.q_hi, 1.0)
    out.backward(do[idx])
    return dict(out=rel(out, ref[idx]), dq=rel(ls[0].grad, xs[0].grad[idx]), dk=rel(ls[1].grad, xs[1].grad[idx]),
                dv=rel(ls[2].grad, xs[2].grad[idx]), rows_received=received, tokens_per_rank=int(idx.numel()))


def peak_check(cp, rank, group, S=65536):
    from slime_plugins.models.gemma4 import attention as A

    H, G, D = 32, 4, 512
    lay = A.build_layout([S], cp, rank, None, "cuda")
    n = S // cp
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    q = torch.randn(n, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(n, G, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(n, G, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kk = A.keys_for(k, lay, group) if cp > 1 else k
    vv = A.keys_for(v, lay, group) if cp > 1 else v
    o, _ = A.attend(q * D**-0.25, kk * D**-0.25, vv, lay.q_lo, lay.q_hi, 1.0)
    o.backward(torch.ones_like(o))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def model_check(cp, rank, group):
    from slime_plugins.models.gemma4 import modules
    from megatron.core.packed_seq_params import PackedSeqParams

    cfg = dict(g4util.DENSE, vocab_size=512, hidden_size=1024, intermediate_size=2048, num_attention_heads=8,
               num_key_value_heads=4, head_dim=256, global_head_dim=512, num_global_key_value_heads=2,
               sliding_window=128, num_hidden_layers=2, layer_types=[g4util.SLIDING, g4util.FULL])
    torch.manual_seed(12)
    model, settings = g4util.megatron_model(cfg, dtype=torch.bfloat16, context_parallel_size=cp)
    model = model.cuda()
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p, 0, group=group)
    lengths = [2048, 1024, 512]
    ids = torch.randint(0, settings.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(13)).cuda()
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")

    def packed():
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                               cu_seqlens_kv_padded=cu, max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))

    real = modules._cp_group_info
    modules._cp_group_info = lambda: (1, 0)
    try:
        ref = model(input_ids=ids, position_ids=None, attention_mask=None, packed_seq_params=packed())
        (ref.float().square().sum() * 1e-4).backward()
    finally:
        modules._cp_group_info = real
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    idx = local_index(lengths, cp, rank)
    ours = model(input_ids=ids[:, idx], position_ids=None, attention_mask=None, packed_seq_params=packed())
    (ours.float().square().sum() * 1e-4).backward()
    worst = 0.0
    for n, p in model.named_parameters():
        g = p.grad.float()
        dist.all_reduce(g, group=group)
        worst = max(worst, rel(g, ref_grads[n]))
    return dict(logits=rel(ours[0], ref[0, idx]), grads=worst)


def worker(rank, cp, rendezvous, path, one_gpu=False):
    torch.cuda.set_device(0 if one_gpu else rank)
    dist.init_process_group("gloo" if one_gpu else "nccl", init_method=rendezvous, rank=rank, world_size=cp)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(context_parallel_size=cp)
    group = parallel_state.get_context_parallel_group()
    res = {}
    try:
        lengths = [8192, 2048, 6144]
        res["global"] = op_check(cp, rank, group, 32, 4, 512, None, lengths)
        res["sliding"] = op_check(cp, rank, group, 32, 16, 256, 1024, lengths, exchange=True)
        res["sliding all-gather"] = op_check(cp, rank, group, 32, 16, 256, 1024, lengths)
        res["model"] = model_check(cp, rank, group)
        res["peak_gib_cp"] = peak_check(cp, rank, group)
        if rank == 0:
            res["peak_gib_cp1"] = peak_check(1, 0, None)
    except Exception:  # noqa: BLE001
        res["error"] = traceback.format_exc()
    Path(f"{path}.{rank}").write_text(json.dumps(res))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cp", type=int, choices=[2, 4])
    ap.add_argument("--json", help="append every rank's results to this JSON-lines file")
    ap.add_argument("--one-gpu", action="store_true", help="all ranks on the first GPU, through Gloo")
    args = ap.parse_args()
    cp, out_json = args.cp, args.json
    if not args.one_gpu and torch.cuda.device_count() < cp:
        sys.exit(f"CP={cp} needs {cp} GPUs ({torch.cuda.device_count()} here); --one-gpu runs every rank on one")
    tmp = tempfile.mkdtemp(prefix="gemma4-cp-")
    mp.spawn(worker, args=(cp, f"file://{tmp}/rendezvous", f"{tmp}/result", args.one_gpu), nprocs=cp, join=True)
    ok = True
    rows = []
    for rank in range(cp):
        r = json.loads(Path(f"{tmp}/result.{rank}").read_text())
        if "error" in r:
            print(f"rank {rank}: {r['error']}")
            ok = False
            continue
        for layer in ("global", "sliding", "sliding all-gather"):
            x = r[layer]
            good = x["out"] < BOUND_OUT and max(x["dq"], x["dk"], x["dv"]) < BOUND_GRAD
            ok &= good
            print(f"cp={cp} rank {rank} {layer:18} out {x['out']:.2e} dq {x['dq']:.2e} dk {x['dk']:.2e} dv {x['dv']:.2e} "
                  f"(tokens {x['tokens_per_rank']}, rows received {x['rows_received']}) {'ok' if good else 'FAIL'}")
        m = r["model"]
        good = m["logits"] < BOUND_OUT and m["grads"] < BOUND_GRAD
        ok &= good
        print(f"cp={cp} rank {rank} model   logits {m['logits']:.2e} grads {m['grads']:.2e} {'ok' if good else 'FAIL'}")
        print(f"cp={cp} rank {rank} peak of a 64k global layer: {r['peak_gib_cp']:.2f} GiB"
              + (f" (CP=1: {r['peak_gib_cp1']:.2f} GiB)" if "peak_gib_cp1" in r else ""))
        if "peak_gib_cp1" in r and not r["peak_gib_cp"] < r["peak_gib_cp1"]:
            ok = False
            print("FAIL: peak memory did not fall with CP")
        rows.append(dict(r, cp=cp, rank=rank, device=torch.cuda.get_device_name(),
                         transport="gloo, every rank on one GPU" if args.one_gpu else "nccl, one GPU per rank"))
    if out_json:
        with open(out_json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print("all within bounds" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
