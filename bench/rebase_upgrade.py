#!/usr/bin/env python3
"""Real upgrades of slime's patches, by `patchstack rebase` and by git's own 3-way (apply on the old
upstream, cherry-pick onto the new one), and, where reachable, against slime's own port:

    python3 bench/rebase_upgrade.py sglang     # v0.5.9 -> v0.5.10.post1, both from the PyPI sdists
    python3 bench/rebase_upgrade.py megatron   # 3714d81d -> 1dcf0daf (needs UPSTREAM_MEGATRON_GIT or the network)

slime's patch comes from the slime source (a mirror via UPSTREAM_SLIME_GIT, or the cache). Prints,
for each way, the files left with conflicts, the conflict regions (hunks), and the time. The
repository's patches/ is not touched: the rebase runs on a copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build"))

from patchstack import manifest, sources  # noqa: E402
from patchstack.errors import SourceUnavailable  # noqa: E402

# Each upgrade: where to go, slime's patch, and slime's own port of it (made by its maintainers:
# what a person did with the same job; compared when reachable).
UPGRADES = {
    "sglang": {
        "to": ["0.5.10.post1", "--sha256", "01f7adfe7cde85b238fb0e1bae4b31d494e19d1471cf35ff3c5489a02f9d2263"],
        "patch": "docker/patch/v0.5.9/sglang.patch",
        "port": ("f588adda51a1d01c05e7f792b4252eb3a6bd659f", "docker/patch/latest/sglang.patch"),  # slime #1874
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

        # What slime's maintainers made of the same job, file by file, where the rebase left no conflict.
        port_commit, port_path = up["port"]
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
        except (SourceUnavailable, subprocess.CalledProcessError) as e:
            port_line += f" ({e})" if isinstance(e, SourceUnavailable) else ""

    print(f"slime's {up['patch']}: {len(hunks)} hunks in {len({h['file'] for h in hunks})} files, "
          f"{name} {report['from']} -> {report['to']} ({report['to_origin']})")
    print(f"{'':<28}{'files with conflicts':>22}{'conflict regions':>18}{'seconds':>10}")
    print(f"{'git apply + cherry-pick':<28}{len(unmerged):>22}{regions:>18}{git_s:>10.1f}")
    print(f"{'patchstack rebase':<28}{ours_files:>22}{len(conflicts):>18}{ours_s:>10.1f}")
    print("patchstack, per status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"renamed files followed: {', '.join(sorted(renamed)) or 'none'}")
    print("files left with conflicts by patchstack: " + ", ".join(sorted({h['file'] for h in conflicts})))
    print(port_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
