"""Run an SGLang v0.5.9 model class on the CPU, through SGLang's own forward path.

What is SGLang's and what is ours
---------------------------------
SGLang's (unchanged, from the tree given to `setup_sglang`): the model class, its layers,
`RadixAttention`, the attention backend (`TritonAttnBackend` by default, its Triton kernels run by
Triton's interpreter, `TRITON_INTERPRET=1`), `ReqToTokenPool`, `MHATokenToKVPool` / `SWAKVPool`,
`TokenToKVPoolAllocator` / `SWATokenToKVPoolAllocator`, `write_cache_indices` (the scheduler's
req_to_token writer), `ModelWorkerBatch` -> `ForwardBatch.init_new` (positions, extend_start_loc,
...), `LogitsProcessor` (lm head, final soft-cap), the weight loader's post-processing, the
global server args and the parallel state (gloo: one rank, or one process per rank for tensor
parallelism, where the all-reduces and all-gathers go through SGLang's GroupCoordinator, whose
CPU branch calls torch.distributed on the gloo group).

Ours (this file): `CpuModelRunner`, a stand-in for `ModelRunner` holding only what the backend,
the pools and `ForwardBatch.init_new` read; the bookkeeping the scheduler would do (which slots a
request owns, prefix lengths); and a forward hook on the model's `LogitsProcessor` that keeps the
hidden states it was given and runs the processor's own `_get_logits` on *all* of them, so a
prefill returns logits for every position (SGLang's processor only returns the last position's
logits in EXTEND mode; its logprob path returns log-probabilities, not logits).

Use
---
    import harness
    harness.setup_sglang()                      # once per process, before any sglang import
    model = harness.build_model(SGLangModelClass, hf_config, torch.float32, hf_state_dict)
    runner = harness.CpuModelRunner(model)      # kv_pool="auto" | "mha" | "swa"
    out = runner.prefill([[1, 2, 3], [4, 5]])   # out.logits: one [len, vocab] tensor per sequence
    dec = runner.decode_step(out.reqs, [7, 8])  # dec.logits: [batch, vocab]
    full = runner.chunked_prefill([[...]], chunk_size=4)
    runner.release(out.reqs)

Tensor parallelism: each of tp_size processes calls
    harness.setup_sglang(tree, tp_size=2, tp_rank=r, dist_init_method="file:///tmp/x/rendezvous")
(the same init method everywhere) and then builds the model and the runner as above; the full
checkpoint goes to every rank's load_weights, whose weight loaders take that rank's shard, and
each runner's pools hold that rank's KV heads (read from the model's RadixAttention layers).

On a GPU machine without sgl-kernel, SGLANG_HARNESS_DEVICE=cuda runs the same on the GPU: the
Triton kernels compiled, every other op on SGLang's forward_native path (gpu_check.py).

The module-level `prefill`, `extend`, `decode_step`, `chunked_prefill` accept a runner or a model
(a model gets one cached runner, built with default arguments).

On the CPU, and what that changes
---------------------------------
* Every Triton kernel on the path (attention extend/decode, kv-index builders, positions,
  req_to_token writes, fused soft-cap, fused MoE) runs in Triton's interpreter (numpy, one Python
  call per program): correct, slow (~0.5 s per tiny forward).  fp32 and fp64 both run; in fp64 the
  kernels' float32 accumulators are promoted by the interpreter (a GPU build would refuse the
  loop-carried type change), but the decode kernel's split scratch (attn_logits / attn_lse) is
  allocated float32 by the backend and LogitsProcessor returns float32 logits for any model dtype.
* sgl_kernel (CUDA only), flashinfer, FA3, CUDA graphs, piecewise graphs, custom all-reduce: not
  used.  SGLang picks its PyTorch paths (`forward_native`) because it sees no CUDA and
  SGLANG_USE_CPU_ENGINE is 0; sgl_kernel and torchvision are imported at module level on the way
  to the modules used, so missing ones get stand-in modules (see STAND_INS).
* TorchDynamo is disabled (process-wide) unless setup_sglang(torch_compile=True).
* With no SM count (get_device_core_count() == 0) the Triton backend always uses
  triton_attention_num_kv_splits decode splits (2 here, see BASE_SERVER_ARGS).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TREE = ROOT / "out" / "workspace" / "sglang" / "python"

# "cpu" (the default): Triton's interpreter runs SGLang's kernels. "cuda" (SGLANG_HARNESS_DEVICE=
# cuda, on a GPU machine without sgl-kernel): SGLang's Triton kernels run compiled on the GPU and
# every other op takes SGLang's forward_native path, as on the CPU: SGLang is told there is no
# CUDA while it decides its code paths (its is_cuda() is cached at first use), since sgl-kernel's
# CUDA ops cannot be installed there.
DEVICE = os.environ.get("SGLANG_HARNESS_DEVICE", "cpu")

# Server args every harness run uses.  chunked_prefill_size must not be -1: with CUDA graphs off
# and chunked prefill off, TritonAttnBackend runs DECODER_BIDIRECTIONAL layers (Gemma3's) without
# a causal mask in EXTEND (`allow_bidirectional_attention_in_extend`).
BASE_SERVER_ARGS = dict(
    device=DEVICE,
    attention_backend="triton",
    sampling_backend="pytorch",
    disable_cuda_graph=True,
    chunked_prefill_size=8192,
    page_size=1,
    tp_size=1,
    dp_size=1,
    # SGLang's default is 8.  On the CPU the backend cannot size splits from the SM count
    # (get_device_core_count() is 0) and always uses the maximum; each split is one more program
    # the interpreter runs per (request, head group) of every decode kernel.  2 keeps the
    # split-and-merge path and halves a decode step's time (~0.65 s vs ~1.4 s, tiny Gemma3).
    triton_attention_num_kv_splits=2,
    # As ModelRunner: set_custom_all_reduce(not disable_custom_all_reduce). There is no custom
    # all-reduce on the CPU (GroupCoordinator.all_reduce takes its is_cpu branch first); this only
    # keeps a TP > 1 group from trying to build one.  No effect with one rank.
    disable_custom_all_reduce=True,
)

_STATE: dict = {}


# ------------------------------------------------------------------------------ global set-up


def setup_sglang(
    tree: Path | str | None = None,
    *,
    torch_compile: bool = False,
    tp_rank: int = 0,
    dist_init_method: Optional[str] = None,
    **server_args,
):
    """Make `import sglang` load `tree` and initialise what SGLang needs globally; idempotent.

    tree: the folder holding the `sglang` package (default: $SGLANG_TREE or out/workspace/sglang/
    python).  Sets TRITON_INTERPRET=1 (must happen before any Triton kernel of SGLang is defined,
    i.e. before sglang is imported), SGLANG_USE_CPU_ENGINE=0 (SGLang's CPU engine needs sgl_kernel's
    CPU ops; without it every CustomOp takes its forward_native path), disables TorchDynamo unless
    torch_compile=True (SGLang wraps a few helpers in torch.compile; on the CPU that means a C++
    compile per shape), sets the global ServerArgs (BASE_SERVER_ARGS updated with `server_args`;
    a later call applies its overrides to the same object) and initialises torch.distributed (gloo;
    an existing default group of the right size is reused) and SGLang's parallel state
    (init_distributed_environment, initialize_model_parallel, initialize_dp_attention, as
    ModelRunner.init_torch_distributed does on the CPU).

    Tensor parallelism: tp_size=N (a server arg) in each of N processes, tp_rank its rank,
    dist_init_method the rendezvous all of them name (a "file://" path is best: torch's TCPStore
    behind "tcp://" listens on every interface).  With tp_size > 1, gloo is kept on the loopback
    interface (GLOO_SOCKET_IFNAME, unless set) and SGLang's message-queue broadcaster (shared
    memory + zmq, which only carries scheduler requests) is off (SGLANG_USE_MESSAGE_QUEUE_
    BROADCASTER, unless set).  One rank: dist_init_method defaults to a file rendezvous in the temp folder.
    Returns the global ServerArgs.
    """
    if _STATE and tree is None:
        tree = _STATE["tree"]  # already set up: no tree named means the one in use
    tree = Path(tree or os.environ.get("SGLANG_TREE") or DEFAULT_TREE).resolve()
    if _STATE:
        if _STATE["tree"] != tree:
            raise RuntimeError(f"sglang already set up from {_STATE['tree']}, not {tree}")
        sa = _STATE["server_args"]
        if tp_rank != _STATE["tp_rank"] or server_args.get("tp_size", sa.tp_size) != sa.tp_size:
            raise RuntimeError(
                f"sglang already set up as tp rank {_STATE['tp_rank']} of {sa.tp_size}; "
                "the parallel state cannot change in a process"
            )
        for k, v in server_args.items():
            setattr(sa, k, v)
        return sa

    if not (tree / "sglang" / "__init__.py").is_file():
        raise FileNotFoundError(f"no sglang package under {tree}")
    loaded = sys.modules.get("sglang")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(tree)):
        raise RuntimeError(f"sglang was already imported from {loaded.__file__}, not from {tree}")
    if loaded is None and any(m.startswith("sglang.") for m in sys.modules):
        raise RuntimeError("part of sglang is already imported; call setup_sglang first")

    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ["SGLANG_USE_CPU_ENGINE"] = "0"
    if str(tree) not in sys.path:
        sys.path.insert(0, str(tree))

    import torch

    cuda_version = torch.version.cuda
    if DEVICE == "cuda":
        torch.version.cuda = None  # until SGLang's is_cuda() has cached "no" (below)

    if not torch_compile:
        import torch._dynamo

        torch._dynamo.config.disable = True

    _install_stand_ins()
    from sglang.srt.layers.attention import utils as attn_utils
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    if DEVICE == "cuda":
        from sglang.srt.utils import common

        assert not common.is_cuda()  # cached: SGLang's modules see no CUDA from now on
        torch.version.cuda = cuda_version
    kernel = attn_utils.create_flashinfer_kv_indices_triton
    if DEVICE == "cpu" and type(kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            f"SGLang's Triton kernels were defined before TRITON_INTERPRET=1 was set ({type(kernel)}); "
            "call setup_sglang before anything imports sglang"
        )

    # model_path "dummy" makes ServerArgs.__post_init__ return at once (no GPU probing, no
    # model-specific adjustments); the fields are then set by hand.
    sa = ServerArgs(model_path="dummy")
    for k, v in {**BASE_SERVER_ARGS, **server_args}.items():
        if not hasattr(sa, k):
            raise AttributeError(f"ServerArgs has no field {k!r}")
        setattr(sa, k, v)
    set_global_server_args_for_scheduler(sa)

    _init_parallel_state(sa, tp_rank, dist_init_method)
    _STATE.update(tree=tree, server_args=sa, tp_rank=tp_rank)
    return sa


class _Absent:
    """An attribute of a package that is not installed: importable, fails when used."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._name}: not installed (the CPU harness only stood in for it at import time)")

    def __repr__(self):
        return f"<absent {self._name}>"


