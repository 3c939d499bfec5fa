"""The Gemma4 suite (tests/gemma4) again, on the fully patched pinned trees.

tests/gemma4 runs on megatron-core from PyPI with the Gemma4 modules materialised from the
patches, which needs no upstream source. Where slime and Megatron-LM are reachable, this
checks out both pins, applies their whole series (slime's own Megatron patch and the gemma4
group) with `patchstack apply`, and runs the same suite against those trees. Skipped, with
the reason, where a source is unreachable.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, run_git

from patchstack import manifest, sources
from patchstack.errors import SourceUnavailable


def _pinned_tree(name, dest):
    try:
        src = sources.source(manifest.load(REPO).upstream(name))
    except SourceUnavailable as e:
        pytest.skip(f"{name} source unreachable: {e.message}")
    run_git(dest.parent, "--git-dir", str(src.tree.git_dir), "worktree", "add", "-q", "--detach", str(dest), src.commit)
    res = subprocess.run([sys.executable, "-m", "patchstack", "apply", name, "--tree", str(dest), "--gemma4"],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO / "build")), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return src


@pytest.mark.upstream
def test_gemma4_suite_passes_on_the_patched_pinned_trees(tmp_path):
    trees = {}
    try:
        for name in ("megatron", "slime"):
            trees[name] = (_pinned_tree(name, tmp_path / name), tmp_path / name)
        env = dict(os.environ, GEMMA4_SLIME_TREE=str(tmp_path / "slime"),
                   GEMMA4_MEGATRON_TREE=str(tmp_path / "megatron"))
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                              str(REPO / "tests" / "gemma4")], cwd=tmp_path, env=env, capture_output=True, text=True)
        tail = res.stdout[-4000:]
        assert res.returncode == 0, tail + res.stderr[-2000:]
        assert "skipped" not in tail.splitlines()[-1], tail  # the replay and provider tests ran too
        print(tail.splitlines()[-1])
    finally:
        for src, path in trees.values():
            run_git(tmp_path, "--git-dir", str(src.tree.git_dir), "worktree", "remove", "--force", str(path))
