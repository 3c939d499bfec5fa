"""`matrix`: every entry of every series on a list of upstream versions, as JSON and as one page."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import numbered, run_git, sub_once, tool

from patchstack import rebase, sources

BASE = {
    "a.txt": numbered(30, "a"),
    "b.txt": numbered(30, "b"),
    "c.txt": numbered(30, "c"),
    "d.txt": numbered(30, "d"),
    "e.txt": numbered(30, "e"),
}
# An entry name with markup in it: the page must show it as text.
AFTER_CLASH = "0006-after-<b>clash.patch"


def _git_world(world):
    """megatron pinned at one commit, then a commit that hits every status, then one more."""
    up = world.upstream("megatron", dict(BASE))
    patches = {
        "0001-applies.patch": {"a.txt": sub_once(BASE["a.txt"], "a 15\n", "a fifteen\n")},
        "0002-offset.patch": {"b.txt": sub_once(BASE["b.txt"], "b 15\n", "b fifteen\n")},
        "0003-rebases.patch": {"c.txt": sub_once(BASE["c.txt"], "c 15\n", "c fifteen\n")},
        "0004-clash.patch": {"d.txt": sub_once(BASE["d.txt"], "d 15\n", "d ours\n")},
        "0005-done.patch": {"e.txt": sub_once(BASE["e.txt"], "e 15\n", "e fifteen\n")},
        AFTER_CLASH: {"d.txt": sub_once(BASE["d.txt"], "d 25\n", "d twenty-five\n")},
    }
    for name, edits in patches.items():
        world.add_patch("megatron", name, up.diff(edits, subject=name[5:-6]))
    ext = up.diff({"a.txt": sub_once(BASE["a.txt"], "a 3\n", "a three\n")})
    world.upstream("slime", {"docker/megatron.patch": ext})
    world.add_external("megatron", "slime:docker/megatron.patch", hashlib.sha256(ext.encode()).hexdigest(),
                       group="gemma4")
    moved_on = up.commit({
        "b.txt": numbered(7, "new") + BASE["b.txt"],
        "c.txt": sub_once(BASE["c.txt"], "c 13\n", "c 13 changed\n"),  # a context line of 0003's hunk
        "d.txt": sub_once(BASE["d.txt"], "d 15\n", "d theirs\n"),
        "e.txt": sub_once(BASE["e.txt"], "e 15\n", "e fifteen\n"),
    }, "upstream moves on")
    newest = up.commit({"unrelated.txt": "x\n"}, "and on")
    missing = "1" * 40  # listed, but not in the remote
    (world.root / "patches" / "matrix.toml").write_text(
        f'[upstream.megatron]\ncommits = [{{commit = "{moved_on}", name = "the next pin"}}, "{missing}"]\n'
        "newest = true\n[upstream.slime]\nnewest = false\n")
    return up, moved_on, newest, missing


def _load(world) -> dict:
    return json.loads((world.root / "out" / "matrix" / "matrix.json").read_text())


def _grid(data: dict, upstream: str) -> dict[tuple[str, str], dict]:
    u = next(x for x in data["upstreams"] if x["name"] == upstream)
    return {(r["name"], c["version"]): c for r in u["rows"] for c in r["cells"]}


def test_every_status_in_the_json_then_a_warm_run_from_the_cache(world, monkeypatch):
    up, moved_on, newest, missing = _git_world(world)
    code, out, err = tool("matrix", "megatron")
    assert code == 0, err
    data = _load(world)
    u = data["upstreams"][0]
    assert [v["id"] for v in u["versions"]] == ["v1", moved_on[:8], missing[:8], f"main@{newest[:8]}"]
    assert [v["kind"] for v in u["versions"]] == ["pin", "listed", "listed", "newest"]
    assert u["versions"][1]["commit"] == moved_on and u["versions"][1]["note"] == "the next pin"
    assert u["versions"][3]["commit"] == newest
    assert [r["name"] for r in u["rows"]] == ["0001-applies.patch", "0002-offset.patch", "0003-rebases.patch",
                                              "0004-clash.patch", "0005-done.patch", AFTER_CLASH,
                                              "slime:docker/megatron.patch"]
    assert data["groups"] == ["base", "gemma4"]  # every group by default
    g = _grid(data, "megatron")
    for r in u["rows"]:
        assert g[(r["name"], "v1")]["status"] == "applies"
    for col in (moved_on[:8], f"main@{newest[:8]}"):
        st = {r["name"]: g[(r["name"], col)]["status"] for r in u["rows"]}
        assert st == {"0001-applies.patch": "applies", "0002-offset.patch": "offset",
                      "0003-rebases.patch": "rebases", "0004-clash.patch": "conflicts",
                      "0005-done.patch": "upstream", AFTER_CLASH: "applies",
                      "slime:docker/megatron.patch": "applies"}, col
    cell = g[("0004-clash.patch", moved_on[:8])]
    assert cell["conflicts"] == 1 and cell["conflict_files"] == ["d.txt"] and cell["text"] == "1 conflict"
    assert [(h["file"], h["old_start"], h["status"]) for h in cell["hunks"]] == [("d.txt", 12, "conflict")]
    assert cell["simulated"] is True
    assert g[("0003-rebases.patch", moved_on[:8])]["counts"] == {"fuzzy": 1}
    assert g[("0002-offset.patch", moved_on[:8])]["hunks"][0]["at"] == 12 + 7
    assert g[("0005-done.patch", moved_on[:8])]["simulated"] is False  # the cheap check said so
    # The entry after the conflict is computed without 0004's change to d.txt, and says so.
    after = g[(AFTER_CLASH, moved_on[:8])]
    assert any("0004-clash.patch left d.txt in conflict" in c for c in after["caveats"])
    assert not g[("0005-done.patch", moved_on[:8])]["caveats"]
    # The listed commit that is not in the remote: its column is there, every cell says why.
    for r in u["rows"]:
        c = g[(r["name"], missing[:8])]
        assert c["status"] == "unavailable" and missing in c["reason"]
    assert "not available" in u["versions"][2]["reason"] or missing in u["versions"][2]["reason"]
    total = data["cells"]["total"]
    assert total == 7 * 4 and data["cells"]["unavailable"] == 7 and data["cells"]["cached"] == 0

    # Warm: nothing is simulated again (the simulation would fail), every computed cell is cached.
    def no_simulation(*a, **k):
        raise AssertionError("the rebase simulation ran on a warm run")

    monkeypatch.setattr(rebase, "rebase_patch", no_simulation)
    code, out, err = tool("matrix", "megatron")
    assert code == 0, err
    warm = _load(world)
    assert warm["cells"]["cached"] == total - 7 and warm["cells"]["computed"] == 0
    assert {k: v["status"] for k, v in _grid(warm, "megatron").items()} == {k: v["status"] for k, v in g.items()}
    assert all(c["cached"] for (n, v), c in _grid(warm, "megatron").items() if v != missing[:8])
    assert "21 from the cache, 0 computed" in out

    # --offline: the newest commit is not looked up, and its column says so.
    code, out, err = tool("matrix", "megatron", "--offline")
    assert code == 0, err
    off = _load(world)["upstreams"][0]
    assert off["versions"][-1]["id"] == "newest" and "--offline" in off["versions"][-1]["reason"]
    assert all(r["cells"][-1]["status"] == "unavailable" for r in off["rows"])
    assert all(r["cells"][1]["cached"] for r in off["rows"])
    # --strict turns cells that could not be computed into exit 3.
    assert tool("matrix", "megatron", "--offline", "--strict")[0] == 3


def test_a_changed_patch_is_computed_again(world):
    up, moved_on, newest, missing = _git_world(world)
    assert tool("matrix", "megatron", "--versions", moved_on)[0] == 0
    first = _grid(_load(world), "megatron")
    p = world.folder("megatron") / "0005-done.patch"
    p.write_text(p.read_text().replace("Subject: [PATCH] done", "Subject: [PATCH] done, said otherwise"))
    code, out, err = tool("matrix", "megatron", "--versions", moved_on)
    assert code == 0, err
    again = _grid(_load(world), "megatron")
    col = moved_on[:8]
    # The changed entry and the ones after it (their key holds the texts before them) are new cells.
    for name in ("0005-done.patch", AFTER_CLASH, "slime:docker/megatron.patch"):
        assert again[(name, col)]["cached"] is False and again[(name, col)]["status"] == first[(name, col)]["status"]
    assert again[("0005-done.patch", "v1")]["cached"] is False


def test_other_rules_start_the_cache_afresh(world, monkeypatch):
    """A change to the tool's code (the rules that decide a cell) never reuses a cell."""
    from patchstack import matrix

    up, moved_on, newest, missing = _git_world(world)
    assert tool("matrix", "megatron", "--versions", moved_on)[0] == 0
    cells = world.root / "out" / "matrix" / "cache" / "cells"
    assert [d.name for d in cells.iterdir()] == [matrix.rules()]
    monkeypatch.setattr(matrix, "rules", lambda: "other-rules")
    assert tool("matrix", "megatron", "--versions", moved_on)[0] == 0
    data = _load(world)
    assert data["rules"] == "other-rules" and data["cells"]["cached"] == 0 and data["cells"]["computed"] == 14
    assert [d.name for d in cells.iterdir()] == ["other-rules"]  # the old cells are gone


