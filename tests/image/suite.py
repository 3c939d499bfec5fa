"""The image's own test suite: run inside the image (`make image-test IMAGE=...` does that), it
proves the image on the node it runs on, in three tiers:

  static  any machine: every tree's series applied and each tree at its pin, every pinned
          dependency installed at its pin, the compiled dependencies and the patched trees import,
          the image's labels agree with what is inside (static.py);
  gpu     one GPU: a tiny random Gemma4 checkpoint (dense and MoE), our Megatron model with the `te`
          spec against the `local` spec, SGLang serving it with the Triton backend, the
          rollout/training log-probability gap (gpu.py);
  rl      1-8 GPUs: one colocated slime RL step (rl.py).

Each tier runs the tiers below it. What the hardware or the image cannot do is reported as
skipped, with the reason; nothing is faked. Results: a table on stdout and in OUT/results.md, the
same as JUnit XML in OUT/junit.xml, one JSON line per check in OUT/results.jsonl. Exit 0 when no
check failed, 1 when one did, 2 on bad arguments.

    python3 /opt/gemma4-stack/tests/image/suite.py --tier static --out /tmp/image-test

Standard library only (the static tier runs in the offline smoke image, which has no packages).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STACK = HERE.parents[1]  # /opt/gemma4-stack in the image, the repository's root in a checkout
sys.path.insert(0, str(HERE))

from report import TIERS, Report, write  # noqa: E402


def gpu_count() -> tuple[int, str]:
    """GPUs torch sees in this container, and how that was found out."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return 0, "torch did not answer within 120 s"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return 0, f"torch cannot say ({last})"
    n = int(p.stdout.strip().splitlines()[-1])
    return n, f"torch sees {n} GPU{'s' if n != 1 else ''}"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="image-test suite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=TIERS, default="rl",
                    help="run this tier and the ones below it (default: rl, all of them)")
    ap.add_argument("--out", default="out/image-test", help="where results.md, junit.xml, results.jsonl go")
    ap.add_argument("--labels", help="the image's labels as JSON (docker inspect --format '{{json .Config.Labels}}'); "
                                     "without it the label check is skipped")
    ap.add_argument("--pins", help="the build's pins file (default: <stack>/pins.env)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="where an upstream's tree is (default: its image_path in patches/pins.toml)")
    ap.add_argument("--not-run", action="append", default=[], metavar="TIER=WHY",
                    help="a tier the driver did not ask for, and why (reported in the results)")
    ap.add_argument("--asked", help="the tier the user asked the driver for (default: --tier); tiers above it "
                                    "are reported as not asked for")
    ap.add_argument("--gpus", type=int, help="GPUs the driver gave the container (reported; the rl step is colocated on one)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import static

    out_dir = Path(args.out)
    rep = Report()
    wanted = TIERS[: TIERS.index(args.tier) + 1]
    try:
        img = static.Image.load(STACK, pins=args.pins, labels=args.labels, trees=args.tree)
    except static.SuiteError as e:
        print(f"image-test: {e}", file=sys.stderr)
        return 2
    print(f"image-test: tiers {', '.join(wanted)}; stack {STACK}; pins {img.pins_file}")
    static.run(img, rep)
    skipped_tiers: dict[str, str] = {}
    for item in args.not_run:
        tier, _, why = item.partition("=")
        skipped_tiers[tier] = why
    for tier in TIERS:
        if tier not in wanted and tier not in skipped_tiers:
            skipped_tiers[tier] = f"not asked for (TIER={args.asked or args.tier})"
    if len(wanted) > 1:
        n, how = gpu_count()
        if n == 0:
            for tier in wanted[1:]:
                skipped_tiers[tier] = f"no GPU in this container: {how}"
        else:
            import gpu

            work = out_dir / "work"
            gpu.run(img, rep, work)
            if "rl" in wanted:
                import rl

                rl.run(img, rep, work, gpus=min(args.gpus or n, n))
    text = write(out_dir, rep.results, skipped_tiers)
    print()
    print(text, end="")
    print(f"results: {out_dir / 'results.md'}, {out_dir / 'junit.xml'}")
    return exit_status(rep.failed, wanted, skipped_tiers)


def exit_status(failed, wanted, skipped_tiers) -> int:
    """1: a check failed; 6: a tier this suite was asked to run could not run (never a pass; the
    driver's EXIT_NOT_RUN); else 0."""
    if failed:
        return 1
    missed = [t for t in wanted if t in skipped_tiers]
    if missed:
        print(f"image-test: tier {', '.join(missed)} asked for and NOT RUN (exit 6)", file=sys.stderr)
        return 6
    return 0


if __name__ == "__main__":
    sys.exit(main())
