import pytest

from neuronova.models import ModelRegistry


@pytest.fixture(scope="session")
def demo_registry():
    """The shipped demo models, loaded once (about 2 s: ONNX sessions, biomarker refit, warm-up)."""
    return ModelRegistry.load(device="cpu")
