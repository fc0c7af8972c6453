"""MRI segmentation for the predict API: the upload (DICOM files, a zip of them, or NIfTI), the run, the files.

A task's directory is ``<data_dir>/predict/<task_id>/`` with ``input/`` (the upload, under names made here:
``part-000000``, ``dcm-000000``, ``volume.nii.gz``; a client's filename never names a file) and ``result/``
(``mask.nii.gz``, ``seg.dcm`` for DICOM input, ``gradcam_<slice>_heatmap.png`` / ``_overlay.png``).

Arrays are (z, y, x) as the model takes them. A NIfTI volume's data (i, j, k) is read as (k, j, i) and its mask
written back with the input's own affine, so it lines up with the input voxel for voxel. For a DICOM series the
mask's affine is the series' (LPS, (z, y, x) indices) turned into NIfTI's convention (RAS, (i, j, k) = (x, y, z)).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from neuronova.errors import (
    InvalidDicom,
    InvalidRequest,
    ModelInferenceError,
    NeuroNovaError,
    PayloadTooLarge,
    SeriesError,
    XAIGenerationError,
)
from neuronova.models.segmentation import SegmentationModel
from neuronova.pipelines.inference import WHOLE_TUMOUR, segment_volume
from neuronova.pipelines.volume import Volume, load_series
from neuronova.predict.forms import UploadedFile
from neuronova.predict.render import heatmap_png
from neuronova.predict.tasks import INPUT_DIR, RESULT_DIR
from neuronova.writers.common import AlgorithmInfo
from neuronova.writers.seg import write_segmentation
from neuronova.xai import (
    explain_segmentation,
    important_regions,
    key_slices,
    overlay_png,
    to_patient_coordinates,
)

log = logging.getLogger(__name__)

MASK_FILE, SEG_FILE = "mask.nii.gz", "seg.dcm"
RESULT_NAME = re.compile(r"(mask\.nii\.gz|seg\.dcm|gradcam_[0-9]{1,5}_(heatmap|overlay)\.png)")
MEDIA_TYPES = {".gz": "application/gzip", ".dcm": "application/dicom", ".png": "image/png"}
#: The same pipeline name and algorithm as the job pipeline, so a SEG made here has the same UIDs (a re-run
#: replaces rather than duplicates, wherever it is stored).
PIPELINE = "mri_segmentation"
ALGORITHM_NAME = "NeuroNova MRI tumour segmentation"
SEG_SERIES_OFFSET = 1
MAX_SLICES = 4096
MAX_VOXELS = 64 * 1024 * 1024
#: A zip may unpack to at most this many times the upload limit (a zip bomb stops here).
UNPACK_FACTOR = 4
KEY_SLICES = 3


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


# ---- the upload ------------------------------------------------------------------------------------------


def prepare_upload(files: list[UploadedFile], input_dir: Path, *, max_upload_bytes: int) -> dict[str, Any]:
    """Check the spooled upload and put it in its final form; returns the task's input description.

    One zip -> its files as ``dcm-NNNNNN``; one NIfTI -> ``volume.nii[.gz]``; otherwise every file must be a
    DICOM instance of one MR series that forms one regular volume (checked here, so the client hears of a
    bad series at once: 400 INVALID_IMAGE_FORMAT, 413 IMAGE_TOO_LARGE, 400 INVALID_REQUEST).
    """
    if not files:
        raise InvalidRequest("no image: send the series as 'image' file parts (DICOM files, a zip, or NIfTI)")
    if len(files) == 1:
        head = files[0].head(4096)
        if head.startswith(b"PK\x03\x04"):
            assert files[0].path is not None
            names = _unzip(files[0].path, input_dir, max_bytes=UNPACK_FACTOR * max_upload_bytes)
            files[0].path.unlink()
            return _check_dicom([input_dir / n for n in names])
        nifti = _nifti_kind(head)
        if nifti is not None:
            assert files[0].path is not None
            target = input_dir / ("volume.nii.gz" if nifti == "gz" else "volume.nii")
            files[0].path.rename(target)
            return _check_nifti(target)
    return _check_dicom([f.path for f in files if f.path is not None])


def _unzip(path: Path, input_dir: Path, *, max_bytes: int) -> list[str]:
    names: list[str] = []
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not _ignored_member(m.filename)]
            if len(members) > MAX_SLICES:
                raise InvalidRequest(f"the zip holds {len(members)} files; at most {MAX_SLICES} are accepted")
            for member in members:
                name = f"dcm-{len(names):06d}"
                with archive.open(member) as source, (input_dir / name).open("xb") as target:
                    while chunk := source.read(1 << 20):
                        total += len(chunk)  # counted as read: the sizes in the directory may lie
                        if total > max_bytes:
                            raise PayloadTooLarge(f"the zip unpacks to more than {max_bytes} bytes")
                        target.write(chunk)
                names.append(name)
    except NeuroNovaError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as exc:
        raise InvalidDicom(f"the zip cannot be read: {type(exc).__name__}: {exc}") from None
    if not names:
        raise InvalidRequest("the zip holds no file")
    return names


def _ignored_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".") or base.upper() == "DICOMDIR"


def _nifti_kind(head: bytes) -> str | None:
    """"nii" or "gz" when ``head`` starts a NIfTI-1/2 file (plain or gzipped), else None."""
    if head.startswith(b"\x1f\x8b"):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error:
            return None
        return "gz" if _is_nifti_header(head) else None
    return "nii" if _is_nifti_header(head) else None


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    return len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _check_nifti(path: Path) -> dict[str, Any]:
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for a damaged header
        raise InvalidDicom(f"the NIfTI file cannot be read: {type(exc).__name__}: {exc}") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidDicom(f"a 3-D NIfTI volume is needed, got shape {shape}")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise PayloadTooLarge(f"the volume has {int(np.prod(shape))} voxels; at most {MAX_VOXELS} are accepted")
    return {"kind": "nifti", "files": [path.name], "shape": [shape[2], shape[1], shape[0]]}


def _check_dicom(paths: list[Path]) -> dict[str, Any]:
    if len(paths) > MAX_SLICES:
        raise InvalidRequest(f"{len(paths)} files; at most {MAX_SLICES} slices are accepted")
    datasets = []
    for i, path in enumerate(paths):
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception:  # InvalidDicomError or whatever a garbled file makes pydicom raise
            raise InvalidDicom(f"file {i + 1} of {len(paths)} is neither DICOM, a zip nor NIfTI") from None
    modalities = {str(ds.get("Modality", "")) for ds in datasets} - {""}
    if modalities - {"MR"}:
        raise InvalidRequest(f"MRI segmentation needs an MR series, got modality {', '.join(sorted(modalities))}")
    volume = _load_volume(datasets)
    if volume.array.size > MAX_VOXELS:
        raise PayloadTooLarge(f"the volume has {volume.array.size} voxels; at most {MAX_VOXELS} are accepted")
    return {"kind": "dicom", "files": [p.name for p in paths], "shape": list(volume.shape),
            "series_instance_uid": volume.series_instance_uid}


def _load_volume(sources: list[Any]) -> Volume:
    try:
        return load_series(sources)
    except SeriesError as exc:
        raise InvalidDicom(f"the DICOM files are not one regular series: {exc.message}") from None


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class LoadedInput:
    array: np.ndarray  #: (z, y, x) float32
    voxel_ml: float
    volume: Volume | None = None  #: DICOM input
    nifti: Any = None  #: nibabel image, NIfTI input


def load_input(input_dir: Path, description: dict[str, Any]) -> LoadedInput:
    paths = [input_dir / name for name in description["files"]]
    if description["kind"] == "nifti":
        image = nib.load(paths[0])
        data = np.asanyarray(image.dataobj, dtype=np.float32)
        data = data.reshape(data.shape[:3])
        array = np.ascontiguousarray(np.nan_to_num(data).transpose(2, 1, 0))
        voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        return LoadedInput(array=array, voxel_ml=voxel_ml, nifti=image)
    volume = _load_volume([str(p) for p in paths])
    return LoadedInput(array=volume.array, voxel_ml=volume.voxel_volume_ml, volume=volume)


def nifti_affine(volume_affine: np.ndarray) -> np.ndarray:
    """A Volume's affine ((z, y, x) index -> LPS mm) as a NIfTI affine ((x, y, z) = (i, j, k) index -> RAS)."""
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume_affine @ swap


