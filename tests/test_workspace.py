"""`workspace` and `export`: patches edited as commits, exported back byte-stably."""

from __future__ import annotations

import hashlib

from conftest import numbered, run_git, tool

FILE = numbered(40)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _stack(world):
    mg = world.upstream("megatron", {"a.py": FILE, "b.py": numbered(30, "b")})
    ext = mg.diff({"b.py": numbered(30, "b").replace("b 3\n", "b three\n")})
    world.upstream("slime", {"docker/megatron.patch": ext})
    world.add_external("megatron", "slime:docker/megatron.patch", hashlib.sha256(ext.encode()).hexdigest())
    world.add_patch("megatron", "0001-first.patch", mg.diff({"a.py": FILE.replace("line 5\n", "five\n")},
                                                          subject="First"), group="gemma4")
    world.add_patch("megatron", "0002-second.patch", mg.diff({"a.py": FILE.replace("line 30\n", "thirty\n")},
                                                           subject="Second"), group="gemma4")
    return mg


def _amend(ws, back: int, path: str, old: str, new: str) -> None:
    """Edit the commit `back` commits below the tip of 'patches', as a person would, and replay the rest."""
    run_git(ws, "checkout", "-q", f"patches~{back}")
    (ws / path).write_text((ws / path).read_text().replace(old, new))
    run_git(ws, "commit", "-q", "-a", "--amend", "--no-edit")
    edited = run_git(ws, "rev-parse", "HEAD").strip()
    run_git(ws, "checkout", "-q", "patches")
    run_git(ws, "rebase", "-q", "--onto", edited, f"patches~{back}", "patches")


def _workspace(world, *extra):
    code, out, err = tool("workspace", "megatron", "--gemma4", *extra)
    assert code == 0, err
    return world.root / "out" / "workspace" / "megatron"


def test_workspace_has_one_commit_per_entry_after_the_upstream_tag(world):
    mg = _stack(world)
    ws = _workspace(world)
    assert run_git(ws, "rev-parse", "upstream").strip() == mg.pin
    log = run_git(ws, "log", "--reverse", "--format=%an|%s", "upstream..HEAD").splitlines()
    assert log == ["t|[external, not ours] slime:docker/megatron.patch", "t|First", "t|Second"]
    assert "thirty" in (ws / "a.py").read_text() and "five" in (ws / "a.py").read_text()
    assert run_git(ws, "status", "--porcelain") == ""


def test_export_is_byte_stable_and_an_edit_changes_only_its_file(world):
    _stack(world)
    folder = world.folder("megatron")
    ws = _workspace(world)
    assert tool("export", "megatron")[0] == 0  # first export: normal form
    normal = _files(folder)
    ws = _workspace(world, "--force")
    code, out, _ = tool("export", "megatron")
    assert code == 0 and "0 written, 2 unchanged, 0 removed; series file unchanged" in out
    assert _files(folder) == normal
    # Edit the first patch of ours (HEAD~1) and export: only its file changes.
    _amend(ws, 1, "a.py", "five\n", "FIVE\n")
    code, out, _ = tool("export", "megatron")
    assert code == 0 and "wrote     0001-first.patch" in out
    after = _files(folder)
    assert [n for n in after if after[n] != normal[n]] == ["0001-first.patch"]
    assert b"+FIVE" in after["0001-first.patch"]


def test_new_and_dropped_commits_update_the_series(world):
    _stack(world)
    folder = world.folder("megatron")
    ws = _workspace(world)
    run_git(ws, "rebase", "-q", "--onto", "HEAD~1", "HEAD")  # drop the last commit ("Second")
    (ws / "c.py").write_text("new file\n")
    run_git(ws, "add", "c.py")
    run_git(ws, "commit", "-q", "-m", "Add c.py for Gemma4", "-m", "Upstream-Status: environment tests\n"
            "License: Apache-2.0; this change modifies Megatron-LM (NVIDIA/Megatron-LM, its LICENSE), whose files "
            "stay under that license (NOTICE)")
    code, out, _ = tool("export", "megatron")
    assert code == 0
    assert "wrote     0003-add-c-py-for-gemma4.patch" in out and "removed   0002-second.patch" in out
    assert not (folder / "0002-second.patch").exists()
    text = (folder / "series").read_text()
    assert text.index("0001-first.patch") < text.index("0003-add-c-py-for-gemma4.patch")
    assert "0002-second.patch" not in text and "slime:docker/megatron.patch sha256=" in text
    assert tool("lint")[0] == 0
    assert tool("check", "megatron", "--gemma4")[0] == 0


