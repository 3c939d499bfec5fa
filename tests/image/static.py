"""The static tier: what can be checked on any machine, GPU or not.

* every tree (SGLang, Megatron-LM, slime) is at its pin and its series is applied:
  `patchstack check <name> --tree <path> --expect applied`, the tool shipped in the image;
* every pinned dependency is installed at its pin. The pins are the build's own values, written by
  the Dockerfile into <stack>/pins.env from the ARGs where they are declared (PINS below says how
  each is checked; an ARG the suite has no check for fails, so a new pin cannot go unchecked);
* the compiled dependencies and the patched trees import (IMPORTS), the trees from their own
  paths;
* the image's labels (given by the driver, which reads them with `docker inspect`) agree with the
  trees, the series files and the pins inside.

In the offline smoke image (pins.env OFFLINE=1) the compiled dependencies are not installed: a
dependency that is absent there, or an import that fails for a module that is absent, is reported
as skipped with its name; any other failure is a failure there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from report import FAIL, PASS, SKIP, Result

TIER = "static"
NS = "io.github.gemma4-stack"


class SuiteError(Exception):
    pass


@dataclass(frozen=True)
class Pin:
    component: str
    dist: str | None  # the installed distribution that carries it
    kind: str  # version | commit | url | unrecorded | build-checked | label | source
    note: str = ""


# Every ARG the Dockerfile writes into pins.env, and how the suite checks it.
PINS = {
    "BASE_IMAGE": Pin("base image", None, "label", "compared with the label org.opencontainers.image.base.name"),
    "OFFLINE": Pin("build mode", None, "label", "compared with the label io.github.gemma4-stack.smoke"),
    "FLASH_ATTN_VERSION": Pin("flash-attn 2", "flash-attn", "version"),
    "FA3_COMMIT": Pin("FlashAttention-3", None, "unrecorded",
                      "built by `python setup.py install` in a clone checked out at the pin, which records no "
                      "commit in the install; its import is checked"),
    "TE_VERSION": Pin("Transformer Engine", "transformer_engine", "version"),
    "APEX_COMMIT": Pin("apex", "apex", "commit"),
    "MBRIDGE_COMMIT": Pin("mbridge", "mbridge", "commit"),
    "TMS_COMMIT": Pin("torch_memory_saver", "torch_memory_saver", "commit"),
    "MEGATRON_BRIDGE_COMMIT": Pin("Megatron-Bridge", "megatron-bridge", "commit"),
    "FLA_VERSION": Pin("flash-linear-attention", "flash-linear-attention", "version"),
    "TILELANG_VERSION": Pin("tilelang", "tilelang", "version"),
    "MODELOPT_VERSION": Pin("nvidia-modelopt", "nvidia-modelopt", "version"),
    "CUDNN_VERSION": Pin("cuDNN", "nvidia-cudnn-cu12", "version"),
    "RAY_VERSION": Pin("Ray", "ray", "version"),
    "SGLANG_ROUTER_WHEEL": Pin("sglang-router", "sglang-router", "url"),
    "SGLANG_ROUTER_SHA256": Pin("sglang-router", None, "build-checked",
                                "checked by pip during the build when given (empty: not given)"),
    "GEMMA4": Pin("Gemma4 group", None, "label", "compared with the label io.github.gemma4-stack.gemma4"),
    "GEMMA4_PACKAGES": Pin("Gemma4 packages", None, "build-checked", "pip install of the listed requirements"),
    # Where the pins above were downloaded from (docs/image.md, "Air-gapped sites"): nothing to compare
    # with what is installed (each pin is checked by its version or commit); compared with the labels.
    "PIP_INDEX_URL": Pin("pip index", None, "source"),
    "PIP_EXTRA_INDEX_URL": Pin("pip index", None, "source"),
    "PIP_TRUSTED_HOST": Pin("pip index", None, "source"),
    "APT_MIRROR": Pin("apt packages", None, "source"),
    "GITHUB_MIRROR": Pin("git submodules", None, "source"),
    "FA3_GIT": Pin("FlashAttention-3", None, "source"),
    "APEX_GIT": Pin("apex", None, "source"),
    "MBRIDGE_GIT": Pin("mbridge", None, "source"),
    "TMS_GIT": Pin("torch_memory_saver", None, "source"),
    "MEGATRON_BRIDGE_GIT": Pin("Megatron-Bridge", None, "source"),
    "DEPS_IMAGE": Pin("deps image", None, "source", "checked by the tool against the deps settings before the build"),
}

# (component, modules imported in one fresh interpreter, the pin it is built from, the tree it
# must come from). "{gemma4}" entries only with the Gemma4 group.
IMPORTS = [
    ("Transformer Engine", ["transformer_engine.pytorch"], "TE_VERSION", None),
    ("flash-attn 2", ["flash_attn", "flash_attn_2_cuda"], "FLASH_ATTN_VERSION", None),
    ("FlashAttention-3", ["flash_attn_3.flash_attn_interface"], "FA3_COMMIT", None),
    ("apex", ["apex", "amp_C", "fused_layer_norm_cuda"], "APEX_COMMIT", None),
    ("SGLang", ["sglang", "sglang.srt.server_args"], None, "sglang"),
    ("SGLang Gemma4", ["sglang.srt.models.gemma4_causal"], None, "sglang:gemma4"),
    ("sgl-kernel", ["sgl_kernel"], None, None),
    ("Megatron-LM", ["megatron.core", "megatron.training"], None, "megatron"),
    ("slime", ["slime"], None, "slime"),
    ("slime Gemma4", ["slime_plugins.models.gemma4"], None, "slime:gemma4"),
    ("mbridge", ["mbridge"], "MBRIDGE_COMMIT", None),
    ("torch_memory_saver", ["torch_memory_saver"], "TMS_COMMIT", None),
    ("Ray", ["ray"], "RAY_VERSION", None),
]


@dataclass
class Image:
    stack: Path
    pins_file: Path
    pins: dict[str, str]
    manifest: object
    trees: dict[str, Path]
    labels: dict[str, str] | None
    label_file: str | None
    dist_path: list[str] | None = None  # where to look for installed distributions (tests)
    imports: list | None = None  # IMPORTS, or a test's own list

    @property
    def offline(self) -> bool:
        return self.pins.get("OFFLINE") == "1"

    @property
    def gemma4(self) -> bool:
        return self.pins.get("GEMMA4") == "1"

    @classmethod
    def load(cls, stack: Path, *, pins: str | None = None, labels: str | None = None,
             trees: list[str] | None = None) -> "Image":
        pins_file = Path(pins) if pins else stack / "pins.env"
        if not pins_file.is_file():
            raise SuiteError(f"no pins file at {pins_file}: this suite runs in an image built by "
                             "docker/Dockerfile (which writes /opt/gemma4-stack/pins.env), or give --pins FILE")
        values = read_pins(pins_file)
        sys.path.insert(0, str(stack / "build"))
        os.environ["PATCHSTACK_ROOT"] = str(stack)
        from patchstack import manifest as manifest_mod

        man = manifest_mod.load(stack)
        where = {n: Path(up.image_path) for n, up in man.upstreams.items()}
        for item in trees or []:
            name, sep, path = item.partition("=")
            if not sep or name not in where:
                raise SuiteError(f"--tree {item!r}: expected NAME=PATH with NAME one of {', '.join(where)}")
            where[name] = Path(path)
        got = None
        if labels:
            try:
                got = json.loads(Path(labels).read_text())
            except (OSError, ValueError) as e:
                raise SuiteError(f"--labels {labels}: cannot read the labels as JSON: {e}") from None
            if not isinstance(got, dict):
                raise SuiteError(f"--labels {labels}: expected a JSON object of labels")
        return cls(stack, pins_file, values, man, where, got, labels)


def read_pins(path: Path) -> dict[str, str]:
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise SuiteError(f"{path}:{i}: expected NAME=VALUE, found {line!r}")
        out[name.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ installed versions


def find_dist(name: str, path: list[str] | None = None):
    found = list(metadata.Distribution.discover(name=name, path=path) if path is not None
                 else metadata.Distribution.discover(name=name))
    return found[0] if found else None


def _version_matches(got: str, pin: str) -> bool:
    return got == pin or got.startswith(pin + "+")  # a local build tag (2.10.0+cu12) is the same release


def check_pin(img: Image, name: str, value: str) -> Result | None:
    spec = PINS.get(name)
    if spec is None:
        return Result(TIER, f"pin {name}", name, FAIL, f"the build's pins file has {name}={value}, which the "
                      "suite has no check for", value, "add it to PINS in tests/image/static.py (how its "
                      "installed version is read), so that no pin goes unchecked")
    label = f"pin {name}"
    if spec.kind in ("unrecorded", "build-checked"):
        return Result(TIER, label, spec.component, SKIP, f"not comparable in the image: {spec.note}", value)
    if spec.kind in ("label", "source"):
        return None  # compared in the label check, not here
    dist = find_dist(spec.dist, img.dist_path)
    if dist is None:
        if img.offline:
            return Result(TIER, label, spec.component, SKIP, f"{spec.dist} is not installed: the offline smoke "
                          "build (OFFLINE=1) skips every network step", value)
        return Result(TIER, label, spec.component, FAIL, f"{spec.dist} is not installed", value,
                      f"rebuild the image (make image GEMMA4=1) and read the build step that installs "
                      f"{spec.component} ({name}={value})")
    got = dist.version
    if spec.kind == "version":
        ok = _version_matches(got, value)
        return Result(TIER, label, spec.component, PASS if ok else FAIL,
                      f"{spec.dist} {got} installed" + ("" if ok else f", the pin is {value}"), value,
                      "" if ok else f"something installed {spec.dist} {got} over the pinned {value}: find the "
                      "later pip step that did (pip install --dry-run shows it) and pin it there, or change "
                      f"{name} on purpose")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if spec.kind == "commit":
        commit = direct.get("vcs_info", {}).get("commit_id", "")
        ok = bool(commit) and (commit == value or commit.startswith(value) or value.startswith(commit))
        found = f"from {direct.get('url', '?')} at {commit}" if commit else \
            f"{got}, not installed from git (no commit recorded)"
        return Result(TIER, label, spec.component, PASS if ok else FAIL, f"{spec.dist} {found}", value,
                      "" if ok else f"reinstall {spec.component} from git at {value} (the Dockerfile's "
                      f"{name}); a later pip step may have replaced it")
    url = direct.get("url", "")
    ok = url == value or url == value.split("#")[0]
    return Result(TIER, label, spec.component, PASS if ok else FAIL,
                  f"{spec.dist} {got} from {url or '(no URL recorded)'}", value,
                  "" if ok else f"install {spec.component} from {value} ({name})")


def check_fixed(img: Image) -> list[Result]:
    """Pins that are not build arguments: SGLang's version (patches/pins.toml) and numpy < 2."""
    out = []
    sgl = img.manifest.upstream("sglang").version.lstrip("v")
    d = find_dist("sglang", img.dist_path)
    if d is None:
        st = SKIP if img.offline else FAIL
        out.append(Result(TIER, "pin sglang", "SGLang", st, "sglang is not pip-installed" +
                          (" (the smoke base holds SGLang's sources only)" if img.offline else ""), sgl,
                          "" if img.offline else "the base image's SGLang must be installed (pip install -e "
                          "/sgl-workspace/sglang/python)"))
    else:
        ok = _version_matches(d.version, sgl)
        out.append(Result(TIER, "pin sglang", "SGLang", PASS if ok else FAIL, f"sglang {d.version} installed", sgl,
                          "" if ok else f"the base image is not SGLang {sgl}: use slimerl/sglang:v{sgl} (BASE_IMAGE)"))
    d = find_dist("numpy", img.dist_path)
    if d is None:
        st = SKIP if img.offline else FAIL
        out.append(Result(TIER, "pin numpy", "numpy", st, "numpy is not installed", "<2",
                          "" if img.offline else "install numpy<2 (slime's recipe)"))
    else:
        ok = int(d.version.split(".")[0]) < 2
        out.append(Result(TIER, "pin numpy", "numpy", PASS if ok else FAIL, f"numpy {d.version} installed", "<2",
                          "" if ok else "a later pip step installed numpy 2; slime's recipe needs numpy<2 last"))
    return out


