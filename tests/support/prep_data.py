"""Helpers of the stage 1, 2 and 4 tests: a tiny data set named like the competition's
(12-hex-character ids), stages run in or out of process, file listings."""
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rsna_pe.core.io import CRASH_ENV
from rsna_pe.core.labels import TRAIN_COLUMNS
from rsna_pe.synthetic import write_series

SRC = Path(__file__).resolve().parents[2] / "src"
SIZE = 32
N_STUDIES = 4
# Stage 2 on 4 studies: 2 folds (2 negative and 2 other studies).
STAGES = {"make_image.py": [f"jpeg_size={SIZE}", "workers=1"],
          "make_csv.py": [f"jpeg_size={SIZE}", "n_splits=2"],
          "make_npz.py": [f"jpeg_size={SIZE}", "workers=1"]}


def hex_id(*parts):
    """A 12-hex-character id, as the competition names studies, series and images."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:12]


def quiet_write_series(*args, **kwargs):
    """write_series, without pydicom's warnings about the hex UIDs it is given (writing only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pydicom").disabled = True
        try:
            return write_series(*args, **kwargs)
        finally:
            logging.getLogger("pydicom").disabled = False


def write_dataset(data, n_studies=N_STUDIES, slices=2, matrix=SIZE, seed=0):
    """``data/train.csv`` and DICOM series with hex ids; returns [(study, series)] sorted."""
    rng = np.random.default_rng(seed)
    rows, keys = [], []
    for s in range(n_studies):
        study, series = hex_id(seed, "study", s), hex_id(seed, "series", s)
        sops = [hex_id(seed, "sop", s, k) for k in range(slices)]
        hu = rng.integers(-1100, 1200, size=(slices, matrix, matrix))
        quiet_write_series(data / "train" / study / series, hu, rng.permutation(slices) * 2.5,
                           study_uid=study, series_uid=series, sop_uids=sops, seed=s)
        negative = s % 2
        rows += [(study, series, sop, int(rng.integers(0, 2)) * (1 - negative), negative) + (0,) * 12
                 for sop in sops]
        keys.append((study, series))
    pd.DataFrame(rows, columns=TRAIN_COLUMNS).to_csv(data / "train.csv", index=False)
    return sorted(keys)


def run_stage(script, cwd, *extra, crash_at=None):
    """A stage as its own process in ``cwd`` (the crash injection ends a process)."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    if crash_at is not None:
        env[CRASH_ENV] = str(crash_at)
    return subprocess.run([sys.executable, str(SRC / script), *STAGES[script], *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def run_inline(script, cwd, *extra):
    """A stage's main() in this process, from ``cwd`` (faster; same arguments as run_stage)."""
    import importlib
    mod = importlib.import_module(script[:-3])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return mod.main([*STAGES[script], *extra])


def file_bytes(root):
    """{relative path: bytes} of every file under ``root``."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root):
    """{relative path: (mtime_ns, size)} of every file and folder under ``root``."""
    root = Path(root)
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def leftovers(root):
    return [p for p in Path(root).rglob("*") if p.name.endswith(".tmp")]


def copy_inputs(src_ws, dst_ws, *parts):
    """Copy ``data/train.csv`` and ``data/train`` (plus ``parts`` under data/) to a workspace."""
    (dst_ws / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(src_ws / "data" / "train.csv", dst_ws / "data" / "train.csv")
    for part in ("train", *parts):
        shutil.copytree(src_ws / "data" / part, dst_ws / "data" / part)
    return dst_ws
