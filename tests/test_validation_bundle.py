"""Site validation's files stored with the models: operating points and a calibration added to a
model bundle (export_models.py), read back through the bundle's verified bytes, the calibration
applied by stage 7 and predict_study.py, and the scanner fields both record per study."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import export_models
import inference
import predict_study
from rsna_pe import metric, synthetic
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS, exam_id
from rsna_pe.data.acquisition import FIELDS
from rsna_pe.infer import bundle
from rsna_pe.infer.calibration import apply_block, calibrate
from rsna_pe.validation import calibration, metrics, thresholds

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy" / "bundle"
DEMO = CONFIG_DIR / "demo" / "inference.yml"
# Steep maps: the legacy models' outputs sit near 0.5, and these move them across it.
STRONG = {"format": calibration.FORMAT, "format_version": calibration.FORMAT_VERSION, "method": "platt",
          "labels": {"pe_present": {"slope": 40.0, "intercept": 0.2},
                     "negative_exam_for_pe": {"slope": 30.0, "intercept": -0.3},
                     "rv_lv_ratio_lt_1": {"slope": 20.0, "intercept": 0.5}}}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _derived(tmp_path, name, **site):
    """``export_models.py --from-bundle`` of the legacy bundle with the site files given as
    documents (written to files first)."""
    args = []
    for key, doc in site.items():
        path = tmp_path / f"{name}-{key}.json"
        path.write_text(json.dumps(doc))
        args += [f"--{key.replace('_', '-')}", str(path)]
    out = tmp_path / name
    export_models.main(["-c", str(DEMO), "--from-bundle", str(LEGACY), *args, "--out", str(out)])
    return out


def _rehash(b, name):
    """Update the manifest for an edited file, as whoever can edit the manifest can."""
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][name] = _sha256(b / name)
    (b / "manifest.json").write_text(json.dumps(manifest))


def test_operating_points_read_back_from_a_bundle(tmp_path):
    y = pd.DataFrame({"pe_present": [1, 1, 0, 0, 1, 0]})
    p = pd.DataFrame({"pe_present": [0.9, 0.7, 0.2, 0.8, 0.4, 0.1]})
    doc = {"format": thresholds.FORMAT, "format_version": thresholds.FORMAT_VERSION, "rule": thresholds.RULE,
           "source": {"n_studies": 6}, "labels": thresholds.choose(y, p, (0.9,))}
    b = _derived(tmp_path, "models", operating_points=doc)
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["files"]["operating_points.json"] == _sha256(b / "operating_points.json")
    assert manifest["derived_from"] == {"manifest_sha256": _sha256(LEGACY / "manifest.json")}
    assert manifest["format_version"] == bundle.FORMAT_VERSION  # no calibration: version-1 code reads it
    assert thresholds.read(b) == doc  # what validate_site.py --operating-points DIR reads
    card = (b / "MODEL_CARD.md").read_text()
    assert "`operating_points.json`" in card and "sensitivity >= 0.90 at p >= 0.4000" in card
    assert bundle.open_bundle(b)[3]["operating_points.json"]["doc"] == doc

    edited = json.loads((b / "operating_points.json").read_text())
    edited["labels"]["pe_present"][0]["threshold"] = 1.5
    (b / "operating_points.json").write_text(json.dumps(edited))
    with pytest.raises(PipelineError, match="operating_points.json: sha256 does not match"):
        thresholds.read(b)
    _rehash(b, "operating_points.json")
    for load in (thresholds.read, bundle.load_bundle):
        with pytest.raises(PipelineError, match=r"operating_points.json: key 'labels.pe_present.0.threshold'") as e:
            load(b)
        assert "\n" not in str(e.value)


def _miscalibrated(rng, n):
    """Truth from a logistic model, predictions over-confident (logit x 2.5) and shifted."""
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return y, 1 / (1 + np.exp(-(2.5 * z + 0.5)))


def test_calibration_round_trip_through_a_bundle_lowers_held_out_ece(tmp_path):
    y, p = _miscalibrated(np.random.default_rng(11), 2000)
    frame = lambda a: pd.DataFrame({"pe_present": a, "negative_exam_for_pe": 1 - a})  # noqa: E731
    calib = calibration.split(y, 0.5, seed=2)
    doc = calibration.fit_block(frame(y), frame(p), calib, "platt", {"fraction": 0.5, "seed": 2})
    (tmp_path / "site").mkdir()
    calibration.write(doc, tmp_path / "site")  # as validate_site.py --calibrate-split writes it
    b = tmp_path / "calibrated"
    export_models.main(["-c", str(DEMO), "--from-bundle", str(LEGACY), "--calibration", str(tmp_path / "site"),
                        "--out", str(b)])
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["format_version"] == bundle.CALIBRATED_VERSION
    assert manifest["files"]["calibration.json"] == _sha256(tmp_path / "site" / "calibration.json")
    assert "`calibration.json`: platt calibration" in (b / "MODEL_CARD.md").read_text()
    back = bundle.open_bundle(b)[3]["calibration.json"]["doc"]
    assert back == json.loads(json.dumps(doc)) == calibration.read(b)
    held = ~calib
    for label, truth, pred in (("pe_present", y, p), ("negative_exam_for_pe", 1 - y, 1 - p)):
        before = metrics.reliability(truth[held], pred[held])[0]
        after = metrics.reliability(truth[held], apply_block(back, label, pred[held]))[0]
        assert after < 0.5 * before, (label, before, after)


def test_damaged_or_missing_site_files_are_one_line_errors(tmp_path):
    b = _derived(tmp_path, "calibrated", calibration=STRONG)
    (b / "calibration.json").write_text(json.dumps({**STRONG, "method": "isotonic"}))
    _rehash(b, "calibration.json")
    with pytest.raises(PipelineError, match=r"calibration.json: key 'method' must be one of platt, temperature"):
        bundle.load_bundle(b)
    (b / "calibration.json").write_text(json.dumps({**STRONG, "labels": {"pe_present": {"slope": "2"}}}))
    _rehash(b, "calibration.json")
    with pytest.raises(PipelineError, match=r"calibration.json: key 'labels.pe_present' needs slope, intercept"):
        bundle.load_bundle(b)
    with pytest.raises(PipelineError, match="operating_points.json: not listed in the bundle's manifest.json"):
        thresholds.read(b)
    with pytest.raises(PipelineError, match="nothing to add"):
        export_models.main(["-c", str(DEMO), "--from-bundle", str(LEGACY), "--out", str(tmp_path / "x")])
    with pytest.raises(PipelineError, match="not a rsna-pe-calibration file"):
        (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
        export_models.main(["-c", str(DEMO), "--from-bundle", str(LEGACY), "--calibration",
                            str(tmp_path / "other.json"), "--out", str(tmp_path / "y")])


# ----------------------------------------------------------------------------- stage 7, predict_study
SHIFT = synthetic.ScannerShift(manufacturer="OTHERVENDOR", model="SYNTH-CT 2", kvp=80, kernel="SHARP")


@pytest.fixture(scope="module")
def site(module_dir):
    return synthetic.generate(module_dir / "data", 0, 3, slices=(4, 4), matrix=32, workers=1, scanner=SHIFT)


@pytest.fixture(scope="module")
def calibrated(module_dir):
    return _derived(module_dir, "calibrated", calibration=STRONG)


def _stage7(data, out, b):
    inference.main(["-c", str(DEMO), f"data_dir={data}", f"bundle={b}", f"output_dir={out}", "num_workers=0"])
    return pd.read_csv(out / "submission.csv", dtype={"id": str}).set_index("id")["label"]


def _study(sub, test, study):
    """(exam (9,), image (S,)) of one study in a submission, images in test.csv order."""
    sops = test.SOPInstanceUID[test.StudyInstanceUID == study]
    return sub[[exam_id(study, k) for k in EXAM_LABELS]].to_numpy(), sub[sops].to_numpy()


def test_stage7_applies_a_bundles_calibration_and_records_it(site, calibrated, tmp_path, one_thread):
    plain, cal = _stage7(site.root, tmp_path / "plain", LEGACY), _stage7(site.root, tmp_path / "cal", calibrated)
    test = pd.read_csv(site.root / "test.csv", dtype=str)
    broken = 0
    for study in test.StudyInstanceUID.unique():
        exam, img = _study(plain, test, study)
        want_exam, want_img = calibrate(STRONG, exam, img)
        got_exam, got_img = _study(cal, test, study)
        np.testing.assert_allclose(got_exam, want_exam, atol=1e-5)
        np.testing.assert_allclose(got_img, want_img, atol=1e-5)
        assert not np.allclose(got_exam, exam, atol=1e-3)
        # calibrated but not post-processed again, the study would break a consistency rule
        raw = [apply_block(STRONG, k, exam[i]) for i, k in enumerate(EXAM_LABELS)]
        broken += bool(metric.consistency_violations(np.array([raw]), [want_img])[0])
    assert broken
    plain_rec = json.loads((tmp_path / "plain" / "record.json").read_text())
    rec = json.loads((tmp_path / "cal" / "record.json").read_text())
    assert "calibration_sha256" not in plain_rec["params"] and "calibration" not in plain_rec["info"]
    assert rec["params"]["calibration_sha256"] == _sha256(calibrated / "calibration.json")
    assert rec["info"]["calibration"]["method"] == "platt"
    assert rec["info"]["calibration"]["labels"] == sorted(STRONG["labels"])
    with pytest.raises(PipelineError, match="calibration_sha256"):  # the calibration decides a rerun
        _stage7(site.root, tmp_path / "cal", LEGACY)


def test_predict_study_applies_it_and_records_the_scanner_fields(site, calibrated, tmp_path, one_thread):
    predict_study.main([str(site.root / "test"), "-c", str(DEMO), f"bundle={calibrated}", "--out",
                        str(tmp_path / "out"), "--cam-top-k", "0", "--preview-size", "32"])
    cal = _stage7(site.root, tmp_path / "cal", calibrated)
    files = sorted((tmp_path / "out").glob("*/prediction.json"))
    assert len(files) == site.test_labels.StudyInstanceUID.nunique()
    for f in files:
        pred = json.loads(f.read_text())
        np.testing.assert_allclose([pred["exam"][k] for k in EXAM_LABELS],
                                   cal[[exam_id(pred["study"], k) for k in EXAM_LABELS]].to_numpy(), atol=1e-6)
        np.testing.assert_allclose([s["pe_present_on_image"] for s in pred["slices"]],
                                   cal[[s["sop"] for s in pred["slices"]]].to_numpy(), atol=1e-6)
        assert pred["calibration"]["sha256"] == _sha256(calibrated / "calibration.json")
        assert pred["acquisition"] == {"manufacturer": "OTHERVENDOR", "model": "SYNTH-CT 2", "kvp": "80",
                                       "slice_thickness": pred["acquisition"]["slice_thickness"],
                                       "kernel": "SHARP"}
        assert float(pred["acquisition"]["slice_thickness"]) > 0
        _no_patient_tag(f.read_text(), pred["study"])


def _no_patient_tag(text, study):
    assert "SYNTHETIC^PHANTOM" not in text and f"SYN{study[-8:]}" not in text  # PatientName, PatientID


def test_stage7_writes_the_scanner_fields_without_reading_a_file_twice(site, tmp_path, monkeypatch, one_thread):
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    _stage7(site.root, tmp_path / "out", LEGACY)
    files = sorted(str(p) for p in (site.root / "test").rglob("*.dcm"))
    assert sorted(reads) == files  # the fields come from a header read for the pixels anyway
    acq = pd.read_csv(tmp_path / "out" / "acquisition.csv", dtype=str)
    assert list(acq.columns) == ["StudyInstanceUID", *FIELDS]
    assert sorted(acq.StudyInstanceUID) == sorted(site.test_labels.StudyInstanceUID.unique())
    assert (acq.manufacturer == "OTHERVENDOR").all() and (acq.kvp == "80").all() and (acq.kernel == "SHARP").all()
    text = (tmp_path / "out" / "acquisition.csv").read_text()
    for study in acq.StudyInstanceUID:
        _no_patient_tag(text, study)
