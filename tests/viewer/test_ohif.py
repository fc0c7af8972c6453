"""The node's results in OHIF v3 (3.13.2, prebuilt) in headless Chromium, against a real Orthanc.

One browser run opens five views; each check reads the screenshot's pixels or the page's text:
the SEG overlays (label map and overlapping regions) lie on the lesion's voxels of the slice shown, the TID 1500 SR opens without an error
and draws each measurement where it was measured with its label in words, the classification SR opens,
and the Grad-CAM capture displays. Screenshots stay in the pytest tmp dir (printed with -s).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests.viewer.conftest import Results

pytestmark = pytest.mark.slow
CANVAS = "canvas.cornerstone-canvas"


@pytest.fixture(scope="module")
def views(results: Results, viewer, open_views):
    base = f"{viewer.origin}/viewer?StudyInstanceUIDs={results.study_uid}"

    def view(name: str, series_uid: str, **extra: object) -> dict[str, object]:
        return {"name": name, "url": f"{base}&initialSeriesInstanceUID={series_uid}", "waitFor": CANVAS,
                "settleMs": 3000, **extra}

    found = open_views([
        view("sr", results.sr.SeriesInstanceUID),
        view("classification", results.cls.SeriesInstanceUID),
        # nothing to draw: OHIF may show no image canvas, so no wait for one
        view("empty_sr", results.empty_sr.SeriesInstanceUID, waitFor=None, settleMs=6000),
        # OHIF asks before it lays a SEG over its source series
        view("seg", results.seg.SeriesInstanceUID, actions=[{"click": "Yes"}, {"wait": 3000}]),
        # the overlapping regions on the slice where the tumour is largest (all three there)
        view("regions", results.regions.SeriesInstanceUID,
             actions=[{"click": "Yes"}, {"wait": 3000}, {"slice": f"I:{_key_instance(results)} ("}]),
        view("capture", results.overlay.SeriesInstanceUID),
    ])
    print(f"screenshots in {open_views.out}")
    return found


def _key_instance(results: Results) -> int:
    z = int(np.argmax((results.labels > 0).sum(axis=(1, 2))))
    return int(results.sources[z].InstanceNumber)


def _pixels(view: dict[str, object]) -> tuple[np.ndarray, dict[str, float]]:
    """The screenshot as RGB and the main viewport's canvas box (CSS pixels = screenshot pixels)."""
    rgb = np.asarray(Image.open(view["screenshot"]).convert("RGB")).astype(np.int16)
    boxes = view["viewports"]
    assert boxes, "no viewport canvas on the page"
    return rgb, max(boxes, key=lambda b: b["width"] * b["height"])


def _to_screen(box: dict[str, float], rows: int, cols: int, xy: np.ndarray) -> np.ndarray:
    """Image (column, row) coordinates to screenshot pixels: OHIF fits the image in the canvas, centred."""
    scale = min(box["width"] / cols, box["height"] / rows)
    left = box["x"] + (box["width"] - cols * scale) / 2
    top = box["y"] + (box["height"] - rows * scale) / 2
    return np.column_stack([left + xy[:, 0] * scale, top + xy[:, 1] * scale])


def _errors(view: dict[str, object]) -> list[str]:
    bad = [m["text"] for m in view["console"] if m["type"] == "error" and "TypeError" in m["text"]]
    return bad + list(view["pageErrors"])