# ------------------------------------------------------------------ trees and series


def git_out(path: Path, *args: str) -> str | None:
    p = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def left_out(path: Path) -> str | None:
    note = path / "LEFT-OUT"
    return note.read_text().strip() if note.is_file() else None


def check_tree_pin(img: Image, name: str) -> Result:
    up = img.manifest.upstream(name)
    path = img.trees[name]
    label = f"{name} tree at its pin"
    if (why := left_out(path)) is not None:
        return Result(TIER, label, name, SKIP, f"{path}: {why}", up.commit[:12])
    if not path.is_dir():
        return Result(TIER, label, name, FAIL, f"{path} does not exist", up.commit[:12],
                      "the image lacks the tree: rebuild it with make image")
    commit = git_out(path, "rev-parse", "-q", "--verify", "refs/tags/upstream^{commit}") or \
        git_out(path, "rev-parse", "-q", "--verify", "HEAD")
    if commit is None:
        return Result(TIER, label, name, FAIL, f"{path} is not a git checkout", up.commit[:12],
                      "the image's trees are git checkouts (patchstack check --tree needs one); rebuild it")
    ok = commit in up.accepted_commits
    return Result(TIER, label, name, PASS if ok else FAIL, f"{path} at {commit[:12]}", up.commit[:12],
                  "" if ok else f"the tree is not at the pin {up.commit}: rebuild the image from this "
                  "checkout's patches/pins.toml")


