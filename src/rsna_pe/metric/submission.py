"""The submission format: ``id,label`` with nine exam rows per study (``<study>_<label>``)
and one row per image (``id`` = SOPInstanceUID); writing, reading back and checking it."""
import numpy as np
import pandas as pd

from ..core.errors import PipelineError
from ..core.labels import EXAM_LABELS, IMAGE_LABEL, exam_ids
from .arrays import exam_array, flat, valid
from .consistency import CONSISTENCY_RULES, is_positive, rule_masks
from .truth import as_labels


def _wanted(study_ids, sops):
    """Every id a submission for these studies holds (9 exam ids per study, then the SOPs, as
    a str Index), the study each belongs to, and the number of images per study."""
    n = len(study_ids)
    if len(sops) != n:
        raise ValueError(f"sops has {len(sops)} studies, study_ids {n}")
    lengths = np.array([len(s) for s in sops], dtype=np.int64)
    sop_flat = (np.concatenate([np.asarray(s, dtype=object).reshape(-1) for s in sops])
                if n else np.zeros(0, dtype=object))
    ids = pd.Index(np.concatenate([np.array(exam_ids(study_ids), dtype=object), sop_flat]),
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


def _split(v, n, lengths):
    """Flat values over _wanted ids -> (exam_pred (n, 9), img_pred list)."""
    n_exam = n * len(EXAM_LABELS)
    img = np.split(v[n_exam:], np.cumsum(lengths)[:-1]) if n else []
    return v[:n_exam].reshape(n, len(EXAM_LABELS)), img


def extract(df, study_ids, sops, source, covered_only):
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
    bad = take & ~valid(v)
    if bad.any():
        i = int(np.argmax(bad))
        shown = v[i] if np.isfinite(v[i]) else "not a finite number"
        raise PipelineError(f"{source}: label of id {wanted[i]} is not a number in [0, 1] ({shown})")
    exam_pred, img_pred = _split(v, n, lengths)
    return exam_pred, img_pred, covered, int(extra.sum())


def to_submission(study_ids, exam_pred, sops, img_pred):
    """Submission frame ``id,label``: nine exam rows per study (``<study>_<label>``, studies in
    the given order), then one row per image (``id`` = SOPInstanceUID)."""
    exam_pred = exam_array(exam_pred, "exam_pred")
    n = len(study_ids)
    if len(exam_pred) != n:
        raise ValueError(f"exam_pred has {len(exam_pred)} rows for {n} studies")
    ids, _, lengths = _wanted(study_ids, sops)
    img_flat, img_lengths = flat(img_pred, n, "img_pred")
    if not np.array_equal(lengths, img_lengths):
        raise ValueError("sops and img_pred differ in the number of images of some study")
    return pd.DataFrame({"id": np.asarray(ids, dtype=object),
                         "label": np.concatenate([exam_pred.reshape(-1), img_flat])})


def from_submission(df, study_ids, sops, source="submission"):
    """Inverse of to_submission: ``(exam_pred (N, 9), img_pred list)`` for the given studies
    and SOPs; rows of other ids are ignored. Raises PipelineError naming the first missing id,
    a duplicated id, or a label that is not a number in [0, 1]; ``source`` (the file) starts
    the message."""
    exam_pred, img_pred, _, _ = extract(df, study_ids, sops, source, covered_only=False)
    return exam_pred, img_pred


def _examples(ids, max_examples):
    ids = [str(x) for x in ids]
    more = ", ..." if len(ids) > max_examples else ""
    return ", ".join(ids[:max_examples]) + more


def _id_problems(values, wanted, v, count, extra, max_examples):
    """Missing, extra and duplicate ids, and labels that are not numbers in [0, 1]."""
    problems = []
    extra_ids = values.index[extra]
    dup = list(wanted[count > 1]) + list(extra_ids[extra_ids.duplicated()].unique())
    if dup:
        problems.append(f"{len(dup)} duplicate id(s): {_examples(dup, max_examples)}")
    if (count == 0).any():
        problems.append(f"{int((count == 0).sum())} missing id(s): "
                        f"{_examples(wanted[count == 0], max_examples)}")
    if len(extra_ids):
        problems.append(f"{len(extra_ids.unique())} extra id(s): "
                        f"{_examples(extra_ids.unique(), max_examples)}")
    nan = (count > 0) & ~np.isfinite(v)
    if nan.any():
        problems.append(f"{int(nan.sum())} label(s) not a finite number: "
                        f"{_examples(wanted[nan], max_examples)}")
    out = (count > 0) & np.isfinite(v) & ~valid(v)
    if out.any():
        problems.append(f"{int(out.sum())} label(s) outside [0, 1]: "
                        f"{_examples(wanted[out], max_examples)}")
    return problems


def _rule_problems(study_ids, owner, lengths, v, count, max_examples):
    """Each consistency rule broken, on the studies whose rows are all present and valid."""
    n = len(study_ids)
    usable = np.bincount(owner, weights=~((count > 0) & valid(v)), minlength=n) == 0
    if not usable.any():
        return []
    exam_pred, img_pred = _split(v, n, lengths)
    keep = np.flatnonzero(usable)
    masks = rule_masks(exam_pred[keep], is_positive([img_pred[i] for i in keep]))
    problems = []
    for name in CONSISTENCY_RULES:
        bad = keep[masks[name]]
        if len(bad):
            problems.append(f"consistency rule '{name}' broken by {len(bad)} study(ies): "
                            f"{_examples((study_ids[i] for i in bad), max_examples)}")
    return problems


def validate_submission(df, study_ids, sops, max_examples=5):
    """Every problem that makes ``df`` an invalid submission for these studies, one line per
    kind with a count and the first ids: missing, extra or duplicate ids, labels that are not
    numbers in [0, 1], and each consistency rule broken (naming the studies). [] = valid."""
    missing_cols = [c for c in ("id", "label") if c not in df.columns]
    if missing_cols:
        return [f"missing column(s) {', '.join(missing_cols)} (need id,label)"]
    values = _lookup(df, "submission")
    wanted, owner, lengths = _wanted(study_ids, sops)
    v, count, extra = _align(values, wanted)
    return (_id_problems(values, wanted, v, count, extra, max_examples)
            + _rule_problems(study_ids, owner, lengths, v, count, max_examples))


def covered_studies(sub_df, labels, source="submission"):
    """(N,) bool: the studies of ``labels`` (StudyLabels or train.csv-layout frame) with at
    least one row (exam or image) in ``sub_df``."""
    labels = as_labels(labels)
    values = _lookup(sub_df, source)
    wanted, owner, _ = _wanted(labels.study_ids, labels.sops)
    _, count, _ = _align(values, wanted)
    return np.bincount(owner, weights=count > 0, minlength=len(labels.study_ids)) > 0


def prior_submission(prior, study_ids, sops):
    """A submission predicting every label at its prior ({label: float}, e.g. from
    prior_prediction); not post-processed."""
    exam = np.tile([float(prior[k]) for k in EXAM_LABELS], (len(study_ids), 1))
    img = [np.full(len(s), float(prior[IMAGE_LABEL])) for s in sops]
    return to_submission(study_ids, exam, sops, img)
