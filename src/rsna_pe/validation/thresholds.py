"""Operating points fixed in advance: per label, the threshold that reaches a target
sensitivity on the development cross-validation (the heads' out-of-fold files), stored as
``operating_points.json`` beside the models (a run folder) or in a model bundle
(its format and checks: rsna_pe.infer.operating_points).

A call is positive when ``p >= threshold``. The threshold for target s is the highest one
whose development sensitivity is at least s: the ceil(s x n_pos)-th largest score of a positive.
"""
import math

import numpy as np

from ..core.errors import PipelineError
from ..core.io import checked_number
from ..infer.operating_points import FILE, FORMAT, FORMAT_VERSION, RULE, validate
from ..infer.site_files import read_doc
from . import inputs
from .jsonio import write_checked

DEFAULT_TARGETS = (0.90, 0.95)


def threshold_for_sensitivity(y, p, target):
    """The highest threshold t with sensitivity(p >= t) >= target on (y, p)."""
    pos = np.sort(np.asarray(p, dtype=np.float64)[np.asarray(y) == 1])[::-1]
    if not len(pos):
        raise ValueError("no positive case to set a sensitivity on")
    k = max(1, math.ceil(target * len(pos) - 1e-9))  # the tolerance absorbs 0.9 * 10 = 9.000000000000002
    return float(pos[k - 1])


def choose(y, p, targets=DEFAULT_TARGETS):
    """{label: [point]} for every column of the truth frame ``y`` with both classes;
    each point: target_sensitivity, threshold, and what it gives on the development data."""
    out = {}
    for label in y.columns:
        keep = y[label].notna() & p[label].notna()
        yy, pp = y[label][keep].to_numpy(), p[label][keep].to_numpy()
        if len(np.unique(yy)) < 2:
            continue
        points = []
        for t in targets:
            thr = threshold_for_sensitivity(yy, pp, t)
            call = pp >= thr
            points.append({"target_sensitivity": float(t), "threshold": thr,
                           "dev_sensitivity": float(call[yy == 1].mean()),
                           "dev_specificity": float((~call[yy == 0]).mean()),
                           "dev_n": int(len(yy)), "dev_n_pos": int(yy.sum())})
        out[label] = points
    return out


def from_oof(oof_paths, labels_path, targets=DEFAULT_TARGETS):
    """The operating-points document of the development cross-validation: the out-of-fold files
    averaged per id over the files that hold it and post-processed (as inference treats its
    ensemble), scored against the labels (train.csv layout, or any labels csv)."""
    for t in targets:
        checked_number(t, "target sensitivity", 0.0, 1.0)
    labels = inputs.read_labels(labels_path)
    frames = [inputs.read_submission_frame(p) for p in oof_paths]
    preds = inputs.from_submission(inputs.mean_per_id(frames), labels.sop_study, "out-of-fold files")
    matched = inputs.match(labels, inputs.postprocessed(preds))
    points = choose(matched.y, matched.p, targets)
    if not points:
        raise PipelineError(f"{labels_path}: no label has both classes among the out-of-fold studies")
    source = {"oof_files": [str(p) for p in oof_paths], "labels": str(labels_path),
              "n_studies": len(matched.studies), "ensemble": "mean per id over the files, post-processed"}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "rule": RULE, "source": source,
            "labels": points}


def write(doc, file_or_dir):
    """Write the document to ``file_or_dir`` (a folder gets ``operating_points.json``)."""
    return write_checked(doc, file_or_dir, FILE, validate)


def read(file_or_dir):
    """The checked document of ``file_or_dir``: a file, or a run or bundle folder holding
    operating_points.json (a bundle's as its manifest lists and hashes it)."""
    return read_doc(file_or_dir, FILE)


def points_for(doc, label):
    """The points of ``label`` in a document (none when the document or the label is absent)."""
    if doc is None:
        return []
    return [{k: pt[k] for k in ("target_sensitivity", "threshold", "dev_sensitivity", "dev_specificity")
             if k in pt} for pt in doc["labels"].get(label, [])]
