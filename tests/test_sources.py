"""Sources: pins fetched into a cache, verified, reused; the sdist laid out as a deterministic commit."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from conftest import numbered, run_git, tool

from patchstack import manifest, sources
from patchstack.errors import SourceUnavailable, StackError


def _tarball(path, files: dict[str, bytes], top="pkg-1.0"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mode = len(data), (0o755 if rel.endswith(".sh") else 0o644)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sdist_world(world, tmp_path, sha256=None, commit="0" * 40):
    archive = tmp_path / "pkg-1.0.tar.gz"
    if archive.exists():  # one archive per test: gzip stamps the time, so a second one differs
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    else:
        digest = _tarball(archive, {"pkg/__init__.py": b"x = 1\n", "pkg/run.sh": b"#!/bin/sh\n", "PKG-INFO": b"v\n"})
    (world.root / "patches" / "pins.toml").write_text(
        f'[upstream.pkg]\nversion = "v1"\ncommit = "{"a" * 40}"\ngit = "https://example.invalid/pkg.git"\n'
        f'image_path = "/opt/pkg"\n[upstream.pkg.sdist]\nurl = "{archive}"\nsha256 = "{sha256 or digest}"\n'
        f'prefix = "python"\ncommit = "{commit}"\n[groups]\norder = ["base"]\n')
    return archive, digest


def test_sdist_is_laid_out_under_its_prefix_as_the_same_commit_everywhere(world, tmp_path):
    _sdist_world(world, tmp_path)
    with pytest.raises(StackError) as e:
        sources.source(manifest.load().upstream("pkg"))
    made = str(e.value).split("lays out as commit ")[1].split(";")[0]
    assert f'set [upstream.pkg.sdist] commit = "{made}"' in str(e.value)
    # Record the commit the tool made; a second, separate cache must make exactly the same one.
    _sdist_world(world, tmp_path, commit=made)
    first = sources.source(manifest.load().upstream("pkg"))
    assert first.commit == made and "sha256 verified" in first.origin
    assert sorted(first.tree.paths()) == ["python/PKG-INFO", "python/pkg/__init__.py", "python/pkg/run.sh"]
    assert first.tree.mode("python/pkg/run.sh") == "100755"
    assert first.tree.read("python/pkg/__init__.py") == b"x = 1\n"
    world.mp.setenv("PATCHSTACK_CACHE", str(tmp_path / "other-cache"))
    again = sources.source(manifest.load().upstream("pkg"))
    assert again.commit == made
    # Reused from the cache the second time round.
    assert "from the cache" in sources.source(manifest.load().upstream("pkg")).origin


def test_a_wheel_is_laid_out_like_the_package_folder(world, tmp_path):
    import zipfile

    wheel = tmp_path / "pkg-2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "x = 2\n")
        z.writestr("pkg/sub/mod.py", "y = 3\n")
        z.writestr("pkg-2.0.dist-info/METADATA", "Name: pkg\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (world.root / "patches" / "pins.toml").write_text(
        f'[upstream.pkg]\nversion = "v2"\ncommit = "{"a" * 40}"\ngit = "https://example.invalid/pkg.git"\n'
        f'image_path = "/opt/pkg"\n[upstream.pkg.sdist]\nurl = "{wheel}"\nsha256 = "{digest}"\n'
        f'prefix = "python"\ncommit = "{"0" * 40}"\n[groups]\norder = ["base"]\n')
    up = manifest.load().upstream("pkg")
    up = __import__("dataclasses").replace(up, sdist=__import__("dataclasses").replace(up.sdist, commit=None))
    src = sources.sdist_source(up)
    assert sorted(src.tree.paths()) == ["python/pkg/__init__.py", "python/pkg/sub/mod.py"]
    assert "PyPI wheel" in src.origin


def test_a_wrong_commit_in_the_pins_never_deletes_a_cache_ref(world, tmp_path):
    """A pin whose commit is wrong is refused, first from a fresh import and then from the cache, and
    the cache's ref for the verified archive stays: fixing the pin needs no new download."""
    _sdist_world(world, tmp_path, commit="1" * 40)
    for _ in range(2):
        with pytest.raises(StackError) as e:
            sources.source(manifest.load().upstream("pkg"))
        assert f"patches/pins.toml says {'1' * 40}" in str(e.value)
    made = str(e.value).split("lays out as commit ")[1].split(";")[0]
    repo = world.cache / "git" / "pkg.git"
    refs = run_git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/sdist")
    assert refs.split() == [f"refs/sdist/{hashlib.sha256((tmp_path / 'pkg-1.0.tar.gz').read_bytes()).hexdigest()}", made]
    _sdist_world(world, tmp_path, commit=made)  # the pin fixed: served from the cache's ref, offline
    assert sources.source(manifest.load().upstream("pkg"), offline=True).commit == made


