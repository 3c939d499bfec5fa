"""The image: the build plan without Docker (groups, arguments, labels, tag), and, where a Docker
engine and debootstrap are here, the offline smoke build stopping at a patch that does not fit."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from conftest import REPO, corrupt_context, file_patch, numbered, run_git, tool

from patchstack import cli, image, manifest, sources
from patchstack.errors import SourceUnavailable, StackError

FILE = numbered(30)


def _stack(world):
    """Three synthetic upstreams named like the real ones, an external patch and a gemma4 patch."""
    sgl = world.upstream("sglang", {"python/a.py": FILE})
    mg = world.upstream("megatron", {"core.py": FILE})
    ext = mg.diff({"core.py": FILE.replace("line 3\n", "three\n")})
    world.upstream("slime", {"docker/megatron.patch": ext, "requirements.txt": "ray\n"})
    world.add_external("megatron", "slime:docker/megatron.patch", hashlib.sha256(ext.encode()).hexdigest())
    world.add_patch("sglang", "0001-gemma4.patch", sgl.diff({"python/a.py": FILE.replace("line 9\n", "g4\n")}),
                    group="gemma4")
    (world.root / "docker").mkdir()
    shutil.copyfile(REPO / "docker" / "Dockerfile", world.root / "docker" / "Dockerfile")
    return sgl, mg


def test_plan_selects_groups_and_sets_arguments(world):
    _stack(world)
    m = manifest.load()
    off = image.make_plan(m, gemma4=False, commit="c0ffee")
    on = image.make_plan(m, gemma4=True, commit="c0ffee")
    assert off.groups == ["base"] and on.groups == ["base", "gemma4"]
    assert [n for _, n, _ in off.trees["sglang"].entries] == []
    assert [n for _, n, _ in on.trees["sglang"].entries] == ["0001-gemma4.patch"]
    assert off.build_args == {"BASE_IMAGE": "slimerl/sglang:v0.5.9", "OFFLINE": "0", "GEMMA4": "0", "ALLOW_SKIP": "0"}
    assert on.build_args["GEMMA4"] == "1"
    smoke = image.make_plan(m, gemma4=True, smoke=True, base_image="local/base:1", commit="c0ffee")
    assert smoke.build_args["OFFLINE"] == "1" and smoke.build_args["BASE_IMAGE"] == "local/base:1"
    assert smoke.tag.startswith("gemma4-stack-smoke:")


def test_labels_name_every_pin_and_the_sha256_of_every_applied_patch(world):
    sgl, mg = _stack(world)
    m = manifest.load()
    plan = image.make_plan(m, gemma4=True, commit="c0ffee")
    lab = plan.labels
    ns = image.NS
    assert lab["org.opencontainers.image.revision"] == "c0ffee"
    assert lab[f"{ns}.gemma4"] == "1" and lab[f"{ns}.groups"] == "base,gemma4"
    for name in ("sglang", "megatron", "slime"):
        assert lab[f"{ns}.{name}.pin"] == world.upstreams[name].pin
        assert lab[f"{ns}.{name}.status"] == "applied"
    ours = (world.folder("sglang") / "0001-gemma4.patch").read_bytes()
    assert lab[f"{ns}.sglang.patch.1"] == f"gemma4 0001-gemma4.patch sha256={hashlib.sha256(ours).hexdigest()}"
    ext = world.upstreams["slime"].read("docker/megatron.patch").encode()
    assert lab[f"{ns}.megatron.patch.1"] == \
        f"base slime:docker/megatron.patch sha256={hashlib.sha256(ext).hexdigest()}"


def test_tag_encodes_pins_flag_and_series_hash(world):
    sgl, mg = _stack(world)
    m = manifest.load()
    a = image.make_plan(m, gemma4=True, commit="x", user_tag="mine")
    b = image.make_plan(m, gemma4=False, commit="x")
    repo, tag = a.tag.split(":")
    assert repo == "gemma4-stack"
    assert "sglang-v1" in tag and "megatron-v1" in tag and "gemma4-1" in tag and "gemma4-0" in b.tag
    assert tag.endswith(f"_s{a.series_hash[:12]}") and a.series_hash != b.series_hash
    assert a.extra_tags == ["gemma4-stack:mine"]
    assert len(a.tag) <= 128 + len(repo) + 1
    # Editing one patch changes the series hash, hence the tag; nothing else does.
    p = world.folder("sglang") / "0001-gemma4.patch"
    p.write_text(p.read_text().replace("+g4", "+g4!"))
    c = image.make_plan(m, gemma4=True, commit="x")
    assert c.series_hash != a.series_hash and c.tag != a.tag
    assert image.make_plan(m, gemma4=True, commit="other").tag == c.tag


def test_unreachable_trees_are_left_out_and_said(world, monkeypatch):
    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))
    plan = image.make_plan(manifest.load(), gemma4=True, commit="x")
    slime = plan.trees["slime"]
    assert not slime.included and "nowhere" in slime.reason
    mg = plan.trees["megatron"]
    assert mg.included and mg.entries == [] and mg.left_out == ["slime:docker/megatron.patch"]
    assert plan.labels[f"{image.NS}.megatron.status"].startswith("nothing applied; left out slime:docker/megatron.patch")
    assert plan.labels[f"{image.NS}.slime.status"].startswith("left out: ")
    assert "LEFT OUT" in image.describe(plan)


def test_context_holds_patched_trees_at_their_pins(world, tmp_path):
    sgl, mg = _stack(world)
    m = manifest.load()
    plan = image.make_plan(m, gemma4=True, commit="x")
    said: list[str] = []
    ctx = image.prepare_context(m, plan, tmp_path / "ctx", out=said.append)
    assert any(line.startswith("context: megatron: ready in") for line in said), said  # progress, as it goes
    tree = ctx / "trees" / "megatron"
    assert run_git(tree, "rev-parse", "HEAD").strip() == mg.pin
    assert "three\n" in (tree / "core.py").read_text()
    assert (ctx / "slime-requirements.txt").read_text() == "ray\n"
    assert (ctx / "Dockerfile").read_bytes() == (REPO / "docker" / "Dockerfile").read_bytes()
    assert (ctx / "stack" / "patches" / "pins.toml").exists() and (ctx / "stack" / "build" / "patchstack" / "cli.py").exists()
    assert not list(ctx.rglob("__pycache__"))


# ------------------------------------------------------------------ with a Docker engine


def _engine_or_skip():
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (ci/docker-engine.sh installs it)")
    try:
        image.client()
    except StackError as e:
        pytest.skip(f"no Docker engine: {e.message}")


def test_smoke_build_stops_at_a_patch_that_does_not_fit_and_tags_nothing(tmp_path, monkeypatch):
    """A corrupted patch of ours: the build stops at validation with the per-hunk report."""
    _engine_or_skip()
    m = manifest.load(REPO)
    try:
        sgl = sources.source(m.upstream("sglang"), prefer_sdist=True)
    except SourceUnavailable as e:
        pytest.skip(f"SGLang sdist unreachable: {e.message}")
    target = "python/sglang/srt/utils/common.py"
    text = sgl.tree.read(target).decode()
    body = file_patch(tmp_path, target, text, text.replace("\nimport ", "\n# gemma4 stack smoke marker\nimport ", 1))
    corrupted, _ = corrupt_context(body, " # corrupted")
    root = tmp_path / "stack"
    for part in ("patches", "docker", "build"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
    folder = root / "patches" / "sglang" / m.upstream("sglang").version
    (folder / "0001-smoke.patch").write_text("Subject: [PATCH] smoke\n\nUpstream-Status: environment test\n---\n"
                                              + corrupted)
    # First in [base]: validated whether or not slime's patch after it can be read here.
    (folder / "series").write_text((folder / "series").read_text().replace("[base]\n", "[base]\n0001-smoke.patch\n", 1))
    monkeypatch.setenv("PATCHSTACK_ROOT", str(root))
    m2 = manifest.load(root)
    base = image.smoke_base(m2, out=lambda *_: None)
    plan = image.make_plan(m2, gemma4=True, smoke=True, base_image=base)
    ctx = image.prepare_context(m2, plan, root / "out" / "ctx")
    lines: list[str] = []
    with pytest.raises(StackError) as e:
        image.build(plan, ctx, network="none", out=lines.append)
    report = "\n".join(lines)
    assert "docker build failed" in str(e.value) and "no image was tagged" in str(e.value)
    assert "FAILS     [base] 0001-smoke.patch" in report
    assert f"{target}: hunk 1 of 1 @@" in report and "# corrupted" in report
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    assert plan.tag not in tags


def test_inspect_refuses_a_missing_image_and_one_without_the_stacks_labels(capsys):
    """One clear line and a non-zero exit, not a traceback or an empty table."""
    from patchstack import cli

    _engine_or_skip()
    assert cli.main(["inspect", "gemma4-stack-no-such-image:0"]) == 2
    err = capsys.readouterr().err
    assert "no image 'gemma4-stack-no-such-image:0'" in err and "Traceback" not in err
    base = image.smoke_base(manifest.load(REPO), out=lambda *_: None)  # a plain imported Debian
    assert cli.main(["inspect", base]) == 2
    assert "has none of this stack's labels" in capsys.readouterr().err


def test_an_incomplete_image_is_refused_before_any_docker_step(world, monkeypatch, capsys):
    """`make image` with a source unreachable: a non-zero exit naming the tree and the variable to
    set, and neither the context nor the build is started."""
    from patchstack import cli

    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))
    called = []
    monkeypatch.setattr(image, "prepare_context", lambda *a, **k: called.append("context"))
    monkeypatch.setattr(image, "build", lambda *a, **k: called.append("build"))
    assert cli.main(["image", "--gemma4"]) == 2
    err = capsys.readouterr().err
    assert called == []
    assert "the image would be incomplete, so it is not built" in err
    assert "slime: the whole tree" in err and "megatron: slime:docker/megatron.patch" in err
    assert "UPSTREAM_SLIME_GIT=" in err


def test_an_incomplete_plan_says_so_in_tag_and_labels(world, monkeypatch):
    import os

    _stack(world)
    slime_git = os.environ["UPSTREAM_SLIME_GIT"]
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))  # before slime is cached
    plan = image.make_plan(manifest.load(), gemma4=True, smoke=True, base_image="b", commit="x",
                           allow_incomplete=True)
    assert plan.tag.endswith("_incomplete") and plan.labels[f"{image.NS}.complete"] == "0"
    assert plan.labels[f"{image.NS}.megatron.status"].startswith("nothing applied; left out")
    image.require_complete(manifest.load(), plan)  # asked to be incomplete: allowed
    with pytest.raises(StackError, match="incomplete"):
        image.require_complete(manifest.load(), image.make_plan(manifest.load(), gemma4=True, commit="x"))
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", slime_git)
    complete = image.make_plan(manifest.load(), gemma4=True, commit="x")
    assert not complete.missing and "incomplete" not in complete.tag
    assert complete.labels[f"{image.NS}.complete"] == "1"
    image.require_complete(manifest.load(), complete)  # nothing to refuse


def test_settings_reach_the_build_arguments_and_labels_and_wrong_ones_are_refused(world):
    _stack(world)
    m = manifest.load()
    plan = image.make_plan(m, gemma4=True, commit="x",
                           settings={"TILELANG_VERSION": "0.1.9", "GEMMA4_PACKAGES": "a==1 b==2"})
    assert plan.build_args["TILELANG_VERSION"] == "0.1.9" and plan.build_args["GEMMA4_PACKAGES"] == "a==1 b==2"
    assert plan.labels[f"{image.NS}.build-arg.TILELANG_VERSION"] == "0.1.9"
    assert "build arguments set: GEMMA4_PACKAGES=a==1 b==2, TILELANG_VERSION=0.1.9" in image.describe(plan)
    with pytest.raises(StackError, match="no build argument 'NOPE'") as e:
        image.make_plan(m, gemma4=True, commit="x", settings={"NOPE": "1"})
    assert "TILELANG_VERSION" in e.value.hint
    with pytest.raises(StackError, match="GEMMA4 is set by the tool"):
        image.make_plan(m, gemma4=True, commit="x", settings={"GEMMA4": "1"})
    assert "BASE_IMAGE" not in image.user_args(world.root) and "SGLANG_ROUTER_SHA256" in image.user_args(world.root)


def test_a_long_step_reports_progress_while_it_runs():
    """debootstrap (minutes) used to run silently: the runner prints the elapsed time and the
    command's latest line at intervals, and returns its exit code and last lines."""
    said: list[str] = []
    code, tail = image.run_with_heartbeat(
        ["sh", "-c", "echo first; sleep 0.5; echo second; sleep 0.5; echo last; exit 3"], "step", said.append,
        every=0.2)
    assert code == 3 and tail.splitlines()[-1] == "last"
    assert len(said) >= 3 and all(line.startswith("  step: ") and " s; " in line for line in said)
    assert any("first" in line or "second" in line for line in said)


def test_push_of_an_image_not_built_here_is_one_line_and_pushes_nothing(world):
    _stack(world)
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("needs a Docker engine")
    code, out, err = tool("push", "--gemma4", "--registry", "127.0.0.1:1/team")
    assert code == 2, out + err
    assert err.startswith("error: nothing pushed: gemma4-stack:") and "is not on this Docker engine" in err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err  # the error and what to do
    assert "make image" in err and "pushed" not in out


@pytest.mark.parametrize("tag", ["bad tag", "Bad!Tag", ""])
def test_the_tool_refuses_a_bad_tag_before_any_plan(world, tag, capsys):
    _stack(world)
    with pytest.raises(SystemExit) as e:
        cli.main(["image", "--gemma4", "--plan", "--tag", tag])
    assert e.value.code == 2 and "is not a valid image tag" in capsys.readouterr().err
