"""Explanations: Grad-CAM for images (classification and segmentation), SHAP for tabular models.

Every explainer takes a model it does not own (a ``torch.nn.Module`` and a layer in it, or a fitted
sklearn tree model) and an already preprocessed input, so it works with any model. Each accepts
``time_budget_s`` and raises ``neuronova.errors.XAIGenerationError`` when the budget runs out or the
explainer fails; callers then return the prediction without the explanation.
"""

from neuronova.xai.budget import model_lock, run_with_budget
from neuronova.xai.classification import (
    ClassificationExplanation,
    explain_classification,
    explain_classification_batch,
)
from neuronova.xai.images import (
    as_data_url,
    heatmap_png,
    heatmap_rgb,
    overlay_png,
    overlay_rgb,
    png_bytes,
    resize_heatmap,
)
from neuronova.xai.regions import PatientRegion, Region, important_regions, to_patient_coordinates
from neuronova.xai.segmentation import SegmentationExplanation, explain_segmentation, key_slices, unet_bottleneck
from neuronova.xai.shap_explain import TabularExplanation, explain_tabular, shap_plot_png

__all__ = [
    "ClassificationExplanation",
    "PatientRegion",
    "Region",
    "SegmentationExplanation",
    "TabularExplanation",
    "as_data_url",
    "explain_classification",
    "explain_classification_batch",
    "explain_segmentation",
    "explain_tabular",
    "heatmap_png",
    "heatmap_rgb",
    "important_regions",
    "key_slices",
    "model_lock",
    "overlay_png",
    "overlay_rgb",
    "png_bytes",
    "resize_heatmap",
    "run_with_budget",
    "shap_plot_png",
    "to_patient_coordinates",
    "unet_bottleneck",
]
