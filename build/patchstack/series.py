"""The order file of a patch series: plain data a person reads and reorders.

    [group]
    NAME.patch                      a patch of ours, in the series folder
    UPSTREAM:PATH sha256=HEX        a patch inside another pinned upstream's tree

Blank lines and lines starting with '#' are ignored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StackError
from .manifest import SHA256, Manifest

SERIES_FILE = "series"
_GROUP = re.compile(r"^\[([A-Za-z0-9_-]+)\]$")
_EXTERNAL = re.compile(r"^([a-z][a-z0-9_-]*):(\S+)\s+sha256=(\S+)$")


@dataclass(frozen=True)
class Entry:
    group: str
    name: str  # as written in the series file: "x.patch" or "slime:docker/patch/..."
    line: int  # line number in the series file
    series: Path  # the series file
    external_upstream: str | None = None
    external_path: str | None = None
    sha256: str | None = None

    @property
    def is_external(self) -> bool:
        return self.external_upstream is not None

    @property
    def local_path(self) -> Path:
        return self.series.parent / self.name

    def where(self) -> str:
        return f"{self.series}:{self.line}"


@dataclass
class Series:
    upstream: str
    path: Path  # the series file
    entries: list[Entry]

    def selected(self, groups: list[str]) -> list[Entry]:
        """Entries of the given groups, in group order, each group in file order."""
        return [e for g in groups for e in self.entries if e.group == g]


def parse(upstream: str, path: Path, known_groups: list[str]) -> Series:
    if path.is_dir():
        raise StackError(f"{path}: the series file for {upstream} is a directory, not a file",
                         hint="patches/<upstream>/<version>/series is a text file listing the patches "
                              "(see docs/tool.md)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StackError(
            f"{path}: the series file for {upstream} is missing",
            hint="each upstream needs patches/<upstream>/<version>/series (see docs/tool.md)",
        ) from None
    entries: list[Entry] = []
    group: str | None = None
    seen: dict[str, int] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{no}"
        m = _GROUP.match(line)
        if m:
            group = m.group(1)
            if group not in known_groups:
                raise StackError(
                    f"{where}: unknown group [{group}]",
                    hint=f"groups are declared in patches/pins.toml: {', '.join(known_groups)}",
                )
            continue
        if group is None:
            raise StackError(f"{where}: entry {line!r} comes before any [group] line", hint="start with [base]")
        m = _EXTERNAL.match(line)
        if m:
            up, rel, digest = m.groups()
            if not SHA256.match(digest):
                raise StackError(f"{where}: sha256 of {up}:{rel} must be 64 lowercase hex digits")
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise StackError(f"{where}: {rel!r} must be a relative path inside {up}'s tree")
            entry = Entry(group, f"{up}:{rel}", no, path, up, rel, digest)
        elif ":" in line or " " in line:
            raise StackError(
                f"{where}: cannot read entry {line!r}",
                hint="an entry is NAME.patch, or UPSTREAM:PATH sha256=HEX for a patch in another upstream",
            )
        else:
            if "/" in line or not line.endswith(".patch"):
                raise StackError(f"{where}: {line!r} must be a NAME.patch file in {path.parent}")
            entry = Entry(group, line, no, path)
        if entry.name in seen:
            raise StackError(f"{where}: {entry.name} is listed twice (first at line {seen[entry.name]})")
        seen[entry.name] = no
        entries.append(entry)
    return Series(upstream, path, entries)


def load(manifest: Manifest, upstream: str) -> Series:
    path = manifest.series_dir(upstream) / SERIES_FILE
    s = parse(upstream, path, manifest.groups)
    for e in s.entries:
        if e.is_external:
            manifest.upstream(e.external_upstream)  # unknown upstream names fail here, with the list
    return s


def read_local(entry: Entry) -> bytes:
    """The bytes of a patch of ours; a listed file that is missing, or a directory, is an error naming
    the entry."""
    if entry.local_path.is_dir():
        raise StackError(
            f"{entry.where()}: {entry.name} is listed but {entry.local_path} is a directory, not a patch file",
            hint="list the .patch files themselves, one per line, or rename the directory",
        )
    try:
        return entry.local_path.read_bytes()
    except FileNotFoundError:
        raise StackError(
            f"{entry.where()}: {entry.name} is listed but {entry.local_path} does not exist",
            hint="add the file, or remove its line from the series",
        ) from None


def verify_external(entry: Entry, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise StackError(
            f"{entry.where()}: {entry.name} has sha256 {digest}, the series expects {entry.sha256}",
            hint=f"the file in {entry.external_upstream}'s tree changed; if the new content is wanted, "
            "review it and update the sha256 in the series (never copy the file here)",
        )
    return data
