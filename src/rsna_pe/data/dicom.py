"""Reading CT series: z order, per-slice HU, windowed RGB slices at the model size.

Stage 1 (JPEGs), inference and predict_study all read DICOM through this module, so train and
test images are made by the same code. Compressed transfer syntaxes decode through pydicom's
pixel plugins (GDCM via python-gdcm; RLE natively). A series is a folder of ``*.dcm`` files
(the Kaggle layout) or a list of files (one found by content in any tree: rsna_pe.data.discovery).

Ids: the competition names studies, series and images with 12-hex-character ids, which are not
valid DICOM UIDs; pydicom 3 would warn once per file, so that one warning (and only for
all-hex values) is silenced while this module reads. An image is named by its header's
SOPInstanceUID (train.csv rows are the headers' values). A file without one is named by its
position in the series' sorted file list, ``unnamed-<k>`` (never by its file name, which an
archive may have made from the patient's name), with one warning per series; so is a series
whose file names differ from their headers.

Header values are data: a series is refused in one line naming the file (DicomReadError) when
ImagePositionPatient, ImageOrientationPatient, RescaleSlope or RescaleIntercept holds a value
that is not a finite number, and when its files belong to more than one study or series (by
their StudyInstanceUID and SeriesInstanceUID). An InstanceNumber that is not an integer counts
as missing (it only orders slices without positions). Nothing is ever left unsorted.
"""
import contextlib
import functools
import logging
import math
import os
import re
import reprlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.multival import MultiValue

from ..core.errors import DicomReadError
from .acquisition import fields_of
from .windows import hu_to_rgb

log = logging.getLogger(__name__)


@dataclass
class SliceInfo:
    path: Path
    sop: str
    z: float | None
    instance: int | None
    study: str | None = None    # the header's StudyInstanceUID (None: absent)
    series: str | None = None   # the header's SeriesInstanceUID (None: absent)
    sop_in_header: bool = True  # False: ``sop`` is the positional name (no SOPInstanceUID)
    # The series' scanner fields (rsna_pe.data.acquisition), on its first file only: taken from
    # a header read anyway, so recording them costs no extra read.
    acquisition: dict | None = None


# pydicom's message for a UI value that is not dotted digits; all-hex values only. pydicom
# sends it both as a warning and to its "pydicom" logger, so both are filtered.
_HEX_UID_MESSAGE = re.compile(r"Invalid value for VR UI: '[0-9a-f]+'", re.IGNORECASE)


class _HexUidLogFilter(logging.Filter):
    def filter(self, record):
        return not _HEX_UID_MESSAGE.match(record.getMessage())


_PYDICOM_LOG = logging.getLogger("pydicom")
_LOG_FILTER = _HexUidLogFilter()


@contextlib.contextmanager
def hex_uids_accepted():
    """Scope in which reading all-hex UIDs (the competition's ids) neither warns nor logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HEX_UID_MESSAGE.pattern, category=UserWarning)
        added = _LOG_FILTER not in _PYDICOM_LOG.filters  # scopes nest: the outermost removes it
        _PYDICOM_LOG.addFilter(_LOG_FILTER)
        try:
            yield
        finally:
            if added:
                _PYDICOM_LOG.removeFilter(_LOG_FILTER)


def _quiet_hex_uids(fn):
    # pydicom converts values lazily: the warning comes at element access, not at dcmread.
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with hex_uids_accepted():
            return fn(*args, **kwargs)
    return wrapper


@_quiet_hex_uids
def read_dataset(path, header_only=False):
    """One DICOM file (headers only if asked); an unreadable one is a one-line error naming it."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types for bad files
        raise DicomReadError(path, f"not readable DICOM ({type(e).__name__}: {e})") from None


def positional_name(index):
    """The name of the ``index``-th file (sorted file list) of a series when its header has no
    SOPInstanceUID: never the file's own name."""
    return f"unnamed-{index:04d}"