def check_series(img: Image, name: str) -> Result:
    path = img.trees[name]
    label = f"{name} series applied"
    if (why := left_out(path)) is not None:
        return Result(TIER, label, name, SKIP, f"{path}: {why}")
    if not path.is_dir():
        return Result(TIER, label, name, FAIL, f"{path} does not exist", "",
                      "the image lacks the tree: rebuild it with make image")
    import patchstack

    cmd = ["check", name, "--tree", str(path), "--expect", "applied", "--json"] + (["--gemma4"] if img.gemma4 else [])
    env = dict(os.environ, PATCHSTACK_ROOT=str(img.stack), PYTHONPATH=str(Path(patchstack.__file__).parents[1]))
    for other, p in img.trees.items():  # external patches are read from the trees in the image
        if (p / ".git").exists() and left_out(p) is None:
            env[img.manifest.upstream(other).env_git] = str(p)
    shown = "patchstack " + " ".join(c for c in cmd if c != "--json")
    p = subprocess.run([sys.executable, "-m", "patchstack", *cmd], capture_output=True, text=True, env=env)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        return Result(TIER, label, name, FAIL, f"`{shown}` exited {p.returncode} without a report: "
                      f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}", "",
                      f"run `{shown}` in the image for the full message")
    rep = data["series"][0]
    entries = rep["entries"]
    # what the build itself left out, as its labels say (an incomplete smoke image): skipped, by name
    by_build = {}
    status = (img.labels or {}).get(f"{NS}.{name}.status", "applied")
    if img.labels is not None and status != "applied":
        built = {x.split(":", 1)[-1] for x in img.labels.get(f"{NS}.{name}.series", "").split(",") if x}
        by_build = {e["name"]: status for e in entries if e["name"] not in built}
    for e in entries:
        if e["name"] in by_build and e["status"] != "applied":
            e["status"], e["reason"] = "skipped", f"left out by the build: {by_build[e['name']]}"
    applied = [e["name"] for e in entries if e["status"] == "applied"]
    why: dict[str, list[str]] = {}  # reason -> entries, so that a shared reason is said once
    for e in entries:
        if e["status"] == "skipped":
            why.setdefault(e["reason"] or rep["reason"], []).append(e["name"])
    skipped = [f"{', '.join(names)} ({reason})" for reason, names in why.items()]
    wrong = [f"{e['name']} ({e['status']}{': ' + e['reason'] if e['reason'] else ''})"
             for e in entries if e["status"] not in ("applied", "skipped")]
    pin = rep["pin"][:12]
    if not entries and rep["status"] not in ("skipped",) and data["exit"] != 0:
        return Result(TIER, label, name, FAIL, rep["reason"] or f"`{shown}` exited {data['exit']}", pin,
                      f"run `{shown}` in the image for the full message")
    if wrong:
        return Result(TIER, label, name, FAIL, "not applied: " + "; ".join(wrong), pin,
                      f"the tree {path} lacks these patches (fits = never applied, fails = neither applied nor "
                      f"applicable): rebuild the image; `{shown}` prints the per-hunk report")
    if skipped:
        return Result(TIER, label, name, SKIP, f"applied: {', '.join(applied) or 'none'}; NOT checked: "
                      + "; ".join(skipped), pin)
    return Result(TIER, label, name, PASS, f"{len(applied)} applied: {', '.join(applied) or 'no entries selected'}"
                  f" (`{shown}`)", pin)


