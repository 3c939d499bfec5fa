"""Edit patches as commits: import a series into a git checkout, export the commits back to files.

`workspace` makes out/workspace/<upstream>: the pinned upstream checked out, the tag `upstream`
at the pin (where upstream ends), then one commit per series entry, author, date and message
taken from the patch header. Commits carry trailers naming the entry they came from:

    Patchstack-Patch: 0001-foo.patch        (a patch of ours)
    Patchstack-External: slime:docker/...   (a patch from another upstream: not ours)
    Patchstack-Group: gemma4

`export` turns the commits after `upstream` back into patch files and the series file, in one
normal form, so that exporting an unchanged workspace changes no byte and editing one commit
changes only its file. An edited external patch is never written into patches/: export says so
and writes it under out/.
"""

from __future__ import annotations

import email.utils
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import diff, engine, series, sources
from .apply import write_changes
from .check import PatchSource, format_failures
from .errors import StackError
from .manifest import Manifest
from .trees import DirTree, GitTree, git

UPSTREAM_TAG = "upstream"
T_PATCH, T_EXTERNAL, T_GROUP = "Patchstack-Patch", "Patchstack-External", "Patchstack-Group"
# An external entry whose upstream could not be reached: an empty commit that holds its place in
# the series, so that export writes the series line back where it was.
T_MISSING = "Patchstack-Missing"
DIFF_ARGS = ["-c", "core.quotepath=true", "-c", "diff.noprefix=false", "-c", "diff.mnemonicprefix=false",
             "-c", "diff.relative=false"]
DIFF_OPTS = ["--no-color", "--no-ext-diff", "--no-textconv", "-U3", "--diff-algorithm=myers",
             "-M", "--src-prefix=a/", "--dst-prefix=b/"]


@dataclass
class Header:
    author: str  # "Name <email>"
    date: str  # RFC 2822
    subject: str
    body: str  # everything after the subject, up to the diff (the why)


def parse_header(text: str, fallback_subject: str) -> Header:
    """Read a format-patch style header; what is missing gets a neutral default."""
    lines = text.splitlines()
    author, date, subject = "patchstack <patchstack@localhost>", "Thu, 1 Jan 1970 00:00:00 +0000", ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("From ") and i == 0:
            i += 1
            continue
        m = re.match(r"^(From|Date|Subject):\s*(.*)$", line)
        if not m:
            break
        key, value = m.groups()
        # RFC 2822 folded lines continue with whitespace.
        while i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t") and lines[i + 1].strip():
            i += 1
            value += " " + lines[i].strip()
        if key == "From":
            author = value
        elif key == "Date":
            date = value
        else:
            subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", value)
        i += 1
    rest = lines[i:]
    # The body ends at the "---" line before the diffstat/diff.
    if "---" in rest:
        rest = rest[: len(rest) - 1 - rest[::-1].index("---")]
    body = "\n".join(rest).strip("\n")
    return Header(author, date, subject or fallback_subject, body)


def workspace_dir(manifest: Manifest, upstream: str) -> Path:
    return manifest.root / "out" / "workspace" / upstream


