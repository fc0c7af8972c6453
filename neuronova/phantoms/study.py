"""Four-sequence MR phantom studies: one head seen as T1, T1c, T2 and FLAIR, each series in its own geometry.

The head is drawn once (:func:`neuronova.phantoms.head.draw_anatomy`) on a 1 mm world grid whose centre is the
patient-space origin (DICOM LPS), each contrast is rendered on that grid, and every series samples it on its own
acquisition grid (axial, sagittal, coronal or oblique; any pixel and slice spacing), with its own noise and bias
field. The ground truth of a series is the world's labels sampled (nearest) on the same grid, so a test knows
which voxel of which slice is tumour whatever the orientation.

Contrasts (why a four-channel model can tell what a T1-only model cannot): CSF is dark on T1, T1c and FLAIR and
bright on T2; edema is bright on T2 and FLAIR; the enhancing tumour is bright on T1c only; necrosis is dark on
T1c, bright on T2 and intermediate on FLAIR.

Headers are those of a routine brain-tumour protocol: SeriesDescription, ScanningSequence/SequenceVariant,
RepetitionTime/EchoTime/InversionTime, MRAcquisitionType, and ContrastBolusAgent on the T1c only.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from scipy import ndimage

from neuronova.phantoms.dicom import _uid, phantom_header
from neuronova.phantoms.head import (
    EDEMA, ENHANCING, GREY, NECROTIC, WHITE, Anatomy, TumourSpec, _texture, draw_anatomy,
)

ROLES = ("t1", "t1c", "t2", "flair")
#: World grid: 1 mm, large enough for any head the anatomy draws.
WORLD_SHAPE = (176, 240, 240)

# Mean intensity per tissue code (BACKGROUND, SCALP, BONE, WHITE, GREY, CSF, SOFT), per contrast.
_TISSUE = {
    "t1": (0.0, 750.0, 90.0, 560.0, 450.0, 170.0, 420.0),
    "t1c": (0.0, 760.0, 90.0, 560.0, 450.0, 170.0, 470.0),
    "t2": (0.0, 380.0, 60.0, 330.0, 480.0, 1150.0, 450.0),
    "flair": (0.0, 460.0, 60.0, 380.0, 500.0, 110.0, 420.0),
}
# (enhancing/solid, necrotic, edema) per contrast; T1c per tumour kind (as the single-series phantoms).
_TUMOUR = {
    "t1": (420.0, 230.0, 360.0),
    "t2": (620.0, 1050.0, 820.0),
    "flair": (600.0, 430.0, 880.0),
}
_T1C_TUMOUR = {
    "glioma": (920.0, 230.0, 390.0),
    "meningioma": (820.0, 230.0, 400.0),
    "metastasis": (880.0, 240.0, 380.0),
    "pituitary": (760.0, 230.0, 400.0),
}

# Header of each sequence: description, ScanningSequence, SequenceVariant, TR, TE, TI (ms), flip angle.
_SEQUENCE: dict[str, tuple[str, list[str], list[str], float, float, float | None, float]] = {
    "t1": ("T1 MPRAGE", ["GR", "IR"], ["SK", "SP", "MP"], 2300.0, 2.98, 900.0, 9.0),
    "t1c": ("T1 MPRAGE POST GD", ["GR", "IR"], ["SK", "SP", "MP"], 2300.0, 2.98, 900.0, 9.0),
    "t2": ("T2 TSE", ["SE"], ["SK", "SP"], 5000.0, 95.0, None, 150.0),
    "flair": ("T2 FLAIR", ["SE", "IR"], ["SK", "SP", "MP"], 9000.0, 85.0, 2500.0, 150.0),
}

#: Slice plane -> (row direction, column direction) cosines in LPS, head first supine.
PLANES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class Acquisition:
    """The geometry of one series: plane, tilt, matrix and spacings (all sizes in mm)."""

    role: str
    plane: str = "axial"
    #: Rotation (degrees) of the slice plane about the patient's left-right axis: an oblique series.
    tilt_deg: float = 0.0
    rows: int = 256
    columns: int = 256
    pixel_spacing: tuple[float, float] = (0.9, 0.9)  # (between rows, between columns), as PixelSpacing
    slices: int = 155
    slice_spacing: float = 1.0
    #: Instances in a shuffled order with shuffled InstanceNumbers (senders renumber).
    shuffled: bool = False
    #: Offset (LPS mm) of the acquisition centre from the head centre.
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def directions(self) -> np.ndarray:
        """3x3 columns: row direction, column direction, slice normal (LPS)."""
        if self.plane not in PLANES:
            raise ValueError(f"plane must be one of {sorted(PLANES)}, got {self.plane!r}")
        row, col = (np.asarray(v, float) for v in PLANES[self.plane])
        t = math.radians(self.tilt_deg)
        about_x = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
        row, col = about_x @ row, about_x @ col
        return np.stack([row, col, np.cross(row, col)], axis=1)


#: The routine protocol: 3D T1 and T1c sagittal/axial, 2D-like T2 and FLAIR (axial, anisotropic).
DEFAULT_PROTOCOL = (
    Acquisition("t1c", "axial", rows=256, columns=256, pixel_spacing=(0.9, 0.9), slices=155, slice_spacing=1.0),
    Acquisition("t1", "sagittal", rows=240, columns=240, pixel_spacing=(1.0, 1.0), slices=160, slice_spacing=1.0),
    Acquisition("t2", "axial", rows=224, columns=224, pixel_spacing=(1.0, 1.0), slices=48, slice_spacing=3.3),
    Acquisition("flair", "coronal", rows=224, columns=224, pixel_spacing=(1.0, 1.0), slices=60, slice_spacing=3.0),
)


@dataclass
class StudySeries:
    role: str
    acquisition: Acquisition
    #: Instances in transfer order (shuffled when the acquisition says so).
    datasets: list[Dataset]
    #: Ground truth labels (slice, row, column), slices in order along the normal (as a loader sorts them).
    labels: np.ndarray
    #: 4x4: (slice, row, column, 1) index -> LPS mm (slices in order along the normal).
    affine: np.ndarray

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


@dataclass
class MultiSequenceStudy:
    seed: int
    series: dict[str, StudySeries]
    tumours: list[TumourSpec] = field(default_factory=list)

    @property
    def study_instance_uid(self) -> str:
        return str(next(iter(self.series.values())).datasets[0].StudyInstanceUID)

    def all_datasets(self) -> list[Dataset]:
        return [ds for s in self.series.values() for ds in s.datasets]


@dataclass
class World:
    """The head on the 1 mm world grid: one image per contrast (noise-free) and the labels."""

    images: dict[str, np.ndarray]
    labels: np.ndarray
    spacing: float
    head_centre_lps: np.ndarray  # mm
    tumours: list[TumourSpec]
    rng: np.random.Generator

    def index_of(self, lps: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm -> (3, ...) world array indices (z, y, x)."""
        shape = self.labels.shape
        return np.stack([lps[..., 2] / self.spacing + (shape[0] - 1) / 2, lps[..., 1] / self.spacing + (shape[1] - 1) / 2,
                         lps[..., 0] / self.spacing + (shape[2] - 1) / 2])


