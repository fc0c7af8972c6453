"""The varied CT head generator: deterministic, normal anatomy that varies as its knobs say, tumours labelled."""

from __future__ import annotations

import numpy as np
import pytest

from neuronova.phantoms import CT_CLASSES
from neuronova.phantoms.ct_anatomy import CALCIFICATION, VARIANTS, draw_knobs, make_ct_anatomy_phantom
from neuronova.phantoms.head import BONE, CSF, GREY, WHITE

MATRIX = 96  # small: the anatomy is drawn in millimetres, so only the sampling changes with the matrix


def test_same_seed_same_head_other_seed_other_head():
    a = make_ct_anatomy_phantom(11, matrix=MATRIX)
    b = make_ct_anatomy_phantom(11, matrix=MATRIX)
    c = make_ct_anatomy_phantom(12, matrix=MATRIX)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.spacing == b.spacing
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_a_normal_head_has_brain_bone_and_csf_and_no_tumour():
    phantom = make_ct_anatomy_phantom(21, matrix=MATRIX, tumour_class="No Tumor")
    assert phantom.modality == "CT" and phantom.tumour_class == "No Tumor" and not phantom.tumours
    assert not phantom.labels.any()
    for tissue in (BONE, CSF, GREY, WHITE):
        assert (phantom.tissue == tissue).sum() > 100, tissue
    brain = phantom.image[(phantom.tissue == WHITE) | (phantom.tissue == GREY)]
    assert 15 < float(np.median(brain)) < 50  # HU of parenchyma, whatever the scanner offset and noise
    assert phantom.image.min() >= -1024 and phantom.image.max() > 700  # air and bone
    assert np.array_equal(phantom.image, np.rint(phantom.image))  # stored CT values are integers


@pytest.mark.parametrize("cls", CT_CLASSES[:3])
def test_tumour_classes_are_labelled_where_they_belong(cls):
    phantom = make_ct_anatomy_phantom(31, matrix=MATRIX, tumour_class=cls)
    assert phantom.tumour_class == cls and len(phantom.tumours) == 1
    assert (phantom.labels > 0).sum() > 20
    spec = phantom.tumours[0]
    z = np.flatnonzero((phantom.labels > 0).any(axis=(1, 2)))
    centre_slice = (spec.centre_mm[0] / phantom.spacing[0]) + (phantom.image.shape[0] - 1) / 2
    assert z.min() - 1 <= centre_slice <= z.max() + 1  # the spec's centre is where the labels are


def test_variants_move_their_knobs():
    young = [draw_knobs(np.random.default_rng(i), "young") for i in range(20)]
    atrophic = [draw_knobs(np.random.default_rng(i), "atrophic") for i in range(20)]
    assert max(k.atrophy for k in young) < min(k.atrophy for k in atrophic)
    assert not any(any(k.calcified) for k in young)
    assert all(k.calcified[:3] == (True, True, True) for k in (draw_knobs(np.random.default_rng(i), "calcified")
                                                                for i in range(5)))
    assert all(abs(draw_knobs(np.random.default_rng(i), "tilted").tilt_deg[0]) >= 14 for i in range(5))
    with pytest.raises(ValueError, match="variant"):
        draw_knobs(np.random.default_rng(0), "sideways")


def test_atrophy_widens_csf_and_calcifications_are_drawn():
    young = make_ct_anatomy_phantom(41, matrix=MATRIX, variant="young")
    old = make_ct_anatomy_phantom(41, matrix=MATRIX, variant="atrophic")

    def csf_fraction(p):
        inside = (p.tissue == CSF) | (p.tissue == GREY) | (p.tissue == WHITE)
        return (p.tissue == CSF).sum() / inside.sum()

    assert csf_fraction(old) > 1.5 * csf_fraction(young)
    assert not (young.tissue == CALCIFICATION).any()
    calcified = make_ct_anatomy_phantom(42, matrix=128, variant="calcified")
    assert (calcified.tissue == CALCIFICATION).sum() > 3
    assert calcified.image[calcified.tissue == CALCIFICATION].mean() > 100


def test_every_variant_draws():
    for i, variant in enumerate(VARIANTS):
        phantom = make_ct_anatomy_phantom(50 + i, matrix=48, n_slices=12, variant=variant)
        assert phantom.image.shape == (12, 48, 48) and np.isfinite(phantom.image).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="tumour_class"):
        make_ct_anatomy_phantom(1, tumour_class="Lymphoma")
    with pytest.raises(ValueError, match="matrix"):
        make_ct_anatomy_phantom(1, matrix=8)