def test_edited_external_patch_goes_to_out_not_patches(world):
    _stack(world)
    folder = world.folder("megatron")
    before = _files(folder)
    ws = _workspace(world)
    _amend(ws, 2, "b.py", "b three\n", "b THREE\n")  # slime's patch, the first commit after upstream
    code, out, _ = tool("export", "megatron")
    assert code == 0
    assert "EXTERNAL  slime:docker/megatron.patch" in out and "written under out/ only" in out
    exported = world.root / "out" / "export" / "megatron" / "slime_docker_megatron.patch"
    assert b"+b THREE" in exported.read_bytes()
    assert not list(folder.glob("*megatron.patch"))
    assert (folder / "series").read_text() == before["series"].decode()


def test_export_refuses_uncommitted_changes(world):
    _stack(world)
    ws = _workspace(world)
    (ws / "a.py").write_text("dirty\n")
    code, _, err = tool("export", "megatron")
    assert code == 2 and "has uncommitted changes" in err


def test_first_patches_of_a_group_keep_the_groups_in_their_order(world):
    # An empty [base] and the first commits of [gemma4]: base must stay first (the apply order).
    world.upstream("megatron", {"a.py": FILE})
    folder = world.folder("megatron")
    (folder / "series").write_text("# series\n\n[base]\n\n[gemma4]\n")
    ws = _workspace(world)
    (ws / "a.py").write_text(FILE.replace("line 7\n", "seven\n"))
    run_git(ws, "commit", "-q", "-a", "-m", "Gemma4 change", "-m",
            "Upstream-Status: environment tests\n\nPatchstack-Group: gemma4")
    assert tool("export", "megatron")[0] == 0
    text = (folder / "series").read_text()
    assert text.index("[base]") < text.index("[gemma4]") < text.index("0001-gemma4-change.patch")


def test_without_slime_the_workspace_is_made_on_the_bare_pin_and_says_so(world, monkeypatch):
    """The external entry's upstream unreachable: our patches go on the bare upstream, an empty
    commit holds the missing entry's place, and export writes the series back unchanged."""
    _stack(world)
    folder = world.folder("megatron")
    before = _files(folder)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "no-such-slime"))
    code, out, err = tool("workspace", "megatron", "--gemma4")
    assert code == 3, err  # made, but without slime's entry: never a plain success
    assert "MISSING   slime:docker/megatron.patch" in out and "NOT applied" in out and "INCOMPLETE (exit 3)" in out
    ws = world.root / "out" / "workspace" / "megatron"
    log = run_git(ws, "log", "--reverse", "--format=%s", "upstream..HEAD").splitlines()
    assert log == ["[external, MISSING] slime:docker/megatron.patch", "First", "Second"]
    assert "b three" not in (ws / "b.py").read_text()  # slime's change is not there
    assert "thirty" in (ws / "a.py").read_text()
    code, out, _ = tool("export", "megatron")
    assert code == 0 and "MISSING   slime:docker/megatron.patch" in out
    # nothing edited: no byte changes (line numbers on the bare pin differ; the files stand)
    assert _files(folder) == before, "export changed the series or a patch"
    # an edit of ours still exports; the placeholder's series line stays first
    _amend(ws, 0, "a.py", "thirty\n", "THIRTY\n")
    assert tool("export", "megatron")[0] == 0
    assert (folder / "series").read_bytes() == before["series"]
    assert b"+THIRTY" in (folder / "0002-second.patch").read_bytes()
    assert (folder / "0001-first.patch").read_bytes() == before["0001-first.patch"]
    # changes put into the placeholder are refused, not exported under slime's name or lost
    _amend(ws, 2, "b.py", "b 4\n", "b four\n")
    code, _, err = tool("export", "megatron")
    assert code == 2 and "holds the place of slime:docker/megatron.patch" in err


def test_without_slime_a_patch_that_needs_it_is_refused_naming_the_missing_entry(world, monkeypatch):
    mg = world.upstream("megatron", {"a.py": FILE, "b.py": numbered(30, "b")})
    with_ext = numbered(30, "b").replace("b 3\n", "b three\n")
    ext = mg.diff({"b.py": with_ext})
    world.upstream("slime", {"docker/megatron.patch": ext})
    world.add_external("megatron", "slime:docker/megatron.patch", hashlib.sha256(ext.encode()).hexdigest())
    mg.pin = mg.commit({"b.py": with_ext}, "tmp")  # our patch written on top of slime's
    world.add_patch("megatron", "0001-on-slime.patch", mg.diff({"b.py": with_ext.replace("b three\n", "b 3!\n")}),
                    group="gemma4")
    world.repin("megatron", run_git(mg.path, "rev-parse", "HEAD~1").strip())
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "no-such-slime"))
    code, _, err = tool("workspace", "megatron", "--gemma4")
    assert code == 2 and "does not fit megatron without slime:docker/megatron.patch (unreachable)" in err
    assert not (world.root / "out" / "workspace" / "megatron").exists()
