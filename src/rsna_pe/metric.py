"""The competition score, the consistency rules, post-processing and the submission format.

One implementation for training (validation score), evaluation (``src/evaluate.py``) and
inference (post-processing, submission writing and checking). Predictions travel as
``exam_pred`` (N, 9) in ``EXAM_LABELS`` order plus ``img_pred``, a list of N 1-D arrays (one
per study, slices in z order); ground truth in the same shapes.
"""
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from .errors import PipelineError
from .labels import EXAM_LABELS, EXAM_WEIGHTS, IMAGE_LABEL, IMAGE_WEIGHT, LABELS

EPS = 1e-15  # predictions are clipped to [EPS, 1 - EPS] before the log
THRESHOLD = 0.5  # "> 0.5" is a positive call everywhere
LOW, HIGH = 0.499, 0.501  # what post-processing moves a value to

_W = np.array([EXAM_WEIGHTS[k] for k in EXAM_LABELS], dtype=np.float64)
_I = {k: i for i, k in enumerate(EXAM_LABELS)}
NEG, IND = _I["negative_exam_for_pe"], _I["indeterminate"]
CHRONIC, ACUTE_CHRONIC = _I["chronic_pe"], _I["acute_and_chronic_pe"]
SIDES = [_I["central_pe"], _I["leftsided_pe"], _I["rightsided_pe"]]
RV_GTE, RV_LT = _I["rv_lv_ratio_gte_1"], _I["rv_lv_ratio_lt_1"]
# Exam labels that a negative study must keep <= 0.5 (everything but its own pair).
_NEG_OTHERS = [i for i in range(len(EXAM_LABELS)) if i not in (NEG, IND)]

# Names of the consistency rules, as consistency_violations() reports them.
RULE_POS_NEGATIVE = "positive: negative_exam_for_pe > 0.5"
RULE_POS_INDETERMINATE = "positive: indeterminate > 0.5"
RULE_POS_CHRONIC = "positive: chronic_pe and acute_and_chronic_pe both > 0.5"
RULE_POS_SIDE = "positive: none of central/left/right > 0.5"
RULE_POS_RV_LV = "positive: rv_lv not exactly one > 0.5"
RULE_NEG_PAIR = "negative: negative_exam_for_pe/indeterminate not exactly one > 0.5"
RULE_NEG_OTHER = {i: f"negative: {EXAM_LABELS[i]} > 0.5" for i in _NEG_OTHERS}
CONSISTENCY_RULES = (RULE_POS_NEGATIVE, RULE_POS_INDETERMINATE, RULE_POS_CHRONIC, RULE_POS_SIDE,
                     RULE_POS_RV_LV, RULE_NEG_PAIR, *RULE_NEG_OTHER.values())


class StudyLabels(NamedTuple):
    """Ground truth per study, as labels_from_train_csv() returns it (unpacks as a 4-tuple)."""
    study_ids: list
    exam_true: np.ndarray  # (N, 9) float
    sops: list  # N arrays of SOPInstanceUID strings, z order where known
    img_true: list  # N float arrays


# ---------------------------------------------------------------------------- shapes

def _exam_array(a, name):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(EXAM_LABELS):
        raise ValueError(f"{name} must have shape (N, {len(EXAM_LABELS)}), got {a.shape}")
    return a


def _flat(arrays, n, name):
    """Concatenate N per-study arrays; return (flat float array, lengths)."""
    if len(arrays) != n:
        raise ValueError(f"{name} has {len(arrays)} studies, expected {n}")
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if n else np.zeros(0)
    return flat, lengths


