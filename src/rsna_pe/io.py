"""Atomic writes: everything lands at its final path by rename, never half-written."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(final, suffix=""):
    """Yield a temporary path beside ``final``; rename it into place if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(final):
    """Yield a temporary folder beside ``final``; it replaces ``final`` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_savez(path, compress=False, **arrays):
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)


def atomic_to_csv(df, path, **kwargs):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def atomic_torch_save(obj, path):
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_csv(path, required=(), **kwargs):
    """pandas.read_csv with one-line errors naming the file and any missing column."""
    import pandas as pd

    from .errors import PipelineError
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise PipelineError(f"{path}: not a readable csv ({type(e).__name__}: {first})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}")
    return df
