"""Upstream sources at their pins, in a cache shared by every run and every clone.

Each upstream is a bare git repository in the cache holding its pinned commit. It is filled from
UPSTREAM_<NAME>_GIT, else the git URL in patches/pins.toml (a shallow fetch by commit, a full
fetch if the remote refuses that). SGLang can instead come from its PyPI sdist: the archive is
downloaded, its sha256 checked, and its files committed under python/ with fixed names and dates,
so the same archive always gives the same commit.

A lock per upstream (flock) keeps two runs from filling the same cache at once. A git object name
is the hash of its content, so a commit found in the cache is the pinned one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceUnavailable, StackError
from .manifest import Upstream
from .trees import GitTree, git

SDIST_IDENTITY = {
    "GIT_AUTHOR_NAME": "patchstack",
    "GIT_AUTHOR_EMAIL": "patchstack@localhost",
    "GIT_AUTHOR_DATE": "1000000000 +0000",
    "GIT_COMMITTER_NAME": "patchstack",
    "GIT_COMMITTER_EMAIL": "patchstack@localhost",
    "GIT_COMMITTER_DATE": "1000000000 +0000",
}
FETCH_TIMEOUT_ENV = {"GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "60"}


def cache_root() -> Path:
    env = os.environ.get("PATCHSTACK_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gemma4-stack"


@contextlib.contextmanager
def locked(name: str):
    """An exclusive lock on one upstream's part of the cache."""
    d = cache_root() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Source:
    upstream: Upstream
    tree: GitTree
    origin: str  # where the tree came from, in words
    commit: str  # the commit in the cache (the pin, or the sdist's commit)


def _bare(path: Path) -> Path:
    if not (path / "HEAD").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        git("init", "--bare", "-q", str(tmp))
        try:
            os.rename(tmp, path)
        except OSError:  # someone else made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _has_commit(repo: Path, commit: str) -> bool:
    return git("cat-file", "-e", f"{commit}^{{commit}}", git_dir=repo, check=False).returncode == 0


