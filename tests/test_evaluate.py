"""src/evaluate.py on small csv files: one file, the cross-validation average, the prior, errors."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluate
from rsna_pe import metric
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, LABELS

SRC = Path(__file__).resolve().parents[1] / "src"
K = {k: i for i, k in enumerate(EXAM_LABELS)}


def labels_frame():
    """train.csv layout, rows shuffled: s0 positive (2 of 3 images), s1 and s2 negative."""
    rows = []
    for study, img, ex in (("s0", [0, 1, 1], ("central_pe", "rv_lv_ratio_gte_1", "leftsided_pe")),
                           ("s1", [0, 0], ("negative_exam_for_pe",)),
                           ("s2", [0, 0, 0, 0], ("negative_exam_for_pe",))):
        for j, y in enumerate(img):
            r = dict(StudyInstanceUID=study, SeriesInstanceUID=study + ".9", SOPInstanceUID=f"{study}.{j}",
                     qa_motion=0, **{k: int(k in ex) for k in EXAM_LABELS})
            r[IMAGE_LABEL] = y
            rows.append(r)
    return pd.DataFrame(rows).sample(frac=1, random_state=1)


def consistent(rng, positive):
    """Random exam probabilities that satisfy the consistency rules."""
    v = rng.uniform(0.05, 0.45, 9)
    if positive:
        v[[K["central_pe"], K["rv_lv_ratio_gte_1"]]] = rng.uniform(0.55, 0.95, 2)
    else:
        v[K["negative_exam_for_pe"]] = rng.uniform(0.55, 0.95)
    return v


def predictions(seed):
    """Consistent predictions for the three studies (s0 positive, s1 and s2 negative)."""
    rng = np.random.default_rng(seed)
    lab = metric.labels_from_train_csv(labels_frame())
    exam = np.stack([consistent(rng, i == 0) for i in range(3)])
    img = [rng.uniform(0.55, 0.95, len(lab.sops[0]))] + [rng.uniform(0.05, 0.45, len(s)) for s in lab.sops[1:]]
    return metric.to_submission(lab.study_ids, exam, lab.sops, img)


def only(sub, studies):
    return sub[sub["id"].str.startswith(tuple(s + sep for s in studies for sep in "._"))]


@pytest.fixture
def files(tmp_path):
    labels = tmp_path / "labels.csv"
    labels_frame().to_csv(labels, index=False)
    return tmp_path, labels


def run_main(args, capsys):
    assert evaluate.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_one_file_prints_score_and_table(files, capsys):
    tmp, labels = files
    sub = predictions(0)
    sub.to_csv(tmp / "sub.csv", index=False)
    out = run_main(["--labels", labels, tmp / "sub.csv", "--json", tmp / "s.json"], capsys)
    want = metric.score_submission(sub, labels_frame())["score"]
    report = json.loads((tmp / "s.json").read_text())
    (f,) = report["files"]
    assert f["score"] == pytest.approx(want, rel=1e-12)
    assert (f["n_studies"], f["n_images"], f["n_inconsistent"]) == (3, 9, 0)
    assert list(f["per_label"]) == list(LABELS)
    assert "cross_validation" not in report
    assert f"{want:.4f}" in out and "weighted score" in out and "central_pe" in out
    assert "note:" not in out  # covers every study


def test_cross_validation_average_equals_hand_averaged_file(files, capsys):
    tmp, labels = files
    a, b = only(predictions(1), ["s0", "s1"]), only(predictions(2), ["s1", "s2"])
    a.to_csv(tmp / "a.csv", index=False)
    b.to_csv(tmp / "b.csv", index=False)
    out = run_main(["--labels", labels, tmp / "a.csv", tmp / "b.csv", "--json", tmp / "cv.json"], capsys)
    # Hand average: s1 from both files, s0 only from a, s2 only from b.
    m = pd.merge(a, b, on="id", how="outer", suffixes=("_a", "_b"))
    m["label"] = m[["label_a", "label_b"]].mean(axis=1)
    assert m.loc[m["id"] == "s1.0", "label"].item() == pytest.approx(
        (a.loc[a["id"] == "s1.0", "label"].item() + b.loc[b["id"] == "s1.0", "label"].item()) / 2)
    report = json.loads((tmp / "cv.json").read_text())
    cv = report["cross_validation"]
    assert cv["score"] == pytest.approx(metric.score_submission(m[["id", "label"]], labels_frame())["score"],
                                        rel=1e-12)
    assert (cv["n_studies"], cv["n_images"]) == (3, 9)
    # Each file is scored on its own two studies, and the output says so.
    assert [f["n_studies"] for f in report["files"]] == [2, 2]
    assert report["files"][0]["score"] == pytest.approx(metric.score_submission(a, labels_frame())["score"])
    assert "covers 2 of 3 studies" in out and "cross-validation" in out


def test_average_is_post_processed(files, capsys):
    tmp, labels = files
    a, b = predictions(3), predictions(4)
    # s1 (negative): a says negative_exam, b says indeterminate; the mean 0.5/0.5 breaks a rule.
    for sub, neg, ind in ((a, 0.9, 0.1), (b, 0.1, 0.9)):
        sub.loc[sub["id"] == "s1_negative_exam_for_pe", "label"] = neg
        sub.loc[sub["id"] == "s1_indeterminate", "label"] = ind
    a.to_csv(tmp / "a.csv", index=False)
    b.to_csv(tmp / "b.csv", index=False)
    run_main(["--labels", labels, tmp / "a.csv", tmp / "b.csv", "--json", tmp / "cv.json"], capsys)
    m = pd.concat([a, b]).groupby("id", as_index=False)["label"].mean()
    raw = metric.score_submission(m, labels_frame())
    assert raw["n_inconsistent"] == 1
    # Post-processing by hand: the pair tie goes to negative_exam_for_pe, raised to 0.501.
    m.loc[m["id"] == "s1_negative_exam_for_pe", "label"] = 0.501
    fixed = metric.score_submission(m, labels_frame())
    cv = json.loads((tmp / "cv.json").read_text())["cross_validation"]
    assert cv["n_inconsistent"] == 0
    assert cv["score"] == pytest.approx(fixed["score"], rel=1e-12)
    assert cv["score"] != pytest.approx(raw["score"], rel=1e-9)


def test_prior_baseline_on_the_same_studies(files, capsys):
    tmp, labels = files
    train = tmp / "train.csv"
    tr = labels_frame()
    tr["StudyInstanceUID"] = "t" + tr["StudyInstanceUID"]  # other studies: the prior comes from here
    tr["SOPInstanceUID"] = "t" + tr["SOPInstanceUID"]
    tr.loc[tr["StudyInstanceUID"] == "ts2", ["negative_exam_for_pe", "indeterminate"]] = [0, 1]
    tr.to_csv(train, index=False)
    only(predictions(5), ["s0", "s2"]).to_csv(tmp / "sub.csv", index=False)
    out = run_main(["--labels", labels, tmp / "sub.csv", "--prior", train, "--json", tmp / "p.json"], capsys)
    f = json.loads((tmp / "p.json").read_text())["files"][0]
    # Prior by hand: exam labels over the 3 training studies, image label over the 9 images.
    prior = {k: 0.0 for k in LABELS}
    prior.update(central_pe=1 / 3, rv_lv_ratio_gte_1=1 / 3, leftsided_pe=1 / 3, negative_exam_for_pe=1 / 3,
                 indeterminate=1 / 3, pe_present_on_image=2 / 9)
    lab = metric.labels_from_train_csv(labels_frame())
    keep = [0, 2]
    ids, sops = [lab.study_ids[i] for i in keep], [lab.sops[i] for i in keep]
    want = metric.score_submission(metric.prior_submission(prior, ids, sops), labels_frame())["score"]
    assert f["prior_score"] == pytest.approx(want, rel=1e-12)
    assert f["n_studies"] == 2 and "prior" in out and f"{want:.4f}" in out


def cli(*args, cwd):
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run([sys.executable, str(SRC / "evaluate.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_runs_and_reports_errors_in_one_line(files):
    tmp, labels = files
    predictions(6).to_csv(tmp / "sub.csv", index=False)
    ok = cli("--labels", labels, "sub.csv", cwd=tmp)
    assert ok.returncode == 0, ok.stderr
    assert "weighted score" in ok.stdout

    predictions(6).rename(columns={"label": "prob"}).to_csv(tmp / "bad.csv", index=False)
    bad = cli("--labels", labels, "bad.csv", cwd=tmp)
    assert bad.returncode == 2
    assert "bad.csv" in bad.stderr and "label" in bad.stderr

    missing = cli("--labels", labels, "nothere.csv", cwd=tmp)
    assert missing.returncode == 2 and "nothere.csv" in missing.stderr


@pytest.mark.parametrize("case", ["missing_row", "labels_column", "duplicate", "out_of_range"])
def test_bad_inputs_name_the_file(files, case):
    tmp, labels = files
    sub = predictions(7)
    if case == "missing_row":
        sub = sub[sub["id"] != "s2.3"]
        expect = "sub.csv: missing id s2.3"
    elif case == "labels_column":
        labels_frame().drop(columns="rv_lv_ratio_lt_1").to_csv(labels, index=False)
        expect = "labels.csv: missing column(s) rv_lv_ratio_lt_1"
    elif case == "duplicate":
        sub = pd.concat([sub, sub.iloc[:1]])
        expect = "sub.csv: duplicate id s0_negative_exam_for_pe"
    else:
        sub.loc[sub["id"] == "s0.1", "label"] = 1.2
        expect = "sub.csv: label of id s0.1 is not a number in [0, 1]"
    sub.to_csv(tmp / "sub.csv", index=False)
    with pytest.raises(evaluate.PipelineError, match=re.escape(expect)):
        evaluate.main(["--labels", str(labels), str(tmp / "sub.csv")])
