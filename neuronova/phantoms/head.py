"""Synthetic head phantoms: scalp, skull, skull base with sella, brain (grey/white matter), ventricles and
0-3 tumours, as an intensity volume (MR T1-like units or CT Hounsfield units) plus the ground truth.

Anatomy is drawn in millimetres around the head centre and then sampled on the voxel grid, so one seed gives
the same head at any matrix size (only the noise changes). Axes follow DICOM LPS for axial slices: array
(z, y, x) = (inferior->superior, anterior->posterior, right->left).

Tumour kinds and why they are learnable:
- glioma: intra-axial in one hemisphere, irregular, necrotic core, rim, wide edema; CT hypodense.
- meningioma: extra-axial, dural based (centred on the inner table), smooth, solid; CT hyperdense (calcified
  spots sometimes), little edema.
- pituitary: small, midline, in the sella on the skull base and growing upwards; CT hyperdense, solid.
- metastasis (MR only): small solid enhancing nodule with a large edema, anywhere in the brain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Tissue codes of Phantom.tissue
BACKGROUND, SCALP, BONE, WHITE, GREY, CSF, SOFT = range(7)
# Tumour label codes of Phantom.labels (the segmentation model's classes)
ENHANCING, NECROTIC, EDEMA = 1, 2, 3
TUMOUR_LABELS: dict[int, str] = {ENHANCING: "enhancing tumour", NECROTIC: "necrotic core", EDEMA: "edema"}
#: The CT classifier's classes, in the model's output order.
CT_CLASSES: tuple[str, ...] = ("Glioma", "Meningioma", "Pituitary", "No Tumor")
_KIND_OF_CLASS = {"Glioma": "glioma", "Meningioma": "meningioma", "Pituitary": "pituitary"}

# Mean intensities per tissue; each phantom jitters them.
_MR_TISSUE = (0.0, 750.0, 90.0, 560.0, 450.0, 170.0, 420.0)
_CT_TISSUE = (-1000.0, 30.0, 1000.0, 29.0, 38.0, 6.0, 40.0)
# Per tumour kind: intensity of (enhancing/solid, necrotic, edema).
_MR_TUMOUR = {
    "glioma": (920.0, 230.0, 390.0),
    "meningioma": (820.0, 230.0, 400.0),
    "metastasis": (880.0, 240.0, 380.0),
    "pituitary": (760.0, 230.0, 400.0),
}
_CT_TUMOUR = {
    "glioma": (31.0, 13.0, 21.0),
    "meningioma": (62.0, 20.0, 23.0),
    "metastasis": (45.0, 15.0, 21.0),
    "pituitary": (58.0, 20.0, 25.0),
}


@dataclass(frozen=True)
class TumourSpec:
    kind: str
    centre_mm: tuple[float, float, float]  # (z, y, x) relative to the grid centre
    radius_mm: float
    edema_mm: float
    core_fraction: float  # necrotic core radius / tumour radius (0: solid)


@dataclass
class Phantom:
    """A synthetic head volume and its ground truth, all arrays (z, y, x)."""

    image: np.ndarray  # float32, MR arbitrary units or CT HU
    tissue: np.ndarray  # uint8 tissue codes
    labels: np.ndarray  # uint8 tumour labels (0, ENHANCING, NECROTIC, EDEMA)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    modality: str  # "MR" or "CT"
    tumour_class: str  # CT: one of CT_CLASSES; MR: "No Tumor" or the kinds joined by "+"
    tumours: list[TumourSpec] = field(default_factory=list)
    seed: int = 0

    @property
    def whole_tumour(self) -> np.ndarray:
        return self.labels > 0


@dataclass(frozen=True)
class _Head:
    centre: np.ndarray  # (z, y, x) mm relative to grid centre
    scalp: np.ndarray  # semi-axes (z, y, x)
    bone: np.ndarray
    inner: np.ndarray
    brain: np.ndarray
    base_z: float  # skull base (top of the plate), relative to head centre
    plate_mm: float
    sella_y: float
    ventricle_x: float
    grey_mm: float


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre: np.ndarray) -> list[np.ndarray]:
    """Broadcastable mm coordinates of voxel centres, relative to ``centre``."""
    axes = []
    for axis, (n, s, c) in enumerate(zip(shape, spacing, centre, strict=True)):
        coord = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s - c).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = n
        axes.append(coord.reshape(view))
    return axes


def _q(coords: list[np.ndarray], semi: np.ndarray, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    z, y, x = coords
    return ((z - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((x - centre[2]) / semi[2]) ** 2


def _shape_fn(rng: np.random.Generator, irregularity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random low-order harmonics that turn a sphere into a lobulated blob."""
    vectors = rng.normal(size=(4, 3))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, rng.normal(0, irregularity, 4), rng.normal(0, irregularity * 0.7, 4)


