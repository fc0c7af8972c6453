"""Durable instance storage: write to a temporary file, check, rename into place, fsync the file and the
directory, index; only then may a front door answer success.

Layout: ``<data_dir>/instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``; every UID is validated before
it names a path, so nothing can be written outside the data directory.

A new instance is renamed into place before it is fsync'd, so that, when flushes are slow, the file's fsync
and the directory's can run at the same time (two flushes in flight cost about one: on this VM's busy disk
2.0 ms instead of 7.9 per instance); directory fsyncs of concurrent instances are shared (DirectorySync).
The price: after a crash, a file may sit at its final path without having been made durable. It was never
acknowledged, because nothing is answered before both fsyncs and the index row; so a file without an index
row is not "stored": the next instance with its UID replaces it (with the classic order: fsync, rename,
fsync the directory). Replacing an indexed instance uses the classic order too, so an acknowledged file is
never at risk. Within the process, an instance being committed is "in flight" and a second one with the
same UID waits for it; across processes (``neuronova worker`` shares the data directory), a file being
committed is locked (flock) by its writer until its index row is written.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from neuronova.errors import (
    DuplicateConflict,
    IdentityConflict,
    InvalidDicom,
    NeuroNovaError,
    OutOfResources,
    StudyMismatch,
)
from neuronova.store.checks import TextWarning, check_instance
from neuronova.store.compare import same_data_set
from neuronova.store.index import Index
from neuronova.store.scan import ScannedInstance, scan_part10
from neuronova.store.uids import validate_uid

if TYPE_CHECKING:
    from neuronova.config import Settings

log = logging.getLogger(__name__)

_HOST = socket.gethostname().replace("-", "_")
_STALE_SECONDS = 86400.0


def _abandoned(path: Path) -> bool:
    """Whether a temporary file's writer is gone: a dead process of this host, or a day old."""
    host, _, rest = path.name.partition("-")
    pid = rest.partition("-")[0]
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return int(pid) == os.getpid()
    try:
        return time.time() - path.stat().st_mtime > _STALE_SECONDS or not pid.isdigit()
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class StoreResult:
    instance: ScannedInstance
    #: "stored", "duplicate" (the same data set already held) or "replaced".
    outcome: str
    path: Path
    #: Text elements that break their VR: stored as sent, answered with a warning status.
    warnings: tuple[TextWarning, ...] = ()


#: Default bound of the decoded pixel size an instance may declare (Rows x Columns x Frames x Samples x Bits).
MAX_DECODED_BYTES = 2 * 1024**3


#: Overlap the file's and the directories' fsyncs when a file fsync takes longer than this on average. Below
#: it, handing the directory's fsync to another thread (and waiting for the GIL to come back) costs more than
#: it saves: on tmpfs or a quiet fast disk the two run one after the other.
PARALLEL_FSYNC_ABOVE = 0.001


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: How many series directories the store remembers as checked (then it forgets them all and re-checks).
KNOWN_DIRS = 4096


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit of directory fsyncs: ``sync(d)`` returns once an fsync of ``d`` that *began after the call*
    has completed, so every entry changed in ``d`` before the call is durable. Callers that arrive while an
    fsync of ``d`` runs share the next one: with several associations writing into one series directory,
    one directory flush covers several instances (each file still gets its own fsync)."""

    @dataclass
    class _State:
        started: int = 0  # fsyncs begun (their generations: 1, 2, ...)
        completed: int = 0  # the latest generation known complete
        running: bool = False

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: dict[Path, DirectorySync._State] = {}

    def sync(self, directory: Path) -> None:
        with self._cond:
            state = self._state.setdefault(directory, DirectorySync._State())
            target = state.started + 1  # the next fsync to start begins after this call
            while state.completed < target:
                if state.running:
                    self._cond.wait()
                    continue
                state.started += 1
                state.running, generation = True, state.started
                self._cond.release()
                try:
                    _fsync_dir(directory)
                finally:
                    self._cond.acquire()
                    state.running = False
                    self._cond.notify_all()
                state.completed = max(state.completed, generation)
            if len(self._state) > KNOWN_DIRS:
                for d in [d for d, st in self._state.items() if not st.running]:
                    del self._state[d]


def _locked_elsewhere(path: Path) -> bool:
    """Whether another writer holds the commit lock of the file at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if it was taken
    return False