def test_sdist_with_the_wrong_sha256_is_refused_and_not_cached(world, tmp_path):
    archive, digest = _sdist_world(world, tmp_path, sha256="f" * 64)
    with pytest.raises(StackError) as e:
        sources.source(manifest.load().upstream("pkg"))
    assert f"has sha256 {digest}, patches/pins.toml expects {'f' * 64}" in str(e.value)
    assert not list((world.cache / "sdist").glob("*.tar.gz"))


def test_git_pin_is_fetched_once_then_reused_and_offline_works(world):
    up = world.upstream("megatron", {"a.py": numbered(5)})
    code, out, _ = tool("sources", "megatron")
    assert code == 0 and f"{up.pin[:12]}  git {up.path}" in out
    # The mirror goes away: the cache still serves the pin, also with --offline.
    world.mp.setenv("UPSTREAM_MEGATRON_GIT", str(world.tmp / "gone"))
    run_git(world.tmp, "clone", "-q", "--bare", str(up.path), str(world.tmp / "unused"))
    code, out, _ = tool("sources", "megatron", "--offline")
    assert code == 0 and "git cache" in out


def test_offline_with_an_empty_cache_says_what_is_missing(world):
    world.upstream("megatron", {"a.py": numbered(5)})
    code, out, _ = tool("sources", "megatron", "--offline")
    assert code == 3 and "UNAVAILABLE" in out and "not in the cache and --offline was given" in out


def test_shallow_fetch_by_commit_leaves_other_history_out(world):
    up = world.upstream("megatron", {"a.py": numbered(5)})
    for i in range(3):
        up.commit({"a.py": numbered(5 + i)}, f"later {i}")
    world.repin("megatron", run_git(up.path, "rev-parse", "HEAD~1").strip())
    src = sources.git_source(manifest.load().upstream("megatron"))
    assert src.commit == world.upstreams["megatron"].pin
    count = run_git(world.cache / "git" / "megatron.git", "rev-list", "--count", src.commit).strip()
    assert count == "1", "a fetch by commit must be shallow"


def test_real_sglang_sdist_matches_the_pinned_commit():
    """The pinned SGLang sdist from PyPI lays out as the commit recorded in pins.toml."""
    m = manifest.load(manifest.find_root(__import__("pathlib").Path(__file__).parent))
    up = m.upstream("sglang")
    try:
        src = sources.sdist_source(up)
    except SourceUnavailable as e:
        pytest.skip(f"PyPI unreachable: {e}")
    assert src.commit == up.sdist.commit
    assert src.tree.read("python/sglang/srt/configs/model_config.py") is not None
    assert len(src.tree.paths()) == 1951  # the files of the archive (FACTS.md)


def test_a_long_fetch_says_it_is_still_running(capsys):
    import time

    from patchstack import sources

    with sources.heartbeat(lambda t: f"x: still fetching ({t:.0f} s)", every=0.1):
        time.sleep(0.35)
    beats = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("x: still fetching (")]
    assert len(beats) >= 2
