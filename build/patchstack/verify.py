"""Check that a Python file the rebase wrote still makes sense, and say which hunk broke it.

A hunk placed by matching lines can land in code that no longer means what it meant. Three checks
run on every changed Python file, each against what the file was before (the old patched file and
upstream's new file), so that only what the rebase brought in counts:

- it compiles (a repeated keyword argument is a compile error too);
- no name is used that nothing defines (scopes as Python resolves them, by `symtable`), unless the
  same name was already undefined in the old patched file or in upstream's new file;
- no attribute is used that upstream took away: `obj.attr` where the old file used that very pair
  (`self.topk_p`) and upstream's new file has no such pair any more, or where the attribute's name
  occurs in the old upstream tree and nowhere in the new one (a method upstream removed or renamed).

Every problem names its line; the caller maps lines to hunks. A file that cannot be read as
Python (it does not compile before the rebase either) is not checked, and that is said.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
import symtable
from dataclasses import dataclass, field

_MODULE_NAMES = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__", "__path__",
                 "__builtins__", "__annotations__", "__dict__", "__class__", "__debug__", "__qualname__",
                 "__module__"}
_BUILTINS = set(dir(builtins)) | _MODULE_NAMES


@dataclass
class Problem:
    line: int  # 1-based line of the checked text
    message: str


@dataclass
class Facts:
    """What a version of a file defines and uses, for comparisons."""

    compiles: bool
    error: Problem | None = None
    undefined: dict[str, list[int]] = field(default_factory=dict)  # name -> lines where it is loaded
    star_import: bool = False
    pairs: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (name, attr) -> lines (any use)
    stored_pairs: set[tuple[str, str]] = field(default_factory=set)
    defined: set[str] = field(default_factory=set)  # every def/class name and assigned name, any scope
    attrs: dict[str, list[int]] = field(default_factory=dict)  # attribute name -> lines where it is loaded
    imported: set[str] = field(default_factory=set)  # names bound by import statements (modules and the like)
    # the structural findings (structure() below), each keyed so that the same finding in another
    # version of the file is recognised: key -> lines
    early_use: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (function, name)
    unawaited: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (function, async callee)
    duplicates: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (class or module, name)
    chains: dict[tuple[str, ...], list[int]] = field(default_factory=dict)  # ("self", "x", "y") -> lines
    registered: dict[str, list[int]] = field(default_factory=dict)  # names in EntryClass


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=16)
def facts(data: bytes, name: str = "<file>") -> Facts:
    """(Memoised: the result is shared, do not change it.)"""
    src = _text(data)
    try:
        code_tree = ast.parse(src, name)
        compile(code_tree, name, "exec", dont_inherit=True)
        table = symtable.symtable(src, name, "exec")
    except SyntaxError as e:
        return Facts(False, Problem(e.lineno or 1, f"does not compile: {e.msg}"))
    except (ValueError, RecursionError) as e:
        return Facts(False, Problem(1, f"cannot be read as Python: {e}"))
    f = Facts(True)
    loads: dict[str, list[int]] = {}
    for node in ast.walk(code_tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loads.setdefault(node.id, []).append(node.lineno)
            else:
                f.defined.add(node.id)
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                key = (node.value.id, node.attr)
                f.pairs.setdefault(key, []).append(node.lineno)
                if isinstance(node.ctx, (ast.Store, ast.Del)):
                    f.stored_pairs.add(key)
            if isinstance(node.ctx, ast.Load):
                f.attrs.setdefault(node.attr, []).append(node.lineno)
            else:
                f.defined.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            f.defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            f.imported |= {a.asname or a.name.split(".")[0] for a in node.names}
            f.star_import |= any(a.name == "*" for a in node.names)
    f.undefined = {n: loads.get(n, []) for n in _undefined(table)}
    structure(code_tree, f)
    return f


# ------------------------------------------------------------------ structural findings

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
# decorators under which a second definition of a name is the point, not a mistake
_REDEFINES = re.compile(r"(overload|\.setter|\.getter|\.deleter|\.register|\.overload)\b")


def _own_nodes(fn: ast.AST):
    """The nodes of a function's own scope (not of functions, classes or comprehensions inside it),
    each with the loops (innermost last) it sits in."""
    todo = [(child, ()) for child in ast.iter_child_nodes(fn)]
    while todo:
        node, loops = todo.pop()
        yield node, loops
        if isinstance(node, _SCOPES):
            continue
        inner = loops + (node,) if isinstance(node, _LOOPS) else loops
        todo += [(child, inner) for child in ast.iter_child_nodes(node)]


def _stored_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return [node.id]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.ExceptHandler) and node.name:
        return [node.name]
    return []


def structure(tree: ast.Module, f: Facts) -> None:
    """What a merge that moves, drops or doubles statements leaves behind:

    - `early_use`: in a function, a name the function assigns, read on a line before its first
      assignment there and not inside a loop that also assigns it (an UnboundLocalError waiting);
    - `unawaited`: a call, as a statement of its own, of an `async def` this file defines (by name,
      or as `self.`/`cls.` method): the coroutine is made and dropped;
    - `duplicates`: a name defined twice (def or class) in one class or module body, other than
      overloads, property setters and the like;
    - `chains`: attribute chains of three or more names (`self.x.y`), for the removed-chain check;
    - `registered`: the names in a model file's `EntryClass` (SGLang's registry asserts on a name
      registered twice)."""
    async_names = {n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)}

    def visit(node: ast.AST, qual: str) -> None:
        body = getattr(node, "body", None)
        if isinstance(body, list) and isinstance(node, (ast.Module, ast.ClassDef)):
            seen: dict[str, int] = {}
            for st in body:
                if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    decos = " ".join(ast.unparse(d) for d in getattr(st, "decorator_list", []))
                    if st.name in seen and not _REDEFINES.search(decos):
                        f.duplicates.setdefault((qual, st.name), [seen[st.name]]).append(st.lineno)
                    seen.setdefault(st.name, st.lineno)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _function(node, qual, async_names, f)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{qual}.{child.name}" if qual else child.name)
            else:
                visit(child, qual)

    visit(tree, "")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            chain, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name):
                f.chains.setdefault((v.id, *reversed(chain)), []).append(node.lineno)
    for st in tree.body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "EntryClass" for t in st.targets):
            items = st.value.elts if isinstance(st.value, (ast.List, ast.Tuple)) else [st.value]
            for it in items:
                if isinstance(it, ast.Name):
                    f.registered.setdefault(it.id, []).append(it.lineno)


def _function(fn: ast.AST, qual: str, async_names: set[str], f: Facts) -> None:
    params = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}  # type: ignore[attr-defined]
    declared: set[str] = set()
    stores: dict[str, list[tuple[int, tuple]]] = {}
    loads: dict[str, list[tuple[int, tuple]]] = {}
    for node, loops in _own_nodes(fn):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared |= set(node.names)
        for n in _stored_names(node):
            stores.setdefault(n, []).append((node.lineno, loops))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            loads.setdefault(node.id, []).append((node.lineno, loops))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            callee = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in ("self", "cls") else None)
            if callee in async_names:
                f.unawaited.setdefault((qual, callee), []).append(node.lineno)
    for name, at in stores.items():
        if name in params or name in declared or name not in loads:
            continue
        first = min(line for line, _ in at)
        store_loops = {id(lp) for _, lps in at for lp in lps}
        early = [line for line, lps in loads[name] if line < first and not any(id(lp) in store_loops for lp in lps)]
        if early:
            f.early_use[(qual, name)] = sorted(set(early))


def _undefined(top: symtable.SymbolTable) -> set[str]:
    """Names referenced somewhere that resolve to the module scope and are bound nowhere there."""
    module: set[str] = set()
    for s in top.get_symbols():
        if s.is_assigned() or s.is_imported() or s.is_namespace():
            module.add(s.get_name())
    missing: set[str] = set()

    def visit(t: symtable.SymbolTable) -> None:
        for s in t.get_symbols():
            if t.get_type() != "module" and s.is_declared_global() and s.is_assigned():
                module.add(s.get_name())
        for child in t.get_children():
            visit(child)

    def collect(t: symtable.SymbolTable) -> None:
        for s in t.get_symbols():
            if not s.is_referenced():
                continue
            n = s.get_name()
            if t.get_type() == "module":
                resolves_globally = not (s.is_assigned() or s.is_imported() or s.is_namespace())
            else:
                resolves_globally = s.is_global()
            if resolves_globally and n not in module and n not in _BUILTINS:
                missing.add(n)
        for child in t.get_children():
            collect(child)

    visit(top)
    collect(top)
    return missing


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def problems(result: bytes, old_patched: bytes, old_upstream: bytes, new_upstream: bytes, *,
             removed_upstream=None, checked: set[int] | None = None, excused: set[str] = frozenset(),
             name: str = "<file>", registered_elsewhere=None) -> tuple[list[Problem], str]:
    """Problems of `result` that neither the old patched file nor upstream's new file had.

    `old_upstream` (the old file before the patch) tells what upstream took away. `removed_upstream
    (words)` says which attribute names upstream's whole tree lost (optional). `checked`: the lines
    (1-based) the rebase placed; attribute checks look only at those. `excused`: names that hunks
    left in conflict bring back once resolved. `registered_elsewhere(names)`: which of these model
    class names another file of upstream's new tree registers in its EntryClass, and where
    (optional). Returns the problems and a note on what could not be checked."""
    now = facts(result, name)
    earlier = [facts(b, name) for b in (old_patched, new_upstream)]
    if not all(e.compiles for e in earlier):
        return [], "not checked: the old patched file or upstream's new one does not compile either"
    if not now.compiles:
        return [now.error], ""  # type: ignore[list-item]
    old_up = facts(old_upstream, name)
    out: list[Problem] = []
    note = ""
    if now.star_import or any(e.star_import for e in earlier):
        note = "undefined names not checked: the file has a star import"
    else:
        for n, lines in sorted(now.undefined.items()):
            if any(n in e.undefined for e in earlier) or n in excused:
                continue
            for ln in sorted(set(lines)) or [1]:
                out.append(Problem(ln, f"uses the name `{n}`, which nothing in the file defines any more"))
    new_up = earlier[-1]
    modules = now.imported
    in_placed = (lambda ln: True) if checked is None else (lambda ln: ln in checked)
    for (obj, attr), lines in sorted(now.pairs.items()):
        here = [ln for ln in lines if in_placed(ln)]
        if not here or obj in modules or attr in excused or (obj, attr) in now.stored_pairs \
                or attr in now.defined - new_up.defined:
            continue
        if old_up.compiles and (obj, attr) in old_up.pairs and (obj, attr) not in new_up.pairs \
                and any(o == obj for o, _ in new_up.pairs) and _gone_from(attr, new_up):
            moved_to = sorted(o for o, a in new_up.pairs if a == attr)
            where = f" (it has {', '.join(f'{o}.{attr}' for o in moved_to)})" if moved_to else ""
            for ln in here:
                out.append(Problem(ln, f"uses `{obj}.{attr}`, which upstream's new file no longer has{where}"))
    out += _structural(now, earlier, old_up, in_placed, registered_elsewhere)
    if removed_upstream is not None:
        candidates = {a for a, lines in now.attrs.items() if any(in_placed(ln) for ln in lines)}
        candidates -= now.defined - new_up.defined  # defined by the patch itself in this file
        candidates -= excused
        candidates = {a for a in candidates if a not in new_up.attrs and a not in new_up.defined}
        for attr in sorted(removed_upstream(candidates) if candidates else ()):
            for ln in sorted({ln for ln in now.attrs[attr] if in_placed(ln)}):
                out.append(Problem(ln, f"uses `.{attr}`, which upstream's new version defines nowhere "
                                       "(its old version did)"))
    return out, note


def _structural(now: Facts, earlier: list[Facts], old_up: Facts, in_placed, registered_elsewhere) -> list[Problem]:
    """The findings of structure() that neither the old patched file nor upstream's new file has."""
    out: list[Problem] = []
    for (fn, n), lines in sorted(now.early_use.items()):
        if not any((fn, n) in e.early_use for e in earlier):
            out += [Problem(ln, f"reads `{n}` before {fn or 'the module'} assigns it (UnboundLocalError)")
                    for ln in lines]
    for (fn, callee), lines in sorted(now.unawaited.items()):
        if not any((fn, callee) in e.unawaited for e in earlier):
            out += [Problem(ln, f"calls `{callee}`, an async def, without awaiting it: the coroutine is dropped")
                    for ln in lines]
    for (scope, n), lines in sorted(now.duplicates.items()):
        if not any((scope, n) in e.duplicates for e in earlier):
            out.append(Problem(lines[-1], f"defines `{n}` a second time in {scope or 'the module'} (first at line "
                                          f"{lines[0]}): the later one replaces the first"))
    for n, lines in sorted(now.registered.items()):
        if len(lines) > 1 and not any(len(e.registered.get(n, [])) > 1 for e in earlier):
            out.append(Problem(lines[-1], f"registers `{n}` twice in EntryClass"))
    if registered_elsewhere is not None and now.registered:
        new_up = earlier[-1]
        for n, where in sorted(registered_elsewhere(set(now.registered)).items()):
            if n not in new_up.registered:
                out.append(Problem(now.registered[n][0], f"registers `{n}`, which upstream's new tree already registers "
                                                          f"in {where}: the model registry rejects a name twice"))
    new_up = earlier[-1]
    for chain, lines in sorted(now.chains.items()):
        here = [ln for ln in lines if in_placed(ln)]
        if here and chain in old_up.chains and chain not in new_up.chains and chain[-1] not in new_up.defined \
                and chain[:2] in new_up.pairs:
            out += [Problem(ln, f"uses `{'.'.join(chain)}`, which upstream's new file no longer has") for ln in here]
    return out


