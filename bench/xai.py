"""What an explanation costs next to the prediction it explains.

    .venv/bin/python bench/xai.py [--threads 1] [--repeats 15] [--size 128] [--skip-3d]

Random weights (speed does not depend on them). Medians after warm-up (first calls are about 2.5x slower).
Classification: ResNet18 (4 classes) at 224x224, batch 1 and 8: plain eager forward, ONNX Runtime,
pytorch-grad-cam used naively (its own call after a separate prediction forward), pytorch-grad-cam with
the prediction read from ``cam.outputs`` (one pass, full backward), and neuronova.xai (one pass, graph cut
at the target layer). Segmentation: MONAI UNet (channels 16-128, 2 residual units) at size-cubed, bottleneck
layer: plain forward, monai.visualize.GradCAM, pytorch-grad-cam as shipped (cubic zoom), neuronova.xai.
Tabular: TreeExplainer on a 3-class HistGradientBoostingClassifier. Images: PNGs and regions at 512x512.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuronova.xai import (  # noqa: E402
    explain_classification,
    explain_classification_batch,
    explain_segmentation,
    explain_tabular,
    heatmap_png,
    important_regions,
    overlay_png,
    overlay_rgb,
    unet_bottleneck,
)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def row(name: str, ms: float, *baselines: tuple[str, float]) -> None:
    ratios = "  ".join(f"{ms / base:5.2f}x {label}" for label, base in baselines)
    print(f"  {name:<52} {ms:9.1f} ms  {ratios}")


def onnx_session(model: torch.nn.Module, example: torch.Tensor, directory: Path):
    import onnxruntime as ort

    path = directory / "model.onnx"
    torch.onnx.export(
        model, (example,), str(path), input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_classification(repeats: int) -> None:
    import torchvision
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    print("ResNet18, 4 classes, 224x224, target layer layer4")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            session = onnx_session(model, torch.randn(1, 3, 224, 224), Path(tmp))
        except Exception as exc:  # the bench still runs without ONNX
            print(f"  (ONNX export failed: {type(exc).__name__}: {exc})")
            session = None
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)

            def eager() -> None:
                with torch.no_grad():
                    model(x)

            def naive() -> None:
                with torch.no_grad():
                    model(x)  # the prediction
                with GradCAM(model, [model.layer4]) as cam:
                    cam(x, None)  # its own forward and a backward through the whole network

            def library_one_pass() -> None:
                with GradCAM(model, [model.layer4]) as cam:
                    cam(x, None)
                    cam.outputs.detach()  # the prediction from the CAM's forward

            def ours() -> None:
                if batch == 1:
                    explain_classification(model, model.layer4, x)
                else:
                    explain_classification_batch(model, model.layer4, x)

            print(f" batch {batch}")
            base = median_ms(eager, repeats)
            baselines = [("eager", base)]
            row("plain eager forward (torch.no_grad)", base)
            if session is not None:
                feed = {"x": x.numpy()}
                ort_ms = median_ms(lambda: session.run(None, feed), repeats)
                baselines.append(("ORT", ort_ms))
                row("ONNX Runtime inference", ort_ms, ("eager", base))
            row("pytorch-grad-cam naive (prediction + CAM call)", median_ms(naive, repeats), *baselines)
            row("pytorch-grad-cam one pass (cam.outputs)", median_ms(library_one_pass, repeats), *baselines)
            row("neuronova.xai (one pass, cut at layer4)", median_ms(ours, repeats), *baselines)
            model.zero_grad(set_to_none=True)


def bench_segmentation(size: int, repeats: int) -> None:
    from monai.networks.nets import UNet
    from monai.visualize import GradCAM as MonaiGradCAM
    from pytorch_grad_cam import GradCAM

    from neuronova.xai.cam import layer_name
    from neuronova.xai.segmentation import _RegionTarget

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=2).eval()
    layer = unet_bottleneck(net)
    x = torch.randn(1, 1, size, size, size)
    print(f"MONAI UNet 16-128, {size}-cubed, target layer {layer_name(net, layer)} (the bottleneck)")

    def eager() -> None:
        with torch.no_grad():
            net(x)

    monai_cam = MonaiGradCAM(nn_module=net, target_layers=layer_name(net, layer))

    def monai() -> None:
        monai_cam(x, class_idx=1)  # its score: the class-1 logit summed over the whole volume

    def library() -> None:
        with GradCAM(net, [layer]) as cam:
            cam(x, [_RegionTarget((1,), None)])

    base = median_ms(eager, repeats, warmup=1)
    row("plain eager forward (torch.no_grad)", base)
    row("monai.visualize.GradCAM", median_ms(monai, repeats, warmup=1), ("eager", base))
    row("pytorch-grad-cam as shipped (cubic zoom)", median_ms(library, repeats, warmup=1), ("eager", base))
    row("neuronova.xai (cut, trilinear)", median_ms(lambda: explain_segmentation(net, layer, x), repeats, warmup=1),
        ("eager", base))
    net.zero_grad(set_to_none=True)


def bench_tabular(repeats: int) -> None:
    import shap
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 12))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(x, y)
    names = [f"f{i}" for i in range(12)]
    print("HistGradientBoostingClassifier, 3 classes, 12 features, 100 iterations, one row")
    explainer = shap.TreeExplainer(model)
    rows = iter(range(10**9))
    base = median_ms(lambda: model.predict_proba(x[next(rows) % 1000][None]), repeats * 3)
    row("predict_proba", base)
    row("shap.TreeExplainer(...)(row), explainer built once",
        median_ms(lambda: explainer(x[next(rows) % 1000][None]), repeats * 3), ("predict", base))
    row("neuronova.xai.explain_tabular (builds, checks additivity)",
        median_ms(lambda: explain_tabular(model, x[next(rows) % 1000], feature_names=names,
                                          class_names=["a", "b", "c"]), repeats * 3), ("predict", base))


def bench_images(repeats: int) -> None:
    from neuronova.xai import resize_heatmap

    rng = np.random.default_rng(0)
    small = rng.random((16, 16)).astype(np.float32)  # a layer4-sized map
    heat = resize_heatmap(small, (512, 512))  # smooth, as a real CAM is
    rows, cols = np.indices((512, 512))
    head = ((rows - 256) ** 2 + (cols - 256) ** 2 < 200**2) * 120.0
    grey = np.clip(head + rng.normal(0, 8, (512, 512)), 0, 255).astype(np.uint8)  # a disc with noise
    print("Images, 512x512")
    row("heatmap_png", median_ms(lambda: heatmap_png(heat), repeats))
    row("overlay_rgb (16x16 heatmap resized to 512x512)", median_ms(lambda: overlay_rgb(grey, small), repeats))
    row("overlay_png", median_ms(lambda: overlay_png(grey, heat), repeats))
    row("important_regions (threshold 0.5)", median_ms(lambda: important_regions(heat, threshold=0.5), repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable ratios)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=128, help="edge of the 3-D input")
    parser.add_argument("--skip-3d", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats}")
    bench_classification(args.repeats)
    if not args.skip_3d:
        bench_segmentation(args.size, max(3, args.repeats // 5))
    bench_tabular(args.repeats)
    bench_images(args.repeats)


if __name__ == "__main__":
    main()
