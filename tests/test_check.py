"""`check`: every series validated in order against its pin, with a per-hunk diagnosis, touching nothing."""

from __future__ import annotations

import hashlib
import json
import os

from conftest import numbered, run_git, tool

FILE = numbered(60)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def test_clean_series_fits_and_changes_no_checkout(world):
    up = world.upstream("megatron", {"core/a.py": FILE, "core/b.py": numbered(10, "b")})
    world.add_patch("megatron", "0001-a.patch", up.diff({"core/a.py": _edit(FILE, "line 30\n", "line thirty\n")}))
    before = run_git(up.path, "status", "--porcelain") + run_git(up.path, "rev-parse", "HEAD")
    code, out, _ = tool("check", "megatron")
    assert code == 0, out
    assert "fits      [base] 0001-a.patch: 1 files, 1 hunks" in out
    assert run_git(up.path, "status", "--porcelain") + run_git(up.path, "rev-parse", "HEAD") == before


def test_moved_hunk_fits_at_an_offset_and_says_so(world):
    up = world.upstream("megatron", {"a.py": FILE})
    patch = up.diff({"a.py": _edit(FILE, "line 30\n", "line thirty\n")})
    world.repin("megatron", up.commit({"a.py": numbered(5, "new") + FILE}, "insert 5 lines at the top"))
    world.add_patch("megatron", "0001-a.patch", patch)
    code, out, _ = tool("check", "megatron", "--json")
    assert code == 0
    entry = json.loads(out)["series"][0]["entries"][0]
    assert entry["status"] == "fits" and entry["offsets"] == 1
    hunk = entry["files_detail"][0]["hunks"][0]
    assert hunk["status"] == "offset" and hunk["offset"] == 5 and hunk["at"] == 32


def test_changed_context_fails_naming_patch_file_hunk_and_closest_match(world):
    up = world.upstream("megatron", {"a.py": FILE})
    patch = up.diff({"a.py": _edit(_edit(FILE, "line 10\n", "line ten\n"), "line 40\n", "line forty\n")})
    # Upstream moves on: the second hunk's context changes, and everything shifts by 2 lines.
    moved = numbered(2, "new") + _edit(FILE, "line 42\n", "line 42 changed upstream\n")
    world.repin("megatron", up.commit({"a.py": moved}, "change context"))
    world.add_patch("megatron", "0001-a.patch", patch)
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "FAILS     [base] 0001-a.patch" in out
    assert "a.py: hunk 2 of 2 @@ -37,7 +37,7 @@" in out
    assert "closest match at line 39 (offset +2): 6 of 7 expected lines are there, 1 differ" in out
    assert "line 44: expected | line 42" in out
    assert "found    | line 42 changed upstream" in out
    code, out, _ = tool("check", "megatron", "--json")
    data = json.loads(out)
    assert data["exit"] == 1
    f = data["series"][0]["entries"][0]["files_detail"][0]
    assert f["path"] == "a.py" and [h["index"] for h in f["hunks"] if h["status"] == "fails"] == [2]
    closest = [h for h in f["hunks"] if h["status"] == "fails"][0]["closest"]
    assert closest["line"] == 39 and closest["offset"] == 2
    assert closest["differ"] == [[44, "line 42", "line 42 changed upstream"]]


def test_patch_modifying_a_missing_file_fails(world):
    up = world.upstream("megatron", {"a.py": FILE, "gone.py": "x\n"})
    patch = up.diff({"gone.py": "y\n"})
    world.repin("megatron", up.commit({"gone.py": None}, "delete"))
    world.add_patch("megatron", "0001-gone.patch", patch)
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "gone.py (patch line" in out and "which does not exist in the tree" in out


def test_patch_creating_an_existing_file_fails(world):
    up = world.upstream("megatron", {"a.py": FILE})
    patch = up.diff({"new.py": "ours\n"})
    world.repin("megatron", up.commit({"new.py": "theirs\n"}, "upstream adds the same file"))
    world.add_patch("megatron", "0001-new.patch", patch)
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "creates this file, but it already exists" in out


def test_already_applied_patch_is_detected(world):
    up = world.upstream("megatron", {"a.py": FILE})
    new = _edit(FILE, "line 30\n", "line thirty\n")
    patch = up.diff({"a.py": new})
    world.repin("megatron", up.commit({"a.py": new}, "upstream took our change"))
    world.add_patch("megatron", "0001-a.patch", patch)
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "ALREADY APPLIED [base] 0001-a.patch" in out


