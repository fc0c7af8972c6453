import numpy as np
import pytest

from neuronova.phantoms import CT_CLASSES, EDEMA, ENHANCING, NECROTIC, make_ct_phantom, make_mr_phantom
from neuronova.phantoms.head import BONE, CSF, GREY, WHITE


def test_same_seed_same_phantom_and_different_seeds_differ():
    a = make_mr_phantom(7, shape=(40, 64, 64))
    b = make_mr_phantom(7, shape=(40, 64, 64))
    c = make_mr_phantom(8, shape=(40, 64, 64))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.tumours == b.tumours and a.spacing == b.spacing
    assert not np.array_equal(a.image, c.image)


def test_anatomy_is_drawn_in_millimetres_so_matrix_size_keeps_the_head():
    small = make_mr_phantom(3, shape=(40, 64, 64), n_tumours=1)
    large = make_mr_phantom(3, shape=(80, 128, 128), n_tumours=1)
    assert small.tumours == large.tumours
    ml = [p.whole_tumour.sum() * np.prod(p.spacing) / 1000 for p in (small, large)]
    assert ml[0] == pytest.approx(ml[1], rel=0.25)


def test_mr_tumour_components_and_intensities():
    p = make_mr_phantom(11, shape=(80, 128, 128), n_tumours=3)
    assert len(p.tumours) == 3
    present = set(np.unique(p.labels)) - {0}
    assert ENHANCING in present and EDEMA in present
    for label in present:
        assert label in (ENHANCING, NECROTIC, EDEMA)
    brain = p.image[(p.tissue == WHITE) & (p.labels == 0)].mean()
    assert p.image[p.labels == ENHANCING].mean() > 1.3 * brain
    assert p.image[p.labels == EDEMA].mean() < brain
    assert p.image[(p.tissue == CSF) & (p.labels == 0)].mean() < 0.5 * brain


@pytest.mark.parametrize("cls", CT_CLASSES)
def test_ct_hounsfield_units_and_class_appearance(cls):
    p = make_ct_phantom(5, shape=(32, 128, 128), tumour_class=cls)
    assert p.tumour_class == cls
    assert p.image[p.tissue == BONE].mean() > 700
    assert 25 < p.image[(p.tissue == WHITE) | (p.tissue == GREY)].mean() < 45
    assert -5 < np.median(p.image[(p.tissue == CSF) & (p.labels == 0)]) < 15
    tumour = p.labels > 0
    if cls == "No Tumor":
        assert not tumour.any()
        return
    assert tumour.any()
    # tumour centroid relative to the head's midline
    xc = (np.argwhere(tumour)[:, 2].mean() - np.argwhere(p.tissue > 0)[:, 2].mean()) * p.spacing[2]
    solid = p.image[p.labels == ENHANCING].mean()
    if cls == "Meningioma":
        assert solid > 50  # hyperdense
    elif cls == "Glioma":
        assert p.image[tumour].mean() < 27 and abs(xc) > 10  # hypodense, in a hemisphere
    else:
        assert abs(xc) < 4 and tumour.sum() * np.prod(p.spacing) < 8000  # small and midline


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="tumour_class"):
        make_ct_phantom(0, tumour_class="Astrocytoma")
    with pytest.raises(ValueError, match="n_tumours"):
        make_mr_phantom(0, shape=(8, 16, 16), n_tumours=4)
