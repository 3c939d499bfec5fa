#!/usr/bin/env python3
"""`patchstack rebase` on slime's whole history of hand-ported patches, beside git's own 3-way.

    PYTHONPATH=build out/venv/bin/python bench/rebase_history.py            # every pair
    PYTHONPATH=build out/venv/bin/python bench/rebase_history.py --only megatron

slime's maintainers regenerated their SGLang patches (docker/patch/latest/sglang*.patch) by hand at
every SGLang move, and their Megatron patch at every Megatron move. Each move is one commit on
slime's history (the "port" commit): its first parent holds the old patches (P_old, written for the
old version), the commit itself the maintainers' port (P_new, for the new version). For each such
pair this benchmark

- builds the old and the new upstream tree: SGLang from PyPI (the sdist where there is one, else a
  wheel; the sha256 the package index gives is checked and recorded), Megatron from a git mirror;
- moves P_old (the series, in the Dockerfile's order) to the new tree with our tool
  (`rebase.rebase_patch`, the function `patchstack rebase` runs for each series entry, on the same
  trees, one entry after the other; an entry left with conflicts does not stop the next one);
- moves it with git's 3-way: P_old applied to the old tree and committed, then merged into the new
  tree with the old tree as the merge base (what `git cherry-pick` does; `git merge-tree`, diff3
  markers), entry after entry;
- applies P_new to the new tree (the maintainers' result, M) and compares, file by file.

Files. Every file P_old touches (at its new path where upstream renamed it), and every file our
tool moved a hunk into, is put in exactly one class, for our tool and for git separately:

- `not in the archive` (not judged): the file is outside what the PyPI archive holds (a wheel holds
  only python/sglang/; an sdist only python/), or it is missing from a wheel while the
  maintainers' P_new changes it there;
- `unfit` (not judged): P_old's part for the file does not apply (`git apply`, exact context) to
  the old archive, or P_new's part does not apply to the new archive: the archive is not the tree
  the maintainers patched (slime's v0.5.6 and v0.5.7 images used SGLang nightlies), so there is
  nothing sound to compare;
- `conflicted`: the result has conflict markers, or the tool reports a hunk of the file as a
  conflict (or writes a .rej), or git lists the file as conflicted;
- `identical`: the result's bytes equal M's (both absent counts as equal);
- `maintainer-differs`: not identical, but every change the result makes to upstream's new file N
  is one the maintainers made too, or one they dropped. The changes are the hunks of a line diff of
  N against the result (Python's difflib, no junk heuristic); hunks that add or remove blank
  lines only are ignored. A hunk with added lines A (blank lines at its edges stripped) sits, in
  the result, between two upstream lines: the nearest non-blank lines of N before and after it
  that the result keeps (N lines a and b). It is the maintainers' when A is a contiguous block of
  M whose nearest kept non-blank upstream lines (from the diff of N against M) are a line at or
  before a and a line at or after b: the block is where the maintainers put it, in the same gap
  between upstream lines, and whatever N lines the hunk removes are gone from M too. Lines are
  compared without trailing whitespace (the maintainers often stripped it in a port). A hunk that
  only removes lines is the maintainers' when M keeps none of those non-blank N lines. A hunk is
  one the maintainers dropped when none of its added non-blank lines that N does not have occurs
  anywhere in M and M adds no non-blank line of its own in the same gap (otherwise they rewrote
  it: `changed`, below); or, when it has no such line, it removes non-blank N lines and M keeps
  all of them. A Python file that fails these rules but whose code equals M's (the same
  `ast.unparse` once docstrings are set aside and the named keyword arguments of each call are
  put in name order: comments, docstrings, layout, quoting and keyword order may differ) is
  maintainer-differs too, marked `equivalent: code`;
- `wrong`: placed without a conflict, but neither identical nor maintainer-differs. The first
  change that fails the rule is printed, with why; its kind: `changed` (the maintainers have some of
  the block's lines that upstream lacks, not as this block: they changed that part of the patch in
  their port, which no tool could guess), `elsewhere` (the block is in M, in another gap),
  `duplicate` (the block is upstream's own lines, which M has once), `upstream-lines` (lines
  upstream has elsewhere, added here, which M has not here), `removal`, `file` (a file here that M
  has at another path, or not at all while upstream has it).

A file the patch creates that M does not have is maintainer-differs (dropped by the maintainers)
when M has no file of that name elsewhere among the files it adds, wrong when it does. A file the
patch creates that git moved with a folder upstream renamed (git's directory rename detection) is
judged, for git, where git put it.

Hunks. A hunk of P_old is `lost` when its change is in neither the output, nor a conflict region,
nor (for our tool) the report: our tool's hunks reported `conflict` or `upstreamed` are never
lost; for the others, and for every hunk git moved, the file right after the hunk's series entry
was moved (conflict regions included) is read. A hunk that adds lines is lost when a word (an
identifier) that its added lines bring, one that neither its other lines nor upstream's new file
have, is not in that file. A hunk that only removes lines is lost when upstream's new file has its
removed block and the file has it, outside conflict regions, as often. A hunk that brings no new
word (it only removes a word, say, or adds a line upstream already has elsewhere) cannot be shown
lost this way; those are counted apart (`lost_untold` in the raw data), not as lost.

Times: the moving step alone, trees already built (ours: every entry's `rebase_patch` and the
tool's own fit check; git: commit, `merge-tree`), on this machine.

Sources: SGLang archives are cached by the tool's source cache under out/rebase-history/cache
(PATCHSTACK_CACHE); slime and Megatron are read from the mirrors named by UPSTREAM_SLIME_GIT and
UPSTREAM_MEGATRON_GIT (local clones with their whole history; required). Commits git makes are written in scratch
repositories under out/rebase-history/work (which borrow the objects; the mirrors are not
written). Results: bench/results/rebase_history.jsonl (raw) and .txt (the printed tables).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "rebase-history"
os.environ.setdefault("PATCHSTACK_CACHE", str(OUT / "cache"))
sys.path.insert(0, str(ROOT / "build"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchstack import diff, engine, manifest, rebase, sources  # noqa: E402
from patchstack.errors import StackError  # noqa: E402
from patchstack.manifest import Sdist  # noqa: E402
from patchstack.trees import GitTree, Overlay, git  # noqa: E402
from rebase_upgrade import _contains  # noqa: E402

def _mirror(var: str, url: str) -> Path:
    """A local clone with the whole history (the pins alone are not enough: every port is read)."""
    got = os.environ.get(var)
    if not got or not Path(got).exists():
        sys.exit(f"rebase_history.py: set {var} to a local clone of {url} with its whole history "
                 f"(git clone --mirror {url}); nothing was run")
    return Path(got)


SLIME_GIT = _mirror("UPSTREAM_SLIME_GIT", "https://github.com/THUDM/slime.git")
MEGATRON_GIT = _mirror("UPSTREAM_MEGATRON_GIT", "https://github.com/NVIDIA/Megatron-LM.git")

# The series, in the order slime's Dockerfile applies them; an entry missing at a commit is skipped.
SERIES = {
    "sglang": ["sglang.patch", "sglang-top_p.patch", "sglang-release_hicache.patch",
               "sglang-pull_weights.patch", "sglang-deterministic.patch"],
    "megatron": ["megatron.patch", "megatron-sglang-aligned.patch"],
}

# Every upstream move in slime's history where the maintainers ported the patches, found from
# docker/Dockerfile (SGLANG_IMAGE_TAG, MEGATRON_COMMIT) and docker/README.md's version list.
# (upstream, old version, new version, the port commit in slime, note)
PAIRS = [
    ("sglang", "0.5.5.post1", "0.5.6", "df7e3877115cd03a765c5fe055549b508910b766",
     "slime #1051; slime's image: nightly-dev-20251208-5e2cda61, which docker/README.md calls v0.5.6"),
    ("sglang", "0.5.6", "0.5.7", "ae5cc574254d5d9397fbb380c799fd6f08de35e6",
     "slime #1324; nightly 20251208-5e2cda61 -> nightly-dev-20260103-24c91001 (README: v0.5.7 is a "
     "later nightly, dce8b060)"),
    ("sglang", "0.5.7", "0.5.9", "cde4ea2133f61e78046f03558b8a97f471fdce9e",
     "slime #1626; old image: nightly-dev-20260107-dce8b060 (README: v0.5.7)"),
    ("sglang", "0.5.9", "0.5.10.post1", "f588adda51a1d01c05e7f792b4252eb3a6bd659f", "slime #1874"),
    ("sglang", "0.5.10.post1", "0.5.12.post1", "567401268519c3a8a54529e53d0e9076756a8a6a", "slime #1945"),
    ("sglang", "0.5.12.post1", "0.5.13", "fec3da9b453bb72baacdbb9f0efcd2e2c97c3b40", "slime #2072"),
    ("sglang", "0.5.13", "0.5.15.post1", "aaf5c2092b01219fa0d5c2d323741d409086ca32", "slime #2228; four patches"),
    ("sglang", "0.5.15.post1", "0.5.17", "7ffc265de386c7ea0589a6b1d01ef158eb3e90b4",
     "slime branch `docker` (not merged to main); five patches"),
    ("megatron", "48406695c4efcf1026a7ed70bb390793918dd97b", "core_v0.14.0",
     "5fa8f711a7621d882d4fd4f43a6d76048bc88923", "slime #554"),
    ("megatron", "core_v0.14.0", "3714d81d418c9f1bca4594fc35f9e8289f652862",
     "652674e38a08167e8a292c41f9a25327e5b16b89", "slime #1153"),
    ("megatron", "3714d81d418c9f1bca4594fc35f9e8289f652862", "1dcf0dafa884ad52ffb243625717a3471643e087",
     "f3e7bd7f3091d3be05c20977eefb31a785d6221d", "slime #1867"),
]

WHO = "-c", "user.name=bench", "-c", "user.email=bench@localhost"
GIT_ENV = {"GIT_AUTHOR_DATE": "1000000000 +0000", "GIT_COMMITTER_DATE": "1000000000 +0000"}


# ------------------------------------------------------------------ sources


def slime_file(rev: str, path: str) -> bytes | None:
    p = git("show", f"{rev}:{path}", git_dir=SLIME_GIT, check=False)
    return p.stdout if p.returncode == 0 else None


def series_at(upstream: str, rev: str) -> list[tuple[str, bytes]]:
    out = []
    for name in SERIES[upstream]:
        text = slime_file(rev, f"docker/patch/latest/{name}")
        if text is not None:
            out.append((name, text))
    return out


def short(v: str) -> str:
    return v[:8] if re.fullmatch(r"[0-9a-f]{40}", v) else v


def sglang_tree(version: str, index: dict) -> dict:
    """The SGLang archive of a PyPI version, laid out under python/ in the tool's source cache."""
    if version not in index:
        url, sha = sources.resolve_pypi_sdist("sglang", version)
        index[version] = [url, sha]
        (OUT / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    url, sha = index[version]
    up = dataclasses.replace(manifest.load(ROOT).upstream("sglang"), version=f"v{version}", commit="",
                             sdist=Sdist(url, sha, "python", None))
    src = sources.sdist_source(up, url=url)
    name = url.rsplit("/", 1)[-1]
    return {"version": version, "archive": name, "kind": "wheel" if name.endswith(".whl") else "sdist",
            "sha256": sha, "url": url, "commit": src.commit, "git_dir": str(src.tree.git_dir)}


def megatron_tree(rev: str) -> dict:
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}", git_dir=MEGATRON_GIT).stdout.decode().strip()
    return {"version": short(rev), "kind": "git", "commit": commit, "git_dir": str(MEGATRON_GIT)}


