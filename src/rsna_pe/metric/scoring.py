"""The competition score (weighted log loss), per-label numbers, and scoring a submission."""
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ..core.errors import PipelineError
from ..core.labels import EXAM_LABELS, EXAM_WEIGHTS, IMAGE_LABEL, IMAGE_WEIGHT
from .arrays import exam_array, flat
from .consistency import consistency_violations
from .submission import extract
from .truth import as_labels, subset_labels

EPS = 1e-15  # predictions are clipped to [EPS, 1 - EPS] before the log

_W = np.array([EXAM_WEIGHTS[k] for k in EXAM_LABELS], dtype=np.float64)


def _bce(y, p):
    p = np.clip(p, EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def _image_q(img_true_flat, lengths):
    """Per-image weight q_i (fraction of positive images in its study), and the per-study q."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.bincount(owner, weights=img_true_flat, minlength=len(lengths))
    q = pos / np.maximum(lengths, 1)
    return q[owner], q


def weighted_log_loss(exam_true, exam_pred, img_true, img_pred):
    """The competition score (lower is better); see docs/score.md.

    ``(sum_i sum_k w_k BCE_ik + sum_i sum_j w q_i BCE_ij) / (sum_i sum_k w_k + sum_i n_i w q_i)``
    with q_i the fraction of positive images of study i, so negative studies add no image term.
    """
    exam_true = exam_array(exam_true, "exam_true")
    exam_pred = exam_array(exam_pred, "exam_pred")
    n = len(exam_true)
    if exam_pred.shape != exam_true.shape:
        raise ValueError(f"exam_pred {exam_pred.shape} does not match exam_true {exam_true.shape}")
    if n == 0:
        raise ValueError("no studies to score")
    yt, lengths = flat(img_true, n, "img_true")
    yp, lengths_p = flat(img_pred, n, "img_pred")
    if not np.array_equal(lengths, lengths_p):
        raise ValueError("img_pred and img_true differ in the number of images of some study")
    q_img, _ = _image_q(yt, lengths)
    num = float((_bce(exam_true, exam_pred) * _W).sum()) + IMAGE_WEIGHT * float((q_img * _bce(yt, yp)).sum())
    den = n * float(_W.sum()) + IMAGE_WEIGHT * float(q_img.sum())
    return num / den


def _auc(y, p):
    if len(y) == 0 or np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def per_label_log_loss(exam_true, exam_pred, img_true, img_pred):
    """Per-label DataFrame ``label, logloss, auc, auc_positive`` (LABELS order), unweighted
    across labels.

    Exam labels: mean BCE over studies. Image label: BCE weighted by q_i exactly as in the
    score (sum_i sum_j q_i BCE_ij / sum_i n_i q_i), so images of negative studies do not count
    and the score is the label-weighted mean of these numbers; NaN without positive images.
    AUC (sklearn roc_auc_score) over studies, and over all images for the image label; NaN
    when only one class is present. ``auc_positive``: the same AUC among the studies whose truth
    is PE-positive (neither negative_exam_for_pe nor indeterminate), the question the location,
    RV/LV and chronicity labels answer (over all studies, negatives make them look easy).
    """
    exam_true = exam_array(exam_true, "exam_true")
    exam_pred = exam_array(exam_pred, "exam_pred")
    n = len(exam_true)
    yt, lengths = flat(img_true, n, "img_true")
    yp, _ = flat(img_pred, n, "img_pred")
    q_img, _ = _image_q(yt, lengths)
    pos = (exam_true[:, EXAM_LABELS.index("negative_exam_for_pe")] == 0) & \
        (exam_true[:, EXAM_LABELS.index("indeterminate")] == 0)
    rows = []
    bce = _bce(exam_true, exam_pred)
    for k, label in enumerate(EXAM_LABELS):
        rows.append((label, float(bce[:, k].mean()) if n else float("nan"),
                     _auc(exam_true[:, k], exam_pred[:, k]),
                     _auc(exam_true[pos, k], exam_pred[pos, k])))
    den = float(q_img.sum())
    img_ll = float((q_img * _bce(yt, yp)).sum()) / den if den > 0 else float("nan")
    img_pos = np.repeat(pos, lengths)
    rows.append((IMAGE_LABEL, img_ll, _auc(yt, yp), _auc(yt[img_pos], yp[img_pos])))
    return pd.DataFrame(rows, columns=["label", "logloss", "auc", "auc_positive"])


def score_predictions(labels, exam_pred, img_pred):
    """Score arrays aligned with a StudyLabels: dict(score, per_label, n_studies, n_images,
    n_inconsistent (studies breaking a consistency rule))."""
    return dict(
        score=weighted_log_loss(labels.exam_true, exam_pred, labels.img_true, img_pred),
        per_label=per_label_log_loss(labels.exam_true, exam_pred, labels.img_true, img_pred),
        n_studies=len(labels.study_ids),
        n_images=int(sum(len(s) for s in labels.sops)),
        n_inconsistent=int(sum(bool(v) for v in consistency_violations(exam_pred, img_pred))),
    )


def score_submission(sub_df, labels_df, source="submission"):
    """Score a submission frame against train.csv-layout labels (or a StudyLabels), as given
    (no post-processing).

    Only studies with at least one row in the submission are scored (an out-of-fold file
    covers one validation fold); each of those must have all its rows. Returns dict(score,
    per_label DataFrame[label, logloss, auc], n_studies, n_images, n_studies_total,
    n_unmatched (rows matching no study), n_inconsistent, covered ((N,) bool mask)).
    """
    labels = as_labels(labels_df)
    exam_pred, img_pred, covered, unmatched = extract(sub_df, labels.study_ids, labels.sops,
                                                      source, covered_only=True)
    if not covered.any():
        raise PipelineError(f"{source}: no id matches a study of the labels")
    idx = np.flatnonzero(covered)
    out = score_predictions(subset_labels(labels, covered), exam_pred[idx], [img_pred[i] for i in idx])
    out.update(n_studies_total=len(labels.study_ids), n_unmatched=unmatched, covered=covered)
    return out