def _radial(u: np.ndarray, fn: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    vectors, quad, cubic = fn
    proj = np.tensordot(u, vectors.T.astype(np.float32), axes=([0], [0]))  # (..., 4)
    f = 1 + ((proj**2 - 1 / 3) * quad).sum(-1) + ((proj**3) * cubic).sum(-1)
    return np.clip(f, 0.6, 1.5).astype(np.float32)


def _draw_head(rng: np.random.Generator, fov_z: float) -> _Head:
    scale = rng.uniform(0.9, 1.05)
    scalp = np.array([82.0, 88.0, 70.0]) * scale
    bone = scalp - rng.uniform(4.0, 6.0)
    inner = bone - rng.uniform(5.0, 8.0)
    brain = inner - rng.uniform(1.5, 3.0)
    # Vertex a few mm under the top of the field of view; the neck is cut off below.
    cz = fov_z / 2 - scalp[0] - rng.uniform(3.0, 12.0)
    centre = np.array([cz, rng.uniform(-6, 6), rng.uniform(-5, 5)])
    return _Head(
        centre=centre,
        scalp=scalp,
        bone=bone,
        inner=inner,
        brain=brain,
        base_z=-0.3 * inner[0],
        plate_mm=rng.uniform(8.0, 12.0),
        sella_y=-0.12 * inner[1],
        ventricle_x=rng.uniform(6.0, 9.0),
        grey_mm=rng.uniform(3.0, 4.5),
    )


def _draw_tumour(rng: np.random.Generator, kind: str, head: _Head) -> TumourSpec:
    a = head.brain
    for _ in range(100):
        if kind in ("glioma", "metastasis"):
            r = rng.uniform(9, 20) if kind == "glioma" else rng.uniform(6, 11)
            side = rng.choice([-1.0, 1.0])
            lo = 18.0 if kind == "glioma" else 8.0
            c = np.array([rng.uniform(head.base_z + 25, 0.55 * a[0]), rng.uniform(-0.55, 0.55) * a[1],
                          side * rng.uniform(lo, 0.6 * a[2])])
            if (((c[0] / (a[0] - r - 3)) ** 2 + (c[1] / (a[1] - r - 3)) ** 2 + (c[2] / (a[2] - r - 3)) ** 2) > 1
                    or c[0] - r < head.base_z + 5):
                continue
            edema = rng.uniform(5, 14) if kind == "glioma" else rng.uniform(8, 18)
            core = rng.uniform(0.3, 0.6) if kind == "glioma" else (rng.uniform(0.2, 0.4) if r > 8 else 0.0)
        elif kind == "meningioma":
            r = rng.uniform(9, 19)
            u = rng.normal(size=3)
            u[0] = abs(u[0]) + 0.3  # convexity and parasagittal, not the skull base
            u /= np.linalg.norm(u)
            t = 1 / math.sqrt(float(((u / head.inner) ** 2).sum()))
            c = u * (t - r * rng.uniform(0.2, 0.45))
            if c[0] - r < head.base_z + 5:
                continue
            edema, core = rng.uniform(0, 4), 0.0
        elif kind == "pituitary":
            r = rng.uniform(6, 11)  # a macroadenoma: it fills and widens the sella and grows upwards
            c = np.array([head.base_z + r * rng.uniform(0.5, 0.9), head.sella_y + rng.normal(0, 2), rng.normal(0, 0.8)])
            edema, core = 0.0, 0.0
        else:
            raise ValueError(f"unknown tumour kind {kind!r}")
        return TumourSpec(kind, tuple(float(v) for v in c + head.centre), float(r), float(edema), float(core))
    raise RuntimeError(f"could not place a {kind} tumour")  # pragma: no cover - 100 draws always suffice


def _paint_tumour(spec: TumourSpec, rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing: tuple[float, float, float], tissue: np.ndarray, labels: np.ndarray,
                  instance: np.ndarray, index: int) -> None:
    irregular = {"glioma": 0.22, "meningioma": 0.08, "metastasis": 0.1, "pituitary": 0.06}[spec.kind]
    core_fn, edema_fn = _shape_fn(rng, irregular), _shape_fn(rng, 0.3)
    reach = spec.radius_mm * 1.5 + spec.edema_mm * 1.5 + 1
    centre_vox = [(c / s) + (n - 1) / 2 for c, s, n in zip(spec.centre_mm, spacing, shape, strict=True)]
    box = tuple(slice(max(0, int(math.floor(cv - reach / s))), min(n, int(math.ceil(cv + reach / s)) + 1))
                for cv, s, n in zip(centre_vox, spacing, shape, strict=True))
    if any(b.start >= b.stop for b in box):
        return
    coords = [((np.arange(b.start, b.stop, dtype=np.float32) - cv) * s).reshape([-1 if i == ax else 1 for i in range(3)])
              for ax, (b, cv, s) in enumerate(zip(box, centre_vox, spacing, strict=True))]
    z, y, x = np.broadcast_arrays(*coords)
    d = np.sqrt(z * z + y * y + x * x) + 1e-3
    u = np.stack([z / d, y / d, x / d])
    r_core = spec.radius_mm * _radial(u, core_fn)
    rho = d / r_core
    t, lab, inst = tissue[box], labels[box], instance[box]
    parenchyma = (t == WHITE) | (t == GREY)
    if spec.edema_mm > 0:
        rho_e = d / (r_core + spec.edema_mm * _radial(u, edema_fn))
        edema = (rho_e <= 1) & (rho > 1) & parenchyma & (lab == 0)
        lab[edema], inst[edema] = EDEMA, index
    if spec.kind == "pituitary":
        allowed = t != BACKGROUND
    else:  # intra-/extra-axial tumours stay inside the inner table
        allowed = parenchyma | (t == CSF) | (lab == EDEMA)
    solid = (rho <= 1) & allowed
    lab[solid], inst[solid] = ENHANCING, index
    if spec.core_fraction > 0:
        core = (rho <= spec.core_fraction) & solid
        lab[core] = NECROTIC
    if spec.kind == "pituitary":
        t[solid] = GREY  # the tumour widens the sella: no bone left inside it


def _texture(rng: np.random.Generator, coords: list[np.ndarray]) -> np.ndarray:
    """Smooth random field in [-1, 1] (sum of plane waves, wavelengths 15-60 mm)."""
    out = None
    for _ in range(5):
        k = rng.normal(size=3)
        k *= rng.uniform(2 * math.pi / 60, 2 * math.pi / 15) / np.linalg.norm(k)
        wave = np.sin(coords[0] * np.float32(k[0]) + coords[1] * np.float32(k[1]) + coords[2] * np.float32(k[2])
                      + np.float32(rng.uniform(0, 2 * math.pi)))
        out = wave if out is None else out + wave
    assert out is not None
    return out / 5


@dataclass
class Anatomy:
    """The drawn head before any contrast: tissue codes, tumour labels and which tumour owns each voxel."""

    tissue: np.ndarray  # uint8 tissue codes (z, y, x)
    labels: np.ndarray  # uint8 tumour labels
    instance: np.ndarray  # uint8: 1-based index into ``tumours`` of the tumour a labelled voxel belongs to
    spacing: tuple[float, float, float]
    tumours: list[TumourSpec]
    coords: list[np.ndarray]  # broadcastable mm coordinates relative to the head centre
    #: The head centre (z, y, x) in mm relative to the grid centre.
    head_centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


def draw_anatomy(rng: np.random.Generator, *, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float] | None = None, kinds: list[str] | None = None) -> Anatomy:
    """Draw a head (and its tumours) on a grid of ``shape``: the first draws of :func:`make_phantom`, shared with
    the multi-contrast study phantoms (``neuronova.phantoms.study``)."""
    fov_xy = rng.uniform(220.0, 250.0)
    fov_z = rng.uniform(150.0, 175.0)
    if spacing is None:
        spacing = (fov_z / shape[0], fov_xy / shape[1], fov_xy / shape[2])
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    fov_z = spacing[0] * shape[0]
    head = _draw_head(rng, fov_z)
    if kinds is None:
        n = int(rng.choice(4, p=[0.15, 0.45, 0.25, 0.15]))
        kinds = [str(k) for k in rng.choice(["glioma", "meningioma", "metastasis", "pituitary"], size=n,
                                            p=[0.4, 0.25, 0.25, 0.1])]
    # one sella: a second pituitary tumour becomes a metastasis
    kinds = [k if k != "pituitary" or k not in kinds[:i] else "metastasis" for i, k in enumerate(kinds)]
    specs: list[TumourSpec] = []
    for kind in kinds:
        for _ in range(100):  # keep tumours apart so each stays recognisable
            spec = _draw_tumour(rng, kind, head)
            if all(np.linalg.norm(np.subtract(spec.centre_mm, o.centre_mm)) > spec.radius_mm + o.radius_mm + 4
                   for o in specs):
                specs.append(spec)
                break

    coords = _grid(shape, spacing, head.centre)
    z = coords[0]
    tissue = np.zeros(shape, np.uint8)
    tissue[_q(coords, head.scalp) <= 1] = SCALP
    tissue[_q(coords, head.bone) <= 1] = BONE
    inner = _q(coords, head.inner) <= 1
    above = np.broadcast_to(z > head.base_z, shape)
    tissue[inner & ~np.broadcast_to(z > head.base_z - head.plate_mm, shape)] = SOFT
    tissue[inner & above] = CSF
    q_brain = _q(coords, head.brain)
    brain = (q_brain <= 1) & np.broadcast_to(z > head.base_z + 2, shape)
    grey_q = (1 - head.grey_mm / float(head.brain.mean())) ** 2
    tissue[brain] = GREY
    tissue[brain & (q_brain < grey_q)] = WHITE
    vz = 0.15 * head.inner[0]
    for side in (-1, 1):
        tissue[_q(coords, np.array([9.0, 24.0, 5.0]), (vz, 4.0, side * head.ventricle_x)) <= 1] = CSF
    tissue[_q(coords, np.array([6.0, 9.0, 1.5]), (vz - 12, 0.0, 0.0)) <= 1] = CSF
    tissue[_q(coords, np.array([5.0, 6.0, 6.0]), (head.base_z - 2, head.sella_y, 0.0)) <= 1] = GREY

    labels = np.zeros(shape, np.uint8)
    instance = np.zeros(shape, np.uint8)
    # centres relative to the grid centre, as the painter expects
    for i, spec in enumerate(specs, start=1):
        _paint_tumour(spec, rng, shape, spacing, tissue, labels, instance, i)

    return Anatomy(tissue=tissue, labels=labels, instance=instance, spacing=spacing,  # type: ignore[arg-type]
                   tumours=specs, coords=coords, head_centre_mm=tuple(float(v) for v in head.centre))  # type: ignore[arg-type]


