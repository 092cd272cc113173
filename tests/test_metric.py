"""The competition score, consistency rules, post-processing and submission format."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsna_pe import metric
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, LABELS

# The competition's weights (docs/score.md), typed out here so a wrong weight or order in the code shows up.
W = dict(negative_exam_for_pe=0.0736196319, indeterminate=0.09202453988, chronic_pe=0.1042944785,
         acute_and_chronic_pe=0.1042944785, central_pe=0.1877300613, leftsided_pe=0.06257668712,
         rightsided_pe=0.06257668712, rv_lv_ratio_gte_1=0.2346625767, rv_lv_ratio_lt_1=0.0782208589)
W_IMG = 0.07361963
K = {k: i for i, k in enumerate(EXAM_LABELS)}


def bce(y, p):
    p = min(max(p, 1e-15), 1 - 1e-15)  # the score's clipping
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def exam(**values):
    """A 9-vector of 0.1 with the named labels set."""
    v = np.full(len(EXAM_LABELS), 0.1)
    for k, x in values.items():
        v[K[k]] = x
    return v


# A positive study (3 of 4 images positive) and a negative one.
EXAM_TRUE = np.zeros((2, 9))
EXAM_TRUE[0, [K["central_pe"], K["rightsided_pe"], K["rv_lv_ratio_lt_1"]]] = 1
EXAM_TRUE[1, K["negative_exam_for_pe"]] = 1
IMG_TRUE = [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0])]
EXAM_PRED = np.array([[0.2, 0.1, 0.3, 0.1, 0.7, 0.4, 0.6, 0.2, 0.9],
                      [0.8, 0.1, 0.05, 0.05, 0.1, 0.2, 0.3, 0.1, 0.2]])
IMG_PRED = [np.array([0.9, 0.2, 0.6, 0.7]), np.array([0.1, 0.3])]


def hand_score(exam_true, exam_pred, img_true, img_pred):
    """The score's formula (docs/score.md), written out loop by loop."""
    num = den = 0.0
    for i in range(len(exam_true)):
        for k, label in enumerate(EXAM_LABELS):
            num += W[label] * bce(exam_true[i][k], exam_pred[i][k])
            den += W[label]
        q = sum(img_true[i]) / len(img_true[i])
        for y, p in zip(img_true[i], img_pred[i]):
            num += W_IMG * q * bce(y, p)
            den += W_IMG * q
    return num / den


def test_score_matches_hand_computation():
    # Hand value of the formula for this case, computed independently of the module.
    got = metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, IMG_PRED)
    assert got == pytest.approx(hand_score(EXAM_TRUE, EXAM_PRED, IMG_TRUE, IMG_PRED), rel=1e-12)


def test_score_of_one_half_everywhere_is_log2():
    # Every BCE is log 2, so the weighted mean is log 2 whatever the weights.
    got = metric.weighted_log_loss(EXAM_TRUE, np.full((2, 9), 0.5), IMG_TRUE, [np.full(4, 0.5), np.full(2, 0.5)])
    assert got == pytest.approx(math.log(2), rel=1e-12)


def test_single_positive_study_by_hand():
    # One study, q = 1/2: numerator and denominator typed out term by term.
    yt = np.zeros((1, 9))
    yt[0, K["rv_lv_ratio_gte_1"]] = 1
    yp = np.full((1, 9), 0.25)
    num = sum(W[k] * -math.log(0.75) for k in EXAM_LABELS if k != "rv_lv_ratio_gte_1")
    num += W["rv_lv_ratio_gte_1"] * -math.log(0.25)
    num += W_IMG * 0.5 * (-math.log(0.8) - math.log(0.6))  # y=1 p=0.8; y=0 p=0.4
    den = sum(W.values()) + W_IMG * 0.5 * 2
    got = metric.weighted_log_loss(yt, yp, [np.array([1.0, 0.0])], [np.array([0.8, 0.4])])
    assert got == pytest.approx(num / den, rel=1e-12)


