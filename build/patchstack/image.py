"""The GPU image: a build plan (which patches, arguments, labels, tag), the build context, and a
build driven through the Docker SDK with streamed progress.

The plan is made without Docker, so it can be tested: for each upstream, the entries of the
selected groups that will be applied (with their sha256), or why a tree is left out; the build
arguments; the OCI and stack labels; the tag, which encodes the three pins, the Gemma4 flag and a
hash of the applied series.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import check, preflight, series, sources, workspace
from .apply import apply_series
from .errors import SourceUnavailable, StackError
from .manifest import Manifest
from .trees import git

NAME = "gemma4-stack"
NS = "io.github.gemma4-stack"  # label namespace
PATCHED_IN_BUILD = "sglang"  # patched inside the build, in the base image's own checkout


@dataclass
class TreePlan:
    upstream: str
    version: str
    commit: str
    image_path: str
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (group, name, sha256) applied
    left_out: list[str] = field(default_factory=list)  # entries not applied
    reason: str = ""  # why the tree or some entries are left out
    included: bool = True  # False: the tree itself is left out of the image


@dataclass
class Plan:
    gemma4: bool
    smoke: bool
    groups: list[str]
    base_image: str
    trees: dict[str, TreePlan]
    repo_commit: str
    series_hash: str = ""
    tag: str = ""
    extra_tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    allow_incomplete: bool = False

    @property
    def missing(self) -> list[str]:
        """What the image would lack, one line per tree: a tree left out, or entries not applied."""
        out = []
        for tp in self.trees.values():
            if not tp.included:
                out.append(f"{tp.upstream}: the whole tree ({tp.reason})")
            elif tp.left_out:
                out.append(f"{tp.upstream}: {', '.join(tp.left_out)} ({tp.reason})")
        return out


def repo_commit(root: Path) -> str:
    p = git("rev-parse", "HEAD", cwd=root, check=False)
    if p.returncode != 0:
        return "unknown"
    head = p.stdout.decode().strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=root, check=False).stdout.strip()
    return head + ("-dirty" if dirty else "")


def make_plan(manifest: Manifest, *, gemma4: bool, smoke: bool = False, base_image: str | None = None,
              user_tag: str | None = None, offline: bool = False, commit: str | None = None,
              groups: list[str] | None = None, allow_incomplete: bool = False,
              settings: dict[str, str] | None = None) -> Plan:
    """The build plan; `groups` (default: base, plus gemma4 with `gemma4`) as the CLI selects them.

    An image that would lack a tree or a selected patch is refused (`require_complete`) unless
    `allow_incomplete`, which the smoke build and the tests use: its tag and labels then say
    `incomplete`. `settings`: values for the Dockerfile's ARGs a user may set (`user_args`),
    checked here."""
    settings = checked_settings(manifest.root, settings or {})
    groups = groups or manifest.select_groups(frozenset({"gemma4"}) if gemma4 else frozenset())
    gemma4 = gemma4 or "gemma4" in groups
    reader = check.PatchSource(manifest, offline)
    trees: dict[str, TreePlan] = {}
    for name, up in manifest.upstreams.items():
        tp = TreePlan(name, up.version, up.commit, up.image_path)
        trees[name] = tp
        if name != PATCHED_IN_BUILD:
            try:
                sources.git_source(up, offline=offline)
            except SourceUnavailable as e:
                tp.included, tp.reason = False, e.message
        entries = series.load(manifest, name).selected(groups)
        for i, e in enumerate(entries):
            if not tp.included:
                tp.left_out.append(e.name)
                continue
            try:
                data = reader.read(e)
            except SourceUnavailable as err:
                tp.reason = tp.reason or err.message
                tp.left_out += [x.name for x in entries[i:]]
                break
            tp.entries.append((e.group, e.name, hashlib.sha256(data).hexdigest()))
    digest = hashlib.sha256()
    for tp in trees.values():
        for g, n, h in tp.entries:
            digest.update(f"{tp.upstream}\t{g}\t{n}\t{h}\n".encode())
    plan = Plan(gemma4, smoke, groups, base_image or default_base_image(manifest.root), trees,
                commit or repo_commit(manifest.root), series_hash=digest.hexdigest(),
                allow_incomplete=allow_incomplete)
    plan.tag = image_tag(plan)
    if user_tag:
        plan.extra_tags.append(user_tag if ":" in user_tag else f"{repository(plan)}:{user_tag}")
    plan.build_args = {
        "BASE_IMAGE": plan.base_image,
        "OFFLINE": "1" if smoke else "0",
        "GEMMA4": "1" if gemma4 else "0",
        "ALLOW_SKIP": "1" if trees[PATCHED_IN_BUILD].left_out else "0",
        **settings,
    }
    plan.labels = labels(plan)
    for name, value in sorted(settings.items()):
        plan.labels[f"{NS}.build-arg.{name}"] = value
    return plan


# Set by the tool from the plan, never by hand: BASE_IMAGE through --base-image (BASE_IMAGE=),
# the rest follow from GEMMA4, the smoke build and the series.
TOOL_ARGS = ("BASE_IMAGE", "OFFLINE", "GEMMA4", "ALLOW_SKIP")


def dockerfile_args(root: Path) -> dict[str, str]:
    """Every ARG of docker/Dockerfile with its default (the first one given), in file order."""
    out: dict[str, str] = {}
    for line in (root / "docker" / "Dockerfile").read_text().splitlines():
        m = re.match(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", line.strip())
        if m and m.group(1) not in out:
            out[m.group(1)] = (m.group(2) or "").strip()
    return out


def user_args(root: Path) -> dict[str, str]:
    """The Dockerfile ARGs a user may set (NAME=VALUE to make, --build-arg to the tool)."""
    return {k: v for k, v in dockerfile_args(root).items() if k not in TOOL_ARGS}


def checked_settings(root: Path, settings: dict[str, str]) -> dict[str, str]:
    known = user_args(root)
    for name in settings:
        if name in TOOL_ARGS:
            how = "--base-image (make image BASE_IMAGE=...)" if name == "BASE_IMAGE" else \
                "GEMMA4=0|1 and the series" if name in ("GEMMA4", "ALLOW_SKIP") else "the smoke build"
            raise StackError(f"build argument {name} is set by the tool, not by hand", hint=f"use {how}")
        if name not in known:
            raise StackError(f"docker/Dockerfile has no build argument {name!r}",
                             hint="the ones a user may set: " + ", ".join(known))
    return dict(settings)


def default_base_image(root: Path) -> str:
    """The Dockerfile's own default BASE_IMAGE (one place for it)."""
    text = (root / "docker" / "Dockerfile").read_text()
    m = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    if not m:
        raise StackError("docker/Dockerfile has no 'ARG BASE_IMAGE=' default")
    return m.group(1)


