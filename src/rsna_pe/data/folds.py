"""The original's study-level split and the k-fold view of it used by every trainer."""
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from ..core.errors import ConfigError, InputFileError, PipelineError
from ..core.io import read_csv
from ..core.labels import ID_COLUMNS

N_SPLITS = 15


def assign_folds(df, n_splits=N_SPLITS, seed=42):
    """{StudyInstanceUID: fold id}: StratifiedKFold over sorted studies on negative_exam_for_pe."""
    flags = df.groupby("StudyInstanceUID")["negative_exam_for_pe"].max().sort_index()
    if len(flags) < n_splits:
        raise PipelineError(f"train.csv has {len(flags)} studies; the {n_splits}-fold split needs "
                            f"at least {n_splits}")
    negative = (flags.values == 1).astype(int)
    if max(negative.sum(), len(negative) - negative.sum()) < n_splits:
        raise PipelineError(f"train.csv has {int(negative.sum())} negative and "
                            f"{int(len(negative) - negative.sum())} other studies; the stratified "
                            f"{n_splits}-fold split needs at least {n_splits} of one kind")
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.empty(len(flags), dtype=int)
    for k, (_, val) in enumerate(skf.split(np.zeros(len(flags)), negative)):
        fold[val] = k
    return dict(zip(flags.index, fold))


def val_fold_ids(fold, k_fold, n_splits=N_SPLITS):
    """Fold ids a model fold validates on: with k_fold 3, fold f -> {5f, ..., 5f+4}."""
    if not 0 <= fold < k_fold or n_splits % k_fold:
        raise ConfigError(f"fold {fold} invalid for k_fold {k_fold} over {n_splits} fold ids")
    per = n_splits // k_fold
    return set(range(per * fold, per * (fold + 1)))


def split_mask(fold_ids, fold, k_fold):
    """Boolean array: True where a row/study with that fold id belongs to validation."""
    return np.isin(np.asarray(fold_ids), sorted(val_fold_ids(fold, k_fold)))


def split_by_fold(df, fold, k_fold=3):
    """(train rows, val rows) of a frame with a ``fold`` column (fold ids 0..14): the one split
    both trainers use."""
    val = split_mask(df["fold"], fold, k_fold)
    return df[~val].reset_index(drop=True), df[val].reset_index(drop=True)


def read_fold_csv(path, columns=()):
    """Stage 2's fold csv: ids, ``z_pos_order``, ``fold`` and the requested label ``columns``
    (only those are loaded: the real csv has 1.8 M rows)."""
    if not Path(path).is_file():
        raise InputFileError(path, "fold csv not found (run src/make_csv.py first)")
    want = [*ID_COLUMNS, "z_pos_order", "fold", *columns]
    return read_csv(path, want, usecols=lambda c: c in want, dtype=dict.fromkeys(ID_COLUMNS, str))
