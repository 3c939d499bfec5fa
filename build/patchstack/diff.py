"""Parse git-style unified diffs into files and hunks, keeping exact bytes and line numbers.

Everything is bytes: a line keeps its ending ('\\n', '\\r\\n' or none at end of file), so what
is compared is exactly what is in the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import StackError

_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@ ?(.*?)\r?\n?$")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their endings; only '\\n' separates lines (a lone '\\r' is content)."""
    return _LINE.findall(data)


@dataclass
class Hunk:
    index: int  # 1-based, within its file
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    section: str  # text after the second @@ (usually the enclosing function)
    lines: list[tuple[str, bytes]]  # (' ' | '-' | '+', content with its line ending)
    patch_line: int  # line of the @@ header in the patch file

    @property
    def header(self) -> str:
        def rng(start: int, count: int) -> str:
            return f"{start}" if count == 1 else f"{start},{count}"

        tail = f" {self.section}" if self.section else ""
        return f"@@ -{rng(self.old_start, self.old_count)} +{rng(self.new_start, self.new_count)} @@{tail}"

    @property
    def before(self) -> list[bytes]:
        return [t for k, t in self.lines if k != "+"]

    @property
    def after(self) -> list[bytes]:
        return [t for k, t in self.lines if k != "-"]

    @property
    def leading(self) -> int:
        n = 0
        for k, _ in self.lines:
            if k != " ":
                break
            n += 1
        return n

    @property
    def trailing(self) -> int:
        n = 0
        for k, _ in reversed(self.lines):
            if k != " ":
                break
            n += 1
        return n


