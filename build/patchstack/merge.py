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
whole file puts the hunk: a context that matches in two places is a conflict, never a guess. A fuzzy
or merged place must also rest on a meaningful line: one that is not blank, not only brackets and
punctuation, and not common in the file. A merge is refused where upstream deleted or changed a
context line that binds a name the patch's added lines use (an import, a def, an assignment), and
where upstream added, at the same place, assignments to the names the hunk assigns.

What is placed is then verified file by file (verify.py, called by the rebase): a hunk that breaks
its file becomes a conflict there.
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
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
    rule: str = ""  # which rule placed it (each has a test built like it)
    depends: str = ""  # what makes it right only if a conflict is resolved one way


@dataclass
class FileContext:
    """What the placing rules need to know about the whole file, beyond one hunk."""

    uses: set[bytes] = field(default_factory=set)  # words of every line the file's hunks add
    bound: dict[int, set[bytes]] = field(default_factory=dict)  # old line index -> names it binds
    counts: Counter = field(default_factory=Counter)  # stripped line -> occurrences in the new file
    still_bound: set[bytes] = field(default_factory=set)  # names some line of the new file binds

    @classmethod
    def build(cls, added: list[bytes], old: list[bytes], new: list[bytes]) -> "FileContext":
        return cls(set(_WORDS.findall(b"".join(added))), bindings(old), Counter(x.strip() for x in new),
                   set().union(*bindings(new).values()))

    def meaningful(self, line: bytes) -> bool:
        s = line.strip()
        return bool(re.search(rb"[A-Za-z0-9_]{2}", s)) and len(s) >= 4 and self.counts.get(s, 0) <= 3


_WORDS = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNED = re.compile(rb"^\s*([A-Za-z_][\w.]*)\s*(?::[^=]*)?=(?!=)")


def bindings(lines: list[bytes]) -> dict[int, set[bytes]]:
    """The names each line binds (0-based line -> names): imports (per imported name, also in a
    parenthesised list), def and class, assignments to plain names. Empty for a file that is not
    Python."""
    try:
        tree = ast.parse(b"".join(lines))
    except (SyntaxError, ValueError, RecursionError):
        return {}
    out: dict[int, set[bytes]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                name = a.asname or a.name.split(".")[0]
                out.setdefault(getattr(a, "lineno", node.lineno) - 1, set()).add(name.encode())
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(node.lineno - 1, set()).add(node.name.encode())
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.lineno - 1, set()).add(t.id.encode())
    return out


def assigned(lines: list[bytes]) -> set[bytes]:
    """Names and dotted names the lines assign to (`self.x = ...`, `x: int = ...`); a keyword
    argument on its own line (`name=value,`) is not an assignment, nor is a local of a function
    the lines define."""
    out: set[bytes] = set()
    inside: int | None = None  # indentation of a def/class these lines open: its locals are its own
    for x in lines:
        if not x.strip():
            continue
        indent = len(x) - len(x.lstrip())
        if inside is not None and indent > inside:
            continue
        inside = None
        if re.match(rb"\s*(async\s+def|def|class)\s", x):
            inside = indent
            continue
        if (m := _ASSIGNED.match(x)) and not x.rstrip().endswith((b",", b"(")):
            out.add(m.group(1))
    return out


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


def _region(m: list[int | None], p: int, n: int, size: int) -> tuple[int, int] | None:
    """The new file's lines between where the hunk's first and last kept lines went, when upstream
    kept both its first and its last line (the context that bounds it)."""
    if n < 2 or p + n > len(m) or m[p] is None or m[p + n - 1] is None:
        return None
    s, e = m[p], m[p + n - 1] + 1  # type: ignore[operator]
    return (s, e) if 0 <= s < e <= size else None


def _mapped_start(m: list[int | None], p: int, n: int) -> int | None:
    """Where the old range [p, p+n) starts in the new file, judged by its first line upstream kept."""
    for k in range(n):
        if p + k < len(m) and m[p + k] is not None:
            return m[p + k] - k  # type: ignore[operator]
    return None