def _kinds(rng: np.random.Generator, n_tumours: int | None) -> list[str] | None:
    if n_tumours is None:
        return None
    if not 0 <= n_tumours <= 3:
        raise ValueError(f"n_tumours must be 0-3, got {n_tumours}")
    return [str(k) for k in rng.choice(["glioma", "meningioma", "metastasis", "pituitary"], size=n_tumours,
                                       p=[0.4, 0.25, 0.25, 0.1])]


def render(anatomy: Anatomy, rng: np.random.Generator, roles: Sequence[str] = ROLES) -> dict[str, np.ndarray]:
    """Noise-free images of ``anatomy`` in each contrast (tissue means jittered per head)."""
    shape = anatomy.tissue.shape
    parenchyma = (anatomy.tissue == WHITE) | (anatomy.tissue == GREY)
    texture = np.broadcast_to(_texture(rng, anatomy.coords), shape)[parenchyma]
    images = {}
    for role in roles:
        table = np.array(_TISSUE[role], np.float32) * rng.uniform(0.92, 1.08, 7).astype(np.float32)
        image = table[anatomy.tissue]
        image[parenchyma] *= 1 + np.float32(0.04) * texture
        for i, spec in enumerate(anatomy.tumours, start=1):
            values = np.array(_T1C_TUMOUR[spec.kind] if role == "t1c" else _TUMOUR[role], np.float32)
            values *= rng.uniform(0.92, 1.08, 3).astype(np.float32)
            for label, value in zip((ENHANCING, NECROTIC, EDEMA), values, strict=True):
                image[(anatomy.instance == i) & (anatomy.labels == label)] = value
        images[role] = image
    return images


