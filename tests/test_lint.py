"""`lint`: our patch files and the series files, before anything is applied."""

from __future__ import annotations

from conftest import numbered, tool

FILE = numbered(20)


LICENSE = "License: Apache-2.0; this change modifies slime (THUDM/slime, Apache-2.0), whose files stay under that license (NOTICE)"


def _good(up):
    return up.diff({"a.py": FILE.replace("line 5\n", "five\n")},
                   status="temporary waits for https://example.invalid/upstream/pull/1\n" + LICENSE)


def test_header_must_say_the_license(world):
    up = world.upstream("slime", {"a.py": FILE})
    world.add_patch("slime", "0001-nolicense.patch", _good(up).replace(LICENSE + "\n", ""))
    world.add_patch("slime", "0002-vague.patch", _good(up).replace("; this change modifies slime", ""))
    code, out, _ = tool("lint")
    assert code == 1 and "FAILED: 2 problems" in out
    assert "0001-nolicense.patch: the header has no 'License:' line" in out
    assert "0002-vague.patch: the header has no 'License:' line" in out


def test_a_good_series_passes(world):
    up = world.upstream("slime", {"a.py": FILE})
    world.add_patch("slime", "0001-a.patch", _good(up))
    code, out, _ = tool("lint")
    assert code == 0, out
    assert "OK: 0 problems in 1 patch files" in out


def test_one_problem_is_one_problem(world):
    up = world.upstream("slime", {"a.py": FILE})
    world.add_patch("slime", "0001-nosubject.patch", _good(up).replace("Subject:", "Topic:"))
    code, out, _ = tool("lint")
    assert code == 1
    assert "FAILED: 1 problem in 1 patch files" in out


def test_header_must_say_why_the_patch_exists(world):
    up = world.upstream("slime", {"a.py": FILE})
    text = _good(up)
    world.add_patch("slime", "0001-nostatus.patch", text.replace("Upstream-Status: temporary", "Note: temporary"))
    world.add_patch("slime", "0002-badkind.patch", text.replace("temporary waits", "forever waits"))
    world.add_patch("slime", "0003-noreason.patch",
                    text.replace("temporary waits for https://example.invalid/upstream/pull/1", "temporary"))
    world.add_patch("slime", "0004-nosubject.patch", text.replace("Subject:", "Topic:"))
    code, out, _ = tool("lint")
    assert code == 1
    assert "0001-nostatus.patch: the header has no 'Upstream-Status:' line" in out
    assert "0002-badkind.patch: Upstream-Status 'forever' is not one of temporary, environment, incompatible" in out
    assert "0003-noreason.patch: Upstream-Status: temporary needs a reason" in out
    assert "0004-nosubject.patch: the header has no 'Subject:' line" in out


def test_paths_must_stay_inside_the_tree(world):
    up = world.upstream("slime", {"a.py": FILE})
    text = _good(up).replace("a/a.py", "a/../etc/a.py").replace("b/a.py", "b/../etc/a.py")
    world.add_patch("slime", "0001-escape.patch", text)
    code, out, _ = tool("lint")
    assert code == 1 and "path '../etc/a.py' must be relative, inside the tree" in out


def test_conflict_markers_and_crlf_are_caught(world):
    up = world.upstream("slime", {"a.py": FILE})
    world.add_patch("slime", "0001-marker.patch",
                    up.diff({"a.py": FILE.replace("line 5\n", "<<<<<<< ours\nfive\n=======\n5\n>>>>>>> theirs\n")}))
    world.add_patch("slime", "0002-crlf.patch", _good(up).replace("+five\n", "+five\r\n"))
    code, out, _ = tool("lint")
    assert code == 1
    assert "0001-marker.patch:" in out and "conflict marker in an added line" in out
    assert "0002-crlf.patch:" in out and "CRLF line ending" in out


def test_malformed_patch_is_reported_by_both_parsers(world):
    up = world.upstream("slime", {"a.py": FILE})
    text = _good(up).replace("@@ -2,7 +2,7 @@", "@@ -2,9 +2,7 @@")
    world.add_patch("slime", "0001-counts.patch", text)
    code, out, _ = tool("lint")
    assert code == 1
    assert "not a valid unified diff (unidiff:" in out
    assert "ends early" in out or "does not fit hunk" in out


def test_every_file_listed_and_every_entry_present(world):
    up = world.upstream("slime", {"a.py": FILE})
    world.add_patch("slime", "0001-a.patch", _good(up))
    (world.folder("slime") / "0002-stray.patch").write_text(_good(up))
    world.series["slime"]["gemma4"].append("0003-ghost.patch")
    world.write()
    code, out, _ = tool("lint")
    assert code == 1
    assert "0002-stray.patch: not listed in" in out
    assert "0003-ghost.patch is listed but there is no such file" in out


def test_series_syntax_errors_name_the_line(world):
    world.upstream("slime", {"a.py": FILE})
    (world.folder("slime") / "series").write_text("0001-a.patch\n")
    code, out, _ = tool("lint")
    assert code == 1 and "series:1: entry '0001-a.patch' comes before any [group] line" in out
    (world.folder("slime") / "series").write_text("[base]\n[extras]\n")
    code, out, _ = tool("lint")
    assert code == 1 and "series:2: unknown group [extras]" in out
    (world.folder("slime") / "series").write_text("[base]\nslime:x.patch sha256=abc\n")
    code, out, _ = tool("lint")
    assert code == 1 and "sha256 of slime:x.patch must be 64 lowercase hex digits" in out


def test_the_shipped_series_lint_clean(monkeypatch):
    from conftest import REPO

    monkeypatch.setenv("PATCHSTACK_ROOT", str(REPO))
    code, out, _ = tool("lint")
    assert code == 0, out
