#!/usr/bin/env python3
"""Real upgrades of slime's patches, by `patchstack rebase` and by git's own 3-way (apply on the old
upstream, cherry-pick onto the new one), and, where reachable, against slime's own port:

    python3 bench/rebase_upgrade.py sglang     # v0.5.9 -> v0.5.10.post1, both from the PyPI sdists
    python3 bench/rebase_upgrade.py megatron   # 3714d81d -> 1dcf0daf (needs UPSTREAM_MEGATRON_GIT or the network)

slime's patch comes from the slime source (a mirror via UPSTREAM_SLIME_GIT, or the cache). Prints,
for each way, the files left with conflicts, the conflict regions (hunks), and the time; then, hunk
by hunk, where git and patchstack differ, with patchstack's status, the rule that placed the hunk
and its verification; then the checks (bars) on what patchstack placed:

- every Python file it placed without conflict compiles;
- none has an undefined name that neither the old patched file nor upstream's new file had
  (pyflakes, an independent checker, when installed; else Python's own compile and symtable);
- the seven hunks a hand-made port showed wrong in an earlier version of the tool are conflicts
  or equal the maintainers' port;
- conflicted files at most 10.

The repository's patches/ is not touched: the rebase runs on a copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build"))

from patchstack import diff, manifest, sources  # noqa: E402
from patchstack.errors import SourceUnavailable  # noqa: E402

# Each upgrade: where to go, slime's patch, and slime's own port of it (made by its maintainers:
# what a person did with the same job; compared when reachable).
UPGRADES = {
    "sglang": {
        "to": ["0.5.10.post1", "--sha256", "01f7adfe7cde85b238fb0e1bae4b31d494e19d1471cf35ff3c5489a02f9d2263"],
        "patch": "docker/patch/v0.5.9/sglang.patch",
        "port": ("f588adda51a1d01c05e7f792b4252eb3a6bd659f", "docker/patch/latest/sglang.patch"),  # slime #1874
        # Hunks (file, old line) that an earlier version of the tool placed wrongly, found by reading its
        # result against a hand-made port: each must now be a conflict or equal the port.
        "watch": [("srt/managers/tokenizer_manager.py", 1510), ("srt/models/deepseek_v2.py", 2735),
                  ("srt/disaggregation/prefill.py", 547), ("srt/models/deepseek_v2.py", 1154),
                  ("srt/disaggregation/prefill.py", 20), ("srt/speculative/eagle_draft_cuda_graph_runner.py", 341),
                  ("srt/disaggregation/mooncake/conn.py", 880)],
        "max_files": 10,
    },
    "megatron": {
        "to": ["1dcf0dafa884ad52ffb243625717a3471643e087"],
        "patch": "docker/patch/v0.5.9/megatron.patch",
        "port": ("f3e7bd7f3091d3be05c20977eefb31a785d6221d", "docker/patch/latest/megatron.patch"),  # slime #1867
    },
}


def git(*args, cwd=None, check=True):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=check, text=True)


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "sglang"
    if name not in UPGRADES:
        print(f"usage: {sys.argv[0]} [{' | '.join(UPGRADES)}]")
        return 2
    up = UPGRADES[name]
    m = manifest.load(ROOT)
    try:
        slime = sources.source(m.upstream("slime"))
        old = sources.source(m.upstream(name), prefer_sdist=name == "sglang")
    except SourceUnavailable as e:
        print(f"cannot run: {e}")
        return 1
    patch = slime.tree.read(up["patch"])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stack"
        shutil.copytree(ROOT / "patches", root / "patches")
        env = {**os.environ, "PATCHSTACK_ROOT": str(root), "PYTHONPATH": str(ROOT / "build")}
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "patchstack", "rebase", name, "--to", *up["to"]],
                           env=env, capture_output=True, text=True)
        ours_s = time.perf_counter() - t
        if p.returncode not in (0, 1):
            print(p.stdout, p.stderr)
            return 1
        report = json.loads((root / "out" / "rebase-report.json").read_text())
        hunks = [h for pt in report["patches"] for h in pt["hunks"]]
        counts: dict[str, int] = {}
        for h in hunks:
            counts[h["status"]] = counts.get(h["status"], 0) + 1
        conflicts = [h for h in hunks if h["status"] == "conflict"]
        ours_files = len({h["file"] for h in conflicts})
        renamed = {h["file"] for h in hunks if h.get("new_file")}
        new_commit = report["to_commit"]

        # git's 3-way, in a scratch clone of the cache repository that holds both sdist commits.
        work = Path(tmp) / "git3way"
        t = time.perf_counter()
        git("init", "-q", str(work))
        git("fetch", "-q", "--depth", "1", str(old.tree.git_dir), old.commit, new_commit, cwd=work)
        git("checkout", "-q", "--detach", old.commit, cwd=work)
        subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=work, input=patch, check=True)
        git("add", "-A", cwd=work)
        git("-c", "user.name=b", "-c", "user.email=b@example.invalid", "commit", "-qm", "slime", cwd=work)
        patched = git("rev-parse", "HEAD", cwd=work).stdout.strip()
        git("checkout", "-q", "--detach", new_commit, cwd=work)
        git("-c", "user.name=b", "-c", "user.email=b@example.invalid", "cherry-pick", patched, cwd=work, check=False)
        git_s = time.perf_counter() - t
        unmerged = [f for f in git("diff", "--name-only", "--diff-filter=U", cwd=work).stdout.split() if f]
        regions = sum((work / f).read_text(errors="replace").count("\n<<<<<<< ") +
                      (work / f).read_text(errors="replace").startswith("<<<<<<< ") for f in unmerged)

        # Hunk by hunk: what git did with each hunk of slime's patch, beside what we did.
        parsed = diff.parse(up["patch"], patch)
        pairs = []  # (FilePatch, Hunk | None, report row)
        rows = iter(hunks)
        for fp in parsed.files:
            for h in fp.hunks or [None]:
                pairs.append((fp, h, next(rows)))
        git_view = {f: _git_sides((work / f).read_bytes()) for f in unmerged}
        diffs = []
        for fp, h, row in pairs:
            g = "merged" if h is None else _git_state(h, git_view.get(row["file"]))
            ours_c = row["status"] == "conflict"
            if (g == "conflict") != ours_c:
                diffs.append((row, g))
        bars = _bars(root / "out" / "rebase" / name / "tree", work, patched, new_commit, hunks, pairs)

        # What slime's maintainers made of the same job, file by file, where the rebase left no conflict.
        port_commit, port_path = up["port"]
        port_tree = None
        port_line = "slime's own port: not reachable (needs slime " + port_commit[:9] + \
                    " via UPSTREAM_SLIME_GIT or the network), comparison skipped"
        try:
            port_src = sources.git_source(dataclasses.replace(m.upstream("slime"), commit=port_commit))
            human = Path(tmp) / "port"
            git("init", "-q", str(human))
            git("fetch", "-q", "--depth", "1", str(old.tree.git_dir), new_commit, cwd=human)
            git("checkout", "-q", "--detach", new_commit, cwd=human)
            subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=human,
                           input=port_src.tree.read(port_path), check=True)
            ours = root / "out" / "rebase" / name / "tree"
            placed = sorted({h["file"] for h in hunks} - {h["file"] for h in conflicts})

            def read(base: Path, f: str):
                return (base / f).read_bytes() if (base / f).exists() else None

            same = [f for f in placed if read(ours, f) == read(human, f)]
            port_line = (f"slime's own port ({port_commit[:9]}): of the {len(placed)} files the rebase placed "
                         f"without conflict, {len(same)} are byte-identical to the maintainers' result; "
                         f"differing: {', '.join(f.split('/srt/')[-1] for f in placed if f not in same) or 'none'}")
            port_tree = human
        except (SourceUnavailable, subprocess.CalledProcessError) as e:
            port_line += f" ({e})" if isinstance(e, SourceUnavailable) else ""
        watch = _watched(up.get("watch", []), pairs, root / "out" / "rebase" / name / "tree", port_tree)

    print(f"slime's {up['patch']}: {len(hunks)} hunks in {len({h['file'] for h in hunks})} files, "
          f"{name} {report['from']} -> {report['to']} ({report['to_origin']})")
    print(f"{'':<28}{'files with conflicts':>22}{'conflict regions':>18}{'seconds':>10}")
    print(f"{'git apply + cherry-pick':<28}{len(unmerged):>22}{regions:>18}{git_s:>10.1f}")
    print(f"{'patchstack rebase':<28}{ours_files:>22}{len(conflicts):>18}{ours_s:>10.1f}")
    print("patchstack, per status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"renamed files followed: {', '.join(sorted(renamed)) or 'none'}")
    print("files left with conflicts by patchstack: " + ", ".join(sorted({h['file'] for h in conflicts})))
    print(port_line)

    print(f"\nhunks where git and patchstack differ ({len(diffs)}):")
    print(f"  {'file':<58}{'old line':>9}  {'git':<9}{'patchstack':<11}{'rule':<25}reason / verification")
    for row, g in diffs:
        f = row["file"].split("/srt/")[-1]
        why = row.get("reason") if row["status"] == "conflict" else row.get("verified", "")
        if row.get("depends_on"):
            why += "; " + row["depends_on"]
        print(f"  {f:<58}{row['old_start']:>9}  {g:<9}{row['status']:<11}{row.get('rule', ''):<25}{why}")
    worse = [(row, g) for row, g in diffs if g == "conflict" and row["status"] != "upstreamed"]
    print(f"  git left in conflict, patchstack placed: {len(worse)} "
          f"(rules: {', '.join(sorted({r.get('rule', '?') for r, _ in worse})) or 'none'})")

    ok = True
    print("\nbars:")
    for text, passed in bars + watch:
        ok &= passed
        print(f"  [{'ok' if passed else 'FAIL'}] {text}")
    if "max_files" in up:
        passed = ours_files <= up["max_files"]
        ok &= passed
        print(f"  [{'ok' if passed else 'FAIL'}] conflicted files {ours_files} <= {up['max_files']} (git: {len(unmerged)})")
    print("\nconflicts left by patchstack:")
    for row in conflicts:
        print(f"  {row['file'].split('/srt/')[-1]}:{row['old_start']}: {row.get('reason', '')}")
    return 0 if ok else 1


def _git_sides(data: bytes) -> tuple[list[bytes], list[list[bytes]]]:
    """A file git left with conflict markers: its lines with upstream's side taken, and the
    patch's side of every conflict region."""
    kept: list[bytes] = []
    theirs: list[list[bytes]] = []
    state = None
    for line in diff.split_lines(data):
        if line.startswith(b"<<<<<<< "):
            state = "ours"
        elif line.startswith(b"||||||| ") and state:
            state = "base"
        elif line.startswith(b"=======") and state:
            state = "theirs"
            theirs.append([])
        elif line.startswith(b">>>>>>> ") and state:
            state = None
        elif state in (None, "ours"):
            kept.append(line)
        elif state == "theirs":
            theirs[-1].append(line)
    return kept, theirs


