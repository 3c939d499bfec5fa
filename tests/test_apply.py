"""`apply`: validate first, then all or nothing; refuse dirty and wrong-commit trees; survive interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import numbered, run_git, tool, tool_proc, tree_digest

from patchstack import apply as apply_mod

FILE = numbered(60)


def _series_of_three(world):
    """Three patches over several files: edits, a new file in a new folder, a deletion."""
    up = world.upstream("sglang", {"python/a.py": FILE, "python/b.py": numbered(20, "b"), "python/old.py": "x\n",
                                   "bin/run.sh": "#!/bin/sh\necho hi\n"})
    world.add_patch("sglang", "0001-a.patch", up.diff({"python/a.py": FILE.replace("line 7\n", "line seven\n")}))
    world.add_patch("sglang", "0002-new.patch", up.diff({"python/pkg/new.py": "new\n", "python/old.py": None}))
    world.add_patch("sglang", "0003-b.patch", up.diff({"python/b.py": numbered(20, "b").replace("b 19\n", "B19\n")}))
    return up


def _git_apply_result(up, world, tmp_path):
    ref = up.checkout(tmp_path / "reference")
    for name in ("0001-a.patch", "0002-new.patch", "0003-b.patch"):
        run_git(ref, "apply", str(world.folder("sglang") / name))
    return tree_digest(ref)


def test_apply_matches_git_apply_byte_for_byte(world, tmp_path):
    up = _series_of_three(world)
    target = up.checkout(tmp_path / "target")
    code, out, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 0, err
    assert "applied 3 patches" in out
    assert tree_digest(target) == _git_apply_result(up, world, tmp_path)
    assert not (target / ".git" / apply_mod.JOURNAL).exists()
    # A second apply sees a fully patched tree and does nothing.
    code, out, _ = tool("apply", "sglang", "--tree", str(target), "--allow-dirty")
    assert code == 0 and "already applied" in out


def test_failure_leaves_the_tree_byte_for_byte_as_it_was(world, tmp_path):
    up = _series_of_three(world)
    # The third patch no longer fits this tree: the first two must not be written either.
    target = up.checkout(tmp_path / "target")
    world.add_patch("sglang", "0004-bad.patch", up.diff({"python/b.py": numbered(20, "b").replace("b 5\n", "x\n")})
                    .replace(" b 4\n", " b four\n"))
    before = tree_digest(target)
    code, _, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 2
    assert "not applied: some patches do not fit; the tree was not changed" in err
    assert "FAILS     [base] 0004-bad.patch" in err and "python/b.py: hunk 1 of 1" in err
    assert tree_digest(target) == before
    assert run_git(target, "status", "--porcelain") == ""


def test_refuses_a_dirty_tree_unless_told(world, tmp_path):
    up = _series_of_three(world)
    target = up.checkout(tmp_path / "target")
    (target / "python/b.py").write_text("local edit\n" + numbered(20, "b"))
    before = tree_digest(target)
    code, _, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 2 and "has local changes (1 files)" in err and "python/b.py" in err and "--allow-dirty" in err
    assert tree_digest(target) == before
    code, _, err = tool("apply", "sglang", "--tree", str(target), "--allow-dirty")
    assert code == 0, err
    assert (target / "python/b.py").read_text().startswith("local edit\n")
    assert "B19\n" in (target / "python/b.py").read_text()


def test_refuses_a_tree_at_the_wrong_commit(world, tmp_path):
    up = _series_of_three(world)
    other = up.commit({"python/c.py": "c\n"}, "another commit")
    target = up.checkout(tmp_path / "target", other)
    before = tree_digest(target)
    code, _, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 2
    assert f"is at commit {other}, not at the sglang pin {up.pin}" in err
    assert tree_digest(target) == before
    assert tool("apply", "sglang", "--tree", str(target), "--allow-other-commit")[0] == 0


def test_refuses_a_folder_that_is_not_a_checkout(world, tmp_path):
    _series_of_three(world)
    plain = tmp_path / "plain"
    plain.mkdir()
    code, _, err = tool("apply", "sglang", "--tree", str(plain))
    assert code == 2 and "is not a git checkout" in err


def test_interruption_while_writing_restores_the_tree(world, tmp_path, monkeypatch):
    up = _series_of_three(world)
    target = up.checkout(tmp_path / "target")
    before = tree_digest(target)
    real = apply_mod.write_file
    calls = []

    def stop_after_two(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a)
        real(*a)

    monkeypatch.setattr(apply_mod, "write_file", stop_after_two)
    code, _, err = tool("apply", "sglang", "--tree", str(target))
    assert len(calls) == 2, "the interruption must come in the middle of the writes"
    assert code == 2 and "was interrupted" in err and "restored as it was" in err
    assert tree_digest(target) == before
    assert not (target / ".git" / apply_mod.JOURNAL).exists()


KILL_HOOK = """
import os, signal, sys
sys.path.insert(0, {build!r})
from patchstack import apply, cli
real = apply.write_file
n = []
def kill_after_two(*a):
    if len(n) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    n.append(a)
    real(*a)