def test_negative_exam_adds_no_image_term():
    # Any image predictions of the negative study leave the score unchanged.
    base = metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, IMG_PRED)
    worse = metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, [IMG_PRED[0], np.array([0.99, 0.999])])
    assert worse == pytest.approx(base, rel=1e-14)
    only_negative = metric.weighted_log_loss(EXAM_TRUE[1:], EXAM_PRED[1:], IMG_TRUE[1:], IMG_PRED[1:])
    exam_only = sum(W[k] * bce(EXAM_TRUE[1][i], EXAM_PRED[1][i]) for i, k in enumerate(EXAM_LABELS)) / sum(W.values())
    assert only_negative == pytest.approx(exam_only, rel=1e-12)


def test_perfect_prediction_scores_near_zero():
    got = metric.weighted_log_loss(EXAM_TRUE, EXAM_TRUE, IMG_TRUE, IMG_TRUE)
    assert 0 <= got < 1e-12
    # Certain but wrong is clipped to 1e-15, not infinite.
    wrong = metric.weighted_log_loss(EXAM_TRUE, 1 - EXAM_TRUE, IMG_TRUE, [1 - y for y in IMG_TRUE])
    assert wrong == pytest.approx(-math.log(1e-15), rel=1e-4)  # 1 - 1e-15 is inexact in floats


def test_prior_prediction_and_its_score():
    df = labels_frame()
    prior = metric.prior_prediction(df)
    # Exam means over studies (not rows): study s0 has 4 rows, s1 2, s2 3.
    assert prior["negative_exam_for_pe"] == pytest.approx(2 / 3)
    assert prior["central_pe"] == pytest.approx(1 / 3)
    assert prior[IMAGE_LABEL] == pytest.approx(3 / 9)  # image label over images
    lab = metric.labels_from_train_csv(df)
    res = metric.score_submission(metric.prior_submission(prior, lab.study_ids, lab.sops), df)
    exam_pred = [[prior[k] for k in EXAM_LABELS]] * 3
    img_pred = [[prior[IMAGE_LABEL]] * len(s) for s in lab.sops]
    assert res["score"] == pytest.approx(hand_score(lab.exam_true, exam_pred, lab.img_true, img_pred), rel=1e-12)


def test_per_label_table():
    t = metric.per_label_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, IMG_PRED).set_index("label")
    assert list(t.index) == list(LABELS)
    k = "central_pe"
    assert t.loc[k, "logloss"] == pytest.approx((bce(1, 0.7) + bce(0, 0.1)) / 2)
    assert t.loc[k, "auc"] == pytest.approx(1.0)
    assert np.isnan(t.loc["indeterminate", "auc"])  # one class only
    # Image label: q-weighted as in the score; the negative study's images count 0.
    img = sum(bce(y, p) for y, p in zip(IMG_TRUE[0], IMG_PRED[0])) / 4
    assert t.loc[IMAGE_LABEL, "logloss"] == pytest.approx(img)
    # The score is the label-weighted mean of the per-label numbers.
    wsum = sum(W[k] * 2 * t.loc[k, "logloss"] for k in EXAM_LABELS) + W_IMG * 3 * img
    assert metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, IMG_PRED) == pytest.approx(
        wsum / (2 * sum(W.values()) + W_IMG * 3))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED, IMG_TRUE, [IMG_PRED[0], np.array([0.1])])
    with pytest.raises(ValueError):
        metric.weighted_log_loss(EXAM_TRUE, EXAM_PRED[:, :8], IMG_TRUE, IMG_PRED)


# ------------------------------------------------------------------ consistency

POS_OK = exam(negative_exam_for_pe=0.2, indeterminate=0.1, chronic_pe=0.6, acute_and_chronic_pe=0.3,
              central_pe=0.7, rv_lv_ratio_gte_1=0.8, rv_lv_ratio_lt_1=0.2)
NEG_OK = exam(negative_exam_for_pe=0.9)
POS_IMG, NEG_IMG = np.array([0.2, 0.7]), np.array([0.2, 0.5])  # 0.5 is not > 0.5: negative

