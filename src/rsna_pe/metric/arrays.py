"""Shapes and value checks of predictions: ``exam_pred`` (N, 9) in EXAM_LABELS order plus
``img_pred``, a list of N 1-D arrays (one per study, slices in z order)."""
import numpy as np

from ..core.labels import EXAM_LABELS


def exam_array(a, name):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(EXAM_LABELS):
        raise ValueError(f"{name} must have shape (N, {len(EXAM_LABELS)}), got {a.shape}")
    return a


def flat(arrays, n, name):
    """Concatenate N per-study arrays; return (flat float array, lengths)."""
    if len(arrays) != n:
        raise ValueError(f"{name} has {len(arrays)} studies, expected {n}")
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    joined = np.concatenate(arrays) if n else np.zeros(0)
    return joined, lengths


def valid(v):
    """Elementwise: a probability, i.e. a finite number in [0, 1]."""
    return np.isfinite(v) & (v >= 0) & (v <= 1)
