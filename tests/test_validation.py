"""Site validation (src/validate_site.py, rsna_pe.validation): intervals, operating points,
calibration, subgroups, inputs, the report's safety, and the command end to end."""
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import validate_site
from rsna_pe import metric, synthetic
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, TRAIN_COLUMNS
from rsna_pe.validation import calibration, inputs, metrics, report, subgroups, thresholds
from rsna_pe.validation.metrics import bootstrap, percentile_interval


def _scores(rng, n_pos, n_neg, d):
    """Binormal scores with known AUC Phi(d / sqrt 2), squashed into (0, 1)."""
    s = np.concatenate([rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)])
    return np.r_[np.ones(n_pos), np.zeros(n_neg)], 1 / (1 + np.exp(-s))


# ----------------------------------------------------------------------------- intervals
def test_interval_holds_sklearn_auc_and_is_reproducible():
    y, p = _scores(np.random.default_rng(0), 30, 50, 1.0)
    p = np.round(p, 1)  # many ties, as post-processed predictions have
    m, _ = metrics.label_metrics(y, p, n_boot=500, seed=7, key="x")
    lo, hi = m["auc_ci"]
    assert m["auc"] == pytest.approx(roc_auc_score(y, p)) and lo < m["auc"] < hi
    again, _ = metrics.label_metrics(y, p, n_boot=500, seed=7, key="x")
    other, _ = metrics.label_metrics(y, p, n_boot=500, seed=8, key="x")
    assert again["auc_ci"] == m["auc_ci"] and other["auc_ci"] != m["auc_ci"]
    # Each resample's AUC (ties counted one half) is scikit-learn's on that resample.
    rng = np.random.default_rng(1)
    sp, sn = p[y == 1][rng.integers(0, 30, (5, 30))], p[y == 0][rng.integers(0, 50, (5, 50))]
    want = [roc_auc_score(np.r_[np.ones(30), np.zeros(50)], np.r_[a, b]) for a, b in zip(sp, sn)]
    assert metrics._auc_rows(sp, sn) == pytest.approx(want)


def test_interval_covers_the_true_auc_about_95_percent_of_draws():
    from math import erf, sqrt
    d = 1.2
    true_auc = 0.5 * (1 + erf(d / sqrt(2) / sqrt(2)))  # Phi(d / sqrt 2)
    rng = np.random.default_rng(123)
    draws, hits = 200, 0
    for i in range(draws):
        y, p = _scores(rng, 60, 60, d)
        lo, hi = percentile_interval(bootstrap(y, p, 200, seed=i, key="cov")["auc"])
        hits += lo <= true_auc <= hi
    # Binomial sd of the share at 0.95 over 200 draws is 0.015; the percentile bootstrap runs a
    # little narrow at this size.
    assert 0.88 <= hits / draws <= 0.99, hits / draws


def test_rates_at_a_threshold_and_wilson_interval():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.6])
    r = metrics.at_threshold(y, p, 0.6)  # p >= 0.6 is positive: ties at the threshold count
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 2, 2)
    assert r["sensitivity"]["value"] == pytest.approx(2 / 3) and r["ppv"]["value"] == pytest.approx(0.5)
    lo, hi = metrics.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # textbook values for 8/10
    assert np.isnan(metrics.wilson(0, 0)).all()


def test_ece_and_reliability_by_hand():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    ece, rows = metrics.reliability(y, p)
    # bin 0: mean p 0.05, half positive; bin 9: mean p 0.95, all positive.
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert rows[0]["n"] == 2 and rows[9]["frac_pos"] == 1 and sum(r["n"] for r in rows) == 4


# ----------------------------------------------------------------------------- operating points
def test_threshold_reaches_the_target_sensitivity():
    y = np.r_[np.ones(10), np.zeros(10)]
    p = np.r_[np.linspace(0.55, 1.0, 10), np.linspace(0.0, 0.6, 10)]
    t = thresholds.threshold_for_sensitivity(y, p, 0.9)
    assert (p[y == 1] >= t).mean() == 0.9 and t == pytest.approx(p[1])


