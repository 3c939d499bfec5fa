"""The rules `rebase` places hunks by, one synthetic case each, built like the real hunks that an
earlier version placed wrongly (issue: `make rebase` never writes wrong code silently).

Each case: an old file, the patch written against it, upstream's new file; the hunk goes through
rebase.rebase_patch as in a real rebase, and the test reads what it wrote."""

from __future__ import annotations

import ast
import re
import textwrap

from conftest import file_patch

from patchstack import diff, merge, rebase, verify
from patchstack.trees import EmptyTree, Overlay

LABELS = {"new_label": "upstream new", "old_label": "upstream old", "patch_label": "the patch"}


def _tree(files: dict[str, str]) -> Overlay:
    t = Overlay(EmptyTree())
    t.update({p: ("100644", text.encode()) for p, text in files.items()})
    return t


def _rebase(tmp_path, path: str, old: str, patched: str, new: str, others: dict[str, str] | None = None):
    """Rows and the written file for a one-file patch moved from `old` to `new`."""
    patch = diff.parse("p.patch", file_patch(tmp_path, path, old, patched).encode())
    rows, changes, conflicted = rebase.rebase_patch(patch, _tree({path: old, **(others or {})}),
                                                    _tree({path: new, **(others or {})}), {}, LABELS)
    return rows, changes[path][1].decode() if path in changes else new, conflicted


def _qualify(monkeypatch, *rules: str) -> None:
    """Let these rules place hunks where git's own merge conflicts (as the benchmarks would)."""
    monkeypatch.setattr(rebase, "QUALIFIED", rebase.QUALIFIED | set(rules))


def _sides(text: str) -> list[tuple[str, str, str]]:
    """(upstream, base, patch) of every conflict region of a file."""
    return re.findall(r"<<<<<<< [^\n]*\n(.*?)\|\|\|\|\|\|\| [^\n]*\n(.*?)=======\n(.*?)>>>>>>> [^\n]*\n", text, re.S)


# ------------------------------------------------------------------ anchors


def test_fuzzy_anchor_on_a_bracket_and_a_blank_line_is_refused(tmp_path):
    # Like tokenizer_manager.py at old line 1510: with the context dropped, only `)` and a blank
    # line were left to say where the added lines go.
    old = ["def f():\n", "    record_first(\n", "        value,\n", "    )\n", "\n", "    finish_up()\n",
           "    more_work()\n"]
    patched = old[:4] + ["    record_second(value)\n"] + old[4:]
    new = ["def f():\n", "    if other:\n", "        rewritten(\n", "            value,\n", "    )\n", "\n",
           "    finish_differently()\n", "    more_changes()\n"]
    h = diff.parse("p", file_patch(tmp_path, "m.py", "".join(old), "".join(patched)).encode()).files[0].hunks[0]
    no_alignment = [None] * len(old)  # upstream rewrote all of it: only matching lines could place the hunk
    pl = merge.place(h, [x.encode() for x in old], [x.encode() for x in new], no_alignment, 0)
    assert pl.status == merge.CONFLICT
    assert "only blank lines, brackets" in pl.reason


def test_fuzzy_anchor_on_a_meaningful_line_still_places(tmp_path):
    old = ["def f():\n", "    record_first(\n", "        value,\n", "    )\n", "    finish_up()\n", "    more()\n",
           "    end()\n"]
    patched = old[:4] + ["    record_second(value)\n"] + old[4:]
    new = ["def f():\n", "    record_first(\n", "        value,\n", "    )\n", "    finish_up()\n", "    other()\n",
           "    end2()\n"]
    h = diff.parse("p", file_patch(tmp_path, "m.py", "".join(old), "".join(patched)).encode()).files[0].hunks[0]
    pl = merge.place(h, [x.encode() for x in old], [x.encode() for x in new], [None] * len(old), 0)
    assert pl.status == merge.FUZZY and b"    record_second(value)\n" in pl.lines


# ------------------------------------------------------------------ verification


def test_a_lost_import_is_caught(tmp_path):
    # Like disaggregation/prefill.py at old line 20: upstream deleted `import time`, the patch's
    # added lines still call time.perf_counter(). git's own merge places the hunk cleanly (upstream
    # changed nothing near it): only the verification sees it.
    old = "import os\nimport time\nimport json\nimport re\n\n\ndef work():\n    a = 1\n    b = 2\n    return json.dumps(a)\n"
    patched = old.replace("    b = 2\n", "    b = 2\n    started = time.perf_counter()\n")
    new = "import abc\nimport os\nimport json\nimport re\n\n\ndef work():\n    a = 1\n    b = 2\n    return json.dumps(a)\n"
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, patched, new)
    user = rows[0]
    assert user["status"] == "conflict" and "`time`" in user["reason"], rows
    assert conflicted == ["m.py"]
    assert "started = time.perf_counter()" not in text.split("<<<<<<<")[0]


