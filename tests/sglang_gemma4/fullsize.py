"""Gemma4 at full size on one GPU through SGLang's server (TP 1, dummy weights): weight memory, the
KV pools of the hybrid SWA cache (full-attention and sliding tokens), and a generation (issue 24,
item 5). GPU machine; the same environment as engine_cycle.py (engine_cycle_gpu.sh sets it up).

    python3 fullsize.py --size 31B --out results.jsonl [--swa-ratio 0.8]

The checkpoint is only a config.json at the published widths (tests/gemma4/g4util.PUBLISHED) with
`--load-format dummy`; the figures come from SGLang's own log lines and /get_server_info.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "gemma4")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=["31B", "26B-A4B"], required=True)
    ap.add_argument("--swa-ratio", type=float, default=None, help="--swa-full-tokens-ratio (SGLang's default: 0.8)")
    ap.add_argument("--mem", type=float, default=0.85)
    ap.add_argument("--work", default="/tmp/fullsize")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import engine_cycle
    import g4util

    engine_cycle.setup_paths("none")
    from gpu import free_port
    from gpu import http as gpu_http

    def http(url, body=None, timeout=600.0):  # the gpu tier's client, returning the body only
        return gpu_http(url, body, timeout)[1]

    ckpt = Path(a.work) / a.size
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(g4util.published_config_json(a.size), indent=1))
    (ckpt / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1}))
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(ckpt), "--load-format", "dummy",
           "--host", "127.0.0.1", "--port", str(port), "--skip-tokenizer-init", "--attention-backend", "triton",
           "--sampling-backend", "pytorch", "--dtype", "bfloat16", "--tp-size", "1", "--mem-fraction-static",
           str(a.mem), "--context-length", "16384", "--cuda-graph-max-bs", "32", "--log-level", "info"]
    if a.swa_ratio is not None:
        cmd += ["--swa-full-tokens-ratio", str(a.swa_ratio)]
    log = Path(a.work) / f"{a.size}-{a.swa_ratio}.log"
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    res = dict(size=a.size, swa_full_tokens_ratio=a.swa_ratio, mem_fraction_static=a.mem)
    try:
        while True:
            try:
                http(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except Exception:  # noqa: BLE001
                if proc.poll() is not None or time.monotonic() - t0 > 540:
                    raise RuntimeError(f"server did not come up: see {log}")
                time.sleep(2)
        res["ready_s"] = round(time.monotonic() - t0, 1)
        info = http(f"http://127.0.0.1:{port}/get_server_info")
        for k in ("max_total_num_tokens", "swa_full_tokens_ratio", "max_running_requests", "chunked_prefill_size",
                  "cuda_graph_max_bs", "page_size"):
            if k in info:
                res[k] = info[k]
        states = info.get("internal_states") or [{}]
        for k, v in (states[0] or {}).items():
            if isinstance(v, (int, float, str)) and ("token" in k or "memory" in k or "swa" in k):
                res["internal_" + k] = v
        t1 = time.monotonic()
        out = http(f"http://127.0.0.1:{port}/generate", {"input_ids": [[5 + i] * 600 for i in range(8)],
                   "sampling_params": {"max_new_tokens": 64, "temperature": 1.0, "ignore_eos": True}})
        res["generated_tokens"] = sum(len(r["output_ids"]) for r in out)
        res["generate_s"] = round(time.monotonic() - t1, 2)
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    keep = [line.strip()[:300] for line in text.splitlines()
            if re.search(r"Load weight end|KV Cache is allocated|max_total_num_tokens|SWA|swa|mem usage|avail mem",
                         line)]
    res["log_lines"] = keep[:20]
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")
    print("[fullsize] " + json.dumps(res), flush=True)
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
