"""The compatibility matrix: every entry of every series against a list of upstream versions.

Columns, per upstream: the pin, then the versions of patches/matrix.toml (for an upstream with a
PyPI sdist, every stable release on the package index after the pin; for a git upstream, the
commits listed there, plus the newest commit of the remote's default branch). Rows: the entries of
the series, in order (by default every group).

A cell is one entry on one version, after the entries before it: the series is applied in order
to the version's tree, as `apply` would. An entry that fits is `applies` (every hunk at its
header's line) or `offset`; one whose every hunk is already there is `upstream`. Only an entry
that does not fit gets the rebase simulation (rebase.rebase_patch, the same placement as
`make rebase`): `rebases` (no conflict), `conflicts` (N hunks need a person), or `upstream` (every
hunk upstreamed). A cell that could not be computed is `unavailable`, with the reason.

An entry left with conflicts does not pretend to be resolved: its files without a conflict are
carried forward to the entries after it; a file with a conflict stays as upstream has it, and a
later entry touching that file says so in its cell ("caveats").

Cells are cached under out/matrix/cache/, keyed by a hash of the entry's text, the texts of the
entries before it, the pinned commit and the code that decides a cell, and by the version's
commit. Written as out/matrix/matrix.json and a self-contained page, out/matrix/index.html.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import time
import tomllib
import traceback
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import diff, engine, merge, rebase, series, sources
from .matrix_page import render_html
from .check import PatchSource
from .errors import SourceUnavailable, StackError
from .manifest import SHA1, Manifest, Upstream
from .trees import Overlay, git

LIST_FILE = "matrix.toml"

# Cell statuses, best first.
APPLIES, OFFSET, REBASES, CONFLICTS, UPSTREAM, UNAVAILABLE = (
    "applies", "offset", "rebases", "conflicts", "upstream", "unavailable")
STATUS_TEXT = {
    APPLIES: "applies: every hunk at its line",
    OFFSET: "applies at an offset: every hunk fits, some at other lines",
    REBASES: "would rebase cleanly: does not apply, but every hunk is placed without a conflict",
    CONFLICTS: "needs N conflicts resolved",
    UPSTREAM: "already upstream: every hunk is there",
    UNAVAILABLE: "not computed: the cell says why",
}

# Bump to start every cache afresh by hand; any change to the tool's own code does it anyway.
RULE_VERSION = 1
# Modules that cannot change a cell (the page, the command line, the image, lint): left out of
# the cache's key, so that changing them keeps the cache.
_NOT_RULES = {"cli.py", "matrix_page.py", "image.py", "lint.py", "__main__.py"}
_STABLE = re.compile(r"^\d+(\.\d+)*(\.post\d+)?$")


def rules() -> str:
    """A hash of the tool's code (every module of this package but _NOT_RULES: the placement and
    verification rules among them): any change to it starts the cache afresh, so no cell is kept
    that the current rules would decide differently."""
    h = hashlib.sha256(f"rules {RULE_VERSION}\n".encode())
    for p in sorted(Path(__file__).resolve().parent.glob("*.py")):
        if p.name not in _NOT_RULES:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ the version list


@dataclass
class ListSpec:
    pypi: bool
    newest: bool
    commits: list[tuple[str, str]]  # (commit, what it is)


def load_list(manifest: Manifest) -> dict[str, ListSpec]:
    """patches/matrix.toml: per upstream, `pypi`, `newest` and `commits`. An upstream it does not
    name gets its PyPI releases (if it has an sdist) or its newest commit (if not)."""
    path = manifest.patches_dir / LIST_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except tomllib.TOMLDecodeError as e:
        raise StackError(f"{path}: not valid TOML: {e}") from None
    tables = data.get("upstream", {})
    for name in tables:
        manifest.upstream(name)  # an unknown name fails here, with the list
    out = {}
    for name, up in manifest.upstreams.items():
        t = tables.get(name, {})
        where = f"{path}: [upstream.{name}]"
        unknown = set(t) - {"pypi", "newest", "commits"}
        if unknown:
            raise StackError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                             hint="keys: pypi (true/false), newest (true/false), commits (a list)")
        pypi = t.get("pypi", up.sdist is not None)
        newest = t.get("newest", up.sdist is None)
        if not isinstance(pypi, bool) or not isinstance(newest, bool):
            raise StackError(f"{where}: pypi and newest are true or false")
        if pypi and up.sdist is None:
            raise StackError(f"{where}: pypi = true, but {name} has no sdist in patches/pins.toml")
        commits = []
        for c in t.get("commits", []):
            commit, what = (c, "") if isinstance(c, str) else (c.get("commit"), c.get("name", ""))
            if not isinstance(commit, str) or not SHA1.match(commit):
                raise StackError(f"{where}: commits: {commit!r} is not a full 40-hex-digit SHA-1",
                                 hint='write a commit as "SHA" or {commit = "SHA", name = "what it is"}')
            commits.append((commit, str(what)))
        out[name] = ListSpec(pypi, newest, commits)
    return out


@dataclass
class Column:
    id: str  # unique within its upstream
    label: str
    kind: str  # pin | pypi | listed | newest | given
    commit: str | None = None
    origin: str = ""
    note: str = ""
    reason: str = ""  # why the version is not available (then every cell says so)
    wheel: bool = False
    resolve: Callable[[], sources.Source] | None = field(default=None, repr=False)
    _src: sources.Source | None = field(default=None, repr=False)

    def source(self) -> sources.Source:
        if self._src is None:
            assert self.resolve is not None
            self._src = self.resolve()
            self.origin = self._src.origin
        return self._src

    def to_json(self) -> dict:
        d = {"id": self.id, "label": self.label, "kind": self.kind, "commit": self.commit, "origin": self.origin}
        if self.note:
            d["note"] = self.note
        if self.wheel:
            d["wheel"] = True
        if self.reason:
            d["reason"] = self.reason
        return d


def _release_key(v: str) -> tuple:
    base, _, post = v.partition(".post")
    return tuple(int(x) for x in base.split(".")), int(post or -1)


def _file_version(project: str, filename: str) -> str | None:
    names = {project, project.replace("-", "_"), project.replace("_", "-")}
    if filename.endswith(".whl"):
        parts = filename.split("-")
        return parts[1] if len(parts) >= 5 and parts[0] in names | {project.replace("-", "_")} else None
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            for n in names:
                if filename.startswith(n + "-"):
                    return filename[len(n) + 1:-len(ext)]
    return None


def pypi_releases(project: str) -> list[dict]:
    """Every stable release (N.N[.N...][.postN]: no pre-release, no dev, no local version) on the
    package index (PEP 691 JSON; PIP_INDEX_URL as pip has it), oldest first, each with the file
    the matrix reads: the sdist, or where the release has none a wheel (pure Python first), as
    sources.resolve_pypi_sdist picks. Yanked files and files without a sha256 are left out."""
    url, data = sources.pypi_index(project)
    by_version: dict[str, list[dict]] = {}
    for f in data.get("files", []):
        sha = (f.get("hashes") or {}).get("sha256")
        v = _file_version(project, f.get("filename", ""))
        if not sha or f.get("yanked") or v is None or not _STABLE.match(v):
            continue
        by_version.setdefault(v, []).append(f)
    out = []
    for v in sorted(by_version, key=_release_key):
        files = by_version[v]
        sdists = [f for f in files if not f["filename"].endswith(".whl")]
        wheels = sorted((f for f in files if f["filename"].endswith(".whl")),
                        key=lambda f: ("-none-any.whl" not in f["filename"], "x86_64" not in f["filename"],
                                       f["filename"]))
        pick = (sdists or wheels)[0]
        out.append({"version": v, "url": urllib.parse.urljoin(url, pick["url"]), "sha256": pick["hashes"]["sha256"],
                    "filename": pick["filename"]})
    return out


class Cache:
    """out/matrix/cache/: one JSON file per computed cell (cells/<rules>/<upstream>/<key>_<commit>.json),
    and the version resolutions (versions.json). Cells of other rules can never be read again:
    prune() removes them."""

    def __init__(self, root: Path, rule: str):
        self.root = root
        self.rule = rule
        self.versions_file = root / "versions.json"
        try:
            self.versions = json.loads(self.versions_file.read_text())
        except (FileNotFoundError, ValueError):
            self.versions = {}

    def _cell_path(self, upstream: str, key: str, commit: str) -> Path:
        return self.root / "cells" / self.rule / upstream / f"{key}_{commit}.json"

    def prune(self) -> None:
        for d in (self.root / "cells").glob("*"):
            if d.is_dir() and d.name != self.rule:
                shutil.rmtree(d, ignore_errors=True)

    def get(self, upstream: str, key: str, commit: str) -> dict | None:
        try:
            return json.loads(self._cell_path(upstream, key, commit).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, upstream: str, key: str, commit: str, cell: dict) -> None:
        p = self._cell_path(upstream, key, commit)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: v for k, v in cell.items() if k not in ("cached", "seconds")}))
        tmp.replace(p)

    def upstream(self, name: str) -> dict:
        return self.versions.setdefault(name, {})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_file.with_name(f"versions.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.versions, indent=1, sort_keys=True))
        tmp.replace(self.versions_file)


def _commit_column(up: Upstream, commit: str, kind: str, note: str, offline: bool) -> Column:
    return Column(id=commit[:8], label=commit[:8], kind=kind, commit=commit, note=note,
                  resolve=lambda: rebase.resolve_target(up, commit, offline=offline)[1])


def _pypi_columns(up: Upstream, cache: Cache, offline: bool, log) -> list[Column]:
    pin = up.version.lstrip("v")
    if not _STABLE.match(pin):
        return [Column(id="pypi", label="PyPI releases", kind="pypi",
                       reason=f"the pin's version {up.version!r} is not a release number to compare with")]
    store = cache.upstream(up.name)
    listing, note = None, ""
    if offline:
        note = "--offline: the package index is not read"
    else:
        try:
            listing = pypi_releases(up.name)
            store["listing"] = listing
            store["listed_at"] = _now()
        except SourceUnavailable as e:
            note = e.message
    if listing is None:
        listing = store.get("listing")
        if listing is None:
            return [Column(id="pypi", label="PyPI releases", kind="pypi",
                           reason=f"{note}; and no earlier listing is cached")]
        log(f"{up.name}: {note}; using the listing cached at {store.get('listed_at')}")
    resolved = store.setdefault("resolved", {})
    cols = []
    for rel in listing:
        v = rel["version"]
        if _release_key(v) <= _release_key(pin):
            continue
        wheel = rel["url"].endswith(".whl")
        col = Column(id=f"v{v}", label=f"v{v}", kind="pypi", wheel=wheel,
                     note=f"{rel['filename']}, sha256 {rel['sha256']}"
                     + (" (no sdist for this release: its wheel)" if wheel else ""))

        def resolve(v=v, rel=rel) -> sources.Source:
            return rebase.resolve_target(up, v, sha256=rel["sha256"], sdist=rel["url"], offline=offline)[1]

        col.resolve = resolve
        known = resolved.get(f"{v} {rel['sha256']}")
        if known:
            col.commit, col.origin = known["commit"], known["origin"]
        else:
            try:
                log(f"{up.name}: reading {rel['filename']} ...")
                src = col.source()
                col.commit = src.commit
                resolved[f"{v} {rel['sha256']}"] = {"commit": src.commit, "origin": src.origin}
            except (SourceUnavailable, StackError) as e:
                col.reason = e.message
        cols.append(col)
    cache.save()
    if note and listing is not None:
        for c in cols:
            c.note = (c.note + "; " if c.note else "") + f"from the cached listing ({note})"
    return cols


def _newest_column(up: Upstream, offline: bool) -> Column:
    url, via = up.git_url()
    if offline:
        return Column(id="newest", label="newest", kind="newest",
                      reason=f"--offline: the newest commit of {url} is not looked up")
    p = git("ls-remote", "--symref", url, "HEAD", check=False, env=sources.FETCH_TIMEOUT_ENV)
    lines = p.stdout.decode("utf-8", "replace").splitlines()
    branch = next((ln.split()[1].removeprefix("refs/heads/") for ln in lines if ln.startswith("ref:")), "HEAD")
    sha = next((ln.split("\t")[0] for ln in lines if ln.endswith("\tHEAD") and not ln.startswith("ref:")), None)
    if p.returncode != 0 or not sha:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        why = next((x for x in err if x.startswith("fatal:")), err[-1] if err else "no HEAD")
        return Column(id="newest", label="newest", kind="newest",
                      reason=f"the newest commit is not known: cannot reach {url} (from {via}): {why}")
    col = _commit_column(up, sha, "newest", f"newest commit of {branch} in {url} (from {via})", offline)
    col.id = col.label = f"{branch}@{sha[:8]}"
    return col


def columns(up: Upstream, spec: ListSpec, pin: Column, cache: Cache, *, offline: bool,
            override: list[str] | None = None, log=print) -> list[Column]:
    cols = [pin]
    if override is not None:
        for v in override:
            if SHA1.match(v):
                cols.append(_commit_column(up, v, "given", "given with --versions", offline))
                continue
            col = Column(id=v, label=v, kind="given", note="given with --versions")
            try:
                new_up, src = rebase.resolve_target(up, v, offline=offline)
                col._src, col.commit, col.origin = src, src.commit, src.origin
                col.id = col.label = new_up.version
                col.wheel = bool(new_up.sdist and new_up.sdist.url.endswith(".whl"))
            except (SourceUnavailable, StackError) as e:
                col.reason = e.message
            cols.append(col)
    else:
        if spec.pypi:
            cols += _pypi_columns(up, cache, offline, log)
        cols += [_commit_column(up, c, "listed", what, offline) for c, what in spec.commits]
        if spec.newest:
            cols.append(_newest_column(up, offline))
    seen: dict[str, int] = {}
    for c in cols:  # ids stay unique (a listed commit may also be the newest)
        n = seen.get(c.id, 0)
        seen[c.id] = n + 1
        if n:
            c.id = f"{c.id}~{n}"
    return cols


# ------------------------------------------------------------------ the cells


@dataclass
class Item:
    entry: series.Entry
    patch: diff.Patch | None = None
    sha256: str | None = None
    error: str = ""


def _read(entries: list[series.Entry], reader: PatchSource) -> list[Item]:
    items = []
    for e in entries:
        it = Item(e)
        try:
            data = reader.read(e)
            it.sha256 = hashlib.sha256(data).hexdigest()
            it.patch = diff.parse(e.name, data)
        except SourceUnavailable as ex:
            it.error = f"patch unreadable: {ex.message}"
        except StackError as ex:
            it.error = f"patch unreadable: {ex}"
        items.append(it)
    return items


def _keys(items: list[Item], pin_commit: str, rule: str) -> list[str]:
    h = hashlib.sha256(f"{rule}\n{pin_commit}\n".encode())
    keys = []
    for it in items:
        h.update(f"{it.entry.name}\0{it.sha256 or 'unreadable'}\n".encode())
        keys.append(h.copy().hexdigest()[:40])
    return keys


def _unavailable(version: str, reason: str) -> dict:
    return {"version": version, "status": UNAVAILABLE, "text": "n/a", "summary": f"not computed: {reason}",
            "reason": reason, "hunks": [], "counts": {}, "caveats": [], "cached": False, "simulated": False}


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _fit_rows(patch: diff.Patch, res: engine.PatchResult) -> list[dict]:
    st = {engine.FITS: merge.CLEAN, engine.OFFSET: merge.OFFSET, engine.APPLIED: merge.UPSTREAMED}
    rows = []
    for fp, fr in zip(patch.files, res.files):
        if not fr.hunks:
            rows.append({"file": fr.path, "old_start": 0, "status": st.get(fr.status, merge.CLEAN)})
        for h, hr in zip(fp.hunks, fr.hunks):
            row = {"file": fr.path, "old_start": h.old_start, "status": st[hr.status]}
            if hr.at is not None:
                row["at"] = hr.at
            if hr.status == engine.APPLIED:
                row["reason"] = "upstream already has the change"
            rows.append(row)
    return rows


def _paths(patch: diff.Patch) -> set[str]:
    return {p for fp in patch.files for p in (fp.old_path, fp.new_path) if p}


def simulate(items: list[Item], old_tree, new_tree, moved: dict[str, str], *, version: str, label: str,
             pin_label: str, wheel: bool = False) -> list[dict]:
    """The cells of one column: the entries in order on the new tree (see the module's text)."""
    old, new = Overlay(old_tree), Overlay(new_tree)
    held: dict[str, str] = {}  # file -> the earlier entry whose changes to it are missing (conflict)
    missing: list[str] = []  # earlier entries whose changes are missing entirely
    labels = {"new_label": f"upstream {label}", "old_label": f"upstream {pin_label} (what the patch expects)"}
    cells = []
    for it in items:
        t0 = time.monotonic()
        name = it.entry.name
        if it.patch is None:
            cells.append(_unavailable(version, it.error))
            missing.append(name)
            continue
        patch = it.patch
        caveats = [f"computed without the changes of {m} (not computed)" for m in missing]
        touched = _paths(patch) | {moved.get(p, p) for p in _paths(patch)}
        caveats += [f"{held[p]} left {p} in conflict: this cell is computed without that entry's changes to it"
                    for p in sorted(touched & set(held))]
        on_pin = engine.apply_patch(patch, old)
        if on_pin.status != engine.FITS:
            cells.append(_unavailable(version, f"does not fit the pin (with the entries before it): {on_pin.status}; "
                                      "`make check` says why"))
            missing.append(name)
            continue
        res = engine.apply_patch(patch, new)
        simulated = False
        conflict_files: list[str] = []
        if res.status == engine.FITS:
            rows = _fit_rows(patch, res)
            moved_hunks = sum(r["status"] == merge.OFFSET for r in rows)
            status = OFFSET if moved_hunks else APPLIES
            new.update(res.changes)
        elif res.status == engine.APPLIED:
            rows, status = _fit_rows(patch, res), UPSTREAM
        else:
            simulated = True
            try:
                rows, changes, conflicted = rebase.rebase_patch(patch, old, new, moved,
                                                                {**labels, "patch_label": name})
            except Exception as e:  # noqa: BLE001 - a failure of the simulation is this cell's, and says so
                where = traceback.extract_tb(e.__traceback__)[-1]
                cells.append(_unavailable(version, f"the rebase simulation failed: {type(e).__name__}: {e} "
                                          f"(at {Path(where.filename).name}:{where.lineno})"))
                missing.append(name)
                old.update(on_pin.changes)
                continue
            if conflicted or any(r["status"] == merge.CONFLICT for r in rows):
                status = CONFLICTS
            elif all(r["status"] == merge.UPSTREAMED for r in rows):
                status = UPSTREAM
            else:
                status = REBASES
            # What is carried forward: the files placed without a conflict; a file with a
            # conflict (and its rename's other side) stays as upstream has it.
            left = set(conflicted)
            for fp in patch.files:
                group = {q for p in (fp.old_path, fp.new_path) if p for q in (p, moved.get(p, p))}
                group |= {p + ".rej" for p in group}
                if group & left:
                    left |= group
                    for p in group:
                        if not p.endswith(".rej"):
                            held.setdefault(p, name)
            new.update({p: c for p, c in changes.items() if p not in left})
            conflict_files = sorted({r["file"] for r in rows if r["status"] == merge.CONFLICT})
            if wheel:
                for r in rows:
                    if r.get("reason") == "upstream deleted this file":
                        r["reason"] = ("not in this release's wheel (the release has no sdist): upstream "
                                       "deleted or moved it, or the wheel leaves it out")
        old.update(on_pin.changes)
        counts = _counts(rows)
        order = [merge.CLEAN, merge.OFFSET, merge.FUZZY, merge.MERGED, merge.UPSTREAMED, merge.CONFLICT]
        counts = {k: counts[k] for k in sorted(counts, key=lambda k: order.index(k) if k in order else len(order))}
        n_conf = counts.get(merge.CONFLICT, 0)
        cell = {"version": version, "status": status, "counts": counts, "hunks": rows, "caveats": caveats,
                "cached": False, "simulated": simulated, "seconds": round(time.monotonic() - t0, 3)}
        if status == APPLIES:
            cell["text"], cell["summary"] = "applies", f"applies: {_n(len(rows), 'hunk')} at their lines"
        elif status == OFFSET:
            k = counts.get(merge.OFFSET, 0)
            cell["text"], cell["summary"] = "offset", f"applies at an offset: {k} of {_n(len(rows), 'hunk')} at other lines"
        elif status == UPSTREAM:
            cell["text"], cell["summary"] = "upstream", f"already upstream: {_n(len(rows), 'hunk')}, all there"
        elif status == REBASES:
            parts = ", ".join(f"{counts[s]} {s}" for s in (merge.CLEAN, merge.OFFSET, merge.FUZZY, merge.MERGED,
                                                           merge.UPSTREAMED) if counts.get(s))
            cell["text"], cell["summary"] = "rebase", f"would rebase cleanly: {parts}"
        else:
            cell["text"] = _n(n_conf, "conflict")
            cell["summary"] = (f"needs {_n(n_conf, 'conflict')} resolved in {_n(len(conflict_files), 'file')}; "
                               f"of {_n(len(rows), 'hunk')}: " + ", ".join(f"{v} {s}" for s, v in counts.items()))
            cell["conflicts"] = n_conf
            cell["conflict_files"] = conflict_files
        cells.append(cell)
    return cells


# ------------------------------------------------------------------ the run


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pin_column(up: Upstream, offline: bool) -> Column:
    col = Column(id=up.version, label=up.version, kind="pin", note="the pin")
    try:
        src = sources.source(up, offline=offline)
        col._src, col.commit, col.origin = src, src.commit, src.origin
    except (SourceUnavailable, StackError) as e:
        col.reason = e.message + (f" (what to do: {e.hint})" if e.hint else "")
    return col


def run_upstream(manifest: Manifest, name: str, groups: list[str], spec: ListSpec, cache: Cache, reader: PatchSource,
                 *, offline: bool, override: list[str] | None, rule: str, stats: dict, log=print) -> dict:
    up = manifest.upstream(name)
    entries = series.load(manifest, name).selected(groups)
    items = _read(entries, reader)
    pin = _pin_column(up, offline)
    cols = columns(up, spec, pin, cache, offline=offline, override=override, log=log)
    keys = _keys(items, pin.commit or "", rule)
    grid: list[list[dict]] = [[] for _ in items]  # rows x columns
    for col in cols:
        cells = _column(up, col, pin, items, keys, cache, stats, log)
        for i, c in enumerate(cells):
            grid[i].append(c)
            stats["unavailable"] += c["status"] == UNAVAILABLE
    rows = []
    for it, cells in zip(items, grid):
        row = {"name": it.entry.name, "group": it.entry.group, "external": it.entry.is_external,
               "sha256": it.sha256, "cells": cells}
        if it.patch is not None:
            row["files"], row["hunks"] = len(it.patch.files), it.patch.hunk_count
        if it.error:
            row["reason"] = it.error
        rows.append(row)
    return {"name": name, "pin": {"version": up.version, "commit": pin.commit, "origin": pin.origin,
                                  **({"reason": pin.reason} if pin.reason else {})},
            "versions": [c.to_json() for c in cols], "rows": rows}


def _column(up: Upstream, col: Column, pin: Column, items: list[Item], keys: list[str], cache: Cache,
            stats: dict, log) -> list[dict]:
    n = len(items)
    if pin.reason:
        return [_unavailable(col.id, f"the pinned source is not available: {pin.reason}") for _ in items]
    if col.reason:
        return [_unavailable(col.id, f"version not available: {col.reason}") for _ in items]
    assert col.commit is not None
    cached: list[dict | None] = [cache.get(up.name, keys[i], col.commit) if items[i].patch else None
                                 for i in range(n)]
    todo = [i for i in range(n) if items[i].patch is not None and cached[i] is None]
    cells: list[dict] = []
    if todo:
        last = max(todo)
        try:
            src = col.source()
            old_src = pin.source()
        except (SourceUnavailable, StackError) as e:
            col.reason = e.message
            return [_unavailable(col.id, f"version not available: {col.reason}") for _ in items]
        if src.tree.git_dir.resolve() == old_src.tree.git_dir.resolve():
            moved = rebase.renames(old_src.tree.git_dir, old_src.commit, src.commit)
        else:
            moved = {}
        log(f"{up.name}: {col.label}: computing {last + 1} of {n} entries ...")
        fresh = simulate(items[:last + 1], old_src.tree, src.tree, moved, version=col.id, label=col.label,
                         pin_label=up.version, wheel=col.wheel)
        if not moved and src.tree.git_dir.resolve() != old_src.tree.git_dir.resolve():
            for c in fresh:
                c["caveats"].append("the pin and this version are in different git repositories: renamed files "
                                    "are not followed")
        for i, c in enumerate(fresh):
            if c["status"] != UNAVAILABLE:
                cache.put(up.name, keys[i], col.commit, c)
                stats["computed"] += 1
                stats["simulated"] += c["simulated"]
        cells = fresh
    for i in range(len(cells), n):
        c = cached[i]
        if c is None:  # an unreadable entry after the last one computed
            c = _unavailable(col.id, items[i].error)
        else:
            c = {**c, "cached": True}
            stats["cached"] += 1
        cells.append(c)
    for c in cells:
        c["version"] = col.id
    return cells


def run(manifest: Manifest, names: list[str], groups: list[str], *, out_dir: Path, offline: bool = False,
        override: list[str] | None = None, log=print) -> dict:
    t0 = time.monotonic()
    specs = load_list(manifest)
    rule = rules()
    cache = Cache(out_dir / "cache", rule)
    cache.prune()
    reader = PatchSource(manifest, offline)
    stats = {"computed": 0, "cached": 0, "simulated": 0, "unavailable": 0}
    ups = []
    for n in names:
        ups.append(run_upstream(manifest, n, groups, specs[n], cache, reader, offline=offline, override=override,
                                rule=rule, stats=stats, log=log))
        cache.save()
    data = {"generated": _now(), "rules": rule, "groups": groups, "offline": offline,
            "statuses": STATUS_TEXT, "upstreams": ups,
            "cells": {"total": sum(len(r["cells"]) for u in ups for r in u["rows"]), **stats},
            "seconds": round(time.monotonic() - t0, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / "index.html").write_text(render_html(data))
    return data