def test_a_version_list_with_a_bad_commit_is_refused(world):
    world.upstream("megatron", dict(BASE))
    (world.root / "patches" / "matrix.toml").write_text('[upstream.megatron]\ncommits = ["abc"]\n')
    code, _, err = tool("matrix", "megatron")
    assert code == 2 and "'abc' is not a full 40-hex-digit SHA-1" in err
    (world.root / "patches" / "matrix.toml").write_text('[upstream.nosuch]\nnewest = true\n')
    code, _, err = tool("matrix")
    assert code == 2 and "unknown upstream 'nosuch'" in err


def test_newest_that_cannot_be_reached_is_a_column_that_says_why(world):
    world.upstream("megatron", dict(BASE))
    (world.root / "patches" / "matrix.toml").write_text("[upstream.megatron]\nnewest = true\n")
    world.mp.setenv("UPSTREAM_MEGATRON_GIT", str(world.tmp / "no-such-remote"))
    code, out, err = tool("matrix", "megatron")
    assert code == 0, err
    u = _load(world)["upstreams"][0]
    assert [v["id"] for v in u["versions"]] == ["v1", "newest"]
    assert "cannot reach" in u["versions"][1]["reason"]
    assert "NOT AVAILABLE: the newest commit is not known: cannot reach" in out