def test_sr_opens_and_draws_each_measurement_where_it_was_measured(views, results: Results):
    view = views["sr"]
    assert _errors(view) == []
    text = view["text"]
    # the viewport opens on the first measurement's key slice: its outline with its label in words
    first = results.stats[0]
    assert f"{first.label_name[:1].upper()}{first.label_name[1:]}:" in text
    assert f"Volume: {first.volume_ml:.2f} ml" in text and "Area:" in text
    shown = int(re.search(r"I:\s*(\d+)", text).group(1))
    assert shown == int(results.sources[first.key_slice_index].InstanceNumber)

    rgb, box = _pixels(view)
    green = (rgb[..., 1] > 180) & (rgb[..., 0] < 120) & (rgb[..., 2] < 120)  # OHIF's SR colour
    rows, cols = results.labels.shape[1:]
    outline = _to_screen(box, rows, cols, first.contour_xy)
    ys, xs = np.nonzero(green)
    near = [np.min(np.hypot(xs - x, ys - y)) <= 4 for x, y in outline[:: max(1, len(outline) // 40)]]
    assert np.mean(near) > 0.8, f"only {np.mean(near):.0%} of the outline is drawn where it was measured"


def test_report_of_nothing_segmented_opens_without_error(views):
    """A report without measurement groups (its 0 mL are texts) raises no error; OHIF 3.13.2 has nothing to
    draw for it and leaves the viewport black (seen in the screenshot): it shows no SR text content."""
    view = views["empty_sr"]
    assert _errors(view) == []
    assert "AI SR tumour volumes" in view["text"] and "Volume:" not in view["text"]


def test_classification_sr_opens_with_its_regions(views):
    view = views["classification"]
    assert _errors(view) == []
    assert "Grad-CAM region 1 (Glioma):" in view["text"] and "Score: 0.90" in view["text"]


def _overlay_on_mask(view: dict[str, object], results: Results, masks: np.ndarray) -> None:
    """The coloured pixels of the image are on the voxels of ``masks`` (z, y, x) on the slice shown."""
    assert _errors(view) == []
    assert "Do you want to open this Segmentation?" not in view["text"]
    shown = int(re.search(r"I:\s*(\d+)", view["text"]).group(1))
    index = [int(ds.InstanceNumber) for ds in results.sources].index(shown)
    mask = masks[index]
    assert mask.any(), "OHIF opened the SEG on a slice without lesion"

    rgb, box = _pixels(view)
    x0, y0 = int(box["x"]) + 6, int(box["y"]) + 6
    x1, y1 = int(box["x"] + box["width"]) - 6, int(box["y"] + box["height"]) - 6
    area = rgb[y0:y1, x0:x1]
    # the MR is grey and OHIF's controls are blue; the segments are yellow, red and green
    coloured = ((area.max(axis=-1) - area.min(axis=-1)) > 60) & (area[..., 2] < area[..., :2].max(axis=-1))
    ys, xs = np.nonzero(coloured)
    rows, cols = mask.shape
    scale = min(box["width"] / cols, box["height"] / rows)
    left, top = _to_screen(box, rows, cols, np.zeros((1, 2)))[0]  # the image's top left corner on screen
    col = np.floor((xs + x0 - left) / scale).astype(int)
    row = np.floor((ys + y0 - top) / scale).astype(int)
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)  # controls beside the image left out
    assert inside.sum() > 30, "no SEG overlay on the image"
    grown = np.pad(mask, 1)
    grown = grown[1:-1, 1:-1] | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]  # 1 voxel
    on_lesion = grown[row[inside], col[inside]]
    assert on_lesion.mean() > 0.9, f"only {on_lesion.mean():.0%} of the overlay lies on the lesion"


def test_seg_overlay_lies_on_the_lesion(views, results: Results):
    _overlay_on_mask(views["seg"], results, results.labels > 0)


def test_overlapping_region_segments_lie_on_the_lesion(views, results: Results):
    view = views["regions"]
    union = np.logical_or.reduce(list(results.region_masks.values()))
    _overlay_on_mask(view, results, union)
    assert f"I:{_key_instance(results)} (" in view["text"]
    # the nested regions show in their recommended colours: whole tumour green around enhancing tumour
    # yellow (the tumour core lies under the enhancing tumour on this slice, drawn after it)
    rgb, box = _pixels(view)
    area = rgb[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    r, g, b = area[..., 0], area[..., 1], area[..., 2]
    green = (g > r + 40) & (g > b + 40)
    yellow = (r > b + 80) & (g > b + 80) & (abs(r - g) < 50)
    assert green.sum() > 200 and yellow.sum() > 200, (green.sum(), yellow.sum())


def test_secondary_capture_displays(views):
    view = views["capture"]
    assert _errors(view) == []
    rgb, box = _pixels(view)
    x0, y0 = int(box["x"]) + 6, int(box["y"]) + 6
    area = rgb[y0: int(box["y"] + box["height"]) - 6, x0: int(box["x"] + box["width"]) - 6]
    colourful = ((area.max(axis=-1) - area.min(axis=-1)) > 80).mean()
    assert colourful > 0.02, f"the Grad-CAM capture shows {colourful:.1%} coloured pixels"
