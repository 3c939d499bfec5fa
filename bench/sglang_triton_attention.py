#!/usr/bin/env python3
"""SGLang v0.5.9's Triton attention kernels at Gemma4's shapes, on one GPU: extend (prefill) and
decode, each next to a plain torch SDPA anchor measured in the same run.

    python3 bench/sglang_triton_attention.py [--tree PATH] [--out FILE]      # on the GPU machine
    python3 bench/sglang_triton_attention.py --tiny                          # CPU, Triton interpreter

What is timed: `extend_attention_fwd` (triton_ops/extend_attention.py) and `decode_attention_fwd`
(triton_ops/decode_attention.py) of the SGLang tree given by --tree (default:
out/workspace/sglang/python, made by `make workspace UPSTREAM=sglang GEMMA4=1`), called with the
arguments SGLang's Triton backend (`srt/layers/attention/triton_backend.py`, normal mode: no
speculative decoding, no custom mask, not deterministic) builds for them: a token KV pool
(slot 0 left unused, as SGLang's pool does), `kv_indptr`/`kv_indices` into it (int32/int64),
`qo_indptr`, `max_len_extend`, causal, `sm_scale` given, and for decode the float32 scratch
buffers `attn_logits` (batch, heads, max_kv_splits, Lv) and `attn_lse` (batch, heads,
max_kv_splits), `max_kv_splits` 8 (the server's default `--triton-attention-num-kv-splits`) and
`num_kv_splits` per request from the backend's own rule (`get_num_kv_splits_triton`, restated
here in Python for a batch of equal lengths, with this GPU's multiprocessor count; checked
against the tree's kernel for these shapes). The rule takes the model's head counts, one pair
for all layers; here each layer kind's own are used. Inputs are random, sm_scale 1/sqrt(d)
(Gemma4 uses 1.0 after its q/k norms; the kernels' speed does not depend on it).

Shapes (Gemma4 31B; bf16):
  global  layers: head_dim 512 for K and V, 32 query heads : 4 KV heads, no window;
  sliding layers: head_dim 256, 32 : 16 heads, window w = 1024 keys (the query's own included).
Cases, for each layer kind and each S in --seqs (4k, 8k, 16k, 32k):
  extend          prefill of one whole sequence of S tokens, no prefix;
  extend_chunked  the last chunk of a chunked prefill: S - 2048 tokens already in the pool,
                  2048 new ones (--chunk);
  decode          a batch of B requests (--batches: 1, 16, 64), each with S tokens in the pool
                  (the new token's K/V included, as SGLang writes it before attention;
                  sliding layers: the pool holds each request's last w + 1 tokens, as an SWA
                  pool holds windows, the extra one being the guard's key outside the window).
The window, as the kernels see it: the extend kernel masks keys with q_pos <= k_pos + W, so W =
w - 1 is passed (`sliding_window_size`), and of the prefix only the last w - 1 tokens are
indexed (what the backend's `update_sliding_window_buffer` gives when the model's
`sliding_window_size` is w - 1). Decode has no mask: the backend passes the indices of the
window's tokens; here those are the last w tokens (positions S-w … S-1). SGLang v0.5.9's backend
passes w - 1 of them (one too narrow); for timing the difference is one key in 1024.

Numbers: ms per call (median), tokens/s (new tokens per call / time: S for extend, 2048 for
extend_chunked, B for decode), and TFLOP/s counting attended (query, key) pairs only:
4 · heads · head_dim · pairs (the windowed SDPA anchor does the masked-out work too; it is not
counted). Extend is timed with CUDA events around back-to-back launches; decode as SGLang runs
it, inside a CUDA graph (replays timed with events), cycling through enough copies of the KV
data that the working set is well over the L2 cache (`rotation` in the results). The anchor:
extend: `F.scaled_dot_product_attention` with K/V expanded to 32 heads, `is_causal=True` for
the global prefill, an explicit boolean mask otherwise (window, or the chunk's offset causal
mask); decode: SDPA of the one new token, its 32 heads folded as G = 32/KV query rows per KV
head (query (B, KV, G, d) against K/V (B, KV, L, d) laid out densely per request, no mask),
which is the same attention as one query with K/V expanded, without the expansion. On CUDA the
SDPA math backend is excluded (it would materialise heads × S × S); an anchor that does not fit
in memory or has no kernel is reported as skipped.

Correctness guard, before any timing of a case: the Triton output (and the anchor's) on a slice,
heads 0 and 31 (so the first and the last KV head) at about 32 query rows (extend: the chunk's ends, tile
and window edges, random rows; decode: first, middle and last request), is compared with a
float32 reference computed from the same bf16 inputs over an explicit key range: a query at
position p sees keys 0 … p (global) or p-w+1 … p (sliding). To make an off-by-one in the window
or the causal edge visible above bf16 noise, those rows' queries are set to point at one key
(logit about 12 above the rest): head 0 at the first key the query may see (key 0, or p-w+1),
head 31 at the first key it may not (p+1, or p-w). Off by one key, the output moves by O(1)
(about |v|, up to 3 or 4); bf16 rounding of p and of the output moves it by up to about
2^-7 |out| (0.016 was seen with the interpreter's arithmetic). Tolerance, elementwise:
|diff| <= 0.01 + 0.02 |reference|. A Triton mismatch aborts the run (exit 1, after writing the
failing line); an anchor mismatch is flagged in the output and the run goes on.

Loading the kernels without SGLang's package: `import sglang` runs sglang/__init__.py (the whole
frontend) and the kernels' `from sglang.srt.utils import is_cuda, is_hip` runs
srt/utils/__init__.py, i.e. `sglang.srt.utils.common`, which needs orjson, pybase64, pyzmq,
starlette, pillow, psutil, requests … at module level. This script puts two modules into
sys.modules before importing anything from the tree:
  - `sglang`: an empty package whose __path__ is the tree's sglang/ folder, so its submodules
    (srt, srt/layers, … are namespace folders without __init__.py) resolve to the tree's own
    files, but sglang/__init__.py does not run;
  - `sglang.srt.utils`: a module that serves each name asked of it (here is_cuda and is_hip) by
    compiling that function's own definition, taken out of the tree's srt/utils/common.py with
    `ast`, in a namespace holding torch, os and functools; nothing else of common.py runs. The
    functions are the tree's code, not stand-ins, so the kernels' block-size choices
    (`_is_cuda`, `_is_hip`, compute capability) are what they are inside SGLang.
Then `sglang.srt.layers.attention.triton_ops.extend_attention` (which imports prefill_attention
from the tree too) and `...decode_attention` are imported normally. The output says which
utils functions were served and the sha256 of the kernel files, so results name the exact
kernels measured. If a patched kernel file imports more, the error names the missing module.

--tiny: CPU, TRITON_INTERPRET=1 (set before triton is imported), the real head counts and head
dims but S in (40, 100), window 16, chunk 24, batches (1, 3), multiprocessor count taken as 132
for the split rule; it checks the argument plumbing, the loading and the correctness guard, and
its times mean nothing. Triton's interpreter (3.8 at least) multiplies bf16 `tl.dot` operands as
their raw 16-bit patterns, so --tiny runs in float16 unless --dtype says otherwise.

Results (--out FILE, e.g. bench/results/sglang_triton_attention.h200.jsonl): one JSON object
per line, one line per measurement (Triton and anchor separately), written as they complete;
the file is overwritten at start. Keys:
  bench "sglang_triton_attention"; run (UTC start time); impl "triton" | "sdpa";
  path "extend" | "extend_chunked" | "decode"; layer "global" | "sliding"; head_dim; q_heads;
  kv_heads; window (keys, or null); seq (S); prefix (tokens already in the pool before the call:
  extend 0, chunked S - chunk, decode S - 1); new_tokens (per call, all requests); batch;
  pairs (attended query-key pairs per call); ms; tokens_per_s; tflops (null when skipped);
  timing "events" | "graph" | "wall"; rotation (KV copies cycled); num_kv_splits and
  max_kv_splits (Triton decode, else null); max_abs_diff; tol_used (largest
  |diff| / (atol + rtol |ref|); the guard fails above 1); atol; rtol; ok (guard passed);
  skipped (null, or why not measured); dtype; device; sm_count; torch; triton; interpreter;
  tree; kernel_sha256 {file: first 16 hex digits}.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import functools
import hashlib
import importlib
import json
import math
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TREE = REPO / "out" / "workspace" / "sglang" / "python"
OPS = "sglang/srt/layers/attention/triton_ops"
NEEDED = (f"{OPS}/extend_attention.py", f"{OPS}/decode_attention.py",
          f"{OPS}/prefill_attention.py", "sglang/srt/utils/common.py")
ATOL, RTOL = 0.01, 0.02   # allowed |Triton - float32 reference|: ATOL + RTOL * |reference|
PLANT_LOGIT = 12.0     # a guard row's planted key scores this much (others ~ N(0, 1))
GUARD_ROWS = 32
ROTATE_BYTES = 256 << 20   # decode: cycle KV copies until the working set is at least this
MAX_ROTATION = 16


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    head_dim: int
    q_heads: int
    kv_heads: int
    window: int | None

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def label(self) -> str:
        w = f" w{self.window}" if self.window else ""
        return f"{self.name} d{self.head_dim} {self.q_heads}:{self.kv_heads}{w}"


# ------------------------------------------------------------------------------------------------
# Loading the two kernel files from the tree


def tree_or_exit(arg: str | None) -> Path:
    tree = Path(arg).resolve() if arg else DEFAULT_TREE
    missing = [p for p in NEEDED if not (tree / p).is_file()]
    if missing:
        how = ("make it from the repository's root with `make workspace UPSTREAM=sglang GEMMA4=1` "
               f"(it writes {DEFAULT_TREE.relative_to(REPO)}), or pass --tree PATH to a folder "
               "holding the sglang package (the tree's python/ folder); on the device machine, "
               "carry out/workspace/sglang/python")
        sys.exit(f"sglang_triton_attention: no SGLang tree at {tree} (missing: "
                 f"{', '.join(missing)}): {how}")
    return tree


def _utils_shim(common: Path) -> tuple[types.ModuleType, list[str]]:
    """sglang.srt.utils, serving top-level functions of common.py compiled from their own source."""
    import torch

    syntax = ast.parse(common.read_text(), filename=str(common))
    defs = {n.name: n for n in syntax.body if isinstance(n, ast.FunctionDef)}
    namespace = {"__name__": "sglang.srt.utils", "torch": torch, "os": os,
                 "functools": functools, "lru_cache": functools.lru_cache}
    module = types.ModuleType("sglang.srt.utils")
    module.__file__ = str(common)
    served: list[str] = []

    def __getattr__(name: str):
        if name.startswith("__") or name not in defs:
            raise AttributeError(
                f"sglang.srt.utils.{name}: this benchmark's stand-in for sglang.srt.utils serves "
                f"only top-level functions of {common} (see the script's docstring)")
        code = compile(ast.Module(body=[defs[name]], type_ignores=[]), str(common), "exec")
        try:
            exec(code, namespace)
        except NameError as err:
            raise ImportError(f"sglang.srt.utils.{name} from {common}: its definition needs "
                              f"more than torch/os/functools ({err})") from err
        setattr(module, name, namespace[name])
        served.append(name)
        return namespace[name]

    module.__getattr__ = __getattr__
    return module, served


def load_kernels(tree: Path):
    if "sglang" in sys.modules:
        sys.exit("sglang_triton_attention: a module named sglang is already imported; run this "
                 "script as its own process")
    package = types.ModuleType("sglang")
    package.__path__ = [str(tree / "sglang")]
    package.__file__ = None
    sys.modules["sglang"] = package
    utils, served = _utils_shim(tree / "sglang/srt/utils/common.py")
    sys.modules["sglang.srt.utils"] = utils
    srt = importlib.import_module("sglang.srt")
    srt.utils = utils
    base = OPS.replace("/", ".")
    try:
        extend = importlib.import_module(f"{base}.extend_attention")
        decode = importlib.import_module(f"{base}.decode_attention")
    except ModuleNotFoundError as err:
        sys.exit(f"sglang_triton_attention: importing the kernels from {tree} needs module "
                 f"{err.name!r}, which this benchmark does not provide (see its docstring: it "
                 "stands in only for sglang/__init__ and sglang.srt.utils)")
    for mod in (extend, decode):
        if not Path(mod.__file__).resolve().is_relative_to(tree):
            sys.exit(f"sglang_triton_attention: {mod.__name__} came from {mod.__file__}, "
                     f"not from {tree}")
    heavy = [m for m in ("sglang.srt.utils.common", "orjson", "zmq", "starlette")
             if m in sys.modules]
    if heavy:
        print(f"note: these got imported anyway: {', '.join(heavy)}", flush=True)
    return extend, decode, served


def kernel_hashes(tree: Path) -> dict[str, str]:
    return {Path(p).name: hashlib.sha256((tree / p).read_bytes()).hexdigest()[:16]
            for p in NEEDED[:3]}


# ------------------------------------------------------------------------------------------------
# The backend's rule for num_kv_splits, restated


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def backend_num_kv_splits(kv_len: int, batch: int, layer: Layer, max_splits: int,
                          sm_count: int) -> int:
    """TritonAttnBackend.get_num_kv_splits (get_num_kv_splits_triton) for `batch` requests of
    `kv_len` keys each; with no multiprocessor count the backend uses max_splits."""
    if sm_count <= 0:
        return max_splits
    # All lengths equal: the rule's first bound (max/min length) allows 1 split, chunk = kv_len.
    chunk_1 = kv_len
    cores = int(sm_count * max(math.log2(kv_len / 64.0), 1.0))
    if layer.group == 1:
        grid = batch * layer.q_heads
    else:
        grid = batch * cdiv(layer.q_heads, min(16, layer.group))
    splits_2 = min(cdiv(cores, grid), max_splits)
    chunk_2 = cdiv(kv_len, splits_2)
    return max(cdiv(kv_len, chunk_1), cdiv(kv_len, chunk_2))


# ------------------------------------------------------------------------------------------------
# Timing


class Timer:
    def __init__(self, torch, device: str, target_s: float):
        self.torch = torch
        self.cuda = device == "cuda"
        self.target = target_s

    def _events(self, fn, n: int) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n

    def _median(self, fn, first: float) -> float:
        """Median seconds per fn() over about the target time; `first` is one call's time.
        Long calls: 3 samples of one call (first included); else 5 samples of n calls."""
        if first * 3 >= self.target:
            return statistics.median([first, self._events(fn, 1), self._events(fn, 1)])
        n = max(1, int(self.target / (5 * first)))
        return statistics.median(self._events(fn, n) for _ in range(5))

    def eager(self, fns) -> tuple[float, str]:
        """Seconds per call, cycling through fns (one call each turn)."""
        if not self.cuda:
            t = time.perf_counter()
            fns[0]()
            return time.perf_counter() - t, "wall"
        turn = [0]

        def step():
            fns[turn[0] % len(fns)]()
            turn[0] += 1

        for f in fns:
            f()
        self.torch.cuda.synchronize()
        return self._median(step, self._events(step, 1)), "events"

    def graph(self, fns) -> tuple[float, str]:
        """Seconds per call, from replays of a CUDA graph of calls cycling through fns; falls
        back to eager launches when capture fails."""
        if not self.cuda:
            return self.eager(fns)
        torch = self.torch
        try:
            for f in fns:
                f()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for f in fns:
                    f()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            inner = len(fns) * max(1, cdiv(24, len(fns)))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(inner):
                    fns[i % len(fns)]()
            graph.replay()
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001 - any capture failure: time without a graph
            print(f"  (CUDA graph capture failed, timing eager launches: {err})", flush=True)
            torch.cuda.synchronize()
            return self.eager(fns)
        seconds = self._median(graph.replay, self._events(graph.replay, 1)) / inner
        del graph
        return seconds, "graph"


# ------------------------------------------------------------------------------------------------
# Guard: float32 reference over an explicit key range


def reference(torch, q, k, v, key_pos, kv_heads, lo, hi, scale):
    """q (R, h, d) for h selected heads mapping to kv_heads; k, v (N, KV, d) at key positions
    key_pos (N,); row r sees the keys with lo[r] <= position <= hi[r]. float32 out (R, h, dv)."""
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float32, device=q.device)
    allowed = (key_pos[None, :] >= lo[:, None]) & (key_pos[None, :] <= hi[:, None])
    for j, kvh in enumerate(kv_heads):
        scores = (q[:, j].float() @ k[:, kvh].float().T) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, j] = torch.softmax(scores, dim=-1) @ v[:, kvh].float()
    return out


def point_queries(torch, q, rows, head, k_rows, scale):
    """Set q[rows, head] to point at the key vectors k_rows (R, d): logit PLANT_LOGIT."""
    kf = k_rows.float()
    factor = PLANT_LOGIT / (kf.square().sum(-1, keepdim=True) * scale)
    q[rows, head] = (kf * factor).to(q.dtype)


def compare(torch, got, ref) -> tuple[float, float]:
    """(max |got - ref|, largest share of the tolerance ATOL + RTOL |ref| used; > 1 fails)."""
    got = got.float()
    if not torch.isfinite(got).all():
        return float("inf"), float("inf")
    diff = (got - ref).abs()
    return diff.max().item(), (diff / (ATOL + RTOL * ref.abs())).max().item()


# ------------------------------------------------------------------------------------------------
# Cases


class Bench:
    def __init__(self, args, torch, extend_mod, decode_mod, meta):
        self.args, self.torch = args, torch
        self.ext, self.dec = extend_mod, decode_mod
        self.meta = meta
        self.device = meta["device_kind"]
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        self.timer = Timer(torch, self.device, args.target_ms / 1e3)
        self.out = open(args.out, "w") if args.out else None
        self.failed_msg = ""
        self.gen = torch.Generator(device="cpu").manual_seed(args.seed)

    # -- helpers --------------------------------------------------------------------------------

    def randn(self, *shape):
        return self.torch.randn(*shape, dtype=self.dtype, device=self.device)

    def free_bytes(self) -> int:
        if self.device != "cuda":
            return 1 << 62
        return self.torch.cuda.mem_get_info()[0]

    def release(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def sdpa_context(self):
        from contextlib import nullcontext

        if self.device != "cuda":
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                            SDPBackend.CUDNN_ATTENTION])

    def record(self, case: dict, impl: str, seconds: float | None, timing: str | None,
               diff: float | None, ok: bool | None, skipped: str | None = None, **extra):
        layer: Layer = case["layer"]
        row = {
            "bench": "sglang_triton_attention", "run": self.meta["run"], "impl": impl,
            "path": case["path"], "layer": layer.name, "head_dim": layer.head_dim,
            "q_heads": layer.q_heads, "kv_heads": layer.kv_heads, "window": layer.window,
            "seq": case["S"], "prefix": case["prefix"], "new_tokens": case["tokens"],
            "batch": case["batch"], "pairs": case["pairs"],
            "ms": None if seconds is None else seconds * 1e3,
            "tokens_per_s": None if seconds is None else case["tokens"] / seconds,
            "tflops": None if seconds is None else
            4 * layer.q_heads * layer.head_dim * case["pairs"] / seconds / 1e12,
            "timing": timing, "rotation": extra.pop("rotation", 1),
            "num_kv_splits": extra.pop("num_kv_splits", None),
            "max_kv_splits": extra.pop("max_kv_splits", None),
            "max_abs_diff": diff, "tol_used": extra.pop("tol_used", None), "atol": ATOL,
            "rtol": RTOL, "ok": ok, "skipped": skipped,
            "dtype": self.args.dtype, **{k: self.meta[k] for k in (
                "device", "sm_count", "torch", "triton", "interpreter", "tree", "kernel_sha256")},
        }
        row.update(extra)
        if self.out:
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()
        return row

    def check(self, case, what: str, diff: float, share: float, fatal: bool) -> bool:
        ok = share <= 1.0
        if not ok:
            layer = case["layer"]
            msg = (f"{what} output differs from the float32 reference beyond bf16 tolerance: "
                   f"max |diff| = {diff:.4g}, {share:.3g} x the allowed {ATOL} + {RTOL}|ref| "
                   f"({case['path']}, {layer.label}, S={case['S']}, batch={case['batch']}; "
                   f"heads 0 and {layer.q_heads - 1}; keys p-w+1..p or 0..p)")
            if fatal:
                self.failed_msg = msg
            else:
                print(f"  ANCHOR MISMATCH: {msg}", flush=True)
        return ok

    def show(self, case, tri, anc):
        def cols(r):
            if r is None or r["ms"] is None:
                return f"{'-':>9} {'-':>10} {'-':>7}"
            return f"{r['ms']:9.3f} {r['tokens_per_s']:10.4g} {r['tflops']:7.1f}"

        speed, adiff, note = "-", "", ""
        if anc is not None and anc["ms"] is not None:
            speed = f"{anc['ms'] / tri['ms']:.2f}x"
        if anc is not None and anc["max_abs_diff"] is not None:
            adiff = f"/{anc['max_abs_diff']:.1e}" + ("" if anc["ok"] else " MISMATCH")
        if anc is not None and anc["skipped"]:
            note = f"  (sdpa skipped: {anc['skipped']})"
        print(f"{case['path']:<15} {case['layer'].label:<22} {case['S']:>6} {case['batch']:>5} | "
              f"{cols(tri)} | {cols(anc)} | {speed:>8} {tri['max_abs_diff']:.1e}{adiff}{note}",
              flush=True)

    # -- extend ---------------------------------------------------------------------------------

    def guard_rows(self, P: int, S: int, w: int | None) -> list[int]:
        marks = {P, P + 1, S - 2, S - 1, P + 31, P + 32, P + 63, P + 64, P + 127, P + 128}
        if w:
            marks |= {w - 2, w - 1, w, w + 1, P + w - 2, P + w - 1, P + w}
        rows = sorted(p for p in marks if P <= p < S)
        want = min(GUARD_ROWS, S - P)
        taken = set(rows)
        pool = [p for p in range(P, S) if p not in taken]
        while len(rows) < want and pool:
            rows.append(pool.pop(int(self.torch.randint(len(pool), (1,), generator=self.gen))))
        return sorted(rows)

    def run_extend(self, layer: Layer, S: int, P: int):
        torch = self.torch
        C, H, KV, d, w = S - P, layer.q_heads, layer.kv_heads, layer.head_dim, layer.window
        scale = 1.0 / math.sqrt(d)
        pairs = sum(min(p + 1, w) if w else p + 1 for p in range(P, S))
        case = dict(path="extend" if P == 0 else "extend_chunked", layer=layer, S=S, prefix=P,
                    tokens=C, batch=1, pairs=pairs)

        # Pool: position j at slot 1 + j. The chunk's K/V are also passed separately (the
        # backend passes the new k, v; here they are views of the same memory).
        pool_k, pool_v = self.randn(1 + S, KV, d), self.randn(1 + S, KV, d)
        keys_k, keys_v = pool_k[1:], pool_v[1:]
        k_ext, v_ext = keys_k[P:], keys_v[P:]
        q = self.randn(C, H, d)
        o = torch.empty(C, H, d, dtype=self.dtype, device=self.device)
        n_prefix = min(P, w - 1) if w else P
        kv_indices = torch.arange(1 + P - n_prefix, 1 + P, dtype=torch.int64, device=self.device)
        kv_indptr = torch.tensor([0, n_prefix], dtype=torch.int32, device=self.device)
        qo_indptr = torch.tensor([0, C], dtype=torch.int32, device=self.device)
        window_kv_offsets = (torch.tensor([P - n_prefix], dtype=torch.int32, device=self.device)
                             if w else None)

        # Guard rows: head 0 points at the first key it may see, the last head at the first it
        # may not (key p+1, or p-w), where one exists.
        rows = self.guard_rows(P, S, w)
        pos = torch.tensor(rows, device=self.device)
        first_in = (pos - w + 1).clamp(min=0) if w else torch.zeros_like(pos)
        first_out = torch.where(pos - w >= 0, pos - w, pos) if w else (pos + 1).clamp(max=S - 1)
        point_queries(torch, q, pos - P, 0, keys_k[first_in, 0], scale)
        point_queries(torch, q, pos - P, H - 1, keys_k[first_out, KV - 1], scale)
        lo = first_in
        ref = reference(torch, q[pos - P][:, [0, H - 1]], keys_k, keys_v,
                        torch.arange(S, device=self.device), [0, KV - 1], lo, pos, scale)

        def triton_call():
            self.ext.extend_attention_fwd(
                q, k_ext, v_ext, o, pool_k, pool_v, qo_indptr, kv_indptr, kv_indices,
                None, True, None, C, scale,
                logit_cap=0.0, sliding_window_size=(w - 1) if w else -1, sinks=None,
                window_kv_offsets=window_kv_offsets, xai_temperature_len=-1)

        triton_call()
        diff, share = compare(torch, o[pos - P][:, [0, H - 1]], ref)
        if not self.check(case, "Triton extend", diff, share, fatal=True):
            self.record(case, "triton", None, None, diff, False, skipped="guard failed",
                        tol_used=share)
            return self.abort()
        seconds, timing = self.timer.eager([triton_call])
        tri = self.record(case, "triton", seconds, timing, diff, True, tol_used=share)

        anc = None
        if not self.args.no_anchor:
            anc = self.extend_anchor(case, q, keys_k, keys_v, pos, ref, scale)
        self.show(case, tri, anc)

    def extend_anchor(self, case, q, keys_k, keys_v, pos, ref, scale):
        torch, F = self.torch, self.torch.nn.functional
        layer, S, P = case["layer"], case["S"], case["prefix"]
        C, H, G, d, w = S - P, layer.q_heads, layer.group, layer.head_dim, layer.window
        causal_only = P == 0 and not w
        esize = torch.tensor([], dtype=self.dtype).element_size()
        need = esize * (2 * C * H * d + 2 * S * H * d) + (0 if causal_only else 3 * C * S)
        if need > 0.85 * self.free_bytes():
            return self.record(case, "sdpa", None, None, None, None,
                               skipped=f"needs ~{need / 2**30:.1f} GiB")
        try:
            qa = q.permute(1, 0, 2).unsqueeze(0).contiguous()
            ka = keys_k.permute(1, 0, 2).repeat_interleave(G, dim=0).unsqueeze(0)
            va = keys_v.permute(1, 0, 2).repeat_interleave(G, dim=0).unsqueeze(0)
            mask = None
            if not causal_only:
                qp = torch.arange(P, S, device=self.device)[:, None]
                kp = torch.arange(S, device=self.device)[None, :]
                mask = kp <= qp
                if w:
                    mask &= kp >= qp - w + 1
            box = {}

            def call():
                if causal_only:
                    box["o"] = F.scaled_dot_product_attention(qa, ka, va, is_causal=True,
                                                              scale=scale)
                else:
                    box["o"] = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask,
                                                              scale=scale)

            with self.sdpa_context():
                call()
                got = box["o"][0, [0, H - 1]][:, pos - P].transpose(0, 1)
                diff, share = compare(torch, got, ref)
                ok = self.check(case, "SDPA anchor (extend)", diff, share, fatal=False)
                del got
                seconds, timing = self.timer.eager([call])
            return self.record(case, "sdpa", seconds, timing, diff, ok, tol_used=share)
        except (RuntimeError, MemoryError) as err:  # OutOfMemoryError is a RuntimeError
            reason = str(err).strip().splitlines()[0][:160]
            return self.record(case, "sdpa", None, None, None, None, skipped=reason)
        finally:
            self.release()

    # -- decode ---------------------------------------------------------------------------------

    def run_decode(self, layer: Layer, S: int, B: int):
        torch = self.torch
        H, KV, d, w = layer.q_heads, layer.kv_heads, layer.head_dim, layer.window
        scale = 1.0 / math.sqrt(d)
        L = min(S, w) if w else S                     # keys attended per request
        A = L + 1 if (w and S > w) else L             # slots per request: + key S-w-1 (outside)
        case = dict(path="decode", layer=layer, S=S, prefix=S - 1, tokens=B, batch=B,
                    pairs=B * L)
        esize = torch.tensor([], dtype=self.dtype).element_size()
        per_copy = B * L * KV * d * 2 * esize
        R = 1 if self.device != "cuda" else max(1, min(MAX_ROTATION, cdiv(ROTATE_BYTES, per_copy)))

        # Request i of copy r: positions S-A … S-1 at slots 1 + (r*B + i)*A + 0 … A-1; the
        # kernel is given the last L of them.
        pool_k, pool_v = self.randn(1 + R * B * A, KV, d), self.randn(1 + R * B * A, KV, d)
        base = 1 + torch.arange(R * B, device=self.device) * A          # slot of position S-A
        idx = (base[:, None] + (A - L) + torch.arange(L, device=self.device)[None, :])
        idx = idx.view(R, B * L).to(torch.int64)
        kv_indptr = (torch.arange(B + 1, device=self.device) * L).to(torch.int32)
        splits = backend_num_kv_splits(L, B, layer, self.args.max_kv_splits,
                                       self.meta["sm_count"])
        num_kv_splits = torch.full((B,), splits, dtype=torch.int32, device=self.device)
        M = self.args.max_kv_splits
        attn_logits = torch.empty(B, H, M, d, dtype=torch.float32, device=self.device)
        attn_lse = torch.empty(B, H, M, dtype=torch.float32, device=self.device)
        q = self.randn(B, H, d)
        o = torch.empty(B, H, d, dtype=self.dtype, device=self.device)

        # Guard (copy 0): head 0 points at the first key in range, the last head at key S-w-1
        # (outside the window) where it exists, else at the newest key.
        reqs = sorted({0, B // 2, B - 1})
        key_pos = torch.arange(S - A, S, device=self.device)
        first_in = max(0, S - w) if w else 0
        first_out = S - w - 1 if (w and S > w) else S - 1
        for i in reqs:
            kk = pool_k[int(base[i]): int(base[i]) + A]
            point_queries(torch, q, [i], 0, kk[first_in - (S - A), 0][None], scale)
            point_queries(torch, q, [i], H - 1, kk[first_out - (S - A), KV - 1][None], scale)
        refs = []
        for i in reqs:
            sl = slice(int(base[i]), int(base[i]) + A)
            lo = torch.tensor([first_in], device=self.device)
            hi = torch.tensor([S - 1], device=self.device)
            refs.append(reference(torch, q[i:i + 1][:, [0, H - 1]], pool_k[sl], pool_v[sl],
                                  key_pos, [0, KV - 1], lo, hi, scale))
        ref = torch.cat(refs)

        def triton_call(r):
            def call():
                self.dec.decode_attention_fwd(
                    q, pool_k, pool_v, o, kv_indptr, idx[r], attn_logits, attn_lse,
                    num_kv_splits, M, scale, logit_cap=0.0, sinks=None, xai_temperature_len=-1)
            return call

        calls = [triton_call(r) for r in range(R)]
        calls[0]()
        diff, share = compare(torch, o[reqs][:, [0, H - 1]], ref)
        extra = dict(num_kv_splits=splits, max_kv_splits=M, rotation=R, tol_used=share)
        if not self.check(case, "Triton decode", diff, share, fatal=True):
            self.record(case, "triton", None, None, diff, False, skipped="guard failed", **extra)
            return self.abort()
        seconds, timing = self.timer.graph(calls)
        tri = self.record(case, "triton", seconds, timing, diff, True, **extra)

        anc = None
        if not self.args.no_anchor:
            anc = self.decode_anchor(case, q, pool_k, pool_v, idx, L, reqs, ref, scale)
        self.show(case, tri, anc)

    def decode_anchor(self, case, q, pool_k, pool_v, idx, L, reqs, ref, scale):
        torch, F = self.torch, self.torch.nn.functional
        layer, B = case["layer"], case["batch"]
        H, KV, G, d = layer.q_heads, layer.kv_heads, layer.group, layer.head_dim
        R = idx.shape[0]
        esize = torch.tensor([], dtype=self.dtype).element_size()
        need = R * 2 * B * L * KV * d * esize + 2 * B * H * d * esize
        if need > 0.85 * self.free_bytes():
            return self.record(case, "sdpa", None, None, None, None, rotation=R,
                               skipped=f"needs ~{need / 2**30:.1f} GiB")
        try:
            # Dense per-request K/V (B, KV, L, d), one copy per rotation slot.
            dense = [(pool_k[idx[r]].view(B, L, KV, d).transpose(1, 2).contiguous(),
                      pool_v[idx[r]].view(B, L, KV, d).transpose(1, 2).contiguous())
                     for r in range(R)]
            qa = q.view(B, KV, G, d)
            box = {}

            def anchor_call(r):
                def call():
                    box["o"] = F.scaled_dot_product_attention(qa, dense[r][0], dense[r][1],
                                                              scale=scale)
                return call

            calls = [anchor_call(r) for r in range(R)]
            with self.sdpa_context():
                calls[0]()
                got = box["o"].reshape(B, H, d)[reqs][:, [0, H - 1]]
                diff, share = compare(torch, got, ref)
                ok = self.check(case, "SDPA anchor (decode)", diff, share, fatal=False)
                del got
                seconds, timing = self.timer.graph(calls)
            return self.record(case, "sdpa", seconds, timing, diff, ok, rotation=R,
                               tol_used=share)
        except (RuntimeError, MemoryError) as err:
            reason = str(err).strip().splitlines()[0][:160]
            return self.record(case, "sdpa", None, None, None, None, rotation=R, skipped=reason)
        finally:
            self.release()

    def abort(self):
        if self.out:
            self.out.close()
        sys.exit(f"sglang_triton_attention: CORRECTNESS FAILURE, timing aborted: "
                 f"{self.failed_msg}")


# ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", help=f"SGLang python/ folder (default {DEFAULT_TREE})")
    p.add_argument("--out", help="write one JSON line per measurement here (overwritten)")
    p.add_argument("--tiny", action="store_true",
                   help="CPU, TRITON_INTERPRET=1, tiny shapes: checks plumbing and the guard")
    p.add_argument("--seqs", type=ints, help="context lengths S (default 4096,8192,16384,32768)")
    p.add_argument("--batches", type=ints, help="decode batch sizes (default 1,16,64)")
    p.add_argument("--chunk", type=int, help="new tokens of the chunked extend (default 2048)")
    p.add_argument("--window", type=int, help="sliding window in keys (default 1024)")
    p.add_argument("--layers", default="global,sliding", help="global,sliding or one of them")
    p.add_argument("--paths", default="extend,extend_chunked,decode",
                   help="which of extend,extend_chunked,decode")
    p.add_argument("--no-anchor", action="store_true", help="skip the SDPA anchor")
    p.add_argument("--max-kv-splits", type=int, default=8,
                   help="the server's --triton-attention-num-kv-splits (default 8)")
    p.add_argument("--sm-count", type=int,
                   help="multiprocessor count for the split rule (default: the GPU's; 132 with "
                        "--tiny)")
    p.add_argument("--dtype", choices=("bf16", "fp16"),
                   help="default bf16; fp16 with --tiny (the interpreter's bf16 dot is wrong)")
    p.add_argument("--target-ms", type=float, default=250.0,
                   help="timing budget per measurement after warm-up (default 250)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        defaults = dict(seqs=[40, 100], batches=[1, 3], chunk=24, window=16, dtype="fp16",
                        sm_count=132)
    else:
        defaults = dict(seqs=[4096, 8192, 16384, 32768], batches=[1, 16, 64], chunk=2048,
                        window=1024, dtype="bf16", sm_count=None)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.layers = [x for x in args.layers.split(",") if x]
    args.paths = [x for x in args.paths.split(",") if x]
    bad = [x for x in args.layers if x not in ("global", "sliding")]
    bad += [x for x in args.paths if x not in ("extend", "extend_chunked", "decode")]
    if bad:
        p.error(f"unknown layer or path: {', '.join(bad)}")
    if args.window < 2 or args.chunk < 1 or min(args.seqs) < 1 or min(args.batches) < 1:
        p.error("window must be >= 2; chunk, seqs and batches >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.tiny:
        os.environ["TRITON_INTERPRET"] = "1"     # before triton is imported
        # The kernels compute NaN/inf in padded rows that they never store; numpy says so.
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                module="triton.runtime.interpreter")
    tree = tree_or_exit(args.tree)

    import torch
    import triton

    interpreter = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if interpreter:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        sys.exit("sglang_triton_attention: no CUDA GPU; use --tiny for the CPU interpreter check")
    extend_mod, decode_mod, served = load_kernels(tree)

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu, sm = props.name, props.multi_processor_count
    else:
        gpu, sm = "cpu (Triton interpreter)", 0
    meta = dict(run=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                device_kind=device, device=gpu,
                sm_count=args.sm_count if args.sm_count is not None else sm,
                torch=torch.__version__, triton=triton.__version__, interpreter=interpreter,
                tree=str(tree), kernel_sha256=kernel_hashes(tree))
    torch.manual_seed(args.seed)

    layers = {
        "global": Layer("global", 512, 32, 4, None),
        "sliding": Layer("sliding", 256, 32, 16, args.window),
    }
    print(f"SGLang Triton attention at Gemma4 shapes: {gpu}, {args.dtype}, torch "
          f"{torch.__version__}, triton {triton.__version__}"
          f"{' (interpreter: times mean nothing)' if interpreter else ''}")
    print(f"tree {tree}; sglang.srt.utils served from common.py by source: "
          f"{', '.join(served) or 'nothing'}; kernels sha256 "
          + ", ".join(f"{k} {v}" for k, v in meta["kernel_sha256"].items()))
    print(f"decode: max_kv_splits {args.max_kv_splits}, split rule with {meta['sm_count']} "
          f"multiprocessors; guard: |diff| <= {ATOL} + {RTOL}|ref|; TFLOP/s: attended pairs only")
    print()
    head = (f"{'path':<15} {'layer':<22} {'S':>6} {'batch':>5} | "
            f"{'triton ms':>9} {'tokens/s':>10} {'TFLOP/s':>7} | "
            f"{'sdpa ms':>9} {'tokens/s':>10} {'TFLOP/s':>7} | {'sdpa/tri':>8} max|diff| tri/sdpa")
    print(head)
    print("-" * len(head), flush=True)

    bench = Bench(args, torch, extend_mod, decode_mod, meta)
    start = time.perf_counter()
    for name in args.layers:
        layer = layers[name]
        for S in args.seqs:
            if "extend" in args.paths:
                bench.run_extend(layer, S, 0)
                bench.release()
            if "extend_chunked" in args.paths and S > args.chunk:
                bench.run_extend(layer, S, S - args.chunk)
                bench.release()
            if "decode" in args.paths:
                for B in args.batches:
                    bench.run_decode(layer, S, B)
                    bench.release()
    if bench.out:
        bench.out.close()
        print(f"\nwrote {args.out}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
