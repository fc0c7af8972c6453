"""Models: the registry of model directories, the three demo models and their training.

``ModelRegistry.load(model_dir)`` loads every model once (default: the shipped demo models in
``neuronova/models/demo``, trained on synthetic phantoms, not for clinical use); ``registry.get(model_id)``
returns a loaded model or raises ModelNotLoaded.
"""

from neuronova.models.registry import DEFAULT_MODEL_DIR, MODEL_IDS, ModelRegistry, RegistryEntry, load_model

__all__ = ["DEFAULT_MODEL_DIR", "MODEL_IDS", "ModelRegistry", "RegistryEntry", "load_model"]