def test_a_repeated_keyword_argument_is_caught(tmp_path):
    # Like deepseek_v2.py at old line 2735: upstream already passes the keyword the hunk adds.
    old = "x = make(\n    alpha=1,\n    beta=2,\n)\nprint(x)\n"
    patched = "x = make(\n    alpha=1,\n    beta=2,\n    gamma=3,\n)\nprint(x)\n"
    new = "y = 0\nx = make_new(\n    gamma=3,\n    alpha=1,\n    beta=2,\n)\nprint(x, y)\n"
    rows, text, _ = _rebase(tmp_path, "m.py", old, patched, new)
    assert rows[0]["status"] == "conflict", rows
    assert "keyword argument repeated" in rows[0]["reason"]
    problems, _ = verify.problems(b"f(a=1, a=2)\n", b"f(a=1)\n", b"f(a=1)\n", b"f(a=1)\n")
    assert problems and "keyword argument repeated" in problems[0].message


def test_an_attribute_upstream_moved_is_caught(tmp_path):
    # Like eagle_draft_cuda_graph_runner.py at old line 341: the buffers moved from self.x to
    # buffers.x. The hunk is far from upstream's change, so git's own merge places it cleanly.
    old = textwrap.dedent("""\
        class Runner:
            def __init__(self):
                self.topk_p = make()
                self.positions = make()

            def replay(self, bs):
                count = bs
                total = count + 1
                return total
        """)
    patched = old.replace("        total = count + 1\n", "        total = count + 1\n        self.topk_p.zero_()\n")
    new = old.replace("        self.topk_p = make()\n        self.positions = make()\n",
                      "        self.buffers = Buffers(topk_p=make(), positions=make())\n        self.positions = self.buffers.positions\n")
    rows, text, _ = _rebase(tmp_path, "m.py", old, patched, new, {"other.py": "def make():\n    pass\n"})
    assert rows[0]["status"] == "conflict", rows
    assert "self.topk_p" in rows[0]["reason"]


def test_assignments_to_names_upstream_assigns_at_the_same_place_are_not_merged(tmp_path):
    # Like deepseek_v2.py at old line 1154: upstream added `= None`, the patch `= False`.
    old = "class A:\n    def __init__(self):\n        self.proj = make()\n\n        if self.use:\n            go()\n"
    patched = old.replace("        self.proj = make()\n\n", "        self.proj = make()\n\n        self.skip = False\n")
    new = old.replace("        self.proj = make()\n\n", "        self.proj = make()\n\n        self.skip = None\n")
    rows, text, _ = _rebase(tmp_path, "m.py", old, patched, new)
    assert rows[0]["status"] == "conflict" and "same names" in rows[0]["reason"], rows
    assert text.count("self.skip = ") == 2  # only inside the markers: upstream's side and the patch's side


# ------------------------------------------------------------------ resolving more


def test_word_level_merge_keeps_both_changes_to_one_line(tmp_path, monkeypatch):
    _qualify(monkeypatch, 'word-merge')  # the rule itself; the gate on it: test_git_baseline_*
    head = "alpha = beta = gamma = 1\n\n\ndef compute(a, b):\n    return a\n\n\n"
    old = head + "first = 1\ntotal = compute(alpha, beta)\nlast = 2\n"
    patched = old.replace("compute(alpha, beta)", "compute(alpha, gamma)")
    new = old.replace("total = compute", "total_sum = compute")
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, patched, new)
    assert rows[0]["status"] == "merged" and rows[0]["rule"] == "word-merge", rows
    assert "total_sum = compute(alpha, gamma)\n" in text and not conflicted


def test_word_level_merge_refuses_the_same_word_changed_twice(tmp_path):
    old = "a = b = c = 1\nfirst = 1\ntotal = max(a, b)\nlast = 2\n"
    rows, text, _ = _rebase(tmp_path, "m.py", old, old.replace("max(a, b)", "max(a, c)"),
                            old.replace("max(a, b)", "max(a, a)"))
    assert rows[0]["status"] == "conflict"


def test_union_of_an_import_list_both_sides_extended(tmp_path, monkeypatch):
    _qualify(monkeypatch, 'import-union')  # the rule itself; the gate on it: test_git_baseline_*
    # Like disaggregation/mooncake/conn.py at old line 30.
    old = "import os\nfrom pkg.mod import Alpha\nimport sys\n\nprint(os, sys, Alpha)\n"
    patched = old.replace("import Alpha\n", "import Alpha, Beta\n")
    new = old.replace("from pkg.mod import Alpha\n", "from pkg.mod import (\n    Alpha,\n    Gamma,\n)\n")
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, patched, new)
    assert rows[0]["rule"] == "import-union" and not conflicted, rows
    assert "from pkg.mod import (\n    Alpha,\n    Gamma,\n    Beta,\n)\n" in text
    ast.parse(text)