def repository(plan: Plan) -> str:
    return f"{NAME}-smoke" if plan.smoke else NAME


def image_tag(plan: Plan) -> str:
    """repository:sglang-<v>_megatron-<c8>_slime-<c8>_gemma4-<0|1>_s<series hash 12>."""
    parts = []
    for name, tp in plan.trees.items():
        ver = tp.version if tp.version.startswith("v") else tp.commit[:8]
        parts.append(f"{name}-{ver}")
    tag = "_".join(parts + [f"gemma4-{int(plan.gemma4)}", f"s{plan.series_hash[:12]}"]
                   + (["incomplete"] if plan.missing else []))
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)[:128]
    return f"{repository(plan)}:{tag}"


def labels(plan: Plan) -> dict[str, str]:
    out = {
        "org.opencontainers.image.title": NAME,
        "org.opencontainers.image.description":
            "slime + Megatron-LM + SGLang for RL on Gemma4, every patch validated by patchstack",
        "org.opencontainers.image.revision": plan.repo_commit,
        "org.opencontainers.image.version": plan.tag.split(":", 1)[1],
        "org.opencontainers.image.base.name": plan.base_image,
        f"{NS}.gemma4": "1" if plan.gemma4 else "0",
        f"{NS}.groups": ",".join(plan.groups),
        f"{NS}.series-sha256": plan.series_hash,
        f"{NS}.smoke": "1" if plan.smoke else "0",
        f"{NS}.complete": "0" if plan.missing else "1",
    }
    for name, tp in plan.trees.items():
        p = f"{NS}.{name}"
        out[f"{p}.pin"] = tp.commit
        out[f"{p}.version"] = tp.version
        out[f"{p}.path"] = tp.image_path
        out[f"{p}.series"] = ",".join(f"{g}:{n}" for g, n, _ in tp.entries)
        for i, (g, n, h) in enumerate(tp.entries, 1):
            out[f"{p}.patch.{i}"] = f"{g} {n} sha256={h}"
        if not tp.included:
            out[f"{p}.status"] = f"left out: {tp.reason}"
        elif tp.left_out:
            done = "partly applied" if tp.entries else "nothing applied"
            out[f"{p}.status"] = f"{done}; left out {', '.join(tp.left_out)}: {tp.reason}"
        else:
            out[f"{p}.status"] = "applied"
    return out


