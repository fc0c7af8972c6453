"""The body mask and the restriction of heatmaps to it: checked against the phantoms' own tissue maps."""

from __future__ import annotations

import numpy as np
import pytest

from neuronova.models.classification import preprocess_ct_slices
from neuronova.models.segmentation import preprocess_mr
from neuronova.phantoms.head import BACKGROUND, make_ct_phantom, make_mr_phantom
from neuronova.xai import body_mask, heatmap_on_image, resize_heatmap, restrict_to_body


@pytest.fixture(scope="module")
def mr():
    return make_mr_phantom(5, shape=(24, 64, 64), n_tumours=1)


@pytest.fixture(scope="module")
def ct():
    return make_ct_phantom(5, shape=(12, 96, 96))


def test_body_mask_is_the_head_of_an_mr_phantom(mr):
    # T1 skull is darker than the threshold: the hole filling puts it (and the brain inside it) back
    truth = mr.tissue != BACKGROUND
    mask = body_mask(mr.image)
    assert mask.dtype == bool and mask.shape == mr.image.shape
    assert (mask ^ truth).sum() <= 0.002 * truth.sum()
    # the same in the network's z-scored input, on the model grid
    grid = preprocess_mr(mr.image, (24, 64, 64))[0, 0]
    assert (body_mask(grid) ^ truth).sum() <= 0.02 * truth.sum()


def test_body_mask_of_ct_slices_in_hu_and_in_the_classifier_input(ct):
    z = ct.image.shape[0] // 2
    truth = ct.tissue[z] != BACKGROUND
    assert (body_mask(ct.image[z]) ^ truth).sum() == 0
    network_input = preprocess_ct_slices(ct.image[z], size=96)[0, 0]  # brain window: CSF, fat below threshold
    assert (body_mask(network_input) ^ truth).sum() <= 0.01 * truth.sum()


def test_body_mask_keeps_the_largest_component_and_fills_holes():
    image = np.zeros((40, 40), np.float32)
    image[5:30, 5:30] = 100.0
    image[12:20, 12:20] = 0.0  # a dark cavity inside: body
    image[35:38, 35:38] = 100.0  # a speck outside: not body
    mask = body_mask(image)
    assert mask[5:30, 5:30].all() and mask.sum() == 25 * 25
    assert not body_mask(image)[36, 36]
    assert body_mask(np.full((8, 8), 3.0)).all()  # no contrast: nothing hidden
    with pytest.raises(ValueError, match="2-D or 3-D"):
        body_mask(np.zeros(5))
    with pytest.raises(TypeError, match="numbers"):
        body_mask(np.zeros((4, 4), bool))


def test_restrict_to_body_zeroes_air_and_rescales_inside():
    heat = np.array([[0.9, 0.2], [0.4, 0.1]], np.float32)  # hottest in the air (top left)
    mask = np.array([[False, True], [True, True]])
    restricted = restrict_to_body(heat, mask)
    assert restricted[0, 0] == 0.0
    np.testing.assert_allclose(restricted[mask], np.array([0.2, 0.4, 0.1]) / 0.4, rtol=1e-6)
    assert not restrict_to_body(heat, np.zeros_like(mask)).any()  # no heat in the body: none shown
    with pytest.raises(ValueError, match="differs"):
        restrict_to_body(heat, np.ones((3, 3), bool))


def test_enlarged_heatmap_does_not_bleed_into_air(ct):
    z = ct.image.shape[0] // 2
    small = ct.tissue[z, ::2, ::2] != BACKGROUND
    heat = restrict_to_body(np.ones(small.shape, np.float32), small)
    big = resize_heatmap(heat, ct.image.shape[1:])
    # zero wherever the nearest source pixel is air: the enlarged map is the small mask, pixel for pixel
    np.testing.assert_array_equal(big > 0, np.repeat(np.repeat(small, 2, 0), 2, 1))
    # on the slice's own grid, the restriction is exact at the skin
    exact = heatmap_on_image(heat, ct.image[z])
    truth = ct.tissue[z] != BACKGROUND
    assert not exact[~truth].any() and exact.max() == pytest.approx(1.0)