def make_world(seed: int, *, n_tumours: int | None = None, spacing: float = 1.0,
               shape: tuple[int, int, int] = WORLD_SHAPE) -> World:
    """Draw a head and render its four contrasts on a world grid of ``shape`` at ``spacing`` mm."""
    rng = np.random.default_rng([seed, 4])
    kinds = _kinds(rng, n_tumours)
    anatomy = draw_anatomy(rng, shape=shape, spacing=(spacing, spacing, spacing), kinds=kinds)
    images = render(anatomy, rng)
    hz, hy, hx = anatomy.head_centre_mm
    return World(images=images, labels=anatomy.labels, spacing=spacing, head_centre_lps=np.array([hx, hy, hz]),
                 tumours=anatomy.tumours, rng=rng)


def acquisition_affine(world: World, acq: Acquisition) -> np.ndarray:
    """4x4 (slice, row, column, 1) -> LPS mm of ``acq``, centred on the head (plus the acquisition's offset)."""
    dirs = acq.directions()
    steps = np.stack([dirs[:, 2] * acq.slice_spacing, dirs[:, 1] * acq.pixel_spacing[0],
                      dirs[:, 0] * acq.pixel_spacing[1]], axis=1)
    centre = world.head_centre_lps + np.asarray(acq.offset_mm, float)
    half = np.array([(acq.slices - 1) / 2, (acq.rows - 1) / 2, (acq.columns - 1) / 2])
    affine = np.eye(4)
    affine[:3, :3] = steps
    affine[:3, 3] = centre - steps @ half
    return affine


def sample(world: World, affine: np.ndarray, shape: tuple[int, int, int], image: np.ndarray | None,
           *, order: int) -> np.ndarray:
    """``image`` (or the labels when None) of the world sampled on the grid (``affine``, ``shape``)."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), axis=-1)
    lps = grid @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    source = world.labels if image is None else image
    return ndimage.map_coordinates(source, world.index_of(lps), order=order, mode="constant", cval=0.0)


def degrade(image: np.ndarray, rng: np.random.Generator, *, noise_scale: float = 1.0,
            coords_mm: np.ndarray | None = None) -> np.ndarray:
    """Gain, a linear bias field and Rician-like noise (the magnitude of a noisy signal), clipped to 12 bits."""
    gain = rng.uniform(0.7, 1.4)
    out = image.astype(np.float32) * np.float32(gain)
    if coords_mm is not None:
        grad = rng.normal(0, 0.1, 3) / 100
        out *= (1 + coords_mm @ grad.astype(np.float32)).astype(np.float32)
    sigma = rng.uniform(10, 30) * gain * noise_scale
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    np.abs(out, out=out)
    np.minimum(out, 4095, out=out)
    return out


def acquire(world: World, acq: Acquisition, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) of one series on its acquisition grid."""
    shape = (acq.slices, acq.rows, acq.columns)
    affine = acquisition_affine(world, acq)
    image = sample(world, affine, shape, world.images[acq.role], order=1)
    labels = sample(world, affine, shape, None, order=0).astype(np.uint8)
    grid_centre = (np.array(shape) - 1) / 2
    idx = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) - c for n, c in zip(shape, grid_centre, strict=True)),
                               indexing="ij"), axis=-1)
    coords = idx @ affine[:3, :3].T.astype(np.float32)
    return degrade(image, rng, coords_mm=coords), labels, affine


def make_study(seed: int, *, protocol: Sequence[Acquisition] = DEFAULT_PROTOCOL, n_tumours: int | None = None,
               frame_of_reference_uid: str | None = None, patient_id: str | None = None) -> MultiSequenceStudy:
    """A study of one series per acquisition of ``protocol`` (one per role), all in one frame of reference
    (``frame_of_reference_uid`` when given); ``n_tumours`` None draws 0-3 tumours from the seed."""
    world = make_world(seed, n_tumours=n_tumours)
    study_uid = _uid("study", "MR4", seed)
    frame_uid = frame_of_reference_uid or _uid("frame-of-reference", study_uid, seed)
    series = {}
    for number, acq in enumerate(protocol, start=1):
        image, labels, affine = acquire(world, acq, world.rng)
        datasets = series_datasets(image, affine, acq, seed=seed, study_uid=study_uid, frame_uid=frame_uid,
                                   series_number=number, patient_id=patient_id)
        series[acq.role] = StudySeries(role=acq.role, acquisition=acq, datasets=datasets, labels=labels, affine=affine)
    return MultiSequenceStudy(seed=seed, series=series, tumours=world.tumours)