def scratch(upstream: str, git_dir: Path) -> Path:
    """A bare repository for git's commits and merges, borrowing the source's objects."""
    repo = OUT / "work" / f"{upstream}.git"
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "-q", str(repo))
    (repo / "objects" / "info" / "alternates").write_text(str(Path(git_dir).resolve() / "objects") + "\n")
    return repo


# ------------------------------------------------------------------ patches


def sections(text: bytes) -> list[bytes]:
    """The per-file parts of a git-format patch."""
    starts = [m.start() for m in re.finditer(rb"(?m)^diff --git ", text)]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def section_paths(sec: bytes) -> tuple[str, str | None]:
    """(the path the patch reads, the path it writes, None for a deletion)."""
    fp = diff.parse("section", sec).files[0]
    return (fp.old_path or fp.new_path), fp.new_path  # type: ignore[return-value]


def in_archive(path: str, kinds: set[str]) -> bool:
    if "wheel" in kinds:
        return path.startswith("python/sglang/")
    if "sdist" in kinds:
        return path.startswith("python/")
    return True


def apply_series(repo: Path, base: str, entries: list[tuple[str, bytes]], skip=lambda p: False
                 ) -> tuple[list[str], list[list[bytes]], dict[str, str]]:
    """Apply each entry to `base` in an index, file part by file part (`git apply --cached`, exact
    context). Returns the tree after each entry, the parts that applied, and the files whose part
    did not apply (path -> git's message)."""
    index = repo / f"index.{os.getpid()}"
    env = {"GIT_INDEX_FILE": str(index)}
    git("read-tree", base, git_dir=repo, env=env)
    trees, kept, failed = [], [], {}
    try:
        for _, text in entries:
            ok = []
            for sec in sections(text):
                src, _ = section_paths(sec)
                if skip(src) or src in failed:
                    continue
                p = git("apply", "--cached", "--whitespace=nowarn", "-", git_dir=repo, env=env, input=sec, check=False)
                if p.returncode == 0:
                    ok.append(sec)
                else:
                    failed[src] = p.stderr.decode("utf-8", "replace").strip().splitlines()[0][:160]
            kept.append(ok)
            trees.append(git("write-tree", git_dir=repo, env=env).stdout.decode().strip())
    finally:
        index.unlink(missing_ok=True)
    return trees, kept, failed


