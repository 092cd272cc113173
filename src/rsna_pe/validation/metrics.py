"""Numbers of one label on one set of studies: AUC with a stratified bootstrap interval,
sensitivity, specificity, PPV and NPV at thresholds (Wilson intervals), Brier score and the
expected calibration error with its reliability table.

A call is positive when ``p >= threshold`` (docs/validation.md).
"""
import zlib

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LEVEL = 0.95                 # every interval is a 95 % one
Z = 1.959963984540054        # the normal quantile of LEVEL, for Wilson intervals
ECE_BINS = 10                # equal-width probability bins
CHUNK = 256                  # resamples drawn at once (memory: CHUNK x n floats)
ROC_GRID = np.linspace(0, 1, 101)  # false-positive rates at which the ROC band is taken
EPS = 1e-15                  # as the competition's score clips before the log


def auc(y, p):
    """ROC AUC (scikit-learn's), NaN with a single class."""
    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _auc_rows(sp, sn):
    """AUC of each resample: (positives' scores (B, n1), negatives' scores (B, n0)) ->
    (B,), ties counted one half (the Mann-Whitney statistic, equal to the ROC area)."""
    sn = np.sort(sn, axis=1)
    out = np.empty(len(sp))
    for b in range(len(sp)):
        below = np.searchsorted(sn[b], sp[b], "left")
        ties = np.searchsorted(sn[b], sp[b], "right") - below
        out[b] = (below.sum() + 0.5 * ties.sum()) / (sp.shape[1] * sn.shape[1])
    return out


def roc_xy(y, p):
    """The ROC's corners (fpr, tpr) from (0, 0) to (1, 1), one per distinct score (ties form
    one diagonal step, as in scikit-learn's roc_curve, without its per-call checks)."""
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    ps, ys = np.asarray(p, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    last = np.r_[ps[1:] != ps[:-1], True]  # the last of each run of equal scores
    tp, fp = np.cumsum(ys)[last], np.cumsum(1 - ys)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def _band(sp, sn):
    """TPR of each resample's ROC at ROC_GRID false-positive rates."""
    y = np.r_[np.ones(sp.shape[1]), np.zeros(sn.shape[1])]
    out = np.empty((len(sp), len(ROC_GRID)))
    for b in range(len(sp)):
        fpr, tpr = roc_xy(y, np.r_[sp[b], sn[b]])
        out[b] = np.interp(ROC_GRID, fpr, tpr)
    return out


def rng_for(seed, key):
    """A generator for (seed, key): the interval of one label and group does not change when
    other labels or groups are added."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode())]))


def bootstrap(y, p, n_boot, seed, key, band=False, progress=None):
    """Stratified bootstrap (positives and negatives resampled apart, so every resample keeps
    the set's class counts): dict(auc (n_boot,), brier (n_boot,), band (n_boot, grid) or None).
    Returns None when a class is missing."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        if progress is not None:
            progress.update(n_boot)
        return None
    rng = rng_for(seed, key)
    aucs, briers, bands = [], [], []
    for start in range(0, n_boot, CHUNK):
        b = min(CHUNK, n_boot - start)
        sp = pos[rng.integers(0, len(pos), (b, len(pos)))]
        sn = neg[rng.integers(0, len(neg), (b, len(neg)))]
        aucs.append(_auc_rows(sp, sn))
        briers.append((((1 - sp) ** 2).sum(1) + (sn ** 2).sum(1)) / (len(pos) + len(neg)))
        if band:
            bands.append(_band(sp, sn))
        if progress is not None:
            progress.update(b)
    return {"auc": np.concatenate(aucs), "brier": np.concatenate(briers),
            "band": np.concatenate(bands) if band else None}


def percentile_interval(values):
    """The central LEVEL interval of bootstrap values, [lo, hi]."""
    if values is None or not len(values):
        return [float("nan"), float("nan")]
    tail = 100 * (1 - LEVEL) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def wilson(k, n):
    """Wilson score interval of a proportion k / n, [lo, hi]; NaNs when n is 0."""
    if n == 0:
        return [float("nan"), float("nan")]
    phat = k / n
    centre = (phat + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * np.sqrt(phat * (1 - phat) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def _rate(k, n):
    return {"value": k / n if n else float("nan"), "ci": wilson(k, n), "k": int(k), "n": int(n)}


def at_threshold(y, p, threshold):
    """Sensitivity, specificity, PPV and NPV (each with its Wilson interval) of p >= threshold."""
    y, call = np.asarray(y) == 1, np.asarray(p) >= threshold
    tp, fp = int((call & y).sum()), int((call & ~y).sum())
    fn, tn = int((~call & y).sum()), int((~call & ~y).sum())
    return {"threshold": float(threshold), "sensitivity": _rate(tp, tp + fn),
            "specificity": _rate(tn, tn + fp), "ppv": _rate(tp, tp + fp), "npv": _rate(tn, tn + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def youden_threshold(y, p):
    """The threshold with the largest sensitivity + specificity - 1 on these data (first of ties)."""
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr[1:] - fpr[1:]  # the first point is "nobody positive" (threshold inf)
    return float(thr[1:][int(np.argmax(j))])


def brier(y, p):
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y)) ** 2)) if len(y) else float("nan")


def log_loss(y, p):
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if len(y) else float("nan")


def reliability(y, p, bins=ECE_BINS):
    """(ECE, rows): equal-width bins of p; per bin its range, count, mean p and share of
    positives; ECE = sum over bins of count/N x |mean p - share of positives|."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        mean_p = float(p[m].mean()) if n else float("nan")
        frac = float(y[m].mean()) if n else float("nan")
        if n:
            ece += n / len(p) * abs(mean_p - frac)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "mean_p": mean_p,
                     "frac_pos": frac})
    return (ece if len(p) else float("nan")), rows


def roc_points(y, p):
    """The ROC curve of the set (fpr, tpr), for plots."""
    if len(np.unique(y)) < 2:
        return [], []
    fpr, tpr = roc_xy(y, p)
    return fpr.tolist(), tpr.tolist()


def label_metrics(y, p, fixed=(), n_boot=2000, seed=0, key="", band=False, progress=None):
    """Every number of one label on one set of studies, and its curves for the plots.

    ``fixed``: operating points chosen in advance ({target_sensitivity, threshold, dev_...});
    each is applied as it is. ``site_best`` is the Youden threshold of these very data, an
    optimistic reference. Studies where y or p is NaN are left out."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(p)
    y, p = y[keep], p[keep]
    boot = bootstrap(y, p, n_boot, seed, key, band=band, progress=progress)
    ece, rel = reliability(y, p)
    two = len(np.unique(y)) == 2
    out = {"n": int(len(y)), "n_pos": int(y.sum()), "prevalence": float(y.mean()) if len(y) else float("nan"),
           "auc": auc(y, p), "auc_ci": percentile_interval(boot["auc"] if boot else None),
           "brier": brier(y, p), "brier_ci": percentile_interval(boot["brier"] if boot else None),
           "ece": ece, "reliability": rel,
           "fixed": [{**op, **at_threshold(y, p, op["threshold"])} for op in fixed],
           "site_best": {**at_threshold(y, p, youden_threshold(y, p)), "rule": "Youden, chosen on these data"}
           if two else None}
    curves = {"roc": roc_points(y, p), "band": None}
    if boot is not None and boot["band"] is not None:
        tail = 100 * (1 - LEVEL) / 2
        lo, hi = np.percentile(boot["band"], [tail, 100 - tail], axis=0)
        curves["band"] = {"fpr": ROC_GRID.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    return out, curves
