"""Place one hunk written against an old file into a new version of that file.

The old file is what the hunk was written against (where it fits exactly); the new file is the
upstream's new version of it. Each hunk gets one outcome, tried in this order:

- clean:      its old side is in the new file at the same line.
- offset:     its old side is in the new file at another line.
- upstreamed: its old side is gone and its new side is there: upstream made the change.
- fuzzy:      after dropping up to three context lines at its edges, the rest is there.
- merged:     a 3-way merge with the old file as base: every line the hunk removes, and the two
              neighbours of every line it adds, are unchanged by upstream; upstream's own changes
              around them are kept.
- conflict:   none of the above; the new file gets diff3-style conflict markers at that place.

A place found by matching lines must be the only one, or be where the old-to-new alignment of the
whole file puts the hunk: a context that matches in two places is a conflict, never a guess.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .diff import Hunk

CLEAN, OFFSET, FUZZY, MERGED, UPSTREAMED, CONFLICT = "clean", "offset", "fuzzy", "merged", "upstreamed", "conflict"
MAX_FUZZ = 3
_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class Placement:
    status: str
    start: int  # range of the new file the hunk replaces (0-based, end exclusive)
    end: int
    lines: list[bytes]  # what goes there
    reason: str = ""


def align(old: list[bytes], new: list[bytes]) -> list[int | None]:
    """For each old line, its index in the new file when upstream left it in place, else None.

    The alignment is git's histogram diff, which anchors on lines that occur once, so common
    lines (blank lines, a lone `return`) are not matched across a refactored region."""
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "old", Path(d) / "new"
        a.write_bytes(b"".join(old))
        b.write_bytes(b"".join(new))
        p = subprocess.run(["git", "diff", "--no-index", "--no-color", "--no-ext-diff", "--histogram", "-U0",
                            "--", str(a), str(b)], capture_output=True)
    if p.returncode not in (0, 1):
        return _align_difflib(old, new)
    m: list[int | None] = [None] * len(old)
    i = j = 0  # next unchanged old / new line
    for line in p.stdout.splitlines():
        h = _HUNK.match(line)
        if not h:
            continue
        o_start, o_cnt = int(h.group(1)), int(h.group(2) or 1)
        n_start, n_cnt = int(h.group(3)), int(h.group(4) or 1)
        o0 = o_start if o_cnt == 0 else o_start - 1  # first old line the hunk touches (0-based)
        n0 = n_start if n_cnt == 0 else n_start - 1
        while i < o0:
            m[i] = j
            i, j = i + 1, j + 1
        i, j = o0 + o_cnt, n0 + n_cnt
    while i < len(old):
        m[i] = j
        i, j = i + 1, j + 1
    return m


def _align_difflib(old: list[bytes], new: list[bytes]) -> list[int | None]:
    m: list[int | None] = [None] * len(old)
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, _j2 in sm.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                m[i1 + k] = j1 + k
    return m


def _occurrences(image: list[bytes], lines: list[bytes], *, start_only=False, end_only=False) -> list[int]:
    n, k = len(image), len(lines)
    if k == 0 or k > n:
        return []
    first = lines[0]
    spots = [0] if start_only else [n - k] if end_only else range(n - k + 1)
    return [i for i in spots if image[i] == first and image[i:i + k] == lines]


def _distinctive(lines: list[bytes]) -> int:
    return sum(1 for x in lines if len(x.strip()) >= 8)


def _pick(cands: list[int], expected: int | None, lines: list[bytes]) -> tuple[int | None, str]:
    """The one candidate that is not an accident, or None and why.

    A candidate counts where the alignment of the whole file puts the hunk (or near it), or when
    it is the only one and its lines are distinctive enough to be the same code moved elsewhere."""
    if not cands:
        return None, ""
    if expected is not None:
        if expected in cands:
            return expected, ""
        near = [c for c in cands if abs(c - expected) <= 2 * len(lines) + 10]
        if len(near) == 1:
            return near[0], ""
    if len(cands) == 1 and (expected is None or _distinctive(lines) >= 3):
        return cands[0], ""
    where = ", ".join(str(c + 1) for c in cands[:6])
    if len(cands) == 1:
        return None, f"its lines match only far from where upstream's own diff puts them (line {where}), and are too plain to trust"
    return None, f"its lines match in {len(cands)} places (lines {where}) and none is where upstream's own diff puts them"


def _mapped_start(m: list[int | None], p: int, n: int) -> int | None:
    """Where the old range [p, p+n) starts in the new file, judged by its first line upstream kept."""
    for k in range(n):
        if p + k < len(m) and m[p + k] is not None:
            return m[p + k] - k  # type: ignore[operator]
    return None


def place(h: Hunk, old: list[bytes], new: list[bytes], m: list[int | None], p: int) -> Placement:
    """Outcome for hunk `h`, which fits `old` at line index `p`, against `new` (alignment `m`)."""
    before, after = h.before, h.after
    n = len(before)
    expected = _mapped_start(m, p, n)
    start_only = h.old_start <= 1
    end_only = h.trailing == 0 and n > 0

    at, why = _pick(_occurrences(new, before, start_only=start_only, end_only=end_only), expected, before)
    if at is not None:
        return Placement(CLEAN if at == p else OFFSET, at, at + n, after)
    ambiguous = why

    changes = any(k != " " for k, _ in h.lines)
    if changes and after:
        done, _ = _pick(_occurrences(new, after, start_only=start_only, end_only=end_only), expected, after)
        if done is not None:
            return Placement(UPSTREAMED, done, done, [], "upstream already has the change")

    lead, trail = h.leading, h.trailing
    for fuzz in range(1, MAX_FUZZ + 1):
        lo, hi = min(fuzz, lead), min(fuzz, trail)
        if lo == 0 and hi == 0:
            break
        core_b, core_a = before[lo:n - hi], after[lo:len(after) - hi]
        if not core_b or all(not x.strip() for x in core_b):
            break
        exp = expected + lo if expected is not None else None
        at, why2 = _pick(_occurrences(new, core_b), exp, core_b)
        if at is not None:
            return Placement(FUZZY, at, at + len(core_b), core_a, f"{lo + hi} context lines differ")
        ambiguous = ambiguous or why2
        if lo == lead and hi == trail:
            break

    merged = _merge3(h, old, new, m, p)
    if isinstance(merged, Placement):
        return merged
    reason = ambiguous or merged
    return _conflict(h, new, m, p, reason)


def _shared(theirs: list[bytes], ours: list[bytes]) -> bool:
    """Whether upstream's added lines look like ours: half or more of ours that say something (not
    blank, not a lone bracket) are among them. Then keeping both would run the logic twice."""
    def meaningful(lines: list[bytes]) -> set[bytes]:
        return {x.strip() for x in lines if len(x.strip()) >= 4}
    mine = meaningful(ours)
    return bool(mine) and len(mine & meaningful(theirs)) * 2 >= len(mine)


def _blocks(h: Hunk, p: int) -> tuple[list[int], list[tuple[int, int, list[bytes]]]]:
    """The hunk's context lines (old indices) and its changes as (first old index, end, added lines)."""
    context: list[int] = []
    blocks: list[tuple[int, int, list[bytes]]] = []
    b, cur = p, None
    for kind, text in h.lines:
        if kind == " ":
            if cur is not None:
                blocks.append(cur)
                cur = None
            context.append(b)
            b += 1
            continue
        if cur is None:
            cur = (b, b, [])
        if kind == "-":
            b += 1
            cur = (cur[0], b, cur[2])
        else:
            cur[2].append(text)
    if cur is not None:
        blocks.append(cur)
    return context, blocks


