"""One rank of SGLang's Gemma4 under tensor parallelism on the CPU (run by test_tensor_parallel.py).

    python tp_worker.py RANK WORLD INIT_METHOD TREE CASES.pt RESULT.pt

Sets up SGLang's parallel state as rank RANK of WORLD (gloo, through harness.setup_sglang), then
for every case in CASES.pt (a Gemma4 config.json and transformers' full state dict) builds the
model, loads the whole checkpoint through the model's load_weights (each weight loader takes this
rank's shard), prefills the prompts in one batch on the hybrid sliding-window pool with eviction,
and decodes the given tokens.  RESULT.pt gets, per case: the logits of every prefill position and
of every decode step, this rank's attention head counts, and what this rank's KV pools hold right
after the prefill (K and V of every layer at the positions transformers' cache keeps).  On an
error RESULT.pt gets {"error": traceback, "failed_at": time} and the exit status is 1.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def kv_after_prefill(runner, reqs, window: int):
    """{layer: (keys, values)}, one [tokens, heads, head_dim] tensor per request: every token of a
    full-attention layer, the last window - 1 (what a sliding layer's cache keeps) of a sliding one."""
    pool = runner.token_to_kv_pool
    out = {}
    for layer_id, layer in runner.layers.items():
        sliding = layer.sliding_window_size is not None and layer.sliding_window_size > -1
        keys, values = [], []
        for r in reqs:
            locs = r.kv_locs
            if sliding:
                locs = locs[-(window - 1):]
                if runner.kv_pool_kind == "swa":
                    locs = pool.translate_loc_from_full_to_swa(locs).long()
            keys.append(pool.get_key_buffer(layer_id)[locs].clone())
            values.append(pool.get_value_buffer(layer_id)[locs].clone())
        out[layer_id] = (keys, values)
    return out


def run_case(case):
    import torch
    from sglang.srt.configs.gemma4 import Gemma4TextConfig
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM

    conf = Gemma4TextConfig(**case["config"])
    model = harness.build_model(Gemma4ForCausalLM, conf, torch.float32, case["state"])
    runner = harness.CpuModelRunner(model, kv_pool="swa", evict_swa=True)
    pool = runner.token_to_kv_pool
    res = {
        "heads": {i: (l.tp_q_head_num, l.tp_k_head_num, l.tp_v_head_num) for i, l in runner.layers.items()},
        "pool_heads": {i: (pool.get_key_buffer(i).shape[1], pool.get_value_buffer(i).shape[1]) for i in runner.layers},
        "kv_pool_kind": runner.kv_pool_kind,
    }
    out = runner.prefill(case["prompts"])
    res["prefill"] = [x.clone() for x in out.logits]
    res["kv"] = kv_after_prefill(runner, out.reqs, conf.sliding_window)
    res["decode"] = []
    for tokens in case["decode"]:
        res["decode"].append(runner.decode_step(out.reqs, tokens).logits.clone())
    runner.release(out.reqs)
    return res


def main(rank: int, world: int, init_method: str, tree: str, cases_path: str, result_path: str) -> int:
    try:
        harness.setup_sglang(tree, tp_size=world, tp_rank=rank, dist_init_method=init_method)
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        cases = torch.load(cases_path, weights_only=True)
        result = {"rank": rank, "cases": {name: run_case(case) for name, case in cases.items()}}
        dist.barrier()
        torch.save(result, result_path)
        return 0
    except BaseException:
        import torch

        torch.save({"rank": rank, "error": traceback.format_exc(), "failed_at": time.time()}, result_path)
        return 1


if __name__ == "__main__":
    rank, world, init_method, tree, cases_path, result_path = sys.argv[1:]
    code = main(int(rank), int(world), init_method, tree, cases_path, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip gloo / Triton teardown at exit
