"""`rebase`: a series regenerated onto a new upstream, every hunk classified, conflicts left for a person."""

from __future__ import annotations

import hashlib
import json

from conftest import numbered, run_git, sub_once, tool

from patchstack import diff, engine, merge
from patchstack.trees import GitTree

BASE = {
    "clean.py": numbered(30, "c"),
    "offset.py": numbered(30, "o"),
    "fuzzy.py": numbered(30, "f"),
    "merged.py": numbered(30, "m"),
    "done.py": numbered(30, "d"),
    "old_name.py": numbered(30, "r"),
    "gone.py": numbered(30, "g"),
    "clash.py": numbered(30, "x"),
}


def _world(world):
    up = world.upstream("megatron", dict(BASE))
    patches = {
        "0001-clean.patch": {"clean.py": sub_once(BASE["clean.py"], "c 15\n", "c fifteen\n")},
        "0002-offset.patch": {"offset.py": sub_once(BASE["offset.py"], "o 15\n", "o fifteen\n")},
        "0003-fuzzy.patch": {"fuzzy.py": sub_once(BASE["fuzzy.py"], "f 15\n", "f fifteen\n")},
        # Two changes four lines apart: one hunk whose middle context upstream changes.
        "0004-merged.patch": {"merged.py": sub_once(sub_once(BASE["merged.py"], "m 12\n", "m twelve\n"),
                                                "m 17\n", "m seventeen\n")},
        "0005-done.patch": {"done.py": sub_once(BASE["done.py"], "d 15\n", "d fifteen\n")},
        "0006-renamed.patch": {"old_name.py": sub_once(BASE["old_name.py"], "r 15\n", "r fifteen\n")},
        "0007-gone.patch": {"gone.py": sub_once(BASE["gone.py"], "g 15\n", "g fifteen\n")},
        "0008-clash.patch": {"clash.py": sub_once(BASE["clash.py"], "x 15\n", "x ours\n")},
    }
    for name, edits in patches.items():
        world.add_patch("megatron", name, up.diff(edits, subject=name[5:-6]))
    ext = up.diff({"clean.py": sub_once(BASE["clean.py"], "c 3\n", "c three\n")})
    world.upstream("slime", {"docker/megatron.patch": ext})
    world.add_external("megatron", "slime:docker/megatron.patch", hashlib.sha256(ext.encode()).hexdigest(),
                       group="gemma4")
    # Upstream moves on.
    run_git(up.path, "mv", "old_name.py", "new_name.py")
    new = up.commit({
        "offset.py": numbered(7, "new") + BASE["offset.py"],
        "fuzzy.py": sub_once(BASE["fuzzy.py"], "f 12\n", "f 12 changed\n"),
        "merged.py": sub_once(BASE["merged.py"], "m 14\n", "m 14 changed\n"),
        "done.py": sub_once(BASE["done.py"], "d 15\n", "d fifteen\n"),
        "new_name.py": numbered(3, "moved") + BASE["old_name.py"],
        "gone.py": None,
        "clash.py": sub_once(BASE["clash.py"], "x 15\n", "x theirs\n"),
    }, "upstream moves on")
    return up, new


def _statuses(report):
    return {p["name"]: [h["status"] for h in p["hunks"]] for p in report["patches"]}


