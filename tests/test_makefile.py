"""The Makefile's own checks (it only drives the tool; everything else is tested on the tool)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    res = subprocess.run([shutil.which("make"), "-C", str(REPO), "--no-print-directory", "help"], capture_output=True, text=True)
    assert res.returncode == 0
    listed = {ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("  make ")}
    phony = (REPO / "Makefile").read_text().split(".PHONY:", 1)[1].splitlines()[0].split()
    assert set(phony) - {"venv", "tool-venv", "preflight"} <= listed, set(phony) - listed


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
    out = subprocess.run([shutil.which("make"), "-C", str(REPO), "--no-print-directory", "help"], capture_output=True,
                         text=True).stdout
    import re

    defaults = dict(re.findall(r"^ARG (\w+)=(.*)$", (REPO / "docker" / "Dockerfile").read_text(), re.M))
    for name in ("TILELANG_VERSION", "BASE_IMAGE", "TE_VERSION", "FA3_GIT", "PIP_INDEX_URL", "DEPS_IMAGE"):
        assert f"  {name}={defaults[name]}" in out
    assert "  GEMMA4=" not in out and "  OFFLINE=" not in out


def _scratch_clone(tmp_path: Path, name: str = "clone") -> Path:
    """The files the Makefile reads outside the tool's own code, in a folder of their own."""
    work = tmp_path / name
    (work / "docker").mkdir(parents=True)
    (work / "build" / "patchstack").mkdir(parents=True)
    shutil.copyfile(REPO / "Makefile", work / "Makefile")
    shutil.copyfile(REPO / "pyproject.toml", work / "pyproject.toml")
    shutil.copyfile(REPO / "docker" / "Dockerfile", work / "docker" / "Dockerfile")
    shutil.copyfile(REPO / "build" / "patchstack" / "preflight.py", work / "build" / "patchstack" / "preflight.py")
    return work


