"""The body in an image, and heatmaps restricted to it: an explanation must not point at air.

Grad-CAM weighs a layer's activations by their gradients; a network's activations over the air around a
head are not zero (a z-scored or standardised input is strongly negative there, convolution biases and
normalisation layers turn that into features), so a map normalised over the whole field of view can be
hottest outside the head. Every explainer here therefore multiplies its map by a body mask taken from the
image itself and rescales it so that its peak inside the body is 1.

Why hand-written: no installed library offers a body (foreground) mask for arbitrary CT/MR intensities
(MONAI's ``ForegroundMask`` needs a threshold too and keeps no connectivity); this is the textbook recipe
with scipy.ndimage: a threshold a tenth of the way from the air level to the bright tissue, the holes
filled (slice by slice, then in 3-D: skull on MR and CSF on CT are darker than the threshold but are
inside the body), and the largest connected component kept (noise specks, a scanner table).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: The body threshold, as a fraction of the way from the air level (minimum) to the 99th percentile.
BODY_FRACTION = 0.1
#: A mask smaller than this share of the image is taken as a failure (a blank image): no restriction.
MIN_BODY_SHARE = 0.005


def body_mask(image: np.ndarray, *, fraction: float = BODY_FRACTION) -> np.ndarray:
    """A boolean mask of the body in a 2-D (rows, columns) or 3-D (slices, rows, columns) image.

    The image may be in any units (HU, MR units, a network's standardised input): the threshold is
    ``min + fraction * (p99 - min)``. Holes are filled in every slice (axis 0) and in 3-D, then the
    largest connected component is kept. An image without contrast gives an all-True mask (nothing to
    tell body from air, so nothing is hidden).
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"expected a non-empty 2-D or 3-D image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        raise TypeError(f"the image must hold numbers, got dtype {array.dtype}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    values = np.nan_to_num(array.astype(np.float32, copy=False))
    low, high = float(values.min()), float(np.percentile(values, 99))
    if high <= low:
        return np.ones(array.shape, dtype=bool)
    mask = values > low + fraction * (high - low)
    if array.ndim == 3:
        for k in range(mask.shape[0]):
            mask[k] = ndimage.binary_fill_holes(mask[k])
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    if mask.sum() < MIN_BODY_SHARE * mask.size:
        return np.ones(array.shape, dtype=bool)
    return mask


def restrict_to_body(heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``heat`` (>= 0) set to 0 outside ``mask`` and divided by its peak inside: float32 in [0, 1].

    A map with no heat inside the body stays all zero (no evidence is shown as none, not as noise).
    """
    heat = np.asarray(heat, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from the body mask's {mask.shape}")
    inside = np.where(mask, np.maximum(heat, 0.0), 0.0).astype(np.float32)
    peak = float(inside.max()) if inside.size else 0.0
    if peak <= 0.0 or not np.isfinite(peak):
        return np.zeros_like(inside)
    return np.clip(inside / peak, 0.0, 1.0)


def resize_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of a mask to ``shape`` (cell centres, as the models' label maps)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == tuple(shape):
        return mask
    if len(shape) != mask.ndim:
        raise ValueError(f"cannot resize a {mask.ndim}-D mask to shape {shape}")
    index = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1) for n, m in zip(shape, mask.shape)]
    return mask[np.ix_(*index)]


def heatmap_on_image(heatmap: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A 2-D heatmap from a network's input grid on the pixel grid of ``image`` (the slice shown), restricted
    to the body found in that image at its own resolution (exact at the skin, where a mask found at the
    network's coarser input is up to a pixel off) and rescaled to a peak of 1 inside it."""
    from neuronova.xai.images import resize_heatmap  # images imports nothing from here: no cycle at import

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    return restrict_to_body(resize_heatmap(heatmap, image.shape), body_mask(image))
