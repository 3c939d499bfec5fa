"""The engine decides 'fits' exactly as `git apply` does, and produces the same bytes.

Random files, random edits made into patches by git, then random upstream drift (lines inserted,
deleted or changed anywhere); for each case both our engine and `git apply` run on the drifted
file, and must agree on whether the patch applies and on the result.
"""

from __future__ import annotations

import random
import subprocess

import pytest
from conftest import run_git

from patchstack import diff, engine
from patchstack.trees import DirTree

WORDS = ["alpha", "beta", "gamma", "delta", "", "}", "return x", "pass", "x = 1", "def f():"]


def _random_file(rng: random.Random, n: int) -> list[str]:
    # Few distinct lines, so that places repeat and the nearest-match rule matters.
    return [rng.choice(WORDS) + ("" if rng.random() < 0.6 else f" {rng.randint(0, 9)}") + "\n" for _ in range(n)]


def _mutate(rng: random.Random, lines: list[str], edits: int) -> list[str]:
    out = list(lines)
    for _ in range(edits):
        op = rng.choice(["insert", "delete", "change"])
        i = rng.randrange(len(out) + 1)
        if op == "insert" or not out:
            out[i:i] = [rng.choice(WORDS) + f" {rng.randint(0, 99)}\n" for _ in range(rng.randint(1, 4))]
        elif op == "delete" and i < len(out):
            del out[i:i + rng.randint(1, 3)]
        elif i < len(out):
            out[i] = f"changed {rng.randint(0, 99)}\n"
    return out


def _repo_with(tmp_path, data: bytes, name: str = "f.txt"):
    """A git repository whose one commit holds `name` with `data`."""
    repo = tmp_path / "r"
    repo.mkdir()
    run_git(repo, "init", "-q")
    (repo / name).write_bytes(data)
    run_git(repo, "add", name)
    run_git(repo, "commit", "-qm", "base")
    return repo


@pytest.mark.parametrize("seed", range(60))
def test_engine_agrees_with_git_apply(tmp_path, seed):
    rng = random.Random(seed)
    repo = tmp_path / "r"
    repo.mkdir()
    run_git(repo, "init", "-q")
    base = _random_file(rng, rng.randint(15, 80))
    (repo / "f.txt").write_text("".join(base))
    run_git(repo, "add", "f.txt")
    run_git(repo, "commit", "-qm", "base")
    edited = _mutate(rng, base, rng.randint(1, 5))
    if edited == base:
        edited.append("the patch adds this\n")
    (repo / "f.txt").write_text("".join(edited))
    patch_text = run_git(repo, "diff")
    run_git(repo, "checkout", "-q", "f.txt")
    # Drift the file the patch will meet.
    drifted = "".join(_mutate(rng, base, rng.randint(0, 4)))
    (repo / "f.txt").write_text(drifted)
    run_git(repo, "commit", "-qam", "drift", "--allow-empty")

    patch = diff.parse("p.patch", patch_text.encode())
    ours = engine.apply_patch(patch, DirTree(repo))
    p = subprocess.run(["git", "apply", "-"], cwd=repo, input=patch_text.encode(), capture_output=True)
    git_fits = p.returncode == 0
    assert (ours.status == engine.FITS) == git_fits, (ours.status, p.stderr.decode(), patch_text)
    if git_fits:
        assert ours.changes["f.txt"][1] == (repo / "f.txt").read_bytes()


def test_no_newline_at_end_of_file_round_trips(tmp_path):
    repo = _repo_with(tmp_path, b"a\nb\nc")
    (repo / "f.txt").write_bytes(b"a\nb\nC\n")
    patch_text = run_git(repo, "diff")
    assert "\\ No newline at end of file" in patch_text
    run_git(repo, "checkout", "-q", "f.txt")
    res = engine.apply_patch(diff.parse("p", patch_text.encode()), DirTree(repo))
    assert res.status == engine.FITS and res.changes["f.txt"][1] == b"a\nb\nC\n"


def test_crlf_and_lone_cr_are_content(tmp_path):
    repo = _repo_with(tmp_path, b"one\r\ntwo\rstill two\r\nthree\r\n")
    (repo / "f.txt").write_bytes(b"one\r\ntwo\rstill two\r\n3\r\n")
    patch_text = subprocess.run(["git", "diff"], cwd=repo, capture_output=True).stdout
    run_git(repo, "checkout", "-q", "f.txt")
    res = engine.apply_patch(diff.parse("p", patch_text), DirTree(repo))
    assert res.status == engine.FITS and res.changes["f.txt"][1] == b"one\r\ntwo\rstill two\r\n3\r\n"
    # The same patch against LF endings does not fit: line endings are content.
    (repo / "f.txt").write_bytes(b"one\ntwo\rstill two\nthree\n")
    assert engine.apply_patch(diff.parse("p", patch_text), DirTree(repo)).status == engine.FAILS


def _rename_with_changes(tmp_path):
    """A repo where old.py was renamed to new.py and changed (staged), and git's patch for that."""
    repo = _repo_with(tmp_path, "".join(f"l{i}\n" for i in range(30)).encode(), "old.py")
    run_git(repo, "mv", "old.py", "new.py")
    (repo / "new.py").write_text("".join(f"l{i}\n" for i in range(30)).replace("l3\n", "L3\n"))
    run_git(repo, "add", "-A")
    patch_text = run_git(repo, "diff", "--cached", "-M", "HEAD")
    assert "rename from old.py" in patch_text
    return repo, patch_text


def test_rename_with_changes(tmp_path):
    repo, patch_text = _rename_with_changes(tmp_path)
    run_git(repo, "reset", "-q", "--hard")
    res = engine.apply_patch(diff.parse("p", patch_text.encode()), DirTree(repo))
    assert res.status == engine.FITS
    assert res.changes["old.py"] is None and res.changes["new.py"][1].startswith(b"l0\nl1\nl2\nL3\n")


@pytest.mark.parametrize("drift, git_fits", [
    ("", True),
    ("inserted above\n", False),  # a hunk at line 1 must match at the start of the file
])
def test_hunk_at_the_start_is_anchored_like_git(tmp_path, drift, git_fits):
    body = "".join(f"l{i}\n" for i in range(20))
    repo = _repo_with(tmp_path, body.encode())
    (repo / "f.txt").write_text(body.replace("l1\n", "L1\n"))
    patch_text = run_git(repo, "diff")
    assert "@@ -1," in patch_text
    (repo / "f.txt").write_text(drift + body)
    res = engine.apply_patch(diff.parse("p", patch_text.encode()), DirTree(repo))
    p = subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=patch_text.encode(), capture_output=True)
    assert (p.returncode == 0) == git_fits
    assert (res.status == engine.FITS) == git_fits


def test_hunk_without_trailing_context_is_anchored_at_the_end_like_git(tmp_path):
    body = "".join(f"l{i}\n" for i in range(20))
    repo = _repo_with(tmp_path, body.encode())
    (repo / "f.txt").write_text(body + "appended\n")
    patch_text = run_git(repo, "diff")
    (repo / "f.txt").write_text(body + "upstream added this\n")
    res = engine.apply_patch(diff.parse("p", patch_text.encode()), DirTree(repo))
    p = subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=patch_text.encode(), capture_output=True)
    assert p.returncode != 0 and res.status == engine.FAILS


def test_a_rename_already_made_reads_as_applied(tmp_path):
    repo, patch_text = _rename_with_changes(tmp_path)  # the tree now holds the renamed, changed file
    res = engine.apply_patch(diff.parse("p", patch_text.encode()), DirTree(repo))
    assert res.status == engine.APPLIED and res.changes == {}