def require_complete(manifest: Manifest, plan: Plan) -> None:
    """Stop before any Docker step when the image would lack a tree or a selected patch (unless the
    plan allows an incomplete image), saying what is missing and how to provide it."""
    if plan.missing and not plan.allow_incomplete:
        text = "\n".join(plan.missing)
        unreachable = [n for n in manifest.upstreams if f"{n}: cannot reach" in text] or [
            n for n in manifest.upstreams if any(line.startswith(f"{n}:") for line in plan.missing)]
        hints = [f"{manifest.upstream(n).env_git}=<path or URL of a git repository holding "
                 f"{manifest.upstream(n).commit[:12]}>" for n in unreachable]
        raise StackError(
            "the image would be incomplete, so it is not built:\n  " + "\n  ".join(plan.missing),
            hint="make the sources reachable (network, or a mirror: " + "; ".join(sorted(set(hints)))
                 + "), then run again; `make check` says what each source needs")


def describe(plan: Plan) -> str:
    lines = [f"image {plan.tag} (base {plan.base_image}, groups {', '.join(plan.groups)})"]
    set_here = {k: v for k, v in plan.build_args.items() if k not in TOOL_ARGS}
    if set_here:
        lines.append("  build arguments set: " + ", ".join(f"{k}={v}" for k, v in sorted(set_here.items())))
    for tp in plan.trees.values():
        what = ", ".join(n for _, n, _ in tp.entries) or "no patches"
        state = "LEFT OUT" if not tp.included else "patched" if tp.entries else "as pinned"
        lines.append(f"  {tp.upstream:<9} {tp.commit[:12]} -> {tp.image_path}: {state}; {what}")
        if tp.left_out:
            lines.append(f"            left out: {', '.join(tp.left_out)}")
            lines.append(f"            why: {tp.reason}")
    return "\n".join(lines)


# ------------------------------------------------------------------ build context


