"""The user's cache folder: work a start can reuse instead of repeating (exported graphs, timings
of this machine), each entry keyed so that a new version of what made it never reads a stale one.
A start marks what it uses (the file's modification time) and `prune` removes what no start has
used for KEPT_DAYS: an upgrade's new keys leave the old entries behind."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from livegen import __version__

log = logging.getLogger(__name__)

KEPT_DAYS = 30  # an entry no start has used for this long is removed
# What livegen keeps in the folder, which may be shared with other programs: `prune` touches nothing else.
ENTRIES = ("packs", "onnx", "onnx-optimized", "speech", "words", "speech-speeds.json")


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


def use(name: str) -> Path | None:
    """The file of the entry `name`, marked used, or None if there is none."""
    path = path_of(name)
    try:
        os.utime(path)
    except FileNotFoundError:
        return None
    except OSError:  # a cache folder this user may read but not write: used, not marked
        pass
    return path if path.is_file() else None


def read(name: str) -> bytes | None:
    """The entry `name` (marked used), or None if there is none."""
    try:
        return path.read_bytes() if (path := use(name)) else None
    except OSError:
        return None


def prune() -> list[str]:
    """Remove the entries no start has used for KEPT_DAYS, each a file or a folder (a pack) as old as
    its newest file; returns their names. A failure leaves the entry for the next start to try."""
    root, cutoff = cache_dir(), time.time() - KEPT_DAYS * 86400
    removed = []
    for entry in ENTRIES:
        top = root / entry
        try:
            units = [top] if top.is_file() else sorted(top.iterdir()) if top.is_dir() else []
        except OSError:  # a folder this user may not list
            continue
        for unit in units:
            try:
                files = [unit] if unit.is_file() else [path for path in unit.rglob("*") if path.is_file()]
                if max((path.stat().st_mtime for path in files), default=0) >= cutoff:
                    continue
                shutil.rmtree(unit) if unit.is_dir() else unit.unlink()
            except OSError:
                continue
            removed.append(unit.relative_to(root).as_posix())
    if removed:
        log.info("removed %d entries no start used for %d days from the cache folder %s: %s", len(removed),
                 KEPT_DAYS, root, ", ".join(removed))
    return removed


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