def test_malformed_patch_fails_with_its_line(world):
    up = world.upstream("megatron", {"a.py": FILE})
    patch = up.diff({"a.py": _edit(FILE, "line 30\n", "line thirty\n")})
    truncated = "\n".join(patch.splitlines()[:-2]) + "\n"  # the hunk loses its last lines
    world.add_patch("megatron", "0001-a.patch", truncated)
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "0001-a.patch:" in out and "ends early" in out


def test_missing_patch_file_fails_naming_the_series_line(world):
    world.upstream("megatron", {"a.py": FILE})
    world.series["megatron"]["base"].append("0001-missing.patch")
    world.write()
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert "series:3: 0001-missing.patch is listed but" in out


def test_series_order_matters_and_later_patches_see_earlier_ones(world):
    up = world.upstream("megatron", {"a.py": FILE})
    first = _edit(FILE, "line 30\n", "line thirty\n")
    world.add_patch("megatron", "0001-first.patch", up.diff({"a.py": first}))
    up.pin = up.commit({"a.py": first}, "tmp")  # write the second patch on top of the first
    world.add_patch("megatron", "0002-second.patch", up.diff({"a.py": _edit(first, "line thirty\n", "line 30!\n")}))
    world.repin("megatron", run_git(up.path, "rev-parse", "HEAD~1").strip())
    assert tool("check", "megatron")[0] == 0
    # Reversed order: the second no longer fits.
    world.series["megatron"]["base"].reverse()
    world.write()
    code, out, _ = tool("check", "megatron")
    assert code == 1 and "FAILS     [base] 0002-second.patch" in out


def test_gemma4_group_only_with_the_flag(world):
    up = world.upstream("megatron", {"a.py": FILE})
    world.add_patch("megatron", "0001-g.patch", up.diff({"g.py": "gemma4\n"}), group="gemma4")
    code, out, _ = tool("check", "megatron")
    assert code == 0 and "0001-g.patch" not in out and "(no entries in the selected groups)" in out
    code, out, _ = tool("check", "megatron", "--gemma4")
    assert code == 0 and "fits      [gemma4] 0001-g.patch" in out


def test_external_patch_is_read_from_the_pinned_upstream_and_verified(world):
    patch_text = None
    mg = world.upstream("megatron", {"a.py": FILE})
    patch_text = mg.diff({"a.py": _edit(FILE, "line 3\n", "line three\n")})
    sl = world.upstream("slime", {"docker/patch/megatron.patch": patch_text})
    digest = hashlib.sha256(patch_text.encode()).hexdigest()
    world.add_external("megatron", "slime:docker/patch/megatron.patch", digest)
    code, out, _ = tool("check", "megatron")
    assert code == 0, out
    assert "slime:docker/patch/megatron.patch (external, sha256 verified)" in out
    assert not list(world.root.rglob("megatron.patch")), "an external patch must never be copied into the stack"
    # The file in slime's tree differs from what the series pinned: refused with both hashes.
    world.series["megatron"]["base"] = [f"slime:docker/patch/megatron.patch sha256={'0' * 64}"]
    world.write()
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert f"has sha256 {digest}, the series expects {'0' * 64}" in out
    assert sl.pin


def test_unreachable_source_is_skipped_said_and_not_ok(world, monkeypatch):
    mg = world.upstream("megatron", {"a.py": FILE})
    world.add_patch("megatron", "0001-a.patch", mg.diff({"a.py": _edit(FILE, "line 3\n", "x\n")}))
    monkeypatch.setenv("UPSTREAM_MEGATRON_GIT", str(world.tmp / "no-such-mirror"))
    code, out, _ = tool("check", "megatron")
    assert code == 3, out  # EXIT_INCOMPLETE: a skipped check is never reported OK
    assert "SKIPPED" in out and "no-such-mirror" in out and "UPSTREAM_MEGATRON_GIT" in out
    assert "INCOMPLETE (exit 3)" in out and "\nOK" not in out
    assert tool("check", "megatron", "--strict")[0] == 3  # kept for scripts: the default now
    code, out, _ = tool("check", "megatron", "--allow-incomplete")
    assert code == 0 and "INCOMPLETE: the entries above were not checked" in out


