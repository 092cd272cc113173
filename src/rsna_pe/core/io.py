"""Atomic writes: everything lands at its final path by rename, never half-written.

Temporary files and folders are named ``.<final name>.<random>.tmp`` beside their final path;
one left by a killed process is removed by the next write of the same path (one writer per
path at a time). Finished outputs get the permissions the umask gives (``mkstemp`` alone would
leave them private to the user).

Fault injection for tests: ``RSNA_PE_CRASH_AT_WRITE=N`` ends the process abruptly (like a kill)
at its N-th output write, after the temporary is written and before it is renamed into place.
"""
import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputFileError, PipelineError

CRASH_ENV = "RSNA_PE_CRASH_AT_WRITE"
CRASH_EXIT_CODE = 75
_writes = 0


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _maybe_crash():
    global _writes
    at = os.environ.get(CRASH_ENV)
    if not at:
        return
    _writes += 1
    if _writes == int(at):
        os._exit(CRASH_EXIT_CODE)  # no cleanup, no finally blocks: what a kill leaves behind


def _remove_leftovers(final):
    """Temporaries of ``final`` that a killed process left behind."""
    for old in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final, suffix=""):
    """Yield a temporary path beside ``final``; rename it into place if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _maybe_crash()
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_inside(path, root):
    """Refuse (one line) a ``path`` that is not strictly inside ``root`` once symlinks are
    followed: what a stage replaces or removes must be its own output, never its input."""
    real, top = Path(path).resolve(), Path(root).resolve()
    if real == top or not real.is_relative_to(top):
        raise PipelineError(f"{path}: refused, it lies outside the output folder {root} (at {real})")


@contextlib.contextmanager
def atomic_dir(final, root=None):
    """Yield a temporary folder beside ``final``; it replaces ``final`` if the block succeeds.
    ``root``: the output folder ``final`` must lie in (check_inside), checked before anything
    is created and again before ``final`` is replaced."""
    final = Path(final)
    if root is not None:
        check_inside(final, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _maybe_crash()
        if root is not None:  # again: a folder on the way may have become a link meanwhile
            check_inside(final, root)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def strict_json(obj, where, **dumps_kwargs):
    """``json.dumps`` that refuses NaN and infinity (not JSON: browsers and strict parsers
    reject the file) with a one-line error naming ``where``."""
    try:
        return json.dumps(obj, allow_nan=False, **dumps_kwargs)
    except ValueError as e:
        raise PipelineError(f"{where}: not written, a value is not finite ({e})") from None


def json_ready(obj):
    """``obj`` for strict JSON: numpy scalars and arrays as Python values, and each non-finite
    number as null (a measurement that is undefined, such as the AUC of a one-class set, must
    not make the file invalid JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def strict_loads(data, where):
    """JSON from text or bytes, strictly (NaN and Infinity are not JSON); anything else is a
    one-line error naming ``where``."""
    def no_constant(name):
        raise ValueError(f"{name} is not a JSON value")

    try:
        return json.loads(data, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise PipelineError(f"{where}: not valid JSON ({(str(e).splitlines() or [''])[0][:120]})") from None


def json_document(data, where, fmt, version):
    """The JSON object in ``data`` whose ``format`` is ``fmt`` and ``format_version`` is
    ``version`` (a versioned file of the pipeline's own), else a one-line error naming ``where``."""
    doc = strict_loads(data, where)
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise PipelineError(f"{where}: not a {fmt} file (its 'format' must be '{fmt}')")
    found = doc.get("format_version")
    if type(found) is not int or found != version:  # true == 1 in Python, yet no version
        raise PipelineError(f"{where}: format version {found!r:.40}, this code reads {version}")
    return doc


def checked_number(value, where, lo=-math.inf, hi=math.inf):
    """``value`` as a finite float in [lo, hi], else a one-line error naming ``where`` (JSON's
    1e999 parses as infinity)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not lo <= value <= hi):
        raise PipelineError(f"{where}: {value!r:.40} is not a number in [{lo}, {hi}]")
    return float(value)


def in_folder(path, name):
    """``path`` itself, or ``path/name`` when ``path`` is a folder (a run or bundle folder)."""
    path = Path(path)
    return path / name if path.is_dir() else path


def atomic_write_json(path, obj, newline=True, **dumps_kwargs):
    """Write ``obj`` as strict JSON (see strict_json) atomically; ``newline``: end with one."""
    atomic_write_text(path, strict_json(obj, path, **dumps_kwargs) + ("\n" if newline else ""))


def atomic_savez(path, compress=False, **arrays):
    """np.savez layout (np.load reads it), but byte-reproducible: np.savez stamps each member
    with the current time, so the same arrays written twice would differ."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            for key, val in arrays.items():
                member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                member.compress_type = method
                with zf.open(member, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(val), allow_pickle=False)


def atomic_to_csv(df, path, **kwargs):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def atomic_torch_save(obj, path):
    import torch  # heavy and optional here: the data stages write no torch files
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_csv(path, required=(), id_columns=(), **kwargs):
    """pandas.read_csv with one-line errors naming the file and any missing column.
    ``id_columns`` are read as text, an empty cell as '' (not NaN, which would pass for the
    name 'nan' or stop a sort): an empty id is then refused as such (rsna_pe.core.ids)."""
    import pandas as pd  # heavy: the writers above, which most stages use, do without it

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise InputFileError(path, f"not a readable csv ({type(e).__name__}: {first})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing column(s) {', '.join(missing)}")
    present = [c for c in id_columns if c in df.columns]
    if present:
        df[present] = df[present].fillna("")
    return df


def has_outputs(folder, names=None):
    """Any finished output in ``folder`` (``names``: only those count); temporaries of a killed
    write (``.<name>.*.tmp``) do not."""
    folder = Path(folder)
    if names is not None:
        return any((folder / n).exists() for n in names)
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())
