"""Apply a parsed patch to a tree in memory, with git apply's rules, and say why a hunk does not fit.

The rules are git apply's defaults: every context and removed line must match exactly (no fuzz);
a hunk may sit at another line than its header says (an offset), and the nearest such place wins;
a hunk starting at line 0 or 1 must match at the start of the file, one with no trailing context at
its end. A hunk that does not fit is checked for being already there (its new side matches), and
otherwise gets a diagnosis: the place in the file that looks most like what it expected, and the
lines that differ there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .diff import FilePatch, Hunk, Patch, split_lines
from .trees import REGULAR, Tree

# Statuses of a hunk, a file and a patch.
FITS, OFFSET, APPLIED, FAILS = "fits", "offset", "applied", "fails"


@dataclass
class Closest:
    line: int  # 1-based line in the target file where the best match starts
    offset: int  # relative to where the hunk header says it should be
    matching: int  # how many of the expected lines are there
    expected: int
    differ: list[tuple[int, str, str | None]]  # (file line, expected text, text found or None past EOF)


@dataclass
class HunkResult:
    index: int
    header: str
    patch_line: int
    status: str  # fits | offset | applied | fails
    offset: int = 0
    at: int | None = None  # 1-based line where it applied
    expected: list[str] = field(default_factory=list)  # the context and removed lines (for fails)
    closest: Closest | None = None
    reason: str = ""


@dataclass
class FileResult:
    path: str
    old_path: str | None
    patch_line: int
    status: str  # fits | applied | fails
    reason: str = ""
    hunks: list[HunkResult] = field(default_factory=list)


@dataclass
class PatchResult:
    name: str
    status: str  # fits | applied | fails
    files: list[FileResult]
    changes: dict[str, tuple[str, bytes] | None]  # path -> (mode, content) or None (deleted)

    @property
    def failed_hunks(self) -> list[tuple[FileResult, HunkResult | None]]:
        out: list[tuple[FileResult, HunkResult | None]] = []
        for f in self.files:
            if f.status != FAILS:
                continue
            bad = [h for h in f.hunks if h.status == FAILS]
            out.extend((f, h) for h in bad) if bad else out.append((f, None))
        return out


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def find(image: list[bytes], lines: list[bytes], pos: int, match_beginning: bool, match_end: bool) -> int | None:
    """Where `lines` occur in `image`, nearest to `pos` (forward first on a tie), honouring anchors."""
    n, m = len(image), len(lines)
    if m > n:
        return None

    def at(p: int) -> bool:
        if match_beginning and p != 0:
            return False
        if match_end and p + m != n:
            return False
        return image[p:p + m] == lines

    if match_beginning:
        return 0 if at(0) else None
    if match_end:
        return n - m if at(n - m) else None
    pos = min(max(pos, 0), n - m)
    if at(pos):
        return pos
    for d in range(1, n + 1):
        fwd, back = pos + d, pos - d
        if fwd > n - m and back < 0:
            return None
        if fwd <= n - m and at(fwd):
            return fwd
        if back >= 0 and at(back):
            return back
    return None


def closest(image: list[bytes], lines: list[bytes], pos: int) -> Closest | None:
    """The alignment of `lines` against `image` that shares the most lines, nearest to `pos` on a tie."""
    if not lines:
        return None
    where: dict[bytes, list[int]] = defaultdict(list)
    for j, line in enumerate(image):
        key = line.strip()
        if len(key) > 2:  # blank lines and lone brackets say nothing about place
            where[key].append(j)
    votes: dict[int, int] = defaultdict(int)
    for i, line in enumerate(lines):
        for j in where.get(line.strip(), ()):
            votes[j - i] += 1
    if not votes:
        return None
    best = max(votes, key=lambda p: (votes[p], -abs(p - pos)))
    differ: list[tuple[int, str, str | None]] = []
    matching = 0
    for i, want in enumerate(lines):
        j = best + i
        got = image[j] if 0 <= j < len(image) else None
        if got == want:
            matching += 1
        else:
            differ.append((j + 1, _text(want), None if got is None else _text(got)))
    return Closest(line=best + 1, offset=best - pos, matching=matching, expected=len(lines), differ=differ)


def apply_hunks(fp: FilePatch, content: bytes) -> tuple[list[HunkResult], bytes]:
    """Apply the hunks of one file to its content. Failed or already-present hunks change nothing."""
    image = split_lines(content)
    results: list[HunkResult] = []
    for h in fp.hunks:
        results.append(_apply_one(h, image))
    return results, b"".join(image)


def _apply_one(h: Hunk, image: list[bytes]) -> HunkResult:
    before, after = h.before, h.after
    match_beginning = h.old_start == 0 or h.old_start == 1
    match_end = h.trailing == 0 and bool(before)
    pos = h.new_start - 1 if h.new_start else 0
    hit = find(image, before, pos, match_beginning, match_end)
    base = HunkResult(h.index, h.header, h.patch_line, FITS)
    if hit is not None:
        image[hit:hit + len(before)] = after
        base.offset = hit - pos
        base.at = hit + 1
        base.status = OFFSET if base.offset else FITS
        return base
    # Not there as expected: is the change already in the file (its new side matches)?
    if after and any(k != " " for k, _ in h.lines):
        already = find(image, after, pos, match_beginning, h.trailing == 0)
        if already is not None:
            base.status, base.at, base.offset = APPLIED, already + 1, already - pos
            base.reason = "the change is already in the file"
            return base
    base.status = FAILS
    base.expected = [_text(x) for x in before]
    base.closest = closest(image, before, pos)
    if base.closest is None:
        base.reason = "none of the lines the hunk expects is in the file"
    elif base.closest.matching == 0:
        base.reason = "no place in the file matches any of the hunk's lines in order"
    else:
        c = base.closest
        base.reason = (
            f"closest match at line {c.line} (offset {c.offset:+d}): "
            f"{c.matching} of {c.expected} expected lines are there, {len(c.differ)} differ"
        )
    return base


def _file_status(hunks: list[HunkResult]) -> tuple[str, str]:
    states = {h.status for h in hunks}
    if FAILS in states:
        n = sum(h.status == FAILS for h in hunks)
        return FAILS, f"{n} of {len(hunks)} hunks do not fit"
    if states == {APPLIED}:
        return APPLIED, "already applied"
    if APPLIED in states:
        n = sum(h.status == APPLIED for h in hunks)
        return FAILS, f"partly applied: {n} of {len(hunks)} hunks are already there, the others are not"
    return FITS, ""


def apply_patch(patch: Patch, tree: Tree, *, applied_first: bool = False) -> PatchResult:
    """Apply every file of the patch against `tree` (not modified); return results and new contents.

    A patch that does not fit is tested the other way round, as `git apply -R --check` does: if the
    reversed patch fits as a whole, the patch is already applied (hunk by hunk, a new side can be
    hidden by a later hunk's change, so the per-hunk test alone can miss it). With `applied_first`
    (checking a tree that should be patched) that test comes first: a hunk whose context occurs
    twice could otherwise fit a second time at the other place."""
    res = _apply_forward(patch, tree)
    if (res.status == FAILS or applied_first) and _reverse_fits(patch, tree):
        for f in res.files:
            f.status, f.reason = APPLIED, "already applied (the reversed patch fits)"
            for h in f.hunks:
                h.status = APPLIED
        res.status, res.changes = APPLIED, {}
    return res


def _reverse_fits(patch: Patch, tree: Tree) -> bool:
    return unapply(patch, tree) is not None


def unapply(patch: Patch, tree: Tree) -> dict[str, tuple[str, bytes] | None] | None:
    """The changes that take an applied patch back off `tree` (its reversed patch, which must fit
    as a whole), or None when it does not come off."""
    back = Patch(patch.name, patch.header, [_reversed(fp) for fp in patch.files])
    res = _apply_forward(back, tree)
    return res.changes if res.status == FITS else None


def _apply_forward(patch: Patch, tree: Tree) -> PatchResult:
    files: list[FileResult] = []
    changes: dict[str, tuple[str, bytes] | None] = {}

    def current(path: str) -> tuple[str | None, bytes | None]:
        if path in changes:
            c = changes[path]
            return (None, None) if c is None else c
        return tree.mode(path), tree.read(path)

    for fp in patch.files:
        fr = FileResult(fp.path, fp.old_path, fp.patch_line, FITS)
        files.append(fr)
        if fp.is_new:
            mode, existing = current(fp.new_path)  # type: ignore[arg-type]
            fr.hunks, content = apply_hunks(fp, b"")
            if existing is not None:
                if existing == content:
                    fr.status, fr.reason = APPLIED, "the file it creates is already there with this content"
                    for h in fr.hunks:
                        h.status = APPLIED
                else:
                    fr.status, fr.reason = FAILS, "the patch creates this file, but it already exists"
                continue
            changes[fp.new_path] = (fp.new_mode or REGULAR, content)  # type: ignore[index]
            continue
        src_mode, src = current(fp.old_path)  # type: ignore[arg-type]
        if src is None:  # (a rename already made is recognised by the whole reversed patch)
            if fp.is_delete:
                fr.status, fr.reason = APPLIED, "the file it deletes is already gone"
                continue
            fr.status = FAILS
            fr.reason = f"the patch changes {fp.old_path}, which does not exist in the tree"
            continue
        fr.hunks, content = apply_hunks(fp, src)
        fr.status, fr.reason = _file_status(fr.hunks)
        if fr.status != FITS:
            continue
        if fp.is_delete:
            if content:
                fr.status = FAILS
                fr.reason = "the patch deletes this file, but it holds more than the patch expects"
                continue
            changes[fp.old_path] = None  # type: ignore[index]
            continue
        if fp.rename:
            if current(fp.new_path)[1] is not None:  # type: ignore[arg-type]
                fr.status, fr.reason = FAILS, f"the patch renames {fp.old_path} to {fp.new_path}, which already exists"
                continue
            changes[fp.old_path] = None  # type: ignore[index]
        changes[fp.new_path] = (fp.new_mode or src_mode or REGULAR, content)  # type: ignore[index]

    states = {f.status for f in files}
    if states == {APPLIED}:
        status = APPLIED
    elif FAILS in states or APPLIED in states:
        status = FAILS
        for f in files:
            if f.status == APPLIED:
                f.status = FAILS
                f.reason = f"partly applied patch: {f.reason}"
    else:
        status = FITS
    return PatchResult(patch.name, status, files, changes if status == FITS else {})


def _reversed(fp: FilePatch) -> FilePatch:
    """The same file change the other way round (to test whether it is already applied)."""
    flip = {"+": "-", "-": "+", " ": " "}
    hunks = [
        Hunk(h.index, h.new_start, h.new_count, h.old_start, h.old_count, h.section,
             [(flip[k], t) for k, t in h.lines], h.patch_line)
        for h in fp.hunks
    ]
    return FilePatch(fp.new_path, fp.old_path, fp.patch_line, old_mode=fp.new_mode, new_mode=fp.old_mode,
                     rename=fp.rename, copy=fp.copy, hunks=hunks)
