"""The pins manifest (patches/pins.toml) and the patch series beside it."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StackError

SHA1 = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Sdist:
    url: str
    sha256: str
    prefix: str  # folder of the repository the archive's top folder maps to
    commit: str | None  # the commit the tool makes from the archive (deterministic); None: not yet known


@dataclass(frozen=True)
class Upstream:
    name: str
    version: str
    commit: str
    git: str
    image_path: str
    sdist: Sdist | None = None

    @property
    def env_git(self) -> str:
        return f"UPSTREAM_{self.name.upper()}_GIT"

    @property
    def env_sdist(self) -> str:
        return f"UPSTREAM_{self.name.upper()}_SDIST"

    def git_url(self) -> tuple[str, str]:
        """The git location to fetch from and where that choice came from."""
        override = os.environ.get(self.env_git)
        if override:
            return override, self.env_git
        return self.git, "patches/pins.toml"

    @property
    def accepted_commits(self) -> set[str]:
        """Commits a target tree may be at: the pin, or the commit made from the pinned sdist."""
        return {self.commit} | ({self.sdist.commit} if self.sdist else set())

    def sdist_url(self) -> str | None:
        if self.sdist is None:
            return None
        return os.environ.get(self.env_sdist) or self.sdist.url


@dataclass
class Manifest:
    root: Path  # the repository root (parent of patches/)
    upstreams: dict[str, Upstream]
    groups: list[str]
    optional_groups: list[str] = field(default_factory=list)

    @property
    def patches_dir(self) -> Path:
        return self.root / "patches"

    def upstream(self, name: str) -> Upstream:
        try:
            return self.upstreams[name]
        except KeyError:
            known = ", ".join(sorted(self.upstreams))
            raise StackError(
                f"unknown upstream {name!r}",
                hint=f"use one of: {known} (declared in patches/pins.toml)",
            ) from None

    def series_dir(self, name: str) -> Path:
        up = self.upstream(name)
        return self.patches_dir / name / up.version

    def select_groups(self, extra: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Groups to apply, in order: every non-optional group plus the optional ones asked for."""
        unknown = set(extra) - set(self.optional_groups)
        if unknown:
            raise StackError(
                f"unknown optional group(s): {', '.join(sorted(unknown))}",
                hint=f"optional groups in patches/pins.toml: {', '.join(self.optional_groups) or 'none'}",
            )
        return [g for g in self.groups if g not in self.optional_groups or g in extra]


def find_root(start: Path | None = None) -> Path:
    """The repository root: $PATCHSTACK_ROOT, or the first parent holding patches/pins.toml."""
    env = os.environ.get("PATCHSTACK_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "patches" / "pins.toml").is_file():
            return d
    raise StackError(
        "no patches/pins.toml found in this folder or any parent",
        hint="run the tool from the stack's repository, or set PATCHSTACK_ROOT",
    )


def load(root: Path | None = None) -> Manifest:
    root = root or find_root()
    path = root / "patches" / "pins.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"{path}: missing", hint="the pins manifest must exist") from None
    except tomllib.TOMLDecodeError as e:
        raise StackError(f"{path}: not valid TOML: {e}") from None

    ups: dict[str, Upstream] = {}
    for name, u in (data.get("upstream") or {}).items():
        where = f"{path}: [upstream.{name}]"
        for key in ("version", "commit", "git", "image_path"):
            if not isinstance(u.get(key), str) or not u[key]:
                raise StackError(f"{where}: missing string key {key!r}")
        if not SHA1.match(u["commit"]):
            raise StackError(f"{where}: commit {u['commit']!r} is not a full 40-hex-digit SHA-1")
        sd = None
        if "sdist" in u:
            s = u["sdist"]
            if not SHA256.match(str(s.get("sha256", ""))):
                raise StackError(f"{where}.sdist: sha256 must be 64 lowercase hex digits")
            if not SHA1.match(str(s.get("commit", ""))):
                raise StackError(f"{where}.sdist: commit must be the full SHA-1 the tool makes from the archive")
            sd = Sdist(url=s["url"], sha256=s["sha256"], prefix=s.get("prefix", "").strip("/"), commit=s["commit"])
        ups[name] = Upstream(name, u["version"], u["commit"], u["git"], u["image_path"], sd)
    if not ups:
        raise StackError(f"{path}: no [upstream.*] tables")
    groups = data.get("groups", {})
    order = groups.get("order", ["base"])
    optional = groups.get("optional", [])
    if "base" not in order:
        raise StackError(f"{path}: [groups] order must contain 'base'")
    return Manifest(root=root, upstreams=ups, groups=list(order), optional_groups=list(optional))