# ------------------------------------------------------------------ PyPI releases


def _tar(files: dict[str, str], top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wheel(files: dict[str, str], dist: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for rel, text in files.items():
            z.writestr(rel, text)
        z.writestr(f"{dist}.dist-info/METADATA", "Name: pkg\n")
    return buf.getvalue()


class _Index(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    listing: bytes = b""

    def do_GET(self):  # noqa: N802 - the handler's name is http.server's
        if self.path == "/simple/pkg/" and "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
            body, kind = self.listing, "application/vnd.pypi.simple.v1+json"
        elif self.path.startswith("/files/") and self.path[7:] in self.files:
            body, kind = self.files[self.path[7:]], "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index(monkeypatch):
    """A package index on this machine (PEP 691 JSON), as PIP_INDEX_URL names it."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    handler = type("Index", (_Index,), {"files": {}, "listing": b""})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple/")
    yield handler, base
    server.shutdown()


def _pypi_world(world, tmp_path, index):
    handler, base = index
    mod = numbered(30, "m")
    releases = {  # filename -> (files in the package folder, how the index lists it)
        "pkg-0.9.tar.gz": ({"pkg/mod.txt": mod}, {}),  # before the pin
        "pkg-1.0.tar.gz": ({"pkg/mod.txt": mod}, {}),  # the pin
        "pkg-1.1.tar.gz": ({"pkg/mod.txt": numbered(5, "new") + mod}, {}),
        "pkg-1.2rc1.tar.gz": ({"pkg/mod.txt": mod}, {}),  # a pre-release: left out
        "pkg-1.2.tar.gz": ({"pkg/mod.txt": mod}, {"yanked": "broken"}),  # yanked: left out
        "pkg-1.3-py3-none-any.whl": ({"pkg/mod.txt": sub_once(mod, "m 15\n", "m fifteen\n")}, {}),  # no sdist
        "pkg-1.3.post1.tar.gz": ({"pkg/mod.txt": sub_once(mod, "m 15\n", "m theirs\n")}, {}),
        "pkg-1.4.dev0.tar.gz": ({"pkg/mod.txt": mod}, {}),  # a dev release: left out
        "pkg-1.5.tar.gz": ({"pkg/mod.txt": mod}, {"sha256": "f" * 64}),  # the index's sha256 is not the file's
    }
    files = []
    for fn, (content, extra) in releases.items():
        if fn.endswith(".whl"):
            data = _wheel(content, fn.split("-py3")[0])
        else:
            data = _tar(content, fn[:-len(".tar.gz")])
        handler.files[fn] = data
        files.append({"filename": fn, "url": f"../../files/{fn}", "yanked": extra.get("yanked", False),
                      "hashes": {"sha256": extra.get("sha256", hashlib.sha256(data).hexdigest())}})
    handler.listing = json.dumps({"meta": {"api-version": "1.1"}, "name": "pkg", "files": files}).encode()
    pin = handler.files["pkg-1.0.tar.gz"]
    (tmp_path / "pkg-1.0.tar.gz").write_bytes(pin)  # the commit made from it names the archive
    scratch = tmp_path / "scratch.git"
    run_git(tmp_path, "init", "-q", "--bare", str(scratch))
    made = sources._import_sdist(scratch, tmp_path / "pkg-1.0.tar.gz", "python", hashlib.sha256(pin).hexdigest())
    root = world.root / "patches"
    (root / "pins.toml").write_text(
        f'[upstream.pkg]\nversion = "v1.0"\ncommit = "{"a" * 40}"\ngit = "https://example.invalid/pkg.git"\n'
        f'image_path = "/opt/pkg"\n[upstream.pkg.sdist]\nurl = "{base}/files/pkg-1.0.tar.gz"\n'
        f'sha256 = "{hashlib.sha256(pin).hexdigest()}"\nprefix = "python"\ncommit = "{made}"\n'
        '[groups]\norder = ["base", "gemma4"]\noptional = ["gemma4"]\n')
    folder = root / "pkg" / "v1.0"
    folder.mkdir(parents=True)
    work = tmp_path / "w"
    (work / "python" / "pkg").mkdir(parents=True)
    (work / "python" / "pkg" / "mod.txt").write_text(mod)
    run_git(work, "init", "-q")
    run_git(work, "add", "-A")
    run_git(work, "commit", "-qm", "pin")
    (work / "python" / "pkg" / "mod.txt").write_text(sub_once(mod, "m 15\n", "m fifteen\n"))
    body = run_git(work, "diff")
    (folder / "0001-mod.patch").write_text(f"From: t <t@example.invalid>\nSubject: [PATCH] mod\n\n---\n{body}")
    (folder / "series").write_text("[base]\n0001-mod.patch\n[gemma4]\n")


def test_pypi_releases_from_the_pin_up_sha256_pinned_then_offline_from_the_cache(world, tmp_path, index):
    _pypi_world(world, tmp_path, index)
    code, out, err = tool("matrix", "pkg")
    assert code == 0, err
    u = _load(world)["upstreams"][0]
    assert [v["id"] for v in u["versions"]] == ["v1.0", "v1.1", "v1.3", "v1.3.post1", "v1.5"]
    v = {x["id"]: x for x in u["versions"]}
    assert v["v1.3"].get("wheel") is True and "pkg-1.3-py3-none-any.whl" in v["v1.3"]["note"]
    assert "sha256" in v["v1.1"]["note"] and "PyPI sdist" in v["v1.1"]["origin"]
    assert "has sha256" in v["v1.5"]["reason"] and "f" * 64 in v["v1.5"]["reason"]  # verified, refused
    cells = {c["version"]: c for c in u["rows"][0]["cells"]}
    assert {k: c["status"] for k, c in cells.items()} == {
        "v1.0": "applies", "v1.1": "offset", "v1.3": "upstream", "v1.3.post1": "conflicts", "v1.5": "unavailable"}
    # Offline: the listing and every version come from the cache; the same columns, no cell computed.
    code, out, err = tool("matrix", "pkg", "--offline")
    assert code == 0, err
    again = _load(world)
    assert [v["id"] for v in again["upstreams"][0]["versions"]] == ["v1.0", "v1.1", "v1.3", "v1.3.post1", "v1.5"]
    assert again["cells"]["computed"] == 0 and again["cells"]["cached"] == 4
    assert "using the listing cached at" in err


# ------------------------------------------------------------------ the page, in a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver; "
                           ".ci/run installs them)")
def test_the_page_in_a_headless_browser(world, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, moved_on, _, _ = _git_world(world)
    assert tool("matrix", "megatron")[0] == 0
    data = _load(world)
    page = world.root / "out" / "matrix" / "index.html"
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(Path(page).as_uri())
        for u in data["upstreams"]:
            table = driver.find_element(By.ID, f"matrix-{u['name']}")
            heads = [th.get_attribute("data-version") for th in table.find_elements(By.CSS_SELECTOR, "thead th.version")]
            assert heads == [v["id"] for v in u["versions"]]
            shown = [th.text.split("\n")[0] for th in table.find_elements(By.CSS_SELECTOR, "thead th.version")]
            assert shown == [v["label"] for v in u["versions"]]
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr.entry")
            assert [r.get_attribute("data-entry") for r in rows] == [r["name"] for r in u["rows"]]
            assert [r.find_element(By.CSS_SELECTOR, ".entry-name").text for r in rows] == [r["name"] for r in u["rows"]]
            for tr, row in zip(rows, u["rows"]):
                tds = tr.find_elements(By.CSS_SELECTOR, "td.cell")
                assert [td.get_attribute("data-status") for td in tds] == [c["status"] for c in row["cells"]]
        # The markup in an entry's name is text, not an element.
        assert not driver.find_elements(By.CSS_SELECTOR, "th.entry b")
        panel = driver.find_element(By.ID, "detail")
        assert not panel.is_displayed()
        cell = driver.find_element(By.CSS_SELECTOR, f'tr[data-entry="0004-clash.patch"] td[data-version="{moved_on[:8]}"]')
        assert cell.text == "1 conflict" and "st-conflicts" in cell.get_attribute("class")
        cell.click()
        WebDriverWait(driver, 10).until(lambda d: panel.is_displayed())
        assert panel.get_attribute("data-entry") == "0004-clash.patch"
        assert panel.get_attribute("data-version") == moved_on[:8]
        want = _grid(data, "megatron")[("0004-clash.patch", moved_on[:8])]
        hunks = driver.find_elements(By.CSS_SELECTOR, "#detail-hunks tbody tr.hunk")
        got = [[tr.get_attribute("data-file")] + [td.text for td in tr.find_elements(By.TAG_NAME, "td")][:2]
               for tr in hunks]
        assert got == [[h["file"], str(h["old_start"]), h["status"]] for h in want["hunks"]]
        files = driver.find_elements(By.CSS_SELECTOR, "#detail-hunks tbody tr.file")
        assert [f.text for f in files] == sorted({h["file"] for h in want["hunks"]})
        assert driver.find_element(By.ID, "detail-summary").text.startswith("needs 1 conflict resolved")
        # Another cell replaces the detail: the entry after the conflict, with its caveat.
        driver.find_element(By.CSS_SELECTOR, f'tr[data-entry="{AFTER_CLASH}"] td[data-version="{moved_on[:8]}"]').click()
        WebDriverWait(driver, 10).until(lambda d: panel.get_attribute("data-entry") == AFTER_CLASH)
        assert "0004-clash.patch left d.txt in conflict" in driver.find_element(By.ID, "detail-caveats").text
        assert driver.find_element(By.ID, "detail-title").text.endswith(AFTER_CLASH)
        driver.find_element(By.ID, "detail-close").click()
        assert not panel.is_displayed()
    finally:
        driver.quit()