def _tools_path(tmp_path: Path, *extra: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("rm", "rmdir", "sed", "sort", "grep", "find", *extra):
        if shutil.which(tool) and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    if not (bin_dir / "python3").exists():  # the interpreter itself (a pyenv shim would need more)
        (bin_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    return str(bin_dir)


@pytest.mark.parametrize("setting,says", [
    ("TE_VERISON=2.9", "unknown setting TE_VERISON (did you mean TE_VERSION?): nothing was run"),
    ("FOO=1", "unknown setting FOO: nothing was run"),
])
def test_unknown_settings_are_refused_before_anything_runs(tmp_path, setting, says):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = _scratch_clone(tmp_path)
    for target in ("image", "check", "test"):
        res = subprocess.run([shutil.which("make"), "-C", str(work), target, "GEMMA4=1", setting], capture_output=True,
                             text=True, env={"PATH": _tools_path(tmp_path), "HOME": str(tmp_path)})
        assert res.returncode != 0 and says in res.stderr, res.stderr
        assert not (work / "out").exists(), "nothing may be installed before the refusal"
    # the settings make does read, and the tool's own variables, pass
    res = _make("image", "TE_VERSION=2.9", "UPSTREAM_SLIME_GIT=/m/slime.git", "PATCHSTACK_CACHE=/c")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("tag,says", [("bad tag", "it has white space"), ("Bad!Tag", "it is not a Docker reference"),
                                      ("-x", "it is not a Docker reference")])
def test_a_bad_tag_is_refused_before_any_install(tmp_path, tag, says):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = _scratch_clone(tmp_path)
    res = subprocess.run([shutil.which("make"), "-C", str(work), "image", f"TAG={tag}"], capture_output=True, text=True,
                         env={"PATH": _tools_path(tmp_path), "HOME": str(tmp_path)})
    assert res.returncode != 0, res.stdout
    assert f"TAG={tag!r} is not a valid image tag: {says}" in res.stderr
    assert not (work / "out").exists()


@pytest.mark.parametrize("tag", ["mine", "v1.2_rc-3", "gemma4-stack:mine", "registry.example.com:5000/team/g4:v1"])
def test_good_tags_pass_the_preflight(tmp_path, tag):
    res = subprocess.run(["python3", str(REPO / "build" / "patchstack" / "preflight.py")], capture_output=True,
                         text=True, env={"PATH": _tools_path(tmp_path), "TAG": tag})
    assert res.returncode == 0, res.stderr


def test_an_old_python_is_refused_naming_the_version_and_PYTHON(tmp_path):
    import re

    sys.path.insert(0, str(REPO / "build" / "patchstack"))
    try:
        import preflight
    finally:
        sys.path.pop(0)
    req = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert preflight.MIN_PYTHON == (int(req.group(1)), int(req.group(2))), "preflight and pyproject disagree"
    msg = preflight.python_problem((3, 10, 12))
    assert "Python 3.10.12 is too old: the tool needs 3.11 or newer" in msg and "make PYTHON=python3.11" in msg
    assert preflight.python_problem((3, 11, 0)) is None
    # A Python that says it is 3.10: make stops at the preflight, before any environment exists.
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = _scratch_clone(tmp_path)
    fake = tmp_path / "python3.10"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"import sys; sys.version_info = (3, 10, 12); "
                    f"sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())\" \"$@\"\n")
    fake.chmod(0o755)
    for target in ("check", "test"):
        res = subprocess.run([shutil.which("make"), "-C", str(work), target, f"PYTHON={fake}"], capture_output=True, text=True,
                             env={"PATH": _tools_path(tmp_path), "HOME": str(tmp_path)})
        assert res.returncode != 0 and "Python 3.10.12 is too old" in res.stderr, res.stderr
        assert not (work / "out").exists(), "a half-made environment was left"


def test_clean_keeps_the_installed_environments(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = _scratch_clone(tmp_path)
    for d in ("venv/bin", "tool-venv/bin", "workspace/sglang", "image/context"):
        (work / "out" / d).mkdir(parents=True)
    res = subprocess.run([shutil.which("make"), "-C", str(work), "clean"], capture_output=True, text=True,
                         env={"PATH": _tools_path(tmp_path), "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == ["tool-venv", "venv"]
    assert "kept out/venv" in res.stdout and "kept out/tool-venv" in res.stdout


def test_distclean_removes_only_what_the_project_made(tmp_path):
    """Run for real on a scratch copy of the Makefile: the source cache stays unless CACHE=1 (it is
    shared by every clone); then only the cache's own folders go, a stranger's file beside them stays."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = _scratch_clone(tmp_path)
    (work / "out" / "venv").mkdir(parents=True)
    (work / "build" / "gemma4_stack_patchstack.egg-info").mkdir(parents=True)
    cache = tmp_path / "cache"
    for d in ("git", "locks", "rootfs", "sdist"):
        (cache / d).mkdir(parents=True)
    (cache / "not-ours.txt").write_text("keep me")
    # a PATH without docker: the test must not remove anybody's images
    env = {"PATH": _tools_path(tmp_path), "HOME": str(tmp_path), "PATCHSTACK_CACHE": str(cache)}
    res = subprocess.run([shutil.which("make"), "-C", str(work), "distclean"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert not (work / "out").exists() and not list((work / "build").glob("*.egg-info"))
    assert sorted(p.name for p in cache.iterdir()) == ["git", "locks", "not-ours.txt", "rootfs", "sdist"]
    assert "kept the source cache" in res.stdout
    assert "no Docker engine answers: this clone's images, if any, are left" in res.stdout
    res = subprocess.run([shutil.which("make"), "-C", str(work), "distclean", "CACHE=1"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["not-ours.txt"]


def _docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def test_distclean_removes_this_clones_images_and_a_second_clones_survive(tmp_path):
    """Two clones on one Docker engine, each with a smoke-named image labelled as make does: the
    first clone's distclean removes its own, and the second clone's image survives."""
    if shutil.which("make") is None or not _docker_ok():
        pytest.skip("needs make and a Docker engine")
    first, second = _scratch_clone(tmp_path, "first"), _scratch_clone(tmp_path, "second")
    ids = {}
    for clone in (first, second):
        ids[clone] = subprocess.run([sys.executable, str(clone / "build" / "patchstack" / "preflight.py"),
                                     "clone-id"], capture_output=True, text=True, check=True).stdout.strip()
    assert ids[first] != ids[second]
    empty = tmp_path / "empty.tar"
    subprocess.run(["tar", "-cf", str(empty), "-T", "/dev/null"], check=True)
    tags = {first: f"gemma4-stack-smoke:distclean-test-{ids[first]}",
            second: f"gemma4-stack-smoke:distclean-test-{ids[second]}"}
    try:
        for clone, tag in tags.items():
            subprocess.run(["docker", "import", "--change", f"LABEL io.github.gemma4-stack.clone={ids[clone]}",
                            "--change", f"LABEL distclean-test={tmp_path.name}", str(empty), tag],
                           check=True, capture_output=True)
        env = {"PATH": _tools_path(tmp_path, "docker"), "HOME": str(tmp_path),
               "PATCHSTACK_CACHE": str(tmp_path / "cache"), **{k: v for k, v in __import__("os").environ.items()
                                                              if k.startswith("DOCKER_")}}
        res = subprocess.run([shutil.which("make"), "-C", str(first), "distclean"], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        assert tags[first] in res.stdout
        have = lambda t: subprocess.run(["docker", "image", "inspect", t], capture_output=True).returncode == 0  # noqa: E731
        assert not have(tags[first]), "the clone's own image is left"
        assert have(tags[second]), "another clone's image was removed"
    finally:
        for tag in tags.values():
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_the_tool_environment_has_no_torch_and_make_check_and_lint_run_in_it(tmp_path):
    """The light tool environment, installed for real (from the package index, seconds): every target
    but `test` uses it; it has the tool's two packages and not the test stack."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path / "clone"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns("out", ".git", "*.egg-info", "__pycache__"))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("UPSTREAM_", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path), PATCHSTACK_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([shutil.which("make"), "-C", str(work), "lint"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "out" / "tool-venv" / ".installed").exists() and not (work / "out" / "venv").exists()
    py = str(work / "out" / "tool-venv" / "bin" / "python")
    for mod in ("torch", "transformers", "megatron", "triton", "selenium", "pytest"):
        probe = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{mod} is in the tool's environment"
    assert subprocess.run([py, "-c", "import unidiff, docker"]).returncode == 0
    # check runs in it: offline with an empty cache nothing can be checked, and it says so (exit 3)
    res = subprocess.run([shutil.which("make"), "-C", str(work), "check", "GEMMA4=1", "ARGS=--offline"], capture_output=True,
                         text=True, env=env)
    assert res.returncode != 0 and "INCOMPLETE (exit 3)" in res.stdout, res.stdout + res.stderr
    assert "Summary: 3 series" in res.stdout
    # make image with no source reachable (empty home and cache, mirrors that do not exist): it stops
    # before any Docker step and any install of the test stack, naming each unreachable source once
    env.update(UPSTREAM_SLIME_GIT=str(tmp_path / "no-slime"), UPSTREAM_MEGATRON_GIT=str(tmp_path / "no-megatron"))
    res = subprocess.run([shutil.which("make"), "-C", str(work), "image", "GEMMA4=1"], capture_output=True,
                         text=True, env=env)
    said = res.stdout + res.stderr
    assert res.returncode != 0, said
    for name, var in (("slime", "UPSTREAM_SLIME_GIT"), ("megatron", "UPSTREAM_MEGATRON_GIT")):
        assert said.count(f"set {var}=") == 1, (var, said)
    assert not (work / "out" / "venv").exists(), "make image installed the test stack"