def test_a_change_upstream_made_with_one_more_argument_is_upstreamed(tmp_path, monkeypatch):
    _qualify(monkeypatch, 'upstreamed-with-difference')  # the rule itself; the gate on it: test_git_baseline_*
    old = "first = 1\nrun(alpha, beta)\nlast = 2\n"
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, old.replace("beta)", "beta, gamma)"),
                                     old.replace("beta)", "beta, gamma, delta=4)"))
    assert rows[0]["status"] == "upstreamed" and rows[0]["rule"] == "upstreamed-with-difference", rows
    assert "delta=4" in rows[0]["reason"] and not conflicted


def test_conflict_regions_are_whole_statements_that_parse_on_every_side(tmp_path):
    # Cut in the middle of an expression, "take the patch's side" would not parse.
    args = "".join(f"        value_{i},\n" for i in range(10))
    old = f"def f(v):\n    pre = 0\n    out = combine(\n{args}    )\n    post = 1\n    more = 2\n    return out\n"
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, old.replace("value_5,", "value_5 * 2,"),
                                     old.replace("value_5,", "value_5 + 1,"))
    assert rows[0]["status"] == "conflict" and conflicted == ["m.py"]
    (sides,) = _sides(text)
    for side in sides:
        ast.parse(textwrap.dedent(side))
    assert "value_5 * 2" in sides[2] and "value_5 + 1" in sides[0] and "value_5,\n" in sides[1]
    assert all(side.lstrip().startswith("out = combine(") for side in sides)
    assert "return out" not in text.split(">>>>>>>")[0]  # no more than the statement


def test_a_function_upstream_moved_into_another_file_is_followed(tmp_path, world):
    helper = "def scale_values(values, factor):\n    doubled = [v * factor for v in values]\n    total_sum = sum(doubled)\n    return total_sum\n"
    old_a = "import os\n\n\n" + helper + "\n\ndef main():\n    return scale_values([1], 2)\n"
    up = world.upstream("megatron", {"a.py": old_a, "b.py": "import sys\n"})
    patched = old_a.replace("    total_sum = sum(doubled)\n", "    total_sum = sum(doubled) + 1\n")
    patch = diff.parse("p.patch", up.diff({"a.py": patched}).encode())
    new = up.commit({"a.py": "import os\n\nfrom b import scale_values\n\n\ndef main():\n    return scale_values([1], 2)\n",
                     "b.py": "import sys\n\n\n" + helper}, "move the helper to b.py")
    from patchstack.trees import GitTree

    old_tree, new_tree = GitTree(up.path / ".git", up.pin), GitTree(up.path / ".git", new)
    rows, changes, conflicted = rebase.rebase_patch(patch, Overlay(old_tree), Overlay(new_tree), {}, LABELS,
                                                    (old_tree, new_tree))
    assert rows[0]["file"] == "b.py" and rows[0]["moved_from"] == "a.py" and rows[0]["rule"] == "moved-file", rows
    assert not conflicted and changes.get("a.py", (0, new_tree.read("a.py")))[1] == new_tree.read("a.py")
    assert b"    total_sum = sum(doubled) + 1\n" in changes["b.py"][1]


def test_a_placed_hunk_using_what_only_a_conflict_defines_says_so(tmp_path):
    # Like the PD timing fields: declared by a hunk left in conflict (io_struct.py), used by hunks
    # placed in other files. They are right only if the conflict keeps the field.
    old_def = "class Out:\n    first: int\n    second: int\n\n\ndef make():\n    return Out\n"
    old_use = "def fill(o):\n    o.first = 1\n    o.second = 2\n    return o\n"
    patch_text = file_patch(tmp_path / "a", "defs.py", old_def, old_def.replace("    second: int\n", "    second: int\n    timing_field: float\n"))
    patch_text += file_patch(tmp_path / "b", "use.py", old_use, old_use.replace("    o.second = 2\n", "    o.second = 2\n    o.timing_field = 0.5\n"))
    new_def = old_def.replace("    first: int\n    second: int\n", "    first: int\n    stats: object\n")
    patch = diff.parse("p.patch", patch_text.encode())
    rows, _, conflicted = rebase.rebase_patch(patch, _tree({"defs.py": old_def, "use.py": old_use}),
                                              _tree({"defs.py": new_def, "use.py": old_use}), {}, LABELS)
    by_file = {r["file"]: r for r in rows}
    assert by_file["defs.py"]["status"] == "conflict" and by_file["use.py"]["status"] == "clean", rows
    assert "timing_field" in by_file["use.py"]["depends_on"] and "defs.py" in by_file["use.py"]["depends_on"]


