"""tools/gemma4_export_hf.py (slime `gemma4` series): a Megatron distributed checkpoint of a
trained Gemma4, as slime saves it, to a Hugging Face folder that transformers loads; its logits
are the Megatron model's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from g4util import CONFIGS, rel_max


def _tool() -> Path:
    import slime_plugins.models.gemma4 as pkg

    tool = Path(pkg.__file__).resolve().parents[3] / "tools" / "gemma4_export_hf.py"
    if not tool.is_file():
        pytest.skip(f"no {tool}")
    return tool


def _export(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(_tool()), *args], env=env, capture_output=True, text=True, timeout=600)


def _trained_checkpoint(tmp_path, kind, monkeypatch):
    """The HF checkpoint a run starts from, and slime's save folder after 'training': the Megatron
    model loaded from it, every parameter moved, saved by Megatron's dist_checkpointing."""
    from megatron.core import dist_checkpointing

    cfg = CONFIGS[kind]
    hf = g4util.hf_model(cfg)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    model, settings = g4util.megatron_model(cfg)
    g4util.load_from_hf(model, settings, hf.state_dict())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    save = tmp_path / "save"
    (save / "iter_0000007").mkdir(parents=True)
    g4util.cpu_checkpoint_writer(monkeypatch.setattr)
    dist_checkpointing.save(model.sharded_state_dict(), str(save / "iter_0000007"))
    (save / "latest_checkpointed_iteration.txt").write_text("7")
    return hf, hf_dir, model, settings, save


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_the_export_loads_in_transformers_with_the_trained_models_logits(mpu, tmp_path, kind, monkeypatch):
    from transformers import Gemma4ForCausalLM

    hf, hf_dir, model, settings, save = _trained_checkpoint(tmp_path, kind, monkeypatch)
    out = tmp_path / "export"
    res = _export("--load", str(save), "--hf-checkpoint", str(hf_dir), "--out", str(out), "--dtype", "float32")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "iter_0000007" in res.stdout and (out / "config.json").is_file()
    exported = Gemma4ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, settings.vocab_size, (2, 19), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(input_ids=ids, position_ids=None, attention_mask=None)
        theirs = exported(ids).logits
        before = hf(ids).logits
    assert rel_max(theirs, ours) < 1e-5
    assert rel_max(before, ours) > 1e-3  # control: the untrained checkpoint is told apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf", "save"]  # no partial folder left


def test_an_export_never_overwrites_and_names_what_is_missing(mpu, tmp_path, monkeypatch):
    _, hf_dir, _, _, save = _trained_checkpoint(tmp_path, "dense", monkeypatch)
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = _export("--load", str(save), "--hf-checkpoint", str(hf_dir), "--out", str(out))
    assert res.returncode == 2 and "exists and is not empty" in res.stderr, res.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (save / "latest_checkpointed_iteration.txt").unlink()
    res = _export("--load", str(save), "--hf-checkpoint", str(hf_dir), "--out", str(tmp_path / "new"))
    assert res.returncode == 2 and "latest_checkpointed_iteration.txt is missing" in res.stderr, res.stderr
    res = _export("--load", str(save), "--hf-checkpoint", str(hf_dir), "--out", str(tmp_path / "new"), "--iteration", "9")
    assert res.returncode == 2 and "iter_0000009" in res.stderr, res.stderr
    assert not (tmp_path / "new").exists()
