"""The synthetic data set: Kaggle layout, label rules, determinism, DICOM fidelity, findings."""
import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from rsna_pe import synthetic as sy
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import (
    EXAM_LABELS,
    ID_COLUMNS,
    IMAGE_LABEL,
    QA_COLUMNS,
    TRAIN_COLUMNS,
    parse_exam_id,
)

# Small, but with every variant: half the series compressed, half with odd rescale.
PARAMS = dict(n_train=6, n_test=3, slices=(8, 12), matrix=64, seed=3,
              compressed_fraction=0.5, odd_matrix_fraction=0.3, odd_rescale_fraction=0.5)


@pytest.fixture(scope="module")
def dataset(module_dir):
    root = module_dir / "data"
    return sy.generate(root, workers=1, **PARAMS)


def _hu(path):
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    return ds, ds.pixel_array.astype(np.float64) * slope + intercept


def _rule_violations(exam, pe):
    """Competition label rules for one study: exam = {label: 0/1}, pe = image labels."""
    bad = []
    if any(pe):
        if exam["negative_exam_for_pe"] or exam["indeterminate"]:
            bad.append("positive exam marked negative/indeterminate")
        if exam["rv_lv_ratio_gte_1"] + exam["rv_lv_ratio_lt_1"] != 1:
            bad.append("rv_lv pair")
        if not (exam["central_pe"] or exam["leftsided_pe"] or exam["rightsided_pe"]):
            bad.append("no location")
        if exam["chronic_pe"] and exam["acute_and_chronic_pe"]:
            bad.append("chronic and acute_and_chronic")
    else:
        if exam["negative_exam_for_pe"] + exam["indeterminate"] != 1:
            bad.append("negative/indeterminate pair")
        others = [k for k in EXAM_LABELS if k not in ("negative_exam_for_pe", "indeterminate")]
        if any(exam[k] for k in others):
            bad.append("negative exam with a positive label")
    return bad


def _series_by_z(series_dir):
    files = list(Path(series_dir).glob("*.dcm"))
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    order = np.argsort([float(h.ImagePositionPatient[2]) for h in heads])
    return [files[i] for i in order], [heads[i] for i in order]


def test_layout_and_csv_columns(dataset):
    root = dataset.root
    train = pd.read_csv(root / "train.csv")
    test = pd.read_csv(root / "test.csv")
    truth = pd.read_csv(root / "test_labels.csv")
    sub = pd.read_csv(root / "sample_submission.csv")
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert tuple(truth.columns) == TRAIN_COLUMNS
    assert tuple(test.columns) == ID_COLUMNS
    assert list(sub.columns) == ["id", "label"]
    assert train.StudyInstanceUID.nunique() == 6 and test.StudyInstanceUID.nunique() == 3
    assert (test.values == truth[list(ID_COLUMNS)].values).all()
    # One series per study, the exam-level columns constant within a study.
    for df in (train, truth):
        per = df.groupby("StudyInstanceUID").nunique()
        assert (per.SeriesInstanceUID == 1).all()
        assert (per[[c for c in TRAIN_COLUMNS[3:] if c != IMAGE_LABEL]] == 1).all().all()
    # Sample submission: 9 rows per test study and one per test image, all 0.5.
    want = {f"{s}_{k}" for s in test.StudyInstanceUID.unique() for k in EXAM_LABELS}
    want |= set(test.SOPInstanceUID)
    assert len(sub) == len(want) and set(sub.id) == want and (sub.label == 0.5).all()
    # Every row has its file <split>/<study>/<series>/<SOP>.dcm, and no file is without a row.
    for split, df in (("train", train), ("test", test)):
        files = {p.relative_to(root / split).as_posix() for p in (root / split).rglob("*.dcm")}
        rows = {f"{r.StudyInstanceUID}/{r.SeriesInstanceUID}/{r.SOPInstanceUID}.dcm"
                for r in df.itertuples()}
        assert files == rows
    assert json.loads((root / sy.MANIFEST).read_text())["seed"] == PARAMS["seed"]


