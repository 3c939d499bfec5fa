"""Write the files a series creates or changes into a folder, without a checkout of the upstream.

Code that the patches add (new modules) can be imported and tested where the upstream itself
cannot be fetched (CI has no slime or Megatron source): a file that a patch creates is all in the
patch. A file that a patch changes needs the upstream's own file; where the source is reachable it
is used, and the file is written as the series leaves it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from . import diff, engine, series, sources
from .apply import write_changes
from .check import PatchSource
from .errors import SourceUnavailable, StackError
from .manifest import Manifest
from .trees import EmptyTree, Overlay, Tree


@dataclass
class Materialised:
    written: list[str] = field(default_factory=list)
    need_source: list[str] = field(default_factory=list)  # changed files that need the upstream's own
    source: str = ""


def materialise(manifest: Manifest, upstream: str, groups: list[str], dest: Path, *,
                only: list[str] | None = None, offline: bool = False) -> Materialised:
    """Apply the selected entries in order and write the files they touch (matching `only`)."""
    out = Materialised()
    try:
        src = sources.source(manifest.upstream(upstream), offline=offline)
        base: Tree = src.tree
        out.source = src.origin
    except SourceUnavailable as e:
        base = EmptyTree()
        out.source = f"none ({e.message}): only files that the patches create"
    state = Overlay(base)
    reader = PatchSource(manifest, offline)
    missing: set[str] = set()
    for entry in series.load(manifest, upstream).selected(groups):
        patch = diff.parse(entry.name, reader.read(entry))
        if isinstance(base, EmptyTree):
            # Without the source, keep the files this patch creates (or that earlier ones did).
            patch = diff.Patch(patch.name, patch.header, [
                fp for fp in patch.files if fp.is_new or state.read(fp.old_path or "") is not None])
            missing |= {fp.path for fp in diff.parse(entry.name, reader.read(entry)).files
                        if not fp.is_new and fp.path not in state.changes}
        res = engine.apply_patch(patch, state)
        if res.status != engine.FITS:
            raise StackError(f"{entry.where()}: {entry.name} does not apply ({res.status})",
                             hint=f"run `make check` for {upstream}")
        state.update(res.changes)

    def wanted(path: str) -> bool:
        return not only or any(fnmatch.fnmatch(path, g) for g in only)

    changes = {p: c for p, c in state.changes.items() if wanted(p)}
    dest.mkdir(parents=True, exist_ok=True)
    write_changes(dest, changes)
    out.written = sorted(p for p, c in changes.items() if c is not None)
    out.need_source = sorted(p for p in missing - set(state.changes) if wanted(p))
    return out