# ------------------------------------------------------------------ imports

_IMPORT_PROBE = r"""
import importlib, json, sys
out = {}
for m in sys.argv[1:]:
    try:
        mod = importlib.import_module(m)
        out[m] = {"ok": True, "file": getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", [])), "")}
    except BaseException as e:
        out[m] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                  "missing": getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None}
        break
print(json.dumps(out))
"""


def check_import(img: Image, component: str, modules: list[str], pin_name: str | None, tree: str | None) -> Result | None:
    label = f"import {component}"
    if tree and tree.endswith(":gemma4"):
        if not img.gemma4:
            return None
        tree = tree.split(":")[0]
    pin = img.pins.get(pin_name, "") if pin_name else ""
    if tree:
        pin = img.manifest.upstream(tree).commit[:12]
        if (why := left_out(img.trees[tree])) is not None:
            return Result(TIER, label, component, SKIP, f"{img.trees[tree]}: {why}", pin)
    env = dict(os.environ)
    if img.dist_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(img.dist_path)
    try:
        # from a neutral folder: `python -c` puts the working folder first on sys.path, and a tree's
        # parent (/root, with slime/ in it) would import as a namespace package
        p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *modules], capture_output=True, text=True,
                           env=env, timeout=600, cwd=tempfile.gettempdir())
        got = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return Result(TIER, label, component, FAIL, f"importing {', '.join(modules)} took over 600 s", pin,
                      "import it by hand in the image to see where it hangs")
    except (ValueError, IndexError):
        return Result(TIER, label, component, FAIL, f"the interpreter importing {', '.join(modules)} died "
                      f"(exit {p.returncode}): {(p.stderr.strip().splitlines() or ['no output'])[-1]}", pin,
                      "import it by hand in the image; a crash at import is a binary built for another "
                      "torch or CUDA")
    bad = next(((m, r) for m, r in got.items() if not r["ok"]), None)
    if bad:
        mod, r = bad
        if img.offline and r.get("missing"):
            return Result(TIER, label, component, SKIP, f"{mod}: {r['error']} (the offline smoke image does "
                          "not install it or what it needs)", pin)
        return Result(TIER, label, component, FAIL, f"{mod}: {r['error']}", pin,
                      f"{component} is broken in this image: if a module is missing, rebuild (make image "
                      "GEMMA4=1) and read its build step; an undefined symbol means it was built against "
                      "another torch/CUDA than the one installed")
    if tree:
        root = str(img.trees[tree])
        outside = [f"{m} from {r['file']}" for m, r in got.items() if not str(r["file"]).startswith(root)]
        if outside:
            return Result(TIER, label, component, FAIL, "imported from outside the patched tree " + root + ": "
                          + "; ".join(outside), pin,
                          f"another copy shadows the patched tree: pip uninstall it, pip install -e {root}")
    return Result(TIER, label, component, PASS, ", ".join(f"{m}" for m in got), pin)


