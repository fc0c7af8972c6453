"""Physical space: series of one study in any plane, obliquity, spacing and instance order land on the right
voxels of the reference series (ground truth from the phantom's world), and other frames are refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from neuronova.errors import SeriesError
from neuronova.models.volumetric import Preprocessing
from neuronova.phantoms.study import Acquisition, make_study
from neuronova.pipelines.physical import field_of_view, prepare
from neuronova.pipelines.volume import Volume, load_series

ROLES = ("t1c", "t1", "t2", "flair")
GEOMETRY_ONLY = Preprocessing(axcodes="RAS", pixdim=(2.0, 2.0, 2.0), normalisation="none")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


PROTOCOLS = {
    "axial reference, sagittal, oblique, shuffled coronal": (
        Acquisition("t1c", "axial", rows=100, columns=100, pixel_spacing=(2.2, 2.2), slices=70, slice_spacing=2.2),
        Acquisition("t1", "sagittal", rows=96, columns=96, pixel_spacing=(2.3, 2.3), slices=64, slice_spacing=2.4),
        Acquisition("t2", "axial", rows=90, columns=90, pixel_spacing=(2.4, 2.4), slices=36, slice_spacing=4.0,
                    tilt_deg=14.0),
        Acquisition("flair", "coronal", rows=90, columns=90, pixel_spacing=(2.4, 2.4), slices=40, slice_spacing=4.5,
                    shuffled=True)),
    "oblique shuffled reference, anisotropic others": (
        Acquisition("t1c", "axial", rows=96, columns=96, pixel_spacing=(2.3, 2.3), slices=50, slice_spacing=3.0,
                    tilt_deg=-18.0, shuffled=True),
        Acquisition("t1", "coronal", rows=100, columns=80, pixel_spacing=(2.2, 2.8), slices=70, slice_spacing=2.5),
        Acquisition("t2", "sagittal", rows=96, columns=96, pixel_spacing=(2.3, 2.3), slices=30, slice_spacing=5.0),
        Acquisition("flair", "axial", rows=80, columns=100, pixel_spacing=(2.8, 2.2), slices=35, slice_spacing=4.5)),
}


@pytest.fixture(scope="module", params=sorted(PROTOCOLS))
def study(request: pytest.FixtureRequest):
    return make_study(21, protocol=PROTOCOLS[request.param], n_tumours=2)


def truth_volumes(study) -> dict[str, Volume]:
    """Each series loaded from its DICOM instances, its pixels replaced by its ground-truth tumour mask."""
    out = {}
    for role, series in study.series.items():
        volume = load_series(series.datasets)  # sorted along the normal, whatever the transfer order
        assert np.allclose(volume.affine, series.affine, atol=1e-3)
        masked = copy.copy(volume)
        masked.array = (series.labels > 0).astype(np.float32)
        out[role] = masked
    return out


def test_every_series_lands_on_the_reference_voxels(study) -> None:
    volumes = truth_volumes(study)
    model_input = prepare(volumes, roles=ROLES, optional_roles=frozenset(), preprocessing=GEOMETRY_ONLY)
    assert model_input.reference_role == "t1c"
    on_reference = model_input.to_reference(model_input.image)
    truth = study.series["t1c"].labels > 0
    assert truth.sum() > 500
    for i, role in enumerate(ROLES):
        found = on_reference[i] > 0.5
        # a mask seen through another plane and spacing (3-5 mm slices) and two resamplings: edges move a voxel
        assert dice(found, truth) > (0.93 if role == "t1c" else 0.8), role
        # and the centre of the tumour stays put (mm, in the reference grid)
        centre = np.argwhere(found).mean(0)
        assert np.abs(centre - np.argwhere(truth).mean(0)).max() < 1.5, role


def test_model_space_is_ras_at_the_model_spacing(study) -> None:
    model_input = prepare(truth_volumes(study), roles=ROLES, optional_roles=frozenset(), preprocessing=GEOMETRY_ONLY)
    affine = model_input.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.allclose(spacing, 2.0, atol=1e-3)
    # the axes run (nearest) to the patient's Right, Anterior and Superior
    assert [int(np.argmax(np.abs(affine[:3, k]))) for k in range(3)] == [0, 1, 2]
    assert all(affine[k, k] > 0 for k in range(3))


def test_absent_optional_role_is_a_zero_channel_and_a_required_one_is_refused(study) -> None:
    volumes = truth_volumes(study)
    del volumes["t2"]
    model_input = prepare(volumes, roles=ROLES, optional_roles=frozenset({"t2"}),
                          preprocessing=Preprocessing(pixdim=(2.0, 2.0, 2.0), normalisation="zscore_foreground"))
    assert model_input.zero_filled == ("t2",) and not model_input.image[2].any()
    with pytest.raises(SeriesError) as info:
        prepare(volumes, roles=ROLES, optional_roles=frozenset(), preprocessing=GEOMETRY_ONLY)
    assert info.value.code == "SERIES_ROLE_MISSING" and "t2" in info.value.message


def test_another_frame_of_reference_is_refused(study) -> None:
    volumes = truth_volumes(study)
    other = copy.copy(volumes["flair"])
    other.datasets = [copy.deepcopy(ds) for ds in other.datasets]
    for ds in other.datasets:
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    volumes["flair"] = other
    with pytest.raises(SeriesError) as info:
        prepare(volumes, roles=ROLES, optional_roles=frozenset(), preprocessing=GEOMETRY_ONLY)
    assert info.value.code == "FRAME_OF_REFERENCE_MISMATCH" and "registration" in info.value.message


def test_voxels_a_series_did_not_see_are_marked(study) -> None:
    """A series covers a slab of the head (FLAIR, T2 of few thick slices): outside a required role's slab the
    model saw only padding, so that is recorded (no label is given there); an optional role is zeroed there."""
    volumes = {}
    for role, volume in truth_volumes(study).items():
        ones = copy.copy(volume)
        ones.array = np.ones(volume.shape, dtype=np.float32)
        volumes[role] = ones
    model_input = prepare(volumes, roles=ROLES, optional_roles=frozenset({"t2"}), preprocessing=GEOMETRY_ONLY)
    image = model_input.image
    # where each resampled channel is 1 is where its series is (the padding is 0)
    seen = {role: image[i] > 0.5 for i, role in enumerate(ROLES)}
    assert seen["t1c"].all()  # the reference defines the grid
    covered = model_input.covered
    assert covered is not None and 0.05 < covered.mean() < 0.999
    # covered: inside every required series (t1, flair), give or take the half voxel at the edges
    required = seen["t1"] & seen["flair"]
    assert (covered ^ required).mean() < 0.02
    t2_slab = field_of_view(volumes["t2"], model_input.affine, covered.shape)
    assert (t2_slab ^ (image[ROLES.index("t2")] > 0.5)).mean() < 0.02 and not t2_slab.all()
    assert not image[ROLES.index("t2")][~t2_slab].any()
    probabilities = np.full((4, *covered.shape), 0.25, dtype=np.float32)
    restricted = model_input.restrict(probabilities, activation="softmax")
    assert (restricted[0][~covered] == 1).all() and not restricted[1:, ~covered].any()
    assert (restricted[:, covered] == 0.25).all()
    assert not model_input.restrict(probabilities, activation="sigmoid")[:, ~covered].any()