# ------------------------------------------------------------------ the two ways


def run_ours(entries: list[tuple[str, bytes]], old: GitTree, new: GitTree, moved: dict[str, str]) -> dict:
    """Our tool: each entry by rebase_patch, as `patchstack rebase` does, conflicts left in place."""
    old_ov, new_ov = Overlay(old), Overlay(new)
    labels = {"new_label": "upstream new", "old_label": "upstream old (what the patch expects)"}
    upstreams = (GitTree(old.git_dir, old.commit), GitTree(new.git_dir, new.commit))
    res = {"rows": [], "after": [], "conflicted": set(), "error": None}
    t = time.perf_counter()
    for name, text in entries:
        patch = diff.parse(name, text)
        try:
            rows, changes, conflicted = rebase.rebase_patch(patch, old_ov, new_ov, moved,
                                                            {**labels, "patch_label": name}, upstreams)
        except StackError as e:
            res["error"] = f"{name}: {e}"
            break
        new_ov.update(changes)
        res["rows"].append(rows)
        res["conflicted"] |= set(conflicted)
        touched = {r["file"] for r in rows} | set(changes)
        res["after"].append({p: new_ov.read(p) for p in touched})
        old_ov.update(engine.apply_patch(patch, old_ov).changes)
    res["seconds"] = time.perf_counter() - t
    res["read"] = new_ov.read
    return res


def commit_tree(repo: Path, tree: str, parent: str) -> str:
    return git(*WHO, "commit-tree", tree, "-p", parent, "-m", "x", git_dir=repo, env=GIT_ENV).stdout.decode().strip()