@dataclass
class FilePatch:
    old_path: str | None  # None: the file is created
    new_path: str | None  # None: the file is deleted
    patch_line: int
    old_mode: str | None = None
    new_mode: str | None = None
    rename: bool = False
    copy: bool = False
    binary: bool = False
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The path the change is known by: the new one, or the old one for a deletion."""
        return self.new_path or self.old_path or ""

    @property
    def is_new(self) -> bool:
        return self.old_path is None

    @property
    def is_delete(self) -> bool:
        return self.new_path is None


@dataclass
class Patch:
    name: str
    header: str  # text before the first file (the message: why the patch exists)
    files: list[FilePatch]

    @property
    def hunk_count(self) -> int:
        return sum(len(f.hunks) for f in self.files)


def _unquote(raw: bytes) -> str:
    """A path field as git writes it: C-quoted ("a/x\\ty", octal escapes for UTF-8), maybe followed by
    a tab (git adds one after a quoted name with spaces; GNU diff puts a timestamp there)."""
    s = raw.decode("utf-8", "surrogateescape")
    if s.startswith('"'):
        end, i = None, 1
        while i < len(s):
            if s[i] == "\\":
                i += 2
                continue
            if s[i] == '"':
                end = i
                break
            i += 1
        if end is not None:
            body = s[1:end].encode("latin-1", "surrogateescape").decode("unicode_escape")
            return body.encode("latin-1").decode("utf-8", "surrogateescape")
    return s.split("\t", 1)[0].rstrip()


def _strip_prefix(path: str, where: str) -> str | None:
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        return path[2:]
    raise StackError(f"{where}: path {path!r} has no a/ or b/ prefix", hint="patches are made with git diff (-p1)")


class _Reader:
    def __init__(self, name: str, data: bytes):
        self.name = name
        self.lines = split_lines(data)
        self.i = 0

    def peek(self) -> bytes | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    def next(self) -> bytes:
        line = self.lines[self.i]
        self.i += 1
        return line

    def where(self, offset: int = 0) -> str:
        return f"{self.name}:{self.i + offset}"


def _show(line: bytes) -> str:
    """A patch line for a message: as text in quotes, undecodable bytes escaped (never b'...')."""
    return "'" + line.rstrip().decode("utf-8", "backslashreplace") + "'"


def parse(name: str, data: bytes) -> Patch:
    """Parse a patch file. Malformed input raises StackError naming the patch and the line."""
    r = _Reader(name, data)
    header: list[bytes] = []
    while (line := r.peek()) is not None and not line.startswith(b"diff --git ") and not (
        line.startswith(b"--- ") and r.i + 1 < len(r.lines) and r.lines[r.i + 1].startswith(b"+++ ")
    ):
        header.append(r.next())
    files: list[FilePatch] = []
    while r.peek() is not None:
        line = r.peek()
        if line.startswith(b"diff --git "):
            files.append(_parse_git_file(r))
        elif line.startswith(b"--- "):
            files.append(_parse_plain_file(r))
        elif line.strip() == b"" or line.startswith(b"-- "):
            r.next()  # blank lines between files; "-- " starts a format-patch signature
            if line.startswith(b"-- "):
                break
        elif line[:1] in (b" ", b"+", b"-") and files and files[-1].hunks:
            h = files[-1].hunks[-1]
            raise StackError(f"{r.where(1)}: line {_show(line)} comes after hunk {h.header} of {files[-1].path}, "
                             "whose line counts say it has ended",
                             hint="the hunk's counts were edited or the patch is damaged: regenerate it")
        else:
            raise StackError(f"{r.where(1)}: unexpected line {_show(line)} between files of the patch")
    if not files:
        raise StackError(f"{name}: no file changes found", hint="is this a unified diff made with git diff?")
    return Patch(name, b"".join(header).decode("utf-8", "replace"), files)


def _parse_git_file(r: _Reader) -> FilePatch:
    start = r.i + 1
    first = r.next().rstrip(b"\r\n")
    m = re.match(rb"^diff --git (\"(?:[^\"\\]|\\.)*\"|\S+) (\"(?:[^\"\\]|\\.)*\"|\S+)$", first)
    if not m:
        raise StackError(f"{r.name}:{start}: cannot read {_show(first)}")
    fp = FilePatch(
        old_path=_strip_prefix(_unquote(m.group(1)), f"{r.name}:{start}"),
        new_path=_strip_prefix(_unquote(m.group(2)), f"{r.name}:{start}"),
        patch_line=start,
    )
    while (line := r.peek()) is not None and not line.startswith((b"diff --git ", b"@@ ")):
        text = line.rstrip(b"\r\n")
        where = r.where(1)
        if text.startswith(b"--- "):
            r.next()
            fp.old_path = _strip_prefix(_unquote(text[4:]), where)
        elif text.startswith(b"+++ "):
            r.next()
            fp.new_path = _strip_prefix(_unquote(text[4:]), where)
        elif text.startswith(b"new file mode "):
            r.next()
            fp.old_path, fp.new_mode = None, text.split()[-1].decode()
        elif text.startswith(b"deleted file mode "):
            r.next()
            fp.new_path, fp.old_mode = None, text.split()[-1].decode()
        elif text.startswith(b"old mode "):
            r.next()
            fp.old_mode = text.split()[-1].decode()
        elif text.startswith(b"new mode "):
            r.next()
            fp.new_mode = text.split()[-1].decode()
        elif text.startswith((b"rename from ", b"copy from ")):
            r.next()
            fp.old_path = _unquote(text.split(b" ", 2)[2])
            fp.rename = text.startswith(b"rename")
            fp.copy = text.startswith(b"copy")
        elif text.startswith((b"rename to ", b"copy to ")):
            r.next()
            fp.new_path = _unquote(text.split(b" ", 2)[2])
        elif text.startswith((b"index ", b"similarity index ", b"dissimilarity index ")):
            r.next()
        elif text.startswith((b"Binary files ", b"GIT binary patch")):
            raise StackError(
                f"{where}: binary change to {fp.path} is not supported",
                hint="keep binary files out of patches; ship them beside the series instead",
            )
        elif text == b"" or text.startswith(b"-- "):
            break
        else:
            raise StackError(f"{where}: unexpected line {_show(text)} in the header of {fp.path}")
    _parse_hunks(r, fp)
    return fp


def _parse_plain_file(r: _Reader) -> FilePatch:
    start = r.i + 1
    old = _strip_prefix(_unquote(r.next()[4:].rstrip(b"\r\n")), f"{r.name}:{start}")
    new = _strip_prefix(_unquote(r.next()[4:].rstrip(b"\r\n")), f"{r.name}:{start + 1}")
    fp = FilePatch(old_path=old, new_path=new, patch_line=start)
    _parse_hunks(r, fp)
    return fp


def _parse_hunks(r: _Reader, fp: FilePatch) -> None:
    while (line := r.peek()) is not None and line.startswith(b"@@ "):
        at = r.i + 1
        m = _HUNK.match(r.next())
        if not m:
            raise StackError(f"{r.name}:{at}: malformed hunk header {_show(line)}")
        o_start, o_cnt, n_start, n_cnt = (
            int(m.group(1)),
            int(m.group(2) if m.group(2) is not None else 1),
            int(m.group(3)),
            int(m.group(4) if m.group(4) is not None else 1),
        )
        h = Hunk(len(fp.hunks) + 1, o_start, o_cnt, n_start, n_cnt, m.group(5).decode("utf-8", "replace"), [], at)
        old_left, new_left = o_cnt, n_cnt
        while old_left > 0 or new_left > 0:
            line = r.peek()
            if line is None:
                raise StackError(
                    f"{r.name}:{at}: hunk {h.header} of {fp.path} ends early: "
                    f"{old_left} old and {new_left} new lines missing",
                    hint="the patch is truncated or its line counts were edited by hand",
                )
            tag = line[:1]
            body = line[1:]
            if line in (b"\n", b"\r\n"):  # an empty context line whose leading space was stripped
                tag, body = b" ", line
            if tag == b" " and old_left > 0 and new_left > 0:
                old_left, new_left = old_left - 1, new_left - 1
            elif tag == b"-" and old_left > 0:
                old_left -= 1
            elif tag == b"+" and new_left > 0:
                new_left -= 1
            elif tag == b"\\":
                r.next()
                _strip_newline(h, r.name, r.i)
                continue
            else:
                raise StackError(
                    f"{r.name}:{r.i + 1}: line {_show(line)} does not fit hunk {h.header} of {fp.path} "
                    f"({old_left} old and {new_left} new lines still expected)",
                    hint="the hunk's line counts do not match its body; regenerate the patch",
                )
            r.next()
            h.lines.append((tag.decode(), body))
        if (nxt := r.peek()) is not None and nxt.startswith(b"\\"):
            r.next()
            _strip_newline(h, r.name, r.i)
        fp.hunks.append(h)
    if not fp.hunks and not (fp.rename or fp.copy or fp.is_new or fp.is_delete or fp.old_mode or fp.new_mode):
        raise StackError(f"{r.name}:{fp.patch_line}: {fp.path} has no hunks")


def _strip_newline(h: Hunk, name: str, lineno: int) -> None:
    if not h.lines:
        raise StackError(f"{name}:{lineno}: '\\ No newline at end of file' with no line before it")
    tag, text = h.lines[-1]
    h.lines[-1] = (tag, text[:-1] if text.endswith(b"\n") else text)
