"""The diff parser: git's file headers (modes, renames, quoted names), and clear errors for what it refuses."""

from __future__ import annotations

import pytest
from conftest import run_git

from patchstack import diff, engine
from patchstack.errors import StackError
from patchstack.trees import DirTree


def _git_patch(tmp_path, setup, change) -> tuple:
    repo = tmp_path / "r"
    repo.mkdir()
    run_git(repo, "init", "-q")
    setup(repo)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "base")
    change(repo)
    run_git(repo, "add", "-A")
    text = run_git(repo, "diff", "--cached", "-M", "HEAD")
    run_git(repo, "reset", "-q", "--hard")
    return repo, text


def test_quoted_names_mode_changes_and_new_executables(tmp_path):
    def setup(r):
        (r / "dir with space").mkdir()
        (r / "dir with space" / "tab\tname.py").write_text("a\n")
        (r / "run.sh").write_text("echo\n")

    def change(r):
        (r / "dir with space" / "tab\tname.py").write_text("b\n")
        (r / "run.sh").chmod(0o755)
        (r / "new.sh").write_text("#!/bin/sh\n")
        (r / "new.sh").chmod(0o755)

    repo, text = _git_patch(tmp_path, setup, change)
    assert '"a/dir with space/tab\\tname.py"' in text  # git quotes the name
    p = diff.parse("p", text.encode())
    byname = {f.path: f for f in p.files}
    assert set(byname) == {"dir with space/tab\tname.py", "run.sh", "new.sh"}
    assert byname["run.sh"].new_mode == "100755" and not byname["run.sh"].hunks
    assert byname["new.sh"].is_new and byname["new.sh"].new_mode == "100755"
    res = engine.apply_patch(p, DirTree(repo))
    assert res.status == engine.FITS
    assert res.changes["run.sh"] == ("100755", b"echo\n")
    assert res.changes["new.sh"] == ("100755", b"#!/bin/sh\n")
    assert res.changes["dir with space/tab\tname.py"][1] == b"b\n"


def test_binary_patches_are_refused_by_name(tmp_path):
    repo, text = _git_patch(tmp_path, lambda r: (r / "x.bin").write_bytes(b"\0\1"),
                            lambda r: (r / "x.bin").write_bytes(b"\0\2"))
    with pytest.raises(StackError) as e:
        diff.parse("bin.patch", text.encode())
    assert "bin.patch:" in str(e.value) and "binary change to x.bin is not supported" in str(e.value)


@pytest.mark.parametrize("text, message", [
    (b"just some words\n", "no file changes found"),
    (b"--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n", "ends early"),
    (b"--- a/x\n+++ b/x\n@@ -1,1 +1,1 @@\n a\n b\n", "whose line counts say it has ended"),
    (b"--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n?b\n", "does not fit hunk"),
    (b"--- x\n+++ x\n@@ -1 +1 @@\n-a\n+b\n", "has no a/ or b/ prefix"),
    (b"--- a/x\n+++ b/x\n@@ -1,1 +1,1 @\n-a\n+b\n", "malformed hunk header"),
    (b"--- a/x\n+++ b/x\n@@ -1,1 +1,1 @@\n-a\n+b\nzzz\xff\n", "unexpected line 'zzz\\xff' between files"),
])
def test_malformed_patches_name_the_line(text, message):
    with pytest.raises(StackError) as e:
        diff.parse("bad.patch", text)
    assert message in str(e.value) and "bad.patch" in str(e.value)
    import re

    assert not re.search(r"(line|read|header) b['\"]", str(e.value))  # the line as text, not bytes
