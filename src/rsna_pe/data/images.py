"""3-window JPEG slices on disk (stage 1's output, read by stages 2, 3 and 4) and stage 4's npz.

A converted series is a folder ``<study>/<series>/`` of ``<zzzz>_<SOP>.jpg`` files plus its own
``manifest.json`` (``record``: the digest of the JPEG set's record it was made under; ``sop`` and
``z``: the slices in z order). The folder appears whole by one rename, so it exists only when
complete, and it is finished for a set only when its ``record`` equals that set's digest.
Every id in these names is a safe file name (rsna_pe.core.ids); a series with another is refused.
"""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core import ids, paths
from ..core.errors import DicomReadError, InputFileError
from ..core.io import atomic_dir, strict_json
from .dicom import series_order, windowed_slices
from .lungcrop import crop_params, lung_box
from .windows import WINDOWS

# Bump when the pixels a conversion writes change (window formula, resize, codec settings):
# JPEG sets made by another version are then stale (see rsna_pe.records.provenance).
CONVERSION_VERSION = 1


def conversion_params(size, quality, crop_margin=None):
    """What decides a JPEG set's pixels, as recorded with it; ``crop_margin``: the lung crop's
    margin (rsna_pe.data.lungcrop), None for whole slices (then no ``crop`` key, as before it existed)."""
    params = {"jpeg_size": int(size), "quality": int(quality), "chroma": "4:4:4",
              "windows": {k: list(v) for k, v in WINDOWS.items()},
              "conversion_version": CONVERSION_VERSION}
    if crop_margin is not None:
        params["crop"] = crop_params(crop_margin)
    return params


