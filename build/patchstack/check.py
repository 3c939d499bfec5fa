"""Validate patch series against their pinned sources (or a target tree), in order, touching nothing."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from . import diff, engine, series, sources
from .errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_UNDECIDED, SourceUnavailable, StackError
from .manifest import Manifest
from .trees import EmptyTree, Overlay, Tree

# Entry statuses beyond the engine's fits / applied / fails:
SKIPPED = "skipped"  # a source it needs is unreachable: not checked
UNDECIDED = "undecided"  # did not fit, but an earlier entry was skipped, so the misfit may be that entry's


@dataclass
class EntryReport:
    group: str
    name: str
    external: bool
    status: str
    reason: str = ""
    sha256: str | None = None
    files: int = 0
    hunks: int = 0
    offsets: int = 0  # hunks that fit at another line than their header says
    result: engine.PatchResult | None = None


@dataclass
class SeriesReport:
    upstream: str
    version: str
    pin: str
    groups: list[str]
    source: str = ""  # where the tree came from
    status: str = ""  # fits | applied | fails | skipped | mixed
    reason: str = ""
    hint: str = ""
    entries: list[EntryReport] = field(default_factory=list)
    changes: dict = field(default_factory=dict, repr=False)  # the series' combined result, if all fit


class PatchSource:
    """Reads the bytes of series entries; external ones come from the pinned trees of other upstreams."""

    def __init__(self, manifest: Manifest, offline: bool = False):
        self.manifest = manifest
        self.offline = offline
        self._trees: dict[str, sources.Source | SourceUnavailable] = {}

    def upstream_source(self, name: str) -> sources.Source:
        if name not in self._trees:
            try:
                self._trees[name] = sources.git_source(self.manifest.upstream(name), offline=self.offline)
            except SourceUnavailable as e:
                self._trees[name] = e
        got = self._trees[name]
        if isinstance(got, SourceUnavailable):
            raise got
        return got

    def read_available(self, entries: list[series.Entry]) -> tuple[list[tuple[series.Entry, bytes | None]], dict[str, str]]:
        """Each entry's bytes, in order; an external entry whose upstream cannot be reached gives None,
        and its name -> why (a patch of ours that cannot be read is still an error)."""
        texts: list[tuple[series.Entry, bytes | None]] = []
        missing: dict[str, str] = {}
        for e in entries:
            try:
                texts.append((e, self.read(e)))
            except SourceUnavailable as err:
                if not e.is_external:
                    raise
                texts.append((e, None))
                missing[e.name] = err.message
        return texts, missing

    def read(self, entry: series.Entry) -> bytes:
        if not entry.is_external:
            return series.read_local(entry)
        src = self.upstream_source(entry.external_upstream)  # type: ignore[arg-type]
        data = src.tree.read(entry.external_path)  # type: ignore[arg-type]
        if data is None:
            raise StackError(
                f"{entry.where()}: {entry.external_path} is not in {entry.external_upstream} at "
                f"{src.commit[:12]}",
                hint="the path or the pin is wrong; fix the series entry",
            )
        return series.verify_external(entry, data)


def check_series(manifest: Manifest, upstream: str, groups: list[str], *, tree: Tree | None = None,
                 source_label: str | None = None, patches: PatchSource | None = None,
                 offline: bool = False, limit: int | None = None, expect: str = engine.FITS) -> SeriesReport:
    """Check the selected entries in order (only the first `limit` of them, if given). With
    expect='applied' each patch is first tested for being applied already (a patched tree)."""
    up = manifest.upstream(upstream)
    rep = SeriesReport(upstream, up.version, up.commit, groups)
    patches = patches or PatchSource(manifest, offline)
    try:
        entries = series.load(manifest, upstream).selected(groups)[:limit]
    except StackError as e:
        rep.status, rep.reason, rep.hint = engine.FAILS, e.message, e.hint or ""
        return rep
    if tree is None:
        try:
            src = sources.source(up, offline=offline)
        except StackError as e:  # unreachable, or reachable without the pinned commit
            rep.status, rep.reason, rep.hint = (SKIPPED if isinstance(e, SourceUnavailable) else engine.FAILS,
                                                e.message, e.hint or "")
            rep.entries = _check_without_source(entries, patches)
            if rep.status == SKIPPED and any(x.status == engine.FAILS for x in rep.entries):
                rep.status = engine.FAILS
            return rep
        tree, rep.source = src.tree, src.origin
    else:
        rep.source = source_label or tree.label
    state = Overlay(tree)
    if expect == engine.APPLIED:
        rep.entries = _check_applied(entries, patches, state)
        return _summarise(rep, state)
    skipped_before = False
    for ent in entries:
        er = EntryReport(ent.group, ent.name, ent.is_external, engine.FITS)
        rep.entries.append(er)
        patch = _read_and_parse(ent, patches, er)
        if patch is None:
            skipped_before = skipped_before or er.status == SKIPPED
            continue
        res = engine.apply_patch(patch, state, applied_first=expect == engine.APPLIED)
        er.result, er.status = res, res.status
        er.offsets = sum(h.status == engine.OFFSET for f in res.files for h in f.hunks)
        if res.status == engine.FITS:
            state.update(res.changes)
        elif res.status == engine.FAILS and skipped_before:
            er.status = UNDECIDED
            er.reason = "does not fit, but an entry before it was skipped: it may need that entry's changes"
    return _summarise(rep, state)


def _check_applied(entries, patches: PatchSource, state: Overlay) -> list[EntryReport]:
    """A patched tree, newest entry first: each patch found applied is taken back off (on the
    overlay, not the tree) before the one under it is tested, so a patch whose lines a later one
    changed is tested against the tree as it left it. An entry that is not applied leaves the
    state as it is (the ones under it never saw its changes)."""
    reports: list[EntryReport] = []
    skipped_after = False
    for ent in reversed(entries):
        er = EntryReport(ent.group, ent.name, ent.is_external, engine.FITS)
        reports.append(er)
        patch = _read_and_parse(ent, patches, er)
        if patch is None:
            skipped_after = skipped_after or er.status == SKIPPED
            continue
        res = engine.apply_patch(patch, state, applied_first=True)
        er.result, er.status = res, res.status
        er.offsets = sum(h.status == engine.OFFSET for f in res.files for h in f.hunks)
        if res.status == engine.APPLIED:
            back = engine.unapply(patch, state)
            if back is not None:
                state.update(back)
        elif res.status == engine.FAILS and skipped_after:
            er.status = UNDECIDED
            er.reason = "not applied as it stands, but an entry after it was skipped: that entry may have changed its lines"
    reports.reverse()
    return reports


def _summarise(rep: SeriesReport, state: Overlay) -> SeriesReport:
    statuses = {e.status for e in rep.entries}
    if engine.FAILS in statuses:
        rep.status = engine.FAILS
    elif statuses <= {engine.FITS}:
        rep.status = engine.FITS
    elif statuses == {engine.APPLIED}:
        rep.status = engine.APPLIED
    elif statuses & {SKIPPED, UNDECIDED}:
        rep.status = SKIPPED
        rep.reason = "some entries could not be checked"
    else:
        rep.status = "mixed"
        rep.reason = "some patches are applied and others are not: the tree is half patched"
    if rep.status == engine.FITS:
        rep.changes = state.changes
    return rep


def _read_and_parse(ent, patches: PatchSource, er: EntryReport):
    """The entry's patch, parsed, with its sha256, files and hunks noted; None (the report says
    why: SKIPPED for an unreadable external patch, FAILS for a broken one) where it cannot be had."""
    try:
        data = patches.read(ent)
        er.sha256 = hashlib.sha256(data).hexdigest()
        patch = diff.parse(ent.name, data)
    except SourceUnavailable as e:
        er.status, er.reason = SKIPPED, e.message
        return None
    except StackError as e:
        er.status, er.reason = engine.FAILS, str(e)
        return None
    er.files, er.hunks = len(patch.files), patch.hunk_count
    return patch


def _check_without_source(entries, patches: PatchSource) -> list[EntryReport]:
    """What can be checked with the upstream's source out of reach: every patch is read (external
    ones verified by sha256, where their tree is reachable) and parsed, and a patch that only
    creates files is applied in full, on top of the files earlier such patches created. A patch
    that changes an upstream file is skipped, saying so."""
    out, state, blocked = [], Overlay(EmptyTree()), False
    for ent in entries:
        er = EntryReport(ent.group, ent.name, ent.is_external, SKIPPED)
        out.append(er)
        patch = _read_and_parse(ent, patches, er)
        if patch is None:
            if er.status == SKIPPED:
                er.reason, blocked = f"patch unreadable: {er.reason}", True
            continue
        changes = [fp.path for fp in patch.files if not fp.is_new]
        if changes or blocked:
            er.reason = (f"parsed ({er.files} files, {er.hunks} hunks); needs the upstream's own "
                         f"{changes[0]}" + (f" and {len(changes) - 1} more files" if len(changes) > 1 else "")
                         if changes else "parsed; an entry before it could not be read")
            blocked = blocked or bool(changes)
            continue
        res = engine.apply_patch(patch, state)
        er.result, er.status = res, res.status
        er.reason = "creates files only: checked without the source"
        if res.status == engine.FITS:
            state.update(res.changes)
    return out


def exit_code(reports: list[SeriesReport], *, expect: str = engine.FITS, allow_incomplete: bool = False) -> int:
    """1 (EXIT_FAILED): something does not fit; else 4 (EXIT_UNDECIDED): a misfit after a skipped
    entry; else 3 (EXIT_INCOMPLETE): checks were skipped, unless `allow_incomplete`; else 0."""
    bad = skipped = undecided = False
    for r in reports:
        if r.status == SKIPPED:
            skipped = True
        for e in r.entries:
            if e.status == UNDECIDED:
                undecided = True
            elif e.status == SKIPPED:
                skipped = True
            elif e.status != expect:
                bad = True
        if r.status in (engine.FAILS, "mixed") and (not r.entries or not r.source):
            bad = True  # the series itself failed (e.g. a mirror without the pinned commit)
    if bad:
        return EXIT_FAILED
    if undecided:
        return EXIT_UNDECIDED
    return EXIT_INCOMPLETE if (skipped and not allow_incomplete) else EXIT_OK


# ---------------------------------------------------------------- reports


def to_json(reports: list[SeriesReport]) -> list[dict]:
    out = []
    for r in reports:
        d = asdict(r)
        d.pop("changes", None)
        for e in d["entries"]:
            res = e.pop("result")
            e["files_detail"] = [
                {k: v for k, v in f.items() if k != "hunks"} | {"hunks": [
                    {k: v for k, v in h.items() if v not in (None, [], "")} for h in f["hunks"]
                    if h["status"] not in (engine.FITS,)
                ]}
                for f in (res or {}).get("files", [])
                if f["status"] != engine.FITS or any(h["status"] != engine.FITS for h in f["hunks"])
            ]
        out.append(d)
    return out


def format_human(reports: list[SeriesReport], *, expect: str = engine.FITS) -> str:
    lines: list[str] = []
    mark = {engine.FITS: "fits", engine.APPLIED: "applied", engine.FAILS: "FAILS", SKIPPED: "SKIPPED",
            UNDECIDED: "UNDECIDED"}
    for r in reports:
        head = f"{r.upstream} {r.version} (pin {r.pin[:12]}), groups: {', '.join(r.groups)}"
        if r.source:
            head += f"\n  source: {r.source}"
        lines.append(head)
        series_level = not r.entries or not r.source  # the whole series failed or was skipped
        if r.reason and series_level:
            lines.append(f"  {mark.get(r.status, r.status)}: {r.reason}")
            if r.hint:
                lines.append(f"  what to do: {r.hint}")
        if not r.entries and r.status != engine.FAILS:
            lines.append("  (no entries in the selected groups)")
        for e in r.entries:
            label = mark.get(e.status, e.status)
            if e.status == engine.FITS and expect == engine.APPLIED:
                label = "NOT APPLIED"
            if e.status == engine.APPLIED and expect == engine.FITS:
                label = "ALREADY APPLIED"
            what = f"[{e.group}] {e.name}" + (" (external, sha256 verified)" if e.external and e.sha256 else "")
            detail = f"{e.files} files, {e.hunks} hunks" if e.result else ""
            if e.offsets:
                detail += f", {e.offsets} at an offset"
            lines.append(f"  {label:<9} {what}" + (f": {detail}" if detail else ""))
            if e.reason and (e.status != engine.FITS or e.reason.startswith("creates files only")):
                lines.append(f"            {e.reason}")
            if e.result and e.status in (engine.FAILS, UNDECIDED):
                lines += format_failures(e.result)
        lines.append("")
    return "\n".join(lines)


def format_failures(res: engine.PatchResult) -> list[str]:
    out: list[str] = []
    for f, h in res.failed_hunks:
        if h is None:
            out.append(f"    {f.path} (patch line {f.patch_line}): {f.reason}")
            continue
        out.append(f"    {f.path}: hunk {h.index} of {len(f.hunks)} {h.header} (patch line {h.patch_line})")
        out.append(f"      {h.reason}")
        out.append("      expected (context and removed lines):")
        out += [f"        | {t}" for t in h.expected[:12]]
        if len(h.expected) > 12:
            out.append(f"        ... and {len(h.expected) - 12} more")
        c = h.closest
        if c is None or c.matching == 0:
            continue
        for line, want, got in c.differ[:12]:
            out.append(f"      line {line}: expected | {want}")
            out.append(f"      {' ' * len(str(line))}       found    | {'(end of file)' if got is None else got}")
        if len(c.differ) > 12:
            out.append(f"      ... and {len(c.differ) - 12} more differing lines")
    return out
