"""At start: make the index and the instance files agree again after a crash or a power cut.

What a crash can leave (see instances.py for the commit's order): a file at its final path without an index
row (renamed, not yet indexed: never acknowledged), possibly incomplete if the power went before its fsync;
or, after a replacement that moved an instance to another study or series, the old file (the row already
points at the new one). Complete files without a row are indexed (the sender's retry then finds a
duplicate, which is success); incomplete ones and moved-out copies are removed. Files locked by another
process (a worker committing into the shared data directory) are left alone.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from neuronova.errors import NeuroNovaError
from neuronova.store.scan import scan_part10

if TYPE_CHECKING:
    from neuronova.store.instances import InstanceStore

log = logging.getLogger(__name__)


def reconcile(store: InstanceStore) -> dict[str, int]:
    """Index or remove every unindexed file under the instances directory; return counts by outcome."""
    from neuronova.store.instances import _fsync_dir, _locked_elsewhere

    counts = {"indexed": 0, "removed": 0}
    touched: set[Path] = set()
    start = time.monotonic()
    for study in _dirs(store.instances_dir):
        for series in _dirs(study):
            indexed: dict[str, str] | None = None
            for entry in os.scandir(series):
                if not entry.name.endswith(".dcm") or not entry.is_file(follow_symlinks=False):
                    continue
                if indexed is None:
                    indexed = {path: uid for uid, path in store.index.indexed_paths(series.name).items()}
                rel = f"{study.name}/{series.name}/{entry.name}"
                if rel in indexed:
                    continue
                path = Path(entry.path)
                if _locked_elsewhere(path):
                    continue
                outcome = _one(store, path, rel)
                counts[outcome] += 1
                touched.add(series)
    # What was indexed or removed must stay so: its directories' entries are made durable too.
    for series in touched:
        for directory in (series, series.parent):
            _fsync_dir(directory)
    if touched:
        _fsync_dir(store.instances_dir)
    if counts["indexed"] or counts["removed"]:
        log.info("reconciled the store with its index in %.1f s: %d instances indexed, %d files removed",
                 time.monotonic() - start, counts["indexed"], counts["removed"])
    return counts


def _dirs(parent: Path) -> list[Path]:
    return [Path(e.path) for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]


def _one(store: InstanceStore, path: Path, rel: str) -> str:
    uid = path.name[:-4]
    row = store.index.instance(uid)
    if row is not None and row["path"] == rel:  # indexed meanwhile (another process committed it)
        return "indexed"
    if row is not None and row["path"] != rel and (store.instances_dir / row["path"]).exists():
        log.info("removing the old copy of instance %s, which moved to another series", uid)
        return _remove(path)
    try:
        with open(path, "rb") as fp:
            scanned = scan_part10(fp, path.stat().st_size)
    except (NeuroNovaError, OSError) as exc:
        log.info("removing an incomplete file left by an interrupted store (%s)", type(exc).__name__)
        return _remove(path)
    if f"{scanned.study_uid}/{scanned.series_uid}/{scanned.sop_instance_uid}.dcm" != rel:
        log.info("removing a file whose name does not match its UIDs")
        return _remove(path)
    _fsync(path)
    store.index.add_instance(scanned.attrs, transfer_syntax=scanned.transfer_syntax, path=rel,
                             size=path.stat().st_size, received_at=path.stat().st_mtime)
    log.info("indexed instance %s found on disk without an index row", uid)
    return "indexed"


def _fsync(path: Path) -> None:
    """The file may be at its final path without its data ever made durable: make it so before indexing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> str:
    path.unlink(missing_ok=True)
    return "removed"
