"""The guard that keeps Numba's disk cache in step with all of the kernels' sources."""

from fastem._kernels import _cache


def _package(tmp_path):
    (tmp_path / "kernel.py").write_text("def kernel(): return helper()\n")
    (tmp_path / "helper.py").write_text("def helper(): return 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    return cache


def _cached(cache):
    for name in ("kernel.kernel-1.py311.nbi", "kernel.kernel-1.py311.1.nbc"):
        (cache / name).write_bytes(b"compiled")
    (cache / "kernel.cpython-311.pyc").write_bytes(b"bytecode")


def _names(cache):
    return sorted(p.name for p in cache.iterdir() if p.name != _cache.STAMP_NAME)


def test_cache_kept_while_sources_unchanged(tmp_path):
    cache = _package(tmp_path)
    _cache.clear_stale_cache(tmp_path)  # first use: stamps the sources
    _cached(cache)
    assert _cache.clear_stale_cache(tmp_path) == 0
    assert _names(cache) == ["kernel.cpython-311.pyc", "kernel.kernel-1.py311.1.nbc",
                             "kernel.kernel-1.py311.nbi"]


def test_change_to_a_helper_alone_drops_the_cached_kernels(tmp_path):
    cache = _package(tmp_path)
    _cache.clear_stale_cache(tmp_path)
    _cached(cache)
    (tmp_path / "helper.py").write_text("def helper(): return 2\n")
    assert _cache.clear_stale_cache(tmp_path) == 2
    assert _names(cache) == ["kernel.cpython-311.pyc"]  # Python's own bytecode is left alone
    _cached(cache)
    assert _cache.clear_stale_cache(tmp_path) == 0  # stamped again with the new sources


def test_cache_without_a_stamp_is_dropped(tmp_path):
    cache = _package(tmp_path)
    _cached(cache)
    assert _cache.clear_stale_cache(tmp_path) == 2
    assert (cache / _cache.STAMP_NAME).read_text() == _cache.sources_digest(tmp_path)


def test_digest_covers_names_and_contents(tmp_path):
    _package(tmp_path)
    before = _cache.sources_digest(tmp_path)
    (tmp_path / "helper.py").rename(tmp_path / "other.py")
    assert _cache.sources_digest(tmp_path) != before
    (tmp_path / "other.py").rename(tmp_path / "helper.py")
    assert _cache.sources_digest(tmp_path) == before


def test_the_package_itself_is_stamped_on_import():
    stamp = _cache.SOURCES / "__pycache__" / _cache.STAMP_NAME
    if stamp.exists():  # absent only where the package folder is read-only
        assert stamp.read_text() == _cache.sources_digest()
