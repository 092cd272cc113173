"""Reading CT series: z order, per-slice HU, windowed RGB slices at the model size.

Stage 1 (JPEGs), inference and predict_study all read DICOM through this module, so train and
test images are made by the same code. Compressed transfer syntaxes decode through pydicom's
pixel plugins (GDCM via python-gdcm; RLE natively).
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom

from .errors import PipelineError
from .windows import hu_to_rgb

log = logging.getLogger(__name__)


class DicomReadError(PipelineError):
    """A slice that cannot be read; the message names the file and the reason."""


@dataclass
class SliceInfo:
    path: Path
    sop: str
    z: float | None
    instance: int | None


def _dcmread(path, header_only):
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types for bad files
        raise DicomReadError(f"{path}: not readable DICOM ({type(e).__name__}: {e})") from None


def slice_info(path, ds=None):
    ds = ds if ds is not None else _dcmread(path, header_only=True)
    ipp = ds.get("ImagePositionPatient")
    z = float(ipp[2]) if ipp is not None and len(ipp) == 3 else None
    inst = ds.get("InstanceNumber")
    sop = ds.get("SOPInstanceUID") or Path(path).stem
    return SliceInfo(Path(path), str(sop), z, int(inst) if inst not in (None, "") else None)


def sort_slices(infos, where=""):
    """Ascending ImagePositionPatient z; InstanceNumber (with a warning) if any z is missing."""
    if all(i.z is not None for i in infos):
        return sorted(infos, key=lambda i: (i.z, i.sop))
    if all(i.instance is not None for i in infos):
        log.warning("%s: ImagePositionPatient missing, ordering slices by InstanceNumber", where)
        return sorted(infos, key=lambda i: (i.instance, i.sop))
    raise DicomReadError(f"{where}: neither ImagePositionPatient nor InstanceNumber on every slice")


def series_files(series_dir):
    files = sorted(Path(series_dir).glob("*.dcm"))
    if not files:
        raise DicomReadError(f"{series_dir}: no .dcm files")
    return files


def read_series_order(series_dir):
    """Headers only: the series' slices in z order."""
    return sort_slices([slice_info(f) for f in series_files(series_dir)], where=str(series_dir))


def to_hu(ds, path):
    """This slice's HU with its own slope/intercept: integer when exact, else float32."""
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise DicomReadError(f"{path}: pixel data not decodable ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise DicomReadError(f"{path}: expected one 2-D frame, got shape {arr.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == int(intercept):
        return arr.astype(np.int32) + int(intercept)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def hu_to_image(hu, size):
    """HU (H, W) -> RGB uint8 (size, size, 3): lung, PE, mediastinal windows.

    A matrix of another size is resized in HU (area when shrinking, linear when growing)
    before windowing, so the window is applied to CT values, not to already clipped bytes.
    """
    h, w = hu.shape
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        hu = cv2.resize(hu.astype(np.float32), (size, size), interpolation=interp)
    return hu_to_rgb(hu)


def read_slice_image(path, size):
    """One file -> (SliceInfo, RGB image)."""
    ds = _dcmread(path, header_only=False)
    return slice_info(path, ds), hu_to_image(to_hu(ds, path), size)


def read_series_images(series_dir, size):
    """A whole series -> (infos in z order, uint8 array (S, size, size, 3)).

    Each file is read once; slices are windowed to uint8 as they are read, so memory holds
    the 8-bit result only (0.75 MB a slice at 512), never a float volume.
    """
    files = series_files(series_dir)
    infos, imgs = [], []
    for f in files:
        info, img = read_slice_image(f, size)
        infos.append(info)
        imgs.append(img)
    order = sort_slices(infos, where=str(series_dir))
    index = {id(i): k for k, i in enumerate(infos)}
    stack = np.stack([imgs[index[id(i)]] for i in order]) if imgs else np.zeros((0, size, size, 3), np.uint8)
    return order, stack