def create(manifest: Manifest, upstream: str, groups: list[str], *, force: bool = False,
           offline: bool = False) -> Path:
    up = manifest.upstream(upstream)
    ws = workspace_dir(manifest, upstream)
    if ws.exists():
        if not force:
            raise StackError(f"{ws} already exists", hint="export it first (make export), or pass --force to "
                             "replace it (its unexported commits are lost)")
        shutil.rmtree(ws)
    src = sources.source(up, offline=offline)
    reader = PatchSource(manifest, offline)
    entries = series.load(manifest, upstream).selected(groups)
    # Every entry readable before anything is made; an external entry whose upstream is unreachable
    # (slime's SGLang patch without slime) becomes a placeholder, and the workspace says so.
    texts, missing = reader.read_available(entries)

    ws.parent.mkdir(parents=True, exist_ok=True)
    tmp = ws.with_name(ws.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        init_tree(tmp, src, upstream, groups)
        for e, data in texts:
            if data is None:
                commit_missing(tmp, e, missing[e.name])
                continue
            patch = diff.parse(e.name, data)
            res = engine.apply_patch(patch, DirTree(tmp))
            if res.status != engine.FITS:
                detail = "\n".join(format_failures(res)) if res.status == engine.FAILS else ""
                without = f" without {', '.join(missing)} (unreachable)" if missing else " at its pin"
                raise StackError(f"{e.where()}: {e.name} does not fit {upstream}{without}: {res.status}\n{detail}",
                                 hint=("it may need the missing entry's changes: make its source reachable "
                                       "(the message above names the variable)") if missing else
                                 "run `make check` for the full report")
            write_changes(tmp, res.changes)
            commit_entry(tmp, e, patch)
            if missing and not e.is_external:
                # on a tree without the missing entry, line numbers differ from the file's: export
                # keeps the file of a commit whose change (patch-id: lines, not numbers) is as made
                git("config", f"patchstackmade.{e.name}.patchid", _patch_id(tmp, "HEAD"), cwd=tmp)
        if missing:
            git("config", "patchstack.missing", ",".join(missing), cwd=tmp)
        tmp.rename(ws)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ws


def _patch_id(ws: Path, commit: str) -> str:
    shown = git("show", "--no-color", "--format=", commit, cwd=ws).stdout
    return git("patch-id", "--stable", cwd=ws, input=shown).stdout.decode().split(" ")[0]


def missing_entries(ws: Path) -> list[str]:
    """The external entries a workspace holds only as placeholders (their upstream was unreachable)."""
    got = git("config", "--default", "", "patchstack.missing", cwd=ws).stdout.decode().strip()
    return [x for x in got.split(",") if x]


def init_tree(path: Path, src: sources.Source, upstream: str, groups: list[str]) -> None:
    """A checkout of the source's commit on branch 'patches', the commit tagged 'upstream'."""
    git("init", "-q", str(path))
    git("fetch", "-q", "--no-tags", "--depth", "1", str(src.tree.git_dir), src.commit, cwd=path)
    git("checkout", "-q", "-b", "patches", src.commit, cwd=path)
    git("tag", UPSTREAM_TAG, src.commit, cwd=path)
    git("config", "patchstack.upstream", upstream, cwd=path)
    git("config", "patchstack.groups", ",".join(groups), cwd=path)


def commit_missing(tree: Path, e: series.Entry, reason: str) -> None:
    """An empty commit in the place of an external entry whose upstream could not be reached."""
    msg = (f"[external, MISSING] {e.name}\n\nNot applied: {e.external_upstream} could not be reached "
           f"({reason.splitlines()[0]}).\nThe commits after this one are on the upstream without it. Export "
           f"keeps its series line as it is; leave this commit empty.\n\n"
           f"{T_EXTERNAL}: {e.name} sha256={e.sha256}\n{T_MISSING}: yes\n{T_GROUP}: {e.group}\n")
    env = {"GIT_AUTHOR_NAME": "patchstack", "GIT_AUTHOR_EMAIL": "patchstack@localhost",
           "GIT_AUTHOR_DATE": "Thu, 1 Jan 1970 00:00:00 +0000", "GIT_COMMITTER_NAME": "patchstack",
           "GIT_COMMITTER_EMAIL": "patchstack@localhost", "GIT_COMMITTER_DATE": "Thu, 1 Jan 1970 00:00:00 +0000"}
    git("commit", "-q", "--allow-empty", "--no-verify", "-F", "-", cwd=tree, input=msg.encode(), env=env)


def commit_entry(tree: Path, e: series.Entry, patch: diff.Patch) -> None:
    """Commit the tree's current changes as the series entry `e`: header and trailers from the patch."""
    h = parse_header(patch.header, e.name)
    if e.is_external:
        msg = (f"[external, not ours] {e.name}\n\nRead from {e.external_upstream}'s pinned tree; "
               f"edits to it are not exported into patches/.\n\n{T_EXTERNAL}: {e.name} sha256={e.sha256}\n"
               f"{T_GROUP}: {e.group}\n")
    else:
        msg = f"{h.subject}\n\n" + (f"{h.body}\n\n" if h.body else "") + f"{T_PATCH}: {e.name}\n{T_GROUP}: {e.group}\n"
    name, mail = email.utils.parseaddr(h.author)
    name, mail = name or "patchstack", mail or "patchstack@localhost"
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": mail, "GIT_AUTHOR_DATE": h.date,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": mail, "GIT_COMMITTER_DATE": h.date}
    git("add", "-A", cwd=tree)
    git("commit", "-q", "--allow-empty", "--no-verify", "-F", "-", cwd=tree, input=msg.encode(), env=env)