def test_operating_points_round_trip_through_a_folder(tmp_path):
    y = pd.DataFrame({"pe_present": [1, 1, 0, 0, 1, 0], "central_pe": [1, 0, 0, 0, 0, 0]})
    p = pd.DataFrame({"pe_present": [0.9, 0.7, 0.2, 0.8, 0.4, 0.1], "central_pe": [0.6, 0.1, 0.0, 0.2, 0.3, 0.1]})
    doc = {"format": thresholds.FORMAT, "format_version": thresholds.FORMAT_VERSION, "rule": thresholds.RULE,
           "source": {"oof_files": ["a.csv"]}, "labels": thresholds.choose(y, p, (0.9, 0.95))}
    bundle = tmp_path / "models"
    bundle.mkdir()
    path = thresholds.write(doc, bundle)  # a folder gets operating_points.json
    assert path == bundle / thresholds.FILE
    assert thresholds.read(bundle) == doc == thresholds.read(path)
    assert thresholds.points_for(doc, "pe_present")[0]["threshold"] == 0.4
    bad = json.loads(path.read_text())
    bad["labels"]["pe_present"][0]["threshold"] = 1.5
    path.write_text(json.dumps(bad))
    with pytest.raises(PipelineError, match="threshold"):
        thresholds.read(bundle)
    path.write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(PipelineError, match="version"):
        thresholds.read(bundle)


# ----------------------------------------------------------------------------- calibration
def _miscalibrated(rng, n):
    """Truth from a logistic model, predictions twice as confident (logit x 2.5) plus a shift."""
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return y, 1 / (1 + np.exp(-(2.5 * z + 0.5)))


@pytest.mark.parametrize("method", calibration.METHODS)
def test_calibration_round_trip_lowers_held_out_ece(tmp_path, method):
    rng = np.random.default_rng(5)
    y, p = _miscalibrated(rng, 2000)
    frame = lambda a: pd.DataFrame({"pe_present": a})  # noqa: E731
    calib = calibration.split(y, 0.5, seed=3)
    assert abs(calib.mean() - 0.5) < 0.01 and abs(y[calib].mean() - y[~calib].mean()) < 0.01  # stratified
    doc = calibration.fit_block(frame(y), frame(p), calib, method, {"fraction": 0.5})
    back = calibration.read(calibration.write(doc, tmp_path).parent)
    assert back == json.loads(json.dumps(doc))
    if method == "temperature":
        assert back["labels"]["pe_present"]["temperature"] == pytest.approx(2.5, rel=0.15)
    after = calibration.apply_block(back, "pe_present", p[~calib])
    before_ece = metrics.reliability(y[~calib], p[~calib])[0]
    after_ece = metrics.reliability(y[~calib], after)[0]
    assert after_ece < 0.5 * before_ece
    assert roc_auc_score(y[~calib], after) == pytest.approx(roc_auc_score(y[~calib], p[~calib]))


def test_calibration_of_a_separable_split_stays_finite_and_tiny_labels_are_left_alone():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    t = calibration.fit(y, p, "temperature")["temperature"]
    platt = calibration.fit(y, p, "platt")
    assert 0 < t < 1 and 1 < platt["slope"] < np.inf and np.isfinite(platt["intercept"])
    few = pd.DataFrame({"pe_present": np.r_[np.ones(4), np.zeros(20)]})  # 4 positives: under the minimum
    doc = calibration.fit_block(few, few * 0.8 + 0.1, np.ones(24, bool), "platt", {})
    assert doc["labels"] == {} and calibration.MIN_PER_CLASS == 5


# ----------------------------------------------------------------------------- subgroups
def test_small_subgroups_are_pooled_and_named():
    values = pd.Series(["GE"] * 30 + ["Siemens"] * 25 + ["Canon"] * 4 + ["Philips"] * 3 + [None] * 2,
                       index=[f"s{i:02d}" for i in range(64)])
    gs = subgroups.groups(subgroups.values_of("manufacturer", values), min_size=20)
    assert [(g.name, len(g.studies)) for g in gs] == [
        ("GE", 30), ("Siemens", 25), ("pooled: Canon, Philips, unknown", 9)]
    assert gs[2].pooled_from == ["Canon", "Philips", "unknown"]
    assert [g.small for g in gs] == [False, False, True]
    notes = subgroups.pooled_notes({"manufacturer": gs}, 20)
    assert len(notes) == 1 and "3 groups under 20 studies pooled into one of 9 (still under" in notes[0]
    # A single small group has nothing to pool with: it keeps its name and the note says so.
    one = subgroups.groups(pd.Series(["80"] * 25 + ["120"] * 5), min_size=20)
    assert [(g.name, len(g.studies), g.small) for g in one] == [("80", 25, False), ("120", 5, True)]
    assert "group 120 has 5 studies, under 20" in subgroups.pooled_notes({"kvp": one}, 20)[0]
    thick = subgroups.values_of("slice_thickness", pd.Series(["0.625", "2.5", "5.0", "65.8", ""]))
    assert thick.tolist() == ["<= 1.25 mm", "1.25-3 mm", "3-5 mm", "> 5 mm", "unknown"]
    assert subgroups.values_of("kvp", pd.Series(["120.0", "80"])).tolist() == ["120", "80"]