def _merge3(h: Hunk, old: list[bytes], new: list[bytes], m: list[int | None], p: int) -> Placement | str:
    """Merge with the old file as base, or say why not (a string).

    Each change of the hunk (a run of removed and added lines) is placed on its own:
    - removed lines must be unchanged upstream (and still next to each other); if upstream
      replaced exactly those lines with exactly the lines we add, the change is already there;
    - added lines go between the same two old lines as before; where upstream changed one of the
      two, the other one anchors them, provided it and its neighbour are unchanged; where upstream
      added lines at that very place, ours that upstream already has are dropped and the rest
      follow upstream's."""

    def mapped(b: int) -> int | None:
        if b < 0:
            return -1  # before the first line: the start of the file never moves
        if b >= len(old):
            return len(new)  # past the last line: the end of the file
        return m[b]

    def solid(bs: list[int]) -> bool:
        js = [mapped(b) for b in bs]
        return all(j is not None for j in js) and all(y == x + 1 for x, y in zip(js, js[1:]))  # type: ignore[operator]

    context, blocks = _blocks(h, p)
    if not any(m[b] is not None for b in context if b < len(m)) and not any(
            m[b] is not None for b0, b1, _ in blocks for b in range(b0, b1)):
        return "upstream changed every line around the hunk"
    removals: list[int] = []
    inserts: dict[int, list[bytes]] = {}
    notes: set[str] = set()
    done = 0
    for b0, b1, added in blocks:
        js = [m[b] for b in range(b0, b1)]
        if b1 > b0 and any(j is None for j in js):
            lo, hi = mapped(b0 - 1), mapped(b1)
            if all(j is None for j in js) and lo is not None and hi is not None and new[lo + 1:hi] == added:
                done += 1
                notes.add("upstream already made some of its changes")
                continue
            return "upstream changed a line that the hunk removes"
        if any(y != x + 1 for x, y in zip(js, js[1:])):  # type: ignore[operator]
            return "upstream added lines inside the block the hunk removes"
        removals += js  # type: ignore[arg-type]
        if not added:
            continue
        bj, aj = mapped(b1 - 1), mapped(b1)  # added lines go after the last removed (or context) line
        if bj is not None and aj is not None:
            theirs = new[bj + 1:aj]  # what upstream added at this very place
            if any(theirs[k:k + len(added)] == added for k in range(len(theirs) - len(added) + 1)):
                done += 1
                notes.add("upstream already added some of its lines")
            elif _shared(theirs, added):
                # Upstream added something like ours here: both would run. A person must choose.
                return "upstream added lines like the hunk's at the same place"
            else:
                inserts.setdefault(aj, []).extend(added)
                if theirs:
                    notes.add("upstream added lines at the same place; ours follow them")
        elif aj is not None and solid([b1, b1 + 1]):
            inserts.setdefault(aj, []).extend(added)
            notes.add("upstream changed the lines before it; placed by the unchanged lines after")
        elif bj is not None and solid([b1 - 2, b1 - 1]):
            inserts.setdefault(bj + 1, []).extend(added)
            notes.add("upstream changed the lines after it; placed by the unchanged lines before")
        else:
            return "upstream changed the lines on both sides of where the hunk adds lines"
    if not removals and not inserts:
        if done:
            return Placement(UPSTREAMED, 0, 0, [], "upstream already has every change of the hunk")
        return "the hunk changes nothing"
    start = min(removals + list(inserts))
    end = max([r + 1 for r in removals] + list(inserts))
    gone = set(removals)
    lines: list[bytes] = []
    for j in range(start, end + 1):
        lines.extend(inserts.get(j, []))
        if j < end and j not in gone:
            lines.append(new[j])
    why = "; ".join(sorted(notes)) or "upstream changed lines around it; merged with the old file as base"
    return Placement(MERGED, start, end, lines, why)