def test_generated_labels_obey_the_rules(dataset):
    for df in (dataset.train, dataset.test_labels):
        assert df[list(TRAIN_COLUMNS[3:])].isin([0, 1]).all().all()
        for study, g in df.groupby("StudyInstanceUID"):
            exam = g.iloc[0]
            assert _rule_violations(exam, g[IMAGE_LABEL].tolist()) == [], study
    exams = dataset.train.groupby("StudyInstanceUID").first()
    # A tiny set still holds negatives and positives.
    assert exams.negative_exam_for_pe.sum() >= 1
    assert (exams.negative_exam_for_pe + exams.indeterminate == 0).sum() >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planned_labels_obey_the_rules_and_prevalences(seed):
    # Planning is cheap: check many studies, down to series too short to hold an embolus.
    specs = sy.plan(240, 60, slices=(1, 60), matrix=64, seed=seed)
    for s in specs:
        pe = s.image_labels()
        assert _rule_violations(s.labels, pe) == [], (s.study_uid, s.labels, s.emboli)
        assert set(s.labels) == set(EXAM_LABELS + QA_COLUMNS)
        if s.labels["indeterminate"]:
            assert s.labels["qa_contrast"] or s.labels["qa_motion"]
    train = [s for s in specs if s.split == "train"]
    pos = np.mean([s.image_labels().any() for s in train])
    indet = np.mean([s.labels["indeterminate"] for s in train])
    assert 0.25 < pos < 0.4 and 0.02 <= indet <= 0.06
    for k in ("central_pe", "chronic_pe", "acute_and_chronic_pe", "rv_lv_ratio_gte_1",
              "leftsided_pe", "rightsided_pe", "flow_artifact"):
        assert any(s.labels[k] for s in train), k


@pytest.mark.parametrize("fraction,n,want_pos", [(0.5, 40, 20), (1.0, 10, 10), (0.0, 10, 0), (0.95, 40, 38)])
def test_positive_fraction_sets_the_share_of_positive_exams(fraction, n, want_pos):
    # Exact counts; the small-set minimums (one indeterminate exam from 8 studies on) give way
    # when the fraction leaves no room for them, and a fraction of 0 means no positive exam.
    specs = sy.plan(n, 0, slices=(20, 20), matrix=64, positive_fraction=fraction)
    assert sum(bool(s.emboli) for s in specs) == want_pos
    assert all(_rule_violations(s.labels, s.image_labels()) == [] for s in specs)
    with pytest.raises(PipelineError, match="positive_fraction"):
        sy.plan(4, 0, positive_fraction=1.5)


def test_cli_reads_a_fraction_like_one_third():
    import make_synthetic_data
    assert make_synthetic_data.parse_args(["d", "--positive-fraction", "1/3"]).positive_fraction == 1 / 3
    assert make_synthetic_data.parse_args(["d"]).positive_fraction == 1 / 3
    with pytest.raises(SystemExit):
        make_synthetic_data.parse_args(["d", "--positive-fraction", "half"])


def test_deterministic_by_seed_and_worker_count(dataset, tmp_path):
    # A second run, in parallel this time, writes byte-identical csvs and DICOM files.
    again = sy.generate(tmp_path / "again", workers=2, **PARAMS).root
    cmp = filecmp.dircmp(dataset.root, again)
    assert not cmp.left_only and not cmp.right_only
    for f in dataset.root.rglob("*"):
        if f.is_file():
            assert filecmp.cmp(f, again / f.relative_to(dataset.root), shallow=False), f
    other = sy.plan(6, 3, slices=(8, 12), matrix=64, seed=4)
    assert not {s.study_uid for s in other} & set(dataset.train.StudyInstanceUID)