def prepare_context(manifest: Manifest, plan: Plan, dest: Path, *, offline: bool = False, out=print) -> Path:
    """Lay out the build context: Dockerfile, the tool and series, the patched Megatron and slime.
    Says what it prepares, and how long each tree took, as it goes."""
    out(f"context: {dest}")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "trees").mkdir(parents=True)
    shutil.copyfile(manifest.root / "docker" / "Dockerfile", dest / "Dockerfile")
    stack = dest / "stack"
    # The tool that is running is the one that goes in: same code outside and inside the build.
    shutil.copytree(Path(__file__).resolve().parent, stack / "build" / "patchstack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(manifest.patches_dir, stack / "patches")
    copy_suite(Path(__file__).resolve().parents[2], stack)  # the suite of the tool that runs
    req = b"# slime's requirements.txt: slime was left out of this build\n"
    for name, tp in plan.trees.items():
        if name == PATCHED_IN_BUILD:
            continue
        tree = dest / "trees" / name
        if not tp.included:
            tree.mkdir()
            (tree / "LEFT-OUT").write_text(f"{name} was left out of this image: {tp.reason}\n")
            continue
        t0 = time.monotonic()
        out(f"context: {name}: its tree at {tp.commit[:12]} with {len(tp.entries)} patches ...")
        src = sources.git_source(manifest.upstream(name), offline=offline)
        shutil.copytree(_prepared_tree(manifest, plan, name, src, offline), tree, symlinks=True)
        out(f"context: {name}: ready in {time.monotonic() - t0:.1f} s")
        if name == "slime":
            req = src.tree.read("requirements.txt") or req
    (dest / "slime-requirements.txt").write_bytes(req)
    (dest / "plan.json").write_text(json.dumps({"tag": plan.tag, "labels": plan.labels}, indent=2))
    return dest


# The image's own test suite (`make image-test`), and the files of the repository's tests it reuses
# (the Megatron model's builders and loader, the harness that runs SGLang's model classes), at the
# same relative paths, under /opt/gemma4-stack/tests.
SUITE_FILES = ("tests/image", "tests/gemma4/g4util.py", "tests/sglang_gemma4/harness.py")


def copy_suite(root: Path, stack: Path) -> None:
    for rel in SUITE_FILES:
        src, dst = root / rel, stack / rel
        if not src.exists():
            raise StackError(f"{src} is missing: the image's test suite cannot be copied into the context")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)


