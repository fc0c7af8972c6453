"""Synthetic brain studies for tests, training and demos: deterministic from a seed, never patient data."""

from neuronova.phantoms.dicom import SyntheticStudy, make_ct_study, make_mr_study, phantom_to_datasets, write_series
from neuronova.phantoms.head import (
    CT_CLASSES,
    EDEMA,
    ENHANCING,
    NECROTIC,
    TUMOUR_LABELS,
    Phantom,
    TumourSpec,
    make_ct_phantom,
    make_mr_phantom,
    make_phantom,
)

__all__ = [
    "CT_CLASSES", "EDEMA", "ENHANCING", "NECROTIC", "TUMOUR_LABELS", "Phantom", "SyntheticStudy", "TumourSpec",
    "make_ct_phantom", "make_ct_study", "make_mr_phantom", "make_mr_study", "make_phantom", "phantom_to_datasets",
    "write_series",
]
