"""IHE IOCM rejection notes: the standard way to withdraw instances from an archive that is not Orthanc.

A Rejection Note (IHE RAD TF-3 "Imaging Object Change Management") is a Key Object Selection document in the
rejected instances' study, titled (113001, DCM, "Rejected for Quality Reasons") and listing them; an archive
that implements IOCM (dcm4chee-arc, for one) hides or deletes them and stops serving them. highdicom builds
the document (``hd.ko``); its UIDs are derived from what it rejects, so a retry sends the same note.

Opt-in per destination (``?reject=iocm``): an archive without IOCM support files the note as one more object
in the study and keeps the instances (Orthanc does; use ``?orthanc=`` there).
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.coding import Code

from neuronova.outbox.destinations import Destination
from neuronova.outbox.senders import Delivery
from neuronova.store import InstanceStore
from neuronova.writers.uids import derive_uid

log = logging.getLogger(__name__)

REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
#: Series number of the rejection notes (after the results' 9000+ series).
SERIES_NUMBER = 9900

Send = Callable[[Destination, Sequence[tuple[str, Path]]], dict[str, Delivery]]


def rejection_note(rejected: Sequence[pydicom.Dataset], *, manufacturer: str = "NeuroNova") -> pydicom.Dataset:
    """The KOS rejecting ``rejected`` (instances of one study); ValueError if they span several studies."""
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"a rejection note covers one study, found {len(studies)}")
    uids = sorted(str(ds.SOPInstanceUID) for ds in rejected)
    content = hd.ko.KeyObjectSelection(document_title=REJECTED_FOR_QUALITY_REASONS, referenced_objects=rejected)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=rejected, content=content,
        series_instance_uid=derive_uid("iocm-rejection-series", studies.pop()),
        series_number=SERIES_NUMBER, sop_instance_uid=derive_uid("iocm-rejection", *uids), instance_number=1,
        manufacturer=manufacturer)


class IocmRejecter:
    """Removes stale instances from a destination by sending it a rejection note per study."""

    def __init__(self, destination: Destination, *, store: InstanceStore, send: Send) -> None:
        self.destination = destination
        self.store = store
        self.send = send
        self.spool = store.root / "outbox-iocm"

    def remove(self, sop_uids: Sequence[str]) -> dict[str, Delivery]:
        out: dict[str, Delivery] = {}
        by_study: dict[str, list[pydicom.Dataset]] = defaultdict(list)
        for uid in sop_uids:
            path = self.store.path_of(uid)
            if path is None or not path.exists():
                out[uid] = Delivery("failed", "missing", "the stale instance is no longer in the node's store, so "
                                                         "no rejection note can name it")
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_study[str(ds.StudyInstanceUID)].append(ds)
        for rejected in by_study.values():
            uids = [str(ds.SOPInstanceUID) for ds in rejected]
            try:
                note = rejection_note(rejected)
            except (ValueError, TypeError, AttributeError) as exc:  # highdicom refused the evidence
                for uid in uids:
                    out[uid] = Delivery("failed", "no rejection note", f"{type(exc).__name__}: {exc}")
                continue
            self.spool.mkdir(parents=True, exist_ok=True)
            path = self.spool / f"{note.SOPInstanceUID}.dcm"
            buf = io.BytesIO()
            note.save_as(buf, enforce_file_format=True)
            path.write_bytes(buf.getvalue())
            answer = self.send(self.destination, [(str(note.SOPInstanceUID), path)]).get(str(note.SOPInstanceUID))
            if answer is None:
                answer = Delivery("retry", "no answer", "the rejection note got no answer")
            elif answer.outcome == "sent":
                answer = Delivery("removed", f"rejected by IOCM note {note.SOPInstanceUID} ({answer.status})")
                path.unlink(missing_ok=True)
            for uid in uids:
                out[uid] = answer
        return out
