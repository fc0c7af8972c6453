import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from neuronova.phantoms import make_ct_study, make_mr_study, write_series


def test_mr_series_attributes_and_deterministic_uids():
    a = make_mr_study(4, shape=(12, 48, 48))
    b = make_mr_study(4, shape=(12, 48, 48))
    assert [d.SOPInstanceUID for d in a.datasets] == [d.SOPInstanceUID for d in b.datasets]
    assert a.study_instance_uid.startswith("2.25.") and a.series_instance_uid.startswith("2.25.")
    assert len({d.SOPInstanceUID for d in a.datasets}) == 12
    ds = a.datasets[0]
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.BodyPartExamined == "BRAIN" and ds.PatientPosition == "HFS"
    assert ds.AccessionNumber and ds.PatientID and ds.StudyDate
    z = [float(d.ImagePositionPatient[2]) for d in a.datasets]
    assert np.allclose(np.diff(z), a.phantom.spacing[0], atol=1e-3)
    assert float(ds.SpacingBetweenSlices) == pytest.approx(a.phantom.spacing[0], abs=1e-5)


def test_ct_rescale_gives_hounsfield_units():
    s = make_ct_study(9, n_slices=6, matrix=64, tumour_class="Meningioma")
    ds = s.datasets[3]
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.BodyPartExamined == "HEAD"
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu, np.clip(np.rint(s.phantom.image[3]), -1024, 3071), atol=0.5)


def test_slice_thickness_can_be_fixed():
    s = make_ct_study(2, n_slices=5, matrix=32, slice_thickness=2.5)
    assert float(s.datasets[0].SliceThickness) == 2.5


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_written_files_pass_dciodvfy_without_errors(tmp_path):
    mr = write_series(make_mr_study(1, shape=(6, 32, 32)).datasets, tmp_path / "mr")
    ct = write_series(make_ct_study(2, n_slices=4, matrix=32, tumour_class="Glioma").datasets, tmp_path / "ct")
    for path in (mr[0], mr[-1], ct[0], ct[2]):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        assert result.returncode == 0 and "Error" not in report, report
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