def series_datasets(image: np.ndarray, affine: np.ndarray, acq: Acquisition, *, seed: int, study_uid: str,
                    frame_uid: str, series_number: int, patient_id: str | None = None) -> list[Dataset]:
    """One MR Image Storage instance per slice of ``image`` (slice, row, column) at ``affine``."""
    description, scanning, variant, tr, te, ti, flip = _SEQUENCE[acq.role]
    plane = acq.plane if acq.tilt_deg == 0 else f"{acq.plane} oblique"
    series_uid = _uid("series", study_uid, acq.role, series_number)
    study_date = (datetime.date(2024, 1, 1) + datetime.timedelta(days=seed % 366)).strftime("%Y%m%d")
    dirs = acq.directions()
    stored = np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    order = list(range(acq.slices))
    if acq.shuffled:
        np.random.default_rng([seed, series_number]).shuffle(order)
    datasets = []
    for number, k in enumerate(order, start=1):
        ds = phantom_header(
            sop_class=MRImageStorage, sop_uid=_uid("instance", series_uid, k), study_uid=study_uid,
            study_date=study_date, seed=seed, series_uid=series_uid, series_number=series_number, modality="MR",
            frame_uid=frame_uid, patient_name=f"Phantom^MR4{seed}", patient_id=patient_id or f"PHANTOM-MR4-{seed:06d}",
            accession=f"NN4{seed:08d}", study_description="Synthetic brain tumour protocol - not patient data",
            series_description=f"{description} {plane}", body_part="BRAIN", model_name="neuronova.phantoms.study")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        ds.ImageComments = "Synthetic phantom, not for clinical use"
        position = affine[:3, :3] @ np.array([k, 0.0, 0.0]) + affine[:3, 3]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*dirs[:, 0], *dirs[:, 1])]
        ds.PixelSpacing = [round(acq.pixel_spacing[0], 6), round(acq.pixel_spacing[1], 6)]
        ds.SliceThickness = round(acq.slice_spacing, 6)
        ds.SpacingBetweenSlices = round(acq.slice_spacing, 6)
        ds.SliceLocation = round(float(position @ dirs[:, 2]), 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = acq.rows, acq.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.ScanningSequence = scanning
        ds.SequenceVariant = variant
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D" if acq.role in ("t1", "t1c") else "2D"
        ds.RepetitionTime = tr
        ds.EchoTime = te
        if ti is not None:
            ds.InversionTime = ti
        ds.EchoTrainLength = 1 if acq.role in ("t1", "t1c") else 16
        ds.FlipAngle = flip
        ds.MagneticFieldStrength = 3
        ds.ImagedNucleus = "1H"
        if acq.role == "t1c":
            ds.ContrastBolusAgent = "Gadobutrol"
            ds.ContrastBolusRoute = "IV"
        ds.WindowCenter, ds.WindowWidth = 500, 1000
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def small_protocol(*, scale: float = 1.0) -> tuple[Acquisition, ...]:
    """A quick protocol for tests: the default planes at about 1.8 mm, ``scale`` times the matrix sizes."""
    def size(n: int) -> int:
        return max(8, int(round(n * scale)))

    return (
        Acquisition("t1c", "axial", rows=size(128), columns=size(128), pixel_spacing=(1.8, 1.8), slices=size(84),
                    slice_spacing=1.9),
        Acquisition("t1", "sagittal", rows=size(120), columns=size(120), pixel_spacing=(1.9, 1.9), slices=size(80),
                    slice_spacing=2.0),
        Acquisition("t2", "axial", rows=size(112), columns=size(112), pixel_spacing=(2.0, 2.0), slices=size(48),
                    slice_spacing=3.3, tilt_deg=12.0),
        Acquisition("flair", "coronal", rows=size(112), columns=size(112), pixel_spacing=(2.0, 2.0), slices=size(60),
                    slice_spacing=3.0, shuffled=True),
    )


def with_role(acq: Acquisition, role: str) -> Acquisition:
    return replace(acq, role=role)


__all__ = ["DEFAULT_PROTOCOL", "PLANES", "ROLES", "Acquisition", "MultiSequenceStudy", "StudySeries", "World",
           "acquire", "make_study", "make_world", "render", "series_datasets", "small_protocol"]