def make_phantom(seed: int, *, modality: str, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float] | None = None, kinds: list[str] | None = None) -> Phantom:
    """Draw one head; ``kinds`` lists its tumours (None: 0-3 random MR kinds)."""
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape!r}")
    rng = np.random.default_rng(seed)
    anatomy = draw_anatomy(rng, shape=shape, spacing=spacing, kinds=kinds)
    spacing, specs, coords = anatomy.spacing, anatomy.tumours, anatomy.coords
    tissue, labels, instance = anatomy.tissue, anatomy.labels, anatomy.instance

    table = np.array(_MR_TISSUE if modality == "MR" else _CT_TISSUE, np.float32)
    table *= rng.uniform(0.92, 1.08, size=table.shape).astype(np.float32) if modality == "MR" else 1
    if modality == "CT":
        table += rng.normal(0, 1.5, size=table.shape).astype(np.float32)
        table[BONE] = rng.uniform(800, 1300)
        table[BACKGROUND] = -1000
    image = table[tissue]
    parenchyma = (tissue == WHITE) | (tissue == GREY)
    tex = _texture(rng, coords)
    image[parenchyma] *= (1 + (0.04 if modality == "MR" else 0.05) * np.broadcast_to(tex, shape)[parenchyma])
    tumour_table = _MR_TUMOUR if modality == "MR" else _CT_TUMOUR
    for i, spec in enumerate(specs, start=1):
        values = np.array(tumour_table[spec.kind], np.float32)
        values *= rng.uniform(0.92, 1.08, 3).astype(np.float32) if modality == "MR" else 1
        values += 0 if modality == "MR" else rng.normal(0, 2, 3).astype(np.float32)
        for label, value in zip((ENHANCING, NECROTIC, EDEMA), values, strict=True):
            image[(instance == i) & (labels == label)] = value
        if modality == "CT" and spec.kind == "meningioma" and rng.random() < 0.4:
            calc = (instance == i) & (labels == ENHANCING) & (np.broadcast_to(_texture(rng, coords), shape) > 0.55)
            image[calc] = rng.uniform(150, 300)

    if modality == "MR":
        gain = rng.uniform(0.7, 1.4)
        grad = rng.normal(0, 0.1, 3) / 100
        bias = 1 + coords[0] * np.float32(grad[0]) + coords[1] * np.float32(grad[1]) + coords[2] * np.float32(grad[2])
        image *= bias * np.float32(gain)
        sigma = rng.uniform(10, 35) * gain
        image += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        np.abs(image, out=image)  # magnitude images: Rician-like background
        np.minimum(image, 4095, out=image)
    else:
        sigma = rng.uniform(2.0, 6.0)
        image += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
        np.clip(image, -1024, 3071, out=image)

    if modality == "CT":
        tumour_class = next((c for c, k in _KIND_OF_CLASS.items() if specs and specs[0].kind == k), "No Tumor")
    else:
        tumour_class = "+".join(s.kind for s in specs) or "No Tumor"
    return Phantom(image=image.astype(np.float32, copy=False), tissue=tissue, labels=labels, spacing=spacing,
                   modality=modality, tumour_class=tumour_class, tumours=specs, seed=seed)