def finite_numbers(ds, keyword, path):
    """A numeric tag's values as floats, None when absent or empty; a value that is not a
    finite number refuses the file (one line naming it)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = [math.nan]
    if not all(math.isfinite(v) for v in numbers):
        raise DicomReadError(path, f"{keyword} {reprlib.repr([str(v) for v in values])} holds a "
                             "value that is not a finite number")
    return numbers


def _instance_number(ds):
    """InstanceNumber, None when absent or not an integer (it is only a fallback order)."""
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError, OverflowError):
        return None


def _uid(ds, keyword):
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


@_quiet_hex_uids
def slice_info(path, index, ds=None):
    """The slice facts of the ``index``-th file of a series; a header value that cannot be
    read is a one-line error naming the file, whatever pydicom raises."""
    ds = ds if ds is not None else read_dataset(path, header_only=True)
    try:
        ipp = finite_numbers(ds, "ImagePositionPatient", path)
        finite_numbers(ds, "ImageOrientationPatient", path)
        _rescale(ds, path)  # refused by the header alone, also where no pixels are read
        sop = _uid(ds, "SOPInstanceUID")
        return SliceInfo(Path(path), sop or positional_name(index),
                         ipp[2] if ipp is not None and len(ipp) == 3 else None, _instance_number(ds),
                         _uid(ds, "StudyInstanceUID"), _uid(ds, "SeriesInstanceUID"), sop is not None,
                         fields_of(ds) if index == 0 else None)
    except DicomReadError:
        raise
    except Exception as e:  # pydicom converts values lazily and raises many types
        raise DicomReadError(path, f"unreadable header value ({type(e).__name__}: {e})") from None


def warn_file_names(infos, where=""):
    """One warning per series whose files are not named by their SOPInstanceUID, one per series
    with files that have none."""
    unnamed = [i for i in infos if not i.sop_in_header]
    if unnamed:
        log.warning("%s: %d of %d files have no SOPInstanceUID; they are named by their position "
                    "(first: %s)", where, len(unnamed), len(infos), unnamed[0].sop)
    # The Kaggle layout names files <SOPInstanceUID>.dcm; an archive's export names them freely.
    odd = [i for i in infos if i.sop_in_header and i.path.suffix == ".dcm" and i.sop != i.path.stem]
    if odd:
        log.warning("%s: %d of %d files are not named by their SOPInstanceUID (first: %s holds %s); "
                    "images are named by the header's value", where, len(odd), len(infos),
                    odd[0].path.name, odd[0].sop)


def check_one_series(infos, where=""):
    """Refuse a folder whose files belong to more than one study or series (headers that
    name them; files without the tag do not count)."""
    for attr, tag in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")):
        values = list(dict.fromkeys(v for v in (getattr(i, attr) for i in infos) if v is not None))
        if len(values) > 1:
            raise DicomReadError(where, f"files of more than one {attr}: {tag} {reprlib.repr(values[0])} "
                                 f"and {reprlib.repr(values[1])}")


def series_order(infos, where=""):
    """A series' slices in z order (see sort_slices), warning once about odd file names;
    refused when they are not one series (check_one_series)."""
    check_one_series(infos, where)
    warn_file_names(infos, where)
    return sort_slices(infos, where)


def sort_slices(infos, where=""):
    """Ascending ImagePositionPatient z; InstanceNumber (with a warning) if any z is missing."""
    if all(i.z is not None for i in infos):
        return sorted(infos, key=lambda i: (i.z, i.sop))
    if all(i.instance is not None for i in infos):
        log.warning("%s: ImagePositionPatient missing, ordering slices by InstanceNumber", where)
        return sorted(infos, key=lambda i: (i.instance, i.sop))
    raise DicomReadError(where, "neither ImagePositionPatient nor InstanceNumber on every slice")


def series_files(series):
    """A series' files, sorted: a folder's ``*.dcm`` (the Kaggle layout), or the files of a list
    (a series found by content in any tree, rsna_pe.data.discovery)."""
    if isinstance(series, (str, os.PathLike)):
        files = sorted(Path(series).glob("*.dcm"))
        if not files:
            raise DicomReadError(series, "no .dcm files")
        return files
    files = sorted(Path(f) for f in series)
    if not files:
        raise DicomReadError("", "a series given as an empty list of files")
    return files


def series_where(series):
    """How a message names a series: its folder, or the folder a list's files share."""
    if isinstance(series, (str, os.PathLike)):
        return str(series)
    return os.path.commonpath([str(Path(f).parent) for f in series]) if len(series) else ""


def read_series_order(series_dir):
    """Headers only: the series' slices in z order."""
    return series_order([slice_info(f, k) for k, f in enumerate(series_files(series_dir))],
                        where=series_where(series_dir))


