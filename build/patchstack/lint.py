"""Lint the series folders and our own patch files (external patches are checked by sha256 only).

A patch of ours must:
- parse as a unified diff, both with unidiff (an independent parser) and with ours;
- name files by relative a/ b/ paths only (no absolute path, no '..');
- carry no conflict markers and no CRLF line endings (unless the file it patches uses them:
  then the header says "Line-Endings: crlf");
- say why it exists in its header: a "Subject:" line and an "Upstream-Status:" line that is
  one of
      Upstream-Status: temporary <link to the upstream change it waits for>
      Upstream-Status: environment <why only this stack needs it>
      Upstream-Status: incompatible <why upstream would not take it>
- say whose code it changes, under which license: a "License:" line
      License: Apache-2.0; this change modifies <project> (<repository>, <its license>), whose files
      stay under that license (NOTICE)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import diff, series
from .errors import StackError
from .manifest import Manifest

STATUS = re.compile(r"^Upstream-Status:[ \t]*(\S+)[ \t]*(.*)$", re.M)
LICENSE = re.compile(r"^License:[ \t]*Apache-2\.0\b.*\bmodifies\b\s*\S", re.M)
KINDS = ("temporary", "environment", "incompatible")
MARKERS = (b"<<<<<<< ", b">>>>>>> ", b"=======\n", b"|||||||")


@dataclass
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def lint_patch(path: Path, data: bytes) -> list[Problem]:
    import unidiff  # only lint needs it: check and apply run on the standard library alone (in the image)

    where = str(path)
    out: list[Problem] = []
    try:
        unidiff.PatchSet(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        out.append(Problem(where, f"not UTF-8 text ({e})"))
    except unidiff.UnidiffParseError as e:
        out.append(Problem(where, f"not a valid unified diff (unidiff: {e})"))
    try:
        p = diff.parse(path.name, data)
    except StackError as e:
        out.append(Problem(where, e.message))
        return out
    for f in p.files:
        for name in (f.old_path, f.new_path):
            if name is None:
                continue
            if name.startswith("/") or ".." in Path(name).parts or "\\" in name:
                out.append(Problem(f"{where}:{f.patch_line}", f"path {name!r} must be relative, inside the tree"))
    crlf_ok = re.search(r"^Line-Endings:\s*crlf\s*$", p.header, re.M | re.I) is not None
    for no, line in enumerate(diff.split_lines(data), 1):
        body = line[1:] if line[:1] in (b"+", b" ", b"-") else b""
        if line[:1] == b"+" and body.startswith(MARKERS):
            out.append(Problem(f"{where}:{no}", "conflict marker in an added line"))
        if line.endswith(b"\r\n") and not crlf_ok:
            out.append(Problem(f"{where}:{no}", "CRLF line ending (say 'Line-Endings: crlf' in the header "
                               "if the patched file really uses them)"))
            break
    if not re.search(r"^Subject:\s*\S", p.header, re.M):
        out.append(Problem(where, "the header has no 'Subject:' line saying what the patch does"))
    m = STATUS.search(p.header)
    if not m:
        out.append(Problem(where, "the header has no 'Upstream-Status:' line saying why the patch exists "
                           f"({' | '.join(KINDS)}, then the reason)"))
    elif m.group(1) not in KINDS:
        out.append(Problem(where, f"Upstream-Status {m.group(1)!r} is not one of {', '.join(KINDS)}"))
    elif not m.group(2).strip():
        out.append(Problem(where, f"Upstream-Status: {m.group(1)} needs a reason (for temporary: the upstream "
                           "change it waits for)"))
    if not LICENSE.search(p.header):
        out.append(Problem(where, "the header has no 'License:' line: 'License: Apache-2.0; this change modifies "
                           "<project> (<repository>, <its license>), whose files stay under that license (NOTICE)'"))
    return out


def lint(manifest: Manifest) -> list[Problem]:
    out: list[Problem] = []
    for name in manifest.upstreams:
        base = manifest.patches_dir / name
        pinned = manifest.series_dir(name)
        folders = sorted({pinned, *(p.parent for p in base.glob("*/" + series.SERIES_FILE))})
        for folder in folders:
            out += _lint_folder(manifest, name, folder)
    return out


def _lint_folder(manifest: Manifest, upstream: str, folder: Path) -> list[Problem]:
    out: list[Problem] = []
    try:
        s = series.parse(upstream, folder / series.SERIES_FILE, manifest.groups)
    except StackError as e:
        return [Problem(str(folder / series.SERIES_FILE), e.message)]
    listed = set()
    for e in s.entries:
        if e.is_external:
            if e.external_upstream not in manifest.upstreams:
                out.append(Problem(e.where(), f"unknown upstream {e.external_upstream!r}"))
            continue
        listed.add(e.name)
        if not e.local_path.is_file():
            out.append(Problem(e.where(), f"{e.name} is listed but there is no such file in {folder}"))
            continue
        out += lint_patch(e.local_path, e.local_path.read_bytes())
    for f in sorted(folder.glob("*.patch")):
        if f.name not in listed:
            out.append(Problem(str(f), f"not listed in {folder / series.SERIES_FILE}: add it to a group or delete it"))
    others = [p for p in folder.iterdir() if p.name != series.SERIES_FILE and p.suffix != ".patch"]
    for p in others:
        out.append(Problem(str(p), "only a series file and .patch files belong in a series folder"))
    return out