def test_every_status_then_continue_after_resolving(world):
    up, new = _world(world)
    old_folder = {p.name: p.read_bytes() for p in world.folder("megatron").iterdir()}
    code, out, err = tool("rebase", "megatron", "--to", new)
    assert code == 1, err  # stopped at the first conflict
    report = json.loads((world.root / "out" / "rebase-report.json").read_text())
    assert report["upstream"] == "megatron" and report["from"] == "v1" and report["to"] == new[:8]
    st = _statuses(report)
    assert st["0001-clean.patch"] == ["clean"]
    assert st["0002-offset.patch"] == ["offset"]
    assert st["0003-fuzzy.patch"] == ["fuzzy"]
    assert st["0004-merged.patch"] == ["merged"]
    assert st["0005-done.patch"] == ["upstreamed"]
    assert st["0006-renamed.patch"] == ["offset"]
    renamed = report["patches"][5]["hunks"][0]
    assert renamed["file"] == "new_name.py" and renamed["new_file"] == "new_name.py"
    assert st["0007-gone.patch"] == ["conflict"]
    assert "0008-clash.patch" not in st  # the rebase stopped at 0007
    assert "conflict: gone.py hunk at old line 12: upstream deleted this file" in out
    tree = world.root / "out" / "rebase" / "megatron" / "tree"
    assert (tree / "gone.py.rej").exists()
    # --continue refuses while the conflict is there, then goes on once it is dealt with.
    code, _, err = tool("rebase", "megatron", "--continue")
    assert code == 2 and "gone.py.rej" in err
    (tree / "gone.py.rej").unlink()  # the person decides the patch is moot now
    code, out, _ = tool("rebase", "megatron", "--continue")
    assert code == 1
    clash = (tree / "clash.py").read_text()
    assert "<<<<<<< upstream" in clash and "x theirs\n" in clash and "x ours\n" in clash
    assert clash.count("<<<<<<< ") == 1 and "||||||| upstream v1" in clash
    # Resolve as a person would: keep upstream's side of the block, with the clashing line merged.
    theirs = clash[clash.index("<<<<<<<"):clash.index("|||||||")].split("\n", 1)[1]
    clash = (clash[:clash.index("<<<<<<<")] + theirs.replace("x theirs\n", "x both\n")
             + clash[clash.index(">>>>>>>"):].split("\n", 1)[1])
    (tree / "clash.py").write_text(clash)
    code, out, err = tool("rebase", "megatron", "--continue")
    assert code == 0, err
    summary = out.split("\n")
    interdiff = {summary[i].split(":")[0].strip(): summary[i + 1 + ("conflict" in summary[i + 1])].strip()
                 for i in range(len(summary) - 2) if summary[i].startswith("  0")}
    assert interdiff["0001-clean.patch"] == "interdiff: same change, only moved (context and line numbers)"
    assert interdiff["0004-merged.patch"] == "interdiff: same change, only moved (context and line numbers)"
    assert interdiff["0006-renamed.patch"] == "interdiff: same change, only moved (context and line numbers)"
    assert interdiff["0005-done.patch"] == ("interdiff: changes what the code does: the regenerated patch changes "
                                            "nothing (upstream has all of it)")
    assert interdiff["0008-clash.patch"] == ("interdiff: changes what the code does: clash.py: the lines it removes "
                                             "or adds differ (removes 1, was 1; adds 1, was 1)")
    report = json.loads((world.root / "out" / "rebase-report.json").read_text())
    assert report["done"] and _statuses(report)["0008-clash.patch"] == ["conflict"]
    assert report["patches"][7]["hunks"][0]["resolved"] is True

    # The old folder is untouched; the new one holds our patches, which fit the new upstream.
    assert {p.name: p.read_bytes() for p in world.folder("megatron").iterdir()} == old_folder
    folder = world.root / "patches" / "megatron" / new[:8]
    series_text = (folder / "series").read_text()
    assert "0005-done.patch  -- dropped" in series_text and "0007-gone.patch  -- dropped" in series_text
    assert not (folder / "0005-done.patch").exists()
    assert "# slime:docker/megatron.patch" in series_text  # external: commented out, never copied
    assert not list(folder.glob("*megatron.patch"))
    ext = world.root / "out" / "rebase" / "megatron" / "external" / "slime_docker_megatron.patch"
    assert b"+c three" in ext.read_bytes()
    tree_new = GitTree(up.path / ".git", new)
    state = {}
    for name in ("0001-clean.patch", "0002-offset.patch", "0003-fuzzy.patch", "0004-merged.patch",
                 "0006-renamed.patch", "0008-clash.patch"):
        patch = diff.parse(name, (folder / name).read_bytes())
        res = engine.apply_patch(patch, tree_new)
        assert res.status == engine.FITS, name
        state.update(res.changes)
    assert b"m twelve\n" in state["merged.py"][1] and b"m 14 changed\n" in state["merged.py"][1]
    assert b"r fifteen\n" in state["new_name.py"][1]
    assert state["clash.py"][1].count(b"x both\n") == 1


def test_a_rebase_in_progress_is_not_overwritten(world):
    _, new = _world(world)
    assert tool("rebase", "megatron", "--to", new)[0] == 1
    code, _, err = tool("rebase", "megatron", "--to", new)
    assert code == 2 and "in progress" in err
    assert tool("rebase", "megatron", "--abort")[0] == 0
    assert not (world.root / "out" / "rebase" / "megatron").exists()


def test_ambiguous_context_is_a_conflict_not_a_guess():
    """The hunk's lines occur twice in the new file and nothing ties either place to the old one."""
    old = [b"unique a\n", b"    x = 1\n", b"    y = 2\n", b"    z = 3\n", b"unique b\n"]
    h = diff.parse("p", b"--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n     x = 1\n-    y = 2\n+    y = 20\n     z = 3\n"
                   ).files[0].hunks[0]
    new = [b"other\n", b"    x = 1\n", b"    y = 2\n", b"    z = 3\n", b"more\n",
           b"    x = 1\n", b"    y = 2\n", b"    z = 3\n"]
    nowhere = [None] * len(old)  # upstream kept none of the old lines in place
    pl = merge.place(h, old, new, nowhere, 1)
    assert pl.status == merge.CONFLICT and "match in 2 places" in pl.reason
    # With the alignment tying the old place to the second copy, that copy is the place.
    tied = [None, 5, 6, 7, None]
    pl = merge.place(h, old, new, tied, 1)
    assert pl.status == merge.OFFSET and pl.start == 5