def _gone_from(attr: str, f: Facts) -> bool:
    """Whether `attr` went away from the new file: true unless the file still defines it (a def, a
    field, an assignment) and uses it through no object at all (then `self.attr` still exists, it
    is only no longer called here)."""
    return attr not in f.defined or any(a == attr for _, a in f.pairs)


def used_words(lines: list[bytes]) -> set[str]:
    return set(_WORD.findall(_text(b"".join(lines))))


_IMPORT = re.compile(r"^\s*(?:from\s+\S+\s+)?import\s+(.*)$")
_DEF = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)")
_FOR = re.compile(r"^\s*(?:async\s+)?for\s+(.+?)\s+in\s")
_AS = re.compile(r"\bas\s+([A-Za-z_]\w*)")
_LHS = re.compile(r"^\s*([^=()#'\"]+?)\s*(?::[^=]*)?(?:[-+*/%&|^@]|//|>>|<<|\*\*)?=(?!=)")


def bound_words(lines: list[bytes], attributes: bool = True, imports: bool = True) -> set[str]:
    """Names that lines bind, read line by line (they need not parse as a whole): imports, def and
    class, assignment targets (`a, *b = ...`, `self.x = ...` binds x), for and with/except targets,
    and lone `name,` lines (members of a parenthesised import list). Without `attributes`, an
    assignment to `obj.x` binds nothing; without `imports`, an import binds nothing (it binds a name
    only if its module defines it)."""
    out: set[str] = set()
    for raw in lines:
        line = _text(raw).rstrip("\n")
        if not imports and (_IMPORT.match(line) or re.fullmatch(r"\s*([A-Za-z_]\w*)\s*,?\s*\)?\s*", line)):
            continue
        if m := _IMPORT.match(line):
            for part in m.group(1).strip("()\\ ").split(","):
                bits = part.split()
                if bits:
                    out.add(bits[-1] if len(bits) == 3 and bits[1] == "as" else bits[0].split(".")[0])
        if m := _DEF.match(line):
            out.add(m.group(1))
        if m := _FOR.match(line):
            out |= set(_WORD.findall(m.group(1)))
        out |= set(_AS.findall(line))
        if m := _LHS.match(line):
            out |= {w.rsplit(".", 1)[-1] for w in re.findall(r"[A-Za-z_][\w.]*", m.group(1))
                    if attributes or "." not in w}
        if m := re.fullmatch(r"\s*([A-Za-z_]\w*)\s*,?\s*", line):
            out.add(m.group(1))
        if m := re.match(r"^\s*([A-Za-z_]\w*)\s*:\s*\S", line):  # an annotated field: `name: Type`
            out.add(m.group(1))
    return out