def test_a_multi_line_change_upstream_made_with_one_more_argument_is_upstreamed(tmp_path, monkeypatch):
    _qualify(monkeypatch, 'upstreamed-with-difference')  # the rule itself; the gate on it: test_git_baseline_*
    # Like models/qwen3_5.py at old line 400: upstream's call has one more argument (and black's
    # trailing comma).
    head = "def layer(self, hidden, batch, scatter, fusion):\n    prepared = prepare(hidden)\n    checked = check(hidden)\n\n"
    tail = "\n    finished = finish(hidden)\n    return hidden\n"
    old = head + "    hidden = self.mlp(hidden, batch)\n" + tail
    patched = head + "    if fusion:\n        hidden = self.mlp(hidden, batch, scatter)\n" + tail
    new = head + "    if fusion:\n        hidden = self.mlp(\n            hidden,\n            batch,\n            scatter,\n" \
                 "            fusion,\n        )\n" + tail
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, patched, new)
    assert rows[0]["status"] == "upstreamed" and rows[0]["rule"] == "upstreamed-with-difference", rows
    assert text == new and not conflicted
    rows, _, conflicted = _rebase(tmp_path / "two", "m.py", old, patched, new.replace("fusion,\n", "fusion, extra,\n"))
    assert rows[0]["status"] == "conflict"  # two more arguments: a person decides


def test_a_hunk_that_needs_a_conflicts_patch_side_says_so(tmp_path):
    # Like disaggregation/prefill.py: the import hunk is a conflict (upstream deleted `import time`,
    # its context); a later hunk that calls time.perf_counter() is placed, right only if that
    # conflict keeps `import time`.
    body = "".join(f"def step_{i}():\n    return {i}\n\n\n" for i in range(6))
    old = "import os\nimport time\nimport json\n\n\n" + body + "def work():\n    a = 1\n    b = 2\n    return json.dumps(a)\n"
    patched = old.replace("import time\nimport json\n", "import time\nimport sys\nimport json\n").replace(
        "    b = 2\n", "    b = 2\n    started = time.perf_counter()\n")
    new = old.replace("import os\nimport time\nimport json\n", "import os as operating_system\nimport json as js\n")
    rows, text, conflicted = _rebase(tmp_path, "m.py", old, patched, new)
    first, user = rows
    assert first["status"] == "conflict" and conflicted == ["m.py"], rows
    assert first["verified"] == rebase.CONFLICT_UNVERIFIED and "compiles" in user["verified"]  # never "verified" on a conflict
    assert user["status"] != "conflict" and "`time`" in user["depends_on"], rows


def test_a_file_that_did_not_compile_before_is_reported_unverified(tmp_path):
    old = "first line of text\nsecond line\nthird line\n"
    rows, _, _ = _rebase(tmp_path, "m.py", old, old.replace("second line", "second changed line"), old)
    assert rows[0]["status"] == "clean" and rows[0]["verified"].startswith("not checked"), rows
def test_a_hunk_whose_moved_code_cannot_be_found_once_is_never_lost(tmp_path, world):
    """Like the lost hunk of the issue: moved-code detection finds the hunk's lines in another file
    upstream changed, but after the patch's own changes there they are there twice, so the hunk
    cannot be placed there. It must end marked or reported as not placeable, never nowhere."""
    helper = "def scale_values(values, factor):\n    doubled = [v * factor for v in values]\n    total_sum = sum(doubled)\n    return total_sum\n"
    old_a = "import os\n\n\n" + helper + "\n\ndef main():\n    return scale_values([1], 2)\n"
    up = world.upstream("megatron", {"a.py": old_a, "b.py": "import sys\n"})
    patched_a = old_a.replace("    total_sum = sum(doubled)\n", "    total_sum = sum(doubled) + 1\n")
    patch = diff.parse("p.patch", up.diff({"a.py": patched_a, "b.py": "import sys\n\n\n" + helper + "\n\nimport re\n"}).encode())
    new = up.commit({"a.py": "import os\n\nfrom b import scale_values\n\n\ndef main():\n    return scale_values([1], 2)\n",
                     "b.py": "import sys\n\n\n" + helper + "\n\ndef tail():\n    return 0\n"}, "move the helper to b.py")
    from patchstack.trees import GitTree

    old_tree, new_tree = GitTree(up.path / ".git", up.pin), GitTree(up.path / ".git", new)
    rows, changes, conflicted = rebase.rebase_patch(patch, Overlay(old_tree), Overlay(new_tree), {}, LABELS,
                                                    (old_tree, new_tree))
    row = rows[0]
    assert row["status"] == "conflict" and row.get("not_placeable"), rows
    assert row["file"] == "a.py" and "a.py.rej" in row["reason"] and "a.py.rej" in conflicted
    assert b"+    total_sum = sum(doubled) + 1\n" in changes["a.py.rej"][1]
    # the invariant, for every row: placed, marked in its file, or in a .rej
    for r in rows:
        if r["status"] == "conflict":
            assert r.get("marked") or f"{r['file']}.rej" in changes, r