def _wait_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def _disk_error(exc: OSError) -> NeuroNovaError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfResources("no space left in the data directory")
    return OutOfResources(f"cannot write to the data directory: {exc.strerror}")


class TmpInstance:
    """A file being received; write chunks to it, then hand it to ``InstanceStore.commit``.

    Up to ``MEMORY_LIMIT`` bytes are kept in memory and written in one call at ``flush``; the commit then
    checks the instance from memory instead of reading the file back. Why: every system call releases the
    GIL, and with several associations each release can hand the GIL to another thread (measured: with four
    associations, 55% of the process's CPU went to futex waits and wake-ups). Larger instances are written as
    they arrive.
    """

    MEMORY_LIMIT = 4 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._buffer: bytearray | None = bytearray()  # None once written through
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _disk_error(exc) from exc

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.size += len(chunk)
        if self._buffer is not None:
            self._buffer += chunk
            if len(self._buffer) <= self.MEMORY_LIMIT:
                return
            chunk, self._buffer = self._buffer, None
        self._write_all(chunk)

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]  # type: ignore[arg-type]
        except OSError as exc:
            self.discard()
            raise _disk_error(exc) from exc

    def flush(self) -> None:
        """Hand the bytes to the OS (not yet durable)."""
        if self._buffer is not None and self._fd is not None:
            self._write_all(self._buffer)

    def content(self) -> BinaryIO:
        """The bytes written, to read: from memory when they fit, else from the file."""
        if self._buffer is not None:
            return io.BytesIO(self._buffer)
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it

    def lock(self) -> None:
        """Mark the file as being committed, for other processes too (released by ``close``)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def sync(self) -> None:
        """fsync the file, wherever it is now: a rename keeps the descriptor valid."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self._buffer = None
        self.path.unlink(missing_ok=True)


