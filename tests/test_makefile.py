"""The Makefile's own checks (it only drives the tool; everything else is tested on the tool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n: print the commands, run none (the venv is not built, nothing is fetched)
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.mark.parametrize("value", ["yes", "true", "2", ""])
def test_gemma4_other_than_0_or_1_is_refused(value):
    res = _make("check", f"GEMMA4={value}")
    assert res.returncode != 0
    assert f"GEMMA4 must be 0 or 1, not '{value}'" in res.stderr


@pytest.mark.parametrize("value,flag", [("1", "--gemma4"), ("0", "")])
def test_gemma4_0_and_1_select_the_groups(value, flag):
    res = _make("check", f"GEMMA4={value}")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "patchstack check" in ln)
    assert line.split("patchstack check", 1)[1].strip() == flag


def test_help_lists_every_target():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "help"], capture_output=True, text=True)
    assert res.returncode == 0
    listed = {ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("  make ")}
    phony = (REPO / "Makefile").read_text().split(".PHONY:", 1)[1].splitlines()[0].split()
    assert set(phony) - {"venv"} <= listed, set(phony) - listed
