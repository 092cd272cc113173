"""Recalibration per label on a calibration split of the site, stored as ``calibration.json``
(its format, checks and application: rsna_pe.infer.calibration, which stage 7 and
predict_study.py apply when a model bundle carries it).

- platt (the default): p' = sigmoid(a logit(p) + b); b also absorbs a site whose prevalence
  differs from the training data's;
- temperature: p' = sigmoid(logit(p) / T), one parameter, for a split too small for two.

Both are fit by maximum likelihood with a weak pull towards no change (T = 1; a = 1, b = 0), so
a small split whose classes the model separates perfectly still gives finite parameters. Both
keep the order of the probabilities (AUC unchanged) when T > 0 and a > 0. A label with fewer
than MIN_PER_CLASS positive or negative studies in the split is left as it is: a handful of
cases fits noise.
"""
import numpy as np

from ..core.errors import PipelineError
from ..core.io import checked_number
from ..infer.calibration import (  # noqa: F401 - the format's pieces, one definition
    FILE,
    FORMAT,
    FORMAT_VERSION,
    METHODS,
    MIN_SLOPE,
    apply,
    apply_block,
    logit,
    sigmoid,
    validate,
)
from ..infer.site_files import read_doc
from .jsonio import write_checked

RIDGE = 1.0       # strength of the pull towards no change (a Gaussian prior of variance 1)
MIN_PER_CLASS = 5  # studies of each class a label needs in the split to be calibrated


def _loss(x, y, theta, theta0):
    z = x @ theta
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + RIDGE / 2 * np.sum((theta - theta0) ** 2))


def _newton(x, y, theta0):
    """Penalised logistic regression of y on the columns of x, pulled towards theta0; Newton
    steps halved until the (convex) loss does not rise."""
    theta = theta0.astype(np.float64).copy()
    for _ in range(100):
        q = sigmoid(x @ theta)
        g = x.T @ (q - y) + RIDGE * (theta - theta0)
        h = (x * (q * (1 - q))[:, None]).T @ x + RIDGE * np.eye(len(theta))
        step = np.linalg.solve(h, g)
        t, f0 = 1.0, _loss(x, y, theta, theta0)
        while _loss(x, y, theta - t * step, theta0) > f0 and t > 1e-8:
            t /= 2
        theta = theta - t * step
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return theta


def fit(y, p, method="platt"):
    """Parameters of ``method`` fit on (y, p): {"temperature": T} or {"slope": a, "intercept": b}."""
    y, z = np.asarray(y, dtype=np.float64), logit(p)
    if method == "temperature":
        (slope,) = _newton(z[:, None], y, np.array([1.0]))
        return {"temperature": 1.0 / max(float(slope), MIN_SLOPE)}
    if method == "platt":
        slope, intercept = _newton(np.stack([z, np.ones_like(z)], axis=1), y, np.array([1.0, 0.0]))
        return {"slope": max(float(slope), MIN_SLOPE), "intercept": float(intercept)}
    raise PipelineError(f"calibration method '{method}': one of {', '.join(METHODS)}")


def split(strata, fraction, seed):
    """(N,) bool: the calibration studies, ``fraction`` of each stratum (e.g. PE present or not;
    unknown is a stratum of its own), drawn with the seed; the rest is held out."""
    checked_number(fraction, "--calibrate-split", 0.0, 1.0)
    strata = np.asarray(strata, dtype=np.float64)
    rng = np.random.default_rng(seed)
    keys = np.where(np.isfinite(strata), strata, -1.0)
    mask = np.zeros(len(keys), dtype=bool)
    for k in np.unique(keys):
        idx = np.flatnonzero(keys == k)
        mask[rng.permutation(idx)[:int(round(fraction * len(idx)))]] = True
    return mask


def fit_block(y, p, calib, method, fit_info):
    """The calibration document: one parameter set per label (columns of the frames ``y``, ``p``)
    with MIN_PER_CLASS studies of each class among the calibration studies ``calib`` ((N,) bool)."""
    labels = {}
    for label in y.columns:
        keep = calib & y[label].notna().to_numpy() & p[label].notna().to_numpy()
        yy, pp = y[label].to_numpy()[keep], p[label].to_numpy()[keep]
        if min(yy.sum(), len(yy) - yy.sum()) >= MIN_PER_CLASS:
            labels[label] = {**fit(yy, pp, method), "n": int(len(yy)), "n_pos": int(yy.sum())}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "method": method,
            "labels": labels, "fit": {**fit_info, "min_per_class": MIN_PER_CLASS}}


def write(doc, file_or_dir):
    """Write the document to ``file_or_dir`` (a folder gets ``calibration.json``)."""
    return write_checked(doc, file_or_dir, FILE, validate)


def read(file_or_dir):
    """The checked document of ``file_or_dir`` (a file, or a validation or bundle folder holding it)."""
    return read_doc(file_or_dir, FILE)
