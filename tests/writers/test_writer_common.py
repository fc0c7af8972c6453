"""UIDs, algorithm identity, coded concepts and source checks shared by every writer."""

from __future__ import annotations

import copy
import hashlib

import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from neuronova.writers import AlgorithmInfo, UIDScope, derive_uid, device_uid
from neuronova.writers import codes as nn_codes
from neuronova.writers.common import NOT_FOR_CLINICAL_USE, check_source_images, series_description

HASH = hashlib.sha256(b"w").hexdigest()


def test_derived_uids_are_deterministic_valid_2_25_uids():
    uid = derive_uid("series", "1.2.3", "seg", 1)
    assert uid == derive_uid("series", "1.2.3", "seg", 1)
    assert isinstance(uid, UID) and uid.is_valid and uid.startswith("2.25.")
    assert len(uid) <= 64
    # the value after 2.25. is a 128-bit UUID integer, as the 2.25 arc requires
    assert int(uid.split(".", 2)[2]) < 2**128
    assert derive_uid("a", "bc") != derive_uid("ab", "c")
    assert derive_uid("x", 1) != derive_uid("x", "1")


def test_uid_scope_separates_series_instances_kinds_and_versions():
    scope = UIDScope("1.2.3.4", "brats-seg", "1.0")
    assert scope.series("seg") == UIDScope("1.2.3.4", "brats-seg", "1.0").series("seg")
    uids = {scope.series("seg"), scope.series("sr"), scope.instance("seg", 1), scope.instance("seg", 2),
            scope.tracking("seg", 1), UIDScope("1.2.3.4", "brats-seg", "1.1").series("seg"),
            UIDScope("1.2.3.5", "brats-seg", "1.0").series("seg")}
    assert len(uids) == 7
    with pytest.raises(ValueError, match="pipeline"):
        UIDScope("1.2.3", "", "1.0")
    with pytest.raises(TypeError, match="index"):
        scope.instance("seg", "1")  # type: ignore[arg-type]


def test_device_uid_follows_the_model_hash():
    assert device_uid(HASH) == device_uid(HASH.upper()) == AlgorithmInfo("m", "1", HASH).device_uid
    assert device_uid(HASH) != device_uid(hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ValueError, match="64 hexadecimal"):
        device_uid("abc")
    with pytest.raises(TypeError):
        device_uid(b"abc")  # type: ignore[arg-type]


def test_algorithm_info_validates_and_codes_its_family():
    info = AlgorithmInfo(name="UNet", version="1.0", model_sha256=HASH.upper())
    assert info.model_sha256 == HASH and info.demo is True
    assert info.family_code == codes.DCM.ArtificialIntelligence
    assert AlgorithmInfo("UNet", "1", HASH, family=codes.DCM.DeformableModels).family_code == codes.DCM.DeformableModels
    with pytest.raises(ValueError, match="CID 7162"):
        AlgorithmInfo("UNet", "1", HASH, family="Magic")
    with pytest.raises(ValueError, match="SHA-256"):
        AlgorithmInfo("UNet", "1", "not-a-hash")
    with pytest.raises(TypeError, match="version"):
        AlgorithmInfo("UNet", 1, HASH)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="demo"):
        AlgorithmInfo("UNet", "1", HASH, demo="yes")  # type: ignore[arg-type]


def test_algorithm_identification_and_equipment_name_the_model():
    info = AlgorithmInfo("UNet", "1.0", HASH)
    (item,) = info.algorithm_identification()
    assert (item.AlgorithmName, item.AlgorithmVersion, item.AlgorithmSource) == ("UNet", "1.0", "NeuroNova")
    assert HASH in item.AlgorithmParameters
    equipment = info.contributing_equipment()
    assert equipment.Manufacturer == "NeuroNova" and equipment.ManufacturerModelName == "UNet"
    assert equipment.DeviceSerialNumber == HASH
    assert NOT_FOR_CLINICAL_USE in equipment.ContributionDescription


def test_series_description_warns_for_demo_weights_within_64_characters():
    demo, clinical = AlgorithmInfo("U", "1", HASH), AlgorithmInfo("U", "1", HASH, demo=False)
    assert series_description(None, "Tumour SEG", demo) == f"Tumour SEG - {NOT_FOR_CLINICAL_USE}"
    assert series_description("Tumour SEG", "x", clinical) == "Tumour SEG"
    long = series_description("x" * 80, "", demo)
    assert len(long) == 64 and long.endswith(NOT_FOR_CLINICAL_USE)
    with pytest.raises(ValueError, match="64"):
        series_description("x" * 65, "", clinical)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("enhancing tumour", nn_codes.ENHANCING),
        ("Enhancing_Tumor", nn_codes.ENHANCING),
        ("non-enhancing tumour", nn_codes.NON_ENHANCING),
        ("necrotic core", nn_codes.NECROSIS),
        ("peritumoral oedema", nn_codes.EDEMA),
        ("whole tumor", nn_codes.WHOLE_TUMOUR),
        ("WT", nn_codes.WHOLE_TUMOUR),
        ("tumour core", nn_codes.TUMOUR_CORE),
        ("TC", nn_codes.TUMOUR_CORE),
        ("ET", nn_codes.ENHANCING_TUMOUR),
        ("necrotic and non-enhancing tumour core", nn_codes.NON_ENHANCING),  # BraTS label 1, not the core region
        ("something else", nn_codes.NEOPLASM),
    ],
)
def test_segment_types_come_from_label_names(name, code):
    assert nn_codes.segment_type(name) == code


def test_region_codes_are_distinct_and_from_cid_7151():
    region_codes = [nn_codes.TUMOUR_CORE, nn_codes.WHOLE_TUMOUR, nn_codes.ENHANCING_TUMOUR]
    assert len({(c.scheme_designator, c.value) for c in region_codes}) == 3
    cid7151 = {(getattr(codes.cid7151, k).scheme_designator, getattr(codes.cid7151, k).value)
               for k in codes.cid7151.dir()}
    assert all((c.scheme_designator, c.value) in cid7151 for c in region_codes)


def test_class_findings_are_real_snomed_codes():
    assert nn_codes.class_finding("Glioma").value == "393564001"  # not 393563007 (glioblastoma)
    assert nn_codes.class_finding("meningioma").value == "302820008"
    assert nn_codes.class_finding("Pituitary").value == "254956000"
    assert nn_codes.class_finding("No Tumor") == codes.DCM.NoAbnormality
    assert nn_codes.class_finding("notumor") == codes.DCM.NoAbnormality
    assert nn_codes.class_finding("odd", {"odd": codes.SCT.Neoplasm}) == codes.SCT.Neoplasm
    assert nn_codes.class_finding("indeterminate") == nn_codes.INDETERMINATE
    assert (nn_codes.INDETERMINATE.value, nn_codes.INDETERMINATE.meaning) == ("280416009", "Indeterminate result")
    with pytest.raises(ValueError, match="'schwannoma'"):
        nn_codes.class_finding("schwannoma")


def test_source_checks_name_what_is_wrong(source_images):
    assert check_source_images(source_images) == source_images
    with pytest.raises(TypeError, match="sequence"):
        check_source_images(source_images[0])
    with pytest.raises(TypeError, match=r"source_images\[1\]"):
        check_source_images([source_images[0], "x"])
    with pytest.raises(ValueError, match="empty"):
        check_source_images([])
    other = copy.deepcopy(source_images[1])
    other.SeriesInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        check_source_images([source_images[0], other])
    with pytest.raises(ValueError, match="more than once"):
        check_source_images([source_images[0], source_images[0]])
