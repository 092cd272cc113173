"""The original solution's post-processing: exam predictions made consistent with the rules."""
import numpy as np

from .consistency import (
    ACUTE_CHRONIC,
    CHRONIC,
    IND,
    NEG,
    NEG_OTHERS,
    RV_GTE,
    RV_LT,
    SIDES,
    THRESHOLD,
    check_inputs,
    is_positive,
)

LOW, HIGH = 0.499, 0.501  # what post-processing moves a value to


def _exactly_one(out, rows, a, b):
    """Make exactly one of columns a, b > 0.5 on ``rows``: if both are low the larger becomes
    0.501, if both are high the smaller becomes 0.499 (a tie favours column a)."""
    x, y = out[:, a], out[:, b]
    x_wins = x >= y
    low = rows & (x <= THRESHOLD) & (y <= THRESHOLD)
    high = rows & (x > THRESHOLD) & (y > THRESHOLD)
    out[:, a] = np.where(low & x_wins, HIGH, np.where(high & ~x_wins, LOW, x))
    out[:, b] = np.where(low & ~x_wins, HIGH, np.where(high & x_wins, LOW, y))


def _fix_positive(out, pos):
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


def _fix_negative(out, neg):
    _exactly_one(out, neg, NEG, IND)
    for k in NEG_OTHERS:
        out[:, k] = np.where(neg, np.minimum(out[:, k], LOW), out[:, k])


def postprocess(exam_pred, img_pred):
    """The original's post-processing (docs/score.md); returns a new (N, 9) array.

    Positive studies (max image probability > 0.5): negative_exam_for_pe and indeterminate
    capped at 0.499; if chronic and acute_and_chronic are both > 0.5 the smaller becomes 0.499;
    if none of central/left/right is > 0.5 the largest becomes 0.501; rv_lv pair made exactly
    one > 0.5. Negative studies: negative_exam_for_pe/indeterminate made exactly one > 0.5, the
    other seven capped at 0.499. Ties go to the label listed first. Image probabilities are
    not touched (the caller keeps its own img_pred). Inputs are not modified.
    """
    out = check_inputs(exam_pred, img_pred).copy()
    pos = is_positive(img_pred)
    _fix_positive(out, pos)
    _fix_negative(out, ~pos)
    return out