BREAKS = {  # rule -> (base, change that breaks only that rule)
    metric.RULE_POS_NEGATIVE: (POS_OK, dict(negative_exam_for_pe=0.6)),
    metric.RULE_POS_INDETERMINATE: (POS_OK, dict(indeterminate=0.51)),
    metric.RULE_POS_CHRONIC: (POS_OK, dict(acute_and_chronic_pe=0.7)),
    metric.RULE_POS_SIDE: (POS_OK, dict(central_pe=0.5)),
    metric.RULE_POS_RV_LV: (POS_OK, dict(rv_lv_ratio_lt_1=0.9)),
    metric.RULE_NEG_PAIR: (NEG_OK, dict(negative_exam_for_pe=0.4)),
    **{metric.RULE_NEG_OTHER[K[k]]: (NEG_OK, {k: 0.7}) for k in EXAM_LABELS
       if k not in ("negative_exam_for_pe", "indeterminate")},
}


def broken(rule):
    base, change = BREAKS[rule]
    v = base.copy()
    for k, x in change.items():
        v[K[k]] = x
    return v, POS_IMG if base is POS_OK else NEG_IMG


def test_every_rule_has_a_breaking_case():
    assert set(BREAKS) == set(metric.CONSISTENCY_RULES) and len(BREAKS) == 13


def test_consistent_bases_pass():
    assert metric.consistency_violations(np.stack([POS_OK, NEG_OK]), [POS_IMG, NEG_IMG]) == [[], []]


@pytest.mark.parametrize("rule", list(BREAKS))
def test_each_rule_is_detected(rule):
    v, img = broken(rule)
    assert metric.consistency_violations(v[None], [img]) == [[rule]]


def test_rv_lv_both_low_and_neg_pair_both_high_are_detected():
    v = POS_OK.copy()
    v[K["rv_lv_ratio_gte_1"]] = 0.3
    assert metric.consistency_violations(v[None], [POS_IMG]) == [[metric.RULE_POS_RV_LV]]
    v = NEG_OK.copy()
    v[K["indeterminate"]] = 0.6
    assert metric.consistency_violations(v[None], [NEG_IMG]) == [[metric.RULE_NEG_PAIR]]


def test_study_without_images_counts_as_negative():
    assert metric.consistency_violations(POS_OK[None], [np.zeros(0)]) != [[]]
    assert metric.consistency_violations(NEG_OK[None], [np.zeros(0)]) == [[]]


# ------------------------------------------------------------------ post-processing

def test_postprocess_positive_by_hand():
    v = exam(negative_exam_for_pe=0.7, indeterminate=0.2, chronic_pe=0.8, acute_and_chronic_pe=0.6,
             central_pe=0.3, leftsided_pe=0.45, rightsided_pe=0.4, rv_lv_ratio_gte_1=0.2, rv_lv_ratio_lt_1=0.4)
    out = metric.postprocess(v[None], [POS_IMG])[0]
    want = exam(negative_exam_for_pe=0.499, indeterminate=0.2, chronic_pe=0.8, acute_and_chronic_pe=0.499,
                central_pe=0.3, leftsided_pe=0.501, rightsided_pe=0.4, rv_lv_ratio_gte_1=0.2,
                rv_lv_ratio_lt_1=0.501)
    np.testing.assert_allclose(out, want)
    v[K["rv_lv_ratio_gte_1"]], v[K["rv_lv_ratio_lt_1"]] = 0.9, 0.6  # both high: smaller -> 0.499
    assert metric.postprocess(v[None], [POS_IMG])[0, K["rv_lv_ratio_lt_1"]] == 0.499


def test_postprocess_negative_by_hand():
    v = exam(negative_exam_for_pe=0.3, indeterminate=0.45, chronic_pe=0.8, central_pe=0.55, rv_lv_ratio_lt_1=0.2)
    out = metric.postprocess(v[None], [NEG_IMG])[0]
    want = np.full(9, 0.1)
    want[[K["negative_exam_for_pe"], K["indeterminate"], K["chronic_pe"], K["central_pe"], K["rv_lv_ratio_lt_1"]]] = \
        [0.3, 0.501, 0.499, 0.499, 0.2]
    np.testing.assert_allclose(out, want)


probs = st.one_of(st.sampled_from([0.0, 0.499, 0.5, 0.501, 1.0]), st.floats(0, 1))


@st.composite
def predictions(draw):
    n = draw(st.integers(1, 6))
    exam_pred = np.array(draw(st.lists(st.lists(probs, min_size=9, max_size=9), min_size=n, max_size=n)))
    img = [np.array(draw(st.lists(probs, max_size=5)), dtype=float) for _ in range(n)]
    return exam_pred, img


