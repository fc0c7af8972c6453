"""Coded concepts for the node's findings: segment property types and classification findings.

Segment types come from CID 7151 "Segmentation Property Types" as pydicom ships it (so each code is one
DICOM lists). The classification findings are SNOMED CT disorders checked against public references
(NCBI MedGen and others): note that SCT 393563007, sometimes quoted for glioma, is "Glioblastoma
multiforme"; glioma itself is SCT 393564001.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

Coded = Code | hd.sr.CodedConcept

#: Category of every tumour sub-region (CID 7150).
TUMOUR_CATEGORY: Code = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
#: Anatomic region of every segment and finding.
BRAIN: Code = codes.SCT.Brain  # 12738006

NEOPLASM: Code = codes.SCT.Neoplasm  # 108369006
ENHANCING: Code = codes.NCIt.EnhancingLesion  # C113842
NON_ENHANCING: Code = codes.NCIt.NonEnhancingLesion  # C81175
NECROSIS: Code = codes.SCT.Necrosis  # 6574001
EDEMA: Code = codes.SCT.Edema  # 79654002

# The three overlapping BraTS evaluation regions (sigmoid models such as MONAI's brats_mri_segmentation
# give one channel each). Neither SNOMED CT nor NCIt has a concept named "whole tumour" or "tumour core",
# so each gets the CID 7151 concept whose definition covers what the region holds:
#: Tumour core = enhancing + necrotic + non-enhancing tumour, without the surrounding edema: a neoplasm.
TUMOUR_CORE: Code = codes.SCT.Neoplasm  # 108369006
#: Whole tumour = the core plus peritumoral edema: all abnormal tissue, hence "Lesion", not "Neoplasm".
WHOLE_TUMOUR: Code = codes.SCT.Lesion  # 52988006
#: Enhancing tumour: NCIt "Enhancing Lesion", as for the label maps.
ENHANCING_TUMOUR: Code = ENHANCING  # NCIt C113842

GLIOMA = Code("393564001", "SCT", "Glioma")
MENINGIOMA = Code("302820008", "SCT", "Intracranial meningioma")
PITUITARY_ADENOMA = Code("254956000", "SCT", "Pituitary adenoma")
NO_ABNORMALITY: Code = codes.DCM.NoAbnormality  # 111286
#: A classifier's outcome when no class reaches its confidence threshold. SCT "Indeterminate result" is a
#: finding (what a Finding item must hold); SCT 82334004 "Indeterminate" is only a qualifier value.
INDETERMINATE: Code = codes.SCT.IndeterminateResult  # 280416009

# Units and measurement names (UCUM "ml" is not in pydicom's dictionary, hence built here).
MILLILITER = Code("ml", "UCUM", "milliliter")
SQUARE_MILLIMETER: Code = codes.UCUM.SquareMillimeter
NO_UNITS: Code = codes.UCUM.NoUnits  # "1"
VOLUME: Code = codes.SCT.Volume  # 118565006
AREA: Code = codes.SCT.Area  # 42798000
PROBABILITY: Code = codes.DCM.Probability  # 122157
SCORE = Code("246262008", "SCT", "Score")
FINDING: Code = codes.DCM.Finding  # 121071
COMMENT: Code = codes.DCM.Comment  # 121106
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12

# Most specific first: "non-enhancing" before "enhancing", sub-regions before the whole tumour, so that
# "necrotic and non-enhancing tumour core" (BraTS label 1) stays a sub-region, not the core region.
_SEGMENT_RULES: tuple[tuple[str, Code], ...] = (
    (r"\b(non ?enhancing|netc|net)\b", NON_ENHANCING),
    (r"\b(necro\w*|ncr)\b", NECROSIS),
    (r"\b(o?edema\w*|ed|snfh)\b", EDEMA),
    (r"\b(whole tumou?r|wt)\b", WHOLE_TUMOUR),
    (r"\b(tumou?r core|tc)\b", TUMOUR_CORE),
    (r"\b(enhancing|et)\b", ENHANCING),
    (r"\b(tumou?r|neoplasm|lesion|mass)\b", NEOPLASM),
)

_CLASS_RULES: tuple[tuple[str, Code], ...] = (
    (r"\b(indeterminate|inconclusive|uncertain)\b", INDETERMINATE),
    (r"\b(no ?tumou?r|normal|no abnormality|healthy|negative)\b", NO_ABNORMALITY),
    (r"\bgliom\w*\b", GLIOMA),
    (r"\bmeningiom\w*\b", MENINGIOMA),
    (r"\bpituitar\w*\b", PITUITARY_ADENOMA),
)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-/]+", " ", name.strip().lower())


def segment_type(label_name: str) -> Code:
    """Segmented Property Type for a label name ("enhancing tumour" -> Enhancing Lesion, ...).

    Names that match no rule are coded as Neoplasm, the generic tumour type.
    """
    text = _normalise(label_name)
    for pattern, code in _SEGMENT_RULES:
        if re.search(pattern, text):
            return code
    return NEOPLASM


def class_finding(class_name: str, overrides: Mapping[str, Coded] | None = None) -> Coded:
    """The coded finding of a classifier's class name ("glioma", "no_tumor", ...)."""
    if overrides and class_name in overrides:
        return overrides[class_name]
    text = _normalise(class_name)
    for pattern, code in _CLASS_RULES:
        if re.search(pattern, text):
            return code
    raise ValueError(
        f"class {class_name!r} has no known code (known: glioma, meningioma, pituitary, no tumour, "
        "indeterminate); "
        "pass class_codes to name one"
    )
