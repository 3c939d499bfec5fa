"""`materialise`: the files a series creates importable without the upstream; changed ones with it."""

from __future__ import annotations

import importlib
import sys

from conftest import numbered, tool

MODULE = "def answer():\n    return 42\n"


def _world(world):
    up = world.upstream("slime", {"pkg/__init__.py": "", "pkg/x.py": numbered(10)})
    world.add_patch("slime", "0001-new-module.patch",
                    up.diff({"pkg/gemma4/__init__.py": "", "pkg/gemma4/model.py": MODULE}), group="gemma4")
    world.add_patch("slime", "0002-hook.patch", up.diff({"pkg/x.py": numbered(10).replace("line 5\n", "hook\n")}),
                    group="gemma4")
    return up


def test_new_modules_materialise_and_import_without_the_source(world, tmp_path, monkeypatch):
    _world(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(tmp_path / "unreachable"))
    dest = tmp_path / "out"
    code, out, _ = tool("materialise", "slime", "--gemma4", "--dest", str(dest))
    assert code == 3
    assert "wrote     pkg/gemma4/model.py" in out
    assert "NOT WRITTEN pkg/x.py: the patches change it" in out
    assert not (dest / "pkg" / "x.py").exists()
    monkeypatch.syspath_prepend(str(dest))
    sys.modules.pop("pkg", None)
    (dest / "pkg" / "__init__.py").write_text("")
    assert importlib.import_module("pkg.gemma4.model").answer() == 42
    for name in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
        del sys.modules[name]
    # --only limits the set: asking for the new package alone is complete.
    code, out, _ = tool("materialise", "slime", "--gemma4", "--dest", str(tmp_path / "o2"), "--only", "pkg/gemma4/*")
    assert code == 0 and "NOT WRITTEN" not in out


def test_with_the_source_changed_files_are_written_as_the_series_leaves_them(world, tmp_path):
    _world(world)
    dest = tmp_path / "out"
    code, out, _ = tool("materialise", "slime", "--gemma4", "--dest", str(dest))
    assert code == 0, out
    assert (dest / "pkg" / "x.py").read_text() == numbered(10).replace("line 5\n", "hook\n")
    assert (dest / "pkg" / "gemma4" / "model.py").read_text() == MODULE
    # Without --gemma4 the group is not applied: nothing to write.
    code, out, _ = tool("materialise", "slime", "--dest", str(tmp_path / "base"))
    assert code == 0 and "0 files written" in out
