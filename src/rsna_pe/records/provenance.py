"""Records of what made each output set: a chain of small JSON files, never hashes of the data.

Every derived output set (a JPEG set, a fold csv, an npz set, a training run, a dump, a
submission) has a ``record.json`` beside its outputs:

    {"format": 1, "stage": "make_image", "params": {...}, "inputs": {name: ref}, "info": {...}}

``params`` are the settings that decide the outputs' content (windows, size, quality, a
conversion version, a checkpoint's content hash, ...); ``inputs`` reference the records of the
sets it was made from by relative path and digest. The digest of a record covers stage, params
and inputs, so a change anywhere upstream changes every record downstream of it. ``info``
(package versions, git commit) is kept for people and never compared. Paths are relative to
the record's folder and no file times are kept: a workspace copied elsewhere stays valid.

Rerun rule (``guard``): a stage computes the record it would write and compares it with the
one on disk. Equal: finished outputs are kept and only missing ones made. Different, or
outputs without a record (made before records existed): a one-line error naming the
difference and ``overwrite=true``; with it the old outputs are removed and everything redone.
Where each output also carries its record's digest (stages 1 and 4, see rsna_pe.records.shards), only
outputs that carry another or none are unknown, and a lost record.json is written again.
"""
import hashlib
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import atomic_write_text
from ..core.paths import REPO_ROOT

RECORD = "record.json"
FORMAT = 1
PACKAGES = ("torch", "timm", "pydicom", "numpy", "opencv-python-headless")


def package_versions(names=PACKAGES):
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(root=REPO_ROOT):
    """The checkout's commit (with ``-dirty`` when files differ), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def info():
    """What is recorded for people: package versions and the code's commit."""
    return {"packages": package_versions(), "git": git_commit()}


def file_sha256(path, chunk=1 << 20):
    """Content hash of one file (checkpoints: tens of MB, hashed once per stage run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_HASHES = {}


def checkpoint_sha256(path):
    """file_sha256, once per file version in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(record):
    """sha256 over what decides the outputs: stage, params and the inputs' digests."""
    core = {k: record.get(k) for k in ("stage", "params", "inputs")}
    return hashlib.sha256(_canonical(core).encode()).hexdigest()


def record_path(where):
    """``where`` may be the record file or its folder."""
    where = Path(where)
    return where if where.name == RECORD else where / RECORD


def read_record(where):
    """The record at ``where`` (folder or file), or None if there is none."""
    path = record_path(where)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: unreadable record ({type(e).__name__}); remove it and "
                            "rerun with overwrite=true") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise PipelineError(f"{path}: record of an unknown format; rerun with overwrite=true")
    return rec


def require(where, what):
    """The record of an input set, which must exist (its stage writes it)."""
    rec = read_record(where)
    if rec is None:
        raise PipelineError(f"{record_path(where)}: no record of the {what} (made by an older "
                            f"version?); rerun the stage that makes it with overwrite=true")
    return rec


def ref(input_where, from_dir):
    """Reference to an input set's record: relative path from ``from_dir`` and its digest."""
    path = record_path(input_where)
    rec = require(path, path.parent.name)
    return {"path": os.path.relpath(path, Path(from_dir)), "digest": digest(rec)}


def make(stage, params, inputs=None):
    """A record (not yet written). ``inputs``: {name: ref(...)}."""
    return {"format": FORMAT, "stage": stage, "params": params, "inputs": inputs or {},
            "info": info()}


def write(where, record):
    atomic_write_text(record_path(where), json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def difference(old, new, prefix=""):
    """The first difference between two records' decisive parts, as 'key: old -> new', or None."""
    if prefix == "":
        old = {k: old.get(k) for k in ("stage", "params", "inputs")}
        new = {k: new.get(k) for k in ("stage", "params", "inputs")}
    if isinstance(old, dict) and isinstance(new, dict):
        # Settings before input digests: "params.quality: 95 -> 90" says more than a hash.
        for k in ("stage", "params", "inputs") if prefix == "" else sorted(set(old) | set(new)):
            d = difference(old.get(k), new.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    if _canonical(old) == _canonical(new):
        return None
    show = lambda v: "absent" if v is None else _canonical(v)[:80]  # noqa: E731
    return f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"


def guard(out_dir, record, has_outputs, overwrite, what, clear=None):
    """Apply the rerun rule to the output set in ``out_dir``; returns True if the caller may
    keep finished outputs, False if it starts from nothing.

    ``clear()`` removes the old outputs (default: everything in ``out_dir``); it runs only with
    ``overwrite``. The record is written before any output, so an interrupted run resumes
    under the same record.
    """
    out_dir = Path(out_dir)
    old = read_record(out_dir)
    if old is not None:
        diff = difference(old, record)
        if diff is None:
            return True
        reason = f"was made with other settings ({diff})"
    elif has_outputs:
        reason = "holds outputs without a record of what made them"
    else:
        write(out_dir, record)
        return False
    if not overwrite:
        raise stale_error(out_dir, what, reason)
    record_path(out_dir).unlink(missing_ok=True)
    (clear or (lambda: _clear_dir(out_dir)))()
    write(out_dir, record)
    return False


def stale_error(out_dir, what, reason):
    """The one-line error for outputs that the rerun rule may not keep."""
    return PipelineError(f"{out_dir}: {what} {reason}; rerun with overwrite=true to redo it")


def _clear_dir(path):
    for child in Path(path).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# ----------------------------------------------------------------------------- label order
def _first_difference(recorded, expected):
    for i, (a, b) in enumerate(zip(recorded, expected)):
        if a != b:
            return f"'{a}' at position {i} where this code has '{b}'"
    return f"{len(recorded)} labels where this code has {len(expected)}"


def check_label_order(recorded, expected, where, remedy):
    """Refuse outputs whose recorded label order is missing or differs from ``expected``: a
    checkpoint, dump or input set made with another order is never read by position."""
    if recorded is None:
        raise PipelineError(f"{where}: no recorded label order (made by an older version); {remedy}")
    if list(recorded) != list(expected):
        raise PipelineError(f"{where}: made with another label order ({_first_difference(list(recorded), list(expected))}); "
                            f"its outputs are not read by position: {remedy}")
