#!/usr/bin/env python3
"""Fast rebuilds: edit one patch of ours and rebuild; which steps re-run, which come from the cache.

Runs on the offline smoke build (the same Dockerfile on the Debian stand-in base), in a scratch
copy of this repository with a test patch first in SGLang's series (until the Gemma4 patches
exist). Needs a Docker engine and debootstrap (ci/docker-engine.sh).

    python3 bench/image_rebuild.py

Prints the first build (no cache) and the rebuild after the edit: time, steps run, steps from the
cache, and the instructions that ran again. In the real image the steps before "COPY stack" are
the compiled dependencies (flash-attn, FlashAttention-3, Transformer Engine, apex: about an hour in
slime's recipe); the smoke build skips their work, so its times show only the mechanism.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build"))

from patchstack import image, manifest, sources  # noqa: E402

TARGET = "python/sglang/srt/utils/common.py"


def test_patch(text: str, marker: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        wt = Path(d)
        (wt / Path(TARGET).parent).mkdir(parents=True)
        (wt / TARGET).write_text(text)
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
            subprocess.run(["git", *cmd], cwd=wt, check=True, env=env)
        (wt / TARGET).write_text(text.replace("\nimport ", f"\n# {marker}\nimport ", 1))
        body = subprocess.run(["git", "diff"], cwd=wt, capture_output=True, text=True, check=True).stdout
    return f"Subject: [PATCH] bench marker\n\nUpstream-Status: environment benchmark only\n---\n{body}"


def main() -> int:
    m = manifest.load(ROOT)
    sgl = sources.source(m.upstream("sglang"), prefer_sdist=True)
    text = sgl.tree.read(TARGET).decode()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stack"
        for part in ("patches", "docker"):
            shutil.copytree(ROOT / part, root / part)
        folder = root / "patches" / "sglang" / m.upstream("sglang").version
        patch = folder / "0001-bench.patch"
        patch.write_text(test_patch(text, "first"))
        # First in [base], so that it applies whether or not slime's patch after it is reachable.
        (folder / "series").write_text((folder / "series").read_text().replace("[base]\n", "[base]\n0001-bench.patch\n", 1))
        os.environ["PATCHSTACK_ROOT"] = str(root)
        ms = manifest.load(root)
        base = image.smoke_base(ms, out=lambda *_: None)
        quiet = lambda *_: None  # noqa: E731

        plan = image.make_plan(ms, gemma4=True, smoke=True, base_image=base)
        ctx = image.prepare_context(ms, plan, root / "out" / "ctx")
        _, first = image.build(plan, ctx, network="none", nocache=True, out=quiet)

        patch.write_text(test_patch(text, "second"))  # edit the one patch
        plan = image.make_plan(ms, gemma4=True, smoke=True, base_image=base)
        ctx = image.prepare_context(ms, plan, root / "out" / "ctx")
        _, again = image.build(plan, ctx, network="none", out=quiet)

    print(f"{'':<34}{'seconds':>9}{'steps run':>11}{'from cache':>12}")
    print(f"{'first build (no cache)':<34}{first['seconds']:>9.1f}{first['run']:>11}{first['cached']:>12}")
    print(f"{'rebuild after editing one patch':<34}{again['seconds']:>9.1f}{again['run']:>11}{again['cached']:>12}")
    ran = [r for r in again["ran"] if not r.startswith("LABEL ")]
    print(f"re-ran ({len(ran)} besides {len(again['ran']) - len(ran)} LABEL steps): " + " | ".join(r[:60] for r in ran))
    return 0


if __name__ == "__main__":
    sys.exit(main())