def make_mr_phantom(seed: int, *, shape: tuple[int, int, int] = (155, 256, 256),
                    spacing: tuple[float, float, float] | None = None, n_tumours: int | None = None) -> Phantom:
    """A T1-weighted post-contrast-like MR head with 0-3 tumours (random kinds unless ``n_tumours`` fixes the count)."""
    kinds = None
    if n_tumours is not None:
        if not 0 <= n_tumours <= 3:
            raise ValueError(f"n_tumours must be 0-3, got {n_tumours}")
        rng = np.random.default_rng([seed, 1])
        kinds = [str(k) for k in rng.choice(["glioma", "meningioma", "metastasis", "pituitary"], size=n_tumours,
                                            p=[0.4, 0.25, 0.25, 0.1])]
    return make_phantom(seed, modality="MR", shape=shape, spacing=spacing, kinds=kinds)


def make_ct_phantom(seed: int, *, shape: tuple[int, int, int] = (40, 256, 256),
                    spacing: tuple[float, float, float] | None = None, tumour_class: str | None = None) -> Phantom:
    """A non-contrast CT head (HU) with one tumour of ``tumour_class`` (one of CT_CLASSES; None: drawn from the seed)."""
    if tumour_class is None:
        tumour_class = CT_CLASSES[int(np.random.default_rng([seed, 2]).integers(len(CT_CLASSES)))]
    if tumour_class not in CT_CLASSES:
        raise ValueError(f"tumour_class must be one of {CT_CLASSES}, got {tumour_class!r}")
    kinds = [_KIND_OF_CLASS[tumour_class]] if tumour_class in _KIND_OF_CLASS else []
    return make_phantom(seed, modality="CT", shape=shape, spacing=spacing, kinds=kinds)
