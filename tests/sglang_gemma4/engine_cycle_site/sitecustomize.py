"""The negative control of engine_cycle.py (--control stale-rope), loaded by Python at start-up in
SGLang's processes when this folder is first on PYTHONPATH: it puts back the defect the series fixed,
Gemma4's RoPE frequencies held in a plain dict instead of registered buffers. Made at model init
inside SGLang's weights memory region, they are released with the weights and not restored, so from
the second rollout on RoPE reads whatever the resumed memory holds. The cycle's gap check must fail.
Test-only; never in the image."""

import importlib.abc
import importlib.util
import os
import sys

TARGET = "sglang.srt.models.gemma4_causal"


def _break(module):
    import torch

    rope = module.Gemma4Rope
    init = rope.__init__

    def __init__(self, config):
        init(self, config)
        plain = {k: self._buffers.pop(k) for k in ("inv_freq_sliding", "inv_freq_full")}
        object.__setattr__(self, "_plain", plain)

    def forward(self, positions, dtype):
        out = {}
        for kind, key in ((module.SLIDING, "inv_freq_sliding"), (module.FULL, "inv_freq_full")):
            freqs = positions.float()[:, None] * self._plain[key].to(positions.device)[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            out[kind] = (emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :])
        return out

    rope.__init__, rope.forward = __init__, forward
    print(f"[control stale-rope] pid {os.getpid()}: Gemma4Rope keeps its frequencies outside buffers", flush=True)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _break(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("GEMMA4_CYCLE_CONTROL") == "stale-rope":
    sys.meta_path.insert(0, _Hook())