class InstanceStore:
    """The instance files and their index.

    ``duplicate_policy``: an instance whose SOP Instance UID is stored with another data set is refused
    ("reject") or replaces it ("replace"), wherever it was stored (a replacement in another study or series
    moves the file and its index row). ``identity_policy``: an instance whose series is in another study, or
    whose patient identity contradicts its study's stored instances, is refused ("reject") or stored
    ("accept"). ``max_decoded_bytes`` bounds the decoded pixel size an instance may declare.
    ``reconcile``: at opening, index complete instances found on disk without an index row, and remove what a
    crash left (truncated files, files of an instance that moved).
    """

    def __init__(self, data_dir: Path, *, duplicate_policy: str = "reject", identity_policy: str = "reject",
                 max_decoded_bytes: int = MAX_DECODED_BYTES, reconcile: bool = True) -> None:
        self.root = Path(data_dir).resolve()
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        for d in (self.root, self.instances_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # A temporary file left by a killed process was never acknowledged: drop it. Other processes may share
        # the data directory (``neuronova worker``), so only files of dead processes of this host go (or any
        # older than a day, from another host).
        for leftover in self.tmp_dir.iterdir():
            if _abandoned(leftover):
                leftover.unlink(missing_ok=True)
        self.index = Index(self.root / "index.sqlite3")
        # The index file and the directories made above must not vanish in a power cut.
        _fsync_dir(self.root)
        _fsync_dir(self.root.parent)
        self.duplicate_policy = duplicate_policy
        self.identity_policy = identity_policy
        self.max_decoded_bytes = max_decoded_bytes
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        # SOP Instance UIDs being committed, with what they are, guarded by _lock.
        self._in_flight: dict[str, ScannedInstance] = {}
        # Directory fsyncs run here while the committing thread fsyncs the file, when flushes are slow.
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-fsync")
        self._flush_seconds = 0.0
        self._dirs = DirectorySync()
        # Series directories known to exist inside the data directory, with durable entries.
        self._known_dirs: set[Path] = set()
        # Identities confirmed by the index (series -> study, study -> (PatientID, issuer)): an instance that
        # repeats them needs no query. Forgotten on any replacement (it may move an instance).
        self._series_study: dict[str, str] = {}
        self._study_patient: dict[str, tuple[str, str | None]] = {}
        if reconcile:
            from neuronova.store.reconcile import reconcile as _reconcile

            _reconcile(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> InstanceStore:
        """The store the settings describe (data directory, duplicate and identity policies, decoded-size bound)."""
        return cls(settings.data_dir, duplicate_policy=settings.duplicate_policy,
                   identity_policy=settings.identity_policy, max_decoded_bytes=settings.max_decoded_bytes)

    def close(self) -> None:
        self._syncer.shutdown(wait=True)
        self.index.close()

    def new_tmp(self) -> TmpInstance:
        return TmpInstance(self.tmp_dir / f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex}.part")

    def put(self, chunks: bytes | Iterable[bytes], *, replace: bool = False,
            expected_study_uid: str | None = None) -> StoreResult:
        """Store one encoded Part 10 instance given as bytes or chunks.

        ``replace`` stores over an instance with the same UID whatever the policy (the node's own results: a
        re-run replaces them); ``expected_study_uid`` refuses an instance of another study (STOW-RS to a study).
        """
        tmp = self.new_tmp()
        try:
            for chunk in [chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks:
                tmp.write(chunk)
        except BaseException:
            tmp.discard()
            raise
        return self.commit(tmp, replace=replace, expected_study_uid=expected_study_uid)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return Path(
            validate_uid(study_uid, name="StudyInstanceUID"),
            validate_uid(series_uid, name="SeriesInstanceUID"),
            validate_uid(sop_uid, name="SOPInstanceUID") + ".dcm",
        )

    def commit(self, tmp: TmpInstance, *, replace: bool = False,
               expected_study_uid: str | None = None) -> StoreResult:
        """Check, make durable and index ``tmp``; raise a NeuroNovaError (and keep nothing) when it is refused."""
        scanned: ScannedInstance | None = None
        try:
            tmp.flush()
            with tmp.content() as fp:
                scanned = scan_part10(fp, tmp.size)
            warnings = tuple(check_instance(scanned, max_decoded_bytes=self.max_decoded_bytes))
            if expected_study_uid is not None and scanned.study_uid != expected_study_uid:
                raise StudyMismatch("the instance belongs to another study than the request's StudyInstanceUID")
            rel = self.relative_path(scanned.study_uid, scanned.series_uid, scanned.sop_instance_uid)
            final = self.instances_dir / rel
            series_dir = final.parent
            if series_dir in self._known_dirs:
                dirs = [series_dir]
            else:
                # Belt and braces: validated UIDs cannot escape, but a path must never leave the data directory.
                if self.instances_dir not in final.resolve().parents:
                    raise InvalidDicom("instance path escapes the data directory")
                self._make_dirs(final)
                # Whoever created them, the new entries must be durable before this instance is answered.
                dirs = [series_dir, series_dir.parent, self.instances_dir]
        except BaseException as exc:
            tmp.discard()
            if isinstance(exc, NeuroNovaError) and scanned is not None:
                exc.sop_class_uid, exc.sop_instance_uid = scanned.sop_class_uid, scanned.sop_instance_uid
            raise
        uid = scanned.sop_instance_uid
        try:
            outcome, moved_from = self._claim(tmp, final, scanned, replace=replace)
        except FileNotFoundError as exc:  # the series directory vanished (removed by hand?): recreate next time
            self._known_dirs.discard(series_dir)
            raise _disk_error(exc) from exc
        except NeuroNovaError as exc:
            exc.sop_class_uid, exc.sop_instance_uid = scanned.sop_class_uid, uid
            raise
        if outcome == "duplicate":
            return StoreResult(instance=scanned, outcome=outcome, path=final, warnings=warnings)
        try:
            self._make_durable(tmp, final, dirs, new=outcome == "new")
            if len(self._known_dirs) >= KNOWN_DIRS:
                self._known_dirs.clear()
            self._known_dirs.add(series_dir)  # exists, checked and durable: later instances skip all three
            self.index.add_instance(scanned.attrs, transfer_syntax=scanned.transfer_syntax, path=str(rel),
                                    size=tmp.size)
            self._remember_identity(scanned, replaced=outcome == "replaced")
            if moved_from is not None:
                # The index row has moved: the old file is nobody's now (a crash before this line leaves it to
                # the reconciliation at the next start, which removes files whose UID is indexed elsewhere).
                moved_from.unlink(missing_ok=True)
                try:
                    self._dirs.sync(moved_from.parent)
                except OSError:
                    log.warning("could not fsync %s after moving an instance out", moved_from.parent.name)
        finally:
            tmp.close()  # releases the file's lock: other processes may look at it now
            with self._lock:
                self._in_flight.pop(uid, None)
                self._settled.notify_all()
        return StoreResult(instance=scanned, outcome="stored" if outcome == "new" else outcome, path=final,
                           warnings=warnings)

    def _make_dirs(self, final: Path) -> None:
        for d in (final.parent.parent, final.parent):
            if not d.exists():
                try:
                    d.mkdir(exist_ok=True)
                except OSError as exc:
                    raise _disk_error(exc) from exc

    def _claim(self, tmp: TmpInstance, final: Path, scanned: ScannedInstance, *,
               replace: bool) -> tuple[str, Path | None]:
        """Decide what ``tmp`` becomes and mark its UID in flight: "new" (renamed into place already), "stored"
        (replaces an unindexed leftover), "replaced" (with the path it moves from, when its study or series
        changed), or "duplicate" (tmp discarded).

        A file being committed is locked (flock) by its writer until its index row is written, so that an
        unindexed file found at ``final`` is told apart: locked, another process is committing it (wait, then
        look again); unlocked, a crash left it (it was never acknowledged: replace it)."""
        uid = scanned.sop_instance_uid
        try:
            while True:
                with self._lock:
                    while uid in self._in_flight:
                        self._settled.wait()
                    row = self.index.instance(uid)
                    if row is not None:
                        stored = self.instances_dir / row["path"]
                        outcome = self._against_stored(tmp, stored, scanned, replace=replace)
                        if outcome == "duplicate":
                            return outcome, None
                        self._check_identity(scanned)
                        tmp.lock()
                        self._in_flight[uid] = scanned
                        return outcome, (stored if stored != final else None)
                    self._check_identity(scanned)
                    if not final.exists():
                        tmp.lock()
                        os.rename(tmp.path, final)  # made durable by _make_durable before anything is answered
                        self._in_flight[uid] = scanned
                        return "new", None
                    if not _locked_elsewhere(final):
                        log.info("replacing an unindexed file left by an interrupted store: %s", uid)
                        tmp.lock()
                        self._in_flight[uid] = scanned
                        return "stored", None
                _wait_unlocked(final)  # another process commits this UID: wait for it outside our lock
        except BaseException:
            tmp.discard()
            raise

    def _check_identity(self, scanned: ScannedInstance) -> None:
        """Refuse (policy "reject") an instance whose series is in another study or whose patient identity
        contradicts its study, against the index and the instances being committed now. Called under _lock."""
        if self.identity_policy == "accept":
            return
        attrs = scanned.attrs
        patient, issuer = attrs.get("PatientID", ""), attrs.get("IssuerOfPatientID") or None
        why = None
        for other in self._in_flight.values():  # the instances being committed now (not yet in the index)
            if other.series_uid == scanned.series_uid and other.study_uid != scanned.study_uid:
                why = "its SeriesInstanceUID belongs to another study"
            elif other.study_uid == scanned.study_uid and (
                    other.attrs.get("PatientID", "") != patient
                    or (issuer and other.attrs.get("IssuerOfPatientID") not in (None, "", issuer))):
                why = "its patient identity differs from the study's other instances"
            if why:
                break
        if why is None and not (self._series_study.get(scanned.series_uid) == scanned.study_uid
                                and self._study_patient.get(scanned.study_uid) == (patient, issuer)):
            # Not what the last instances of this series said: ask the index.
            why = self.index.identity_conflict(sop_uid=scanned.sop_instance_uid, study_uid=scanned.study_uid,
                                               series_uid=scanned.series_uid, patient_id=patient, issuer=issuer)
        if why is not None:
            log.warning("refused instance %s: %s (identity policy: reject)", scanned.sop_instance_uid, why)
            raise IdentityConflict(f"identity conflict: {why}")

    def _remember_identity(self, scanned: ScannedInstance, *, replaced: bool) -> None:
        with self._lock:
            if replaced or len(self._series_study) > KNOWN_DIRS:
                self._series_study.clear()
                self._study_patient.clear()
            if self.identity_policy == "reject" and not replaced:
                self._series_study[scanned.series_uid] = scanned.study_uid
                self._study_patient[scanned.study_uid] = (scanned.attrs.get("PatientID", ""),
                                                          scanned.attrs.get("IssuerOfPatientID") or None)

    def _against_stored(self, tmp: TmpInstance, stored: Path, scanned: ScannedInstance, *, replace: bool) -> str:
        try:
            with tmp.content() as fp:
                same = same_data_set(fp, scanned, stored)
        except FileNotFoundError:  # indexed but gone (removed by hand): store it again
            log.warning("stored instance %s is missing from disk: storing it again", scanned.sop_instance_uid)
            return "replaced"
        if same:
            tmp.discard()
            return "duplicate"
        if self.duplicate_policy == "reject" and not replace:
            log.warning("refused instance %s: same SOP Instance UID as a stored instance, different content "
                        "(policy: reject)", scanned.sop_instance_uid)
            raise DuplicateConflict("an instance with this SOP Instance UID is already stored with a different "
                                    "data set")
        log.warning("replacing stored instance %s with a different data set (policy: replace)",
                    scanned.sop_instance_uid)
        return "replaced"

    def _make_durable(self, tmp: TmpInstance, final: Path, dirs: list[Path], *, new: bool) -> None:
        """fsync the file and ``dirs`` (every directory whose entries may have changed); raise OutOfResources
        (keeping nothing new) if the disk refuses."""
        try:
            if new and self._flush_seconds > PARALLEL_FSYNC_ABOVE:
                # Already renamed: the file's fsync and the directories' run together.
                pending = [self._syncer.submit(self._dirs.sync, d) for d in dirs]
                try:
                    self._timed_sync(tmp)
                finally:
                    for f in pending:
                        f.result()
            elif new:
                self._timed_sync(tmp)
                for d in dirs:
                    self._dirs.sync(d)
            else:
                # Over an existing file: the content is durable before the rename, so a crash leaves either.
                tmp.sync()
                os.replace(tmp.path, final)
                for d in dirs:
                    self._dirs.sync(d)
        except OSError as exc:
            if new:
                final.unlink(missing_ok=True)
                tmp.close()
            else:
                tmp.discard()
            raise _disk_error(exc) from exc

    def _timed_sync(self, tmp: TmpInstance) -> None:
        start = time.perf_counter()
        tmp.sync()
        # A moving average of the file fsync's latency (unlocked: a lost update only delays the average).
        self._flush_seconds = 0.8 * self._flush_seconds + 0.2 * (time.perf_counter() - start)

    def path_of(self, sop_uid: str) -> Path | None:
        row = self.index.instance(sop_uid)
        return None if row is None else self.instances_dir / row["path"]
