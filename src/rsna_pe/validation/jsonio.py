"""Strict JSON for the files of site validation: NaN becomes null and numpy numbers plain
ones when written; a file read back must carry its format name and a version this code reads."""
import json
import math
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.io import atomic_write_text


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


def in_folder(path, name):
    """``path`` itself, or ``path/name`` when ``path`` is a folder (a run or bundle folder)."""
    path = Path(path)
    return path / name if path.is_dir() else path


def read_json(path, fmt, version):
    """A JSON object whose ``format`` is ``fmt`` and ``format_version`` is ``version``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        doc = json.loads(path.read_text(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise PipelineError(f"{path}: not a {fmt} file (its 'format' must be '{fmt}')")
    if doc.get("format_version") != version:
        raise PipelineError(f"{path}: format version {doc.get('format_version')}, this code reads {version}")
    return doc


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def number(value, where, lo=-math.inf, hi=math.inf):
    """``value`` as a float in [lo, hi], else a one-line error naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise PipelineError(f"{where}: {value!r} is not a number in [{lo}, {hi}]")
    return float(value)
