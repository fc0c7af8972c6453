"""What an explanation costs next to the prediction it explains.

    .venv/bin/python bench/xai.py [--threads 1] [--repeats 15] [--size 128] [--skip-3d] [--clock wall|cpu]

Random weights (speed does not depend on them). Medians after warm-up (first calls are about 2.5x slower).
Classification: ResNet18 (4 classes) at 224x224, batch 1 and 8: plain eager forward, ONNX Runtime,
pytorch-grad-cam used naively (its own call after a separate prediction forward), pytorch-grad-cam with
the prediction read from ``cam.outputs`` (one pass, full backward), and neuronova.xai (one pass, graph cut
at the target layer). Segmentation: MONAI UNet (channels 16-128, 2 residual units) at size-cubed, bottleneck
layer: plain forward, monai.visualize.GradCAM, pytorch-grad-cam as shipped (cubic zoom), neuronova.xai.
Tabular: TreeExplainer on a 3-class HistGradientBoostingClassifier. Images: PNGs and regions at 512x512.

Measured here (2 CPU cores shared with other work, --threads 1 --clock cpu, round-robin medians):
ResNet18 batch 1: eager 31 ms, ORT 16 ms; pytorch-grad-cam naive 3.7x eager, its one pass (cam.outputs)
2.95x, neuronova.xai 1.11x eager (2.15x ORT); batch 8: 3.74x, 2.72x and 1.01x (1.55x ORT).
UNet 16-128 at 128-cubed: eager 0.37 s; monai.visualize.GradCAM 3.4x, pytorch-grad-cam as shipped 5.3x,
neuronova.xai 3.06x (1.14 s): the backward through the decoder dominates, and the weight gradients it
computes there (unused) are about 17% of it. SHAP: 4 ms a row with the explainer cached (32 ms to build one).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script's folder, first on sys.path, holds other benches (queue.py would shadow the standard
# library's queue, which torch imports): put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

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


CLOCK: Callable[[], float] = time.perf_counter


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each variant, run round-robin so that load from other processes and
    warm-up effects fall on all of them alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            started = CLOCK()
            fn()
            times[name].append(CLOCK() - started)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def report(results: dict[str, float], baselines: dict[str, str]) -> None:
    """One line per variant; ``baselines`` maps a short label to the variant the ratios divide by."""
    for name, ms in results.items():
        ratios = "  ".join(
            f"{ms / results[base]:5.2f}x {label}" for label, base in baselines.items() if base != name and base in results
        )
        print(f"  {name:<56} {ms:9.1f} ms  {ratios}")


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
            variants: dict[str, Callable[[], object]] = {"plain eager forward (torch.no_grad)": eager}
            if session is not None:
                feed = {"x": x.numpy()}
                variants["ONNX Runtime inference"] = lambda feed=feed: session.run(None, feed)
            variants["pytorch-grad-cam naive (prediction + CAM call)"] = naive
            variants["pytorch-grad-cam one pass (cam.outputs)"] = library_one_pass
            variants["neuronova.xai (one pass, cut at layer4)"] = ours
            report(
                measure(variants, repeats),
                {"eager": "plain eager forward (torch.no_grad)", "ORT": "ONNX Runtime inference"},
            )
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

    # MONAI's hooks stay on the module it is given: give it a copy, so they do not slow the others down.
    monai_net = copy.deepcopy(net)
    monai_cam = MonaiGradCAM(nn_module=monai_net, target_layers=layer_name(net, layer))

    def monai() -> None:
        monai_cam(x, class_idx=1)  # its score: the class-1 logit summed over the whole volume

    def library() -> None:
        with GradCAM(net, [layer]) as cam:
            cam(x, [_RegionTarget((1,), None)])

    variants = {
        "plain eager forward (torch.no_grad)": eager,
        "monai.visualize.GradCAM": monai,
        "pytorch-grad-cam as shipped (cubic zoom)": library,
        "neuronova.xai (cut, trilinear)": lambda: explain_segmentation(net, layer, x),
    }
    report(measure(variants, repeats, warmup=1), {"eager": "plain eager forward (torch.no_grad)"})
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

    def one_row() -> np.ndarray:
        return x[next(rows) % len(x)][None]

    variants = {
        "predict_proba": lambda: model.predict_proba(one_row()),
        "shap.TreeExplainer(...)(row), explainer built once": lambda: explainer(one_row()),
        "neuronova.xai.explain_tabular (cached, checks additivity)": lambda: explain_tabular(
            model, one_row(), feature_names=names, class_names=["a", "b", "c"]
        ),
        "shap.TreeExplainer(model) construction": lambda: shap.TreeExplainer(model),
    }
    report(measure(variants, repeats * 3), {"predict": "predict_proba"})


def bench_images(repeats: int) -> None:
    from neuronova.xai import resize_heatmap

    rng = np.random.default_rng(0)
    small = rng.random((16, 16)).astype(np.float32)  # a layer4-sized map
    heat = resize_heatmap(small, (512, 512))  # smooth, as a real CAM is
    rows, cols = np.indices((512, 512))
    head = ((rows - 256) ** 2 + (cols - 256) ** 2 < 200**2) * 120.0
    grey = np.clip(head + rng.normal(0, 8, (512, 512)), 0, 255).astype(np.uint8)  # a disc with noise
    print("Images, 512x512")
    variants = {
        "heatmap_png": lambda: heatmap_png(heat),
        "overlay_rgb (16x16 heatmap resized to 512x512)": lambda: overlay_rgb(grey, small),
        "overlay_png": lambda: overlay_png(grey, heat),
        "important_regions (threshold 0.5)": lambda: important_regions(heat, threshold=0.5),
    }
    report(measure(variants, repeats), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable ratios)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=128, help="edge of the 3-D input")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: process CPU time, steadier on a shared machine (meaningful with --threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, medians of {args.repeats}")
    bench_classification(args.repeats)
    if not args.skip_3d:
        bench_segmentation(args.size, max(3, args.repeats // 5))
    bench_tabular(args.repeats)
    bench_images(args.repeats)


if __name__ == "__main__":
    main()