# ------------------------------------------------------------------ structural checks (new findings only)


def _found(result: str, old_patched: str, old_upstream: str, new_upstream: str, **kw) -> list[str]:
    probs, _ = verify.problems(*(textwrap.dedent(x).encode() for x in (result, old_patched, old_upstream, new_upstream)),
                               **kw)
    return [p.message for p in probs]


def test_a_merge_that_moves_a_construction_below_its_use_is_caught():
    # Like the list constructions moved below upstream's new use of them: UnboundLocalError when the
    # feature is on. A name assigned later in the function counts as local, so "defined" is no help.
    old_up = "def f(cfg):\n    out = []\n    return out\n"
    patched = "def f(cfg):\n    extra = [cfg]\n    out = []\n    return out + extra\n"
    new_up = "def f(cfg):\n    out = []\n    log(out)\n    return out\n"
    wrong = "def f(cfg):\n    out = []\n    log(out + extra)\n    extra = [cfg]\n    return out + extra\n"
    assert any("reads `extra` before f assigns it" in m for m in _found(wrong, patched, old_up, new_up))
    right = "def f(cfg):\n    extra = [cfg]\n    out = []\n    log(out + extra)\n    return out + extra\n"
    assert _found(right, patched, old_up, new_up) == []
    in_loop = "def f(cfg):\n    for i in cfg:\n        if i:\n            use(last)\n        last = i\n    return out\n"
    assert not any("before" in m for m in _found(in_loop, patched, old_up, new_up))  # a loop carries it round
    # the same early read already in upstream's new file is not the rebase's doing
    assert _found(wrong, patched, old_up, wrong.replace("log(out + extra)", "log(out + extra)  # upstream")) == []


def test_a_call_of_an_async_def_left_without_await_is_caught():
    # Like the word-level merge that dropped an `await`: the patch removed `await` from a call; upstream
    # replaced the call with one to an `async def`. The coroutine is made and never run.
    old_up = "class S:\n    async def handle(self, r):\n        await self.send(r)\n\n    async def send(self, r):\n        return r\n"
    patched = old_up.replace("        await self.send(r)\n", "        self.send_now(r)\n") + \
        "\n    def send_now(self, r):\n        return r\n"
    new_up = "class S:\n    async def handle(self, r):\n        await self.dispatch(r)\n\n    async def dispatch(self, r):\n        return r\n"
    wrong = new_up.replace("        await self.dispatch(r)\n", "        self.dispatch(r)\n")
    assert any("calls `dispatch`, an async def, without awaiting it" in m for m in _found(wrong, patched, old_up, new_up))
    assert _found(new_up, patched, old_up, new_up) == []
    scheduled = new_up.replace("        await self.dispatch(r)\n", "        task = asyncio.create_task(self.dispatch(r))\n")
    assert not any("async def" in m for m in _found(scheduled, patched, old_up, new_up))


def test_a_definition_doubled_in_a_class_or_module_is_caught():
    # Like methods re-added with an old signature after upstream's own newer ones.
    old_up = "class M:\n    def forward(self, x):\n        return x\n"
    patched = old_up + "\n    def load(self, w):\n        return w\n"
    new_up = "class M:\n    def forward(self, x, y=None):\n        return x\n\n    def load(self, w, strict=True):\n        return w\n"
    wrong = new_up + "\n    def load(self, w):\n        return w\n"
    found = _found(wrong, patched, old_up, new_up)
    assert any("defines `load` a second time in M (first at line 5)" in m for m in found), found
    prop = "class M:\n    @property\n    def x(self):\n        return 1\n\n    @x.setter\n    def x(self, v):\n        pass\n"
    assert _found(prop, prop, prop, "class M:\n    pass\n") == []  # a property and its setter