def test_every_series_decodes_to_the_rendered_hu(dataset):
    # Compressed and rescale variants included: what the reader decodes is what was drawn.
    specs = sy.plan(**PARAMS)
    seen_ts, seen_rescale, seen_matrix = set(), set(), set()
    for spec in specs:
        series = dataset.series_dir(spec.split, spec.study_uid, spec.series_uid)
        files, heads = _series_by_z(series)
        assert len(files) == spec.n_slices
        outside = sy.fov_mask(spec.matrix)
        pad = sy.RESCALE_VARIANTS[spec.rescale][1]
        for (k, hu), f in zip(sy.render_series(spec), files):
            ds, got = _hu(f)
            assert str(ds.file_meta.TransferSyntaxUID) == spec.transfer_syntax
            assert np.array_equal(got[~outside], hu[~outside]), f
            assert (ds.pixel_array[outside] == pad).all()
            assert ds.PixelPaddingValue == pad
            seen_rescale.add(float(ds.RescaleIntercept))
        seen_ts.add(spec.transfer_syntax)
        seen_matrix.add(spec.matrix)
    assert seen_ts == {str(u) for u in (ExplicitVRLittleEndian, *sy.COMPRESSED_SYNTAXES)}
    assert {-1024.0, -1000.0, -2048.0} <= seen_rescale
    assert len(seen_matrix) > 1


def test_dicom_header_looks_like_ctpa(dataset):
    spec = sy.plan(**PARAMS)[0]
    files, heads = _series_by_z(dataset.series_dir(spec.split, spec.study_uid, spec.series_uid))
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
    pixel_format = (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation)
    assert pixel_format == (1, 16, 16, 1)
    assert ds.pixel_array.dtype == np.int16 and ds.Rows == ds.Columns == spec.matrix
    assert float(ds.RescaleSlope) == 1
    for tag in ("PatientID", "KVP", "WindowCenter", "WindowWidth", "SliceThickness",
                "PixelSpacing", "ImageOrientationPatient", "FrameOfReferenceUID"):
        assert tag in ds, tag
    assert ds.SOPInstanceUID == files[0].stem
    # InstanceNumber follows z; file names (random UIDs) do not.
    assert [int(h.InstanceNumber) for h in heads] == list(range(1, len(heads) + 1))


def test_file_order_says_nothing_about_z(dataset):
    differs = 0
    for spec in sy.plan(**PARAMS):
        files, _ = _series_by_z(dataset.series_dir(spec.split, spec.study_uid, spec.series_uid))
        differs += [f.name for f in files] != sorted(f.name for f in files)
    assert differs == len(sy.plan(**PARAMS))
    # Nor does the csv row order.
    df = dataset.train
    study = df.StudyInstanceUID.iloc[0]
    spec = next(s for s in sy.plan(**PARAMS) if s.study_uid == study)
    files, _ = _series_by_z(dataset.series_dir("train", study, spec.series_uid))
    assert df[df.StudyInstanceUID == study].SOPInstanceUID.tolist() != [f.stem for f in files]


def test_emboli_are_in_the_pixels(dataset):
    """Positive slices hold a filling defect (< 120 HU) inside a contrast-filled artery;
    the same arteries on negative slices are all contrast."""
    checked_pos = checked_neg = 0
    for spec in sy.plan(**PARAMS):
        ph, _ = sy.phantom(spec)
        files, _ = _series_by_z(dataset.series_dir(spec.split, spec.study_uid, spec.series_uid))
        pe = spec.image_labels()
        clean = not (spec.labels["qa_motion"] or spec.labels["qa_contrast"])
        for k, f in enumerate(files):
            hu = _hu(f)[1]
            masks = ph.artery_masks(k)
            on = {e.site for e in spec.emboli if e.k0 <= k <= e.k1}
            for site, m in masks.items():
                low = np.sort(hu[m])[:3].mean()
                if site in on:
                    assert low < 120, (spec.study_uid, k, site)
                    checked_pos += 1
                elif not pe[k] and clean:
                    assert hu[m].min() > 120, (spec.study_uid, k, site)
                    checked_neg += 1
            if pe[k]:
                assert on, "a positive slice must hold an embolus"
    assert checked_pos >= 3 and checked_neg >= 10


