"""bench/rebase_history.py's classes, on small files whose answer is known: the benchmark's numbers
are only as good as its judge."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    mirrors = tmp_path_factory.mktemp("mirrors")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATCHSTACK_CACHE", str(mirrors / "cache"))  # the script sets a default at import: undone below
    mp.setenv("UPSTREAM_SLIME_GIT", str(mirrors))  # required by the script, unused by its judge
    mp.setenv("UPSTREAM_MEGATRON_GIT", str(mirrors))
    spec = importlib.util.spec_from_file_location("rebase_history", REPO / "bench" / "rebase_history.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "bench"))
        mp.undo()
    assert os.environ.get("PATCHSTACK_CACHE") != str(mirrors / "cache")
    return mod


def _lines(*xs: str) -> bytes:
    return "".join(x + "\n" for x in xs).encode()


N = _lines("import os", "", "", "def first():", "    return 1", "", "", "def second():", "    return 2")


def test_the_maintainers_bytes_are_identical(bench):
    assert bench.classify(N, N, N, set(), "m.py")["class"] == "identical"


def test_a_block_in_the_maintainers_gap_differs_only_where_they_did_more(bench):
    ours = N.replace(b"    return 1\n", b"    return 1\n    # ours\n")
    theirs = ours.replace(b"    return 2\n", b"    return 2\n    # theirs too\n")
    assert bench.classify(N, ours, theirs, set(), "m.py")["class"] == "maintainer-differs"


def test_a_block_in_another_gap_is_wrong(bench):
    block = b"    log('x')\n"
    ours = N.replace(b"    return 1\n", b"    return 1\n" + block)
    theirs = N.replace(b"    return 2\n", b"    return 2\n" + block)
    got = bench.classify(N, ours, theirs, set(), "m.py")
    assert got["class"] == "wrong" and got["kind"] == "elsewhere", got


def test_a_block_the_maintainers_rewrote_is_wrong_of_its_own_kind(bench):
    ours = N.replace(b"    return 1\n", b"    total = compute(a, b)\n    check(total)\n    return total\n")
    theirs = N.replace(b"    return 1\n", b"    total = compute(a, b, c)\n    check(total)\n    return total\n")
    got = bench.classify(N, ours, theirs, set(), "m.py")
    assert got["class"] == "wrong" and got["kind"] == "changed", got


def test_a_hunk_the_maintainers_dropped_is_said(bench):
    ours = N.replace(b"    return 1\n", b"    return 1\n    # a feature they dropped\n")
    got = bench.classify(N, ours, N + b"", set(), "m.py")
    assert got["class"] == "maintainer-differs" and got["dropped"], got


def test_a_new_file_the_maintainers_put_elsewhere_is_wrong(bench):
    got = bench.classify(None, b"x = 1\n", None, {"python/pkg/kernels/jit/new.py"}, "python/pkg/jit_kernel/new.py")
    assert got["class"] == "wrong" and got["kind"] == "file" and "kernels/jit/new.py" in got["why"]
    got = bench.classify(None, b"x = 1\n", None, set(), "python/pkg/jit_kernel/new.py")
    assert got["class"] == "maintainer-differs"


def test_code_equal_to_the_maintainers_differs_only_in_form(bench):
    # The maintainers reworded a docstring and a comment, split a line and reordered keyword
    # arguments in their port: the same code, so not wrong.
    ours = N.replace(b"    return 1\n", b'    """Sum it.\n    Twice."""\n    # the total\n'
                     b"    return f(x, a=1, b=2)\n")
    theirs = N.replace(b"    return 1\n", b'    """Sum it twice."""\n    return f(\n        x, b=2, a=1\n    )\n')
    got = bench.classify(N, ours, theirs, set(), "m.py")
    assert got["class"] == "maintainer-differs" and got["equivalent"] == "code", got
    # a changed value, or a changed positional order, is not the same code
    for other in (b"    return f(x, a=1, b=3)\n", b"    return f(a=1, b=2)\n", b"    return g(x, a=1, b=2)\n"):
        theirs = N.replace(b"    return 1\n", other)
        assert bench.classify(N, ours, theirs, set(), "m.py")["class"] == "wrong", other
    # not Python: text only
    assert bench.classify(N, ours, N.replace(b"    return 1\n", b"    return f(x, b=2, a=1)\n"), set(),
                          "m.txt")["class"] == "wrong"


def test_keyword_order_is_kept_around_a_double_star_argument(bench):
    assert bench.canonical(b"f(b=1, **k, a=2)\n") != bench.canonical(b"f(a=2, **k, b=1)\n")
    assert bench.canonical(b"f(b=1, c=3, **k)\n") == bench.canonical(b"f(c=3, b=1, **k)\n")


def test_a_block_rewritten_whole_is_wrong_and_only_a_block_with_nothing_in_its_place_is_dropped(bench):
    ours = N.replace(b"    return 1\n", b"    total = compute(a, b)\n    return total\n")
    rewritten = N.replace(b"    return 1\n", b"    return other(c)\n")
    got = bench.classify(N, ours, rewritten, set(), "m.py")
    assert got["class"] == "wrong" and got["kind"] == "changed" and "rewrote" in got["why"], got
    got = bench.classify(N, ours, N, set(), "m.py")  # the maintainers have nothing there: dropped
    assert got["class"] == "maintainer-differs" and got["dropped"], got
