"""Varied non-contrast head CT: the normal anatomy a CT classifier must not call tumour, and the three tumour
classes drawn on the same varied heads.

Why a second generator: ``head.py`` draws one procedural head (an ellipsoid skull of fixed thickness, one
ventricle shape, a flat skull base, no sulci, no calcifications). A classifier trained on it alone called a
normal head with more realistic anatomy "Glioma": anything its one head did not show looked abnormal. This
module varies what is normal and common on head CT, each knob drawn per head from the seed:

- skull: size (child to large adult), cephalic index, low-order shape harmonics, table thickness varying
  around the head, diploe, frontal sinus; a skull base with anterior, middle and posterior fossae, petrous
  ridges, sella with a normal pituitary gland, sphenoid sinus, orbits with globes and fat;
- brain: grey/white contrast, cortical ribbon, sulci and subarachnoid CSF widening with age (atrophy),
  lateral/third/fourth ventricles from slit-like to enlarged and asymmetric, basal ganglia and thalami,
  cerebellum and brainstem, periventricular white-matter hypodensity of the elderly;
- calcifications that are normal: pineal, choroid plexus, falx plaques, basal ganglia; the falx itself;
- acquisition: head tilt (pitch, roll, yaw), slice spacing and thickness (partial volume across the slice),
  reconstruction kernel (in-plane blur), quantum noise (correlated), beam hardening (cupping next to the
  inner table, the dark band between the petrous ridges), a scanner HU offset, matrix and field of view.

Named variants (``VARIANTS``) push some knobs to the ends of their ranges, so held-out evaluation can report
each kind of normal head separately. Anatomy is drawn in millimetres in a head frame (rotated by the tilt) and
sampled on the voxel grid, at several positions across each slice's thickness, then averaged. Axes as in
``head.py``: array (z, y, x) = (inferior->superior, anterior->posterior, right->left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from neuronova.phantoms.head import (
    BACKGROUND,
    BONE,
    CSF,
    CT_CLASSES,
    EDEMA,
    ENHANCING,
    GREY,
    NECROTIC,
    SCALP,
    SOFT,
    WHITE,
    Phantom,
    TumourSpec,
)

# Tissue codes beyond head.py's (Phantom.tissue)
CALCIFICATION, FAT, AIR, DIPLOE, DURA = 7, 8, 9, 10, 11

#: Variants for held-out reporting; "random" draws every knob from its full training range.
VARIANTS: tuple[str, ...] = ("random", "young", "atrophic", "calcified", "tilted", "thick_slices", "low_dose",
                             "hu_offset")


@dataclass(frozen=True)
class Knobs:
    """What varies between heads (drawn by ``draw_knobs``)."""

    scale: float  # head size
    cephalic: float  # width / length of the skull
    skull_mm: float  # mean table thickness
    atrophy: float  # 0 young .. 1 elderly: ventricles, sulci, subarachnoid space, white-matter caps
    ventricle_asymmetry: float
    calcified: tuple[bool, bool, bool, bool]  # pineal, choroid plexus, falx, basal ganglia
    tilt_deg: tuple[float, float, float]  # pitch (z-y), roll (z-x), yaw (y-x)
    spacing_z: float
    sub_slices: int  # samples across the slice thickness
    blur_px: float  # reconstruction kernel
    noise_hu: float
    hu_offset: float
    cupping_hu: float
    streak_hu: float
    grey_white_hu: float  # grey - white contrast


def draw_knobs(rng: np.random.Generator, variant: str = "random") -> Knobs:
    """Draw a head's knobs; a named variant fixes some of them towards the end of their training range."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    calc = tuple(bool(v) for v in rng.random(4) < (0.6, 0.5, 0.3, 0.15))
    knobs = Knobs(
        scale=rng.uniform(0.86, 1.1), cephalic=rng.uniform(0.72, 0.9), skull_mm=rng.uniform(4.0, 9.0),
        atrophy=float(rng.beta(1.5, 2.0)), ventricle_asymmetry=rng.uniform(-0.15, 0.15),
        calcified=calc,  # type: ignore[arg-type]
        tilt_deg=(rng.uniform(-18, 18), rng.uniform(-6, 6), rng.uniform(-8, 8)),
        spacing_z=rng.uniform(2.5, 6.0), sub_slices=int(rng.integers(1, 3)), blur_px=rng.uniform(0.3, 1.1),
        noise_hu=rng.uniform(2.0, 6.0), hu_offset=rng.uniform(-6, 6), cupping_hu=rng.uniform(0, 6),
        streak_hu=rng.uniform(0, 25), grey_white_hu=rng.uniform(7, 13))
    if variant == "young":
        knobs = replace(knobs, atrophy=rng.uniform(0.0, 0.1), calcified=(False, False, False, False),
                        scale=rng.uniform(0.86, 0.95))
    elif variant == "atrophic":
        knobs = replace(knobs, atrophy=rng.uniform(0.85, 1.0))
    elif variant == "calcified":
        knobs = replace(knobs, calcified=(True, True, True, bool(rng.random() < 0.5)))
    elif variant == "tilted":
        knobs = replace(knobs, tilt_deg=(float(rng.choice([-1, 1])) * rng.uniform(14, 18), rng.uniform(-6, 6),
                                         rng.uniform(-8, 8)))
    elif variant == "thick_slices":
        knobs = replace(knobs, spacing_z=rng.uniform(5.0, 6.0), sub_slices=3)
    elif variant == "low_dose":
        knobs = replace(knobs, noise_hu=rng.uniform(5.5, 6.0), streak_hu=rng.uniform(18, 25), blur_px=0.3)
    elif variant == "hu_offset":
        knobs = replace(knobs, hu_offset=float(rng.choice([-1, 1])) * rng.uniform(5, 6))
    return knobs


