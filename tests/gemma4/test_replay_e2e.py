"""Rollout routing replay end to end: SGLang's capture -> slime's rollout -> slime's actor ->
the Gemma4 router (replay_e2e_check.py says each step). Needs the whole patched slime tree and
Megatron with slime's patch, so it runs on the pinned trees (tests/test_gemma4_pinned.py)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import g4util

HERE = Path(__file__).resolve().parent


def test_what_sglang_records_is_what_the_gemma4_router_replays(tmp_path):
    from megatron.core.transformer.moe import moe_utils

    if not g4util.importable("slime.rollout.sglang_rollout"):
        pytest.skip("slime's rollout and actor are not here (materialised Gemma4 modules only): "
                    "runs on the patched pinned trees (tests/test_gemma4_pinned.py)")
    if "routing_replay" not in inspect.getsource(moe_utils):
        pytest.skip("megatron-core without slime's Megatron patch: runs on the pinned trees")
    sys.path.insert(0, str(HERE.parent / "sglang_gemma4"))
    import sgltree

    built = sgltree.build_or_skip()
    import slime_plugins.models.gemma4 as pkg

    env = dict(os.environ, SGLANG_TREE=str(built.path), TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               GEMMA4_SLIME_TREE=str(Path(pkg.__file__).resolve().parents[3]))
    res = subprocess.run([sys.executable, str(HERE / "replay_e2e_check.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    print(res.stdout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert res.stdout.strip().endswith("OK")
    assert f"{g4util.CONFIGS['moe']['num_hidden_layers']} MoE layers filled" in res.stdout
    assert "(tokens - 1, layers, top-k)" in res.stdout and ", 8) (tokens - 1" in res.stdout  # top 8