def _fetch_pin(repo: Path, url: str, commit: str, name: str, via: str) -> None:
    # A fetch can take minutes: say what is fetched and, after it, how long it took (stderr, so
    # that reports on stdout stay as they are).
    print(f"{name}: fetching {commit[:12]} from {url} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        with heartbeat(lambda t: f"{name}: still fetching ({t:.0f} s)"):
            _fetch_pin_quietly(repo, url, commit, name, via)
    finally:
        print(f"{name}: fetch ended after {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(say, every: float = 15.0, out=None):
    """While the block runs, every `every` seconds print `say(seconds so far)` (to `out`, else
    stderr): a long step tells that it still runs."""
    import threading

    stop = threading.Event()
    t0 = time.monotonic()
    out = out or (lambda line: print(line, file=sys.stderr, flush=True))

    def beat() -> None:
        while not stop.wait(every):
            out(say(time.monotonic() - t0))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fetch_pin_quietly(repo: Path, url: str, commit: str, name: str, via: str) -> None:
    p = git("fetch", "-q", "--no-tags", "--depth", "1", url, commit, git_dir=repo, check=False, env=FETCH_TIMEOUT_ENV)
    if p.returncode != 0 or not _has_commit(repo, commit):
        first_err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        unreachable = any(s in "\n".join(first_err) for s in (
            "Could not resolve host", "unable to access", "does not appear to be a git repository",
            "Connection refused", "Connection timed out", "No such file or directory", "not found",
        ))
        if unreachable and p.returncode != 0:
            raise SourceUnavailable(
                name,
                f"{name}: cannot reach {url} (from {via}): {_git_error(first_err)}",
                hint=f"point {('UPSTREAM_' + name.upper() + '_GIT')} at a local mirror holding {commit}",
            )
        # The remote may refuse a fetch by commit: fetch its branches instead.
        p = git("fetch", "-q", "--no-tags", url, "+refs/heads/*:refs/remotes/origin/*",
                git_dir=repo, check=False, env=FETCH_TIMEOUT_ENV)
        if p.returncode != 0:
            raise SourceUnavailable(name, f"{name}: fetching {url} (from {via}) failed: "
                                    + p.stderr.decode("utf-8", "replace").strip())
        if not _has_commit(repo, commit):
            raise StackError(
                f"{name}: the pinned commit {commit} is not in {url} (from {via})",
                hint="check the pin in patches/pins.toml, or point "
                f"UPSTREAM_{name.upper()}_GIT at a repository that holds it",
            )
    # Keep the pin reachable so that git gc never drops it.
    git("update-ref", f"refs/pins/{commit}", commit, git_dir=repo)


def _git_error(lines: list[str]) -> str:
    """git's own reason: its first 'fatal:' line, else its last line."""
    return next((x for x in lines if x.startswith("fatal:")), lines[-1] if lines else "git fetch failed")


def git_source(up: Upstream, *, offline: bool = False) -> Source:
    """The upstream at its pinned commit, from the cache or fetched into it."""
    repo = cache_root() / "git" / f"{up.name}.git"
    url, via = up.git_url()
    with locked(up.name):
        _bare(repo)
        if not _has_commit(repo, up.commit):
            if offline:
                raise SourceUnavailable(up.name, f"{up.name}: {up.commit[:12]} is not in the cache and --offline was given")
            _fetch_pin(repo, url, up.commit, up.name, via)
            origin = f"git {url} (from {via})"
        else:
            origin = f"git cache {repo}"
    return Source(up, GitTree(repo, up.commit, label=f"{up.name}@{up.commit[:12]}"), origin, up.commit)


def _download(url: str, dest: Path, sha256: str, name: str) -> None:
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        if "://" not in url or url.startswith("file://"):
            src = url[len("file://"):] if url.startswith("file://") else url
            shutil.copyfile(src, tmp)
        else:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
                shutil.copyfileobj(r, out)
    except (OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise SourceUnavailable(name, f"{name}: cannot download the sdist {url}: {e}",
                                hint=f"set UPSTREAM_{name.upper()}_SDIST to a local copy of the archive") from None
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != sha256:
        tmp.unlink(missing_ok=True)
        raise StackError(f"{name}: the sdist from {url} has sha256 {digest}, patches/pins.toml expects {sha256}",
                         hint="the archive is not the pinned one: use the pinned file, or change the pin on purpose")
    os.replace(tmp, dest)


def _kind(archive: Path) -> str:
    return "wheel" if archive.name.endswith(".whl") else "sdist"


def _members(archive: Path):
    """(path, bytes, git mode) of each file of an sdist (its top folder stripped) or a wheel.

    A wheel holds the package at its top, as the repository's python/ folder does, less the
    build files; its .dist-info folder is metadata, not source, and is left out."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                top = info.filename.split("/", 1)[0]
                if info.is_dir() or top.endswith((".dist-info", ".data")):
                    continue
                mode = "100755" if (info.external_attr >> 16) & 0o111 else "100644"
                yield info.filename, z.read(info), mode
        return
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1] or m.isdir():
                continue
            if m.issym():
                yield parts[1], m.linkname.encode(), "120000"
            elif m.isfile():
                yield parts[1], tar.extractfile(m).read(), "100755" if m.mode & 0o111 else "100644"  # type: ignore[union-attr]


def _import_sdist(repo: Path, archive: Path, prefix: str, sha256: str) -> str:
    """Commit the archive's files (minus its top folder) under `prefix`; return the commit.

    One `git fast-import` stream with a fixed identity and date: the same archive always gives
    the same commit, on any machine.
    """
    ref = f"refs/sdist/{sha256}"
    msg = f"{archive.name} from PyPI, sha256 {sha256}, laid out under {prefix or '.'}/\n".encode()
    who = f"{SDIST_IDENTITY['GIT_COMMITTER_NAME']} <{SDIST_IDENTITY['GIT_COMMITTER_EMAIL']}> " \
          f"{SDIST_IDENTITY['GIT_COMMITTER_DATE']}"
    stream = [f"commit {ref}\nauthor {who}\ncommitter {who}\ndata {len(msg)}\n".encode(), msg, b"\n"]
    for rel, data, mode in _members(archive):
        rel = f"{prefix}/{rel}" if prefix else rel
        if "\n" in rel or rel.startswith('"'):
            raise StackError(f"{archive}: cannot lay out the member {rel!r}")
        stream += [f"M {mode} inline {rel}\ndata {len(data)}\n".encode(), data, b"\n"]
    git("fast-import", "--quiet", "--force", git_dir=repo, input=b"".join(stream))
    return git("rev-parse", ref, git_dir=repo).stdout.decode().strip()


def sdist_source(up: Upstream, *, offline: bool = False, url: str | None = None) -> Source:
    """The upstream from its PyPI sdist, as a deterministic commit in the cache.

    `url` overrides where the archive comes from (default: UPSTREAM_<NAME>_SDIST, else pins.toml)."""
    if up.sdist is None:
        raise StackError(f"{up.name} has no sdist in patches/pins.toml")
    url = url or up.sdist_url()
    repo = cache_root() / "git" / f"{up.name}.git"
    archive = cache_root() / "sdist" / Path(url).name
    with locked(up.name):
        _bare(repo)
        ref = f"refs/sdist/{up.sdist.sha256}"
        p = git("rev-parse", "-q", "--verify", ref, git_dir=repo, check=False)
        if p.returncode == 0:
            commit, origin = p.stdout.decode().strip(), f"PyPI {_kind(archive)} from the cache ({archive.name}, sha256 verified)"
        else:
            archive.parent.mkdir(parents=True, exist_ok=True)
            if not archive.exists() or hashlib.sha256(archive.read_bytes()).hexdigest() != up.sdist.sha256:
                if offline:
                    raise SourceUnavailable(up.name, f"{up.name}: the sdist is not in the cache and --offline was given")
                _download(url, archive, up.sdist.sha256, up.name)
            commit = _import_sdist(repo, archive, up.sdist.prefix, up.sdist.sha256)
            origin = f"PyPI {_kind(archive)} {archive.name} (sha256 verified)"
        # The archive is verified and its commit derived from it alone; a pin that names another
        # commit is refused, and the cache (its ref included) stays as it is: the ref is right.
        if up.sdist.commit is not None and commit != up.sdist.commit:
            raise StackError(
                f"{up.name}: the {_kind(archive)} {archive.name} (sha256 {up.sdist.sha256[:12]}..., verified) lays "
                f"out as commit {commit}; patches/pins.toml says {up.sdist.commit}",
                hint=f"the commit is derived from the archive alone (its files under '{up.sdist.prefix or '.'}/', "
                f"one commit with a fixed author and date: docs/tool.md, \"A new pin\"). If you are pinning this "
                f"archive, set [upstream.{up.name}.sdist] commit = \"{commit}\"; if not, the sha256 is the wrong one",
            )
    return Source(up, GitTree(repo, commit, label=f"{up.name} {up.version} (sdist)"), origin, commit)


def pypi_index(project: str) -> tuple[str, dict]:
    """The project's page of the package index (PEP 691 JSON; PIP_INDEX_URL as pip has it): its URL
    and its data."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    url = f"{index}/{project}/"
    try:
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return url, json.load(r)
    except (OSError, ValueError) as e:
        raise SourceUnavailable(project, f"{project}: cannot read the package index {url}: {e}") from None


def resolve_pypi_sdist(project: str, version: str) -> tuple[str, str]:
    """The URL and sha256 of a project's sdist on the package index (PEP 691 JSON), or of a wheel
    of that version when the release ships no sdist."""
    url, data = pypi_index(project)
    want = f"{project}-{version}.tar.gz"
    files = [f for f in data.get("files", []) if f.get("hashes", {}).get("sha256") and not f.get("yanked")]
    for f in files:
        if f.get("filename") == want:
            return urllib.parse.urljoin(url, f["url"]), f["hashes"]["sha256"]
    # No sdist: a wheel of that version holds the same package sources (pure Python first).
    prefix = f"{project.replace('-', '_')}-{version}-"
    wheels = sorted((f for f in files if f["filename"].startswith(prefix) and f["filename"].endswith(".whl")),
                    key=lambda f: ("-none-any.whl" not in f["filename"], "x86_64" not in f["filename"], f["filename"]))
    if wheels:
        return urllib.parse.urljoin(url, wheels[0]["url"]), wheels[0]["hashes"]["sha256"]
    raise StackError(f"{project}: neither an sdist nor a wheel of {version} on {url}",
                     hint="check the version")


def ls_remote_tag(up: Upstream, tag: str) -> str:
    """The commit a tag names in the upstream's git remote."""
    url, via = up.git_url()
    p = git("ls-remote", url, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}", check=False, env=FETCH_TIMEOUT_ENV)
    if p.returncode != 0:
        raise SourceUnavailable(up.name, f"{up.name}: cannot reach {url} (from {via}): "
                                + p.stderr.decode("utf-8", "replace").strip())
    refs = dict(reversed(line.split("\t")) for line in p.stdout.decode().splitlines() if "\t" in line)
    sha = refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")
    if not sha:
        raise StackError(f"{up.name}: no tag {tag!r} in {url}", hint="give a commit, or a tag that exists")
    return sha


def source(up: Upstream, *, offline: bool = False, prefer_sdist: bool = False) -> Source:
    """The upstream's pinned tree by the best way available.

    Order: UPSTREAM_<NAME>_GIT if set; the pin already in the cache; the sdist (if the upstream
    has one); the git URL of the manifest. An unreachable source raises SourceUnavailable, which
    says which way was tried and why it failed.
    """
    tried: list[str] = []
    repo = cache_root() / "git" / f"{up.name}.git"
    explicit_git = bool(os.environ.get(up.env_git))
    if not prefer_sdist and (explicit_git or (repo / "HEAD").exists() and _has_commit(repo, up.commit)):
        try:
            return git_source(up, offline=offline)
        except SourceUnavailable as e:
            tried.append(e.message)
    if up.sdist is not None:
        try:
            return sdist_source(up, offline=offline)
        except SourceUnavailable as e:
            tried.append(e.message)
    if not explicit_git:
        try:
            return git_source(up, offline=offline)
        except SourceUnavailable as e:
            tried.append(e.message)
    raise SourceUnavailable(
        up.name, "; ".join(tried),
        hint=f"set {up.env_git} to a path or URL of a git repository holding {up.commit}"
        + (f", or {up.env_sdist} to the sdist archive" if up.sdist else ""),
    )
