"""Builds where GitHub and Docker Hub are not reachable: every download of the Dockerfile reads a
setting, the settings are checked before any Docker step and recorded in the labels, a deps image is
named by what goes into it and reused (DEPS_IMAGE) only when it fits, and a refusal names each
unreachable source once."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPO
from test_image import _engine_or_skip, _stack

from patchstack import cli, image, manifest, sources
from patchstack.errors import SourceUnavailable, StackError

SHA = "ab" * 32


def _error(capsys) -> str:
    """The error the command ended with (progress lines before it aside)."""
    err = capsys.readouterr().err
    return err[err.index("error: "):].strip()


# ------------------------------------------------------------------ the Dockerfile's downloads


def _instructions(text: str) -> list[tuple[str, str]]:
    """(stage, instruction) with continuation lines joined; stage '' before the first FROM."""
    out, stage, buf = [], "", ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", buf.strip(), re.I)
        if m:
            stage = (m.group(1) or "").lower()
        out.append((stage, buf.strip()))
        buf = ""
    return out


DOWNLOADERS = re.compile(r"\b(pip install|git clone|git submodule|apt-get (?:update|install)|curl|wget)\b")


def download_problems(text: str) -> list[str]:
    """What in a Dockerfile downloads from somewhere no setting names (empty: nothing)."""
    problems = []
    args = image.dockerfile_args_of(text)
    declared: dict[str, set[str]] = {}
    for stage, ins in _instructions(text):
        seen = declared.setdefault(stage, set())
        word = ins.split(None, 1)[0].upper()
        if word == "ARG":
            seen.add(re.match(r"ARG\s+([A-Za-z_][A-Za-z0-9_]*)", ins).group(1))
            continue
        if word == "FROM":
            ref = ins.split()[1]
            if ref not in ("${BASE_IMAGE}", "${DEPS_IMAGE}") and ref.lower() not in declared:
                problems.append(f"FROM {ref}: not the BASE_IMAGE or DEPS_IMAGE setting")
            continue
        if word != "RUN":
            continue
        # Every build argument a step reads is declared in its stage before it (else it is empty).
        for name in set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", ins)) & set(args):
            if name not in seen:
                problems.append(f"{name} is read in stage {stage!r} before its ARG: {ins[:60]}")
        # No address of its own: the one literal URL allowed is the prefix GITHUB_MIRROR replaces.
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"']*", ins.replace('.insteadOf" https://github.com/', "")):
            problems.append(f"literal URL {url} in: {ins[:60]}")
        if not DOWNLOADERS.search(ins):
            continue
        if '"$OFFLINE" = 1' not in ins:
            problems.append(f"a download without an OFFLINE=1 branch: {ins[:60]}")
        if "pip install" in ins:
            missing = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} - seen
            if missing:
                problems.append(f"pip install in stage {stage!r} without ARG {', '.join(sorted(missing))}: {ins[:60]}")
            if re.search(r"(?:^|\s)(-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)(?:[\s=]|$)", ins):
                problems.append(f"pip install with an index of its own: {ins[:60]}")
        for url in re.findall(r"git\+(\S+?)@", ins):
            if not re.fullmatch(r"\$\{?[A-Z0-9_]+_GIT\}?", url):
                problems.append(f"pip installs git+{url}, not a *_GIT setting")
        for src in re.findall(r"git clone\s+(\S+)", ins):
            if not re.fullmatch(r"\"?\$\{?[A-Z0-9_]+_GIT\}?\"?", src):
                problems.append(f"git clone {src}, not a *_GIT setting")
        if "apt-get install" in ins and "APT_MIRROR" not in ins:
            problems.append(f"apt-get without APT_MIRROR: {ins[:60]}")
        if re.search(r"\b(curl|wget)\b", ins):
            problems.append(f"a download by curl/wget, which no setting covers: {ins[:60]}")
    for name in image.DOWNLOADS:
        if name not in args:
            problems.append(f"image.DOWNLOADS names {name}, which is no ARG of the Dockerfile")
    for name in [n for n in args if n.endswith("_GIT")]:
        if name not in image.DOWNLOADS or not args[name].startswith("https://"):
            problems.append(f"{name}: a git source missing from image.DOWNLOADS, or without a default URL")
    return problems


def test_every_download_of_the_dockerfile_reads_a_setting():
    assert download_problems((REPO / "docker" / "Dockerfile").read_text()) == []


@pytest.mark.parametrize("old,new,what", [
    ('git clone "$FA3_GIT" /tmp/fa3', "git clone https://github.com/Dao-AILab/flash-attention.git /tmp/fa3",
     "literal URL https://github.com/Dao-AILab"),
    ('"git+${APEX_GIT}@${APEX_COMMIT}"', '"git+https://github.com/NVIDIA/apex.git@${APEX_COMMIT}"',
     "pip installs git+https://github.com/NVIDIA/apex.git"),
    ("ARG MBRIDGE_GIT\n", "", "MBRIDGE_GIT is read in stage 'deps' before its ARG"),
    ("ARG OFFLINE=0\nARG DEPS_IMAGE\nARG PIP_INDEX_URL\n", "ARG OFFLINE=0\nARG DEPS_IMAGE\n",
     "pip install in stage 'stack' without ARG PIP_INDEX_URL"),
    ('pip install "numpy<2"', 'pip install -i http://mirror.example/simple "numpy<2"', "literal URL http://mirror"),
    ('pip install "numpy<2"', 'pip install --index-url "$PIP_INDEX_URL" "numpy<2"', "an index of its own"),
    ("FROM ${BASE_IMAGE} AS deps", "FROM slimerl/sglang:v0.5.9 AS deps", "FROM slimerl/sglang:v0.5.9"),
    ("RUN printf '#!/bin/sh", "RUN curl -o /tmp/x \"$SGLANG_ROUTER_WHEEL\" && printf '#!/bin/sh",
     "by curl/wget"),
    ('RUN if [ "$OFFLINE" = 1 ]; then echo "OFFLINE=1: Transformer Engine ${TE_VERSION} not installed"; else ',
     "RUN if true; then ", "without an OFFLINE=1 branch"),
])
def test_the_download_check_fails_for_a_download_without_its_setting(old, new, what):
    """The check above, on the Dockerfile with one download put back to a fixed address (or a
    setting not declared where it is read): it names the problem."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert old in text
    problems = download_problems(text.replace(old, new, 1))
    assert any(what in p for p in problems), problems