@settings(max_examples=200, deadline=None, derandomize=True)
@given(predictions())
def test_postprocess_is_consistent_idempotent_and_pure(pred):
    exam_pred, img_pred = pred
    exam_copy, img_copy = exam_pred.copy(), [p.copy() for p in img_pred]
    out = metric.postprocess(exam_pred, img_pred)
    assert metric.consistency_violations(out, img_pred) == [[] for _ in img_pred]
    np.testing.assert_array_equal(exam_pred, exam_copy)  # inputs untouched
    for a, b in zip(img_pred, img_copy):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metric.postprocess(out, img_pred), out)
    # Only moves values to the 0.499 / 0.501 marks, and never touches a consistent study.
    changed = out != exam_pred
    assert np.isin(out[changed], [0.499, 0.501]).all()
    ok = [not v for v in metric.consistency_violations(exam_pred, img_pred)]
    np.testing.assert_array_equal(out[ok][exam_pred[ok] <= 0.499], exam_pred[ok][exam_pred[ok] <= 0.499])


# ------------------------------------------------------------------ submission format

def labels_frame(shuffle=True, z=True):
    """train.csv layout: s0 positive (3 of 4 images), s1 and s2 negative."""
    rows = []
    for study, n, img, ex in (("s0", 4, [0, 1, 1, 1], dict(central_pe=1, rv_lv_ratio_gte_1=1)),
                              ("s1", 2, [0, 0], dict(negative_exam_for_pe=1)),
                              ("s2", 3, [0, 0, 0], dict(negative_exam_for_pe=1))):
        for j in range(n):
            r = dict(StudyInstanceUID=study, SeriesInstanceUID=study + "x", SOPInstanceUID=f"{study}_img{j}",
                     **{k: 0 for k in LABELS})
            r.update(ex)
            r[IMAGE_LABEL] = img[j]
            if z:
                r["z_pos_order"] = j
            rows.append(r)
    df = pd.DataFrame(rows)
    return df.sample(frac=1, random_state=3).reset_index(drop=True) if shuffle else df


def test_labels_from_train_csv_orders_by_study_and_z():
    lab = metric.labels_from_train_csv(labels_frame())
    assert lab.study_ids == ["s0", "s1", "s2"]
    assert list(lab.sops[0]) == ["s0_img0", "s0_img1", "s0_img2", "s0_img3"]
    np.testing.assert_array_equal(lab.img_true[0], [0, 1, 1, 1])
    assert lab.exam_true[0, K["central_pe"]] == 1 and lab.exam_true[1, K["negative_exam_for_pe"]] == 1
    # Without z_pos_order the given row order within a study is kept.
    df = labels_frame(shuffle=False, z=False).iloc[::-1]
    assert list(metric.labels_from_train_csv(df).sops[0]) == ["s0_img3", "s0_img2", "s0_img1", "s0_img0"]


def test_labels_from_train_csv_errors():
    with pytest.raises(PipelineError, match="central_pe"):
        metric.labels_from_train_csv(labels_frame().drop(columns="central_pe"), source="x.csv")
    df = labels_frame()
    df.loc[df["StudyInstanceUID"] == "s1", "central_pe"] = [0, 1]
    with pytest.raises(PipelineError, match="differs.*s1"):
        metric.labels_from_train_csv(df)


def test_submission_round_trip():
    lab = metric.labels_from_train_csv(labels_frame())
    rng = np.random.default_rng(0)
    exam_pred = rng.random((3, 9))
    img_pred = [rng.random(len(s)) for s in lab.sops]
    sub = metric.to_submission(lab.study_ids, exam_pred, lab.sops, img_pred)
    assert list(sub.columns) == ["id", "label"] and len(sub) == 27 + 9
    assert f"s1_{EXAM_LABELS[3]}" in set(sub["id"])
    assert sub.loc[sub["id"] == "s0_img2", "label"].item() == img_pred[0][2]
    back_exam, back_img = metric.from_submission(sub.sample(frac=1, random_state=0), lab.study_ids, lab.sops)
    np.testing.assert_array_equal(back_exam, exam_pred)
    for a, b in zip(back_img, img_pred):
        np.testing.assert_array_equal(a, b)


