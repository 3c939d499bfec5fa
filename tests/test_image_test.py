"""`make image-test`: the suite shipped in the image (tests/image) and its driver (patchstack
image-test). The static tier runs here on a synthetic image: trees prepared by the tool, a pins file,
installed distributions and modules made in a temporary folder. A wrong pin, a missing import and a
series not applied each fail it with a message that names them; what the smoke image leaves out is
skipped by name. The Dockerfile writes every one of its ARGs into the pins file, and the suite has a
check for each."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import REPO, tool
from test_image import _stack

from patchstack import image, imagetest, manifest
from patchstack.apply import apply_series
from patchstack.errors import StackError

sys.path.insert(0, str(REPO / "tests" / "image"))
import report  # noqa: E402
import static  # noqa: E402


# ------------------------------------------------------------------ the pins file


def test_every_dockerfile_arg_is_written_to_the_pins_file_and_the_suite_checks_it():
    text = (REPO / "docker" / "Dockerfile").read_text()
    args = set(re.findall(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)", text, re.M)) - {"ALLOW_SKIP"}
    written = set(re.findall(r'"([A-Z0-9_]+)=\$\1"', text))
    assert args - written == set(), "ARGs not written into /opt/gemma4-stack/pins.env"
    assert written - set(static.PINS) == set(), "pins without a check in tests/image/static.py PINS"
    assert "/opt/gemma4-stack/pins.env" in text


def test_the_context_carries_the_suite_and_the_test_files_it_reuses(tmp_path):
    image.copy_suite(REPO, tmp_path)
    for rel in ("tests/image/suite.py", "tests/image/static.py", "tests/image/gpu.py", "tests/image/gap.py",
                "tests/image/ckpt.py", "tests/gemma4/g4util.py", "tests/sglang_gemma4/harness.py"):
        assert (tmp_path / rel).is_file(), rel


# ------------------------------------------------------------------ a synthetic image


def _dist(site: Path, name: str, version: str, direct_url: dict | None = None) -> None:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        (d / "direct_url.json").write_text(json.dumps(direct_url))


@pytest.fixture
def fake_image(world, tmp_path):
    """Trees prepared as `make image` prepares them (series applied), a pins file, a site folder."""
    sgl, _ = _stack(world)
    m = manifest.load()
    plan = image.make_plan(m, gemma4=True, commit="c0ffee")
    ctx = image.prepare_context(m, plan, tmp_path / "ctx", out=lambda *_: None)
    trees = {"megatron": ctx / "trees" / "megatron", "slime": ctx / "trees" / "slime",
             "sglang": sgl.checkout(tmp_path / "sglang-tree")}
    apply_series(m, "sglang", trees["sglang"], plan.groups)
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "flash-attn", "2.7.4.post1")
    _dist(site, "apex", "0.1", {"url": "https://github.com/NVIDIA/apex.git",
                                "vcs_info": {"vcs": "git", "commit_id": "10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4"}})
    _dist(site, "sglang", "1")  # the world's SGLang is "v1"
    _dist(site, "numpy", "1.26.4")
    (site / "fa2_kernels.py").write_text("X = 1\n")
    pins = {"OFFLINE": "0", "GEMMA4": "1", "FLASH_ATTN_VERSION": "2.7.4.post1",
            "APEX_COMMIT": "10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4"}
    img = static.Image(world.root, tmp_path / "pins.env", pins, m, trees, plan.labels, "labels.json",
                       dist_path=[str(site)], imports=[("flash-attn 2", ["fa2_kernels"], "FLASH_ATTN_VERSION", None)])
    return img, plan, site


def _static(img) -> dict[str, report.Result]:
    said: list[str] = []
    rep = report.Report(out=said.append)
    static.run(img, rep)
    return {r.name: r for r in rep.results}


def test_a_good_image_passes_every_static_check(fake_image):
    img, plan, _ = fake_image
    got = _static(img)
    bad = {n: r.detail for n, r in got.items() if r.status == report.FAIL}
    assert bad == {}
    for name in ("sglang", "megatron", "slime"):
        assert got[f"{name} series applied"].status == report.PASS
        assert got[f"{name} tree at its pin"].status == report.PASS
    assert "0001-gemma4.patch" in got["sglang series applied"].detail
    assert got["pin FLASH_ATTN_VERSION"].status == report.PASS
    assert got["pin APEX_COMMIT"].status == report.PASS
    assert got["import flash-attn 2"].status == report.PASS
    assert got["labels agree with the image"].status == report.PASS


def test_a_wrong_pin_fails_naming_the_component_the_pin_and_what_is_installed(fake_image):
    img, _, site = fake_image
    img.pins["FLASH_ATTN_VERSION"] = "2.8.0"
    img.pins["APEX_COMMIT"] = "0" * 40
    got = _static(img)
    r = got["pin FLASH_ATTN_VERSION"]
    assert r.status == report.FAIL and r.component == "flash-attn 2" and r.pin == "2.8.0"
    assert "flash-attn 2.7.4.post1 installed, the pin is 2.8.0" in r.detail and r.todo
    r = got["pin APEX_COMMIT"]
    assert r.status == report.FAIL and "10417aceddd7" in r.detail and r.pin == "0" * 40
    # an ARG the suite does not know is a failure too, not a silent pass
    img.pins["NEW_THING_VERSION"] = "1.0"
    r = _static(img)["pin NEW_THING_VERSION"]
    assert r.status == report.FAIL and "PINS" in r.todo


def test_a_missing_import_fails_naming_the_module(fake_image):
    img, _, _ = fake_image
    img.imports = [("FlashAttention-3", ["flash_attn_3_not_here.flash_attn_interface"], "FA3_COMMIT", None)]
    r = _static(img)["import FlashAttention-3"]
    assert r.status == report.FAIL
    assert "flash_attn_3_not_here" in r.detail and "ModuleNotFoundError" in r.detail and r.todo


def test_a_series_not_applied_fails_naming_the_patch(fake_image, tmp_path, world):
    img, _, _ = fake_image
    img.trees["sglang"] = world.upstreams["sglang"].checkout(tmp_path / "bare-sglang")  # at the pin, unpatched
    r = _static(img)["sglang series applied"]
    assert r.status == report.FAIL
    assert "0001-gemma4.patch (fits)" in r.detail
    assert "patchstack check sglang --tree" in r.todo and "--expect applied" in r.todo


def test_a_tree_off_its_pin_fails(fake_image, world):
    img, _, _ = fake_image
    sgl = world.upstreams["sglang"]
    later = sgl.commit({"python/b.py": "new\n"}, "later")
    tree = img.trees["sglang"]
    from conftest import run_git

    run_git(tree, "fetch", "-q", str(sgl.path), later)
    run_git(tree, "checkout", "-q", "-f", later)
    r = _static(img)["sglang tree at its pin"]
    assert r.status == report.FAIL and later[:12] in r.detail


def test_labels_that_disagree_with_the_content_fail_naming_the_label(fake_image):
    img, _, _ = fake_image
    key = f"{static.NS}.sglang.patch.1"
    img.labels = dict(img.labels, **{key: img.labels[key].replace("sha256=", "sha256=0")})
    r = _static(img)["labels agree with the image"]
    assert r.status == report.FAIL and key in r.detail
    img.labels = None
    assert _static(img)["labels agree with the image"].status == report.SKIP


def test_the_smoke_image_skips_what_it_leaves_out_by_name_and_fails_the_rest(fake_image):
    img, _, site = fake_image
    img.pins["OFFLINE"] = "1"
    img.pins["TE_VERSION"] = "2.10.0"
    img.imports = [("Transformer Engine", ["transformer_engine_absent_here"], "TE_VERSION", None)]
    (site / "broken_mod.py").write_text("raise RuntimeError('built for another torch')\n")
    img.imports.append(("apex", ["broken_mod"], "APEX_COMMIT", None))
    got = _static(img)
    r = got["pin TE_VERSION"]
    assert r.status == report.SKIP and "transformer_engine is not installed" in r.detail and r.pin == "2.10.0"
    r = got["import Transformer Engine"]
    assert r.status == report.SKIP and "transformer_engine_absent_here" in r.detail
    r = got["import apex"]  # not a missing module: a failure even in the smoke image
    assert r.status == report.FAIL and "built for another torch" in r.detail


# ------------------------------------------------------------------ results


def test_results_are_a_table_and_junit_naming_failures_and_skips(tmp_path):
    rs = [report.Result("static", "pin TE_VERSION", "Transformer Engine", report.FAIL, "transformer_engine 2.9.0 installed",
                        "2.10.0", "reinstall it"),
          report.Result("static", "import apex", "apex", report.SKIP, "apex: not installed (smoke)"),
          report.Result("static", "sglang series applied", "sglang", report.PASS, "3 applied")]
    text = report.write(tmp_path, rs, {"gpu": "no GPU on this host (no nvidia-smi on this host)"})
    assert "| static | pin TE_VERSION | Transformer Engine | 2.10.0 | FAIL |" in text
    assert "3 checks: 1 passed, 1 failed, 1 skipped" in text and "tier gpu NOT RUN: no GPU on this host" in text
    root = ET.parse(tmp_path / "junit.xml").getroot()
    fail = root.find(".//testcase[@name='pin TE_VERSION']/failure")
    assert fail is not None and "2.10.0" in fail.get("message") and "reinstall it" in fail.text
    assert root.find(".//testcase[@name='import apex']/skipped") is not None
    gpu = root.find(".//testsuite[@name='image-test.gpu']")
    assert gpu.get("skipped") == "1" and gpu.find(".//skipped").get("message").startswith("no GPU")
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3


def test_the_suite_refuses_a_folder_without_a_pins_file(tmp_path):
    with pytest.raises(static.SuiteError, match="no pins file"):
        static.Image.load(REPO, pins=str(tmp_path / "nope.env"))


# ------------------------------------------------------------------ the driver


def test_without_gpus_only_the_static_tier_runs_and_the_others_are_said():
    tier, not_run = imagetest.plan_tiers(None, 0, "no nvidia-smi on this host")
    assert tier == "static" and set(not_run) == {"gpu", "rl"}
    assert "no GPU on this host (no nvidia-smi on this host)" == not_run["rl"]
    tier, not_run = imagetest.plan_tiers("gpu", 0, "x")
    assert tier == "static" and set(not_run) == {"gpu"}
    assert imagetest.plan_tiers(None, 8, "") == ("rl", {})
    assert imagetest.plan_tiers("gpu", 1, "") == ("gpu", {})
    with pytest.raises(StackError, match="TIER"):
        imagetest.plan_tiers("all", 1, "")
    cmd = imagetest.suite_command("static", {"gpu": "no GPU"}, None)
    assert cmd[:2] == ["python3", imagetest.SUITE] and "--not-run" in cmd and "gpu=no GPU" in cmd


def test_a_tier_asked_for_that_cannot_run_is_never_a_pass():
    from patchstack.errors import EXIT_NOT_RUN

    no_gpu = {"gpu": "no GPU on this host (no nvidia-smi on this host)"}
    code, verdict = imagetest.outcome(0, "gpu", no_gpu)  # TIER=gpu on a host without GPUs
    assert code == EXIT_NOT_RUN == 6 and "NOT RUN (exit 6): tier gpu was asked for" in verdict
    assert not verdict.startswith("passed")
    code, verdict = imagetest.outcome(0, None, no_gpu)  # no TIER: the default here is static
    assert code == 0 and "passed" in verdict and "tier gpu not run here" in verdict
    assert imagetest.outcome(1, "gpu", no_gpu)[0] == 1  # a failure below stays a failure
    assert imagetest.outcome(0, "static", {}) == (0, "passed (skips listed above)")
    # the suite, inside the image: a tier it was asked for that could not run (no GPU in the container)
    import suite

    assert suite.exit_status(False, ["static", "gpu"], {"gpu": "no GPU in this container", "rl": "not asked"}) == 6
    assert suite.exit_status(False, ["static"], {"gpu": "not asked", "rl": "not asked"}) == 0
    assert suite.exit_status(True, ["static", "gpu"], {"gpu": "x"}) == 1
    # and it names the tier the user asked for, not the one the driver ran
    cmd = imagetest.suite_command("static", no_gpu, None, asked="gpu")
    assert cmd[cmd.index("--asked") + 1] == "gpu"


def test_image_test_names_what_it_needs():
    code, _, err = tool("image-test")
    assert code == 2 and "IMAGE=<tag>" in err


def test_a_tree_left_out_of_a_smoke_image_is_skipped_by_name(fake_image, tmp_path):
    img, plan, _ = fake_image
    empty = tmp_path / "left-out-slime"
    empty.mkdir()
    (empty / "LEFT-OUT").write_text("slime was left out of this image: slime: cannot reach github.com\n")
    img.trees["slime"] = empty
    got = _static(img)
    for name in ("slime tree at its pin", "slime series applied"):
        assert got[name].status == report.SKIP and "cannot reach github.com" in got[name].detail
    # the labels of a complete build say "applied": the label check sees the tree is not there
    r = got["labels agree with the image"]
    assert r.status == report.FAIL and "slime.status" in r.detail and "LEFT-OUT" in r.detail


def test_the_smoke_check_holds_a_tree_patched_in_part_to_the_plan(world, monkeypatch):
    """An incomplete smoke build (slime unreachable, so megatron's series, read from slime, is
    left out): the in-container report is compared with the plan, entry by entry."""
    _stack(world)
    monkeypatch.setenv("UPSTREAM_SLIME_GIT", str(world.tmp / "nowhere"))
    plan = image.make_plan(manifest.load(), gemma4=True, smoke=True, base_image="b", commit="x",
                           allow_incomplete=True)
    tp = plan.trees["megatron"]
    assert tp.included and tp.left_out == ["slime:docker/megatron.patch"]

    def logs(status: str) -> str:
        rep = {"series": [{"entries": [{"name": "slime:docker/megatron.patch", "status": status}]}]}
        return "megatron v1 ...\nPARTIAL megatron " + json.dumps(rep) + "\n"

    assert image._check_partial(plan, logs("skipped")) == []  # left out, as planned
    assert image._check_partial(plan, logs("fits")) == []  # not applied: the build left it out
    wrong = image._check_partial(plan, logs("applied"))
    assert wrong == ["megatron: slime:docker/megatron.patch is applied, but the plan left it out"]
    tp.entries.append(("base", "slime:docker/megatron.patch", "0" * 64))
    tp.left_out.clear()
    assert image._check_partial(plan, logs("fits")) == ["megatron: slime:docker/megatron.patch is fits, not applied"]
    assert "no report" in image._check_partial(plan, "PARTIAL megatron not json\n")[0]