# ------------------------------------------------------------------ the values, before any Docker step


@pytest.fixture
def no_docker(monkeypatch):
    """Records any Docker step; the test fails if one is reached."""
    called: list[str] = []
    for name in ("client", "prepare_context", "prepare_deps_context", "build", "smoke_base"):
        monkeypatch.setattr(image, name, lambda *a, _n=name, **k: called.append(_n))
    return called


@pytest.mark.parametrize("args,name", [
    (["--build-arg", "FA3_GIT=/srv/mirrors/flash-attention.git"], "FA3_GIT"),
    (["--build-arg", "APEX_GIT=file:///srv/apex.git"], "APEX_GIT"),
    (["--build-arg", "TMS_GIT=github.com/fzyzcjy/torch_memory_saver"], "TMS_GIT"),
    (["--build-arg", "MEGATRON_BRIDGE_GIT=https://git.example/Megatron Bridge.git"], "MEGATRON_BRIDGE_GIT"),
    (["--build-arg", "PIP_INDEX_URL="], "PIP_INDEX_URL"),
    (["--build-arg", "PIP_INDEX_URL=/opt/pypi/simple"], "PIP_INDEX_URL"),
    (["--build-arg", "PIP_EXTRA_INDEX_URL=ftp://pypi.example/simple"], "PIP_EXTRA_INDEX_URL"),
    (["--build-arg", "PIP_TRUSTED_HOST=http://pypi.example"], "PIP_TRUSTED_HOST"),
    (["--build-arg", "APT_MIRROR=archive.ubuntu.com/ubuntu"], "APT_MIRROR"),
    (["--build-arg", "GITHUB_MIRROR=~/github"], "GITHUB_MIRROR"),
    (["--build-arg", "SGLANG_ROUTER_WHEEL=https://mirror.example/sglang_router.tar.gz"], "SGLANG_ROUTER_WHEEL"),
    (["--build-arg", "SGLANG_ROUTER_SHA256=ABC123"], "SGLANG_ROUTER_SHA256"),
    (["--build-arg", "DEPS_IMAGE=Registry.example/Gemma4 deps"], "DEPS_IMAGE"),
    (["--build-arg", "TE_VERSION=2.10.0\nRUN rm -rf /"], "TE_VERSION"),
    (["--base-image", "docker.io/SlimeRL/sglang:v0.5.9"], "BASE_IMAGE"),
])
def test_a_bad_mirror_value_is_refused_in_one_line_before_any_docker_step(world, no_docker, capsys, args, name):
    _stack(world)
    assert cli.main(["image", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert no_docker == []
    assert err.startswith(f"error: {name}=") and "\n" not in err, err
    assert ": give" in err or ": serve" in err  # what to do, on the same line


@pytest.mark.parametrize("name,value", [
    ("FA3_GIT", "https://git.example.org/mirrors/flash-attention.git"),
    ("APEX_GIT", "ssh://git@git.example.org:2222/mirrors/apex.git"),
    ("MBRIDGE_GIT", "git://127.0.0.1/mbridge.git"),
    ("PIP_INDEX_URL", "http://127.0.0.1:3141/root/pypi/+simple/"),
    ("PIP_TRUSTED_HOST", "127.0.0.1:3141"),
    ("APT_MIRROR", "http://mirror.example.org/ubuntu/"),
    ("GITHUB_MIRROR", "https://git.example.org/github/"),
    ("GITHUB_MIRROR", ""),
    ("SGLANG_ROUTER_WHEEL", "https://files.example.org/sglang_router-0.3.2-cp38-abi3-manylinux_2_28_x86_64.whl"),
    ("SGLANG_ROUTER_SHA256", SHA),
    ("DEPS_IMAGE", "registry.example.org:5000/team/gemma4-stack-deps:0123456789abcdef"),
    ("BASE_IMAGE", "registry.example.org/slimerl/sglang@sha256:" + "0" * 64),
])
def test_a_good_mirror_value_is_accepted(name, value):
    image.check_value(name, value, pin="0" * 40)


def test_the_router_wheel_is_not_built_unverified(world, no_docker, capsys):
    """No sha256 for the wheel: `make image` stops before Docker; with one, or on a deps image, or in
    the smoke build (which installs no wheel), it goes on."""
    _stack(world)
    assert cli.main(["image"]) == 2
    err = _error(capsys)
    assert no_docker == [] and "SGLANG_ROUTER_SHA256 is not set" in err and "\n" not in err
    m = manifest.load()
    image.require_downloads(image.make_plan(m, gemma4=False, commit="x", settings={"SGLANG_ROUTER_SHA256": SHA}))
    image.require_downloads(image.make_plan(m, gemma4=False, commit="x", settings={"DEPS_IMAGE": "r/deps:1"}))
    image.require_downloads(image.make_plan(m, gemma4=False, smoke=True, base_image="b", commit="x"))


# ------------------------------------------------------------------ labels


def test_the_labels_record_every_download_setting(world):
    _stack(world)
    m = manifest.load()
    settings = {"FA3_GIT": "https://git.example.org/flash-attention.git",
                "PIP_INDEX_URL": "https://pypi.example.org/simple", "SGLANG_ROUTER_SHA256": SHA}
    plan = image.make_plan(m, gemma4=True, commit="x", settings=settings)
    lab, ns = plan.labels, image.NS
    for name, value in settings.items():
        assert lab[f"{ns}.build-arg.{name}"] == value and lab[f"{ns}.deps.arg.{name}"] == value
    defaults = image.dockerfile_args(world.root)
    for name in image.DOWNLOADS:  # the ones left at their defaults are recorded too
        assert lab[f"{ns}.deps.arg.{name}"] == settings.get(name, defaults[name]), name
    assert lab[f"{ns}.deps.image"] == "deps" and lab[f"{ns}.deps.sha256"] == plan.deps_hash
    on = image.make_plan(m, gemma4=True, commit="x", settings={**settings, "DEPS_IMAGE": "r.example/d:1"})
    assert on.labels[f"{ns}.deps.image"] == "r.example/d:1" and on.labels[f"{ns}.build-arg.DEPS_IMAGE"] == "r.example/d:1"


# ------------------------------------------------------------------ the deps image


def test_the_deps_tag_follows_the_deps_stage_and_nothing_else(world):
    _stack(world)
    m = manifest.load()

    def tag(gemma4=False, **settings):
        return image.make_plan(m, gemma4=gemma4, commit="x", settings=settings).deps_tag

    base = tag()
    assert re.fullmatch(r"gemma4-stack-deps:[0-9a-f]{16}", base)
    # what goes into the deps stage changes it
    for name, value in [("TILELANG_VERSION", "0.1.9"), ("FA3_GIT", "https://git.example.org/fa.git"),
                        ("PIP_INDEX_URL", "https://pypi.example.org/simple"), ("SGLANG_ROUTER_SHA256", SHA)]:
        assert tag(**{name: value}) != base, name
    assert image.make_plan(m, gemma4=False, commit="x", base_image="r.example/sglang:1").deps_tag != base
    assert image.make_plan(m, gemma4=False, smoke=True, base_image="b", commit="x").deps_tag.startswith(
        "gemma4-stack-smoke-deps:")
    # what goes into the stack stage, the Gemma4 group and the repository's commit do not
    assert tag(GEMMA4_PACKAGES="a==1") == tag(gemma4=True) == tag(DEPS_IMAGE="r.example/d:1") == base
    assert image.make_plan(m, gemma4=False, commit="y").deps_tag == base
    # slime's requirements.txt is part of it
    args, h = image.deps_stage(world.root, {}, b"ray\n")
    assert image.deps_stage(world.root, {}, b"ray\n")[1] == h != image.deps_stage(world.root, {}, b"ray==2\n")[1]
    # the Dockerfile: a deps-stage instruction changes it, a comment or the stack stage does not
    df = world.root / "docker" / "Dockerfile"
    text = df.read_text()
    df.write_text(text.replace("# OFFLINE=1 (the smoke build)", "# OFFLINE=1 (the offline smoke build)"))
    assert tag() == base
    df.write_text(text.replace("ARG ALLOW_SKIP=0", "ARG ALLOW_SKIP=0\nRUN true"))
    assert tag() == base
    df.write_text(text.replace("nvtop rsync dnsutils;", "nvtop rsync dnsutils less;"))
    assert tag() != base


def test_a_deps_image_is_used_only_when_made_from_the_same_settings(world, monkeypatch):
    _stack(world)
    m = manifest.load()
    made = image.make_plan(m, gemma4=False, commit="x", settings={"SGLANG_ROUTER_SHA256": SHA})
    found = image.deps_image_labels(made)
    assert found[f"{image.NS}.deps.sha256"] == made.deps_hash and found["org.opencontainers.image.version"] == \
        made.deps_tag.split(":")[1]

    class Img:
        id = "sha256:" + "1" * 64
        labels = found

    class Images:
        def get(self, ref):
            assert ref == "registry.example.org/gemma4-stack-deps:1"
            return Img()

    monkeypatch.setattr(image, "client", lambda: type("C", (), {"images": Images()})())
    dep = {"DEPS_IMAGE": "registry.example.org/gemma4-stack-deps:1", "SGLANG_ROUTER_SHA256": SHA}
    same = image.make_plan(m, gemma4=True, commit="y", settings={**dep, "GEMMA4_PACKAGES": "a==1"})
    image.check_deps_image(same, out=lambda *_: None)
    assert same.labels[f"{image.NS}.deps.image-id"] == Img.id
    other = image.make_plan(m, gemma4=True, commit="y", settings={**dep, "TILELANG_VERSION": "0.1.9"})
    with pytest.raises(StackError) as e:
        image.check_deps_image(other, out=lambda *_: None)
    msg = str(e.value)
    assert "\n" not in msg and "TILELANG_VERSION='0.1.8' there, '0.1.9' here" in msg
    assert other.deps_tag in msg and "make image-deps" in msg
    Img.labels = {"org.opencontainers.image.title": "something else"}
    with pytest.raises(StackError, match="has no io.github.gemma4-stack.deps.sha256 label"):
        image.check_deps_image(same, out=lambda *_: None)


def test_a_build_on_a_deps_image_leaves_the_deps_stage_out(world, tmp_path):
    """Docker's classic builder builds every stage before the target: on DEPS_IMAGE the context's
    Dockerfile has no deps stage, and the stack stage is built FROM ${DEPS_IMAGE}."""
    _stack(world)
    m = manifest.load()
    plan = image.make_plan(m, gemma4=True, commit="x", settings={"DEPS_IMAGE": "r.example/d:1"})
    ctx = image.prepare_context(m, plan, tmp_path / "ctx", out=lambda *_: None)
    text = (ctx / "Dockerfile").read_text()
    assert [s for s, _, _ in image.dockerfile_stages(text)] == ["", "stack"]
    assert "FROM ${DEPS_IMAGE} AS stack" in text and "ARG DEPS_IMAGE=deps" in text
    assert "ARG FA3_COMMIT" not in text and "COPY trees/slime /root/slime" in text
    full = image.make_plan(m, gemma4=True, commit="x")
    ctx2 = image.prepare_context(m, full, tmp_path / "ctx2", out=lambda *_: None)
    assert (ctx2 / "Dockerfile").read_bytes() == (REPO / "docker" / "Dockerfile").read_bytes()
    deps = image.prepare_deps_context(m, full, tmp_path / "deps", out=lambda *_: None)
    assert sorted(p.name for p in deps.iterdir()) == ["Dockerfile", "plan.json", "slime-requirements.txt"]
    assert (deps / "slime-requirements.txt").read_text() == "ray\n"


def test_image_deps_refuses_deps_image_and_an_unreachable_slime(world, no_docker, monkeypatch, capsys):
    _stack(world)
    assert cli.main(["image-deps", "--build-arg", "DEPS_IMAGE=r.example/d:1"]) == 2
    assert "leave DEPS_IMAGE out here" in capsys.readouterr().err
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))
    assert cli.main(["image-deps", "--build-arg", f"SGLANG_ROUTER_SHA256={SHA}"]) == 2
    err = _error(capsys)
    assert no_docker == [] and "\n" not in err
    assert "the deps image is not built" in err and "UPSTREAM_SLIME_GIT=" in err and "megatron" not in err


