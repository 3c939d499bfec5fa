"""Synthetic worlds for the tool: a stack repository and upstream git repositories the tests build."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

# The SGLang tests run SGLang's Triton kernels on the CPU, in Triton's interpreter. That is
# decided when Triton is first imported (megatron-core imports it too, in other tests of the
# same session), so it is set here, before any test module is imported.
if os.environ.get("GEMMA4_TRITON_ON_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "build"))

from patchstack import cli  # noqa: E402

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_AUTHOR_DATE": "1700000000 +0000", "GIT_COMMITTER_DATE": "1700000000 +0000",
}


def run_git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, env={**os.environ, **GIT_ENV})
    if p.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {p.stderr.decode()}")
    return p.stdout.decode()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (outside .git) with its mode and content hash: 'byte for byte'."""
    out = {}
    for p in sorted(root.rglob("*")):
        if ".git" in p.relative_to(root).parts:
            continue
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = f"{oct(p.stat().st_mode)}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


class Upstream:
    """A git repository standing in for an upstream; `pin` is the commit the stack pins."""

    def __init__(self, path: Path, files: dict[str, str]):
        self.path = path
        path.mkdir(parents=True)
        run_git(path, "init", "-q", "-b", "main")
        self.pin = self.commit(files, "initial")

    def commit(self, files: dict[str, str | None], msg: str) -> str:
        for rel, text in files.items():
            p = self.path / rel
            if text is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        run_git(self.path, "add", "-A")
        run_git(self.path, "commit", "-q", "--allow-empty", "-m", msg)
        return run_git(self.path, "rev-parse", "HEAD").strip()

    def read(self, rel: str, commit: str | None = None) -> str:
        return run_git(self.path, "show", f"{commit or self.pin}:{rel}")

    def diff(self, edits: dict[str, str | None], *, subject: str = "Change things",
             status: str = "environment needed by the tests") -> str:
        """A patch of ours (header + git diff) that makes `edits` on top of the pin."""
        run_git(self.path, "checkout", "-q", "--detach", self.pin)
        try:
            for rel, text in edits.items():
                p = self.path / rel
                if text is None:
                    p.unlink()
                else:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(text)
            run_git(self.path, "add", "-A")
            body = run_git(self.path, "diff", "--cached", "--no-ext-diff", "--no-color", "HEAD")
            run_git(self.path, "reset", "-q", "--hard")
        finally:
            run_git(self.path, "checkout", "-q", "main")
        lic = "" if "License:" in status else ("\nLicense: Apache-2.0; this change modifies a test upstream (example, "
                                                "Apache-2.0), whose files stay under that license (NOTICE)")
        return (f"From: t <t@example.invalid>\nSubject: [PATCH] {subject}\n\nUpstream-Status: {status}{lic}\n"
                f"---\n{body}")

    def checkout(self, dest: Path, commit: str | None = None) -> Path:
        run_git(self.path.parent, "clone", "-q", str(self.path), str(dest))
        run_git(dest, "checkout", "-q", "--detach", commit or self.pin)
        return dest


def file_patch(tmp: Path, path: str, before: str, after: str) -> str:
    """The git diff that turns `before` into `after` at `path` (made in a scratch repository)."""
    wt = tmp / "patch-src"
    (wt / Path(path).parent).mkdir(parents=True)
    (wt / path).write_text(before)
    run_git(wt, "init", "-q")
    run_git(wt, "add", "-A")
    run_git(wt, "commit", "-qm", "base")
    (wt / path).write_text(after)
    return run_git(wt, "diff")


def corrupt_context(body: str, mark: str = "  # corrupted") -> tuple[str, str]:
    """The patch with its first context line of some length changed; and that line as it was."""
    ctx = next(line for line in body.splitlines() if line.startswith(" ") and len(line.strip()) > 8)
    return body.replace(ctx + "\n", ctx + mark + "\n", 1), ctx


def numbered(n: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(1, n + 1))


def sub_once(text: str, old: str, new: str) -> str:
    """`text` with the first `old` replaced by `new` (which must be there)."""
    assert old in text, old
    return text.replace(old, new, 1)


class World:
    """A stack repository (patches/pins.toml, series folders) wired to synthetic upstreams."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp = tmp
        self.root = tmp / "stack"
        (self.root / "patches").mkdir(parents=True)
        self.cache = tmp / "cache"
        self.mp = monkeypatch
        monkeypatch.setenv("PATCHSTACK_ROOT", str(self.root))
        monkeypatch.setenv("PATCHSTACK_CACHE", str(self.cache))
        self.upstreams: dict[str, Upstream] = {}
        self.series: dict[str, dict[str, list[str]]] = {}

    def upstream(self, name: str, files: dict[str, str]) -> Upstream:
        up = Upstream(self.tmp / "remotes" / name, files)
        self.upstreams[name] = up
        self.series[name] = {"base": [], "gemma4": []}
        self.mp.setenv(f"UPSTREAM_{name.upper()}_GIT", str(up.path))
        self.write()
        return up

    def write(self) -> None:
        pins = ""
        for name, up in self.upstreams.items():
            pins += (f'[upstream.{name}]\nversion = "v1"\ncommit = "{up.pin}"\n'
                     f'git = "https://example.invalid/{name}.git"\nimage_path = "/opt/{name}"\n\n')
        pins += '[groups]\norder = ["base", "gemma4"]\noptional = ["gemma4"]\n'
        (self.root / "patches" / "pins.toml").write_text(pins)
        for name, groups in self.series.items():
            d = self.folder(name)
            d.mkdir(parents=True, exist_ok=True)
            text = "# test series\n"
            for g, entries in groups.items():
                text += f"[{g}]\n" + "".join(e + "\n" for e in entries)
            (d / "series").write_text(text)

    def folder(self, name: str) -> Path:
        return self.root / "patches" / name / "v1"

    def add_patch(self, upstream: str, name: str, text: str | bytes, group: str = "base") -> Path:
        p = self.folder(upstream) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        self.series[upstream][group].append(name)
        self.write()
        return p

    def add_external(self, upstream: str, ref: str, sha256: str, group: str = "base") -> None:
        self.series[upstream][group].append(f"{ref} sha256={sha256}")
        self.write()

    def repin(self, name: str, commit: str) -> None:
        self.upstreams[name].pin = commit
        self.write()


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    for var in [v for v in os.environ if v.startswith("UPSTREAM_")]:
        monkeypatch.delenv(var)
    return World(tmp_path, monkeypatch)


def tool(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def tool_proc(*argv: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Run the CLI as its own process (for concurrency and kill tests)."""
    e = {**os.environ, "PYTHONPATH": str(REPO / "build"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "patchstack", *argv], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