def test_defect_is_darker_than_contrast_at_64px(tmp_path):
    # At the demo's CNN input (512 -> 64 px) the defect still shows: the artery's darkest
    # pixel after area resizing stays well below the contrast level.
    import cv2
    spec = next(s for s in sy.plan(12, 0, slices=(30, 30), matrix=512, seed=0)
                if any(e.kind == "acute" for e in s.emboli))
    e = next(e for e in spec.emboli if e.kind == "acute")
    ph, rng = sy.phantom(spec)
    for k in range(e.k0 + 1):
        hu = ph.slice(k, rng)
    small = cv2.resize(hu, (64, 64), interpolation=cv2.INTER_AREA)
    m = cv2.resize(ph.artery_masks(e.k0)[e.site].astype(np.float32), (64, 64),
                   interpolation=cv2.INTER_AREA) > 0.99
    assert small[m].min() < spec.contrast - 150


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless,
                                RLELossless])
def test_write_series_exact_hu(tmp_path, ts):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3072, size=(3, 20, 24))  # x0 = -8.399999999999999: DS must round
    hu[0, :4] = -3024  # padding-like values below the scanner range must survive too
    z = [5.0, -2.5, 1.25]
    sops = sy.write_series(tmp_path, hu, z, transfer_syntax=ts, intercept=[-1024, -1000, -2048])
    assert len(set(sops)) == 3
    for k, sop in enumerate(sops):
        ds, got = _hu(tmp_path / f"{sop}.dcm")
        assert ds.file_meta.TransferSyntaxUID == ts
        assert np.array_equal(got, hu[k])
        assert float(ds.ImagePositionPatient[2]) == z[k]
    # InstanceNumber ascends with z.
    inst = {sop: pydicom.dcmread(tmp_path / f"{sop}.dcm").InstanceNumber for sop in sops}
    assert [inst[sops[i]] for i in np.argsort(z)] == [1, 2, 3]


def test_write_series_options(tmp_path):
    hu = np.array([[[-1000.5, 0.0], [40.0, 1000.5]]])
    sop = sy.write_series(tmp_path / "a", hu, [0.0], slope=0.5, intercept=-1024,
                          drop_tags=("ImagePositionPatient",))[0]
    ds, got = _hu(tmp_path / "a" / f"{sop}.dcm")
    assert np.array_equal(got, hu[0]) and "ImagePositionPatient" not in ds
    # Same call, same UIDs; other data, other UIDs.
    assert sy.write_series(tmp_path / "b", hu, [0.0], slope=0.5) == [sop]
    assert sy.write_series(tmp_path / "c", hu + 1, [0.0], slope=0.5) != [sop]
    with pytest.raises(ValueError):
        sy.write_series(tmp_path / "d", np.full((1, 2, 2), 40000), [0.0])
    sop = sy.write_slice(tmp_path / "e" / "x.dcm", np.zeros((4, 4)), 3.0, sop_uid="1.2.3.4")
    assert sop == "1.2.3.4" and pydicom.dcmread(tmp_path / "e" / "x.dcm").SOPInstanceUID == sop


def test_existing_set_is_kept_or_refused(dataset, tmp_path):
    again = sy.generate(dataset.root, workers=1, **PARAMS)  # same parameters: kept, not rewritten
    assert again.train.equals(dataset.train)
    with pytest.raises(PipelineError, match="overwrite"):
        sy.generate(dataset.root, **{**PARAMS, "seed": 9})
    root = tmp_path / "d"
    sy.generate(root, 2, 1, slices=(3, 3), matrix=32, workers=1)
    (root / "keep.txt").write_text("mine")
    new = sy.generate(root, 1, 1, slices=(3, 3), matrix=32, workers=1, overwrite=True)
    assert new.train.StudyInstanceUID.nunique() == 1 and (root / "keep.txt").exists()
    assert len(list((root / "train").iterdir())) == 1
    # An interrupted run (manifest not marked complete) is redone without --overwrite.
    m = json.loads((root / sy.MANIFEST).read_text())
    (root / sy.MANIFEST).write_text(json.dumps({**m, "complete": False}))
    (root / "train.csv").unlink()
    redo = sy.generate(root, 1, 1, slices=(3, 3), matrix=32, workers=1)
    assert redo.train.equals(new.train) and json.loads((root / sy.MANIFEST).read_text()) == m
    # A folder with Kaggle files but no manifest may be real data: never overwritten.
    real = tmp_path / "real"
    (real / "train").mkdir(parents=True)
    (real / "train.csv").write_text("x")
    with pytest.raises(PipelineError, match="not a synthetic set"):
        sy.generate(real, 1, 1, slices=(3, 3), matrix=32, workers=1, overwrite=True)
    assert (real / "train.csv").read_text() == "x"


