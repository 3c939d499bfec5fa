"""The Makefile's own checks (it only drives the tool; everything else is tested on the tool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n: print the commands, run none (the venv is not built, nothing is fetched)
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.mark.parametrize("value", ["yes", "true", "2", ""])
def test_gemma4_other_than_0_or_1_is_refused(value):
    res = _make("check", f"GEMMA4={value}")
    assert res.returncode != 0
    assert f"GEMMA4 must be 0 or 1, not '{value}'" in res.stderr


@pytest.mark.parametrize("value,flag", [("1", "--gemma4"), ("0", "")])
def test_gemma4_0_and_1_select_the_groups(value, flag):
    res = _make("check", f"GEMMA4={value}")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "patchstack check" in ln)
    assert line.split("patchstack check", 1)[1].strip() == flag


def test_help_lists_every_target():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "help"], capture_output=True, text=True)
    assert res.returncode == 0
    listed = {ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("  make ")}
    phony = (REPO / "Makefile").read_text().split(".PHONY:", 1)[1].splitlines()[0].split()
    assert set(phony) - {"venv"} <= listed, set(phony) - listed


def test_image_settings_reach_the_tool():
    res = _make("image", "GEMMA4=1", "BASE_IMAGE=my/base:1", "TILELANG_VERSION=0.1.9",
                "GEMMA4_PACKAGES=a==1 b==2", "SGLANG_ROUTER_SHA256=ab12")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "patchstack image" in ln)
    for part in ("--gemma4", "--base-image 'my/base:1'", "--build-arg 'TILELANG_VERSION=0.1.9'",
                 "--build-arg 'GEMMA4_PACKAGES=a==1 b==2'", "--build-arg 'SGLANG_ROUTER_SHA256=ab12'"):
        assert part in line, (part, line)


def test_image_deps_and_deps_image_reach_the_tool():
    """`make image-deps` is one call of the tool with the same settings as `make image`; DEPS_IMAGE
    and the mirror settings reach `make image` as build arguments."""
    res = _make("image-deps", "GEMMA4=1", "SMOKE=1", "BASE_IMAGE=r.example/sglang:1", "FA3_GIT=https://g.example/fa.git")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "patchstack image-deps" in ln)
    for part in ("--gemma4", "--smoke", "--base-image 'r.example/sglang:1'", "--build-arg 'FA3_GIT=https://g.example/fa.git'"):
        assert part in line, (part, line)
    res = _make("image", "DEPS_IMAGE=r.example/gemma4-stack-deps:0123", "PIP_INDEX_URL=https://p.example/simple")
    line = next(ln for ln in res.stdout.splitlines() if "patchstack image" in ln)
    assert "--build-arg 'DEPS_IMAGE=r.example/gemma4-stack-deps:0123'" in line
    assert "--build-arg 'PIP_INDEX_URL=https://p.example/simple'" in line


def test_help_lists_the_image_settings_with_their_defaults():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "help"], capture_output=True,
                         text=True).stdout
    import re

    defaults = dict(re.findall(r"^ARG (\w+)=(.*)$", (REPO / "docker" / "Dockerfile").read_text(), re.M))
    for name in ("TILELANG_VERSION", "BASE_IMAGE", "TE_VERSION", "FA3_GIT", "PIP_INDEX_URL", "DEPS_IMAGE"):
        assert f"  {name}={defaults[name]}" in out
    assert "  GEMMA4=" not in out and "  OFFLINE=" not in out


def test_distclean_removes_only_what_the_project_made(tmp_path):
    """Run for real on a scratch copy of the Makefile: the cache's own folders go, a stranger's
    file beside them stays, and nothing outside the given cache is named."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path / "clone"
    (work / "docker").mkdir(parents=True)
    shutil.copyfile(REPO / "Makefile", work / "Makefile")
    shutil.copyfile(REPO / "docker" / "Dockerfile", work / "docker" / "Dockerfile")
    (work / "out").mkdir()
    (work / "build" / "gemma4_stack_patchstack.egg-info").mkdir(parents=True)
    cache = tmp_path / "cache"
    for d in ("git", "locks", "rootfs", "sdist"):
        (cache / d).mkdir(parents=True)
    (cache / "not-ours.txt").write_text("keep me")
    # a PATH without docker: the test must not remove anybody's images
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("rm", "rmdir", "sed", "sort", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PATCHSTACK_CACHE": str(cache)}
    res = subprocess.run([shutil.which("make"), "-C", str(work), "distclean"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert not (work / "out").exists() and not list((work / "build").glob("*.egg-info"))
    assert sorted(p.name for p in cache.iterdir()) == ["not-ours.txt"]
    assert "no Docker engine answers: smoke images, if any, are left" in res.stdout