def run_git(repo: Path, old_commit: str, new_commit: str, patched_trees: list[str]) -> dict:
    """git's 3-way, as `git cherry-pick` of each entry's commit onto the new upstream (markers kept)."""
    t = time.perf_counter()
    new_tree = git("rev-parse", f"{new_commit}^{{tree}}", git_dir=repo).stdout.decode().strip()
    head = commit_tree(repo, new_tree, old_commit)  # the new upstream, as a child of the old: merge base = old
    parent = old_commit
    trees, conflicted = [], set()
    for tree in patched_trees:
        pick = commit_tree(repo, tree, parent)
        p = git("-c", "merge.conflictStyle=diff3", "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                head, pick, git_dir=repo, check=False)
        if p.returncode not in (0, 1):
            raise StackError("git merge-tree failed: " + p.stderr.decode("utf-8", "replace"))
        out = p.stdout.decode("utf-8", "surrogateescape").split("\0")
        result = out[0].strip()
        conflicted |= {x for x in out[1:] if x}
        trees.append(result)
        head = commit_tree(repo, result, pick)
        parent = pick
    return {"trees": trees, "conflicted": conflicted, "seconds": time.perf_counter() - t}


# ------------------------------------------------------------------ judging


def regions(data: bytes | None) -> tuple[list[bytes], list[tuple[list[bytes], list[bytes], list[bytes]]]]:
    """The lines outside conflict regions, and each region's (upstream, base, patch) sides."""
    outside: list[bytes] = []
    found: list[tuple[list[bytes], list[bytes], list[bytes]]] = []
    state = None
    for line in diff.split_lines(data or b""):
        if line.startswith(b"<<<<<<< "):
            state = 0
            found.append(([], [], []))
        elif line.startswith(b"||||||| ") and state == 0:
            state = 1
        elif line.startswith(b"=======") and state in (0, 1):
            state = 2
        elif line.startswith(b">>>>>>> ") and state == 2:
            state = None
        elif state is None:
            outside.append(line)
        else:
            found[-1][state].append(line)
    return outside, found


def has_markers(data: bytes | None) -> bool:
    return bool(data) and bool(regions(data)[1])


def count(lines: list[bytes], block: list[bytes]) -> int:
    n = len(block)
    return sum(lines[i:i + n] == block for i in range(len(lines) - n + 1))


_TOKEN = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def hunk_kept(h: diff.Hunk, data: bytes | None, upstream: bytes | None) -> bool | None:
    """Whether the change of hunk h is in `data` (conflict regions included), None when that
    cannot be told; see the docstring."""
    if any(k == "+" for k, _ in h.lines):
        had = set(_TOKEN.findall(b"".join(t for k, t in h.lines if k != "+") + (upstream or b"")))
        own = set(_TOKEN.findall(b"".join(t for k, t in h.lines if k == "+"))) - had
        return own <= set(_TOKEN.findall(data or b"")) if own else None
    removed = [t for k, t in h.lines if k == "-"]
    if not removed or not any(x.strip() for x in removed):
        return None
    n = count(diff.split_lines(upstream or b""), removed)
    outside, found = regions(data)
    return n == 0 or count(outside, removed) < n or any(_contains(side, removed) for r in found for side in r)


def blank(lines: list[bytes]) -> bool:
    return all(not x.strip() for x in lines)


def judge(n_text: bytes, o_text: bytes, m_text: bytes) -> tuple[list[dict], list[dict]]:
    """The changes of the result to N (upstream's new file) that are neither the maintainers' nor
    dropped by them (each with its line in the result, its first added line, why, and a kind), and
    the changes let through only because the maintainers dropped them."""
    n, o, m = ([x.rstrip() + b"\n" for x in diff.split_lines(t)] for t in (n_text, o_text, m_text))
    kept_m: list[int | None] = [None] * len(m)  # for each line of M, the N line it keeps
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, n, m, autojunk=False).get_opcodes():
        if tag == "equal":
            for k in range(j2 - j1):
                kept_m[j1 + k] = i1 + k
    kept_n = {v for v in kept_m if v is not None}
    n_set, m_set = set(n), set(m)

    def anchors_m(p: int, q: int) -> tuple[int, int]:
        a = next((kept_m[k] for k in range(p - 1, -1, -1) if kept_m[k] is not None and n[kept_m[k]].strip()), -1)
        b = next((kept_m[k] for k in range(q, len(m)) if kept_m[k] is not None and n[kept_m[k]].strip()), len(n))
        return a, b  # type: ignore[return-value]

    def theirs_between(a: int, b: int) -> bool:
        """Whether M adds non-blank lines of its own between the last line it keeps at or before N
        line a and the first it keeps at or after N line b."""
        pa = max((j for j, k in enumerate(kept_m) if k is not None and k <= a), default=-1)
        pb = min((j for j, k in enumerate(kept_m) if k is not None and k >= b), default=len(m))
        return any(kept_m[j] is None and m[j].strip() for j in range(pa + 1, pb))

    bad_list: list[dict] = []
    dropped: list[dict] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, n, o, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        added, removed = o[j1:j2], n[i1:i2]
        if blank(added) and blank(removed):
            continue
        a = next((k for k in range(i1 - 1, -1, -1) if n[k].strip()), -1)
        b = next((k for k in range(i2, len(n)) if n[k].strip()), len(n))
        first = next((x for x in added if x.strip()), removed[0] if removed else b"")
        bad = {"line": j1 + 1, "text": first.strip().decode("utf-8", "replace")[:70]}
        if blank(added):
            gone = [k for k in range(i1, i2) if n[k].strip()]
            if all(k not in kept_n for k in gone):
                continue
            if all(k in kept_n for k in gone):
                dropped.append({**bad, "why": "removes upstream lines the maintainers keep"})
                continue
            bad_list.append({**bad, "kind": "removal", "why": "removes upstream lines of which the maintainers keep some"})
            continue
        lo, hi = 0, len(added)
        while not added[lo].strip():
            lo += 1
        while not added[hi - 1].strip():
            hi -= 1
        block = added[lo:hi]
        spots = [p for p in range(len(m) - len(block) + 1) if m[p:p + len(block)] == block]
        if any(am <= a and bm >= b for am, bm in (anchors_m(p, p + len(block)) for p in spots)):
            continue
        own = [x for x in block if x.strip() and x not in n_set]
        if own and not any(x in m_set for x in own):
            if not theirs_between(a, b):
                dropped.append({**bad, "why": "adds lines the maintainers have nowhere"})
                continue
            rewritten = True  # the maintainers have other lines in this gap: a rewrite
        else:
            rewritten = False
        gone = [k for k in range(i1, i2) if n[k].strip()]
        if not own and gone and all(k in kept_n for k in gone):
            dropped.append({**bad, "why": "replaces upstream lines the maintainers keep by upstream lines"})
            continue
        if spots and all(kept_m[k] is not None for k in range(spots[0], spots[0] + len(block))):
            kind, why = "duplicate", (f"adds lines that upstream's new file already has (its line {kept_m[spots[0]] + 1}); "  # type: ignore[operator]
                                      "the maintainers did not add them again")
        elif spots:
            am, _ = anchors_m(spots[0], spots[0] + len(block))
            there = f"line {am + 1} `{n[am].strip().decode('utf-8', 'replace')[:50]}`" if am >= 0 else "the start"
            here = f"line {a + 1} `{n[a].strip().decode('utf-8', 'replace')[:50]}`" if a >= 0 else "the start"
            kind, why = "elsewhere", (f"the maintainers have this block elsewhere: after upstream's {there}; "
                                      f"here after its {here}")
        elif rewritten:
            kind, why = "changed", (f"the maintainers have none of its {len(own)} lines that upstream lacks, and lines "
                                    "of their own in this place (they rewrote this part in their port)")
        elif own:
            kind, why = "changed", (f"the maintainers have {sum(x in m_set for x in own)} of its {len(own)} lines that "
                                    "upstream lacks, not as this block (they changed this part in their port)")
        else:
            kind, why = "upstream-lines", ("adds lines that upstream's new file has elsewhere; the maintainers do not "
                                           "have them here")
        if any(k in kept_n for k in range(i1, i2) if n[k].strip()):
            why += "; it also removes upstream lines that the maintainers keep"
        bad_list.append({**bad, "kind": kind, "why": why})
    return bad_list, dropped