def test_cli(tmp_path, capsys):
    import make_synthetic_data
    make_synthetic_data.main([str(tmp_path / "out"), "--n-train", "2", "--n-test", "1",
                              "--slices", "3", "4", "--matrix", "32", "--workers", "1"])
    assert (tmp_path / "out" / "train.csv").exists() and "train" in capsys.readouterr().out
    with pytest.raises(PipelineError):
        make_synthetic_data.main([str(tmp_path / "bad"), "--slices", "5", "2"])


HEX12 = re.compile(r"[0-9a-f]{12}")
UID_WARNING = "Invalid value for VR UI"


def test_hex_ids_everywhere_without_uid_warnings(tmp_path, recwarn, caplog):
    # The competition names studies, series and images with 12 hex digits (not valid DICOM
    # UIDs): csvs, paths and headers agree, ids are unique, and writing them does not warn.
    small = dict(n_train=3, n_test=2, slices=(3, 5), matrix=32, seed=1, workers=1,
                 compressed_fraction=0.4)
    hexed = sy.generate(tmp_path / "hex", hex_ids=True, **small)
    assert not [w for w in recwarn if UID_WARNING in str(w.message)]
    assert UID_WARNING not in caplog.text
    root = hexed.root
    ids = []
    for split in ("train", "test"):
        df = pd.read_csv(root / f"{split}.csv", dtype=str)
        for col in ID_COLUMNS:
            assert df[col].str.fullmatch(HEX12).all(), (split, col)
            ids += df[col].unique().tolist()
        rows = {f"{r.StudyInstanceUID}/{r.SeriesInstanceUID}/{r.SOPInstanceUID}.dcm"
                for r in df.itertuples()}
        files = sorted((root / split).rglob("*.dcm"))
        assert {f.relative_to(root / split).as_posix() for f in files} == rows
        with pydicom.config.disable_value_validation():  # reading them would warn too
            for f in files:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
                    f.parent.parent.name, f.parent.name, f.stem)
                assert ds.file_meta.MediaStorageSOPInstanceUID == f.stem
    assert len(ids) == len(set(ids))
    # The sample submission's exam ids parse back to the test studies.
    test = pd.read_csv(root / "test.csv", dtype=str)
    sub = pd.read_csv(root / "sample_submission.csv", dtype=str)
    exams = [parse_exam_id(i) for i in sub.id]
    assert {e for e in exams if e} == {(s, k) for s in test.StudyInstanceUID for k in EXAM_LABELS}
    assert {i for i, e in zip(sub.id, exams) if not e} == set(test.SOPInstanceUID)
    # Only the ids differ from the default set of the same seed, whose ids are DICOM UIDs.
    plain = sy.generate(tmp_path / "plain", **small)
    labels = list(TRAIN_COLUMNS[len(ID_COLUMNS):])
    assert hexed.train[labels].equals(plain.train[labels])
    assert plain.train.StudyInstanceUID.str.contains(".", regex=False).all()
    assert json.loads((root / sy.MANIFEST).read_text())["hex_ids"] is True
    assert "hex_ids" not in json.loads((plain.root / sy.MANIFEST).read_text())
    # Deterministic: the plan of the same seed names the same studies.
    planned = sy.plan(3, 2, slices=(3, 5), matrix=32, seed=1, hex_ids=True)
    assert {s.study_uid for s in planned} == set(hexed.train.StudyInstanceUID) | set(test.StudyInstanceUID)