def _native_pixels(ds):
    """Uncompressed little-endian 16-bit frames straight from the buffer (pydicom's generic
    decoder path costs more than the rest of a slice's conversion); None for anything else."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if (ts is None or ts.is_compressed or not ts.is_little_endian or ds.get("BitsAllocated") != 16
            or ds.get("BitsStored") != 16 or ds.get("SamplesPerPixel", 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    buf = ds.PixelData
    if len(buf) < rows * cols * 2:
        raise ValueError(f"pixel data holds {len(buf)} bytes, {rows}x{cols}x2 expected")
    dtype = "<i2" if ds.get("PixelRepresentation", 0) == 1 else "<u2"
    return np.frombuffer(buf, dtype=dtype, count=rows * cols).reshape(rows, cols)


def _rescale(ds, path):
    """(RescaleSlope, RescaleIntercept) of one slice: 1 and 0 when absent or empty, a slope of
    0 read as 1; anything but one finite number each refuses the file."""
    slope, intercept = (finite_numbers(ds, k, path) for k in ("RescaleSlope", "RescaleIntercept"))
    for keyword, numbers in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if numbers is not None and len(numbers) != 1:
            raise DicomReadError(path, f"{keyword} holds {len(numbers)} values, one expected")
    return (slope[0] if slope else 0.0) or 1.0, intercept[0] if intercept else 0.0


@_quiet_hex_uids
def to_hu(ds, path):
    """This slice's HU with its own slope/intercept: integer when exact, else float32."""
    if "PixelData" not in ds:
        raise DicomReadError(path, "no pixel data")
    try:
        arr = _native_pixels(ds)
        if arr is None:
            arr = ds.pixel_array
    except Exception as e:
        raise DicomReadError(path, f"pixel data not decodable ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected one 2-D frame, got shape {arr.shape}")
    slope, intercept = _rescale(ds, path)
    if slope == 1 and intercept == int(intercept):
        return arr.astype(np.int32) + int(intercept)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def crop(hu, box, where=""):
    """A slice cut to ``box``, a series' lung box (rsna_pe.data.lungcrop; None: the slice as is)."""
    if box is None:
        return hu
    x0, y0, x1, y1 = box
    if x1 > hu.shape[1] or y1 > hu.shape[0]:
        raise DicomReadError(where, f"slice matrix {hu.shape} smaller than the series' crop box {box}")
    return hu[y0:y1, x0:x1]


def hu_to_image(hu, size, bgr=False, box=None, where=""):
    """HU (H, W) -> RGB uint8 (size, size, 3): lung, PE, mediastinal windows (BGR for cv2).

    ``box``: the series' crop box (rsna_pe.data.lungcrop), cut first. A matrix of another size is
    resized in HU (area when shrinking, linear when growing) before windowing, so the window
    is applied to CT values, not to already clipped bytes.
    """
    hu = crop(hu, box, where)
    h, w = hu.shape
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        hu = cv2.resize(hu.astype(np.float32), (size, size), interpolation=interp)
    return hu_to_rgb(hu, bgr=bgr)


def _view(v):
    """A view of a slice: an image size (the whole slice), or (size, crop box)."""
    return (v, None) if isinstance(v, (int, np.integer)) else v


def windowed_slices(series_dir, sizes, bgr=False):
    """Each file of a series, read and decoded once, in file order: yield (SliceInfo,
    {view: uint8 (size, size, 3)}) for the views ``sizes`` (sizes, or (size, box) pairs).
    Stage 1 (JPEGs) and stage 7 (inference) read DICOM through this one loop; only 8-bit
    results are kept, never a float volume."""
    for k, f in enumerate(series_files(series_dir)):
        ds = read_dataset(f)
        hu = to_hu(ds, f)
        yield slice_info(f, k, ds), {v: hu_to_image(hu, _view(v)[0], bgr=bgr, box=_view(v)[1], where=f)
                                  for v in sizes}


def read_series_images(series_dir, sizes):
    """A whole series -> (infos in z order, {view: uint8 RGB (S, 3, size, size)}), views as in
    ``windowed_slices``.

    Each file is read and decoded once, whatever the number of sizes (models of different
    input sizes share one decode).
    """
    infos, imgs = [], {s: [] for s in sizes}
    for info, windowed in windowed_slices(series_dir, sizes):
        infos.append(info)
        for s in sizes:
            imgs[s].append(windowed[s].transpose(2, 0, 1))
    order = series_order(infos, where=series_where(series_dir))
    pos = {id(i): k for k, i in enumerate(infos)}
    idx = [pos[id(i)] for i in order]
    return order, {s: np.stack([v[k] for k in idx]) for s, v in imgs.items()}
