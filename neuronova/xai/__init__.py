"""Explanations: Grad-CAM for images (classification and segmentation), SHAP for tabular models.

Grad-CAM maps never point at air: every image explainer restricts its map to the body found in its input
(body.py) and rescales it to a peak of 1 there. A segmentation predicted with sliding windows is explained
through the same windows (sliding.py), with the written mask as the target.

Every explainer takes a model it does not own (a ``torch.nn.Module`` and a layer in it, or a fitted
sklearn tree model) and an already preprocessed input, so it works with any model. Each accepts
``time_budget_s`` and raises ``neuronova.errors.XAIGenerationError`` when the budget runs out or the
explainer fails; callers then return the prediction without the explanation (budget.py says how the
budget is enforced: a worker thread with a timeout, which stops at its next checkpoint once abandoned).

Thread safety: a model may be shared by threads. Grad-CAM hooks are registered per call, removed when it
ends, and record only the forward of the thread that registered them (cam.py), so plain inference in other
threads neither disturbs an explanation nor is disturbed by it. Explanations of one model object are
serialised by a lock per model (budget.model_lock): a backward pass holds memory for a whole graph, and the
lock keeps two of them from piling up; waiting for it counts against the time budget. SHAP and the image
functions keep no shared mutable state except a TreeExplainer cache guarded by a lock.
"""

from neuronova.xai.body import body_mask, heatmap_on_image, restrict_to_body
from neuronova.xai.budget import model_lock, run_with_budget
from neuronova.xai.classification import (
    ClassificationExplanation,
    explain_classification,
    explain_classification_batch,
)
from neuronova.xai.images import (
    as_data_url,
    blend_heatmap,
    heatmap_png,
    heatmap_rgb,
    overlay_png,
    overlay_rgb,
    png_bytes,
    resize_heatmap,
)
from neuronova.xai.regions import PatientRegion, Region, important_regions, to_patient_coordinates
from neuronova.xai.segmentation import (
    SegmentationExplanation,
    explain_segmentation,
    key_slices,
    unet_bottleneck,
    unet_first_decoder,
)
from neuronova.xai.shap_explain import TabularExplanation, explain_tabular, shap_plot_png
from neuronova.xai.sliding import explain_segmentation_windows

__all__ = [
    "ClassificationExplanation",
    "PatientRegion",
    "Region",
    "SegmentationExplanation",
    "TabularExplanation",
    "as_data_url",
    "blend_heatmap",
    "body_mask",
    "explain_classification",
    "explain_classification_batch",
    "explain_segmentation",
    "explain_segmentation_windows",
    "explain_tabular",
    "heatmap_on_image",
    "heatmap_png",
    "heatmap_rgb",
    "important_regions",
    "key_slices",
    "model_lock",
    "overlay_png",
    "overlay_rgb",
    "png_bytes",
    "resize_heatmap",
    "restrict_to_body",
    "run_with_budget",
    "shap_plot_png",
    "to_patient_coordinates",
    "unet_bottleneck",
    "unet_first_decoder",
]
