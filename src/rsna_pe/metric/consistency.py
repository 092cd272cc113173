"""The competition's consistency rules between a study's exam and image predictions."""
import numpy as np

from ..core.labels import EXAM_LABELS
from .arrays import exam_array

THRESHOLD = 0.5  # "> 0.5" is a positive call everywhere

_I = {k: i for i, k in enumerate(EXAM_LABELS)}
NEG, IND = _I["negative_exam_for_pe"], _I["indeterminate"]
CHRONIC, ACUTE_CHRONIC = _I["chronic_pe"], _I["acute_and_chronic_pe"]
SIDES = [_I["central_pe"], _I["leftsided_pe"], _I["rightsided_pe"]]
RV_GTE, RV_LT = _I["rv_lv_ratio_gte_1"], _I["rv_lv_ratio_lt_1"]
# Exam labels that a negative study must keep <= 0.5 (everything but its own pair).
NEG_OTHERS = [i for i in range(len(EXAM_LABELS)) if i not in (NEG, IND)]

# Names of the consistency rules, as consistency_violations() reports them.
RULE_POS_NEGATIVE = "positive: negative_exam_for_pe > 0.5"
RULE_POS_INDETERMINATE = "positive: indeterminate > 0.5"
RULE_POS_CHRONIC = "positive: chronic_pe and acute_and_chronic_pe both > 0.5"
RULE_POS_SIDE = "positive: none of central/left/right > 0.5"
RULE_POS_RV_LV = "positive: rv_lv not exactly one > 0.5"
RULE_NEG_PAIR = "negative: negative_exam_for_pe/indeterminate not exactly one > 0.5"
RULE_NEG_OTHER = {i: f"negative: {EXAM_LABELS[i]} > 0.5" for i in NEG_OTHERS}
CONSISTENCY_RULES = (RULE_POS_NEGATIVE, RULE_POS_INDETERMINATE, RULE_POS_CHRONIC, RULE_POS_SIDE,
                     RULE_POS_RV_LV, RULE_NEG_PAIR, *RULE_NEG_OTHER.values())


def is_positive(img_pred):
    """(N,) bool: the study is called positive, i.e. its max image probability is > 0.5.
    A study without images is negative."""
    return np.array([len(p) > 0 and float(np.max(p)) > THRESHOLD for p in img_pred], dtype=bool)


def check_inputs(exam_pred, img_pred):
    """exam_pred as an (N, 9) float array, checked against the N studies of img_pred."""
    exam_pred = exam_array(exam_pred, "exam_pred")
    if len(img_pred) != len(exam_pred):
        raise ValueError(f"img_pred has {len(img_pred)} studies, exam_pred {len(exam_pred)}")
    return exam_pred


def rule_masks(exam_pred, pos):
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
    exam_pred = check_inputs(exam_pred, img_pred)
    masks = rule_masks(exam_pred, is_positive(img_pred))
    out = [[] for _ in range(len(exam_pred))]
    for name in CONSISTENCY_RULES:
        for i in np.flatnonzero(masks[name]):
            out[i].append(name)
    return out
