import base64
import io

import numpy as np
import pytest
from PIL import Image

from neuronova.xai import as_data_url, heatmap_png, heatmap_rgb, overlay_png, overlay_rgb, resize_heatmap


def ramp(shape=(16, 24)):
    return np.tile(np.linspace(0, 1, shape[1], dtype=np.float32), (shape[0], 1))


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_heatmap_png_is_a_colour_mapped_rgb_png_of_the_heatmap_size():
    heat = ramp()
    image = decode(heatmap_png(heat))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (24, 16)
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, heatmap_rgb(heat))
    # jet: cold end blue, hot end red
    assert pixels[0, 0, 2] > 100 and pixels[0, 0, 0] < 50
    assert pixels[0, -1, 0] > 100 and pixels[0, -1, 2] < 50
    inferno = np.asarray(decode(heatmap_png(heat, colormap="inferno")))
    assert not np.array_equal(inferno, pixels)


def test_overlay_blends_grey_and_colour_and_resizes_the_heatmap():
    grey = np.full((32, 48), 200, dtype=np.uint8)
    heat = ramp((16, 24))
    rgb = overlay_rgb(grey, heat, alpha=0.4)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    full = resize_heatmap(heat, (32, 48)).astype(np.float64)
    colour = heatmap_rgb(full).astype(np.float64)
    # the colour's opacity rises from 0 at heat 0.2 to alpha at heat 1: transparent where the map is low
    opacity = 0.4 * np.clip((full - 0.2) / 0.8, 0, 1)[..., None]
    np.testing.assert_allclose(rgb, np.rint((1 - opacity) * 200 + opacity * colour), atol=1)
    cold = full <= 0.2
    assert cold.any() and (rgb[cold] == 200).all()  # the grey image untouched where the heat is low
    hottest = np.unravel_index(np.argmax(full), full.shape)
    assert rgb[hottest][0] > rgb[hottest][2] + 40  # red at the peak, the grey still in it (not pure jet)
    assert rgb[hottest][1] > 60
    np.testing.assert_array_equal(overlay_rgb(grey, heat, alpha=0.0), np.full((32, 48, 3), 200))
    image = decode(overlay_png(grey, heat, alpha=0.4))
    assert image.size == (48, 32) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rgb)


def test_overlay_scales_float_images_from_min_to_max():
    ct = np.linspace(-1000, 2000, 64, dtype=np.float32).reshape(8, 8)
    rgb = overlay_rgb(ct, np.zeros((8, 8)), alpha=0.0)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_resize_keeps_range_and_shape():
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[1, 2] = 1.0
    big = resize_heatmap(heat, (32, 32))
    assert big.shape == (32, 32) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    row, col = np.unravel_index(np.argmax(big), big.shape)
    assert 8 <= row < 16 and 16 <= col < 24  # the hot cell's area


def test_data_url_decodes_back_to_the_png():
    png = heatmap_png(ramp())
    url = as_data_url(png)
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png
    with pytest.raises(ValueError):
        as_data_url(b"GIF89a")


def test_bad_heatmaps_are_refused():
    with pytest.raises(ValueError):
        heatmap_png(np.full((4, 4), 2.0))
    with pytest.raises(ValueError):
        heatmap_png(np.full((4, 4), np.nan))
    with pytest.raises(ValueError):
        heatmap_png(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError):
        overlay_rgb(np.zeros((4, 4, 2)), np.zeros((4, 4)))