def test_upstream_adding_lines_at_the_same_place_keeps_both():
    old = numbered(10, "l").encode().splitlines(keepends=True)
    h = diff.parse("p", b"--- a/f\n+++ b/f\n@@ -4,6 +4,7 @@\n l 4\n l 5\n l 6\n+ours\n l 7\n l 8\n l 9\n"
                   ).files[0].hunks[0]
    new = old[:6] + [b"theirs\n"] + old[6:]
    pl = merge.place(h, old, new, merge.align(old, new), 3)
    assert pl.status == merge.MERGED and "ours follow them" in pl.reason
    out = new[:pl.start] + pl.lines + new[pl.end:]
    assert out == old[:6] + [b"theirs\n", b"ours\n"] + old[6:]
    # And where upstream added exactly our line, the hunk is upstreamed.
    new = old[:6] + [b"ours\n"] + old[6:]
    assert merge.place(h, old, new, merge.align(old, new), 3).status == merge.UPSTREAMED


def test_upstream_adding_lines_like_ours_at_the_same_place_is_a_conflict():
    """Keeping both would run the same logic twice: a person must choose."""
    old = numbered(10, "l").encode().splitlines(keepends=True)
    h = diff.parse("p", b"--- a/f\n+++ b/f\n@@ -4,6 +4,8 @@\n l 4\n l 5\n l 6\n"
                   b"+if fusion_enabled:\n+    x = fused(x)\n l 7\n l 8\n l 9\n").files[0].hunks[0]
    new = old[:6] + [b"if fusion_enabled:\n", b"    x = fused_differently(x) * scale\n"] + old[6:]
    pl = merge.place(h, old, new, merge.align(old, new), 3)
    assert pl.status == merge.CONFLICT and "lines like the hunk's" in pl.reason
    # The same with upstream's call taking one more argument: upstream made the change (with a difference).
    new = old[:6] + [b"if fusion_enabled:\n", b"    x = fused(x, y)\n"] + old[6:]
    pl = merge.place(h, old, new, merge.align(old, new), 3)
    assert pl.status == merge.UPSTREAMED and pl.rule == "upstreamed-with-difference"


def test_upstream_changing_the_lines_before_an_insertion_places_it_by_the_lines_after():
    old = [b"def f(x):\n", b"    first_step(x)\n", b"    second_step(x)\n", b"    third_step(x)\n",
           b"    fourth_step(x)\n", b"    return x\n"]
    h = diff.parse("p", b"--- a/f\n+++ b/f\n@@ -2,4 +2,5 @@\n     first_step(x)\n     second_step(x)\n"
                   b"+    inserted_step(x)\n     third_step(x)\n     fourth_step(x)\n").files[0].hunks[0]
    new = [old[0], b"    first_step(x)\n", b"    second_step_renamed(x, y)\n"] + old[3:]
    pl = merge.place(h, old, new, merge.align(old, new), 1)
    assert pl.status == merge.MERGED and pl.rule == "merge3-anchor-after", pl
    out = new[:pl.start] + pl.lines + new[pl.end:]
    assert out == [old[0], b"    first_step(x)\n", b"    second_step_renamed(x, y)\n", b"    inserted_step(x)\n"] + old[3:]


def test_upstream_changing_the_lines_after_an_insertion_places_it_by_the_lines_before():
    old = [b"def f(x):\n", b"    first_step(x)\n", b"    second_step(x)\n", b"    third_step(x)\n",
           b"    fourth_step(x)\n", b"    return x\n"]
    h = diff.parse("p", b"--- a/f\n+++ b/f\n@@ -2,4 +2,5 @@\n     first_step(x)\n     second_step(x)\n"
                   b"+    inserted_step(x)\n     third_step(x)\n     fourth_step(x)\n").files[0].hunks[0]
    new = old[:3] + [b"    third_step_renamed(x, y)\n"] + old[4:]
    pl = merge.place(h, old, new, merge.align(old, new), 1)
    assert pl.status == merge.MERGED and pl.rule == "merge3-anchor-before", pl
    out = new[:pl.start] + pl.lines + new[pl.end:]
    assert out == old[:3] + [b"    inserted_step(x)\n", b"    third_step_renamed(x, y)\n"] + old[4:]