@dataclass
class Exported:
    written: list[str]
    unchanged: list[str]
    removed: list[str]
    external_edited: list[str]
    series_changed: bool
    missing: list[str] = field(default_factory=list)


def _trailers(msg: str) -> dict[str, str]:
    return dict(re.findall(r"^(Patchstack-[A-Za-z]+):\s*(.+)$", msg, re.M))


def _slug(subject: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-").lower()
    return s[:52].rstrip("-") or "patch"


def render(ws: Path, commit: str) -> bytes:
    """A commit as a patch file in the one normal form export writes."""
    fmt = git("show", "-s", "--format=%an <%ae>%x00%aD%x00%s%x00%b", commit, cwd=ws).stdout.decode()
    author, date, subject, body = fmt.split("\0")
    body = "\n".join(line for line in body.splitlines() if not line.startswith("Patchstack-")).strip("\n")
    d = _drop_index_lines(git(*DIFF_ARGS, "diff", *DIFF_OPTS, f"{commit}^", commit, cwd=ws).stdout)
    head = f"From: {author}\nDate: {date}\nSubject: [PATCH] {subject}\n\n" + (f"{body}\n" if body else "")
    return head.encode() + b"---\n" + d


def _drop_index_lines(d: bytes) -> bytes:
    """Drop 'index <old>..<new>' lines: they name blobs that change whenever an earlier patch does,
    and would make an edit of one patch rewrite every later file of the same path."""
    out, in_header = [], False
    for line in diff.split_lines(d):
        if line.startswith(b"diff --git "):
            in_header = True
        elif line.startswith(b"@@ "):
            in_header = False
        elif in_header and line.startswith(b"index "):
            continue
        out.append(line)
    return b"".join(out)


def export(manifest: Manifest, upstream: str) -> Exported:
    ws = workspace_dir(manifest, upstream)
    if not (ws / ".git").exists():
        raise StackError(f"no workspace for {upstream} at {ws}", hint=f"make workspace UPSTREAM={upstream} first")
    if git("status", "--porcelain", "--untracked-files=normal", cwd=ws).stdout.strip():
        raise StackError(f"{ws} has uncommitted changes", hint="commit them (git commit --amend into the patch "
                         "they belong to), or stash them, then export again")
    merges = git("rev-list", "--merges", f"{UPSTREAM_TAG}..HEAD", cwd=ws).stdout.split()
    if merges:
        raise StackError(f"{ws}: merge commits after '{UPSTREAM_TAG}' cannot become patches",
                         hint="rebase the workspace into a straight line of commits")
    commits = git("rev-list", "--reverse", f"{UPSTREAM_TAG}..HEAD", cwd=ws).stdout.decode().split()
    folder = manifest.series_dir(upstream)
    old = series.load(manifest, upstream)
    out_dir = manifest.root / "out" / "export" / upstream
    numbers = [int(m.group(1)) for e in old.entries if (m := re.match(r"^(\d{4})-", e.name))]
    next_no = max(numbers, default=0) + 1

    new_entries: list[tuple[str, str]] = []  # (group, line as in the series file)
    result = Exported([], [], [], [], False)
    group = "base"
    for c in commits:
        msg = git("show", "-s", "--format=%B", c, cwd=ws).stdout.decode()
        t = _trailers(msg)
        group = t.get(T_GROUP, group)
        if T_EXTERNAL in t:
            ref, _, digest = t[T_EXTERNAL].partition(" sha256=")
            new_entries.append((group, f"{ref} sha256={digest}"))
            if T_MISSING in t:
                if git("diff", "--name-only", f"{c}^", c, cwd=ws).stdout.strip():
                    raise StackError(f"{ws}: commit {c[:12]} holds the place of {ref}, which this workspace "
                                     "could not read, and it now has changes; nothing was exported",
                                     hint="move the changes into a commit of ours (git rebase -i upstream) and "
                                          "leave the placeholder empty")
                result.missing.append(ref)
                continue
            if _external_edited(manifest, ws, c, ref, digest):
                out_dir.mkdir(parents=True, exist_ok=True)
                dest = out_dir / (ref.replace(":", "_").replace("/", "_"))
                dest.write_bytes(render(ws, c))
                result.external_edited.append(f"{ref} -> {dest}")
            continue
        name = t.get(T_PATCH)
        if name is None:
            subject = git("show", "-s", "--format=%s", c, cwd=ws).stdout.decode().strip()
            name = f"{next_no:04d}-{_slug(subject)}.patch"
            next_no += 1
        new_entries.append((group, name))
        path = folder / name
        made = git("config", "--default", "", f"patchstackmade.{name}.patchid", cwd=ws).stdout.decode().strip()
        if made and path.exists() and _patch_id(ws, c) == made:
            result.unchanged.append(name)  # as made on a tree without a missing entry: the file stands
            continue
        data = render(ws, c)
        if path.exists() and path.read_bytes() == data:
            result.unchanged.append(name)
        else:
            path.write_bytes(data)
            result.written.append(name)
    kept = {n for _, n in new_entries}
    in_ws = _ws_groups(ws)
    for e in old.entries:
        if e.group in in_ws and not e.is_external and e.name not in kept and e.local_path.exists():
            e.local_path.unlink()
            result.removed.append(e.name)
    old_lines = [(e.group, _entry_line(e)) for e in old.entries if e.group in in_ws]
    if old_lines != new_entries:
        _rewrite_series(old, new_entries, in_ws)
        result.series_changed = True
    return result


def _ws_groups(ws: Path) -> list[str]:
    return git("config", "patchstack.groups", cwd=ws).stdout.decode().strip().split(",")


def _entry_line(e: series.Entry) -> str:
    return f"{e.name} sha256={e.sha256}" if e.is_external else e.name


def _external_edited(manifest: Manifest, ws: Path, commit: str, ref: str, digest: str) -> bool:
    """Whether the commit still does exactly what the external patch does on its parent."""
    up_name, _, rel = ref.partition(":")
    src = sources.git_source(manifest.upstream(up_name))
    data = src.tree.read(rel)
    if data is None:
        return True
    parent = GitTree(ws / ".git", git("rev-parse", f"{commit}^", cwd=ws).stdout.decode().strip())
    res = engine.apply_patch(diff.parse(ref, data), parent)
    mine = GitTree(ws / ".git", commit)
    changed = git("diff", "--name-only", "--no-renames", "-z", f"{commit}^", commit, cwd=ws).stdout.decode()
    paths = {p for p in changed.split("\0") if p}
    if res.status != engine.FITS or paths != set(res.changes):
        return True
    return any((mine.read(p) if c is not None else None) != (c[1] if c else None) for p, c in res.changes.items())


def _rewrite_series(old: series.Series, entries: list[tuple[str, str]], ws_groups: list[str]) -> None:
    """Write the series file anew, keeping its leading comments and each kept entry's comment lines."""
    lines = old.path.read_text().splitlines()
    first_group = next((i for i, line in enumerate(lines) if line.strip().startswith("[")), len(lines))
    preamble = lines[:first_group]
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in lines[first_group:]:
        s = line.strip()
        if s.startswith("#"):
            pending.append(line)
        elif s and not s.startswith("["):
            comments[s.split()[0]] = pending
            pending = []
        else:
            pending = []
    keep_other = [(e.group, _entry_line(e)) for e in old.entries if e.group not in ws_groups]
    by_group: dict[str, list[str]] = {}
    for g, line in keep_other + entries:
        by_group.setdefault(g, []).append(line)
    # groups keep the order the file gave them (empty ones too), new ones after
    headers = [s.strip()[1:-1] for s in lines[first_group:] if s.strip().startswith("[") and s.strip().endswith("]")]
    groups = list(dict.fromkeys([*headers, *(e.group for e in old.entries), *by_group, *ws_groups]))
    out = list(preamble)
    for g in groups:
        if out and out[-1].strip():
            out.append("")
        out.append(f"[{g}]")
        for line in by_group.get(g, []):
            out += comments.get(line.split()[0], [])
            out.append(line)
    old.path.write_text("\n".join(out) + "\n")