def place(h: Hunk, old: list[bytes], new: list[bytes], m: list[int | None], p: int,
          ctx: FileContext | None = None) -> Placement:
    """Outcome for hunk `h`, which fits `old` at line index `p`, against `new` (alignment `m`)."""
    ctx = ctx or FileContext.build(h.after, old, new)
    before, after = h.before, h.after
    n = len(before)
    expected = _mapped_start(m, p, n)
    start_only = h.old_start <= 1
    end_only = h.trailing == 0 and n > 0

    at, why = _pick(_occurrences(new, before, start_only=start_only, end_only=end_only), expected, before)
    if at is not None:
        return Placement(CLEAN if at == p else OFFSET, at, at + n, after, rule="exact" if at == p else "offset")
    ambiguous = why

    changes = any(k != " " for k, _ in h.lines)
    if changes and after:
        done, _ = _pick(_occurrences(new, after, start_only=start_only, end_only=end_only), expected, after)
        if done is not None:
            return Placement(UPSTREAMED, done, done, [], "upstream already has the change", rule="new-side-present")
        region = _region(m, p, n, len(new))
        if region is not None and _one_more_argument(after, new[region[0]:region[1]]):
            got = b"".join(new[region[0]:region[1]]).decode("utf-8", "replace")
            return Placement(UPSTREAMED, region[0], region[0], [],
                             f"upstream made this change with one more argument (upstream's lines {region[0] + 1}-"
                             f"{region[1]}: `{' '.join(got.split())[:160]}`)", rule="upstreamed-with-difference")

    lead, trail = h.leading, h.trailing
    weak = ""
    for fuzz in range(1, MAX_FUZZ + 1):
        lo, hi = min(fuzz, lead), min(fuzz, trail)
        if lo == 0 and hi == 0:
            break
        core_b, core_a = before[lo:n - hi], after[lo:len(after) - hi]
        if not core_b or all(not x.strip() for x in core_b):
            break
        if not any(ctx.meaningful(x) for x in core_b):
            weak = (f"with {lo + hi} context lines dropped, what is left to anchor it is only "
                    "blank lines, brackets or lines common in the file")
            break
        exp = expected + lo if expected is not None else None
        at, why2 = _pick(_occurrences(new, core_b), exp, core_b)
        if at is not None:
            return Placement(FUZZY, at, at + len(core_b), core_a, f"{lo + hi} context lines differ", rule="fuzzy")
        ambiguous = ambiguous or why2
        if lo == lead and hi == trail:
            break

    merged = _merge3(h, old, new, m, p, ctx)
    if isinstance(merged, Placement):
        return merged
    reason = ambiguous or (merged if merged not in ("upstream changed every line around the hunk",) else "") \
        or weak or merged
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


def _merge3(h: Hunk, old: list[bytes], new: list[bytes], m: list[int | None], p: int,
            ctx: FileContext) -> Placement | str:
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
    for b in context:
        if b < len(m) and m[b] is None:
            lost = ctx.bound.get(b, set()) & ctx.uses - ctx.still_bound
            if lost:
                names = ", ".join(sorted(x.decode() for x in lost))
                return (f"upstream deleted or changed the context line `{old[b].strip().decode(errors='replace')}`, "
                        f"which binds {names}, used by the patch's added lines")
    removals: list[int] = []
    inserts: dict[int, list[bytes]] = {}
    notes: set[str] = set()
    rules: set[str] = set()
    done_diff: list[str] = []
    done = 0
    for b0, b1, added in blocks:
        js = [m[b] for b in range(b0, b1)]
        if b1 > b0 and any(j is None for j in js):
            lo, hi = mapped(b0 - 1), mapped(b1)
            if all(j is None for j in js) and lo is not None and hi is not None and new[lo + 1:hi] == added:
                done += 1
                notes.add("upstream already made some of its changes")
                continue
            if all(j is None for j in js) and lo is not None and hi is not None and hi > lo + 1:
                kind, lines = resolve_both_changed(old[b0:b1], added, new[lo + 1:hi])
                if kind == "upstreamed-with-difference":
                    done_diff.append(b"".join(new[lo + 1:hi]).strip().decode("utf-8", "replace"))
                    continue
                if kind:
                    removals += range(lo + 1, hi)
                    inserts.setdefault(hi, []).extend(lines)
                    rules.add(kind)
                    notes.add(f"upstream changed the same lines: {kind}")
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
            elif both := assigned(theirs) & assigned(added):
                return ("upstream added assignments to the same names at the same place ("
                        + ", ".join(sorted(x.decode() for x in both)) + ")")
            else:
                inserts.setdefault(aj, []).extend(added)
                if theirs:
                    notes.add("upstream added lines at the same place; ours follow them")
                    rules.add("merge3-after-upstream's")
        elif aj is not None and solid([b1, b1 + 1]) and any(ctx.meaningful(old[b]) for b in (b1, b1 + 1)
                                                             if b < len(old)):
            inserts.setdefault(aj, []).extend(added)
            notes.add("upstream changed the lines before it; placed by the unchanged lines after")
            rules.add("merge3-anchor-after")
        elif bj is not None and solid([b1 - 2, b1 - 1]) and any(ctx.meaningful(old[b]) for b in (b1 - 2, b1 - 1)
                                                                 if b >= 0):
            inserts.setdefault(bj + 1, []).extend(added)
            notes.add("upstream changed the lines after it; placed by the unchanged lines before")
            rules.add("merge3-anchor-before")
        else:
            return ("upstream changed the lines on both sides of where the hunk adds lines (or the unchanged "
                    "side is only blank lines or brackets)")
    if done_diff:
        if removals or inserts or done:
            return ("upstream made part of this hunk's change with a difference, in its own way: the rest "
                    "may no longer fit what upstream did")
        return Placement(UPSTREAMED, 0, 0, [], "upstream made this change with one more argument: "
                         + "; ".join(f"`{x[:120]}`" for x in done_diff), rule="upstreamed-with-difference")
    if done and (removals or inserts):
        return ("upstream already made part of this hunk's change, in its own way: the rest may no longer "
                "fit what upstream did")
    if not removals and not inserts:
        if done:
            return Placement(UPSTREAMED, 0, 0, [], "upstream already has every change of the hunk", rule="merge3")
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
    return Placement(MERGED, start, end, lines, why, rule="+".join(sorted(rules)) or "merge3")


