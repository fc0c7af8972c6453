"""The palette heatmap PNG is the same picture as neuronova.xai's RGB one."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from neuronova.predict.render import heatmap_png
from neuronova.xai import heatmap_rgb


def test_palette_png_decodes_to_the_xai_heatmap_exactly() -> None:
    rng = np.random.default_rng(0)
    heat = rng.random((97, 131)).astype(np.float32)
    heat[0, :4] = [0.0, 1.0, 0.5, 255.5 / 256]  # the edges of matplotlib's bins
    heat[1, :3] = [1 / 256, np.nextafter(np.float32(1 / 256), np.float32(0)), 0.999999]
    png = heatmap_png(heat)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(decoded, heatmap_rgb(heat))
    assert Image.open(io.BytesIO(png)).mode == "P"