def _rotation(pitch: float, roll: float, yaw: float) -> np.ndarray:
    """Head frame from grid frame, (z, y, x) basis: pitch turns z into y, roll z into x, yaw y into x."""
    def plane(a: int, b: int, degrees: float) -> np.ndarray:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        m = np.eye(3)
        m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
        return m
    return (plane(0, 1, pitch) @ plane(0, 2, roll) @ plane(1, 2, yaw)).astype(np.float32)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(v, -30, 30)))).astype(np.float32)


def _waves(rng: np.random.Generator, h: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
           wavelengths: tuple[float, float]) -> np.ndarray:
    """A smooth random field with unit variance: a sum of ``n`` plane waves (zero crossings make folds)."""
    out = np.zeros(np.broadcast_shapes(*(a.shape for a in h)), np.float32)
    for _ in range(n):
        k = rng.normal(size=3)
        k *= 2 * math.pi / rng.uniform(*wavelengths) / np.linalg.norm(k)
        out += np.sin(h[0] * np.float32(k[0]) + h[1] * np.float32(k[1]) + h[2] * np.float32(k[2])
                      + np.float32(rng.uniform(0, 2 * math.pi)))
    return out * np.float32(math.sqrt(2.0 / n))


def _lobes(rng: np.random.Generator, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    vectors = rng.normal(size=(4, 3))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), rng.normal(0, amplitude, 4)


