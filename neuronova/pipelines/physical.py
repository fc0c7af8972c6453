"""Several series of one study in one physical space: the model's input, and its output back on the reference.

Each series is a :class:`~neuronova.pipelines.volume.Volume` whose affine maps array indices ``(z, y, x)`` to
patient LPS millimetres (built from ImagePositionPatient, ImageOrientationPatient, PixelSpacing and the sorted
slice positions). MONAI works in RAS, so the affine handed to MONAI is ``diag(-1, -1, 1) @ affine``.

The reference series (the first role of the model that is present, e.g. the T1c) defines the grid: MONAI
``Orientation`` turns it to the model's axis codes and ``Spacing`` resamples it to the model's voxel size; every
other series is resampled by ``SpatialResample`` straight onto that grid from its own affine (one
interpolation per series, whatever its plane, obliquity or spacing). ``NormalizeIntensity`` normalises each
channel as the model asks. The model's outputs (probabilities) go back through the inverse of the reference's
Orientation and Spacing (``Compose.inverse``, MONAI's Invert) onto the reference series' exact voxels, and only
then become labels, so a mask lines up with the reference slices whatever the model's spacing.

Series of one study are only combined when they share the frame of reference: without a registration step
(none is configured in this version), coordinates of different frames cannot be compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, NormalizeIntensity, Orientation, SpatialResample, Spacing

from neuronova.errors import SeriesError
from neuronova.models.volumetric import Preprocessing
from neuronova.pipelines.volume import Volume

log = logging.getLogger(__name__)

#: LPS (DICOM patient coordinates) <-> RAS (NIfTI/MONAI world coordinates): flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Voxels above this fraction of a channel's 99th percentile are foreground for ``zscore_foreground``.
FOREGROUND_FRACTION = 0.1
#: MONAI's axis labels of RAS space (named: its default is being changed).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def ras_affine(volume: Volume) -> np.ndarray:
    """(z, y, x, 1) array index -> RAS mm."""
    return LPS_TO_RAS @ volume.affine


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return MetaTensor(data if data.ndim == 4 else data[None], affine=torch.as_tensor(affine, dtype=torch.float64))


def check_frames(volumes: Mapping[str, Volume]) -> str:
    """The one frame of reference of ``volumes``; SeriesError (FRAME_OF_REFERENCE_MISMATCH) when they differ."""
    frames = {role: v.frame_of_reference_uid for role, v in volumes.items()}
    distinct = set(frames.values())
    if len(distinct) > 1 or "" in distinct:
        described = ", ".join(f"{role}: {uid or '(none)'}" for role, uid in frames.items())
        raise SeriesError(f"the series do not share one frame of reference ({described}); combining them needs a "
                          "registration step, and none is configured", code="FRAME_OF_REFERENCE_MISMATCH")
    return distinct.pop()


def normalise(image: torch.Tensor, method: str) -> torch.Tensor:
    """Per-channel intensity normalisation of a (C, I, J, K) tensor (MONAI NormalizeIntensity)."""
    if method == "none":
        return image
    if method == "zscore_nonzero":
        return NormalizeIntensity(nonzero=True, channel_wise=True)(image)  # type: ignore[return-value]
    if method != "zscore_foreground":
        raise ValueError(f"unknown normalisation {method!r}")
    # MONAI has no "above a fraction of the percentile" mask: compute each channel's statistics over its
    # foreground here and let NormalizeIntensity apply them.
    means, stds = [], []
    for channel in image:
        values = channel.reshape(-1)
        p99 = float(torch.quantile(values[:: max(1, values.numel() // 200_000)], 0.99))
        foreground = values[values > FOREGROUND_FRACTION * p99] if p99 > 0 else values
        if foreground.numel() < 10:
            foreground = values
        means.append(float(foreground.mean()))
        stds.append(max(float(foreground.std()), 1e-6))
    return NormalizeIntensity(subtrahend=means, divisor=stds, channel_wise=True)(image)  # type: ignore[return-value]


@dataclass
class ModelInput:
    """The model's input and what is needed to map its output back onto the reference series."""

    image: np.ndarray  # float32 (len(roles), I, J, K)
    affine: np.ndarray  # 4x4 RAS of the model grid
    reference_role: str
    reference: Volume
    #: Roles whose channel was filled with zeros (absent optional roles).
    zero_filled: tuple[str, ...]
    _spatial: Compose
    _reference_meta: MetaTensor
    #: Model-grid voxels every required series covers (None: all of them). Outside, the model saw a required
    #: sequence as zero padding, which it was never trained on: no label is given there.
    covered: np.ndarray | None = None

    def restrict(self, outputs: np.ndarray, *, activation: str) -> np.ndarray:
        """Model-grid outputs (n_out, I, J, K) with nothing outside ``covered``: background for softmax
        outputs (channel 0), no region for sigmoid ones."""
        if self.covered is None:
            return outputs
        outside = ~self.covered
        outputs = outputs.copy()
        outputs[:, outside] = 0.0
        if activation == "softmax":
            outputs[0, outside] = 1.0
        return outputs

    def to_reference(self, outputs: np.ndarray) -> np.ndarray:
        """Model-grid outputs (n_out, I, J, K) -> (n_out, z, y, x) on the reference series' voxels (linear)."""
        if outputs.shape[1:] != self.image.shape[1:]:
            raise ValueError(f"outputs {outputs.shape[1:]} are not on the model grid {self.image.shape[1:]}")
        out = MetaTensor(torch.from_numpy(np.ascontiguousarray(outputs, dtype=np.float32)),
                         meta={k: v for k, v in self._reference_meta.meta.items() if k != "affine"})
        out.affine = self._reference_meta.affine.clone()
        out.applied_operations = [dict(op) for op in self._reference_meta.applied_operations]
        with torch.inference_mode():
            back = self._spatial.inverse(out)
        result = back.numpy() if isinstance(back, torch.Tensor) else np.asarray(back)
        expected = self.reference.shape
        if tuple(result.shape[1:]) != expected:
            raise RuntimeError(f"the inverse gave {result.shape[1:]}, the reference is {expected}")
        return result.astype(np.float32, copy=False)