def test_a_misfit_after_a_skipped_entry_is_undecided_and_exits_4(world, monkeypatch):
    """slime unreachable: its patch to megatron is skipped; a patch of ours after it with one
    corrupted context line cannot be blamed or cleared, so the check is neither OK nor FAILED."""
    mg = world.upstream("megatron", {"a.py": FILE})
    ext = mg.diff({"a.py": _edit(FILE, "line 3\n", "line three\n")})
    world.upstream("slime", {"docker/patch/megatron.patch": ext})
    world.add_external("megatron", "slime:docker/patch/megatron.patch", hashlib.sha256(ext.encode()).hexdigest())
    corrupt = mg.diff({"a.py": _edit(FILE, "line 40\n", "line forty\n")}).replace(" line 38\n", " line 38 typo\n")
    world.add_patch("megatron", "0001-ours.patch", corrupt)
    slime_git = os.environ["UPSTREAM_SLIME_GIT"]
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "no-such-slime"))
    for extra in ((), ("--allow-incomplete",)):
        code, out, _ = tool("check", "megatron", *extra)
        assert code == 4, out  # EXIT_UNDECIDED, whatever --allow-incomplete says about skips
        assert "UNDECIDED (exit 4)" in out and "OK" not in out.splitlines()[-1]
    code, out, _ = tool("check", "megatron", "--json")
    assert json.loads(out)["exit"] == 4
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", slime_git)
    code, out, _ = tool("check", "megatron")  # control: with slime reachable the misfit is a failure
    assert code == 1 and "FAILS     [base] 0001-ours.patch" in out, out


def test_without_the_source_patches_that_only_create_files_are_still_checked(world, monkeypatch):
    mg = world.upstream("megatron", {"a.py": FILE})
    new = mg.diff({"pkg/new.py": numbered(6, "new")})
    world.add_patch("megatron", "0001-new.patch", new)
    world.add_patch("megatron", "0002-more.patch", mg.diff({"pkg/other.py": "x\n"}))
    world.add_patch("megatron", "0003-edit.patch", mg.diff({"a.py": _edit(FILE, "line 3\n", "x\n")}))
    monkeypatch.setenv("UPSTREAM_MEGATRON_GIT", str(world.tmp / "no-such-mirror"))
    code, out, _ = tool("check", "megatron")
    assert code == 3, out  # the edit was skipped: incomplete
    assert "fits      [base] 0001-new.patch" in out and "fits      [base] 0002-more.patch" in out
    assert "creates files only: checked without the source" in out
    assert "SKIPPED   [base] 0003-edit.patch" in out and "needs the upstream's own a.py" in out

    # A broken file-creating patch is caught without the source, not skipped.
    broken = new.replace("+new 4\n", "")  # the hunk now says one line more than it has
    world.add_patch("megatron", "0001-new.patch", broken)
    world.series["megatron"]["base"].pop()  # add_patch listed it again
    world.write()
    code, out, _ = tool("check", "megatron")
    assert code == 1, out
    assert "FAILS     [base] 0001-new.patch" in out


def test_a_mirror_without_the_pinned_commit_is_said_and_the_entries_are_still_listed(world, monkeypatch):
    mg = world.upstream("megatron", {"a.py": FILE})
    world.add_patch("megatron", "0001-new.patch", mg.diff({"pkg/new.py": "x\n"}))
    other = world.tmp / "other-mirror"
    other.mkdir()
    run_git(other, "init", "-q")
    (other / "f").write_text("unrelated\n")
    run_git(other, "add", "-A")
    run_git(other, "commit", "-qm", "unrelated")
    monkeypatch.setenv("UPSTREAM_MEGATRON_GIT", str(other))
    code, out, _ = tool("check", "megatron")
    assert code == 1, out  # a wrong mirror is an error, not a skip
    assert "(no entries in the selected groups)" not in out
    assert "[base] 0001-new.patch" in out
    assert mg.pin[:12] in out


def test_unknown_upstream_is_an_error_listing_the_known_ones(world):
    world.upstream("megatron", {"a.py": FILE})
    code, _, err = tool("check", "megatorn")
    assert code == 2
    assert "unknown upstream 'megatorn'" in err and "megatron" in err
    world.series["megatron"]["base"].append(f"slimee:x.patch sha256={'0' * 64}")
    world.write()
    code, out, err = tool("check", "megatron")
    assert code == 1 and "unknown upstream 'slimee'" in out


def test_pin_missing_from_the_source_is_an_error_not_a_skip(world):
    world.upstream("megatron", {"a.py": FILE})
    world.upstreams["megatron"].pin = "1" * 40
    world.write()
    code, out, _ = tool("check", "megatron")
    assert code == 1
    assert f"the pinned commit {'1' * 40} is not in" in out


