"""What every object the node writes shares: the algorithm's identity, equipment, source checks.

highdicom copies patient and study identity from the source images; this module supplies the rest:
Contributing Equipment naming NeuroNova and the model (with a Device UID derived from the model hash),
the Algorithm Identification Sequence, series descriptions that say "NOT FOR CLINICAL USE" for demo
weights, and the checks every writer runs on its source images.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

from neuronova import __version__
from neuronova.writers.uids import UIDScope, device_uid

logger = logging.getLogger(__name__)

MANUFACTURER = "NeuroNova"
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LO_MAX = 64  # Long String (LO) values: Series Description, Manufacturer's Model Name, ...


def _family_code(family: str | Code | hd.sr.CodedConcept) -> Code | hd.sr.CodedConcept:
    """A CID 7162 "Algorithm Family" code, given as a code or by its meaning ("Artificial Intelligence")."""
    if isinstance(family, (Code, hd.sr.CodedConcept)):
        return family
    if not isinstance(family, str):
        raise TypeError(f"family must be a str or a Code, found {type(family).__name__}")
    wanted = family.strip().lower()
    for keyword in codes.cid7162.dir():
        code = getattr(codes.cid7162, keyword)
        if code.meaning.lower() == wanted or keyword.lower() == wanted.replace(" ", ""):
            return code
    known = sorted(getattr(codes.cid7162, k).meaning for k in codes.cid7162.dir())
    raise ValueError(f"family {family!r} is not in CID 7162 (Algorithm Family); known: {known}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identity of the model that produced a result.

    ``demo`` marks weights that are not validated for diagnosis: every object then says
    "NOT FOR CLINICAL USE" (series description, SR text, burned-in text on secondary captures).
    """

    name: str
    version: str
    model_sha256: str
    family: str | Code | hd.sr.CodedConcept = "Artificial Intelligence"
    demo: bool = True
    family_code: Code | hd.sr.CodedConcept = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("name", "version", "model_sha256"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"AlgorithmInfo.{name} must be a str, found {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"AlgorithmInfo.{name} must not be empty")
        if len(self.name) > _LO_MAX or len(self.version) > _LO_MAX:
            raise ValueError(
                f"AlgorithmInfo name and version must be at most {_LO_MAX} characters, "
                f"found {len(self.name)} and {len(self.version)}"
            )
        if "\\" in self.name or "\\" in self.version:
            raise ValueError("AlgorithmInfo name and version must not contain a backslash (DICOM separator)")
        object.__setattr__(self, "model_sha256", self.model_sha256.strip().lower())
        if not _SHA256.match(self.model_sha256):
            raise ValueError(
                f"AlgorithmInfo.model_sha256 must be 64 hexadecimal characters (a SHA-256), "
                f"found {self.model_sha256!r}"
            )
        if not isinstance(self.demo, bool):
            raise TypeError(f"AlgorithmInfo.demo must be a bool, found {type(self.demo).__name__}")
        object.__setattr__(self, "family_code", _family_code(self.family))

    @property
    def device_uid(self) -> UID:
        """The model as a device: same weights, same UID."""
        return device_uid(self.model_sha256)

    @property
    def short_hash(self) -> str:
        return self.model_sha256[:16]

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Algorithm Identification Sequence (SEG segments and other image objects)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family_code,
            version=self.version,
            source=MANUFACTURER,
            parameters={"model_sha256": self.model_sha256},
        )

    def sr_algorithm_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification (SR measurement groups)."""
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=[f"model_sha256={self.model_sha256}"],
            family=self.family_code,
            manufacturer=MANUFACTURER,
        )

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """NeuroNova with this model as processing equipment (Contributing Equipment Sequence item)."""
        description = f"AI inference by {self.name} {self.version}"
        if self.demo:
            description += f" (demonstration weights, {NOT_FOR_CLINICAL_USE})"
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name,
            software_versions=[__version__, self.version],
            device_serial_number=self.model_sha256,
            contribution_description=description,
        )

    def uid_scope(self, source_series_uid: str, pipeline: str | None = None) -> UIDScope:
        return UIDScope(
            source_series_uid=source_series_uid,
            pipeline=pipeline if pipeline is not None else self.name,
            model_version=self.version,
        )


def equipment_kwargs(algorithm: AlgorithmInfo) -> dict[str, object]:
    """General Equipment of the object itself: NeuroNova, the model, the model hash as serial number."""
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": algorithm.name,
        "software_versions": __version__,
        "device_serial_number": algorithm.model_sha256,
    }


def series_description(given: str | None, default: str, algorithm: AlgorithmInfo) -> str:
    """The series description, ending in "NOT FOR CLINICAL USE" for demo weights (64 characters at most)."""
    if given is not None and not isinstance(given, str):
        raise TypeError(f"series_description must be a str or None, found {type(given).__name__}")
    text = (given if given is not None else default).strip()
    if not algorithm.demo or NOT_FOR_CLINICAL_USE in text.upper():
        if len(text) > _LO_MAX:
            raise ValueError(f"series_description must be at most {_LO_MAX} characters, found {len(text)}")
        return text
    suffix = f" - {NOT_FOR_CLINICAL_USE}"
    # The warning matters more than the tail of the description: cut the description, keep the warning.
    return text[: _LO_MAX - len(suffix)].rstrip() + suffix


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, found {type(value).__name__}")
    if not minimum <= int(value) <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], found {value}")
    return int(value)


def check_finite(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, found {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, found {value}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, found {value}")
    return number


def check_source_images(source_images: object) -> list[pydicom.Dataset]:
    """Single-frame images of one series and one frame of reference, with the attributes writers use."""
    if isinstance(source_images, pydicom.Dataset) or not isinstance(source_images, Sequence):
        raise TypeError(
            f"source_images must be a sequence of pydicom Datasets, found {type(source_images).__name__}"
        )
    images = list(source_images)
    if not images:
        raise ValueError("source_images must not be empty")
    for i, ds in enumerate(images):
        if not isinstance(ds, pydicom.Dataset):
            raise TypeError(f"source_images[{i}] must be a pydicom Dataset, found {type(ds).__name__}")
        missing = [
            kw
            for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
            if kw not in ds
        ]
        if missing:
            raise ValueError(f"source_images[{i}] lacks {', '.join(missing)}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source_images[{i}] is a multi-frame image ({ds.NumberOfFrames} frames); "
                             "writers take single-frame slices")
    first = images[0]
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        values = {str(ds.get(attribute)) for ds in images}
        if len(values) != 1:
            raise ValueError(f"source_images differ in {attribute}: found {len(values)} values")
    uids = [ds.SOPInstanceUID for ds in images]
    if len(set(uids)) != len(uids):
        raise ValueError("source_images contain the same SOPInstanceUID more than once")
    logger.debug("checked %d source images of one series (%dx%d)", len(images), first.Rows, first.Columns)
    return images


def finish_equipment(target: pydicom.Dataset, source: pydicom.Dataset, algorithm: AlgorithmInfo) -> None:
    """What highdicom leaves out: Device UID of the model, the source's Body Part Examined.

    Device UID (0018,1002) goes in the object's General Equipment module: highdicom has no parameter for
    it, and the dicom3tools release we validate with (2022) flags it inside Contributing Equipment.
    Body Part Examined: dciodvfy reports Type 2C errors in images without it (FACTS.md); the SR
    Document Series module has no such attribute.
    """
    target.DeviceUID = algorithm.device_uid
    if target.get("Modality") != "SR" and "BodyPartExamined" in source and "BodyPartExamined" not in target:
        target.BodyPartExamined = source.BodyPartExamined
