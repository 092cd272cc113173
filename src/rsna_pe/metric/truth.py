"""Ground truth per study from a train.csv-layout frame, and the label prior."""
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..core.errors import PipelineError
from ..core.labels import EXAM_LABELS, IMAGE_LABEL, LABELS
from .arrays import valid


class StudyLabels(NamedTuple):
    """Ground truth per study, as labels_from_train_csv() returns it (unpacks as a 4-tuple)."""
    study_ids: list
    exam_true: np.ndarray  # (N, 9) float
    sops: list  # N arrays of SOPInstanceUID strings, z order where known
    img_true: list  # N float arrays


def _row_order(df, codes, source):
    """Rows grouped by study code; within a study by z_pos_order when given, else as given."""
    if "z_pos_order" in df.columns:
        z = pd.to_numeric(df["z_pos_order"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(z).all():
            raise PipelineError(f"{source}: z_pos_order is not a number in some row")
        return np.lexsort((z, codes))  # stable
    return np.argsort(codes, kind="stable")  # stable: keeps the given order within a study


def labels_from_train_csv(df, source="labels"):
    """Ground truth per study from a train.csv-layout frame (any row order).

    Studies sorted by StudyInstanceUID; within a study rows by ``z_pos_order`` when that
    column exists, else as given. Raises PipelineError (``source`` starts the message) on
    missing columns, duplicate SOPs, labels that are not numbers in [0, 1], or exam labels
    that differ within a study.
    """
    need = ["StudyInstanceUID", "SOPInstanceUID", *LABELS]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise PipelineError(f"{source}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise PipelineError(f"{source}: no rows")
    # Factorised study ids sort as integers (string sorting of 1.8M ids is slow).
    codes, uniques = pd.factorize(pd.Index(df["StudyInstanceUID"], dtype=object).astype(str), sort=True)
    order = _row_order(df, codes, source)
    sop = pd.Index(df["SOPInstanceUID"], dtype=object).astype(str)
    if not sop.is_unique:
        raise PipelineError(f"{source}: duplicate SOPInstanceUID {sop[sop.duplicated()][0]}")
    sop = np.asarray(sop, dtype=object)[order]
    vals = df[list(LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)[order]
    bad = ~valid(vals)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PipelineError(f"{source}: {LABELS[c]} of SOP {sop[r]} is not a number in [0, 1]")
    codes = codes[order]
    starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])
    exam = vals[:, :len(EXAM_LABELS)]
    lo, hi = np.minimum.reduceat(exam, starts), np.maximum.reduceat(exam, starts)
    if (lo != hi).any():
        r, c = np.argwhere(lo != hi)[0]
        raise PipelineError(f"{source}: {EXAM_LABELS[c]} differs between rows of study {uniques[r]}")
    return StudyLabels(
        study_ids=[str(s) for s in uniques],
        exam_true=hi,
        sops=np.split(sop, starts[1:]),
        img_true=np.split(vals[:, len(EXAM_LABELS)], starts[1:]),
    )


def as_labels(labels, source="labels"):
    """A StudyLabels as is, or one read from a train.csv-layout frame."""
    return labels if isinstance(labels, StudyLabels) else labels_from_train_csv(labels, source)


def subset_labels(labels, keep):
    """The studies of ``labels`` (StudyLabels) where ``keep`` ((N,) bool) is true."""
    idx = np.flatnonzero(keep)
    return StudyLabels([labels.study_ids[i] for i in idx], labels.exam_true[idx],
                       [labels.sops[i] for i in idx], [labels.img_true[i] for i in idx])


def prior_prediction(train_df, source="train csv"):
    """Label prior: the training mean of each of the 10 labels (exam labels over studies, the
    image label over images), as {label: float} in LABELS order. Takes a train.csv-layout
    frame or a StudyLabels."""
    labels = as_labels(train_df, source)
    prior = {k: float(v) for k, v in zip(EXAM_LABELS, labels.exam_true.mean(axis=0))}
    prior[IMAGE_LABEL] = float(np.concatenate(labels.img_true).mean())
    return prior
