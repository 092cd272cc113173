"""Strict JSON for the files of site validation: NaN becomes null and numpy numbers plain
ones when written (reading back: rsna_pe.core.io.json_document)."""
import json
import math

import numpy as np

from ..core.io import atomic_write_text, in_folder


def plain(obj):
    """``obj`` with numpy scalars/arrays as Python values and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj):
    return json.dumps(plain(obj), indent=2, allow_nan=False) + "\n"


def write_json(path, obj):
    atomic_write_text(path, dumps(obj))


def write_checked(doc, file_or_dir, name, validate):
    """Write ``doc``, checked by ``validate(doc, path)``, to ``file_or_dir`` (a folder gets
    ``name``); -> the path written."""
    path = in_folder(file_or_dir, name)
    validate(doc, path)
    write_json(path, doc)
    return path