def test_write_series_takes_hex_ids_without_warnings(tmp_path, recwarn):
    sops = sy.write_series(tmp_path, np.zeros((2, 4, 4)), [0.0, 1.0], study_uid="6897fa9de148",
                           series_uid="c4a2b2f3f1e0", sop_uids=["0a1b2c3d4e5f", "f5e4d3c2b1a0"])
    assert sops == ["0a1b2c3d4e5f", "f5e4d3c2b1a0"]
    assert sorted(f.stem for f in tmp_path.glob("*.dcm")) == sorted(sops)
    assert not [w for w in recwarn if UID_WARNING in str(w.message)]


def test_cli_hex_ids_option():
    import make_synthetic_data
    assert make_synthetic_data.parse_args(["d", "--hex-ids"]).hex_ids
    assert not make_synthetic_data.parse_args(["d"]).hex_ids


SHIFT = dict(noise_scale=2.0, hu_offset=50.0, thickness_factor=1.5, sharpen=1.0, manufacturer="OTHERVENDOR",
             model="SYNTH-CT 2", kvp=80.0, kernel="SHARP")


def test_scanner_shift_changes_pixels_and_tags_never_labels(tmp_path):
    small = dict(n_train=1, n_test=2, slices=(4, 5), matrix=32, seed=2, positive_fraction=0.5)
    plain = sy.generate(tmp_path / "plain", workers=1, **small)
    # An explicit "no shift" writes the very bytes of a set made without the option.
    none = sy.generate(tmp_path / "none", workers=1, scanner=sy.ScannerShift(), **small)
    for f in plain.root.rglob("*"):
        if f.is_file():
            assert filecmp.cmp(f, none.root / f.relative_to(plain.root), shallow=False), f
    shifted = sy.generate(tmp_path / "shifted", workers=1, scanner=sy.ScannerShift(**SHIFT), **small)
    assert shifted.train.equals(plain.train) and shifted.test_labels.equals(plain.test_labels)
    assert json.loads((shifted.root / sy.MANIFEST).read_text())["scanner"] == SHIFT
    assert "scanner" not in json.loads((plain.root / sy.MANIFEST).read_text())
    for spec in sy.plan(**small):
        a = _series_by_z(plain.series_dir(spec.split, spec.study_uid, spec.series_uid))
        b = _series_by_z(shifted.series_dir(spec.split, spec.study_uid, spec.series_uid))
        head = b[1][0]
        assert (head.Manufacturer, head.ManufacturerModelName, head.ConvolutionKernel) == ("OTHERVENDOR", "SYNTH-CT 2", "SHARP")
        assert float(head.KVP) == 80 and float(head.SliceThickness) == pytest.approx(1.5 * float(a[1][0].SliceThickness))
        assert "ConvolutionKernel" not in a[1][0] and a[1][0].Manufacturer == "SYNTHETIC"
    # Each pixel option alone changes the images; the offset alone adds exactly its HU.
    spec = sy.plan(**small)[0]
    base = np.stack([hu for _, hu in sy.render_series(spec)]).astype(np.int32)
    for key in ("noise_scale", "hu_offset", "thickness_factor", "sharpen"):
        spec.scanner = sy.ScannerShift(**{key: SHIFT[key]})
        hu = np.stack([h for _, h in sy.render_series(spec)]).astype(np.int32)
        assert not np.array_equal(hu, base), key
        if key == "hu_offset":
            inside = (base > sy.HU_MIN) & (base + 50 < sy.HU_MAX)
            assert (hu[inside] - base[inside] == 50).all()


def test_scanner_shift_options_and_their_checks():
    import make_synthetic_data
    args = make_synthetic_data.parse_args(["d", "--noise-scale", "2", "--hu-offset", "50", "--thickness-factor",
                                           "1.5", "--sharpen", "1", "--manufacturer", "OTHERVENDOR", "--model",
                                           "SYNTH-CT 2", "--kvp", "80", "--kernel", "SHARP"])
    assert make_synthetic_data.scanner_shift(args).params() == SHIFT
    assert make_synthetic_data.scanner_shift(make_synthetic_data.parse_args(["d"])).params() == {}
    for bad in (dict(noise_scale=-1), dict(thickness_factor=0.5), dict(sharpen=-1), dict(kvp=0),
                dict(kernel="K" * 17)):
        with pytest.raises(PipelineError):
            sy.ScannerShift(**bad)