def _runs(h) -> list[list[bytes]]:
    out, cur = [], []
    for k, t in h.lines:
        if k == "+":
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    good = [r for r in out if any(len(re.sub(rb"\W", b"", x)) >= 4 for x in r)]
    return good or out


def _contains(lines: list[bytes], block: list[bytes]) -> bool:
    n = len(block)
    return any(lines[i:i + n] == block for i in range(len(lines) - n + 1))


def _git_state(h, sides) -> str:
    """What git's cherry-pick did with hunk h: merged, or conflict (its added lines sit on the
    patch's side of a conflict region). A hunk that only removes lines counts by its context."""
    if sides is None:
        return "merged"
    kept, theirs = sides
    runs = _runs(h) or [[t for k, t in h.lines if k != "+"]]
    if any(_contains(side, r) for r in runs for side in theirs) and not all(_contains(kept, r) for r in runs):
        return "conflict"
    return "merged"


def _bars(tree: Path, work: Path, patched: str, new_commit: str, hunks, pairs) -> list[tuple[str, bool]]:
    """Every Python file patchstack placed without conflict compiles, and has no undefined name
    that neither the old patched file nor upstream's new file had."""
    try:
        from pyflakes import api, messages, reporter
    except ImportError:
        api = None
    conflicted = {h["file"] for h in hunks if h["status"] == "conflict"}
    src_of = {row["file"]: fp.path for fp, _, row in pairs}
    files = sorted({h["file"] for h in hunks if h["status"] not in ("conflict", "upstreamed")} - conflicted)
    files = [f for f in files if f.endswith(".py") and (tree / f).exists()]

    def undefined(text: bytes, name: str) -> set[str] | None:
        if api is None:
            from patchstack import verify
            fa = verify.facts(text, name)
            return set(fa.undefined) if fa.compiles else None
        found: list = []

        class Collect(reporter.Reporter):
            def __init__(self):
                pass

            def flake(self, msg):
                found.append(msg)

            def syntaxError(self, *a):
                found.append(None)

            def unexpectedError(self, *a):
                found.append(None)

        api.check(text.decode("utf-8", "surrogateescape"), name, Collect())
        if None in found:
            return None
        return {m.message_args[0] for m in found if isinstance(m, messages.UndefinedName)}

    bad_compile, bad_names = [], []
    for f in files:
        data = (tree / f).read_bytes()
        try:
            compile(data, f, "exec", dont_inherit=True)
        except SyntaxError as e:
            bad_compile.append(f"{f} ({e.msg}, line {e.lineno})")
            continue
        now = undefined(data, f) or set()
        before = set()
        for commit, path in ((patched, src_of.get(f, f)), (new_commit, f)):
            old = git("show", f"{commit}:{path}", cwd=work, check=False)
            if old.returncode == 0:
                before |= undefined(old.stdout.encode("utf-8", "surrogateescape"), f) or set()
        if now - before:
            bad_names.append(f"{f} ({', '.join(sorted(now - before))})")
    checker = "pyflakes" if api is not None else "compile + symtable (pyflakes not installed)"
    return [(f"all {len(files)} Python files placed without conflict compile" +
             (f"; not: {'; '.join(bad_compile)}" if bad_compile else ""), not bad_compile),
            (f"none has a new undefined name ({checker})" + (f"; found: {'; '.join(bad_names)}" if bad_names else ""),
             not bad_names)]


def _watched(watch, pairs, tree: Path, port: Path | None) -> list[tuple[str, bool]]:
    out = []
    for suffix, line in watch:
        hit = [(fp, h, row) for fp, h, row in pairs if row["file"].endswith(suffix) and h and h.old_start == line]
        if not hit:
            out.append((f"{suffix}:{line}: no such hunk in the report", False))
            continue
        fp, h, row = hit[0]
        if row["status"] == "conflict":
            out.append((f"{suffix} hunk at {line}: conflict ({row.get('reason', '')[:90]})", True))
            continue
        same = port is not None and (tree / row["file"]).exists() and (port / row["file"]).exists() and \
            (tree / row["file"]).read_bytes() == (port / row["file"]).read_bytes()
        out.append((f"{suffix} hunk at {line}: {row['status']}, file " +
                    ("equal to the maintainers' port" if same else "not shown equal to the maintainers' port"), same))
    return out


if __name__ == "__main__":
    sys.exit(main())