def _conflict(h: Hunk, new: list[bytes], m: list[int | None], p: int, reason: str) -> Placement:
    n = len(h.before)
    mapped = [m[p + k] for k in range(n) if p + k < len(m) and m[p + k] is not None]
    if mapped:
        start, end = min(mapped), max(mapped) + 1  # type: ignore[type-var]
    else:
        from .engine import closest

        c = closest(new, h.before, p)
        if c is not None and c.matching:
            start = max(0, c.line - 1)
            end = min(len(new), start + n)
        else:
            start = end = min(p, len(new))
            reason = reason or "none of the hunk's lines is left in the file"
    return Placement(CONFLICT, start, end, [], reason or "upstream changed the lines the hunk changes")


def markers(theirs: list[bytes], before: list[bytes], after: list[bytes], *, new_label: str, old_label: str,
            patch_label: str) -> list[bytes]:
    """diff3-style conflict markers: upstream's new lines, what the patch expected, what it wanted."""

    def block(lines: list[bytes]) -> list[bytes]:
        return [x if x.endswith(b"\n") else x + b"\n" for x in lines]

    return ([f"<<<<<<< {new_label}\n".encode()] + block(theirs)
            + [f"||||||| {old_label}\n".encode()] + block(before)
            + [b"=======\n"] + block(after)
            + [f">>>>>>> {patch_label}\n".encode()])