class _AbsentFinder:
    """Serves stand-in modules for packages that are not installed, and their submodules.

    The package itself has no attributes (`from pkg import name` raises ImportError, as SGLang's
    `try: from sgl_kernel import x / except ImportError` expects); a submodule's attributes are
    `_Absent` (so `from sgl_kernel.kvcacheio import transfer_kv_...` at module level imports).
    """

    def __init__(self, packages):
        self.packages = tuple(packages)

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        import types

        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__harness_stand_in__ = True
        if "." in spec.name:
            mod.__getattr__ = lambda attr, _n=spec.name: _absent_attr(_n, attr)
        return mod

    def exec_module(self, module):
        pass


def _absent_attr(module: str, attr: str):
    if attr.startswith("__"):  # __file__, __spec__...: what inspect and importlib look for
        raise AttributeError(f"{module} has no {attr} (a stand-in)")
    return _Absent(f"{module}.{attr}")


# Imported at module level by v0.5.9 on the way to the modules the harness uses, used only on
# GPU/image paths:  torchvision by server_args -> hf_transformers_utils -> configs ->
# nano_nemotron_vl -> multimodal.internvl_utils (the test venv must not have it: it pins its own
# torch); sgl_kernel (CUDA-only wheels) by triton_backend -> spec_utils -> schedule_batch ->
# radix_cache -> hicache_storage -> memory_pool_host (sgl_kernel.kvcacheio).
STAND_INS = ("torchvision", "sgl_kernel") + tuple(
    p for p in os.environ.get("SGLANG_HARNESS_STAND_INS", "").split(",") if p
)  # more, where a machine lacks packages SGLang only imports (the GPU machine: IPython, openai)


