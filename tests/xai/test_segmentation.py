import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from neuronova.errors import XAIGenerationError
from neuronova.xai import explain_segmentation, key_slices, unet_bottleneck
from neuronova.xai.segmentation import GIVEN_MASK, PREDICTED_MASK, WHOLE_VOLUME


def unet(spatial_dims: int, out_channels: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(
        spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels, channels=(4, 8, 16), strides=(2, 2),
        num_res_units=1,
    ).eval()


def reference_cam(net, layer, image, labels, classes):
    """Grad-CAM written out by hand: ReLU(sum_k mean(dS/dA_k) A_k), min-max normalised."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    try:
        output = net(image)[0]
    finally:
        handle.remove()
    labels = torch.from_numpy(labels)
    score = sum((output[c] * (labels == c)).sum() for c in classes)
    (grad,) = torch.autograd.grad(score, saved["a"])
    weights = grad[0].mean(dim=tuple(range(1, grad.ndim - 1)), keepdim=True)
    cam = torch.relu((weights * saved["a"][0]).sum(0)).detach().numpy()
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


@pytest.fixture(scope="module")
def net3d():
    return unet(3)


def test_3d_cam_matches_hand_written_grad_cam_and_covers_the_input(net3d):
    image = torch.randn(1, 1, 24, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = unet_bottleneck(net3d)
    explanation = explain_segmentation(net3d, layer, image, body=False)  # noise has no body to find
    with torch.no_grad():
        predicted = net3d(image)[0].argmax(0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(explanation.labels, predicted)
    assert explanation.target_classes == (1, 2)
    assert explanation.target_region == PREDICTED_MASK
    assert explanation.region_voxels == int(np.isin(predicted, [1, 2]).sum()) > 0
    assert explanation.native_shape == (6, 8, 8)  # two stride-2 levels
    cam = explanation.cam
    assert cam.shape == (24, 32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    # the coarse map is the textbook Grad-CAM of the same score
    coarse = reference_cam(net3d, layer, image, predicted, (1, 2))
    expected = F.interpolate(torch.from_numpy(coarse)[None, None], size=(24, 32, 32), mode="trilinear")[0, 0].numpy()
    np.testing.assert_allclose(cam, expected / expected.max(), atol=1e-4)
    assert all(not m._forward_hooks for m in net3d.modules())
    resampled = explain_segmentation(net3d, layer, image, output_shape=(48, 64, 40), body=False)
    assert resampled.cam.shape == (48, 64, 40) and resampled.labels.shape == (24, 32, 32)
    assert resampled.cam.max() == pytest.approx(1.0) and resampled.cam.min() >= 0


def test_given_mask_and_empty_mask(net3d):
    image = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    layer = unet_bottleneck(net3d)
    mask = np.zeros((16, 16, 16), dtype=np.uint8)
    mask[4:8, 4:8, 4:8] = 2
    given = explain_segmentation(net3d, layer, image, mask=mask, target_classes=[2], body=False)
    assert given.target_region == GIVEN_MASK and given.region_voxels == 64 and given.target_classes == (2,)
    coarse = reference_cam(net3d, layer, image, mask, (2,))
    expected = F.interpolate(torch.from_numpy(coarse)[None, None], size=(16, 16, 16), mode="trilinear")[0, 0].numpy()
    np.testing.assert_allclose(given.cam, expected / expected.max(), atol=1e-4)
    empty = explain_segmentation(net3d, layer, image, mask=np.zeros_like(mask))
    assert empty.target_region == WHOLE_VOLUME and empty.region_voxels == 0
    assert empty.cam.shape == (16, 16, 16) and 0 <= empty.cam.min() and empty.cam.max() <= 1
    with pytest.raises(XAIGenerationError, match="mask shape"):
        explain_segmentation(net3d, layer, image, mask=np.zeros((8, 8, 8), dtype=np.uint8))
    with pytest.raises(XAIGenerationError, match="target classes"):
        explain_segmentation(net3d, layer, image, target_classes=[3])


def test_2d_and_single_channel_networks():
    net = unet(2, out_channels=1)
    image = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    explanation = explain_segmentation(net, unet_bottleneck(net), image)
    with torch.no_grad():
        predicted = (net(image)[0, 0] > 0).numpy().astype(np.uint8)
    assert explanation.cam.shape == (32, 32)
    np.testing.assert_array_equal(explanation.labels, predicted)
    assert explanation.target_classes == (1,)
    assert explanation.region_voxels == int(predicted.sum())


def test_unet_bottleneck_is_the_deepest_layer(net3d):
    layer = unet_bottleneck(net3d)
    shapes = {}

    def record(module, inputs, output) -> None:
        shapes["out"] = tuple(output.shape)

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        net3d(torch.zeros(1, 1, 16, 16, 16))
    handle.remove()
    assert shapes["out"] == (1, 16, 4, 4, 4)
    with pytest.raises(ValueError):
        unet_bottleneck(torch.nn.Conv3d(1, 1, 1))


def test_key_slices_of_a_mask_and_of_a_cam():
    mask = np.zeros((20, 8, 8), dtype=np.uint8)
    mask[10, :6, :6] = 1  # 36 voxels
    mask[11, :5, :5] = 3  # 25, next to slice 10
    mask[4, :4, :4] = 1  # 16
    mask[15, :2, :2] = 2  # 4
    assert key_slices(mask, n=3, min_separation=1) == [10, 11, 4]
    assert key_slices(mask, n=3) == [10, 4, 15]  # neighbours of a chosen slice are skipped
    assert key_slices(mask, n=10) == [10, 4, 15]  # empty slices are never chosen
    assert key_slices(np.zeros((5, 4, 4)), n=3) == []
    cam = np.zeros((4, 6, 10), dtype=np.float32)
    cam[:, 2, 3] = [0.1, 0.2, 0.9, 0.3]
    assert key_slices(cam, n=2, min_separation=1) == [2, 3]
    assert key_slices(cam, n=1, axis=2) == [3]
    with pytest.raises(ValueError):
        key_slices(np.zeros((4, 4)))