def classify(n_text: bytes | None, o_text: bytes | None, m_text: bytes | None, m_added: set[str], path: str) -> dict:
    """identical, maintainer-differs or wrong, for a file placed without conflict (see the docstring)."""
    if o_text == m_text:
        return {"class": "identical"}
    name = path.rsplit("/", 1)[-1]
    if o_text is not None and m_text is None:
        if n_text is None:  # a file the patch creates, which the maintainers do not have here
            there = sorted(a for a in m_added if a.rsplit("/", 1)[-1] == name)
            if there:
                return {"class": "wrong", "line": 0, "text": "", "kind": "file",
                        "why": f"a new file the maintainers put at {there[0].removeprefix('python/')}"}
            return {"class": "maintainer-differs", "dropped": [{"line": 0, "text": "(new file)",
                                                                "why": "a new file the maintainers do not have"}]}
        return {"class": "wrong", "line": 0, "text": "", "kind": "file", "why": "the maintainers deleted this file"}
    if o_text is None:
        return {"class": "wrong", "line": 0, "text": "", "kind": "file", "why": "absent here, in the maintainers' result"}
    bad, dropped = judge(n_text or b"", o_text, m_text or b"")
    if bad and path.endswith(".py"):
        code = [canonical(t) for t in (n_text or b"", o_text, m_text or b"")]
        if None not in code:
            bad_code, dropped_code = judge(*code)  # type: ignore[arg-type]
            if not bad_code:
                return {"class": "maintainer-differs", "equivalent": "code", "differs_as_text": bad[0],
                        **({"dropped": dropped_code} if dropped_code else {})}
    if bad:
        return {"class": "wrong", **bad[0], "kinds": sorted({b["kind"] for b in bad}), "failures": len(bad)}
    return {"class": "maintainer-differs", **({"dropped": dropped} if dropped else {})}


