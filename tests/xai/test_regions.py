import numpy as np
import pytest

from neuronova.xai import Region, important_regions, to_patient_coordinates


def blob(shape, centre, radius, peak):
    rows, cols = np.indices(shape)
    d2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    return (peak * np.exp(-d2 / (2 * radius**2))).astype(np.float32)


def test_regions_found_at_known_hot_spots_most_important_first():
    heat = np.maximum(blob((64, 80), (20, 50), 3, 1.0), blob((64, 80), (45, 15), 2, 0.8))
    regions = important_regions(heat, threshold=0.5)
    assert len(regions) == 2
    first, second = regions
    assert first.importance == pytest.approx(1.0) and second.importance == pytest.approx(0.8, abs=1e-6)
    # the box of the hottest region contains its peak (row 20, column 50) and is symmetric around it
    assert first.x <= 50 < first.x + first.width and first.y <= 20 < first.y + first.height
    assert first.x + first.width / 2 - 0.5 == pytest.approx(50) and first.y + first.height / 2 - 0.5 == pytest.approx(20)
    assert second.x <= 15 < second.x + second.width and second.y <= 45 < second.y + second.height
    assert 0.5 <= first.mean_heat < first.importance
    assert first.area <= first.width * first.height


def test_exact_box_threshold_and_limits():
    heat = np.zeros((10, 12), dtype=np.float32)
    heat[2:5, 3:9] = 0.6
    heat[3, 4] = 0.9
    heat[7:9, 0:2] = 0.7  # smaller peak, separate region
    heat[0, 11] = 0.49  # below the threshold
    regions = important_regions(heat, threshold=0.5)
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [(3, 2, 6, 3, 18), (0, 7, 2, 2, 4)]
    assert regions[0].importance == pytest.approx(0.9)
    assert regions[1].mean_heat == pytest.approx(0.7)
    assert important_regions(heat, threshold=0.5, max_regions=1) == regions[:1]
    assert important_regions(np.zeros((8, 8)), threshold=0.5) == []
    # diagonal neighbours belong to one region (8-connectivity)
    diag = np.eye(5, dtype=np.float32)
    assert len(important_regions(diag)) == 1
    with pytest.raises(ValueError):
        important_regions(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        important_regions(heat, threshold=0)


def test_polyline_uses_dicom_scoord_pixel_edges():
    region = Region(x=3, y=2, width=6, height=3, importance=1.0, mean_heat=1.0, area=18)
    assert region.polyline() == [(3.0, 2.0), (9.0, 2.0), (9.0, 5.0), (3.0, 5.0), (3.0, 2.0)]


def test_patient_coordinates_axial_hand_computed():
    # Axial slice: rows go along +x (patient left), columns along +y (posterior).
    # Pixel Spacing is (row spacing 0.5, column spacing 0.8): a column step is 0.8 mm in x, a row step 0.5 mm in y.
    region = Region(x=10, y=20, width=4, height=6, importance=1.0, mean_heat=1.0, area=24)
    result = to_patient_coordinates(
        region, image_position=(-100.0, -120.0, 50.0), image_orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.5, 0.8)
    )
    # centre pixel index (column 11.5, row 22.5): x = -100 + 11.5 * 0.8, y = -120 + 22.5 * 0.5
    np.testing.assert_allclose(result.centre, [-90.8, -108.75, 50.0])
    # top-left outer corner: column 9.5, row 19.5
    np.testing.assert_allclose(result.corners[0], [-100 + 9.5 * 0.8, -120 + 19.5 * 0.5, 50.0])
    # bottom-right outer corner: column 13.5, row 25.5
    np.testing.assert_allclose(result.corners[2], [-100 + 13.5 * 0.8, -120 + 25.5 * 0.5, 50.0])
    assert result.width_mm == pytest.approx(3.2) and result.height_mm == pytest.approx(3.0)


def test_patient_coordinates_sagittal_hand_computed():
    # Sagittal slice: rows along +y (posterior), columns along -z (down the patient).
    region = Region(x=0, y=0, width=1, height=1, importance=1.0, mean_heat=1.0, area=1)
    result = to_patient_coordinates(
        region, image_position=(12.0, -100.0, 80.0), image_orientation=(0, 1, 0, 0, 0, -1), pixel_spacing=(2.0, 1.0)
    )
    np.testing.assert_allclose(result.centre, [12.0, -100.0, 80.0])  # the first pixel's centre is the position
    np.testing.assert_allclose(result.corners[0], [12.0, -100.5, 81.0])
    np.testing.assert_allclose(result.corners[2], [12.0, -99.5, 79.0])
    with pytest.raises(ValueError):
        to_patient_coordinates(region, image_position=(0, 0), image_orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(1, 1))
    with pytest.raises(ValueError):
        to_patient_coordinates(region, image_position=(0, 0, 0), image_orientation=(2, 0, 0, 0, 1, 0), pixel_spacing=(1, 1))