# ------------------------------------------------------------------ labels


def check_labels(img: Image) -> Result:
    if img.labels is None:
        return Result(TIER, "labels agree with the image", "labels", SKIP,
                      "no labels given: make image-test reads them with docker inspect; under Slurm or "
                      "Kubernetes pass --labels FILE (docker inspect --format '{{json .Config.Labels}}' IMAGE)")
    from patchstack import series
    from patchstack.check import PatchSource
    from patchstack.errors import StackError

    lab, wrong, compared = img.labels, [], 0

    def want(key: str, expected: str, what: str) -> None:
        nonlocal compared
        compared += 1
        if lab.get(key) != expected:
            wrong.append(f"{key} = {lab.get(key)!r}, but {what} is {expected!r}")

    want(f"{NS}.smoke", img.pins.get("OFFLINE", "0"), "pins.env OFFLINE")
    want(f"{NS}.gemma4", img.pins.get("GEMMA4", "0"), "pins.env GEMMA4")
    if "BASE_IMAGE" in img.pins:
        want("org.opencontainers.image.base.name", img.pins["BASE_IMAGE"], "pins.env BASE_IMAGE")
    if "DEPS_IMAGE" in img.pins and f"{NS}.deps.image" in lab:
        want(f"{NS}.deps.image", img.pins["DEPS_IMAGE"], "pins.env DEPS_IMAGE")
    for key, value in lab.items():
        for prefix in (f"{NS}.build-arg.", f"{NS}.deps.arg."):  # the settings, and the deps stage's arguments
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name in img.pins:
                want(key, img.pins[name], f"pins.env {name}")
    groups = [g for g in lab.get(f"{NS}.groups", "").split(",") if g]
    for name, up in img.manifest.upstreams.items():
        p = f"{NS}.{name}"
        want(f"{p}.pin", up.commit, "patches/pins.toml in the image")
        want(f"{p}.path", up.image_path, "patches/pins.toml in the image")
        status = lab.get(f"{p}.status", "")
        tree_out = left_out(img.trees[name]) is not None
        if tree_out != status.startswith("left out"):
            wrong.append(f"{p}.status = {status!r}, but the tree {img.trees[name]} "
                         + ("is a LEFT-OUT folder" if tree_out else "is in the image"))
        compared += 1
        if not groups:
            continue
        entries = series.load(img.manifest, name).selected(groups)
        labelled = [x for x in lab.get(f"{p}.series", "").split(",") if x]
        names = [f"{e.group}:{e.name}" for e in entries]
        if status == "applied":
            want(f"{p}.series", ",".join(names), f"the image's {name} series for groups {','.join(groups)}")
        elif labelled != names[: len(labelled)]:
            wrong.append(f"{p}.series = {','.join(labelled)!r} is not the start of the image's series {','.join(names)!r}")
        reader = PatchSource(img.manifest, offline=False)
        for i, e in enumerate(entries[: len(labelled)], 1):
            try:
                h = hashlib.sha256(reader.read(e)).hexdigest()
            except StackError as err:
                wrong.append(f"{p}.patch.{i}: cannot read {e.name} in the image to compare: {err}")
                continue
            want(f"{p}.patch.{i}", f"{e.group} {e.name} sha256={h}", f"the sha256 of {e.name} in the image")
    if wrong:
        return Result(TIER, "labels agree with the image", "labels", FAIL, "; ".join(wrong),
                      lab.get("org.opencontainers.image.version", ""),
                      "the labels describe another build than the image's content: rebuild with make image "
                      "(the labels are set by the tool from the same plan as the content)")
    return Result(TIER, "labels agree with the image", "labels", PASS,
                  f"{compared} labels compared with the pins, trees and series inside")


