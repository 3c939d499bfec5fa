"""Gemma4's config and tokenizer on transformers 4.57.1, the version SGLang v0.5.9 pins and the
image keeps (the rest of the suite runs transformers 5 as the numerical reference).

transformers 4.57.1 with the tokenizers and huggingface-hub it needs is installed from PyPI into
out/tf457 (pinned, --no-deps) and put first on the path of a child process that runs
tf457_check.py against the patched SGLang tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "gemma4"))
TARGET = ROOT / "out" / "tf457"
# protobuf: transformers 4.57.1 imports it while reporting a tokenizer that fails to load
PINS = ["transformers==4.57.1", "tokenizers==0.22.2", "huggingface-hub==0.36.2", "protobuf==6.33.6"]

import sgltree  # noqa: E402


def _install() -> None:
    stamp = TARGET / ".pins"
    if stamp.is_file() and stamp.read_text() == "\n".join(PINS):
        return
    print(f"installing {' '.join(PINS)} into {TARGET} (once)", flush=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                          "--target", str(TARGET), *PINS], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"could not install {' '.join(PINS)} from PyPI: {res.stderr.strip()[-500:]}")
    stamp.write_text("\n".join(PINS))


def test_gemma4_config_and_tokenizer_on_transformers_4_57_1(tmp_path):
    built = sgltree.build_or_skip()
    _install()
    import g4util

    cfg = dict(g4util.CONFIGS["dense"], vocab_size=192)  # K=V: 1 global KV head, 2 sliding
    config = g4util.config_json(cfg, "conditional_generation")
    env = dict(os.environ, SGLANG_TREE=str(built.path), TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(TARGET), str(HERE)]))
    res = subprocess.run([sys.executable, str(HERE / "tf457_check.py"), str(tmp_path), json.dumps(config)],
                         env=env, capture_output=True, text=True, timeout=600)
    print(res.stdout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert res.stdout.strip().endswith("OK")


def test_slime_and_sglang_load_one_gemma4_tokenizer_on_transformers_4_57_1(tmp_path):
    """slime's tokenizer loading (training, rollout, data) on the image's transformers, and the
    same tokens as SGLang's: the two carry one rule (tokenizer_compat_kwargs in slime, the
    SGLang series' _tokenizer_compat_kwargs), and this keeps them in step."""
    built = sgltree.build_or_skip()
    _install()
    import g4util

    check = HERE.parent / "gemma4" / "tok457_check.py"
    env = dict(os.environ, SGLANG_TREE=str(built.path), TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(TARGET), str(HERE)]))
    if "GEMMA4_SLIME_TREE" not in env:
        env["GEMMA4_SLIME_TREE"] = str(g4util.MATERIALISED)
    res = subprocess.run([sys.executable, str(check), str(tmp_path / "tok")], env=env, capture_output=True,
                         text=True, timeout=600)
    print(res.stdout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert res.stdout.strip().endswith("OK")
    assert "SGLang get_tokenizer: the same special tokens and the same ids" in res.stdout
