"""Numba's disk cache of the kernels, kept in step with all of their sources.

Numba keys a cached function on its own source file alone (modification time and size). Every
kernel here calls helpers from other files of this package (the exp and log of ``_math.py``,
the intrinsics of ``_tiles.py`` and ``_panels.py``), which Numba compiles into it. After a
change to a helper alone, the kernels that use it load from the cache as they were: stale
code, with no error. That happened while tuning fastem, and the speeds measured that evening
were the stale kernels'. So when this package is imported, a digest of all its sources is
compared with the one stored beside the cache, and on any difference the cached kernels are
deleted; Numba compiles them again on first use.

This covers the cache beside the sources (``__pycache__``, Numba's choice where the package
folder is writable: a source checkout, or a package installed by the user). Where Numba caches
elsewhere (``NUMBA_CACHE_DIR``, or a per-user folder for a read-only install) the sources only
change with a reinstall, which gives every file a new modification time anyway.
"""

import hashlib
from pathlib import Path

SOURCES = Path(__file__).resolve().parent
STAMP_NAME = "fastem-kernel-sources.sha256"


def sources_digest(folder: Path = SOURCES) -> str:
    """SHA-256 of the names and contents of the ``.py`` files in ``folder``, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def clear_stale_cache(folder: Path = SOURCES) -> int:
    """Delete Numba's cache files in ``folder/__pycache__`` unless they were made from the
    sources now in ``folder``; returns how many were deleted.

    Does nothing where the cache folder cannot be written (Numba then cannot cache there
    either).
    """
    cache = folder / "__pycache__"
    digest = sources_digest(folder)
    stamp = cache / STAMP_NAME
    try:
        if stamp.read_text() == digest:
            return 0
    except OSError:  # no stamp yet: whatever is cached cannot be vouched for
        pass
    removed = 0
    try:
        cache.mkdir(exist_ok=True)
        for path in sorted(cache.glob("*.nb[ic]")):  # Numba's index and data files
            path.unlink(missing_ok=True)
            removed += 1
        stamp.write_text(digest)
    except OSError:
        pass
    return removed