def test_a_model_registered_twice_is_caught_in_the_file_and_across_the_tree():
    old_up = "class A:\n    pass\n\n\nEntryClass = [A]\n"
    patched = old_up.replace("EntryClass = [A]", "class G:\n    pass\n\n\nEntryClass = [A, G]")
    twice = patched.replace("EntryClass = [A, G]", "EntryClass = [A, G, G]")
    assert any("registers `G` twice in EntryClass" in m for m in _found(twice, patched, old_up, old_up))
    elsewhere = lambda names: {n: "models/g_upstream.py" for n in names if n == "G"}  # noqa: E731
    found = _found(patched, patched, old_up, old_up, registered_elsewhere=elsewhere)
    assert any("registers `G`, which upstream's new tree already registers in models/g_upstream.py" in m for m in found)
    assert _found(patched, patched, old_up, old_up, registered_elsewhere=lambda names: {}) == []


def test_a_chained_attribute_upstream_removed_is_caught():
    # Like `self.x.y` that upstream removed: the object is still there, the attribute is not.
    old_up = "class R:\n    def __init__(self):\n        self.buffers = make()\n\n    def run(self):\n        return self.buffers.topk_p\n"
    patched = old_up.replace("        return self.buffers.topk_p\n", "        p = self.buffers.topk_p\n        return p * 2\n")
    new_up = old_up.replace("self.buffers.topk_p", "self.buffers.probs")
    wrong = new_up.replace("        return self.buffers.probs\n", "        p = self.buffers.topk_p\n        return p * 2\n")
    assert any("uses `self.buffers.topk_p`, which upstream's new file no longer has" in m
               for m in _found(wrong, patched, old_up, new_up))
    right = new_up.replace("        return self.buffers.probs\n", "        p = self.buffers.probs\n        return p * 2\n")
    assert _found(right, patched, old_up, new_up) == []


def test_a_new_model_file_whose_class_upstream_now_ships_is_a_conflict(tmp_path, world):
    # Like the model class registered twice: the patch adds models/g.py registering Gemma; upstream's
    # new tree ships its own file registering the same class. SGLang's registry would assert at import.
    up = world.upstream("sglang", {"models/a.py": "class A:\n    pass\n\n\nEntryClass = A\n"})
    ours = "class Gemma:\n    pass\n\n\nEntryClass = Gemma\n"
    patch = diff.parse("p.patch", up.diff({"models/g.py": ours}).encode())
    new = up.commit({"models/gemma_upstream.py": "class Gemma:\n    x = 1\n\n\nEntryClass = [Gemma]\n"}, "upstream ships Gemma")
    from patchstack.trees import GitTree

    old_tree, new_tree = GitTree(up.path / ".git", up.pin), GitTree(up.path / ".git", new)
    rows, changes, conflicted = rebase.rebase_patch(patch, Overlay(old_tree), Overlay(new_tree), {}, LABELS,
                                                    (old_tree, new_tree))
    assert rows[0]["status"] == "conflict" and conflicted == ["models/g.py"], rows
    assert "models/gemma_upstream.py" in rows[0]["reason"] and "`Gemma`" in rows[0]["reason"]
    assert b"<<<<<<< " in changes["models/g.py"][1] and rows[0]["verified"] == rebase.CONFLICT_UNVERIFIED
    # control: without upstream's file the new file is added as it is
    rows, changes, conflicted = rebase.rebase_patch(patch, Overlay(old_tree), Overlay(old_tree), {}, LABELS,
                                                    (old_tree, old_tree))
    assert rows[0]["status"] == "clean" and not conflicted


def test_an_import_of_a_name_only_a_conflict_defines_says_so(tmp_path):
    # The import line binds the name in its own file, but the module it imports from has it only in
    # a hunk left in conflict: right only if that conflict keeps it.
    old_def = "def make():\n    return 1\n\n\ndef other():\n    return 2\n"
    old_use = "import os\n\n\ndef run():\n    return os.sep\n"
    patch_text = file_patch(tmp_path / "a", "defs.py", old_def, old_def.replace("def other():\n", "def timing_helper():\n    return 0\n\n\ndef other():\n"))
    patch_text += file_patch(tmp_path / "b", "use.py", old_use, old_use.replace("import os\n", "import os\nfrom defs import timing_helper\n"))
    new_def = old_def.replace("def make():\n    return 1\n", "def make(x):\n    return x\n").replace(
        "def other():\n    return 2\n", "def other_renamed():\n    return 3\n")
    patch = diff.parse("p.patch", patch_text.encode())
    rows, _, conflicted = rebase.rebase_patch(patch, _tree({"defs.py": old_def, "use.py": old_use}),
                                              _tree({"defs.py": new_def, "use.py": old_use}), {}, LABELS)
    by_file = {r["file"]: r for r in rows}
    assert by_file["defs.py"]["status"] == "conflict" and by_file["use.py"]["status"] != "conflict", rows
    assert "timing_helper" in by_file["use.py"].get("depends_on", ""), rows