def run(img: Image, rep) -> None:
    env = {"PATCHSTACK_CACHE": tempfile.mkdtemp(prefix="image-test-cache-")}
    for name in img.manifest.upstreams:  # external patches are read from the trees in the image
        p = img.trees[name]
        if (p / ".git").exists() and left_out(p) is None:
            env[img.manifest.upstream(name).env_git] = str(p)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _run(img, rep)
    finally:  # the caller's environment as it was (the tests run this in-process)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(env["PATCHSTACK_CACHE"], ignore_errors=True)


def _run(img: Image, rep) -> None:
    for name in img.manifest.upstreams:
        rep.run(TIER, f"{name} tree at its pin", name, lambda n=name: check_tree_pin(img, n))
        rep.run(TIER, f"{name} series applied", name, lambda n=name: check_series(img, n))
    for name, value in img.pins.items():
        if name in PINS and PINS[name].kind in ("label", "source"):
            continue  # BASE_IMAGE, OFFLINE, GEMMA4, where downloads came from: compared with the labels below
        rep.run(TIER, f"pin {name}", PINS[name].component if name in PINS else name,
                lambda n=name, v=value: check_pin(img, n, v))
    for r in check_fixed(img):
        rep.add(r)
    for component, modules, pin_name, tree in (img.imports if img.imports is not None else IMPORTS):
        r = check_import(img, component, modules, pin_name, tree)
        if r is not None:
            rep.add(r)
    rep.run(TIER, "labels agree with the image", "labels", lambda: check_labels(img))
