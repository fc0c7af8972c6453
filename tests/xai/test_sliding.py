"""Segmentation Grad-CAM through sliding windows, checked against Grad-CAM written out by hand per window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from neuronova.xai import explain_segmentation_windows, unet_bottleneck, unet_first_decoder
from neuronova.xai.cam import layer_name
from neuronova.xai.segmentation import GIVEN_MASK, WHOLE_VOLUME


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                num_res_units=1, norm="instance").eval()


def raw_cam(net, layer, window, labels, classes, size):
    """ReLU(sum_k mean(dS/dA_k) A_k) of one window, S the target classes' logits over their labels, not
    normalised, upsampled (trilinear) to ``size``."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    try:
        output = net(window)[0]
    finally:
        handle.remove()
    labels = torch.from_numpy(labels)
    score = sum((output[c] * (labels == c)).sum() for c in classes)
    (grad,) = torch.autograd.grad(score, saved["a"])
    weights = grad[0].mean(dim=(1, 2, 3), keepdim=True)
    cam = torch.relu((weights * saved["a"][0]).sum(0)).detach()
    return F.interpolate(cam[None, None], size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def test_one_window_is_the_textbook_grad_cam_of_the_mask(net):
    image = torch.randn(1, 1, 16, 24, 24, generator=torch.Generator().manual_seed(3))
    mask = np.zeros((16, 24, 24), np.uint8)
    mask[4:10, 6:14, 6:14] = 1
    mask[6:8, 8:12, 8:12] = 2
    layer = unet_first_decoder(net)
    assert layer_name(net, layer) == "model.1.submodule.2"  # the up block after the bottom, not the bottom
    assert layer is not unet_bottleneck(net)
    explanation = explain_segmentation_windows(net, layer, image, mask, roi_size=(16, 24, 24), overlap=0.25,
                                               body=False)
    expected = raw_cam(net, layer, image, mask, (1, 2), (16, 24, 24))
    np.testing.assert_allclose(explanation.cam, expected / expected.max(), atol=1e-4)
    assert explanation.target_classes == (1, 2) and explanation.target_region == GIVEN_MASK
    assert explanation.region_voxels == int((mask > 0).sum())
    assert explanation.native_shape == (8, 12, 12)
    np.testing.assert_array_equal(explanation.labels, mask)
    assert all(not m._forward_hooks for m in net.modules()) and all(p.grad is None for p in net.parameters())


def test_each_window_explains_its_own_crop_and_windows_without_lesion_add_nothing(net):
    image = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(4))
    mask = np.zeros((16, 32, 32), np.uint8)
    mask[5:11, 3:12, 4:13] = 1  # inside the first of four windows (overlap 0: they tile the grid)
    layer = unet_bottleneck(net)
    explanation = explain_segmentation_windows(net, layer, image, mask, roi_size=(16, 16, 16), overlap=0.0,
                                               sw_batch_size=3, mode="constant", body=False)
    cam = explanation.cam
    assert not cam[:, 16:, :].any() and not cam[:, :, 16:].any()
    window = image[:, :, :, :16, :16]
    expected = raw_cam(net, layer, window, mask[:, :16, :16], (1,), (16, 16, 16))
    np.testing.assert_allclose(cam[:, :16, :16], expected / expected.max(), atol=1e-4)
    # a different window layout changes the map: it explains the windows, not one whole-grid forward
    whole = explain_segmentation_windows(net, layer, image, mask, roi_size=(16, 32, 32), overlap=0.0, body=False)
    assert whole.cam[:, :, 16:].any()


def test_empty_mask_explains_the_tumour_logits_everywhere_and_bad_inputs_are_refused(net):
    image = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    layer = unet_bottleneck(net)
    empty = explain_segmentation_windows(net, layer, image, np.zeros((16, 16, 16), np.uint8), roi_size=(16, 16, 16),
                                         overlap=0.0, target_classes=[1], body=False)
    assert empty.target_region == WHOLE_VOLUME and empty.region_voxels == 0 and empty.cam.max() == pytest.approx(1.0)
    kwargs = {"roi_size": (16, 16, 16), "overlap": 0.25}
    with pytest.raises(ValueError, match="mask shape"):
        explain_segmentation_windows(net, layer, image, np.zeros((8, 8, 8), np.uint8), **kwargs)
    with pytest.raises(ValueError, match="no target class"):
        explain_segmentation_windows(net, layer, image, np.zeros((16, 16, 16), np.uint8), **kwargs)
    with pytest.raises(ValueError, match="overlap"):
        explain_segmentation_windows(net, layer, image, np.ones((16, 16, 16), np.uint8), roi_size=(8, 8, 8),
                                     overlap=1.0)
    with pytest.raises(ValueError, match="body mask shape"):
        explain_segmentation_windows(net, layer, image, np.ones((16, 16, 16), np.uint8), **kwargs,
                                     body=np.ones((4, 4, 4), bool))
