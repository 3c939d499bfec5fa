"""The shipped series against the real pinned upstreams.

SGLang comes from its PyPI sdist (reachable wherever pip is). slime and Megatron-LM come from
UPSTREAM_<NAME>_GIT, the cache, or GitHub; where none is reachable the tests that need them are
skipped with the reason, never passed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO, corrupt_context, file_patch, run_git, tool

from patchstack import check, diff, engine, manifest, sources
from patchstack.errors import SourceUnavailable


@pytest.fixture(scope="module")
def real():
    return manifest.load(REPO)


def _source_or_skip(m, name, **kw):
    try:
        return sources.source(m.upstream(name), **kw)
    except SourceUnavailable as e:
        pytest.skip(f"{name} source unreachable: {e.message}")


@pytest.mark.parametrize("gemma4", [False, True])
@pytest.mark.parametrize("name", ["sglang", "megatron", "slime"])
def test_shipped_series_fit_their_pins(real, name, gemma4):
    _source_or_skip(real, name)
    ups = {e.external_upstream for e in check.series.load(real, name).entries if e.is_external}
    for other in ups:
        _source_or_skip(real, other)
    rep = check.check_series(real, name, real.select_groups(frozenset({"gemma4"} if gemma4 else ())))
    assert rep.status == engine.FITS, check.format_human([rep])
    assert all(e.status == engine.FITS for e in rep.entries)


def test_engine_matches_git_apply_on_slimes_sglang_patch(real, tmp_path):
    """slime's 3216-line SGLang patch applied by our engine and by git apply gives the same files."""
    sgl = _source_or_skip(real, "sglang", prefer_sdist=True)
    slime = _source_or_skip(real, "slime")
    data = slime.tree.read("docker/patch/v0.5.9/sglang.patch")
    patch = diff.parse("sglang.patch", data)
    assert (len(patch.files), patch.hunk_count) == (49, 167)  # FACTS.md
    res = engine.apply_patch(patch, sgl.tree)
    assert res.status == engine.FITS
    wt = tmp_path / "wt"
    run_git(tmp_path, "--git-dir", str(sgl.tree.git_dir), "worktree", "add", "-q", "--detach", str(wt), sgl.commit)
    try:
        subprocess.run(["git", "apply", "-"], cwd=wt, input=data, check=True)
        for path, (_, content) in res.changes.items():
            assert (wt / path).read_bytes() == content, path
    finally:
        run_git(tmp_path, "--git-dir", str(sgl.tree.git_dir), "worktree", "remove", "--force", str(wt))


def test_corrupted_hunk_against_real_sglang_is_named(real, tmp_path, monkeypatch):
    """A patch of ours against the real SGLang sdist, with one context line corrupted: check names it."""
    sgl = _source_or_skip(real, "sglang", prefer_sdist=True)
    target = "python/sglang/srt/configs/model_config.py"
    text = sgl.tree.read(target).decode()
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if n > 200 and line.strip().startswith("self."))
    lines.insert(i, "        # gemma4 stack: marker line\n")
    body = file_patch(tmp_path, target, text, "".join(lines))
    corrupted, ctx = corrupt_context(body)
    header = "Subject: [PATCH] Marker\n\nUpstream-Status: environment test\n---\n"

    root = tmp_path / "stack"
    shutil.copytree(REPO / "patches", root / "patches")
    folder = root / "patches" / "sglang" / real.upstream("sglang").version
    (folder / "0001-marker.patch").write_text(header + corrupted)
    (folder / "series").write_text("[base]\n0001-marker.patch\n[gemma4]\n")
    monkeypatch.setenv("PATCHSTACK_ROOT", str(root))
    code, out, _ = tool("check", "sglang")
    assert code == 1, out
    assert "FAILS     [base] 0001-marker.patch" in out
    assert f"{target}: hunk 1 of 1 @@" in out
    assert f"| {ctx[1:]}  # corrupted" in out and f"| {ctx[1:]}" in out
    # The uncorrupted patch fits.
    (folder / "0001-marker.patch").write_text(header + body)
    code, out, _ = tool("check", "sglang")
    assert code == 0, out


@pytest.mark.parametrize("name", ["sglang", "megatron", "slime"])
def test_workspace_then_export_round_trips_every_shipped_series(real, name, tmp_path, monkeypatch):
    """make workspace + make export on a shipped series changes no byte of patches/."""
    _source_or_skip(real, name)
    for other in {e.external_upstream for e in check.series.load(real, name).entries if e.is_external}:
        _source_or_skip(real, other)
    root = tmp_path / "stack"
    shutil.copytree(REPO / "patches", root / "patches")
    monkeypatch.setenv("PATCHSTACK_ROOT", str(root))
    code, out, err = tool("workspace", name, "--gemma4")
    assert code == 0, err
    code, out, err = tool("export", name)
    assert code == 0, err
    assert "EXTERNAL" not in out
    before = {p.relative_to(REPO): p.read_bytes() for p in (REPO / "patches").rglob("*") if p.is_file()}
    after = {p.relative_to(root): p.read_bytes() for p in (root / "patches").rglob("*") if p.is_file()}
    assert after == before