def _radial(u: tuple[np.ndarray, np.ndarray, np.ndarray], lobes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """1 + low-order harmonics of the direction ``u``: a sphere made lumpy."""
    vectors, amplitude = lobes
    f = np.ones_like(u[0])
    for v, a in zip(vectors, amplitude, strict=True):
        f += np.float32(a) * ((u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) ** 2 - np.float32(1 / 3))
    return np.clip(f, 0.6, 1.5)


def _ellipsoid(h: tuple[np.ndarray, ...], centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
    return (((h[0] - centre[0]) / semi[0]) ** 2 + ((h[1] - centre[1]) / semi[1]) ** 2
            + ((h[2] - centre[2]) / semi[2]) ** 2)


Box = tuple[slice, slice, slice, slice]


@dataclass(frozen=True)
class _Samples:
    """Sample positions (sub-slice, z, y, x): grid millimetres and the head frame they map to.

    Small structures are evaluated only in the box of samples that can reach them (a rotation keeps
    distances, so a ball in the head frame is a ball on the grid): 30-odd ellipsoids over a whole volume
    cost more than the rest of the head.
    """

    grid: tuple[np.ndarray, np.ndarray, np.ndarray]  # 1D: z centres of slices, y, x (mm from the grid centre)
    spacing_z: float
    rotation: np.ndarray
    centre: np.ndarray  # head centre on the grid (mm)
    h: tuple[np.ndarray, np.ndarray, np.ndarray]  # head-frame coordinates, each (sub, z, y, x)

    def box(self, centre: tuple[float, float, float] | np.ndarray, radius: float) -> Box:
        g = self.rotation.T @ np.asarray(centre, np.float32) + self.centre
        reach = (radius + self.spacing_z, radius + 1.0, radius + 1.0)
        bounds = [np.flatnonzero(np.abs(axis - c) <= r) for axis, c, r in zip(self.grid, g, reach, strict=True)]
        parts = [slice(int(b[0]), int(b[-1]) + 1) if b.size else slice(0, 0) for b in bounds]
        return slice(None), parts[0], parts[1], parts[2]

    def at(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.h[0][box], self.h[1][box], self.h[2][box]

    def paint(self, tissue: np.ndarray, centre: tuple[float, float, float], semi: tuple[float, float, float],
              value: int, *, within: np.ndarray | None = None, extent: float = 1.0) -> tuple[Box, np.ndarray]:
        """Set ``tissue`` to ``value`` inside the ellipsoid (scaled by ``extent``) and ``within``."""
        box = self.box(centre, max(semi) * extent)
        mask = _ellipsoid(self.at(box), centre, semi) <= extent * extent
        if within is not None:
            mask &= within[box]
        tissue[box][mask] = value
        return box, mask


@dataclass(frozen=True)
class _Skull:
    semi: tuple[float, float, float]  # inner table (z, y, x), head frame
    base: float  # floor of the middle cranial fossa
    sella_y: float
    ventricle_z: float
    ventricle_x: float
    ventricle_scale: float


def _draw_tumour(rng: np.random.Generator, kind: str, skull: _Skull) -> tuple[np.ndarray, float, float, float]:
    """Centre (head frame), radius, edema width, necrotic-core fraction of one tumour (as head.py's kinds)."""
    a = np.array(skull.semi)
    for _ in range(200):
        if kind == "glioma":
            r = rng.uniform(9, 20)
            c = np.array([rng.uniform(skull.base + 25, 0.55 * a[0]), rng.uniform(-0.5, 0.5) * a[1],
                          rng.choice([-1.0, 1.0]) * rng.uniform(18, 0.6 * a[2])])
            if ((c / (a - r - 6)) ** 2).sum() > 1 or c[0] - r < skull.base + 5:
                continue
            return c, r, rng.uniform(5, 14), rng.uniform(0.3, 0.6)
        if kind == "meningioma":
            r = rng.uniform(9, 19)
            u = rng.normal(size=3)
            u[0] = abs(u[0]) + 0.3  # convexity and parasagittal, not the skull base
            u /= np.linalg.norm(u)
            c = u * (1 / math.sqrt(float(((u / a) ** 2).sum())) - r * rng.uniform(0.2, 0.45))
            if c[0] - r < skull.base + 5:
                continue
            return c, r, rng.uniform(0, 4), 0.0
        if kind == "pituitary":
            r = rng.uniform(6, 11)  # a macroadenoma: it fills and widens the sella and grows upwards
            return (np.array([skull.base + r * rng.uniform(0.5, 0.9), skull.sella_y + rng.normal(0, 2),
                              rng.normal(0, 0.8)]), r, 0.0, 0.0)
        raise ValueError(f"unknown tumour kind {kind!r}")
    raise RuntimeError(f"could not place a {kind} tumour")  # pragma: no cover - 200 draws always suffice


_KIND_OF_CLASS = {"Glioma": "glioma", "Meningioma": "meningioma", "Pituitary": "pituitary"}


def make_ct_anatomy_phantom(seed: int, *, matrix: int = 256, n_slices: int | None = None,
                            tumour_class: str | None = "No Tumor", variant: str = "random") -> Phantom:
    """A non-contrast head CT (HU) with varied normal anatomy and at most one tumour of ``tumour_class``.

    ``n_slices`` None covers 135-180 mm from below the skull base to just above the vertex at the head's slice
    spacing; a number keeps that spacing and the vertex near the top slice. ``tumour_class`` None draws one of
    CT_CLASSES from the seed.
    """
    if tumour_class is None:
        tumour_class = CT_CLASSES[int(np.random.default_rng([seed, 78]).integers(len(CT_CLASSES)))]
    if tumour_class not in CT_CLASSES:
        raise ValueError(f"tumour_class must be one of {CT_CLASSES}, got {tumour_class!r}")
    if matrix < 32:
        raise ValueError(f"matrix must be at least 32, got {matrix}")
    rng = np.random.default_rng([seed, 77])
    k = draw_knobs(rng, variant)
    s = k.scale
    semi = (66.0 * s, 86.0 * s, 86.0 * s * k.cephalic)
    base = -22.0 * s
    skull = _Skull(semi=semi, base=base, sella_y=-6.0 * s + rng.normal(0, 1.5), ventricle_z=base + 36 * s,
                   ventricle_x=(5.0 + 3.0 * k.atrophy) * s, ventricle_scale=0.6 + 1.1 * k.atrophy)
    scalp_mm = rng.uniform(4.0, 7.0)
    coverage = rng.uniform(135.0, 180.0)
    nz = int(n_slices) if n_slices is not None else max(8, int(round(coverage / k.spacing_z)))
    pixel = rng.uniform(210.0, 250.0) / matrix
    spacing = (float(k.spacing_z), float(pixel), float(pixel))
    # vertex 2-12 mm under the top of the covered range
    top = nz * k.spacing_z / 2
    centre_z = top - rng.uniform(2, 12) - semi[0] - k.skull_mm - scalp_mm
    centre = np.array([centre_z, rng.uniform(-10, 10), rng.uniform(-8, 8)], np.float32)
    rotation = _rotation(*k.tilt_deg)

    # sample positions (sub-slices, z, y, x) in mm, relative to the head centre, then in the head frame
    grid = tuple(((np.arange(n) - (n - 1) / 2) * step).astype(np.float32)
                 for n, step in ((nz, k.spacing_z), (matrix, pixel), (matrix, pixel)))
    offsets = ((np.arange(k.sub_slices) + 0.5) / k.sub_slices - 0.5) * k.spacing_z
    p = ((grid[0][None, :] + offsets[:, None] - centre[0]).astype(np.float32)[:, :, None, None],
         (grid[1] - centre[1])[None, None, :, None], (grid[2] - centre[2])[None, None, None, :])
    hz, hy, hx = (sum(np.float32(rotation[i, j]) * p[j] for j in range(3)) for i in range(3))
    h = (hz, hy, hx)
    at = _Samples(grid=grid, spacing_z=k.spacing_z, rotation=rotation, centre=centre, h=h)  # type: ignore[arg-type]
    rho = np.sqrt(hz * hz + hy * hy + hx * hx) + np.float32(1e-3)
    u = (hz / rho, hy / rho, hx / rho)
    ellipsoid_radius = 1 / np.sqrt((u[0] / semi[0]) ** 2 + (u[1] / semi[1]) ** 2 + (u[2] / semi[2]) ** 2)
    depth_in = ellipsoid_radius * _radial(u, _lobes(rng, 0.04)) - rho  # mm inside the inner table
    thickness = np.float32(k.skull_mm) * _radial(u, _lobes(rng, 0.5)) * (1 + np.float32(0.15) * np.abs(u[1]))
    del ellipsoid_radius, u, rho
    tissue = np.zeros(hz.shape, np.uint8)
    outer = -(thickness + np.float32(scalp_mm))
    tissue[depth_in > outer] = SCALP
    fat_mm = rng.uniform(1.5, 3.5)
    tissue[(depth_in > outer + 1.5) & (depth_in < outer + 1.5 + fat_mm)] = FAT
    tissue[depth_in > -thickness] = BONE
    tissue[(depth_in > -0.7 * thickness) & (depth_in < -0.3 * thickness) & (thickness > 5)] = DIPLOE
    skin = depth_in > outer
    del thickness, outer

    # skull base: anterior fossa floor higher, posterior fossa lower than the middle fossa
    floor = (base + 16 * s * _sigmoid((-hy - 22 * s) / 4) - 24 * s * _sigmoid((hy - 12 * s) / 5)
             + np.float32(0.002) * hx * hx)
    inside = depth_in > 0
    cavity = inside & (hz > floor)
    plate = rng.uniform(6.0, 10.0)
    tissue[inside & ~cavity] = SOFT
    tissue[inside & ~cavity & (hz > floor - plate)] = BONE
    base_box = at.box((base, 10 * s, 0), 60 * s)
    bh = at.at(base_box)
    for side in (-1, 1):  # petrous ridges from the clivus out to the mastoids
        ridge_y, ridge_x = bh[1] - 8 * s, side * bh[2] - 14 * s
        along = np.clip((ridge_y * 0.45 + ridge_x * 0.89) / (48 * s), 0, 1) * 48 * s
        off = np.sqrt((ridge_y - along * 0.45) ** 2 + (ridge_x - along * 0.89) ** 2)
        fl = floor[base_box]
        tissue[base_box][inside[base_box] & (off < 5 * s) & (bh[0] > fl - 8) & (bh[0] < fl + 7 * s)] = BONE
        box, mastoid = at.paint(np.zeros_like(tissue), (base - 8 * s, 22 * s, side * (semi[2] - 4)),
                                (9 * s, 10 * s, 8 * s), 1)
        tissue[box][mastoid & (tissue[box] == BONE) & (_waves(rng, at.at(box), 3, (4, 7)) > 0)] = AIR
        at.paint(tissue, (base + 2 * s, -semi[1] + 18 * s, side * 30 * s), (13 * s, 18 * s, 13 * s), FAT,
                 within=~cavity & skin)
        at.paint(tissue, (base + 4 * s, -semi[1] + 12 * s, side * 31 * s), (11.5, 11.5, 11.5), CSF,
                 within=~cavity & skin)  # the globe, water-like vitreous
    del bh, base_box
    at.paint(tissue, (base - 14 * s, skull.sella_y - 4, 0), (8 * s, 10 * s, 10 * s), AIR, within=~cavity)
    frontal_sinus = rng.uniform(0.0, 1.2)
    if frontal_sinus > 0.2:
        at.paint(tissue, (base + 26 * s, -semi[1] - 4, 0), (10 * frontal_sinus, 6, 13 * frontal_sinus), AIR,
                 within=tissue == BONE)
    box, ethmoid = at.paint(np.zeros_like(tissue), (base - 2 * s, -semi[1] + 30 * s, 0), (10 * s, 22 * s, 11 * s), 1)
    tissue[box][ethmoid & ~cavity[box] & (_waves(rng, at.at(box), 3, (5, 9)) > -0.2)] = AIR  # ethmoid, nose

    # the brain: subarachnoid space and sulci widen with age; cortex follows the sulci
    subarachnoid = 0.8 + 3.5 * k.atrophy
    depth_brain = np.minimum(depth_in, hz - floor) - np.float32(subarachnoid)
    tissue[cavity] = CSF
    brain = cavity & (depth_brain > 0)
    tissue[brain] = WHITE
    cortex_mm = rng.uniform(2.5, 3.5)
    tissue[brain & (depth_brain < cortex_mm)] = GREY
    cortical = brain & (depth_brain < 10 + 10 * k.atrophy)  # folds only where sulci reach
    folds = np.abs(_waves(rng, tuple(a[cortical] for a in h), 8, (14, 26)))
    tissue[cortical] = np.where(folds < 0.1 + 0.35 * k.atrophy, np.uint8(CSF),
                                np.where(folds < 0.7 + 0.35 * k.atrophy, np.uint8(GREY), tissue[cortical]))
    del folds, cortical, depth_brain
    # posterior fossa: cerebellum (grey, white cores), brainstem, cisterns, fourth ventricle
    tentorium = base + 8 * s + 0.25 * (hy - 10 * s) - np.float32(0.004) * hx * hx
    fossa = brain & (hy > 4 * s) & (hz < tentorium)
    del tentorium
    tissue[fossa] = GREY
    tissue[fossa & (np.abs(hx) < 0.8) & (hy > 30 * s)] = CSF  # vermis cleft
    for side in (-1, 1):
        at.paint(tissue, (base - 18 * s, 38 * s, side * 20 * s), (10 * s, 12 * s, 12 * s), WHITE, within=fossa)
    del fossa
    low = cavity & (hz < base + 20 * s)
    tissue[low & (((hy - 8 * s) / (11 * s)) ** 2 + (hx / (13 * s)) ** 2 <= 1)] = WHITE  # brainstem
    tissue[low & (hz < base + 12 * s) & (((hy + 6 * s) / (5 * s)) ** 2 + (hx / (12 * s)) ** 2 <= 1)] = CSF
    del low
    at.paint(tissue, (base - 14 * s, 22 * s, 0), (6 * s, 4 * s, 7 * s), CSF, within=cavity)
    at.paint(tissue, (base + 7 * s, skull.sella_y, 0), (5 * s, 9 * s, 12 * s), CSF, within=cavity)
    # interhemispheric fissure and falx
    callosum = skull.ventricle_z + 12 * s
    fissure = cavity & (hz > callosum) & (np.abs(hy) < 0.92 * semi[1])
    tissue[fissure & (np.abs(hx) < 1.0 + 2.5 * k.atrophy)] = CSF
    falx = fissure & (np.abs(hx) < 0.7)
    tissue[falx] = DURA
    del fissure

    # deep grey nuclei, then the ventricles through them
    vz, vx, vs = skull.ventricle_z, skull.ventricle_x, skull.ventricle_scale
    for side in (-1, 1):
        at.paint(tissue, (vz - 2 * s, -14 * s, side * (vx + 7 * s)), (8 * s, 9 * s, 5 * s), GREY, within=cavity)
        at.paint(tissue, (vz - 14 * s, -2 * s, side * 22 * s), (11 * s, 15 * s, 6 * s), GREY, within=cavity)
        at.paint(tissue, (vz - 16 * s, 12 * s, side * 9 * s), (9 * s, 12 * s, 8 * s), GREY, within=cavity)
    caps = np.zeros(tissue.shape, bool)
    for side in (-1, 1):
        f = vs * (1 + side * k.ventricle_asymmetry)
        parts = (((vz, 2 * s, side * vx), (8 * f, 22 * s * f ** 0.5, 5 * f)),
                 ((vz - 4 * s, -20 * s, side * (vx + 2 * s)), (8 * f, 10 * s, 5 * f)),
                 ((vz - 6 * s, 24 * s, side * (vx + 8 * s)), (9 * f, 12 * s, 6 * f)),
                 ((base + 10 * s, 5 * s, side * 30 * s), (3 * f, 12 * s, 3 * f)))
        for index, (c, semi_v) in enumerate(parts):
            if index in (1, 2):
                box, mask = at.paint(np.zeros_like(tissue), c, semi_v, 1, extent=1.7)
                caps[box] |= mask
            at.paint(tissue, c, semi_v, CSF, within=cavity)
    at.paint(tissue, (vz - 18 * s, 2 * s, 0), (10 * s, 13 * s, 1.2 * vs), CSF, within=cavity)
    caps &= tissue == WHITE
    pineal, choroid, falx_calc, ganglia = k.calcified
    if pineal:
        at.paint(tissue, (vz - 16 * s, 22 * s, 0), (rng.uniform(2, 4),) * 3, CALCIFICATION)
    for side in (-1, 1):
        if choroid:
            r = rng.uniform(2, 4.5)
            at.paint(tissue, (vz - 6 * s, 26 * s, side * (vx + 8 * s)), (r, 1.4 * r, r), CALCIFICATION)
        if ganglia:
            at.paint(tissue, (vz - 14 * s, -2 * s, side * 17 * s), (rng.uniform(1.5, 3.5),) * 3, CALCIFICATION)
    if falx_calc:
        plaques = falx & (_waves(rng, h, 4, (12, 30)) > 1.1)
        tissue[plaques] = CALCIFICATION
        del plaques
    del falx
    gland = rng.uniform(4, 8)  # the normal pituitary in the sella
    at.paint(tissue, (base - gland / 2 + 1, skull.sella_y, 0), (gland / 2, 5 * s, 6 * s), SOFT)

    # tumour, painted in the box of samples it can reach
    labels = np.zeros(tissue.shape, np.uint8)
    specs: list[TumourSpec] = []
    kind = _KIND_OF_CLASS.get(tumour_class)
    if kind is not None:
        c, r, edema_mm, core = _draw_tumour(rng, kind, skull)
        box = at.box(c, 1.5 * r + 1.5 * edema_mm + 2)
        bz, by, bx = at.at(box)
        t, lab = tissue[box], labels[box]
        d = np.sqrt((bz - c[0]) ** 2 + (by - c[1]) ** 2 + (bx - c[2]) ** 2) + np.float32(1e-3)
        du = ((bz - c[0]) / d, (by - c[1]) / d, (bx - c[2]) / d)
        r_core = np.float32(r) * _radial(du, _lobes(rng, {"glioma": 0.25, "meningioma": 0.08, "pituitary": 0.06}[kind]))
        parenchyma = (t == WHITE) | (t == GREY)
        if edema_mm > 0:
            lab[(d <= r_core + np.float32(edema_mm) * _radial(du, _lobes(rng, 0.3))) & (d > r_core) & parenchyma] = EDEMA
        if kind == "pituitary":
            allowed = (t != BACKGROUND) & (t != AIR)
        else:  # intra- and extra-axial tumours stay inside the inner table
            allowed = cavity[box] & (t != BONE)
        solid = (d <= r_core) & allowed
        lab[solid] = ENHANCING
        if core > 0:
            lab[solid & (d <= core * r_core)] = NECROTIC
        if kind == "pituitary":
            t[solid] = SOFT  # it widens the sella: no bone left inside it
        grid_centre = rotation.T @ c.astype(np.float32) + centre
        specs.append(TumourSpec(kind, tuple(float(v) for v in grid_centre), float(r), float(edema_mm), float(core)))

    # Hounsfield units
    white = rng.uniform(24, 30)
    table = np.zeros(12, np.float32)
    table[[BACKGROUND, SCALP, BONE, WHITE, GREY, CSF, SOFT, CALCIFICATION, FAT, AIR, DIPLOE, DURA]] = (
        -1000, rng.uniform(25, 45), rng.uniform(1000, 1700), white, white + k.grey_white_hu, rng.uniform(2, 10),
        rng.uniform(35, 50), rng.uniform(150, 500), rng.uniform(-110, -70), rng.uniform(-1000, -900),
        rng.uniform(350, 800), rng.uniform(45, 70))
    image = table[tissue]
    parenchyma = (tissue == WHITE) | (tissue == GREY)
    image[parenchyma] *= 1 + np.float32(0.03) * _waves(rng, tuple(a[parenchyma] for a in h), 5, (15, 60))
    if k.atrophy > 0.6:  # periventricular white-matter caps of the elderly
        image[caps] -= np.float32(rng.uniform(3, 8) * (k.atrophy - 0.5) * 2)
    if kind is not None:
        solid_hu = {"glioma": 31.0, "meningioma": rng.uniform(52, 66), "pituitary": rng.uniform(50, 62)}[kind]
        values = np.array([solid_hu, 13.0, 21.0 if kind == "glioma" else 23.0]) + rng.normal(0, 2, 3)
        for label, value in zip((ENHANCING, NECROTIC, EDEMA), values, strict=True):
            image[labels == label] = value
        if kind == "meningioma" and rng.random() < 0.4:
            solid = labels == ENHANCING
            spots = _waves(rng, tuple(a[solid] for a in h), 5, (10, 30)) > 1.0
            image[solid] = np.where(spots, np.float32(rng.uniform(150, 300)), image[solid])
    # beam hardening: residual cupping next to the inner table, the dark band between the petrous ridges
    cz, cy, cx = hz[cavity], hy[cavity], hx[cavity]
    band = np.exp(-(((cy - 15 * s) / 6) ** 2) - ((cz - (base - 4 * s)) / 7) ** 2) * (np.abs(cx) < 40 * s)
    image[cavity] += (np.float32(k.cupping_hu) * np.exp(-depth_in[cavity] / np.float32(8.0))
                      - np.float32(k.streak_hu) * band)
    del h, hz, hy, hx, depth_in, band, cz, cy, cx

    # acquisition: partial volume across the slice, kernel, correlated noise, calibration offset
    middle = k.sub_slices // 2
    image = ndimage.gaussian_filter(image.mean(axis=0), sigma=(0, k.blur_px, k.blur_px))
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), sigma=(0, 0.6, 0.6))
    image += noise * np.float32(k.noise_hu / max(float(noise.std()), 1e-6)) + np.float32(k.hu_offset)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.float32)
    return Phantom(image=image, tissue=tissue[middle], labels=labels[middle], spacing=spacing, modality="CT",
                   tumour_class=tumour_class, tumours=specs, seed=seed)