# 4:4:4: the three channels are independent windows, so no chroma subsampling.
def jpeg_params(quality=95):
    return [cv2.IMWRITE_JPEG_QUALITY, int(quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def jpeg_name(z_pos_order, sop, where="JPEG name"):
    """``<zzzz>_<SOP>.jpg``; a SOP id that is not a safe file name is refused, naming ``where``."""
    return f"{z_pos_order:04d}_{ids.checked(sop, 'SOPInstanceUID', where)}.jpg"


_NAME = re.compile(r"^(\d{4,})_(.+)\.jpg$")


def parse_jpeg_name(name):
    """'0012_1.2.3.jpg' -> (12, '1.2.3')."""
    m = _NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def read_jpeg(path):
    """RGB uint8 (H, W, 3); a missing or corrupt file is a one-line error naming it."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputFileError(path, "missing or unreadable JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def convert_series(series_dir, out_dir, size, quality=95, record=None, crop_margin=None, root=None):
    """DICOM series -> ``out_dir/<zzzz>_<SOP>.jpg`` and ``manifest.json``; returns manifest rows.

    One slice in memory at a time: each file is read once, windowed and written under its SOP
    name into a temporary folder; once every slice's z is known the files are renamed to their
    z order and the folder is renamed into place, so ``out_dir`` exists only when complete.
    ``record`` is the digest of the JPEG set's record, kept in the series' manifest.
    ``crop_margin`` (not None): every slice is cut to the series' lung box first, which the
    manifest keeps as ``crop_box`` (null: no lungs found, whole slices). ``root``: the JPEG set,
    which ``out_dir`` must lie in (rsna_pe.core.io.atomic_dir).
    Raises DicomReadError (naming the file) if any slice is unreadable or its SOPInstanceUID is
    not a safe file name, InputFileError if a JPEG cannot be written; nothing is written then.
    """
    params = jpeg_params(quality)
    box = lung_box(series_dir, crop_margin) if crop_margin is not None else None
    view = size if box is None else (size, box)
    infos = []
    with atomic_dir(out_dir, root) as tmp:
        for info, bgr in windowed_slices(series_dir, [view], bgr=True):
            if not ids.is_safe(info.sop):
                raise DicomReadError(info.path, ids.refusal(info.sop, "SOPInstanceUID"))
            if not cv2.imwrite(str(tmp / f"{info.sop}.jpg"), bgr[view], params):
                raise InputFileError(tmp, f"cannot write JPEG for {info.path}")
            infos.append(info)
        order = series_order(infos, where=str(series_dir))
        if len({i.sop for i in order}) != len(order):
            raise DicomReadError(series_dir, "duplicate SOPInstanceUID")
        for k, info in enumerate(order):
            os.rename(tmp / f"{info.sop}.jpg", tmp / jpeg_name(k, info.sop))
        manifest = {"format": 1, "record": record, "sop": [i.sop for i in order], "z": [i.z for i in order]}
        if crop_margin is not None:
            manifest["crop_box"] = None if box is None else list(box)
        (tmp / SERIES_MANIFEST).write_text(strict_json(manifest, out_dir / SERIES_MANIFEST))
    return [(k, i.sop, i.z) for k, i in enumerate(order)]


SERIES_MANIFEST = "manifest.json"


def read_series_manifest(series_dir):
    """A converted series' own manifest (dict), or None if the folder has none or it is unreadable
    (then the series counts as not converted and is redone)."""
    try:
        m = json.loads((Path(series_dir) / SERIES_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == 1 else None


def finished_series(series_dir, digest):
    """The series' manifest if it was converted under the JPEG set record ``digest``, else None."""
    m = read_series_manifest(series_dir)
    return m if m is not None and m.get("record") == digest else None


def finished_key(root, key, digest):
    """finished_series of the series ``key`` (study, series) in the JPEG set ``root``; None,
    without a look at the disk, for ids that are not safe file names (rsna_pe.core.ids)."""
    return finished_series(paths.series_dir(root, *key), digest) if all(map(ids.is_safe, key)) else None


def list_series_jpegs(series_dir):
    """(z_pos_order, sop, path) of a converted series, in z order."""
    out = []
    for p in Path(series_dir).iterdir():
        parsed = parse_jpeg_name(p.name)
        if parsed:
            out.append((*parsed, p))
    return sorted(out)


# ----------------------------------------------------------------------------- stage 4's npz
# The npz holds the series' stage-1 JPEG files as they are (no re-encode): ``jpeg`` uint8, all
# files back to back in z order, ``jpeg_offsets`` int64 (S+1,) where file k is
# jpeg[off[k]:off[k+1]]; ``format`` names this layout so a reader never guesses.
NPZ_FORMAT = "jpeg-v1"


def pack_jpeg_files(paths):
    """{jpeg, jpeg_offsets, format} for the npz, from the JPEG files in z order."""
    blobs = []
    for p in paths:
        try:
            blobs.append(np.fromfile(p, dtype=np.uint8))
        except OSError as e:
            raise InputFileError(p, f"missing or unreadable JPEG ({e.strerror})") from None
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return {"jpeg": np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
            "jpeg_offsets": offsets, "format": np.array(NPZ_FORMAT)}


def decode_jpeg_bytes(buf, where):
    """One JPEG file's bytes -> RGB uint8 (H, W, 3), exactly as read_jpeg decodes the file."""
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise InputFileError(where, "corrupt JPEG bytes")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_npz_images(z, where):
    """uint8 (S, 3, H, W) RGB of an opened stage-4 npz; another layout is refused by name."""
    fmt = str(z["format"]) if "format" in z.files else "decoded arrays (imgs)"
    if fmt != NPZ_FORMAT:
        raise InputFileError(where, f"npz layout '{fmt}' is not '{NPZ_FORMAT}'; rerun make_npz.py "
                             "with overwrite=true")
    buf, off = z["jpeg"], z["jpeg_offsets"]
    return np.stack([decode_jpeg_bytes(buf[off[k]:off[k + 1]], f"{where}[{k}]").transpose(2, 0, 1)
                     for k in range(len(off) - 1)])


# ----------------------------------------------------------------------------- the JPEG set
MANIFEST_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "z_pos_order", "z"]


def finished_rows(root, keys, digest):
    """Manifest rows (MANIFEST_COLUMNS, in key and z order) of the series ``keys`` converted
    under the JPEG set record ``digest``, and the keys that are not."""
    rows, missing = [], []
    for study, series in keys:
        m = finished_key(root, (study, series), digest)
        if m is None:
            missing.append((study, series))
            continue
        rows += [(study, series, sop, k, z) for k, (sop, z) in enumerate(zip(m["sop"], m["z"]))]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), missing


BOX_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "x0", "y0", "x1", "y1"]


def finished_boxes(root, keys, digest):
    """The lung boxes (BOX_COLUMNS; empty where no lungs were found) of the series ``keys``
    converted under ``digest`` into a lung-cropped set, from their manifests."""
    rows = []
    for study, series in keys:
        m = finished_key(root, (study, series), digest)
        if m is not None:
            rows.append((study, series, *(m.get("crop_box") or (None,) * 4)))
    return pd.DataFrame(rows, columns=BOX_COLUMNS).astype({c: "Int64" for c in BOX_COLUMNS[2:]})


def has_unknown_series(root, digest):
    """Whether ``root`` holds a series folder not converted under ``digest`` (made with other
    settings, or before series carried their manifest)."""
    return any(d.is_dir() and not d.name.startswith(".") and finished_series(d, digest) is None
               for s in Path(root).iterdir() if s.is_dir() and not s.name.startswith(".")
               for d in s.iterdir())