def _install_stand_ins(packages=STAND_INS):
    """Install the finder (once, for the process) for those of `packages` that are missing.

    transformers' torchvision check is run first: it is cached, so transformers keeps seeing
    torchvision as absent.
    """
    import importlib.util

    if any(isinstance(f, _AbsentFinder) for f in sys.meta_path):
        return
    missing = tuple(p for p in packages if importlib.util.find_spec(p) is None)
    if not missing:
        return
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()
    sys.meta_path.append(_AbsentFinder(missing))


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if not names:
        raise RuntimeError("no loopback network interface (lo*) to keep gloo on")
    return names[0]


def _file_rendezvous() -> str:
    """A one-rank rendezvous through a file: "tcp://" would start torch's TCPStore, which listens
    on every interface."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="sglang-harness-rendezvous-")
    os.close(fd)
    os.unlink(path)
    return f"file://{path}"


def _init_parallel_state(sa, tp_rank: int = 0, dist_init_method: Optional[str] = None):
    import torch
    import torch.distributed as dist
    from sglang.srt.distributed import parallel_state as ps
    from sglang.srt.layers.dp_attention import initialize_dp_attention

    tp_size = sa.tp_size
    if sa.pp_size != 1 or sa.dp_size != 1 or sa.enable_dp_attention:
        raise ValueError("the harness runs tensor parallelism only (pp_size = dp_size = 1, no DP attention)")
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank {tp_rank} is not a rank of tp_size {tp_size}")
    if dist.is_initialized():
        if dist.get_world_size() != tp_size or dist.get_rank() != tp_rank:
            raise RuntimeError(
                f"torch.distributed is initialised as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"not {tp_rank} of {tp_size}"
            )
    elif tp_size > 1:
        if dist_init_method is None:
            raise ValueError("tp_size > 1 needs dist_init_method, the same on every rank")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())
    if tp_size > 1:
        # Read by initialize_model_parallel: the TP group's broadcaster of scheduler requests.
        os.environ.setdefault("SGLANG_USE_MESSAGE_QUEUE_BROADCASTER", "false")
        # ModelRunner sets LOCAL_SIZE only where sgl_kernel's CPU shared-memory all-reduce exists;
        # a stray one would send GroupCoordinator to torch.ops.sgl_kernel.shm_allreduce (absent).
        os.environ.pop("LOCAL_SIZE", None)
    ps.set_custom_all_reduce(not sa.disable_custom_all_reduce)
    if ps._WORLD is None:
        ps.init_distributed_environment(
            backend="gloo",
            world_size=tp_size,
            rank=tp_rank,
            local_rank=tp_rank,
            distributed_init_method=dist_init_method or _file_rendezvous(),
        )
    if ps._TP is None:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp_size)
    # Only hidden_size/dtype of the model config are read, for DP-attention gather buffers
    # (DP attention is off); the values here do not matter.
    initialize_dp_attention(sa, SimpleNamespace(hidden_size=1, dtype=torch.float32))


def server_args():
    if not _STATE:
        raise RuntimeError("call setup_sglang() first")
    return _STATE["server_args"]


# ------------------------------------------------------------------------------ the model


def build_model(model_cls, config, dtype, state_dict=None, weights: Optional[Iterable] = None):
    """Instantiate an SGLang model class on the CPU as DefaultModelLoader does and load weights.

    The class is built under the default dtype `dtype` (SGLang's set_default_torch_dtype), weights
    (an iterable of (name, tensor), or a state dict such as a transformers model's) go through the
    model's own `load_weights` and then every module's quant_method.process_weights_after_loading
    (DefaultModelLoader.load_weights_and_postprocess).
    """
    import torch
    from sglang.srt.model_loader.loader import DefaultModelLoader
    from sglang.srt.model_loader.utils import set_default_torch_dtype

    server_args()  # set up?
    with set_default_torch_dtype(dtype), torch.device(DEVICE):
        model = model_cls(config=config, quant_config=None)
    if state_dict is not None:
        weights = ((k, v.detach().to(dtype) if v.is_floating_point() else v.detach()) for k, v in state_dict.items())
    if weights is not None:
        DefaultModelLoader.load_weights_and_postprocess(model, weights, torch.device(DEVICE))
    return model.eval()


def attention_layers(model):
    """{layer_id: RadixAttention} of every attention layer in the model."""
    from sglang.srt.layers.radix_attention import RadixAttention

    out = {}
    for m in model.modules():
        if isinstance(m, RadixAttention):
            if m.layer_id in out and out[m.layer_id] is not m:
                raise ValueError(f"two RadixAttention modules with layer_id {m.layer_id}")
            out[m.layer_id] = m
    if not out:
        raise ValueError("the model has no RadixAttention layer")
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ the runner


@dataclasses.dataclass
class Req:
    """One sequence the runner holds: its req_to_token row and the tokens whose KV is cached."""

    req_pool_idx: int
    token_ids: list  # tokens whose KV is in the cache, in order
    kv_locs: "torch.Tensor"  # int64 [len(token_ids)]: full-pool locations (req_to_token row)
    swa_evicted: int = 0  # with evict_swa: tokens [0, swa_evicted) gave their sliding-pool slot back

    @property
    def seq_len(self) -> int:
        return len(self.token_ids)


@dataclasses.dataclass
class StepOutput:
    logits: object  # EXTEND: list of [n_i, vocab]; DECODE: [bs, vocab]
    next_token_logits: object  # what SGLang's LogitsProcessor returned: [bs, vocab]
    reqs: list
    forward_batch: object
    hidden_states: object  # what the model handed to its LogitsProcessor


class _ModelConfig:
    """The bits of SGLang's ModelConfig that TritonAttnBackend / pools read."""

    def __init__(self, model, layers, dtype, context_len):
        from sglang.srt.configs.model_config import AttentionArch

        hf = model.config
        text = getattr(hf, "text_config", None) or getattr(hf, "get_text_config", lambda: hf)()
        self.hf_config = hf
        self.hf_text_config = text
        self.num_attention_heads = text.num_attention_heads
        self.num_key_value_heads = getattr(text, "num_key_value_heads", self.num_attention_heads)
        self.hidden_size = text.hidden_size
        self.vocab_size = text.vocab_size
        first = next(iter(layers.values()))
        self.head_dim = first.qk_head_dim
        self.v_head_dim = first.v_head_dim
        self.dtype = dtype
        self.context_len = context_len
        self.is_encoder_decoder = False
        self.is_multimodal = False
        self.attention_arch = AttentionArch.MHA
        self.attention_chunk_size = None
        self.is_hybrid_swa = False
        self.swa_attention_layer_ids = None
        self.full_attention_layer_ids = None

    # This rank's KV heads of the full-attention (main) pool, once the runner has read them from
    # the layers; SGLang's ModelConfig computes the same from the checkpoint's total.
    rank_kv_heads: Optional[int] = None

    def get_num_kv_heads(self, tensor_parallel_size) -> int:
        if self.rank_kv_heads is not None:
            return self.rank_kv_heads
        return max(1, self.num_key_value_heads // tensor_parallel_size)


class CpuModelRunner:
    """The parts of SGLang's ModelRunner the attention backend, the memory pools and
    ForwardBatch.init_new read, plus the scheduler's KV bookkeeping, for one model on the CPU.

    kv_pool: "mha" (one MHATokenToKVPool, every layer the same [kv_heads, head_dim]: what SGLang
    uses for non-hybrid models such as Gemma3), "swa" (SWAKVPool + SWATokenToKVPoolAllocator:
    full and sliding layers in separate pools, each with its own kv heads / K dim / V dim, token
    slots mapped full -> swa), or "auto" ("mha" when all layers have one shape, else "swa").
    sliding_window_size: what ModelRunner.sliding_window_size would be (default: the model's
    get_attention_sliding_window_size(), as ModelRunner does); the Triton backend uses it to size
    the window of the KV it hands to sliding layers.
    evict_swa: with the SWA pool, free sliding-pool slots of tokens that left the window before
    each forward, as ScheduleBatch.maybe_evict_swa does (its chunk-cache rule, no overlap; every
    step rather than every sliding_window_size decode steps).
    dtype: of the KV cache (SGLang's kv_cache_dtype "auto"); default the model's.
    """

    def __init__(
        self,
        model,
        *,
        attention_backend: str = "triton",
        kv_pool: str = "auto",
        max_total_tokens: int = 512,
        swa_total_tokens: Optional[int] = None,
        max_reqs: int = 16,
        context_len: int = 256,
        sliding_window_size: Optional[int] = "model",
        evict_swa: bool = False,
        dtype=None,
    ):
        import collections

        from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool, SWATokenToKVPoolAllocator

        self.server_args = server_args()
        self.model = model
        self.device = DEVICE
        self.gpu_id = 0
        from sglang.srt.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        self.tp_rank, self.tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        self.page_size = 1
        if dtype is None:  # the model's dtype: that of most of its parameters' elements
            count = collections.Counter()
            for p in model.parameters():
                count[p.dtype] += p.numel()
            dtype = count.most_common(1)[0][0]
        self.dtype = dtype
        self.kv_cache_dtype = self.dtype
        self.layers = attention_layers(model)
        self.model_config = _ModelConfig(model, self.layers, self.dtype, context_len)
        # Attributes TritonAttnBackend / ForwardBatch.init_new look at.
        self.hybrid_gdn_config = None
        self.kimi_linear_config = None
        self.mambaish_config = None
        self.model_is_mrope = False
        self.use_mla_backend = False
        self.is_draft_worker = False
        self.spec_algorithm = None

        if sliding_window_size == "model":
            get = getattr(model, "get_attention_sliding_window_size", None)
            sliding_window_size = get() if get is not None else None
        self.sliding_window_size = sliding_window_size

        shapes = {i: (l.tp_k_head_num, l.qk_head_dim, l.v_head_dim) for i, l in self.layers.items()}
        swa_ids = [i for i, l in self.layers.items() if l.sliding_window_size is not None and l.sliding_window_size > -1]
        full_ids = [i for i in self.layers if i not in swa_ids]
        if kv_pool == "auto":
            kv_pool = "mha" if len(set(shapes.values())) == 1 else "swa"
        self.kv_pool_kind = kv_pool

        self.req_to_token_pool = ReqToTokenPool(
            size=max_reqs, max_context_len=context_len + 4, device=DEVICE, enable_memory_saver=False
        )
        layer_ids = sorted(self.layers)
        if layer_ids != list(range(len(layer_ids))):
            raise ValueError(f"attention layer ids are not 0..n-1: {layer_ids}")

        if kv_pool == "mha":
            if len(set(shapes.values())) != 1:
                raise ValueError(f"kv_pool='mha' needs one KV shape for all layers, got {shapes}")
            heads, kdim, vdim = shapes[layer_ids[0]]
            self.model_config.rank_kv_heads = heads
            self.token_to_kv_pool = MHATokenToKVPool(
                max_total_tokens,
                page_size=1,
                dtype=self.dtype,
                head_num=heads,
                head_dim=kdim,
                v_head_dim=vdim,
                layer_num=len(layer_ids),
                device=DEVICE,
                enable_memory_saver=False,
                enable_alt_stream=False,
            )
            self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(
                max_total_tokens, dtype=self.dtype, device=DEVICE, kvcache=self.token_to_kv_pool, need_sort=False
            )
        elif kv_pool == "swa":
            if not swa_ids or not full_ids:
                raise ValueError("kv_pool='swa' needs both sliding and full attention layers")
            full_shapes = {shapes[i] for i in full_ids}
            swa_shapes = {shapes[i] for i in swa_ids}
            if len(full_shapes) != 1 or len(swa_shapes) != 1:
                raise ValueError(f"SWAKVPool holds one shape per layer kind: full {full_shapes}, sliding {swa_shapes}")
            (fh, fk, fv), (sh, sk, sv) = full_shapes.pop(), swa_shapes.pop()
            # As SGLang's ModelConfig for a hybrid SWA model: the full layers' shape is the main
            # one, the sliding layers' the swa_* one.
            mc = self.model_config
            mc.is_hybrid_swa = True
            mc.swa_attention_layer_ids, mc.full_attention_layer_ids = swa_ids, full_ids
            mc.num_key_value_heads, mc.head_dim, mc.v_head_dim = fh, fk, fv
            mc.rank_kv_heads = fh  # fh, sh: this rank's heads (the layers' tp_k_head_num)
            mc.swa_num_key_value_heads, mc.swa_head_dim, mc.swa_v_head_dim = sh, sk, sv
            swa_total_tokens = swa_total_tokens or max_total_tokens
            self.token_to_kv_pool = SWAKVPool(
                size=max_total_tokens,
                size_swa=swa_total_tokens,
                page_size=1,
                dtype=self.dtype,
                head_num=fh,
                head_dim=fk,
                v_head_dim=fv,
                swa_head_num=sh,
                swa_head_dim=sk,
                swa_v_head_dim=sv,
                swa_attention_layer_ids=swa_ids,
                full_attention_layer_ids=full_ids,
                enable_kvcache_transpose=False,
                device=DEVICE,
                enable_alt_stream=False,
            )
            self.token_to_kv_pool_allocator = SWATokenToKVPoolAllocator(
                max_total_tokens,
                swa_total_tokens,
                page_size=1,
                dtype=self.dtype,
                device=DEVICE,
                kvcache=self.token_to_kv_pool,
                need_sort=False,
            )
        else:
            raise ValueError(f"kv_pool must be auto, mha or swa, not {kv_pool!r}")
        self.is_hybrid_swa = self.model_config.is_hybrid_swa
        self.evict_swa = evict_swa and self.is_hybrid_swa

        self.attn_backend = self._make_backend(attention_backend)
        self._captured = None
        self._hook = model.logits_processor.register_forward_hook(self._capture_logits_input, with_kwargs=True)

    def _make_backend(self, name: str):
        if name == "triton":
            from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

            return TritonAttnBackend(self)
        if name == "torch_native":
            from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

            return TorchNativeAttnBackend(self)
        raise ValueError(f"attention backend {name!r}: only 'triton' and 'torch_native' run on the CPU here")

    # -------------------------------------------------------------- logits of every position

    def _capture_logits_input(self, module, args, kwargs, output):
        names = ("input_ids", "hidden_states", "lm_head", "logits_metadata")
        got = dict(zip(names, args))
        got.update({k: v for k, v in kwargs.items() if k in names})
        self._captured = (module, got, output)

    def _all_logits(self):
        from sglang.srt.layers.logits_processor import LogitsMetadata

        module, got, output = self._captured
        meta = got["logits_metadata"]
        if not isinstance(meta, LogitsMetadata):
            meta = LogitsMetadata.from_forward_batch(meta)
        return module._get_logits(got["hidden_states"], got["lm_head"], meta), got["hidden_states"], output

    # -------------------------------------------------------------- scheduler bookkeeping

    def _new_req(self) -> Req:
        import torch

        if not self.req_to_token_pool.free_slots:
            raise RuntimeError("no free req_to_token slot; release requests or raise max_reqs")
        idx = self.req_to_token_pool.free_slots.pop(0)
        return Req(idx, [], torch.empty(0, dtype=torch.int64, device=DEVICE))

    def _alloc(self, n: int):
        locs = self.token_to_kv_pool_allocator.alloc(n)
        if locs is None:
            raise RuntimeError(f"KV pool out of slots for {n} tokens; raise max_total_tokens")
        return locs

    def _maybe_evict_swa(self, reqs: Sequence[Req], lens: Sequence[int]):
        """Free sliding-pool slots older than len - sliding_window_size (ScheduleBatch._evict_swa)."""
        if not self.evict_swa:
            return
        for r, n in zip(reqs, lens):
            upto = max(r.swa_evicted, n - self.sliding_window_size)
            if upto > r.swa_evicted:
                self.token_to_kv_pool_allocator.free_swa(r.kv_locs[r.swa_evicted : upto])
                r.swa_evicted = upto

    def release(self, reqs: Sequence[Req]):
        """Give a request's token slots and req_to_token row back."""
        for r in reqs:
            if r.kv_locs.numel():
                self.token_to_kv_pool_allocator.free(r.kv_locs)
            self.req_to_token_pool.free_slots.append(r.req_pool_idx)
            r.kv_locs = r.kv_locs[:0]
            r.token_ids = []
            r.swa_evicted = 0

    def reset(self):
        self.token_to_kv_pool_allocator.clear()
        self.req_to_token_pool.clear()

    # -------------------------------------------------------------- forward passes

    def _forward(self, worker_batch):
        import torch
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch

        fb = ForwardBatch.init_new(worker_batch, self)
        fb.prepare_attn_tp_scatter_input(self)
        # ModelRunner.forward_extend / forward_decode:
        self.attn_backend.init_forward_metadata(fb)
        self._captured = None
        with torch.no_grad():
            ret = self.model.forward(fb.input_ids, fb.positions, fb)
            if self._captured is None:
                raise RuntimeError("the model did not call its logits_processor")
            logits, hidden, output = self._all_logits()
        self._captured = None
        return fb, logits, hidden, output if output is not None else ret

    def extend(self, reqs: Sequence[Optional[Req]], new_token_ids: Sequence[Sequence[int]]) -> StepOutput:
        """One ForwardMode.EXTEND batch: request i (None: a new one) gets new_token_ids[i] appended.

        A request with cached tokens is extended with extend_prefix_lens = its cached length, as
        SGLang runs the next chunk of a chunked prefill; new and continued requests may be mixed.
        Returns the logits of every new token (one tensor per request).
        """
        import torch
        from sglang.srt.mem_cache.common import write_cache_indices
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        if len(reqs) != len(new_token_ids) or not reqs:
            raise ValueError("one list of new tokens per request, at least one request")
        if any(len(t) == 0 for t in new_token_ids):
            raise ValueError("every request needs at least one new token")
        reqs = [r if r is not None else self._new_req() for r in reqs]
        prefix_lens = [r.seq_len for r in reqs]
        extend_lens = [len(t) for t in new_token_ids]
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        self._maybe_evict_swa(reqs, prefix_lens)
        n = sum(extend_lens)
        out_cache_loc = self._alloc(n)

        i64 = dict(dtype=torch.int64, device=DEVICE)
        req_pool_indices = torch.tensor([r.req_pool_idx for r in reqs], **i64)
        prefix_lens_t = torch.tensor(prefix_lens, **i64)
        seq_lens_t = torch.tensor(seq_lens, **i64)
        extend_lens_t = torch.tensor(extend_lens, **i64)
        write_cache_indices(
            out_cache_loc,
            req_pool_indices,
            req_pool_indices,
            prefix_lens_t,
            prefix_lens_t,
            seq_lens_t,
            seq_lens_t,
            extend_lens_t,
            extend_lens_t,
            [r.kv_locs for r in reqs],
            self.req_to_token_pool,
        )
        batch = self._worker_batch(
            ForwardMode.EXTEND,
            input_ids=torch.tensor([t for ids in new_token_ids for t in ids], **i64),
            req_pool_indices=req_pool_indices,
            seq_lens=seq_lens_t,
            out_cache_loc=out_cache_loc,
            extend_num_tokens=n,
            extend_seq_lens=extend_lens,
            extend_prefix_lens=prefix_lens,
            extend_logprob_start_lens=list(extend_lens),
        )
        fb, logits, hidden, output = self._forward(batch)
        pos = 0
        for r, ids in zip(reqs, new_token_ids):
            r.kv_locs = torch.cat([r.kv_locs, out_cache_loc[pos : pos + len(ids)]])
            r.token_ids = r.token_ids + list(ids)
            pos += len(ids)
        per_seq = list(torch.split(logits, extend_lens))
        return StepOutput(per_seq, output.next_token_logits, list(reqs), fb, hidden)

    def prefill(self, token_ids: Sequence[Sequence[int]]) -> StepOutput:
        """New requests, whole prompts in one EXTEND batch (no prefix)."""
        return self.extend([None] * len(token_ids), token_ids)

    def decode_step(self, reqs: Sequence[Req], token_ids: Sequence[int]) -> StepOutput:
        """One ForwardMode.DECODE batch: token_ids[i] is appended to reqs[i]; logits [bs, vocab]."""
        import torch
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        if len(reqs) != len(token_ids) or not reqs:
            raise ValueError("one token per request, at least one request")
        old_lens = [r.seq_len for r in reqs]
        if min(old_lens) == 0:
            raise ValueError("decode needs requests with a cached prefix")
        self._maybe_evict_swa(reqs, old_lens)
        out_cache_loc = self._alloc(len(reqs))
        i64 = dict(dtype=torch.int64, device=DEVICE)
        req_pool_indices = torch.tensor([r.req_pool_idx for r in reqs], **i64)
        # alloc_for_decode: the new token's slot goes to req_to_token[req, old seq_len]
        self.req_to_token_pool.write((req_pool_indices, torch.tensor(old_lens, **i64)), out_cache_loc.to(torch.int32))
        batch = self._worker_batch(
            ForwardMode.DECODE,
            input_ids=torch.tensor(list(token_ids), **i64),
            req_pool_indices=req_pool_indices,
            seq_lens=torch.tensor([n + 1 for n in old_lens], **i64),
            out_cache_loc=out_cache_loc,
        )
        fb, logits, hidden, output = self._forward(batch)
        for i, (r, t) in enumerate(zip(reqs, token_ids)):
            r.kv_locs = torch.cat([r.kv_locs, out_cache_loc[i : i + 1]])
            r.token_ids = r.token_ids + [int(t)]
        return StepOutput(logits, output.next_token_logits, list(reqs), fb, hidden)

    def chunked_prefill(self, token_ids: Sequence[Sequence[int]], chunk_size: int) -> StepOutput:
        """Prefill the sequences chunk by chunk, as SGLang's chunked prefill: each step is one EXTEND
        batch holding the next chunk_size tokens of every sequence not yet done (prefix = what is
        cached).  Returns the logits of every position, one tensor per sequence, and the requests.
        """
        import torch

        reqs: list = [None] * len(token_ids)
        pieces: list = [[] for _ in token_ids]
        start = 0
        while any(start < len(t) for t in token_ids):
            live = [i for i, t in enumerate(token_ids) if start < len(t)]
            out = self.extend([reqs[i] for i in live], [token_ids[i][start : start + chunk_size] for i in live])
            for j, i in enumerate(live):
                reqs[i] = out.reqs[j]
                pieces[i].append(out.logits[j])
            start += chunk_size
        return StepOutput([torch.cat(p) for p in pieces], None, reqs, None, None)

    def _worker_batch(self, mode, *, input_ids, req_pool_indices, seq_lens, out_cache_loc, **extend):
        from sglang.srt.managers.schedule_batch import ModelWorkerBatch
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        fields = dict(
            forward_mode=mode,
            input_ids=input_ids,
            req_pool_indices=req_pool_indices,
            seq_lens=seq_lens,
            out_cache_loc=out_cache_loc,
            seq_lens_cpu=seq_lens.cpu(),
            seq_lens_sum=int(seq_lens.sum()),
            return_logprob=False,
            top_logprobs_nums=None,
            token_ids_logprobs=None,
            global_num_tokens=None,
            global_num_tokens_for_logprob=None,
            is_extend_in_batch=mode.is_extend(),
            can_run_dp_cuda_graph=False,
            tbo_split_seq_index=None,
            global_forward_mode=None,
            extend_num_tokens=None,
            extend_seq_lens=None,
            extend_prefix_lens=None,
            extend_logprob_start_lens=None,
            extend_input_logprob_token_ids=None,
            multimodal_inputs=None,
            encoder_cached=None,
            encoder_lens=None,
            encoder_lens_cpu=None,
            encoder_out_cache_loc=None,
            lora_ids=None,
            sampling_info=None,
            capture_hidden_mode=CaptureHiddenMode.NULL,
            spec_algorithm=SpeculativeAlgorithm.NONE,
        )
        fields.update(extend)
        return ModelWorkerBatch(**fields)


# ------------------------------------------------------------------------------ short forms


def runner_for(model_or_runner) -> CpuModelRunner:
    if isinstance(model_or_runner, CpuModelRunner):
        return model_or_runner
    r = getattr(model_or_runner, "_cpu_harness_runner", None)
    if r is None:
        r = CpuModelRunner(model_or_runner)
        object.__setattr__(model_or_runner, "_cpu_harness_runner", r)
    return r


def prefill(model_or_runner, token_ids):
    return runner_for(model_or_runner).prefill(token_ids)


def extend(model_or_runner, reqs, new_token_ids):
    return runner_for(model_or_runner).extend(reqs, new_token_ids)


def decode_step(model_or_runner, reqs, token_ids):
    return runner_for(model_or_runner).decode_step(reqs, token_ids)


def chunked_prefill(model_or_runner, token_ids, chunk_size):
    return runner_for(model_or_runner).chunked_prefill(token_ids, chunk_size)
