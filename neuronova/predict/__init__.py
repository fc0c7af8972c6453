"""The predict REST API: CT classification, MRI segmentation (asynchronous tasks) and biomarker prediction,
each with its explanation (Grad-CAM, SHAP). ``routes.router`` is included by the app factory."""