apply.write_file = kill_after_two
sys.exit(cli.main(["apply", "sglang", "--tree", {target!r}]))
"""


def test_killed_apply_is_rolled_back_by_the_next_run(world, tmp_path):
    up = _series_of_three(world)
    target = up.checkout(tmp_path / "target")
    before = tree_digest(target)
    build = str(apply_mod.__file__).rsplit("/patchstack/", 1)[0]
    p = subprocess.run(["python3", "-c", KILL_HOOK.format(build=build, target=str(target))],
                       capture_output=True, env=os.environ.copy())
    assert p.returncode == -signal.SIGKILL
    assert tree_digest(target) != before, "the kill must leave a half-written tree for this test to mean anything"
    assert (target / ".git" / apply_mod.JOURNAL / "journal.json").exists()
    # The next run rolls back first, then applies fully (the half-written state never passes as clean).
    code, out, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 0, err
    assert "was interrupted; its changes were rolled back first" in out
    assert tree_digest(target) == _git_apply_result(up, world, tmp_path)
    # And rolling back alone gives the original tree back.
    target2 = up.checkout(tmp_path / "target2")
    p = subprocess.run(["python3", "-c", KILL_HOOK.format(build=build, target=str(target2))], capture_output=True)
    assert p.returncode == -signal.SIGKILL
    assert apply_mod.recover(target2)
    assert tree_digest(target2) == before


def test_sigterm_during_apply_restores_the_tree(world, tmp_path):
    up = _series_of_three(world)
    target = up.checkout(tmp_path / "target")
    before = tree_digest(target)
    build = str(apply_mod.__file__).rsplit("/patchstack/", 1)[0]
    hook = KILL_HOOK.replace("signal.SIGKILL", "signal.SIGTERM").format(build=build, target=str(target))
    p = subprocess.run(["python3", "-c", hook], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "interrupted" in p.stderr and "restored as it was" in p.stderr
    assert tree_digest(target) == before


@pytest.mark.parametrize("runs", [2])
def test_two_checks_at_once_on_one_empty_cache(world, runs):
    up = world.upstream("megatron", {"a.py": FILE})
    world.add_patch("megatron", "0001-a.patch", up.diff({"a.py": FILE.replace("line 9\n", "nine\n")}))
    procs = [tool_proc("check", "megatron") for _ in range(runs)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
        assert b"fits      [base] 0001-a.patch" in out
    cache_repo = world.cache / "git" / "megatron.git"
    assert run_git(cache_repo, "fsck", "--no-progress") == ""
    assert run_git(cache_repo, "cat-file", "-t", up.pin).strip() == "commit"


def test_cache_lock_serialises_fetches(world):
    """While one run holds the cache lock, another waits instead of filling the cache alongside it."""
    up = world.upstream("megatron", {"a.py": FILE})
    from patchstack import sources

    with sources.locked("megatron"):
        p = tool_proc("sources", "megatron")
        time.sleep(1.0)
        assert p.poll() is None, "the second run must wait for the lock"
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    assert up.pin[:12].encode() in out


def test_allow_skip_applies_only_what_comes_before_an_unreachable_entry(world, tmp_path, monkeypatch):
    up = world.upstream("sglang", {"a.py": FILE})
    world.add_patch("sglang", "0001-a.patch", up.diff({"a.py": FILE.replace("line 7\n", "seven\n")}))
    world.upstream("slime", {"p.patch": "unused\n"})
    world.add_external("sglang", "slime:p.patch", "0" * 64)
    world.add_patch("sglang", "0002-b.patch", up.diff({"a.py": FILE.replace("line 40\n", "forty\n")}))
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(tmp_path / "unreachable"))
    target = up.checkout(tmp_path / "target")
    before = tree_digest(target)
    code, _, err = tool("apply", "sglang", "--tree", str(target))
    assert code == 2 and "could not be read or checked" in err
    assert tree_digest(target) == before
    code, out, err = tool("apply", "sglang", "--tree", str(target), "--allow-skip")
    assert code == 0, err
    assert "applied 1 patches" in out and "left out" in out and "slime:p.patch, 0002-b.patch" in out
    text = (target / "a.py").read_text()
    assert "seven\n" in text and "forty\n" not in text