def _bce(y, p):
    p = np.clip(p, EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def _image_q(img_true_flat, lengths):
    """Per-image weight q_i (fraction of positive images in its study), and the per-study q."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.bincount(owner, weights=img_true_flat, minlength=len(lengths))
    q = pos / np.maximum(lengths, 1)
    return q[owner], q


# ---------------------------------------------------------------------------- score

def weighted_log_loss(exam_true, exam_pred, img_true, img_pred):
    """The competition score (lower is better), contract section 6.

    ``(sum_i sum_k w_k BCE_ik + sum_i sum_j w q_i BCE_ij) / (sum_i sum_k w_k + sum_i n_i w q_i)``
    with q_i the fraction of positive images of study i, so negative studies add no image term.
    """
    exam_true = _exam_array(exam_true, "exam_true")
    exam_pred = _exam_array(exam_pred, "exam_pred")
    n = len(exam_true)
    if exam_pred.shape != exam_true.shape:
        raise ValueError(f"exam_pred {exam_pred.shape} does not match exam_true {exam_true.shape}")
    if n == 0:
        raise ValueError("no studies to score")
    yt, lengths = _flat(img_true, n, "img_true")
    yp, lengths_p = _flat(img_pred, n, "img_pred")
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
    """Per-label DataFrame ``label, logloss, auc`` (LABELS order), unweighted across labels.

    Exam labels: mean BCE over studies. Image label: BCE weighted by q_i exactly as in the
    score (sum_i sum_j q_i BCE_ij / sum_i n_i q_i), so images of negative studies do not count
    and the score is the label-weighted mean of these numbers; NaN without positive images.
    AUC (sklearn roc_auc_score) over studies, and over all images for the image label; NaN
    when only one class is present.
    """
    exam_true = _exam_array(exam_true, "exam_true")
    exam_pred = _exam_array(exam_pred, "exam_pred")
    n = len(exam_true)
    yt, lengths = _flat(img_true, n, "img_true")
    yp, _ = _flat(img_pred, n, "img_pred")
    q_img, _ = _image_q(yt, lengths)
    rows = []
    bce = _bce(exam_true, exam_pred)
    for k, label in enumerate(EXAM_LABELS):
        rows.append((label, float(bce[:, k].mean()) if n else float("nan"),
                     _auc(exam_true[:, k], exam_pred[:, k])))
    den = float(q_img.sum())
    img_ll = float((q_img * _bce(yt, yp)).sum()) / den if den > 0 else float("nan")
    rows.append((IMAGE_LABEL, img_ll, _auc(yt, yp)))
    return pd.DataFrame(rows, columns=["label", "logloss", "auc"])


# ---------------------------------------------------------------------------- consistency

def is_positive(img_pred):
    """(N,) bool: the study is called positive, i.e. its max image probability is > 0.5.
    A study without images is negative."""
    return np.array([len(p) > 0 and float(np.max(p)) > THRESHOLD for p in img_pred], dtype=bool)


def _check_inputs(exam_pred, img_pred):
    exam_pred = _exam_array(exam_pred, "exam_pred")
    if len(img_pred) != len(exam_pred):
        raise ValueError(f"img_pred has {len(img_pred)} studies, exam_pred {len(exam_pred)}")
    return exam_pred


def _rule_masks(exam_pred, pos):
    """{rule name: (N,) bool mask of studies breaking it}."""
    h = exam_pred > THRESHOLD
    neg = ~pos
    masks = {
        RULE_POS_NEGATIVE: pos & h[:, NEG],
        RULE_POS_INDETERMINATE: pos & h[:, IND],
        RULE_POS_CHRONIC: pos & h[:, CHRONIC] & h[:, ACUTE_CHRONIC],
        RULE_POS_SIDE: pos & ~h[:, SIDES].any(axis=1),
        RULE_POS_RV_LV: pos & (h[:, RV_GTE] == h[:, RV_LT]),
        RULE_NEG_PAIR: neg & (h[:, NEG] == h[:, IND]),
    }
    for i, name in RULE_NEG_OTHER.items():
        masks[name] = neg & h[:, i]
    return masks


def consistency_violations(exam_pred, img_pred):
    """For each study, the list of consistency rules (names from CONSISTENCY_RULES) it breaks."""
    exam_pred = _check_inputs(exam_pred, img_pred)
    masks = _rule_masks(exam_pred, is_positive(img_pred))
    out = [[] for _ in range(len(exam_pred))]
    for name in CONSISTENCY_RULES:
        for i in np.flatnonzero(masks[name]):
            out[i].append(name)
    return out


def _exactly_one(out, rows, a, b):
    """Make exactly one of columns a, b > 0.5 on ``rows``: if both are low the larger becomes
    0.501, if both are high the smaller becomes 0.499 (a tie favours column a)."""
    x, y = out[:, a], out[:, b]
    x_wins = x >= y
    low = rows & (x <= THRESHOLD) & (y <= THRESHOLD)
    high = rows & (x > THRESHOLD) & (y > THRESHOLD)
    out[:, a] = np.where(low & x_wins, HIGH, np.where(high & ~x_wins, LOW, x))
    out[:, b] = np.where(low & ~x_wins, HIGH, np.where(high & x_wins, LOW, y))


def postprocess(exam_pred, img_pred):
    """The original's post-processing (contract section 6); returns a new (N, 9) array.

    Positive studies (max image probability > 0.5): negative_exam_for_pe and indeterminate
    capped at 0.499; if chronic and acute_and_chronic are both > 0.5 the smaller becomes 0.499;
    if none of central/left/right is > 0.5 the largest becomes 0.501; rv_lv pair made exactly
    one > 0.5. Negative studies: negative_exam_for_pe/indeterminate made exactly one > 0.5, the
    other seven capped at 0.499. Ties go to the label listed first. Image probabilities are
    not touched (the caller keeps its own img_pred). Inputs are not modified.
    """
    out = _check_inputs(exam_pred, img_pred).copy()
    pos = is_positive(img_pred)
    neg = ~pos

    # positive studies
    for k in (NEG, IND):
        out[:, k] = np.where(pos, np.minimum(out[:, k], LOW), out[:, k])
    c, ac = out[:, CHRONIC], out[:, ACUTE_CHRONIC]
    both = pos & (c > THRESHOLD) & (ac > THRESHOLD)
    out[:, CHRONIC] = np.where(both & (c < ac), LOW, c)
    out[:, ACUTE_CHRONIC] = np.where(both & (c >= ac), LOW, ac)
    sides = out[:, SIDES]
    none = pos & ~(sides > THRESHOLD).any(axis=1)
    rows = np.flatnonzero(none)
    out[rows, np.asarray(SIDES)[sides[rows].argmax(axis=1)]] = HIGH
    _exactly_one(out, pos, RV_GTE, RV_LT)

    # negative studies
    _exactly_one(out, neg, NEG, IND)
    for k in _NEG_OTHERS:
        out[:, k] = np.where(neg, np.minimum(out[:, k], LOW), out[:, k])
    return out


# ---------------------------------------------------------------------------- submission

def _exam_ids(study_ids):
    return [f"{s}_{label}" for s in study_ids for label in EXAM_LABELS]


def _wanted(study_ids, sops):
    """Every id a submission for these studies holds (9 exam ids per study, then the SOPs, as
    a str Index), the study each belongs to, and the number of images per study."""
    n = len(study_ids)
    if len(sops) != n:
        raise ValueError(f"sops has {len(sops)} studies, study_ids {n}")
    lengths = np.array([len(s) for s in sops], dtype=np.int64)
    sop_flat = (np.concatenate([np.asarray(s, dtype=object).reshape(-1) for s in sops])
                if n else np.zeros(0, dtype=object))
    ids = pd.Index(np.concatenate([np.array(_exam_ids(study_ids), dtype=object), sop_flat]),
                   dtype=object).astype(str)
    owner = np.concatenate([np.repeat(np.arange(n), len(EXAM_LABELS)), np.repeat(np.arange(n), lengths)])
    return ids, owner, lengths


def _lookup(df, source):
    """Series id -> value of a submission frame (ids as str; non-numbers become NaN)."""
    missing = [c for c in ("id", "label") if c not in df.columns]
    if missing:
        raise PipelineError(f"{source}: missing column(s) {', '.join(missing)} (need id,label)")
    return pd.Series(pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=np.float64),
                     index=pd.Index(df["id"], dtype=object).astype(str))


def _align(values, wanted):
    """Put submission ``values`` onto the ``wanted`` ids (one hash join).

    Returns (v: value per wanted id, NaN where absent, first row wins; count: rows per wanted
    id; extra: bool per submission row that matches no wanted id).
    """
    try:
        pos = wanted.get_indexer(values.index)
    except pd.errors.InvalidIndexError:
        raise ValueError("study ids and SOPs together are not unique") from None
    hit = pos >= 0
    count = np.bincount(pos[hit], minlength=len(wanted))
    v = np.full(len(wanted), np.nan)
    v[pos[hit][::-1]] = values.to_numpy()[hit][::-1]  # reversed: the first row of a duplicate wins
    return v, count, ~hit


def _valid(v):
    return np.isfinite(v) & (v >= 0) & (v <= 1)


def _split(v, n, lengths):
    """Flat values over _wanted ids -> (exam_pred (n, 9), img_pred list)."""
    n_exam = n * len(EXAM_LABELS)
    img = np.split(v[n_exam:], np.cumsum(lengths)[:-1]) if n else []
    return v[:n_exam].reshape(n, len(EXAM_LABELS)), img


def _extract(df, study_ids, sops, source, covered_only):
    """Predictions for the studies (all, or those with any row in ``df``) with the checks of
    from_submission; returns (exam_pred, img_pred, covered mask, rows matching no study)."""
    values = _lookup(df, source)
    wanted, owner, lengths = _wanted(study_ids, sops)
    n = len(study_ids)
    v, count, extra = _align(values, wanted)
    covered = np.bincount(owner, weights=count > 0, minlength=n) > 0
    take = covered[owner] if covered_only else np.ones(len(wanted), dtype=bool)
    for bad, what in ((take & (count == 0), "missing id"), (take & (count > 1), "duplicate id")):
        if bad.any():
            raise PipelineError(f"{source}: {what} {wanted[np.argmax(bad)]}")
    bad = take & ~_valid(v)
    if bad.any():
        i = int(np.argmax(bad))
        shown = v[i] if np.isfinite(v[i]) else "not a finite number"
        raise PipelineError(f"{source}: label of id {wanted[i]} is not a number in [0, 1] ({shown})")
    exam_pred, img_pred = _split(v, n, lengths)
    return exam_pred, img_pred, covered, int(extra.sum())


def to_submission(study_ids, exam_pred, sops, img_pred):
    """Submission frame ``id,label``: nine exam rows per study (``<study>_<label>``, studies in
    the given order), then one row per image (``id`` = SOPInstanceUID)."""
    exam_pred = _exam_array(exam_pred, "exam_pred")
    n = len(study_ids)
    if len(exam_pred) != n:
        raise ValueError(f"exam_pred has {len(exam_pred)} rows for {n} studies")
    ids, _, lengths = _wanted(study_ids, sops)
    img_flat, img_lengths = _flat(img_pred, n, "img_pred")
    if not np.array_equal(lengths, img_lengths):
        raise ValueError("sops and img_pred differ in the number of images of some study")
    return pd.DataFrame({"id": np.asarray(ids, dtype=object),
                         "label": np.concatenate([exam_pred.reshape(-1), img_flat])})


def from_submission(df, study_ids, sops, source="submission"):
    """Inverse of to_submission: ``(exam_pred (N, 9), img_pred list)`` for the given studies
    and SOPs; rows of other ids are ignored. Raises PipelineError naming the first missing id,
    a duplicated id, or a label that is not a number in [0, 1]; ``source`` (the file) starts
    the message."""
    exam_pred, img_pred, _, _ = _extract(df, study_ids, sops, source, covered_only=False)
    return exam_pred, img_pred


def validate_submission(df, study_ids, sops, max_examples=5):
    """Every problem that makes ``df`` an invalid submission for these studies, one line per
    kind with a count and the first ids: missing, extra or duplicate ids, labels that are not
    numbers in [0, 1], and each consistency rule broken (naming the studies). [] = valid."""
    def examples(ids):
        ids = [str(x) for x in ids]
        more = ", ..." if len(ids) > max_examples else ""
        return ", ".join(ids[:max_examples]) + more

    missing_cols = [c for c in ("id", "label") if c not in df.columns]
    if missing_cols:
        return [f"missing column(s) {', '.join(missing_cols)} (need id,label)"]
    values = _lookup(df, "submission")
    wanted, owner, lengths = _wanted(study_ids, sops)
    v, count, extra = _align(values, wanted)
    problems = []
    extra_ids = values.index[extra]
    dup = list(wanted[count > 1]) + list(extra_ids[extra_ids.duplicated()].unique())
    if dup:
        problems.append(f"{len(dup)} duplicate id(s): {examples(dup)}")
    if (count == 0).any():
        problems.append(f"{int((count == 0).sum())} missing id(s): {examples(wanted[count == 0])}")
    if len(extra_ids):
        problems.append(f"{len(extra_ids.unique())} extra id(s): {examples(extra_ids.unique())}")
    nan = (count > 0) & ~np.isfinite(v)
    if nan.any():
        problems.append(f"{int(nan.sum())} label(s) not a finite number: {examples(wanted[nan])}")
    out = (count > 0) & np.isfinite(v) & ~_valid(v)
    if out.any():
        problems.append(f"{int(out.sum())} label(s) outside [0, 1]: {examples(wanted[out])}")

    # Consistency, on the studies whose rows are all present and valid.
    n = len(study_ids)
    usable = np.bincount(owner, weights=~((count > 0) & _valid(v)), minlength=n) == 0
    if usable.any():
        exam_pred, img_pred = _split(v, n, lengths)
        keep = np.flatnonzero(usable)
        masks = _rule_masks(exam_pred[keep], is_positive([img_pred[i] for i in keep]))
        for name in CONSISTENCY_RULES:
            bad = keep[masks[name]]
            if len(bad):
                problems.append(f"consistency rule '{name}' broken by {len(bad)} study(ies): "
                                f"{examples(study_ids[i] for i in bad)}")
    return problems


# ---------------------------------------------------------------------------- labels

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
    if "z_pos_order" in df.columns:
        z = pd.to_numeric(df["z_pos_order"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(z).all():
            raise PipelineError(f"{source}: z_pos_order is not a number in some row")
        order = np.lexsort((z, codes))  # stable
    else:
        order = np.argsort(codes, kind="stable")  # stable: keeps the given order within a study
    sop = pd.Index(df["SOPInstanceUID"], dtype=object).astype(str)
    if not sop.is_unique:
        raise PipelineError(f"{source}: duplicate SOPInstanceUID {sop[sop.duplicated()][0]}")
    sop = np.asarray(sop, dtype=object)[order]
    vals = df[list(LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)[order]
    bad = ~_valid(vals)
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


def _as_labels(labels, source="labels"):
    return labels if isinstance(labels, StudyLabels) else labels_from_train_csv(labels, source)


def subset_labels(labels, keep):
    """The studies of ``labels`` (StudyLabels) where ``keep`` ((N,) bool) is true."""
    idx = np.flatnonzero(keep)
    return StudyLabels([labels.study_ids[i] for i in idx], labels.exam_true[idx],
                       [labels.sops[i] for i in idx], [labels.img_true[i] for i in idx])


def covered_studies(sub_df, labels, source="submission"):
    """(N,) bool: the studies of ``labels`` (StudyLabels or train.csv-layout frame) with at
    least one row (exam or image) in ``sub_df``."""
    labels = _as_labels(labels)
    values = _lookup(sub_df, source)
    wanted, owner, _ = _wanted(labels.study_ids, labels.sops)
    _, count, _ = _align(values, wanted)
    return np.bincount(owner, weights=count > 0, minlength=len(labels.study_ids)) > 0


# ---------------------------------------------------------------------------- prior

def prior_prediction(train_df, source="train csv"):
    """Label prior: the training mean of each of the 10 labels (exam labels over studies, the
    image label over images), as {label: float} in LABELS order. Takes a train.csv-layout
    frame or a StudyLabels."""
    labels = _as_labels(train_df, source)
    prior = {k: float(v) for k, v in zip(EXAM_LABELS, labels.exam_true.mean(axis=0))}
    prior[IMAGE_LABEL] = float(np.concatenate(labels.img_true).mean())
    return prior


def prior_submission(prior, study_ids, sops):
    """A submission predicting every label at its prior ({label: float}, e.g. from
    prior_prediction); not post-processed."""
    exam = np.tile([float(prior[k]) for k in EXAM_LABELS], (len(study_ids), 1))
    img = [np.full(len(s), float(prior[IMAGE_LABEL])) for s in sops]
    return to_submission(study_ids, exam, sops, img)


# ---------------------------------------------------------------------------- scoring

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
    labels = _as_labels(labels_df)
    exam_pred, img_pred, covered, unmatched = _extract(sub_df, labels.study_ids, labels.sops,
                                                       source, covered_only=True)
    if not covered.any():
        raise PipelineError(f"{source}: no id matches a study of the labels")
    idx = np.flatnonzero(covered)
    out = score_predictions(subset_labels(labels, covered), exam_pred[idx], [img_pred[i] for i in idx])
    out.update(n_studies_total=len(labels.study_ids), n_unmatched=unmatched, covered=covered)
    return out