def test_overlapping_regions_become_one_well_formed_conflict():
    """A hunk placed where a conflict's region (grown to whole statements) also reaches, or two
    conflicts that overlap: written one over the other, the second block cut into the first (a
    block without `<<<<<<<`). They become one conflict with one set of markers."""
    old = [f"line {i}\n".encode() for i in range(12)]
    new = list(old)
    h1 = diff.Hunk(1, 4, 2, 4, 2, "", [(" ", old[3]), ("-", old[4]), ("+", b"four\n")], 1)
    h2 = diff.Hunk(2, 7, 2, 7, 2, "", [(" ", old[6]), ("-", old[7]), ("+", b"seven\n")], 5)
    placed = merge.Placement(merge.CLEAN, 3, 6, [old[3], b"four\n", old[5]])
    conflict = merge.Placement(merge.CONFLICT, 5, 8, [], reason="upstream changed it")
    placements = [(h1, placed), (h2, conflict)]
    out = rebase._write(placements, {}, {id(h1): 3, id(h2): 6}, old, new, LABELS)
    assert merge.malformed_markers(out) is None
    text = b"".join(out).decode()
    assert text.count("<<<<<<< ") == 1 and text.count(">>>>>>> ") == 1
    ours = _sides(text)[0][2]
    assert "four\n" in ours and "seven\n" in ours  # both hunks' changes on the patch's side
    assert placed.status == merge.CONFLICT and "overlaps a conflict" in placed.reason
    # the validator itself: a second block without its opening marker is caught
    bad = merge.markers([b"a\n"], [b"b\n"], [b"c\n"], **LABELS) + [b"x\n", b"=======\n", b">>>>>>> p\n"]
    assert "is not open" in merge.malformed_markers(bad)
    assert merge.malformed_markers([b"=======\n", b"docstring underline\n"]) is None


# ------------------------------------------------------------------ git's 3-way merge as the baseline


def test_git_baseline_a_rule_not_shown_safe_may_not_resolve_what_git_conflicts_on(tmp_path, monkeypatch):
    # The word-level merge of the issue dropped an `await`: where git conflicts, a rule places a
    # hunk only once the benchmarks show it safe (QUALIFIED); until then it is a conflict that says so.
    old = "def f(a, b):\n    x = compute(a, b)\n    return x\n"
    patched = old.replace("compute(a, b)", "compute(a, b, fast=True)")
    new = old.replace("x = compute(a, b)", "x = compute_v2(a, b)")
    assert rebase.git_merge_hunk(diff.parse("p.patch", file_patch(tmp_path / "g", "m.py", old, patched).encode())
                                 .files[0].hunks[0], 0, diff.split_lines(old.encode()),
                                 diff.split_lines(new.encode())) is None  # git: conflict
    rows, text, conflicted = _rebase(tmp_path / "a", "m.py", old, patched, new)
    assert rows[0]["status"] == "conflict" and "git's own 3-way merge conflicts here" in rows[0]["reason"], rows
    assert "`word-merge`" in rows[0]["reason"] and conflicted == ["m.py"]
    _qualify(monkeypatch, "word-merge")
    rows, text, conflicted = _rebase(tmp_path / "b", "m.py", old, patched, new)
    assert rows[0]["status"] == "merged" and "compute_v2(a, b, fast=True)" in text and not conflicted, rows


def test_git_baseline_where_git_merges_cleanly_its_result_is_written():
    # A placement of ours that differs from git's clean merge of the same hunk gives way to git's.
    old = [b"a\n", b"b\n", b"c\n", b"d\n", b"e\n", b"f\n", b"g\n"]
    new = [b"new top\n"] + old
    h = diff.Hunk(1, 3, 3, 3, 4, "", [(" ", b"b\n"), (" ", b"c\n"), ("+", b"ours\n"), (" ", b"d\n")], 1)
    wrong = merge.Placement(merge.OFFSET, 5, 7, [b"e\n", b"ours\n", b"f\n"], rule="offset")  # not where git puts it
    rebase.git_baseline([(h, wrong)], {id(h): 1}, old, new)
    assert wrong.rule == "git-merge3" and wrong.status == merge.MERGED and "ours: offset" in wrong.reason
    assert new[:wrong.start] + wrong.lines + new[wrong.end:] == [b"new top\n", b"a\n", b"b\n", b"c\n", b"ours\n",
                                                                  b"d\n", b"e\n", b"f\n", b"g\n"]
    right = merge.Placement(merge.OFFSET, 2, 5, [b"b\n", b"c\n", b"ours\n", b"d\n"], rule="offset")
    rebase.git_baseline([(h, right)], {id(h): 1}, old, new)
    assert right.rule == "offset" and right.reason == ""  # agrees with git: untouched
    ours_conflict = merge.Placement(merge.CONFLICT, 2, 5, [], reason="a reason git does not see")
    rebase.git_baseline([(h, ours_conflict)], {id(h): 1}, old, new)
    assert ours_conflict.status == merge.CONFLICT  # git's clean merge never overrides our conflict


