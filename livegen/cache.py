"""The user's cache folder: work a start can reuse instead of repeating (exported graphs, timings
of this machine), each entry keyed so that a new version of what made it never reads a stale one."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import tempfile
from pathlib import Path

from livegen import __version__

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """LIVEGEN_CACHE_DIR, else the user's cache folder (~/.cache/livegen on Linux)."""
    import platformdirs

    return Path(os.environ.get("LIVEGEN_CACHE_DIR") or platformdirs.user_cache_dir("livegen"))


def processor_name() -> str:
    """The processor's model name where Linux says it, else what the platform module knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine() -> str:
    """This machine as timings depend on it: livegen's version, the processor and the cores it may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"livegen {__version__}; {platform.machine()} {processor_name()}; {cores} cores"


def path_of(name: str) -> Path:
    """The file of the entry `name` (a relative path in the cache folder), whether or not it is there."""
    return cache_dir() / name


def read(name: str) -> bytes | None:
    """The entry `name`, or None if there is none."""
    try:
        return path_of(name).read_bytes()
    except OSError:
        return None


def keep(name: str, data: bytes) -> None:
    """Write the entry whole or not at all (readers see the old entry or the new one); a failure
    only costs the next start the work again."""
    path = path_of(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two threads of a start may keep the same entry at once (MiniLM's graph).
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)  # left only by a failed write
    except OSError as exc:
        log.warning("could not keep %s in the cache folder %s (%s); the next start makes it again",
                    name, path.parent, exc)


def file_key(path: Path) -> str:
    """A key for what is made from a file: changes when the file, or livegen, does."""
    stat = path.stat()
    return hashlib.sha256(f"{__version__} {path.resolve()} {stat.st_size} {stat.st_mtime_ns}".encode()).hexdigest()[:24]
