"""benchmarks/positive_label_auc.py: the chronicity analysis behind docs/options.md's learning
mark, on hand-made predictions and a tiny phantom plan."""
import json
import sys

import numpy as np
import pytest

from rsna_pe.core.config import REPO_ROOT
from rsna_pe.core.errors import InputFileError
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.synthetic.plan import plan

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import positive_label_auc as pla  # noqa: E402

K = {name: i for i, name in enumerate(EXAM_LABELS)}


def exams(classes):
    """(N, 9) truth of positive exams of the given age classes (and one negative exam last)."""
    t = np.zeros((len(classes) + 1, len(EXAM_LABELS)))
    for i, c in enumerate(classes):
        t[i, K["chronic_pe"]] = c == "chronic_only"
        t[i, K["acute_and_chronic_pe"]] = c == "acute_and_chronic"
    t[-1, K["negative_exam_for_pe"]] = 1
    return t


def test_auc_among_positives_and_against_each_age_class():
    truth = exams(["acute_only"] * 4 + ["chronic_only"] * 2 + ["acute_and_chronic"] * 2)
    pred = np.full_like(truth, 0.01)
    # acute and chronic exams rank above acute-only ones, level with chronic-only ones
    pred[:8, K["acute_and_chronic_pe"]] = [0.1, 0.2, 0.1, 0.2, 0.6, 0.7, 0.6, 0.7]
    pred[-1, K["acute_and_chronic_pe"]] = 0.99  # the negative exam does not count
    r = pla.analyse(truth, pred, "acute_and_chronic_pe", 50, np.random.default_rng(0))
    assert (r["n_positive"], r["n_label"]) == (8, 2)
    assert r["auc_against"] == {"acute_only": 1.0, "chronic_only": 0.5}
    assert r["auc"] == pytest.approx((2 * 4 + 2 * 1) / (2 * 6))
    assert r["auc_95"][0] <= r["auc"] <= r["auc_95"][1]
    assert r["p_positive_median_label"] == pytest.approx(0.99 * 0.99)


def test_the_minimum_over_pe_slices_finds_clots_of_both_ages():
    acute, chronic, none = {"acute"}, {"chronic"}, set()
    studies = {  # (CNN PE probability, chronic output, clot kinds) per slice
        "m1": (np.array([.9, .9, .1]), np.array([.9, .1, .0]), [chronic, acute, none]),
        "m2": (np.array([.9, .9, .9]), np.array([.8, .2, .7]), [chronic, acute, chronic]),
        "c1": (np.array([.9, .9, .2]), np.array([.7, .6, .0]), [chronic, chronic, none]),
        "c2": (np.array([.9, .1, .1]), np.array([.95, .1, .1]), [chronic, none, none]),
        "a1": (np.array([.9, .1, .1]), np.array([.3, .0, .0]), [acute, none, none]),
    }
    classes = {"m1": "acute_and_chronic", "m2": "acute_and_chronic", "c1": "chronic_only",
               "c2": "chronic_only", "a1": "acute_only"}
    r = pla.slice_report(studies, classes)
    assert (r["n_slices_chronic"], r["n_slices_acute"]) == (6, 3)
    assert r["slice_auc_chronic_vs_acute"] == 1.0
    assert r["min_auc_mixed_vs_chronic_only"] == 1.0  # 0.1 and 0.2 below 0.6 and 0.95
    assert r["max_auc_mixed_vs_chronic_only"] == 0.5  # 0.9 and 0.8: above 0.7, below 0.95


def test_clot_ages_and_exam_classes_come_from_the_phantom_plan(tmp_path):
    params = dict(n_train=24, n_test=2, slices=[4, 6], matrix=64, seed=3, positive_fraction=0.5)
    (tmp_path / "synthetic.json").write_text(json.dumps({"generator": "rsna_pe.synthetic", **params}))
    ages, classes = pla.slice_ages(tmp_path)
    specs = [s for s in plan(**params) if s.split == "train"]
    assert set(classes) == {s.study_uid for s in specs}
    for spec in specs:
        pe = spec.image_labels()
        assert [bool(ages[spec.sop_uid(k)]) for k in range(spec.n_slices)] == [bool(x) for x in pe]
        lab, kinds = spec.labels, set().union(*(ages[spec.sop_uid(k)] for k in range(spec.n_slices)))
        want = ("not_positive" if lab["negative_exam_for_pe"] or lab["indeterminate"] else
                "acute_and_chronic" if kinds == {"acute", "chronic"} else
                "chronic_only" if kinds == {"chronic"} else "acute_only")
        assert classes[spec.study_uid] == want
    assert {"acute_only", "not_positive"} <= set(classes.values())


def test_paths_come_from_the_heads_demo_config(tmp_path):
    cfg = pla.head_config("combined_pool")
    assert cfg["dataset"]["cnn_run"] == "rexnet200_combined" and cfg["dataset"]["k_fold"] == 3
    assert pla.fold_csv(tmp_path, cfg) == tmp_path / "data/fold/ver1/train-jpegs-64-lungcrop/train.csv"  # its CNN's set
    with pytest.raises(InputFileError, match="train-jpegs-64-lungcrop/train.csv: file not found"):
        pla.cv_predictions(tmp_path, cfg)
