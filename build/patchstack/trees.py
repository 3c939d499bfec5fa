"""Read-only views of a source tree: a git commit, or a folder on disk.

The engine only ever reads the files a patch touches, so a view answers per path.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from .errors import StackError

REGULAR, EXECUTABLE, SYMLINK = "100644", "100755", "120000"


def git(*args: str, cwd: Path | str | None = None, git_dir: Path | str | None = None,
        input: bytes | None = None, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = ["git"]
    if git_dir is not None:
        cmd += ["--git-dir", str(git_dir)]
    cmd += list(args)
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, env=full_env)
    if check and p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip()
        raise StackError(f"git {' '.join(args[:3])} failed in {git_dir or cwd or '.'}: {err}")
    return p


class Tree:
    """A read-only set of files: path -> (mode, bytes)."""

    label: str

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def mode(self, path: str) -> str | None:
        raise NotImplementedError


class GitTree(Tree):
    """The files of one commit in a git repository, read with one `git cat-file --batch`."""

    def __init__(self, git_dir: Path | str, commit: str, label: str | None = None):
        self.git_dir = Path(git_dir)
        self.commit = commit
        self.label = label or f"{git_dir}@{commit[:12]}"
        out = git("ls-tree", "-r", "-z", "--full-tree", commit, git_dir=self.git_dir).stdout
        self._index: dict[str, tuple[str, str]] = {}
        for rec in out.split(b"\0"):
            if not rec:
                continue
            meta, path = rec.split(b"\t", 1)
            mode, _kind, sha = meta.split(b" ")
            self._index[path.decode("utf-8", "surrogateescape")] = (mode.decode(), sha.decode())
        self._cat: subprocess.Popen | None = None

    def paths(self) -> list[str]:
        return list(self._index)

    def mode(self, path: str) -> str | None:
        entry = self._index.get(path)
        return entry[0] if entry else None

    def read(self, path: str) -> bytes | None:
        entry = self._index.get(path)
        if entry is None:
            return None
        if self._cat is None:
            self._cat = subprocess.Popen(
                ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
        assert self._cat.stdin and self._cat.stdout
        self._cat.stdin.write(entry[1].encode() + b"\n")
        self._cat.stdin.flush()
        head = self._cat.stdout.readline().split()
        size = int(head[2])
        data = self._cat.stdout.read(size)
        self._cat.stdout.read(1)  # the newline after the object
        return data

    def close(self) -> None:
        if self._cat is not None:
            self._cat.stdin.close()  # type: ignore[union-attr]
            self._cat.wait()
            self._cat = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class DirTree(Tree):
    """Files in a folder on disk (a target tree about to be patched)."""

    def __init__(self, root: Path | str, label: str | None = None):
        self.root = Path(root)
        self.label = label or str(root)

    def _file(self, path: str) -> Path:
        return self.root / path

    def mode(self, path: str) -> str | None:
        try:
            st = os.lstat(self._file(path))
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return SYMLINK
        if stat.S_ISDIR(st.st_mode):
            return None
        return EXECUTABLE if st.st_mode & 0o111 else REGULAR

    def read(self, path: str) -> bytes | None:
        p = self._file(path)
        if os.path.islink(p):
            return os.readlink(p).encode("utf-8", "surrogateescape")
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None


class EmptyTree(Tree):
    """No files at all: the base for what patches create where the upstream cannot be read."""

    label = "(no source)"

    def read(self, path: str) -> bytes | None:
        return None

    def mode(self, path: str) -> str | None:
        return None


class Overlay(Tree):
    """A tree plus pending changes: what the series has done so far, without touching the base."""

    def __init__(self, base: Tree):
        self.base = base
        self.label = base.label
        self.changes: dict[str, tuple[str, bytes] | None] = {}  # None: deleted

    def read(self, path: str) -> bytes | None:
        if path in self.changes:
            c = self.changes[path]
            return None if c is None else c[1]
        return self.base.read(path)

    def mode(self, path: str) -> str | None:
        if path in self.changes:
            c = self.changes[path]
            return None if c is None else c[0]
        return self.base.mode(path)

    def update(self, changes: dict[str, tuple[str, bytes] | None]) -> None:
        self.changes.update(changes)
