"""The SGLang v0.5.9 tree the Gemma4 tests import: the pinned sources with the series applied.

The sources are the pinned SGLang (PyPI sdist or git, through the tool's cache). The series is
applied in order with the tool's own engine: slime's base patch where slime's tree can be read,
then our `gemma4` group. Where slime cannot be reached (CI has no GitHub), the base patch is left
out and said so (`Built.skipped`); our patches must then still apply, with offsets, to the bare
sources, or the build fails. The result is cached under out/ by the hash of everything that went
into it.

`SGLANG_TREE` (a folder holding the `sglang` package) skips all this and uses that tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "out" / "sglang-gemma4"
sys.path.insert(0, str(ROOT / "build"))


@dataclass
class Built:
    path: Path  # the folder that holds the `sglang` package
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "entry: why"

    def describe(self) -> str:
        text = f"SGLang tree {self.path} with {', '.join(self.applied) or 'no patches'}"
        if self.skipped:
            text += "; NOT applied: " + "; ".join(self.skipped)
        return text


def build(dest: Path = DEST) -> Built:
    if os.environ.get("SGLANG_TREE"):
        return Built(Path(os.environ["SGLANG_TREE"]).resolve(), applied=["(given by SGLANG_TREE)"])

    from patchstack import diff, engine, manifest, series, sources
    from patchstack.apply import write_changes
    from patchstack.check import PatchSource
    from patchstack.trees import Overlay

    man = manifest.load(ROOT)
    up = man.upstream("sglang")
    src = sources.source(up)  # raises SourceUnavailable (the caller skips) without the sdist
    reader = PatchSource(man)
    entries = series.load(man, "sglang").selected(man.select_groups({"gemma4"}))

    read, missing = reader.read_available(entries)
    texts = [(entry, data) for entry, data in read if data is not None]
    skipped = [f"{name}: {why}" for name, why in missing.items()]
    key = hashlib.sha256(src.commit.encode())
    for entry, data in texts:
        key.update(entry.name.encode() + b"\0" + hashlib.sha256(data).digest())
    key = key.hexdigest()[:16]

    built = Built(dest / key / "python", [e.name for e, _ in texts], skipped)
    stamp = dest / key / "DONE"
    if stamp.is_file():
        return built

    overlay = Overlay(src.tree)
    for entry, data in texts:
        res = engine.apply_patch(diff.parse(entry.name, data), overlay)
        if res.status != engine.FITS:
            raise RuntimeError(
                f"{entry.name} does not apply to SGLang {up.version} "
                f"({'after leaving out ' + '; '.join(skipped) if skipped else 'in series order'}): "
                f"{res.status}; run `make check GEMMA4=1` for the hunk-by-hunk diagnosis"
            )
        overlay.update(res.changes)

    tmp = dest / (key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    git_dir = getattr(src.tree, "git_dir", None)
    if git_dir is None:
        raise RuntimeError(f"SGLang source {src.origin} is not a git tree")
    archive = subprocess.run(
        ["git", "--git-dir", str(git_dir), "archive", "--format=tar", src.commit, "python/sglang"],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    write_changes(tmp, {p: c for p, c in overlay.changes.items() if p.startswith("python/")})
    (tmp / "DONE").write_text(built.describe() + "\n")
    shutil.rmtree(dest / key, ignore_errors=True)
    tmp.rename(dest / key)
    return built


def build_or_skip() -> Built:
    """build() for a test module: skipped, with the reason, where the SGLang sources cannot be
    reached; any other failure (a patch that does not apply) is an error."""
    import pytest
    from patchstack.errors import SourceUnavailable

    try:
        built = build()
    except SourceUnavailable as e:
        pytest.skip(f"SGLang v0.5.9 sources unreachable: {e.message}", allow_module_level=True)
    if built.skipped:  # the tests still run, on our patches alone; the summary says so
        import warnings

        warnings.warn(f"SGLang tests run without: {'; '.join(built.skipped)}", UserWarning, stacklevel=2)
    return built


if __name__ == "__main__":
    print(build().describe())