_TOKEN = re.compile(rb"[A-Za-z0-9_]+|\s+|[^A-Za-z0-9_\s]")


def resolve_both_changed(base: list[bytes], ours: list[bytes], theirs: list[bytes]) -> tuple[str, list[bytes]]:
    """Lines that the hunk and upstream both changed: resolve them when it is safe, else ("", []).

    - import-union: all three are one `from M import ...` of the same module: upstream's statement,
      with the names the hunk added (and without those it removed), in upstream's layout;
    - upstreamed-with-difference: upstream's lines are the hunk's with one more argument;
    - word-merge: the same number of lines on all sides, and on each line the two sides changed
      different words (not touching); both changes are kept."""
    union = _import_union(base, ours, theirs)
    if union is not None:
        return "import-union", union
    if _one_more_argument(ours, theirs):
        return "upstreamed-with-difference", []
    if len(base) == len(ours) == len(theirs) and len(base) <= 3:
        merged = [_merge_words(b, o, t) for b, o, t in zip(base, ours, theirs)]
        if all(x is not None for x in merged):
            return "word-merge", merged  # type: ignore[return-value]
    return "", []


def _merge_words(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    b, o, t = (_TOKEN.findall(x) for x in (base, ours, theirs))

    def edits(other: list[bytes]) -> list[tuple[int, int, list[bytes]]]:
        sm = difflib.SequenceMatcher(None, b, other, autojunk=False)
        return [(i1, i2, other[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]

    eo, et = edits(o), edits(t)
    if not eo or not et:
        return None  # one side did not change this line: not a case for a word merge
    for a1, a2, _ in eo:
        for c1, c2, _ in et:
            if a1 <= c2 and c1 <= a2:  # overlapping or touching: a person decides
                return None
    out = list(b)
    for i1, i2, rep in sorted(eo + et, key=lambda e: e[0], reverse=True):
        out[i1:i2] = rep
    return b"".join(out)


def _one_more_argument(ours: list[bytes], theirs: list[bytes]) -> bool:
    """Upstream's lines are ours with exactly one more argument in a call (whitespace aside)."""
    o = [x for x in _TOKEN.findall(b"".join(ours)) if x.strip()]
    t = [x for x in _TOKEN.findall(b"".join(theirs)) if x.strip()]
    if len(t) <= len(o):
        return False
    pre = 0
    while pre < len(o) and o[pre] == t[pre]:
        pre += 1
    suf = 0
    while suf < len(o) - pre and o[len(o) - 1 - suf] == t[len(t) - 1 - suf]:
        suf += 1
    if pre + suf != len(o):
        return False
    extra = t[pre:len(t) - suf]
    if extra and extra[0] == b",":
        arg = extra[1:]
        if arg and arg[-1] == b"," and len(arg) > 1:  # a trailing comma after the new last argument
            arg = arg[:-1]
    elif extra and extra[-1] == b",":
        arg = extra[:-1]
    else:
        return False
    depth = 0
    for tok in arg:  # one argument: brackets balanced, no top-level comma
        depth += tok in (b"(", b"[", b"{")
        depth -= tok in (b")", b"]", b"}")
        if depth < 0 or (depth == 0 and tok == b","):
            return False
    return bool(arg) and depth == 0


def _import_union(base: list[bytes], ours: list[bytes], theirs: list[bytes]) -> list[bytes] | None:
    def parse(lines: list[bytes]):
        text = b"".join(lines)
        indent = re.match(rb"[ \t]*", text).group(0)  # type: ignore[union-attr]
        try:
            tree = ast.parse(b"\n".join(x[len(indent):] if x.startswith(indent) else x
                                        for x in text.split(b"\n")))
        except (SyntaxError, ValueError):
            return None
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.ImportFrom):
            return None
        node = tree.body[0]
        names = [a.name + (f" as {a.asname}" if a.asname else "") for a in node.names]
        return (node.level, node.module), names, indent

    pb, po, pt = parse(base), parse(ours), parse(theirs)
    if not (pb and po and pt) or not (pb[0] == po[0] == pt[0]) or "*" in po[1] + pt[1]:
        return None
    added = [n for n in po[1] if n not in pb[1]]
    dropped = {n for n in pb[1] if n not in po[1]}
    if not added and not dropped:
        return None
    names = [n for n in pt[1] if n not in dropped] + [n for n in added if n not in pt[1]]
    indent = pt[2]
    head = theirs[0].split(b"import", 1)[0] + b"import"
    if len(theirs) == 1:
        line = head + b" " + b", ".join(n.encode() for n in names) + b"\n"
        if len(line) <= 89:
            return [line]
    inner = re.match(rb"[ \t]*", theirs[1]).group(0) if len(theirs) > 2 else indent + b"    "  # type: ignore[union-attr]
    return [head + b" (\n"] + [inner + n.encode() + b",\n" for n in names] + [indent + b")\n"]


@functools.lru_cache(maxsize=8)
def _parsed(data: bytes) -> ast.Module | None:
    try:
        return ast.parse(data)
    except (SyntaxError, ValueError, RecursionError):
        return None


WIDEN_MAX = 40  # lines a conflict region may grow by, to reach whole statements


def statement_span(lines: list[bytes], start: int, end: int) -> tuple[int, int]:
    """[start, end) grown to whole statements of one block, so that the region parses on its own
    (after dedenting): the smallest run of sibling statements that covers it. Unchanged for a
    file that does not parse, an empty region, or when it would grow by more than WIDEN_MAX."""
    if end <= start:
        return start, end
    tree = _parsed(b"".join(lines))
    if tree is None:
        return start, end

    def span(st) -> tuple[int, int]:
        first = min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", [])])
        return first - 1, st.end_lineno

    def bodies(st):
        for name in ("body", "orelse", "finalbody"):
            b = getattr(st, name, None)
            if isinstance(b, list) and b and isinstance(b[0], ast.stmt):
                yield b
        for extra in getattr(st, "handlers", []) + getattr(st, "cases", []):
            yield extra.body

    def widen(body) -> tuple[int, int]:
        over = [st for st in body if span(st)[0] < end and start < span(st)[1]]
        if not over:
            return start, end
        if len(over) == 1:
            for child in bodies(over[0]):
                if span(child[0])[0] <= start and end <= span(child[-1])[1]:
                    return widen(child)
        return min(start, span(over[0])[0]), max(end, span(over[-1])[1])

    a, b = widen(tree.body)
    if (b - a) - (end - start) > WIDEN_MAX:
        return start, end
    return a, b


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


def malformed_markers(lines: list[bytes]) -> str | None:
    """None when every conflict block is whole (<<<<<<<, |||||||, =======, >>>>>>> in that order,
    none nested, none left open); else where it breaks."""
    want = 0  # 0: outside; 1: after <<<<<<<; 2: after |||||||; 3: after =======
    seq = [b"<<<<<<< ", b"||||||| ", b"=======", b">>>>>>> "]
    for i, line in enumerate(lines, 1):
        kind = next((k for k, m in enumerate(seq) if line.startswith(m) and (k != 2 or line.rstrip(b"\r\n") == m)), None)
        if kind is None or (want == 0 and kind in (1, 2)):
            continue  # outside a block only <<<<<<< and >>>>>>> are ours (`=======` underlines a docstring)
        if kind != want:
            return f"line {i}: `{line[:20].decode('utf-8', 'replace').strip()}` where a block " + \
                ("is not open" if want == 0 else f"expects `{seq[want].decode().strip()}`")
        want = (want + 1) % 4
    return None if want == 0 else "a conflict block is left open at the end of the file"


def markers(theirs: list[bytes], before: list[bytes], after: list[bytes], *, new_label: str, old_label: str,
            patch_label: str) -> list[bytes]:
    """diff3-style conflict markers: upstream's new lines, what the patch expected, what it wanted."""

    def block(lines: list[bytes]) -> list[bytes]:
        return [x if x.endswith(b"\n") else x + b"\n" for x in lines]

    return ([f"<<<<<<< {new_label}\n".encode()] + block(theirs)
            + [f"||||||| {old_label}\n".encode()] + block(before)
            + [b"=======\n"] + block(after)
            + [f">>>>>>> {patch_label}\n".encode()])