def test_from_submission_names_missing_and_duplicate_ids():
    lab = metric.labels_from_train_csv(labels_frame())
    sub = metric.to_submission(lab.study_ids, np.full((3, 9), 0.2), lab.sops, [np.full(len(s), 0.2) for s in lab.sops])
    with pytest.raises(PipelineError, match="sub.csv: missing id s1_img1"):
        metric.from_submission(sub[sub["id"] != "s1_img1"], lab.study_ids, lab.sops, source="sub.csv")
    with pytest.raises(PipelineError, match="duplicate id s2_indeterminate"):
        metric.from_submission(pd.concat([sub, sub[sub["id"] == "s2_indeterminate"]]), lab.study_ids, lab.sops)
    sub.loc[sub["id"] == "s0_img0", "label"] = 1.5
    with pytest.raises(PipelineError, match="s0_img0"):
        metric.from_submission(sub, lab.study_ids, lab.sops)


def valid_submission():
    ids = ["p", "n"]
    sops = [np.array(["p0", "p1"]), np.array(["n0", "n1"])]
    return metric.to_submission(ids, np.stack([POS_OK, NEG_OK]), sops, [POS_IMG, NEG_IMG]), ids, sops


def test_validate_accepts_a_valid_submission():
    sub, ids, sops = valid_submission()
    assert metric.validate_submission(sub, ids, sops) == []


@pytest.mark.parametrize("case, expect", [
    ("missing", "missing id(s): n1"),
    ("duplicate", "duplicate id(s): p_central_pe"),
    ("extra", "extra id(s): zzz"),
    ("above_one", "outside [0, 1]: p0"),
    ("negative", "outside [0, 1]: n_chronic_pe"),
    ("nan", "not a finite number: p1"),
    ("text", "not a finite number: n0"),
])
def test_validate_rejects(case, expect):
    sub, ids, sops = valid_submission()
    sub = sub.astype({"label": object})
    at = {"above_one": "p0", "negative": "n_chronic_pe", "nan": "p1", "text": "n0"}
    if case == "missing":
        sub = sub[sub["id"] != "n1"]
    elif case == "duplicate":
        sub = pd.concat([sub, sub[sub["id"] == "p_central_pe"]])
    elif case == "extra":
        sub = pd.concat([sub, pd.DataFrame({"id": ["zzz"], "label": [0.1]})])
    else:
        sub.loc[sub["id"] == at[case], "label"] = {"above_one": 1.01, "negative": -0.1, "nan": np.nan,
                                                   "text": "abc"}[case]
    problems = metric.validate_submission(sub, ids, sops)
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize("rule", list(BREAKS))
def test_validate_rejects_each_broken_rule_with_the_study(rule):
    v, img = broken(rule)
    ids, sops = ["good", "bad"], [np.array(["g0", "g1"]), np.array(["b0", "b1"])]
    sub = metric.to_submission(ids, np.stack([POS_OK, v]), sops, [POS_IMG, img])
    assert metric.validate_submission(sub, ids, sops) == [f"consistency rule '{rule}' broken by 1 study(ies): bad"]


def test_score_submission_scores_only_covered_studies():
    df = labels_frame()
    lab = metric.labels_from_train_csv(df)
    exam_pred = np.full((3, 9), 0.3)
    img_pred = [np.full(len(s), 0.4) for s in lab.sops]
    sub = metric.to_submission(lab.study_ids, exam_pred, lab.sops, img_pred)
    part = sub[sub["id"].str.startswith(("s0", "s2"))]
    res = metric.score_submission(part, df)
    assert (res["n_studies"], res["n_images"], res["n_studies_total"]) == (2, 7, 3)
    keep = [0, 2]
    want = hand_score(lab.exam_true[keep], exam_pred[keep], [lab.img_true[i] for i in keep],
                      [img_pred[i] for i in keep])
    assert res["score"] == pytest.approx(want, rel=1e-12)
    assert list(res["per_label"].columns) == ["label", "logloss", "auc", "auc_positive"]
    # A covered study must be complete.
    with pytest.raises(PipelineError, match="missing id s2_img1"):
        metric.score_submission(part[part["id"] != "s2_img1"], df)
    with pytest.raises(PipelineError, match="no id matches"):
        metric.score_submission(pd.DataFrame({"id": ["x"], "label": [0.5]}), df)