# ----------------------------------------------------------------------------- inputs
def test_labels_aliases_derivation_and_errors(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("study,Negative_Exam,indeterminate,central_pe\na,1,0,0\nb,0,0,1\nc,0,1,\n")
    lab = inputs.read_labels(f)
    assert lab.table["pe_present"].tolist() == [0, 1, 0]
    assert np.isnan(lab.table.loc["c", "central_pe"]) and "derived" in lab.notes[0]
    f.write_text("StudyInstanceUID,pe_present\na,yes\n")
    with pytest.raises(PipelineError, match="not 0, 1 or blank"):
        inputs.read_labels(f)
    f.write_text("StudyInstanceUID,central_pe\na,1\n")
    with pytest.raises(PipelineError, match="needs pe_present or negative_exam_for_pe"):
        inputs.read_labels(f)


def test_prediction_json_folder_with_acquisition(tmp_path):
    for i, (study, peak) in enumerate((("s1", 0.9), ("s2", 0.2))):
        d = tmp_path / f"x{i}"
        d.mkdir()
        doc = {"study": study, "exam": {k: 0.3 for k in EXAM_LABELS},
               "slices": [{"sop": f"{study}.{k}", IMAGE_LABEL: v} for k, v in enumerate((0.1, peak))],
               "acquisition": {"manufacturer": "ACME", "kvp": 100, "PatientName": "must not be read"}}
        (d / "prediction.json").write_text(json.dumps(doc))
    preds = inputs.read_predictions(tmp_path)
    assert sorted(preds.images) == ["s1", "s2"] and preds.acquisition.loc["s1", "kvp"] == "100"
    assert list(preds.acquisition.columns) == ["manufacturer", "model", "kvp", "slice_thickness", "kernel"]
    labels = inputs.SiteLabels(pd.DataFrame({"pe_present": [1.0, 0.0]}, index=["s1", "s2"]), None, None, [])
    assert inputs.match(labels, preds).p["pe_present"].tolist() == [0.9, 0.2]


def test_acquisition_fields_from_dicom_headers(tmp_path):
    shift = synthetic.ScannerShift(manufacturer="OTHERVENDOR", model="SYNTH-CT 2", kvp=80, kernel="SHARP")
    data = synthetic.generate(tmp_path / "data", 0, 2, slices=(3, 3), matrix=32, workers=1, scanner=shift)
    validate_site.main(["acquisition", str(data.root / "test"), "--out", str(tmp_path / "acq.csv")])
    acq = pd.read_csv(tmp_path / "acq.csv", dtype=str)
    assert list(acq.columns) == ["StudyInstanceUID", "manufacturer", "model", "kvp", "slice_thickness", "kernel"]
    assert set(acq.StudyInstanceUID) == set(data.test_labels.StudyInstanceUID)
    assert (acq.manufacturer == "OTHERVENDOR").all() and (acq.kernel == "SHARP").all() and (acq.kvp == "80").all()
    text = (tmp_path / "acq.csv").read_text()
    assert not any(f"SYN{s[-8:]}" in text for s in acq.StudyInstanceUID)  # PatientID stays in the header


# ----------------------------------------------------------------------------- the page
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_has_no_script_and_escapes_values():
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    blocks = [("h1", evil), ("p", evil), ("ul", [evil]), ("table", ["a", evil], [[evil, "1 | 2"]]),
              ("img", "roc.png", b"\x89PNG", evil)]
    page = report.render_html(blocks)
    parser = _Tags()
    parser.feed(page)
    names = [t for t, _ in parser.tags]
    assert "script" not in names and names.count("img") == 1
    img = next(a for t, a in parser.tags if t == "img")
    assert img["src"].startswith("data:image/png;base64,") and "onerror" not in img
    assert evil in "".join(parser.text)  # shown as text, not markup
    csp = next(a for t, a in parser.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp["content"] == report.CSP and "script-src" not in csp["content"]
    md = report.render_md(blocks)
    assert "<script>" not in md and "1 \\| 2" in md


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A tiny site: the synthetic plan's labels (no pixels drawn) in train.csv layout, and a
    post-processed submission that sees PE with some noise."""
    root = tmp_path_factory.mktemp("site")
    specs = synthetic.plan(0, 80, slices=(4, 6), matrix=32, seed=11, positive_fraction=0.5)
    rows = [{"StudyInstanceUID": s.study_uid, "SeriesInstanceUID": s.series_uid, "SOPInstanceUID": s.sop_uid(k),
             IMAGE_LABEL: int(v), **s.labels} for s in specs for k, v in enumerate(s.image_labels())]
    truth = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
    truth.to_csv(root / "test_labels.csv", index=False)
    lab = metric.labels_from_train_csv(truth)
    rng = np.random.default_rng(0)
    noisy = lambda a: np.clip(0.75 * a + 0.12 + rng.normal(0, 0.3, np.shape(a)), 0.01, 0.99)  # noqa: E731
    img = [noisy(t) for t in lab.img_true]
    exam = metric.postprocess(noisy(lab.exam_true), img)
    metric.to_submission(lab.study_ids, exam, lab.sops, img).to_csv(root / "submission.csv", index=False)
    (root / "evil.csv").write_text("StudyInstanceUID,site\n" + "\n".join(
        f"{s},{'<b>north</b>' if i % 2 else 'south'}" for i, s in enumerate(lab.study_ids)) + "\n")
    return root


def test_command_end_to_end(site, capsys):
    out = site / "out"
    op = validate_site.main(["operating-points", "--labels", str(site / "test_labels.csv"),
                             str(site / "submission.csv"), "--out", str(site)])
    assert op is None and (site / thresholds.FILE).is_file()
    validate_site.main(["--labels", str(site / "test_labels.csv"), str(site / "submission.csv"),
                        "--out", str(out), "--operating-points", str(site), "--calibrate-split", "0.5",
                        "--subgroups", str(site / "evil.csv"), "--n-boot", "200", "--min-group", "10"])
    text = (out / "metrics.json").read_text()
    res = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert res["inputs"]["n_studies"] == 80
    assert res["competition_score"]["kind"] == "full"
    want = metric.score_submission(pd.read_csv(site / "submission.csv", dtype={"id": str}),
                                   pd.read_csv(site / "test_labels.csv", dtype=str).pipe(_typed))["score"]
    assert res["competition_score"]["value"] == pytest.approx(want)
    pe = res["labels"]["pe_present"]
    assert pe["n"] == 80 and pe["auc_ci"][0] <= pe["auc"] <= pe["auc_ci"][1]
    assert [op["target_sensitivity"] for op in pe["fixed"]] == [0.9, 0.95] and pe["site_best"]
    assert {g["group"] for g in res["subgroups"]["site"]} == {"<b>north</b>", "south"}
    assert set(res["calibration"]["labels"]) >= {"pe_present"}
    for name in ("report.md", "report.html", "roc.png", "reliability.png", "forest.png",
                 "calibration.png", "calibration.json"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert "<b>north</b>" not in page and "&lt;b&gt;north&lt;/b&gt;" in page and "<script" not in page
    assert "competition score" in capsys.readouterr().out


def _typed(df):
    for c in TRAIN_COLUMNS[3:]:
        df[c] = df[c].astype(np.int64)
    return df


def test_command_with_exam_labels_only(site, tmp_path):
    # A site with one row per study and a few labels: the score is not computed and says why;
    # the submission's image rows (pe_present's prediction) need --images to find their studies.
    truth = pd.read_csv(site / "test_labels.csv", dtype={"StudyInstanceUID": str, "SOPInstanceUID": str})
    per_study = truth.groupby("StudyInstanceUID", as_index=False).agg(
        negative_exam_for_pe=("negative_exam_for_pe", "first"), central_pe=("central_pe", "first"),
        pe=(IMAGE_LABEL, "max"))  # "pe": an accepted name of pe_present
    per_study.to_csv(tmp_path / "labels.csv", index=False)
    truth[["StudyInstanceUID", "SOPInstanceUID"]].to_csv(tmp_path / "test.csv", index=False)
    res = validate_site.site.run(tmp_path / "labels.csv", site / "submission.csv", tmp_path / "a", n_boot=50)
    assert res["competition_score"]["value"] is None and "nine exam labels" in res["competition_score"]["note"]
    assert set(res["labels"]) == {"negative_exam_for_pe", "central_pe"}
    assert any("pe_present: labelled but not predicted" in n for n in res["notes"])
    res = validate_site.site.run(tmp_path / "labels.csv", site / "submission.csv", tmp_path / "b", n_boot=50,
                                 images_csv=tmp_path / "test.csv")
    assert set(res["labels"]) == {"pe_present", "negative_exam_for_pe", "central_pe"}
    assert res["labels"]["pe_present"]["n"] == 80


def test_command_errors_are_one_line(site, tmp_path):
    with pytest.raises(PipelineError, match="no study of the labels"):
        (tmp_path / "l.csv").write_text("StudyInstanceUID,pe_present\nzzz,1\n")
        validate_site.site.run(tmp_path / "l.csv", site / "submission.csv", tmp_path / "o", n_boot=10)