# ------------------------------------------------------------------ the refusal


def test_the_refusal_names_each_unreachable_source_once(world, monkeypatch, no_docker, capsys):
    """slime and Megatron-LM unreachable: each failure is tried once and said once, with its
    variable; what the image would lack; each download of the build still at its public source,
    with its setting, once."""
    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere-slime"))
    monkeypatch.setenv("UPSTREAM_MEGATRON_GIT", str(world.tmp / "nowhere-megatron"))
    assert cli.main(["image", "--gemma4", "--build-arg", "FA3_GIT=https://git.example.org/fa.git"]) == 2
    err = capsys.readouterr().err
    assert no_docker == []
    assert err.count("slime: fetching") == 1 and err.count("megatron: fetching") == 1  # tried once each
    refusal = err[err.index("error: "):]
    for name in ("slime", "megatron"):
        where = str(world.tmp / f"nowhere-{name}")
        assert sum(where in line for line in refusal.splitlines()) == 1, refusal  # git's own message names it twice
        assert refusal.count(f"UPSTREAM_{name.upper()}_GIT=") == 1
    assert "slime: the whole tree (its source is unreachable)" in refusal
    assert "megatron: the whole tree (its source is unreachable)" in refusal
    assert "sglang: 0001-gemma4.patch" not in refusal  # ours, read from this repository: not missing
    for name in image.DOWNLOADS:
        if name in ("PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "FA3_GIT"):  # optional; set here
            assert f"set {name}=" not in refusal, name
        else:
            assert refusal.count(f"set {name}=") == 1, name
    assert refusal.count("SGLANG_ROUTER_SHA256=") == 1
    # the plan's own account: one entry per source
    plan = image.make_plan(manifest.load(), gemma4=True, commit="x", allow_incomplete=True)
    assert sorted(plan.unreachable) == ["megatron", "slime"]
    assert plan.trees["megatron"].needs == "megatron"


def test_a_patch_read_from_an_unreachable_tree_names_that_tree(world, monkeypatch, capsys):
    """Megatron-LM's patch is read from slime: slime is tried once (for its tree and the patch) and
    named as the reason, not its error repeated."""
    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))
    plan = image.make_plan(manifest.load(), gemma4=True, commit="x", allow_incomplete=True)
    assert capsys.readouterr().err.count("slime: fetching") == 1
    assert list(plan.unreachable) == ["slime"]
    assert sorted(plan.missing) == ["megatron: slime:docker/megatron.patch (read from slime, unreachable)",
                                    "slime: the whole tree (its source is unreachable)"]
    assert "why: slime is unreachable" in image.describe(plan)
    assert str(world.tmp / "nowhere") not in image.describe(plan)  # said once, by the refusal