class _Canon(ast.NodeTransformer):
    """Docstrings out; the named keyword arguments of a call in name order (a `**` argument keeps
    its place among them)."""

    def _body(self, node):
        self.generic_visit(node)
        b = node.body
        if b and isinstance(b[0], ast.Expr) and isinstance(b[0].value, ast.Constant) and isinstance(b[0].value.value, str):
            node.body = b[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _body

    def visit_Call(self, node):
        self.generic_visit(node)
        runs, cur = [], []
        for k in node.keywords:
            if k.arg is None:
                runs += sorted(cur, key=lambda x: x.arg) + [k]
                cur = []
            else:
                cur.append(k)
        node.keywords = runs + sorted(cur, key=lambda x: x.arg)
        return node


def canonical(text: bytes) -> bytes | None:
    """A Python file's code as one canonical text (ast.unparse, one statement per line): the same
    for two files that differ only in comments, docstrings, layout, quoting or the order of named
    keyword arguments; None when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return (ast.unparse(_Canon().visit(tree)) + "\n").encode()


# ------------------------------------------------------------------ one pair


def run_pair(upstream: str, old_v: str, new_v: str, port: str, note: str, index: dict, dump: Path | None = None) -> dict:
    rec: dict = {"upstream": upstream, "old": short(old_v), "new": short(new_v), "slime_port": port,
                 "slime_old": f"{port}^", "note": note}
    p_old, p_new = series_at(upstream, f"{port}^"), series_at(upstream, port)
    rec["patches_old"] = [n for n, _ in p_old]
    rec["patches_new"] = [n for n, _ in p_new]
    if not p_old or not p_new:
        rec["error"] = "no patch in slime's history at " + (f"{port[:9]}^" if not p_old else port[:9])
        return rec
    try:
        if upstream == "sglang":
            old_t, new_t = sglang_tree(old_v, index), sglang_tree(new_v, index)
        else:
            old_t, new_t = megatron_tree(old_v), megatron_tree(new_v)
    except (StackError, OSError) as e:
        rec["error"] = f"cannot build the trees: {e}"
        return rec
    rec["old_archive"], rec["new_archive"] = old_t, new_t
    src_repo = Path(old_t["git_dir"])
    repo = scratch(upstream, src_repo)
    old_c, new_c = old_t["commit"], new_t["commit"]
    old_tree, new_tree = GitTree(src_repo, old_c), GitTree(src_repo, new_c)
    kinds = {old_t["kind"], new_t["kind"]}

    outside = {}
    for _, text in p_old:
        for sec in sections(text):
            src, _ = section_paths(sec)
            if not in_archive(src, kinds):
                outside[src] = "outside what the " + ("wheel" if "wheel" in kinds else "sdist") + " holds"
    patched, kept, unfit_old = apply_series(repo, old_c, p_old, skip=lambda p: p in outside)
    m_trees, _, unfit_new = apply_series(repo, new_c, p_new, skip=lambda p: not in_archive(p, kinds))
    maint = GitTree(repo, commit_tree(repo, m_trees[-1], new_c))
    moved = rebase.renames(src_repo, old_c, new_c)
    entries = [(name, b"".join(secs)) for (name, _), secs in zip(p_old, kept)]
    entries = [(name, text) for name, text in entries if text]
    rec["hunks"] = sum(diff.parse(n, t).hunk_count for n, t in entries)
    rec["renamed_by_upstream"] = {s: d for s, d in moved.items()
                                  if any(s == section_paths(x)[0] for _, t in entries for x in sections(t))}

    ours = run_ours(entries, old_tree, new_tree, moved)
    gits = run_git(repo, old_c, new_c, [t for t, (_, secs) in zip(patched, zip(p_old, kept)) if secs])
    git_final = GitTree(repo, commit_tree(repo, gits["trees"][-1], new_c)) if gits["trees"] else new_tree
    rec["ours_error"] = ours["error"]

    # The files to judge: their path after the move, and where they came from.
    files: dict[str, str] = {}
    for _, text in entries:
        for sec in sections(text):
            src, dst = section_paths(sec)
            files[moved.get(dst or src, dst or src)] = src
    for rows in ours["rows"]:
        for r in rows:
            if r.get("moved_from"):
                files.setdefault(r["file"], r["moved_from"])
    rej = {f[:-4] for f in ours["conflicted"] if f.endswith(".rej")}

    excluded = {"not in the archive": {}, "unfit": {}}
    for f, why in outside.items():
        excluded["not in the archive"][f] = why
    for f, why in unfit_old.items():
        if "wheel" in kinds and old_tree.read(f) is None and f not in outside:
            excluded["not in the archive"][f] = "not in the old wheel"
        else:
            excluded["unfit"][f] = f"P_old does not apply to {short(old_v)}: {why}"
    judged = {}
    for f, src in sorted(files.items()):
        if src in unfit_new or f in unfit_new:
            excluded["unfit"][f] = f"P_new does not apply to {short(new_v)}: {unfit_new.get(src) or unfit_new.get(f)}"
            continue
        if "wheel" in kinds and new_tree.read(f) is None and old_tree.read(src) is not None and \
                any(section_paths(x)[0] == f for _, t in p_new for x in sections(t)):
            excluded["not in the archive"][f] = "in the maintainers' tree but not in the new wheel"
            continue
        judged[f] = src
    rec["excluded"] = excluded

    n_read, m_read = new_tree.read, maint.read

    def added(commit: str) -> set[str]:
        return set(git("diff", "--name-only", "-z", "--diff-filter=A", new_c, commit, git_dir=repo).stdout.decode(
            "utf-8", "surrogateescape").split("\0")) - {""}

    m_added = added(maint.commit)
    # A file the patch creates that git moved along with a folder upstream renamed (git's directory
    # rename detection): judged where git put it.
    git_added = added(git_final.commit) - set(judged)
    git_path = {}
    for f in judged:
        if git_final.read(f) is None and n_read(f) is None:
            there = [a for a in git_added if a.rsplit("/", 1)[-1] == f.rsplit("/", 1)[-1]]
            if len(there) == 1:
                git_path[f] = there[0]
    rec["git_moved_new_files"] = git_path
    result = {}
    for who, read, conflicted in (("ours", ours["read"], ours["conflicted"]), ("git", git_final.read, gits["conflicted"])):
        classes: dict[str, dict] = {}
        for f, src in judged.items():
            at = git_path.get(f, f) if who == "git" else f
            o = read(at)
            if who == "ours":
                row_conflict = any(r["status"] == "conflict" and r["file"] in (f, src)
                                   for rows in ours["rows"] for r in rows)
                is_conflict = row_conflict or f in conflicted or src in rej or has_markers(o)
            else:
                is_conflict = at in conflicted or src in conflicted or has_markers(o)
            if is_conflict:
                classes[f] = {"class": "conflicted"}
            else:
                classes[f] = classify(n_read(at), o, m_read(at), m_added, at)
            if at != f:
                classes[f]["at"] = at
        result[who] = classes
        if dump is not None:
            for f in judged:
                at = git_path.get(f, f) if who == "git" else f
                for part, data in (("new", n_read(at)), (who, read(at)), ("maintainers", m_read(at))):
                    if data is not None:
                        target = dump / f"{upstream}-{short(old_v)}-{short(new_v)}" / part / at
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data)

    # Lost hunks.
    lost: dict[str, list] = {"ours": [], "git": []}
    untold = {"ours": 0, "git": 0}
    for i, (name, text) in enumerate(entries):
        patch = diff.parse(name, text)
        rows = ours["rows"][i] if i < len(ours["rows"]) else None
        pairs, k = [], 0
        for fp in patch.files:
            n_rows = len(fp.hunks) or 1
            for j, h in enumerate(fp.hunks):
                pairs.append((fp, h, rows[k + j] if rows else None))
            k += n_rows
        git_tree = GitTree(repo, commit_tree(repo, gits["trees"][i], new_c))
        for fp, h, row in pairs:
            src = fp.old_path or fp.new_path
            dst = moved.get(fp.new_path or src, fp.new_path or src)
            if fp.is_delete:
                continue
            where = f"{name}: {dst}:{h.old_start}"
            if row is not None and row["status"] not in ("conflict", "upstreamed"):
                after = ours["after"][i].get(row["file"])
                kept_ = hunk_kept(h, after, n_read(row["file"]))
                if kept_ is False:
                    lost["ours"].append(f"{where} ({row['status']})")
                untold["ours"] += kept_ is None
            elif row is None and ours["error"]:
                lost["ours"].append(f"{where} (not reached: {ours['error'][:60]})")
            kept_ = hunk_kept(h, git_tree.read(git_path.get(dst, dst)), n_read(dst))
            if kept_ is False:
                lost["git"].append(where)
            untold["git"] += kept_ is None

    for who in ("ours", "git"):
        c = {k: 0 for k in ("wrong", "conflicted", "identical", "maintainer-differs")}
        for v in result[who].values():
            c[v["class"]] += 1
        rec[who] = {"counts": c, "lost": lost[who], "lost_untold": untold[who], "seconds": round((ours if who == "ours" else gits)["seconds"], 2),
                    "files": result[who]}
    rec["judged"] = len(judged)
    rec["ours"]["hunk_status"] = {}
    for rows in ours["rows"]:
        for r in rows:
            rec["ours"]["hunk_status"][r["status"]] = rec["ours"]["hunk_status"].get(r["status"], 0) + 1
    return rec


# ------------------------------------------------------------------ output


def table(recs: list[dict]) -> list[str]:
    head = (f"{'pair':<34}{'hunks':>6}{'files':>6}{'excl':>5}   "
            f"{'wrong':>5}{'confl':>6}{'ident':>6}{'mdiff':>6}{'lost':>5}{'s':>7}   "
            f"{'wrong':>5}{'confl':>6}{'ident':>6}{'mdiff':>6}{'lost':>5}{'s':>7}")
    out = [f"{'':<54}{'patchstack rebase':^41}   {'git 3-way (cherry-pick)':^41}", head, "-" * len(head)]
    tot = {w: {k: 0 for k in ("wrong", "conflicted", "identical", "maintainer-differs", "lost", "s")} for w in ("ours", "git")}
    tot_h = tot_f = tot_x = 0
    for r in recs:
        name = f"{r['upstream']} {r['old']} -> {r['new']}"
        if r.get("error"):
            out.append(f"{name:<34}  not run: {r['error']}")
            continue
        x = sum(len(v) for v in r["excluded"].values())
        line = f"{name:<34}{r['hunks']:>6}{r['judged']:>6}{x:>5}"
        tot_h, tot_f, tot_x = tot_h + r["hunks"], tot_f + r["judged"], tot_x + x
        for who in ("ours", "git"):
            c = r[who]["counts"]
            line += (f"   {c['wrong']:>5}{c['conflicted']:>6}{c['identical']:>6}{c['maintainer-differs']:>6}"
                     f"{len(r[who]['lost']):>5}{r[who]['seconds']:>7.1f}")
            for k in ("wrong", "conflicted", "identical", "maintainer-differs"):
                tot[who][k] += c[k]
            tot[who]["lost"] += len(r[who]["lost"])
            tot[who]["s"] += r[who]["seconds"]
        out.append(line)
    out.append("-" * len(head))
    line = f"{'total':<34}{tot_h:>6}{tot_f:>6}{tot_x:>5}"
    for who in ("ours", "git"):
        t = tot[who]
        line += (f"   {t['wrong']:>5}{t['conflicted']:>6}{t['identical']:>6}{t['maintainer-differs']:>6}"
                 f"{t['lost']:>5}{t['s']:>7.1f}")
    out.append(line)
    for who, label in (("ours", "patchstack"), ("git", "git")):
        done = [v for r in recs if not r.get("error") for v in r[who]["files"].values()]
        n = sum(1 for v in done if v.get("dropped"))
        wrong = [v for v in done if v["class"] == "wrong"]
        content = sum(1 for v in wrong if v.get("kinds") == ["changed"])
        out.append(f"{label}: of {len(wrong)} wrong files, {content} only where the maintainers changed the patch's "
                   f"own lines in their port, {len(wrong) - content} with a block placed elsewhere than theirs, a "
                   f"duplicate of upstream's lines, or a file at another path; {n} maintainer-differs files are so "
                   "only because the maintainers dropped a hunk placed there")
    return out


def details(recs: list[dict]) -> list[str]:
    out = []
    for r in recs:
        name = f"{r['upstream']} {r['old']} -> {r['new']}"
        out.append(f"\n{name}  (slime {r['slime_port'][:9]}^ -> {r['slime_port'][:9]}; {r['note']})")
        if r.get("error"):
            out.append(f"  not run: {r['error']}")
            continue
        for side in ("old_archive", "new_archive"):
            a = r[side]
            if a["kind"] == "git":
                out.append(f"  {side.split('_')[0]}: Megatron-LM {a['commit']} (git mirror)")
            else:
                out.append(f"  {side.split('_')[0]}: {a['archive']} sha256 {a['sha256']}")
        out.append(f"  series: old {', '.join(r['patches_old'])}; new {', '.join(r['patches_new'])}")
        if r.get("ours_error"):
            out.append(f"  patchstack stopped: {r['ours_error']}")
        for kind, files in r["excluded"].items():
            if files:
                out.append(f"  {kind} ({len(files)}): " + "; ".join(f"{f.removeprefix('python/')} ({why})"
                                                                   for f, why in sorted(files.items())))
        for who, label in (("ours", "patchstack"), ("git", "git")):
            wrong = {f: v for f, v in r[who]["files"].items() if v["class"] == "wrong"}
            out.append(f"  wrong, {label}: {len(wrong)}" + (":" if wrong else ""))
            for f, v in wrong.items():
                out.append(f"    {f.removeprefix('python/')}:{v['line']} `{v['text']}`: {v['why']}")
            drop = {f: v["dropped"] for f, v in r[who]["files"].items() if v.get("dropped")}
            if drop:
                out.append(f"  maintainer-differs only by hunks the maintainers dropped, {label}: " +
                           "; ".join(f"{f.removeprefix('python/')}:{d[0]['line']} `{d[0]['text'][:40]}`"
                                     + (f" (+{len(d) - 1})" if len(d) > 1 else "") for f, d in drop.items()))
            if r[who]["lost"]:
                out.append(f"  lost hunks, {label}: " + "; ".join(r[who]["lost"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["sglang", "megatron"], help="one upstream's pairs")
    ap.add_argument("--pair", help="pairs whose old version starts with this (e.g. 0.5.9)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/")
    ap.add_argument("--dump", action="store_true", help="write each judged file (upstream's new, ours, git's, "
                    "the maintainers') under out/rebase-history/dump/, to read the classes by eye")
    ap.add_argument("--qualified", metavar="RULE,RULE,...",
                    help="the rules allowed to place a hunk where git conflicts (rebase.QUALIFIED) for this run, "
                    "to measure a rule family (docs/measured.md); default: the tool's own set")
    args = ap.parse_args()
    if args.qualified is not None:
        rebase.QUALIFIED = frozenset(x for x in args.qualified.split(",") if x)
        print(f"rebase.QUALIFIED for this run: {', '.join(sorted(rebase.QUALIFIED))}", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    index_file = OUT / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    recs = []
    t0 = time.perf_counter()
    for pair in PAIRS:
        if (args.only and pair[0] != args.only) or (args.pair and not pair[1].startswith(args.pair)):
            continue
        t = time.perf_counter()
        rec = run_pair(*pair, index, dump=OUT / "dump" if args.dump else None)
        rec["wall_seconds"] = round(time.perf_counter() - t, 1)
        print(f"{rec['upstream']} {rec['old']} -> {rec['new']}: {rec['wall_seconds']} s"
              + (f" (not run: {rec['error']})" if rec.get("error") else ""), file=sys.stderr, flush=True)
        recs.append(rec)
    lines = [f"bench/rebase_history.py, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs; "
             f"{time.perf_counter() - t0:.0f} s in all",
             "files: judged per pair (excl: not in the archive or unfit, not judged); per way: wrong, conflicted, "
             "identical, maintainer-differs files; lost hunks; seconds of the moving step", ""]
    lines += table(recs) + details(recs)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        res = ROOT / "bench" / "results"
        (res / "rebase_history.txt").write_text(text)
        with open(res / "rebase_history.jsonl", "w") as fh:
            for r in recs:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
    not_run = [f"{r['upstream']} {r['old']} -> {r['new']}" for r in recs if r.get("error")]
    if not_run:
        print(f"NOT RUN: {'; '.join(not_run)} (the table above lacks them)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