def _segment(loaded: LoadedInput, model: SegmentationModel) -> tuple[np.ndarray, dict[str, float], list[int]]:
    if loaded.volume is not None:
        result = segment_volume(loaded.volume, model)
        return result.labels, result.volumes_ml, result.key_slice_indices
    try:
        labels = model.predict(loaded.array)
    except NeuroNovaError:
        raise
    except Exception as exc:  # ONNX Runtime raises many types
        raise ModelInferenceError(f"MRI segmentation failed: {type(exc).__name__}: {exc}") from exc
    counts = np.bincount(labels.ravel(), minlength=max(model.label_names, default=0) + 1)
    volumes = {name: round(float(counts[k]) * loaded.voxel_ml, 3) for k, name in model.label_names.items()}
    volumes[WHOLE_TUMOUR] = round(float(counts[1:].sum()) * loaded.voxel_ml, 3)
    return labels, volumes, key_slices(labels, n=KEY_SLICES)


def run_segmentation(*, task_dir: Path, description: dict[str, Any], model: SegmentationModel, explain: bool,
                     xai_budget_s: float, series_number_base: int, progress: Callable[[int], None]) -> dict[str, Any]:
    """Segment the task's input and write its result files; returns the task's result (file names, not URLs)."""
    result_dir = task_dir / RESULT_DIR
    result_dir.mkdir(exist_ok=True)
    loaded = load_input(task_dir / INPUT_DIR, description)
    progress(15)
    started = time.perf_counter()
    labels, volumes, keys = _segment(loaded, model)
    inference_ms = (time.perf_counter() - started) * 1000
    progress(50)

    files = [MASK_FILE]
    _write_mask(result_dir / MASK_FILE, labels, loaded)
    body: dict[str, Any] = {
        "model_id": model.id, "model_version": model.version, "inference_time_ms": round(inference_ms, 1),
        "input": {"kind": description["kind"], "shape": list(loaded.array.shape)},
        "labels": {str(k): v for k, v in sorted(model.label_names.items())},
        "volumes_ml": volumes, "key_slices": keys, "mask": {"file": MASK_FILE, "format": "NIfTI-1, gzip"},
    }
    progress(65)
    if loaded.volume is not None:
        seg = _write_seg(result_dir / SEG_FILE, labels, loaded.volume, model, series_number_base)
        files.append(SEG_FILE)
        body["seg"] = {"file": SEG_FILE, "series_instance_uid": str(seg.SeriesInstanceUID),
                       "sop_instance_uid": str(seg.SOPInstanceUID)}
    progress(80)
    if explain:
        try:
            body["xai"] = {"grad_cam": _explain(loaded, labels, keys, model, result_dir, files, xai_budget_s)}
        except XAIGenerationError as exc:
            body["xai"] = {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # drawing or saving the key slices failed: the segmentation still stands
            log.warning("segmentation Grad-CAM failed: %s", type(exc).__name__)
            body["xai"] = {"error": {"code": "XAI_GENERATION_ERROR",
                                     "message": f"segmentation Grad-CAM failed: {type(exc).__name__}"}}
    body["files"] = files
    return body


def _write_mask(path: Path, labels: np.ndarray, loaded: LoadedInput) -> None:
    data = np.ascontiguousarray(labels.astype(np.uint8).transpose(2, 1, 0))
    if loaded.nifti is not None:
        image = nib.Nifti1Image(data, loaded.nifti.affine)
        image.header.set_qform(loaded.nifti.affine, code=int(loaded.nifti.header["qform_code"]) or 1)
        image.header.set_sform(loaded.nifti.affine, code=int(loaded.nifti.header["sform_code"]) or 1)
    else:
        assert loaded.volume is not None
        affine = nifti_affine(loaded.volume.affine)
        image = nib.Nifti1Image(data, affine)
        image.header.set_qform(affine, code=1)  # scanner coordinates
        image.header.set_sform(affine, code=1)
    image.header.set_data_dtype(np.uint8)
    _atomic_save(path, lambda tmp: nib.save(image, tmp))


def _write_seg(path: Path, labels: np.ndarray, volume: Volume, model: SegmentationModel, base: int) -> Any:
    algorithm = AlgorithmInfo(name=ALGORITHM_NAME, version=model.version, model_sha256=model.model_hash,
                              demo=bool(model.metadata.not_for_clinical_use))
    seg = write_segmentation(volume.datasets, labels, model.label_names, algorithm=algorithm,
                             series_number=base + SEG_SERIES_OFFSET, pipeline=PIPELINE)
    _atomic_save(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
    return seg


def _atomic_save(path: Path, save: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")  # the same ending: nibabel picks the format by it
    save(tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _explain(loaded: LoadedInput, labels: np.ndarray, keys: list[int], model: SegmentationModel, result_dir: Path,
             files: list[str], budget_s: float) -> dict[str, Any]:
    tensor = model.as_tensor(model.preprocess(loaded.array))
    explanation = explain_segmentation(model.torch_module(), model.target_layers()[0], tensor,
                                       output_shape=loaded.array.shape, time_budget_s=budget_s)
    cam = explanation.cam
    slices = keys or key_slices(cam, n=KEY_SLICES)
    low, high = (float(v) for v in np.percentile(loaded.array, (1, 99.5)))
    scale = 255.0 / (high - low) if high > low else 0.0
    items = []
    for z in slices[:KEY_SLICES]:
        heat = cam[z]
        display = np.clip((loaded.array[z] - low) * scale, 0, 255).astype(np.uint8)
        names = {"heatmap": f"gradcam_{z}_heatmap.png", "overlay": f"gradcam_{z}_overlay.png"}
        _atomic_save(result_dir / names["heatmap"], lambda tmp, h=heat: tmp.write_bytes(heatmap_png(h)))
        _atomic_save(result_dir / names["overlay"], lambda tmp, d=display, h=heat: tmp.write_bytes(overlay_png(d, h)))
        files.extend(names.values())
        regions = []
        for region in important_regions(heat):
            entry: dict[str, Any] = region.to_dict()
            if loaded.volume is not None:
                ds = loaded.volume.datasets[z]
                patient = to_patient_coordinates(region, image_position=ds.ImagePositionPatient,
                                                 image_orientation=ds.ImageOrientationPatient,
                                                 pixel_spacing=ds.PixelSpacing)
                entry["patient_coordinates"] = {"frame": "LPS", "unit": "mm",
                                                "centre": [round(float(v), 3) for v in patient.centre]}
            regions.append(entry)
        item: dict[str, Any] = {"slice_index": z, "heatmap": names["heatmap"], "overlay": names["overlay"],
                                "important_regions": regions}
        if loaded.volume is not None:
            item["sop_instance_uid"] = str(loaded.volume.datasets[z].SOPInstanceUID)
        items.append(item)
    return {"method": explanation.method, "layer": explanation.layer, "target_region": explanation.target_region,
            "native_shape": list(explanation.native_shape), "key_slices": items}

