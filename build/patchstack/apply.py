"""Apply a series to a target tree, all or nothing.

The whole series is first applied in memory against the target's own files (check_series with a
DirTree). Only when every patch fits is anything written, and then under a journal: each file
about to change is copied aside first, so an interruption (an exception, Ctrl-C, SIGTERM) restores
the tree on the spot, and a harder stop (SIGKILL, power loss) is rolled back by the next run of
the tool on that tree before it does anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from . import engine
from .check import SKIPPED, SeriesReport, check_series
from .errors import StackError
from .manifest import Manifest
from .trees import EXECUTABLE, SYMLINK, DirTree, git

JOURNAL = "patchstack-apply"


def _git_dir(target: Path) -> Path | None:
    p = git("rev-parse", "--absolute-git-dir", cwd=target, check=False)
    if p.returncode != 0:
        return None
    top = git("rev-parse", "--show-toplevel", cwd=target).stdout.decode().strip()
    if Path(top).resolve() != target.resolve():
        return None  # a folder inside some other checkout: not a checkout of its own
    return Path(p.stdout.decode().strip())


def journal_dir(target: Path) -> Path:
    gd = _git_dir(target)
    return gd / JOURNAL if gd else target / f".{JOURNAL}"


def recover(target: Path) -> bool:
    """Roll back an apply that was stopped midway. True if there was one."""
    jd = journal_dir(target)
    j = jd / "journal.json"
    if not j.exists():
        if jd.exists():
            shutil.rmtree(jd)  # stopped before anything was written
        return False
    _rollback(target, json.loads(j.read_text()), jd)
    shutil.rmtree(jd)
    return True


def _rollback(target: Path, journal: dict, jd: Path) -> None:
    for rel, info in journal["files"].items():
        dest = target / rel
        if info is None:  # created by the apply
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            continue
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        backup = jd / "backup" / info["backup"]
        if info["mode"] == SYMLINK:
            os.symlink(backup.read_text(), dest)
        else:
            shutil.copyfile(backup, dest)
            os.chmod(dest, 0o755 if info["mode"] == EXECUTABLE else 0o644)
    for d in sorted(journal.get("dirs", []), key=len, reverse=True):
        try:
            (target / d).rmdir()
        except OSError:
            pass


def verify_target(manifest: Manifest, upstream: str, target: Path, *, allow_dirty: bool,
                  allow_other_commit: bool) -> str:
    """Refuse a tree at the wrong commit or with local changes; say what it is at."""
    up = manifest.upstream(upstream)
    if not target.is_dir():
        raise StackError(f"{target}: no such folder", hint=f"give the path of the {upstream} checkout")
    if _git_dir(target) is None:
        if allow_other_commit:
            return "not a git checkout (commit not verified: --allow-other-commit)"
        raise StackError(
            f"{target} is not a git checkout, so its commit cannot be verified against the pin {up.commit[:12]}",
            hint="apply to a git checkout of the pinned commit, or pass --allow-other-commit to skip this check",
        )
    head = git("rev-parse", "HEAD", cwd=target, check=False).stdout.decode().strip()
    if head not in up.accepted_commits and not allow_other_commit:
        raise StackError(
            f"{target} is at commit {head or '(none)'}, not at the {upstream} pin {up.commit}",
            hint=f"check out {up.commit[:12]} there (git -C {target} checkout {up.commit[:12]}), "
            "or pass --allow-other-commit if you know the series fits it",
        )
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=target).stdout.decode().strip()
    if dirty and not allow_dirty:
        files = dirty.splitlines()
        shown = "\n    ".join(files[:10]) + ("\n    ..." if len(files) > 10 else "")
        raise StackError(
            f"{target} has local changes ({len(files)} files):\n    {shown}",
            hint="commit or stash them (git stash), or pass --allow-dirty to apply on top of them",
        )
    return f"git checkout at {head[:12]}" + (" (dirty, --allow-dirty)" if dirty else "")


class _Interrupted(BaseException):
    pass


def _raise_interrupt(signum, _frame):
    raise _Interrupted(f"signal {signum}")


def apply_series(manifest: Manifest, upstream: str, target: Path, groups: list[str], *,
                 allow_dirty: bool = False, allow_other_commit: bool = False,
                 offline: bool = False, allow_skip: bool = False) -> tuple[SeriesReport, str]:
    """Check the series against the target, then write it all. Returns the report and what was done.

    With `allow_skip`, a series whose entry cannot be read (its source unreachable) is applied up
    to that entry and the rest is left out, said in the message; never a later entry without it."""
    target = target.resolve()
    if target.is_dir() and recover(target):
        note = "an earlier apply on this tree was interrupted; its changes were rolled back first\n"
    else:
        note = ""
    where = verify_target(manifest, upstream, target, allow_dirty=allow_dirty,
                          allow_other_commit=allow_other_commit)
    rep = check_series(manifest, upstream, groups, tree=DirTree(target), source_label=f"{target} ({where})",
                       offline=offline)
    left_out = ""
    if rep.status == SKIPPED and allow_skip:
        first = next(i for i, e in enumerate(rep.entries) if e.status == SKIPPED)
        names = ", ".join(e.name for e in rep.entries[first:])
        left_out = f"; left out (a source is unreachable: {rep.entries[first].reason}): {names}"
        rep = check_series(manifest, upstream, groups, tree=DirTree(target), source_label=f"{target} ({where})",
                           offline=offline, limit=first)
    if rep.status == engine.APPLIED:
        return rep, note + f"{upstream}: every patch is already applied to {target}; nothing to do{left_out}"
    if rep.status != engine.FITS:
        raise NotApplied(rep)
    _write(target, rep.changes)
    n = sum(1 for e in rep.entries)
    return rep, note + f"{upstream}: applied {n} patches ({len(rep.changes)} files) to {target}{left_out}"


class NotApplied(StackError):
    def __init__(self, rep: SeriesReport):
        why = {
            engine.FAILS: "some patches do not fit",
            "skipped": "some patches could not be read or checked",
            "mixed": "the tree is half patched",
        }.get(rep.status, rep.status)
        super().__init__(f"{rep.upstream}: not applied: {why}; the tree was not changed",
                         hint="see the report above for each patch, file and hunk")
        self.report = rep


def write_file(dest: Path, mode: str, content: bytes) -> None:
    if dest.is_symlink() or (dest.exists() and mode == SYMLINK):
        dest.unlink()
    if mode == SYMLINK:
        os.symlink(content.decode("utf-8", "surrogateescape"), dest)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o755 if mode == EXECUTABLE else 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_changes(target: Path, changes: dict[str, tuple[str, bytes] | None]) -> None:
    """Write the engine's result into a folder: each file whole (temp file + rename), deletions last-wins."""
    for rel in sorted(changes):
        dest = target / rel
        change = changes[rel]
        if change is None:
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_file(dest, *change)


def _write(target: Path, changes: dict[str, tuple[str, bytes] | None]) -> None:
    jd = journal_dir(target)
    (jd / "backup").mkdir(parents=True)
    journal: dict = {"files": {}, "dirs": []}
    for i, rel in enumerate(sorted(changes)):
        src = target / rel
        if src.is_symlink() or src.exists():
            mode = DirTree(target).mode(rel)
            b = jd / "backup" / str(i)
            if mode == SYMLINK:
                b.write_text(os.readlink(src))
            else:
                shutil.copyfile(src, b)
            journal["files"][rel] = {"backup": str(i), "mode": mode}
        else:
            journal["files"][rel] = None
            d = Path(rel).parent
            while str(d) != "." and not (target / d).exists():
                journal["dirs"].append(str(d))
                d = d.parent
    tmp = jd / "journal.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(journal, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, jd / "journal.json")  # from here on, a stop is rolled back

    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        write_changes(target, changes)
    except BaseException as e:
        _rollback(target, journal, jd)
        shutil.rmtree(jd)
        raise StackError(
            f"apply to {target} was interrupted ({type(e).__name__}: {e}); the tree was restored as it was",
            hint="run the same command again",
        ) from e
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    shutil.rmtree(jd)
