import threading

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from neuronova.errors import XAIGenerationError
from neuronova.xai import explain_classification, explain_classification_batch, important_regions

from .models import SIDE, square_images, trained_square_net


@pytest.fixture(scope="module")
def square_net():
    return trained_square_net(steps=30)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4).eval()


def test_grad_cam_peak_lies_inside_the_bright_square(square_net):
    images, labels, corners = square_images(12, np.random.default_rng(1))
    squares = [i for i in range(12) if corners[i] is not None]
    assert len(squares) >= 4
    for i in squares:
        explanation = explain_classification(square_net, square_net.features, images[i : i + 1])
        assert explanation.predicted_class == 1 == explanation.target_class
        row, col = np.unravel_index(np.argmax(explanation.heatmap), explanation.heatmap.shape)
        top, left = corners[i]
        assert top <= row < top + SIDE and left <= col < left + SIDE
        # and the most important region is the square
        region = important_regions(explanation.heatmap, threshold=0.5)[0]
        assert region.x <= left + SIDE // 2 < region.x + region.width
        assert region.y <= top + SIDE // 2 < region.y + region.height


def test_prediction_comes_from_the_same_pass_and_heatmap_is_normalised(resnet):
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explanation = explain_classification(resnet, resnet.layer4, image)
    with torch.no_grad():
        logits = resnet(image)[0].numpy()
    np.testing.assert_allclose(explanation.logits, logits, rtol=1e-5, atol=1e-5)
    assert explanation.predicted_class == int(np.argmax(logits)) == explanation.target_class
    assert explanation.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert explanation.confidence == pytest.approx(float(explanation.probabilities.max()))
    heat = explanation.heatmap
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0, abs=1e-5)
    assert explanation.layer == "layer4" and explanation.method == "Grad-CAM"
    # the hooks are gone and no gradient is left on the shared model
    assert all(not m._forward_hooks for m in resnet.modules())
    assert all(p.grad is None for p in resnet.parameters())


def test_same_map_as_plain_pytorch_grad_cam(resnet):
    """The cut at the target layer changes the cost, not the result."""
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [3, 0, 1]
    ours = explain_classification_batch(resnet, resnet.layer4, images, target_classes=targets, restrict_body=False)
    with GradCAM(resnet, [resnet.layer4]) as cam:
        reference = cam(images, [ClassifierOutputTarget(t) for t in targets])
    resnet.zero_grad(set_to_none=True)
    np.testing.assert_allclose(np.stack([e.heatmap for e in ours]), reference, atol=1e-5)
    assert [e.target_class for e in ours] == targets


def test_batch_gives_each_item_its_own_target(square_net):
    images, _, _ = square_images(4, np.random.default_rng(3))
    batch = explain_classification_batch(square_net, square_net.features, images, target_classes=[None, 0, 1, None])
    assert len(batch) == 4
    for i, explanation in enumerate(batch):
        alone = explain_classification(
            square_net, square_net.features, images[i : i + 1], target_class=[None, 0, 1, None][i]
        )
        assert explanation.target_class == alone.target_class
        assert explanation.predicted_class == alone.predicted_class
        np.testing.assert_allclose(explanation.heatmap, alone.heatmap, atol=1e-5)
        np.testing.assert_allclose(explanation.logits, alone.logits, rtol=1e-5, atol=1e-6)
    assert batch[1].target_class == 0 and batch[2].target_class == 1
    assert batch[0].target_class == batch[0].predicted_class


def test_plain_inference_in_another_thread_does_not_disturb_an_explanation(resnet):
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    expected = explain_classification(resnet, resnet.layer4, image).heatmap
    stop = threading.Event()

    def infer() -> None:
        other = torch.randn(2, 3, 64, 64)
        while not stop.is_set():
            with torch.no_grad():
                resnet(other)

    thread = threading.Thread(target=infer)
    thread.start()
    try:
        for _ in range(5):
            np.testing.assert_allclose(explain_classification(resnet, resnet.layer4, image).heatmap, expected, atol=1e-5)
    finally:
        stop.set()
        thread.join()


def test_bad_requests(resnet, square_net):
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(XAIGenerationError, match="out of range"):
        explain_classification(resnet, resnet.layer4, image, target_class=4)
    with pytest.raises(ValueError, match="not a submodule"):
        explain_classification(resnet, square_net.features, image)
    with pytest.raises(ValueError):
        explain_classification(resnet, resnet.layer4, torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError):
        explain_classification_batch(resnet, resnet.layer4, torch.randn(2, 3, 64, 64), target_classes=[1])
    assert all(not m._forward_hooks for m in resnet.modules())