def _prepared_tree(manifest: Manifest, plan: Plan, name: str, src: sources.Source, offline: bool) -> Path:
    """The upstream checked out at its pin with its planned entries applied, made once per content.

    Kept under out/image/trees/ by a key of the pin and the applied patches, and copied into the
    context with its timestamps, so that an unchanged tree is an unchanged COPY for Docker's cache."""
    tp = plan.trees[name]
    key = hashlib.sha256(f"{name} {tp.commit} {plan.groups} {tp.entries}".encode()).hexdigest()[:16]
    done = manifest.root / "out" / "image" / "trees" / f"{name}-{key}"
    if done.exists():
        return done
    tmp = done.with_name(done.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        workspace.init_tree(tmp, src, name, plan.groups)
        git("branch", "-q", "-m", "patches", "pinned", cwd=tmp)
        apply_series(manifest, name, tmp, plan.groups, offline=offline)
        tmp.rename(done)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done


# ------------------------------------------------------------------ docker


def client():
    try:
        import docker  # the Docker SDK; only `make image` and the smoke build need it
    except ImportError:
        raise StackError("the Docker SDK for Python is not installed", hint="make venv installs it") from None
    try:
        c = docker.from_env(timeout=600)
        c.ping()
        return c
    except Exception as e:  # noqa: BLE001 - any failure to reach the engine says the same
        raise StackError(f"cannot reach a Docker engine: {e}",
                         hint="start one (ci/docker-engine.sh starts dockerd without a bridge network)") from None


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def build(plan: Plan, context: Path, *, network: str = "host", nocache: bool = False, out=print
          ) -> tuple[str, dict]:
    """Build through the Docker SDK; print step i of N, cached or run, elapsed. Tag only on success.

    Returns the image id and the build's figures: steps, how many came from the cache, and the
    instructions that ran (FROM counts as neither)."""
    c = client()
    t0 = time.monotonic()
    stats: dict = {"steps": 0, "cached": 0, "run": 0, "ran": []}
    step_log: list[str] = []
    current, current_cached = "", False
    image_id = None
    labels_seen: list[str] = []

    def end_step() -> None:
        if current and not current.startswith(("FROM ", "ARG BASE_IMAGE")):
            if current_cached:
                stats["cached"] += 1
            else:
                stats["run"] += 1
                stats["ran"].append(current)

    def flush_labels() -> None:
        if labels_seen:
            out(f"{labels_seen[0]} ... {len(labels_seen)} LABEL steps (provenance)")
            labels_seen.clear()

    stream = c.api.build(path=str(context), dockerfile="Dockerfile", buildargs=plan.build_args,
                         labels=build_labels(plan), network_mode=network, rm=True, forcerm=True, decode=True,
                         nocache=nocache)
    for chunk in stream:
        if "error" in chunk:
            flush_labels()
            detail = chunk.get("errorDetail", {}).get("message", chunk["error"])
            out(f"build FAILED at: {current}")
            out("".join(step_log).rstrip())
            raise StackError(f"docker build failed: {detail.strip()}",
                             hint="the output above is the failing step's; no image was tagged")
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        for line in chunk.get("stream", "").splitlines(keepends=True):
            m = _STEP.match(line.strip())
            if m:
                end_step()
                current, current_cached, step_log = m.group(3), False, []
                stats["steps"] = int(m.group(2))
                head = f"[{m.group(1)}/{m.group(2)} +{time.monotonic() - t0:6.1f}s]"
                if current.startswith("LABEL "):
                    labels_seen.append(head)
                else:
                    flush_labels()
                    out(f"{head} {current[:110]}")
                continue
            if line.strip() == "---> Using cache":
                current_cached = True
                if not labels_seen:
                    out("            (from cache)")
            elif "patchstack" in current and line.strip() and not line.startswith((" ---> ", "Removing intermediate")):
                out(f"            | {line.rstrip()}")  # the validation's own report
            step_log.append(line)
    end_step()
    flush_labels()
    if image_id is None:
        raise StackError("docker build ended without an image id", hint="see the output above")
    for t in [plan.tag, *plan.extra_tags]:
        repo, tag = t.rsplit(":", 1)
        c.images.get(image_id).tag(repo, tag)
    stats["seconds"] = round(time.monotonic() - t0, 1)
    out(f"built {image_id[:19]} in {stats['seconds']} s: {stats['steps']} steps, {stats['cached']} from cache, "
        f"{stats['run']} run; tagged {', '.join([plan.tag, *plan.extra_tags])}")
    return image_id, stats


def inspect_labels(image: str) -> dict[str, str]:
    """The labels of an image this stack built; an error for a missing image or a foreign one."""
    c = client()  # says so if the Docker SDK or the engine is missing
    import docker

    try:
        labels = c.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        raise StackError(f"no image {image!r} in this Docker engine",
                         hint="`docker images` lists them; `make image` builds one") from None
    if not any(k.startswith(NS + ".") for k in labels):
        raise StackError(f"image {image!r} has none of this stack's labels ({NS}.*): not built by "
                         "`make image` or `make image-smoke`")
    return labels


def format_labels(lab: dict[str, str]) -> str:
    width = max((len(k) for k in lab), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in sorted(lab.items()))


def push(tags: list[str], registry: str, out=print) -> None:
    c = client()
    missing = []
    for t in tags:
        try:
            c.images.get(t)
        except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound without importing docker here
            missing.append(t)
    if missing:
        raise StackError(f"nothing pushed: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on this "
                         "Docker engine", hint="build it first with make image (the same GEMMA4=, TAG= and series)")
    for t in tags:
        repo, tag = t.rsplit(":", 1)
        target = f"{registry.rstrip('/')}/{repo}"
        c.images.get(t).tag(target, tag)
        for line in c.images.push(target, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise StackError(f"push of {target}:{tag} failed: {line['error']}")
        out(f"pushed {target}:{tag}")


# ------------------------------------------------------------------ the offline smoke build


def run_with_heartbeat(cmd: list[str], label: str, out=print, every: float = 10.0) -> tuple[int, str]:
    """Run a long command with its output captured, printing every `every` seconds how long it has
    run and its latest line; returns its exit code and its last lines (for an error message)."""
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            del lines[:-40]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with sources.heartbeat(lambda t: f"  {label}: {t:.0f} s; {lines[-1] if lines else 'no output yet'}",
                           every, out):
        proc.wait()
    reader.join(timeout=5)
    return proc.returncode, "\n".join(lines[-15:])


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (DEBIAN_MIRROR overrides)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
              *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        try:
            text = f.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


SMOKE_SUITE = "bookworm"
SMOKE_PACKAGES = "python3,git,ca-certificates"


def debian_rootfs(out=print) -> Path:
    """Debian bookworm (minbase, with python3, git, ca-certificates) made by debootstrap from the
    mirror apt uses here, once: kept in the source cache. The base of every image this project
    makes without a registry (the smoke base, the Slurm test image)."""
    rootfs_cache = sources.cache_root() / "rootfs" / f"{SMOKE_SUITE}-minbase"
    if not (rootfs_cache / ".complete").exists():
        shutil.rmtree(rootfs_cache, ignore_errors=True)
        rootfs_cache.parent.mkdir(parents=True, exist_ok=True)
        mirror = debian_mirror()
        out(f"debootstrap {SMOKE_SUITE} ({SMOKE_PACKAGES}) from {mirror} ...")
        t = time.monotonic()
        code, tail = run_with_heartbeat(["debootstrap", "--variant=minbase", f"--include={SMOKE_PACKAGES}",
                                         SMOKE_SUITE, str(rootfs_cache), mirror], "debootstrap", out)
        if code != 0:
            raise StackError(f"debootstrap failed: {tail}",
                             hint="apt-get install debootstrap; set DEBIAN_MIRROR to a reachable Debian mirror")
        (rootfs_cache / ".complete").write_text("ok\n")
        out(f"  done in {time.monotonic() - t:.0f} s")
    return rootfs_cache


def build_labels(plan: Plan) -> dict[str, str]:
    """The labels a build writes: the plan's, and on a smoke image the clone that made it (so that
    `make distclean` removes this clone's smoke images and no other's)."""
    if not plan.smoke:
        return dict(plan.labels)
    return {**plan.labels, preflight.CLONE_LABEL: preflight.clone_id()}


def import_rootfs(rootfs: Path, tag: str) -> None:
    """`docker import` of a root folder as `tag`, labelled with this clone (see build_labels)."""
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = subprocess.run(["docker", "import", "--change", f"LABEL {preflight.CLONE_LABEL}={preflight.clone_id()}",
                          "-", tag], stdin=tar.stdout, capture_output=True, text=True)
    tar.wait()
    if imp.returncode != 0:
        raise StackError(f"docker import of {tag} failed: {imp.stderr.strip()}")


def smoke_base(manifest: Manifest, out=print) -> str:
    """A stand-in for the SGLang image: Debian with Python and git, and SGLang's sources from the
    PyPI sdist as a git checkout at /sgl-workspace/sglang. Made once, then reused by its tag."""
    sgl = sources.source(manifest.upstream("sglang"), prefer_sdist=True)
    tag = f"{NAME}-smoke-base:{SMOKE_SUITE}-sglang-{sgl.commit[:12]}"
    c = client()
    try:
        c.images.get(tag)
        out(f"smoke base {tag}: already built")
        return tag
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound without importing docker here
        pass
    rootfs_cache = debian_rootfs(out)
    staging = manifest.root / "out" / "image" / "smoke-rootfs"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(rootfs_cache), str(staging)], check=True)
    sgl_dir = staging / "sgl-workspace" / "sglang"
    sgl_dir.parent.mkdir(parents=True)
    workspace.init_tree(sgl_dir, sgl, "sglang", [])
    git("branch", "-q", "-m", "patches", "pinned", cwd=sgl_dir)
    git("tag", "-d", workspace.UPSTREAM_TAG, cwd=sgl_dir)
    out(f"docker import -> {tag}")
    try:
        import_rootfs(staging, tag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tag


SMOKE_CHECK = """set -e
export UPSTREAM_SLIME_GIT=/root/slime PATCHSTACK_CACHE=/tmp/patchstack-cache
for t in {trees}; do
  name=${{t%%=*}}; path=${{t#*=}}
  if [ -e "$path/LEFT-OUT" ]; then echo "$name: LEFT OUT: $(cat "$path/LEFT-OUT")"; continue; fi
  case " {partial} " in
    *" $name "*)  # the build applied only part of this series: the host compares the report with the plan
      patchstack check "$name" --tree "$path" --expect applied {flags} --json > "/tmp/$name.json" || true
      echo "PARTIAL $name $(tr -d '\\n' < "/tmp/$name.json")";;
    *) patchstack check "$name" --tree "$path" --expect applied {flags};;
  esac
done
"""


def _check_partial(plan: Plan, logs: str) -> list[str]:
    """For a tree the build patched only in part: each entry applied that the plan applied, each
    other one among those the plan left out. Returns what differs (empty: as planned)."""
    wrong = []
    for line in logs.splitlines():
        if not line.startswith("PARTIAL "):
            continue
        _, name, text = line.split(" ", 2)
        tp = plan.trees[name]
        planned = {n for _, n, _ in tp.entries}
        try:
            entries = json.loads(text)["series"][0]["entries"]
        except (ValueError, KeyError, IndexError):
            wrong.append(f"{name}: the check gave no report ({text[:200]!r})")
            continue
        for e in entries:
            if e["status"] == "applied" and e["name"] not in planned:
                wrong.append(f"{name}: {e['name']} is applied, but the plan left it out")
            elif e["status"] != "applied" and e["name"] not in tp.left_out:
                wrong.append(f"{name}: {e['name']} is {e['status']}, not applied")
    return wrong


def smoke_verify(plan: Plan, out=print) -> None:
    """Inside a container (no network): every tree reports its patches applied; the labels are the plan's."""
    c = client()
    got = c.images.get(plan.tag).labels or {}
    wrong = {k: (v, got.get(k)) for k, v in plan.labels.items() if got.get(k) != v}
    if wrong:
        raise StackError("the image's labels differ from the plan: " + "; ".join(
            f"{k}: expected {v!r}, found {g!r}" for k, (v, g) in sorted(wrong.items())))
    for name, tp in plan.trees.items():
        for _, n, h in tp.entries:
            if f"{n} sha256={h}" not in " ".join(got.values()):
                raise StackError(f"label for {name}'s {n} (sha256 {h}) is missing")
    out(f"labels: {len(plan.labels)} present and equal to the plan (pins: "
        + ", ".join(f"{n} {tp.commit[:12]}" for n, tp in plan.trees.items()) + ")")
    trees = " ".join(f"{n}={tp.image_path}" for n, tp in plan.trees.items())
    partial = " ".join(n for n, tp in plan.trees.items() if tp.included and tp.left_out)
    script = SMOKE_CHECK.format(trees=trees, partial=partial, flags="--gemma4" if plan.gemma4 else "")
    ctr = c.containers.run(plan.tag, ["sh", "-c", script], network_mode="none", detach=True)
    try:
        code = ctr.wait(timeout=600)["StatusCode"]
        logs = ctr.logs().decode("utf-8", "replace")
    finally:
        ctr.remove(force=True)
    out("\n".join(line for line in logs.rstrip().splitlines() if not line.startswith("PARTIAL ")))
    if code != 0:
        raise StackError(f"the check inside the smoke image failed (exit {code})", hint="see its report above")
    wrong = _check_partial(plan, logs)
    if wrong:
        raise StackError("a tree the build patched in part is not as planned: " + "; ".join(wrong))
    for n, tp in plan.trees.items():
        if tp.included and tp.left_out:
            out(f"{n}: applied as planned: {', '.join(x for _, x, _ in tp.entries) or 'none'}; left out by the "
                f"build: {', '.join(tp.left_out)} ({tp.reason})")
