"""Command line of patchstack. The Makefile, the Dockerfile and CI call these commands, as a person does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import check as check_mod
from . import engine, lint as lint_mod, manifest as manifest_mod, sources
from .apply import NotApplied, apply_series
from .errors import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_UNDECIDED, SourceUnavailable, StackError
from .trees import DirTree


def _groups(m: manifest_mod.Manifest, args) -> list[str]:
    extra = set(args.group or [])
    if args.gemma4:
        extra.add("gemma4")
    return m.select_groups(frozenset(extra))


def _settings(args) -> dict[str, str]:
    out = {}
    for item in args.build_arg or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StackError(f"--build-arg {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def _add_build_args(p: argparse.ArgumentParser) -> None:
    from . import image

    try:
        known = image.user_args(manifest_mod.find_root())
        listing = "\n".join(f"  {k:<24} default {v or '(empty)'}" for k, v in known.items())
    except Exception:  # noqa: BLE001 - help must print even outside a checkout
        listing = "  (docker/Dockerfile not found)"
    p.add_argument("--build-arg", action="append", metavar="NAME=VALUE",
                   help="a value for one of the Dockerfile's build arguments (repeatable; make passes "
                        "NAME=VALUE given on its command line or in the environment)")
    p.epilog = "build arguments a user may set (docker/Dockerfile):\n" + listing
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def _tag(value: str) -> str:
    from .preflight import tag_problem

    problem = tag_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem.replace("\n  what to do: ", "; "))
    return value


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gemma4", action="store_true", help="add the gemma4 group of every series (GEMMA4=1)")
    p.add_argument("--group", action="append", metavar="NAME", help="add an optional group (repeatable)")
    p.add_argument("--offline", action="store_true", help="use only what is in the cache")


def cmd_sources(m, args) -> int:
    names = args.upstream or list(m.upstreams)
    worst = 0
    for n in names:
        up = m.upstream(n)
        try:
            s = sources.source(up, offline=args.offline, prefer_sdist=args.sdist)
            print(f"{n:<9} {s.commit[:12]}  {s.origin}")
        except SourceUnavailable as e:
            print(f"{n:<9} UNAVAILABLE  {e}")
            worst = max(worst, 3)
    print(f"cache: {sources.cache_root()}")
    return worst


def cmd_check(m, args) -> int:
    names = args.upstream or list(m.upstreams)
    groups = _groups(m, args)
    if args.tree and len(names) != 1:
        raise StackError("--tree checks one tree: name exactly one upstream", hint="e.g. check sglang --tree DIR")
    patches = check_mod.PatchSource(m, args.offline)
    reports = []
    for n in names:
        m.upstream(n)
        if args.tree:
            tree = DirTree(Path(args.tree).resolve())
            reports.append(check_mod.check_series(m, n, groups, tree=tree, patches=patches, offline=args.offline,
                                                  expect=args.expect))
        else:
            reports.append(check_mod.check_series(m, n, groups, patches=patches, offline=args.offline))
    code = check_mod.exit_code(reports, expect=args.expect, allow_incomplete=args.allow_incomplete)
    if args.json:
        json.dump({"exit": code, "expect": args.expect, "series": check_mod.to_json(reports)}, sys.stdout, indent=2)
        print()
    else:
        print(check_mod.format_human(reports, expect=args.expect), end="")
        print(_summary(reports, code, args))
    return code


def _summary(reports, code: int, args) -> str:
    counts: dict[str, int] = {}
    skipped: list[str] = []
    for r in reports:
        for e in r.entries:
            counts[e.status] = counts.get(e.status, 0) + 1
            if e.status in (check_mod.SKIPPED, check_mod.UNDECIDED):
                why = r.reason if r.status == check_mod.SKIPPED and not r.source else e.reason
                skipped.append(f"  {r.upstream} [{e.group}] {e.name}: {why}")
        if r.status == check_mod.SKIPPED and not r.entries and not r.source:
            skipped.append(f"  {r.upstream} (no entries selected; source not verified): {r.reason}")
    total = sum(counts.values())
    parts = [f"{counts[k]} {k}" for k in (engine.FITS, engine.APPLIED, engine.FAILS, check_mod.UNDECIDED,
                                           check_mod.SKIPPED) if counts.get(k)]
    lines = [f"Summary: {len(reports)} series, {total} entries: {', '.join(parts) or 'none selected'}"]
    if skipped:
        lines.append("Not checked, and why:")
        lines += skipped
    if code == EXIT_OK:
        verdict = "OK" if not skipped else ("OK for what was checked; INCOMPLETE: the entries above were not "
                                            "checked (--allow-incomplete accepts that)")
    elif code == EXIT_FAILED:
        verdict = "FAILED: a patch does not fit (exit 1)"
    elif code == EXIT_UNDECIDED:
        verdict = ("UNDECIDED (exit 4): a patch did not fit after an entry before it was skipped; whether it "
                   "is at fault is known only with the skipped entry's source (the hint above names it)")
    else:
        verdict = ("INCOMPLETE (exit 3): the entries above were not checked; make their sources reachable, "
                   "or accept it with --allow-incomplete")
    lines.append(verdict)
    return "\n".join(lines)


def cmd_apply(m, args) -> int:
    groups = _groups(m, args)
    try:
        rep, msg = apply_series(m, args.upstream, Path(args.tree), groups, allow_dirty=args.allow_dirty,
                                allow_other_commit=args.allow_other_commit, offline=args.offline,
                                allow_skip=args.allow_skip)
    except NotApplied as e:
        print(check_mod.format_human([e.report]), end="", file=sys.stderr)
        raise
    print(msg)
    return 0


def cmd_lint(m, args) -> int:
    problems = lint_mod.lint(m)
    for p in problems:
        print(p)
    n = sum(1 for _ in m.patches_dir.glob("*/*/*.patch"))
    print(f"{'FAILED' if problems else 'OK'}: {len(problems)} problem{'' if len(problems) == 1 else 's'} in {n} patch files "
          f"of {len(m.upstreams)} upstreams")
    return 1 if problems else 0


def cmd_workspace(m, args) -> int:
    from . import workspace

    ws = workspace.create(m, args.upstream, _groups(m, args), force=args.force, offline=args.offline)
    n = workspace.git("rev-list", "--count", f"{workspace.UPSTREAM_TAG}..HEAD", cwd=ws).stdout.decode().strip()
    print(f"{args.upstream}: workspace at {ws}: the pin is tagged '{workspace.UPSTREAM_TAG}', "
          f"{n} patch commits on branch 'patches'")
    print(f"edit with git (commit --amend, rebase -i {workspace.UPSTREAM_TAG}), then: make export UPSTREAM={args.upstream}")
    missing = workspace.missing_entries(ws)
    for name in missing:
        print(f"MISSING   {name}: its upstream could not be reached, so it is NOT applied: the workspace is "
              f"{args.upstream}'s pin without it (an empty commit holds its place; export keeps its series line). "
              "Patches made here may not fit once it is back: run make check with the source reachable.")
    if missing:
        print(f"INCOMPLETE (exit 3): the workspace is made, without {len(missing)} entr"
              f"{'y' if len(missing) == 1 else 'ies'} (above)")
        return EXIT_INCOMPLETE
    return 0


def cmd_export(m, args) -> int:
    from . import workspace

    r = workspace.export(m, args.upstream)
    for n in r.written:
        print(f"wrote     {n}")
    for n in r.removed:
        print(f"removed   {n}")
    for n in r.external_edited:
        print(f"EXTERNAL  {n}: edited in the workspace; not ours, so written under out/ only")
    for n in r.missing:
        print(f"MISSING   {n}: not in this workspace (its upstream was unreachable); its series line is kept")
    print(f"{args.upstream}: {len(r.written)} written, {len(r.unchanged)} unchanged, {len(r.removed)} removed"
          + ("; series file updated" if r.series_changed else "; series file unchanged"))
    return 0


def cmd_rebase(m, args) -> int:
    from . import rebase

    if args.abort:
        rebase.abort(m, args.upstream)
        print(f"{args.upstream}: rebase dropped ({rebase.rebase_dir(m, args.upstream)} removed)")
        return 0
    if args.cont:
        state = rebase.cont(m, args.upstream)
    else:
        if not args.to:
            raise StackError("rebase needs --to VERSION_OR_COMMIT (or --continue / --abort)")
        state = rebase.start(m, args.upstream, args.to, sha256=args.sha256, sdist=args.sdist, force=args.force,
                             offline=args.offline)
    print(rebase.summary(m, state))
    return 1 if state.get("stopped") else 0


def cmd_image(m, args) -> int:
    from . import image

    plan = image.make_plan(m, gemma4=args.gemma4, base_image=args.base_image, user_tag=args.tag,
                           offline=args.offline, groups=_groups(m, args), settings=_settings(args))
    print(image.describe(plan))
    if args.plan:
        print(json.dumps({"tag": plan.tag, "build_args": plan.build_args, "labels": plan.labels}, indent=2))
        return 0
    image.require_complete(m, plan)  # before any Docker step
    image.require_downloads(plan)
    image.check_deps_image(plan)  # with DEPS_IMAGE: its labels, before the context and the build
    ctx = image.prepare_context(m, plan, m.root / "out" / "image" / "context", offline=args.offline)
    image.build(plan, ctx, network="host")
    return 0


def cmd_image_deps(m, args) -> int:
    from . import image

    settings = _settings(args)
    if "DEPS_IMAGE" in settings:
        raise StackError("image-deps makes a deps image; DEPS_IMAGE names one for `make image` to build on: "
                         "leave DEPS_IMAGE out here")
    if args.allow_incomplete and not args.smoke:
        raise StackError("--allow-incomplete is for the smoke deps image (--smoke): `make image` needs slime, so a "
                         "deps image without slime's requirements could not be used by it")

    def plan_on(base):
        return image.make_plan(m, gemma4=args.gemma4, smoke=args.smoke, base_image=base, offline=args.offline,
                               groups=_groups(m, args), allow_incomplete=args.allow_incomplete, settings=settings)

    plan = plan_on("-" if args.smoke else args.base_image)
    if args.smoke:
        image.check_smoke_base_source(m, plan, offline=args.offline)
    image.require_deps_sources(m, plan)  # before any Docker step
    image.require_downloads(plan)
    if args.smoke:
        plan = plan_on(image.smoke_base(m))
    print(f"deps image {plan.deps_tag} (base {plan.base_image}; the deps stage of docker/Dockerfile, "
          f"{len(plan.deps_args)} build arguments)")
    ctx = image.prepare_deps_context(m, plan, m.root / "out" / "image" / ("smoke-deps-context" if args.smoke
                                                                          else "deps-context"))
    image.build(plan, ctx, network="none" if args.smoke else "host", target="deps", tags=[plan.deps_tag],
                labels=image.deps_image_labels(plan))
    target, tag = ("image-smoke" if args.smoke else "image"), plan.deps_tag
    print(f"deps image: {tag}")
    print(f"build on it: make {target} DEPS_IMAGE={tag}, with the same settings; elsewhere: docker tag {tag} "
          f"REGISTRY/{tag}, docker push REGISTRY/{tag}, then make {target} DEPS_IMAGE=REGISTRY/{tag}")
    return 0


def cmd_image_smoke(m, args) -> int:
    from . import image

    # Decided before the Debian base is made (minutes): the same plan, the base named later.
    first = image.make_plan(m, gemma4=args.gemma4, smoke=True, base_image="-", offline=args.offline,
                            groups=_groups(m, args), allow_incomplete=args.allow_incomplete,
                            settings=_settings(args))
    image.check_smoke_base_source(m, first, offline=args.offline)
    image.require_complete(m, first)
    base = image.smoke_base(m)
    plan = image.make_plan(m, gemma4=args.gemma4, smoke=True, base_image=base, offline=args.offline,
                           groups=_groups(m, args), allow_incomplete=args.allow_incomplete,
                           settings=_settings(args))
    print(image.describe(plan))
    image.check_deps_image(plan)  # with DEPS_IMAGE (a smoke deps image: image-deps --smoke)
    ctx = image.prepare_context(m, plan, m.root / "out" / "image" / "smoke-context", offline=args.offline)
    image.build(plan, ctx, network="none")
    image.smoke_verify(plan)
    left = [n if tp.needs == n else f"{n} (needs {tp.needs})" if tp.needs else f"{n} ({tp.reason})"
            for n, tp in plan.trees.items() if not tp.included or tp.left_out]
    print("smoke image OK: " + plan.tag)
    if left:
        print("NOT COVERED (sources unreachable): " + ", ".join(left) + "; "
              + "; ".join(e.message for e in plan.unreachable.values()))
    return 0


def cmd_image_test(m, args) -> int:
    from . import image, imagetest

    target = args.image
    if args.smoke:
        if target:
            raise StackError("image-test takes an image or --smoke, not both")
        # the tag `make image-smoke` gives this checkout (same plan; the base is not part of the tag)
        target = image.make_plan(m, gemma4=args.gemma4, smoke=True, base_image="-", offline=args.offline,
                                 groups=_groups(m, args), allow_incomplete=True).tag
    if not target:
        raise StackError("image-test needs the image to test",
                         hint="make image-test IMAGE=<tag> (make image prints the tag; docker images lists "
                              "them), or SMOKE=1 [GEMMA4=1] for this checkout's smoke image")
    out_dir = Path(args.out) if args.out else m.root / "out" / "image-test"
    return imagetest.run(target, tier=args.tier, gpus=args.gpus, out_dir=out_dir)


def cmd_inspect(m, args) -> int:
    from . import image

    print(image.format_labels(image.inspect_labels(args.image)))
    return 0


def cmd_push(m, args) -> int:
    from . import image

    plan = image.make_plan(m, gemma4=args.gemma4, user_tag=args.tag, offline=True, groups=_groups(m, args))
    image.push([plan.tag, *plan.extra_tags], args.registry)
    return 0


def cmd_materialise(m, args) -> int:
    from .materialise import materialise

    r = materialise(m, args.upstream, _groups(m, args), Path(args.dest), only=args.only, offline=args.offline)
    print(f"{args.upstream}: source: {r.source}")
    for p in r.written:
        print(f"wrote     {p}")
    for p in r.need_source:
        print(f"NOT WRITTEN {p}: the patches change it, and its upstream file is not reachable")
    print(f"{len(r.written)} files written to {args.dest}" + (f", {len(r.need_source)} need the source"
                                                                 if r.need_source else ""))
    return 3 if r.need_source else 0


def cmd_matrix(m, args) -> int:
    from . import matrix, matrix_page

    names = args.upstream or list(m.upstreams)
    for n in names:
        m.upstream(n)
    override = None
    if args.versions is not None:
        if len(names) != 1:
            raise StackError("--versions lists the versions of one upstream: name exactly one",
                             hint="e.g. patchstack matrix sglang --versions 0.5.10,0.5.10.post1")
        override = [v.strip() for v in args.versions.split(",") if v.strip()]
    if args.base or args.gemma4 or args.group:
        groups = _groups(m, args)
    else:
        groups = list(m.groups)  # every group: a user wants to see every patch
    out = Path(args.out) if args.out else m.root / "out" / "matrix"
    log = (lambda line: print(line, file=sys.stderr, flush=True))
    data = matrix.run(m, names, groups, out_dir=out, offline=args.offline, override=override, log=log)
    print(matrix_page.summary(data, out))
    return 3 if args.strict and data["cells"]["unavailable"] else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="patchstack", description=__doc__)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("sources", help="fetch and verify the pinned sources into the cache")
    p.add_argument("upstream", nargs="*")
    p.add_argument("--offline", action="store_true")
    p.add_argument("--sdist", action="store_true", help="prefer an upstream's sdist over git")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("check", help="validate the series against the pins (or a tree); changes nothing")
    p.add_argument("upstream", nargs="*", help="upstreams to check (default: all)")
    _add_selection(p)
    p.add_argument("--tree", help="check this folder instead of the pinned source (one upstream)")
    p.add_argument("--expect", choices=[engine.FITS, engine.APPLIED], default=engine.FITS,
                   help="what each patch must be: 'fits' (default) or 'applied' (a patched tree)")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="exit 0 when every check that ran held, even if some were skipped (source "
                        "unreachable); without it a skip exits 3")
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # the default since exit 3 is
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("apply", help="validate, then apply a series to a tree, all or nothing")
    p.add_argument("upstream")
    p.add_argument("--tree", required=True, help="the checkout to patch")
    _add_selection(p)
    p.add_argument("--allow-dirty", action="store_true", help="apply on top of local changes")
    p.add_argument("--allow-other-commit", action="store_true", help="skip the check that the tree is at the pin")
    p.add_argument("--allow-skip", action="store_true",
                   help="where an entry's source is unreachable, apply the entries before it and say what was left out")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("workspace", help="import a series as commits on the pinned upstream, under out/")
    p.add_argument("upstream")
    _add_selection(p)
    p.add_argument("--force", action="store_true", help="replace an existing workspace")
    p.set_defaults(func=cmd_workspace)

    p = sub.add_parser("export", help="turn the workspace's commits back into patch files and the series")
    p.add_argument("upstream")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rebase", help="regenerate the series onto a new upstream version, hunk by hunk")
    p.add_argument("upstream")
    p.add_argument("--to", help="the new version: a commit, a git tag, or a PyPI version for an upstream with an sdist")
    p.add_argument("--sha256", help="the sdist's expected sha256 (default: the one the package index gives)")
    p.add_argument("--sdist", help="a local path or URL of the new version's sdist (with --sha256)")
    p.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving conflicts")
    p.add_argument("--abort", action="store_true", help="drop the rebase in progress")
    p.add_argument("--force", action="store_true", help="drop a rebase in progress and start again")
    p.add_argument("--offline", action="store_true")
    p.set_defaults(func=cmd_rebase)

    p = sub.add_parser("image", help="build the GPU image (Docker SDK), patches validated before they apply")
    _add_selection(p)
    p.add_argument("--tag", type=_tag, help="an extra tag (NAME:TAG, or TAG for this image's repository)")
    p.add_argument("--base-image", help="override the Dockerfile's BASE_IMAGE")
    p.add_argument("--plan", action="store_true", help="print the plan (tag, arguments, labels) and stop")
    _add_build_args(p)
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("image-deps", help="build the Dockerfile's deps stage alone, tagged by a hash of what "
                       "makes it; `make image DEPS_IMAGE=<tag>` builds on it")
    _add_selection(p)
    p.add_argument("--base-image", help="override the Dockerfile's BASE_IMAGE")
    p.add_argument("--smoke", action="store_true",
                   help="the smoke build's deps stage (OFFLINE=1 on the Debian stand-in base), for image-smoke")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="with --smoke: build even where slime is unreachable (its requirements left out)")
    _add_build_args(p)
    p.set_defaults(func=cmd_image_deps)

    p = sub.add_parser("image-smoke", help="offline smoke build on a Debian stand-in base, then checks inside")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="build even where sources are unreachable: what is left out is named, and the "
                        "tag and labels say 'incomplete' (CI without GitHub uses this)")
    _add_selection(p)
    _add_build_args(p)
    p.set_defaults(func=cmd_image_smoke)

    p = sub.add_parser("image-test", help="run the image's own test suite in it (static, gpu, rl tiers): "
                       "out/image-test/results.md and junit.xml")
    p.add_argument("image", nargs="?", help="the image (tag or id)")
    p.add_argument("--smoke", action="store_true", help="this checkout's smoke image (make image-smoke)")
    p.add_argument("--tier", choices=["static", "gpu", "rl"],
                   help="run this tier and those below it (default: rl on a host with GPUs, else static)")
    p.add_argument("--gpus", help="GPUs for the container: all (default), a count, or ids like 0,1")
    p.add_argument("--out", help="results folder (default: out/image-test)")
    _add_selection(p)
    p.set_defaults(func=cmd_image_test)

    p = sub.add_parser("inspect", help="print an image's provenance labels")
    p.add_argument("image")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("push", help="push this stack's image tags to a registry")
    _add_selection(p)
    p.add_argument("--registry", required=True, help="e.g. registry.example.com/team")
    p.add_argument("--tag", type=_tag)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("materialise", help="write the files a series creates or changes into a folder")
    p.add_argument("upstream")
    p.add_argument("--dest", required=True)
    p.add_argument("--only", action="append", metavar="GLOB", help="only paths matching (repeatable)")
    _add_selection(p)
    p.set_defaults(func=cmd_materialise)

    p = sub.add_parser("matrix", help="every entry of every series on a list of upstream versions: "
                       "out/matrix/matrix.json and index.html",
                       description="Every entry of every series (default: every group, gemma4 included) on "
                       "the pin and the versions of patches/matrix.toml (SGLang: every stable PyPI release "
                       "after the pin). Cells are cached under OUT/cache.")
    p.add_argument("upstream", nargs="*", help="upstreams to show (default: all)")
    p.add_argument("--versions", metavar="V1,V2,...",
                   help="these versions instead of the list (one upstream): commits, tags or PyPI versions")
    p.add_argument("--base", action="store_true", help="only the groups that always apply (default: every group)")
    p.add_argument("--gemma4", action="store_true", help="base and gemma4 only (default: every group)")
    p.add_argument("--group", action="append", metavar="NAME", help="base and this optional group (repeatable)")
    p.add_argument("--offline", action="store_true",
                   help="use only the cache: no package index, no git remote (the cached PyPI listing is used)")
    p.add_argument("--out", help="output folder (default: out/matrix)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a cell could not be computed")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("lint", help="lint the series files and our patch files")
    p.set_defaults(func=cmd_lint)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = manifest_mod.load()
        return args.func(m, args)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
