import copy
import random

import numpy as np
import pytest

from neuronova.errors import SeriesError
from neuronova.phantoms import make_ct_study, make_mr_study, write_series
from neuronova.pipelines.volume import load_series


@pytest.fixture(scope="module")
def ct():
    return make_ct_study(3, n_slices=10, matrix=32, tumour_class="Glioma")


def test_shuffled_files_with_wrong_instance_numbers_sort_by_position(ct, tmp_path):
    paths = write_series(ct.datasets, tmp_path)
    random.Random(0).shuffle(paths)
    volume = load_series(paths)
    assert volume.sop_instance_uids == [d.SOPInstanceUID for d in ct.datasets]
    np.testing.assert_allclose(volume.array, np.clip(np.rint(ct.phantom.image), -1024, 3071), atol=0.5)
    assert volume.array.dtype == np.float32

    renumbered = [copy.deepcopy(d) for d in ct.datasets]
    for ds, number in zip(renumbered, [7, 3, 9, 1, 10, 2, 8, 4, 6, 5], strict=True):
        ds.InstanceNumber = number
    again = load_series(list(reversed(renumbered)))
    assert again.sop_instance_uids == volume.sop_instance_uids


def test_affine_maps_indices_to_image_position(ct):
    volume = load_series(ct.datasets)
    for k in (0, 5, 9):
        np.testing.assert_allclose(volume.index_to_patient((k, 0, 0)), ct.datasets[k].ImagePositionPatient, atol=1e-3)
    ds = ct.datasets[0]
    np.testing.assert_allclose(volume.index_to_patient((0, 2, 3)),
                               np.asarray(ds.ImagePositionPatient) + [3 * ds.PixelSpacing[1], 2 * ds.PixelSpacing[0], 0])
    assert volume.spacing == pytest.approx(ct.phantom.spacing, abs=1e-4)
    assert volume.voxel_volume_ml == pytest.approx(np.prod(ct.phantom.spacing) / 1000, rel=1e-4)


def test_mr_pixels_are_unscaled():
    mr = make_mr_study(2, shape=(5, 24, 24))
    volume = load_series(mr.datasets)
    np.testing.assert_array_equal(volume.array, np.clip(np.rint(mr.phantom.image), 0, 4095))
    assert volume.modality == "MR"


def test_missing_slice_is_rejected(ct):
    with pytest.raises(SeriesError, match="missing slice"):
        load_series(ct.datasets[:4] + ct.datasets[5:])


def test_mixed_orientation_is_rejected(ct):
    datasets = [copy.deepcopy(d) for d in ct.datasets]
    datasets[6].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(SeriesError, match="mixed orientations"):
        load_series(datasets)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: setattr(d, "Rows", 16), "pixels"),
        (lambda d: setattr(d, "PixelSpacing", [2.0, 2.0]), "pixel spacing"),
        (lambda d: setattr(d, "SeriesInstanceUID", "1.2.3"), "different series"),
        (lambda d: delattr(d, "ImagePositionPatient"), "lacks ImagePositionPatient"),
    ],
)
def test_inconsistent_instances_are_rejected(ct, change, message):
    datasets = [copy.deepcopy(d) for d in ct.datasets]
    change(datasets[2])
    with pytest.raises(SeriesError, match=message):
        load_series(datasets)


def test_duplicate_positions_and_unreadable_files_are_rejected(ct, tmp_path):
    with pytest.raises(SeriesError, match="same position"):
        load_series(ct.datasets + [ct.datasets[3]])
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(SeriesError, match="not readable DICOM"):
        load_series([bad])
    with pytest.raises(SeriesError, match="no instances"):
        load_series([])


def test_single_slice_is_a_volume(ct):
    volume = load_series([ct.datasets[4]])
    assert volume.shape == (1, 32, 32)
    assert volume.spacing[0] == pytest.approx(float(ct.datasets[4].SliceThickness))
