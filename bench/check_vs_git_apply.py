#!/usr/bin/env python3
"""Wall time of `patchstack check` (warm cache) next to a plain `git apply --check` loop.

Both validate the same patches against the same pinned trees. The git loop gets a checked-out
tree per upstream, prepared before the clock starts (git apply --check needs files on disk); the
tool reads only the files the patches touch, straight from the cache. Each figure is the median
of --runs runs.

    python3 bench/check_vs_git_apply.py [--runs 5] [--gemma4]

Needs the sources in the cache or reachable (UPSTREAM_<NAME>_GIT); series whose sources are not
are left out, and the script says which.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build"))

from patchstack import check, manifest, series, sources  # noqa: E402
from patchstack.errors import SourceUnavailable  # noqa: E402


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gemma4", action="store_true")
    args = ap.parse_args()
    m = manifest.load(ROOT)
    groups = m.select_groups(frozenset({"gemma4"}) if args.gemma4 else frozenset())
    reader = check.PatchSource(m)

    plan: list[tuple[str, sources.Source, list[bytes]]] = []
    for name in m.upstreams:
        entries = series.load(m, name).selected(groups)
        if not entries:
            print(f"{name}: no entries in {', '.join(groups)}: nothing to time")
            continue
        try:
            src = sources.source(m.upstream(name))
            texts = [reader.read(e) for e in entries]
        except SourceUnavailable as e:
            print(f"{name}: left out, source unreachable: {e.message}")
            continue
        plan.append((name, src, texts))
    if not plan:
        print("no series could be timed")
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for name, src, _ in plan:
            wt = Path(tmp) / name
            subprocess.run(["git", "--git-dir", str(src.tree.git_dir), "worktree", "add", "-q", "--detach",
                            str(wt), src.commit], check=True)
            trees[name] = wt

        def git_loop() -> None:
            for name, _, texts in plan:
                for t in texts:  # series of one patch each today; a longer series would need apply, not --check
                    subprocess.run(["git", "apply", "--check", "--whitespace=nowarn", "-"], cwd=trees[name],
                                   input=t, check=True)

        def git_loop_with_checkout() -> None:
            for name, src, texts in plan:
                wt = Path(tmp) / f"{name}-fresh"
                subprocess.run(["git", "--git-dir", str(src.tree.git_dir), "worktree", "add", "-q", "--detach",
                                str(wt), src.commit], check=True)
                for t in texts:
                    subprocess.run(["git", "apply", "--check", "--whitespace=nowarn", "-"], cwd=wt, input=t,
                                   check=True)
                subprocess.run(["git", "--git-dir", str(src.tree.git_dir), "worktree", "remove", "--force",
                                str(wt)], check=True)

        def tool_check() -> None:
            subprocess.run([sys.executable, "-m", "patchstack", "check", "--offline", *[n for n, _, _ in plan]]
                           + (["--gemma4"] if args.gemma4 else []),
                           cwd=ROOT, env={"PYTHONPATH": str(ROOT / "build"), **_env()},
                           check=True, capture_output=True)

        def tool_inproc() -> None:
            for name, _, _ in plan:
                rep = check.check_series(m, name, groups, offline=True)
                assert rep.status == "fits", rep.status

        def make_check() -> None:
            subprocess.run(["make", "-s", "check", "ARGS=--offline " + " ".join(n for n, _, _ in plan)]
                           + (["GEMMA4=1"] if args.gemma4 else []), cwd=ROOT, check=True, capture_output=True)

        make_check()  # creates out/venv the first time; not timed
        make_s = median_time(make_check, args.runs)
        git_s = median_time(git_loop, args.runs)
        git_co_s = median_time(git_loop_with_checkout, args.runs)
        cli_s = median_time(tool_check, args.runs)
        lib_s = median_time(tool_inproc, args.runs)
        for name, src, _ in plan:
            subprocess.run(["git", "--git-dir", str(src.tree.git_dir), "worktree", "remove", "--force",
                            str(trees[name])], check=True)

    patches = sum(len(t) for _, _, t in plan)
    hunks = sum(check.diff.parse("p", x).hunk_count for _, _, t in plan for x in t)
    print(f"series: {', '.join(n for n, _, _ in plan)}; {patches} patches, {hunks} hunks; "
          f"median of {args.runs} runs, warm cache")
    print(f"{'git apply --check loop (trees checked out beforehand)':<58} {git_s * 1000:8.0f} ms")
    print(f"{'git apply --check loop, checking the trees out each time':<58} {git_co_s * 1000:8.0f} ms")
    print(f"{'make check (the venv already made)':<58} {make_s * 1000:8.0f} ms")
    print(f"{'patchstack check (new process, reads from the cache)':<58} {cli_s * 1000:8.0f} ms")
    print(f"{'patchstack check_series (in process)':<58} {lib_s * 1000:8.0f} ms")
    return 0


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    sys.exit(main())