def test_check_tree_expect_applied(world, tmp_path):
    up = world.upstream("megatron", {"a.py": FILE})
    world.add_patch("megatron", "0001-a.patch", up.diff({"a.py": _edit(FILE, "line 30\n", "line thirty\n")}))
    tree = up.checkout(tmp_path / "target")
    assert tool("check", "megatron", "--tree", str(tree))[0] == 0
    assert tool("check", "megatron", "--tree", str(tree), "--expect", "applied")[0] == 1
    assert tool("apply", "megatron", "--tree", str(tree))[0] == 0
    code, out, _ = tool("check", "megatron", "--tree", str(tree), "--expect", "applied")
    assert code == 0 and "applied   [base] 0001-a.patch" in out


def test_patched_tree_reads_as_applied_even_where_the_context_repeats(world, tmp_path):
    """The hunk's context occurs twice: on a patched tree it would 'fit' again at the second place."""
    block = "def f():\n    a = 1\n    b = 2\n    c = 3\n    return a\n\n"
    head = numbered(10, "# header")
    up = world.upstream("megatron", {"a.py": head + block + "# middle\n" + block})
    patched = head + block.replace("    b = 2\n", "    b = 2\n    b += 1\n", 1) + "# middle\n" + block
    world.add_patch("megatron", "0001-a.patch", up.diff({"a.py": patched}))
    tree = up.checkout(tmp_path / "target")
    assert tool("apply", "megatron", "--tree", str(tree))[0] == 0
    assert (tree / "a.py").read_text() == patched
    code, out, _ = tool("check", "megatron", "--tree", str(tree), "--expect", "applied")
    assert code == 0, out
    assert "applied   [base] 0001-a.patch" in out
    # Without the applied-first test, the same tree is misread as one the patch still fits.
    code, out, _ = tool("check", "megatron", "--tree", str(tree))
    assert "fits      [base] 0001-a.patch" in out


def test_a_patched_tree_reads_as_applied_where_a_later_patch_changed_an_earlier_ones_lines(world, tmp_path):
    """0002 edits the line next to 0001's change (inside 0001's context): on the patched tree
    0001 comes off only once 0002 has come off, so the check takes them off newest first."""
    up = world.upstream("megatron", {"a.py": FILE})
    first = _edit(FILE, "line 30\n", "line thirty\n")
    world.add_patch("megatron", "0001-first.patch", up.diff({"a.py": first}))
    pin = up.pin
    up.pin = up.commit({"a.py": first}, "tmp")  # write the second patch on top of the first
    world.add_patch("megatron", "0002-second.patch", up.diff({"a.py": _edit(first, "line 31\n", "line thirty-one\n")}))
    world.repin("megatron", pin)
    tree = up.checkout(tmp_path / "target", pin)
    assert tool("apply", "megatron", "--tree", str(tree))[0] == 0
    code, out, _ = tool("check", "megatron", "--tree", str(tree), "--expect", "applied")
    assert code == 0, out
    assert "applied   [base] 0001-first.patch" in out and "applied   [base] 0002-second.patch" in out
    # Half patched (the first only): said, not read as applied.
    half = up.checkout(tmp_path / "half", pin)
    (half / "a.py").write_text(first)
    code, out, _ = tool("check", "megatron", "--tree", str(half), "--expect", "applied")
    assert code == 1, out
    assert "applied   [base] 0001-first.patch" in out and "NOT APPLIED [base] 0002-second.patch" in out


def test_a_series_entry_that_is_a_directory_is_refused_by_name(world):
    world.upstream("megatron", {"a.py": FILE})
    world.series["megatron"]["base"].append("0001-dir.patch")
    world.write()
    (world.folder("megatron") / "0001-dir.patch").mkdir()
    code, out, err = tool("check", "megatron")
    assert code == 1 and "Traceback" not in out + err
    assert "series:3: 0001-dir.patch is listed but" in out and "is a directory, not a patch file" in out


def test_a_series_file_that_is_a_directory_is_refused_by_name(world):
    world.upstream("megatron", {"a.py": FILE})
    series = world.folder("megatron") / "series"
    series.unlink()
    series.mkdir()
    code, out, err = tool("check", "megatron")
    assert code in (1, 2) and "Traceback" not in out + err
    assert "the series file for megatron is a directory, not a file" in out + err