def test_the_smoke_build_refuses_without_sglangs_sources_even_when_incomplete(world, monkeypatch, no_docker, capsys):
    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere-slime"))
    monkeypatch.setattr(sources, "source", lambda *a, **k: (_ for _ in ()).throw(
        SourceUnavailable("sglang", "sglang: cannot download the sdist /nowhere/sglang.tar.gz")))
    assert cli.main(["image-smoke", "--allow-incomplete"]) == 2
    err = capsys.readouterr().err
    assert no_docker == []
    assert "the smoke image cannot be built: its base needs SGLang's sources" in err
    assert err.count("sglang: cannot download the sdist") == 1 and err.count("UPSTREAM_SGLANG_GIT=") == 1
    assert sum(str(world.tmp / "nowhere-slime") in line for line in err.splitlines() if "fetch" not in line) == 1
    assert "downloads of the docker build" not in err  # the smoke build downloads nothing


# ------------------------------------------------------------------ with a Docker engine


def test_a_smoke_build_on_a_deps_image_runs_no_deps_step(tmp_path):
    """image-deps --smoke, then the smoke image on it: the stack stage alone is built (no deps step,
    cached or not), its checks inside pass and its labels are the plan's."""
    _engine_or_skip()
    m = manifest.load(REPO)
    try:
        sources.source(m.upstream("sglang"), prefer_sdist=True)
    except SourceUnavailable as e:
        pytest.skip(f"SGLang sdist unreachable: {e.message}")
    base = image.smoke_base(m, out=lambda *_: None)
    deps = image.make_plan(m, gemma4=False, smoke=True, base_image=base, allow_incomplete=True)
    ctx = image.prepare_deps_context(m, deps, tmp_path / "deps", out=lambda *_: None)
    image.build(deps, ctx, network="none", target="deps", tags=[deps.deps_tag],
                labels=image.deps_image_labels(deps), out=lambda *_: None)
    plan = image.make_plan(m, gemma4=False, smoke=True, base_image=base, allow_incomplete=True,
                           settings={"DEPS_IMAGE": deps.deps_tag})
    image.check_deps_image(plan, out=lambda *_: None)
    ctx = image.prepare_context(m, plan, tmp_path / "ctx", out=lambda *_: None)
    steps: list[str] = []
    image.build(plan, ctx, network="none", out=steps.append)
    said = "\n".join(steps)
    assert "FROM ${DEPS_IMAGE} AS stack" in said and "COPY trees/slime" in said
    assert "AS deps" not in said and "slime-requirements.txt" not in said and "ARG FA3_COMMIT" not in said
    image.smoke_verify(plan, out=lambda *_: None)
    shutil.rmtree(tmp_path, ignore_errors=True)