def reference_role(roles: Sequence[str], volumes: Mapping[str, Volume], preferred: str | None = None) -> str:
    """The series that defines the grid: ``preferred`` when present, else the first of ``roles`` present."""
    if preferred is not None and preferred in volumes:
        return preferred
    for role in roles:
        if role in volumes:
            return role
    raise SeriesError(f"none of the roles {list(roles)} has a series", code="SERIES_ROLE_MISSING")


def prepare(volumes: Mapping[str, Volume], *, roles: Sequence[str], optional_roles: frozenset[str] | set[str],
            preprocessing: Preprocessing, reference: str | None = None) -> ModelInput:
    """Resample ``volumes`` (role -> series) onto the model grid of the reference series, channels in ``roles``
    order; an absent optional role becomes a zero channel, an absent required role a SeriesError."""
    missing = [r for r in roles if r not in volumes and r not in optional_roles]
    if missing:
        raise SeriesError(f"the model needs the role(s) {', '.join(missing)}; the study has "
                          f"{', '.join(sorted(volumes)) or 'none'}", code="SERIES_ROLE_MISSING")
    used = {r: v for r, v in volumes.items() if r in roles}
    check_frames(used)
    ref_role = reference_role(roles, used, reference)
    ref = used[ref_role]
    steps: list = [Orientation(axcodes=preprocessing.axcodes, labels=_RAS_LABELS)]
    if preprocessing.pixdim is not None:
        steps.append(Spacing(pixdim=preprocessing.pixdim, mode="bilinear", padding_mode="zeros"))
    spatial = Compose(steps)
    with torch.inference_mode():
        ref_model = spatial(_meta(ref.array, ras_affine(ref)))
    assert isinstance(ref_model, MetaTensor)
    grid_shape = tuple(int(n) for n in ref_model.shape[1:])
    resample = SpatialResample(mode="bilinear", padding_mode="zeros")
    channels, zero_filled = [], []
    coverage: dict[str, np.ndarray] = {}
    for role in roles:
        if role == ref_role:
            channels.append(ref_model.as_tensor()[0])
        elif role in used:
            with torch.inference_mode():
                moved = resample(_meta(used[role].array, ras_affine(used[role])), dst_affine=ref_model.affine,
                                 spatial_size=grid_shape)
            channels.append(torch.as_tensor(moved)[0])
            coverage[role] = field_of_view(used[role], ref_model.affine.numpy(), grid_shape)
        else:
            channels.append(torch.zeros(grid_shape))
            zero_filled.append(role)
    image = normalise(torch.stack(channels).float(), preprocessing.normalisation)
    covered: np.ndarray | None = None
    for i, role in enumerate(roles):
        if role in zero_filled:
            image[i] = 0.0  # an absent role stays zero after normalisation, as the model was trained
        elif role in coverage and not coverage[role].all():
            if role in optional_roles:
                image[i][torch.from_numpy(~coverage[role])] = 0.0  # outside its slab: as if absent
            else:
                covered = coverage[role] if covered is None else covered & coverage[role]
    log.debug("model grid %s from reference %s %s", grid_shape, ref_role, ref.shape)
    return ModelInput(image=torch.as_tensor(image).numpy().astype(np.float32), affine=ref_model.affine.numpy(),
                      reference_role=ref_role, reference=ref, zero_filled=tuple(zero_filled), _spatial=spatial,
                      _reference_meta=ref_model, covered=covered)


def field_of_view(volume: Volume, grid_affine: np.ndarray, grid_shape: tuple[int, ...]) -> np.ndarray:
    """Which voxels of a model grid (RAS ``grid_affine``) lie inside ``volume``'s acquired block (its voxel
    centres, give or take half a voxel: what linear interpolation reaches)."""
    to_index = np.linalg.inv(ras_affine(volume)) @ grid_affine
    axes = [np.arange(n, dtype=np.float32) for n in grid_shape]
    inside = np.ones(grid_shape, dtype=bool)
    for row, n in zip(to_index[:3], volume.shape, strict=True):
        # the index along this axis of the volume, for every grid voxel (separable: a sum of three ramps)
        index = (row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
                 + row[2] * axes[2][None, None, :] + row[3]).astype(np.float32)
        inside &= (index >= -0.5) & (index <= n - 0.5)
    return inside