def test_a_new_file_follows_its_folder_where_upstream_moved_the_folder_whole(tmp_path):
    # Like jit_kernel/glm5_router_gemm.py: the patch adds a file to a folder upstream moved whole
    # (jit_kernel/ -> kernels/jit/); the maintainers put the new file in the new folder.
    moved = {"pkg/jit_kernel/a.py": "pkg/kernels/jit/a.py", "pkg/jit_kernel/b.py": "pkg/kernels/jit/b.py"}
    assert rebase.folder_renames(moved) == {"pkg/jit_kernel": "pkg/kernels/jit"}
    patch = diff.parse("p.patch", b"diff --git a/pkg/jit_kernel/new.py b/pkg/jit_kernel/new.py\nnew file mode 100644\n"
                       b"--- /dev/null\n+++ b/pkg/jit_kernel/new.py\n@@ -0,0 +1 @@\n+x = 1\n")
    rows, changes, conflicted = rebase.rebase_patch(patch, _tree({}), _tree({}), moved, LABELS)
    assert rows[0]["file"] == "pkg/kernels/jit/new.py" and "pkg/kernels/jit/new.py" in changes and not conflicted
    # the majority wins (as git's directory rename detection); a tie, or one file, is not followed
    assert rebase.folder_renames({**moved, "pkg/jit_kernel/c.py": "pkg/other/c.py"}) == {"pkg/jit_kernel": "pkg/kernels/jit"}
    assert rebase.folder_renames({**moved, "pkg/jit_kernel/c.py": "pkg/other/c.py",
                                  "pkg/jit_kernel/d.py": "pkg/other/d.py"}) == {}
    assert rebase.folder_renames({"pkg/jit_kernel/a.py": "pkg/kernels/jit/a.py"}) == {}


def test_a_new_file_in_a_folder_upstream_split_is_a_conflict_never_placed_silently(tmp_path):
    # Like jit_kernel/ in SGLang 0.5.17: upstream moved its files out to several folders, none of
    # them a majority. git flags the new file's location; the tool must not write it, unmarked,
    # into a folder upstream emptied.
    moved = {"pkg/jit_kernel/a.py": "pkg/kernels/ops/a.py", "pkg/jit_kernel/b.py": "pkg/kernels/jit/b.py",
             "pkg/jit_kernel/c.py": "pkg/kernels/ops/moe/c.py"}
    assert rebase.folder_renames(moved) == {}
    patch = diff.parse("p.patch", b"diff --git a/pkg/jit_kernel/new.py b/pkg/jit_kernel/new.py\nnew file mode 100644\n"
                       b"--- /dev/null\n+++ b/pkg/jit_kernel/new.py\n@@ -0,0 +1 @@\n+x = 1\n")
    rows, changes, conflicted = rebase.rebase_patch(patch, _tree({}), _tree({}), moved, LABELS)
    assert rows[0]["status"] == merge.CONFLICT and conflicted == ["pkg/jit_kernel/new.py"], rows
    assert "moved 3 files of pkg/jit_kernel/ out" in rows[0]["reason"] and "pkg/kernels/ops/" in rows[0]["reason"]
    assert b"<<<<<<<" in changes["pkg/jit_kernel/new.py"][1]
    # one file moved out of a folder is no split: the new file stays where the patch puts it
    rows, _, conflicted = rebase.rebase_patch(patch, _tree({}), _tree({}), {"pkg/jit_kernel/a.py": "pkg/ops/a.py"},
                                              LABELS)
    assert rows[0]["status"] == merge.CLEAN and not conflicted


def test_a_folder_upstream_mostly_kept_is_no_split():
    # three files moved out, four stay: a new file stays where the patch puts it
    moved = {"pkg/k/a.py": "pkg/x/a.py", "pkg/k/b.py": "pkg/y/b.py", "pkg/k/c.py": "pkg/z/c.py"}

    class New:
        def paths(self):
            return ["pkg/k/d.py", "pkg/k/e.py", "pkg/k/f.py", "pkg/k/g.py", "pkg/x/a.py"]

    assert rebase._new_file_dest("pkg/k/new.py", moved, _tree({}), (None, New())) == ("pkg/k/new.py", "")
    dest, why = rebase._new_file_dest("pkg/k/new.py", moved, _tree({}), (None, type("T", (), {"paths": lambda s: []})()))
    assert dest == "pkg/k/new.py" and "kept 0" in why
