"""MONAI bundles as node models: read safely (no ``$`` expression evaluated, no code imported, weights as plain
tensors) and run through the :class:`neuronova.models.volumetric.VolumeSegmenter` contract.

``load_bundle(path)`` returns a :class:`VolumeModel` or raises :class:`BundleRefused` with the reason.
"""

from neuronova.models.bundle.config import BundleRefused
from neuronova.models.bundle.loader import LAYOUT, BundleInfo, is_bundle, load_bundle, read_bundle_info
from neuronova.models.bundle.segmenter import GRADCAM_UNAVAILABLE_ONNX, VolumeModel
from neuronova.models.bundle.transforms import apply_normalisation

__all__ = ["GRADCAM_UNAVAILABLE_ONNX", "LAYOUT", "BundleInfo", "BundleRefused", "VolumeModel", "apply_normalisation",
           "is_bundle", "load_bundle", "read_bundle_info"]
