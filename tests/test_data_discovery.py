"""Real exports in: DICOM files found by content in any tree, grouped by study and series, and
the series to predict picked by the ``series_selection`` rule (rsna_pe.data.discovery,
docs/dicom.md). The export is generated: a synthetic CTPA series (rsna_pe.synthetic) and, beside
it, a localizer, a thick-slice series and a coronal reformat, all as extensionless files in
arbitrary folders or in a DICOMDIR-style tree. Predictions use the tiny legacy bundle."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import inference
import predict_study
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.errors import ConfigError, DicomReadError, PipelineError
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.data.dicom import read_series_images, read_series_order
from rsna_pe.data.discovery import (
    DIRECTORY_STORAGE,
    Image,
    check_rule,
    choose,
    discover,
    make_series,
)
from rsna_pe.synthetic import generate

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
PREDICT = ["-c", str(CONFIG_DIR / "demo" / "inference.yml"), f"bundle={LEGACY / 'bundle'}",
           "--cam-top-k", "0", "--preview-size", "32"]
RULE = load_config(CONFIG_DIR / "inference.yml")["series_selection"]
N_CTPA, THICK_EVERY = 12, 3
CORONAL = ["1", "0", "0", "0", "0", "-1"]
SAGITTAL = ["0", "1", "0", "0", "0", "-1"]


def _uid(*parts):
    return generate_uid(entropy_srcs=["test_data_discovery", *map(str, parts)])


@pytest.fixture(scope="module")
def ctpa(tmp_path_factory):
    """A synthetic CTPA series in its own folder (the Kaggle layout): its folder."""
    s = generate(tmp_path_factory.mktemp("synthetic"), n_train=0, n_test=1, slices=(N_CTPA, N_CTPA),
                 matrix=64, workers=1, compressed_fraction=0, odd_matrix_fraction=0,
                 odd_rescale_fraction=0)
    study, series = s.test_labels[["StudyInstanceUID", "SeriesInstanceUID"]].iloc[0]
    return s.series_dir("test", study, series)


def _localizer(ds, k):
    """An AP and a lateral scout: one series, two orientations."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [CORONAL, SAGITTAL][k]
    ds.ImagePositionPatient = ["-160", "0", "100"]


def _thick(ds, k):
    ds.SliceThickness = str(float(ds.SliceThickness) * THICK_EVERY)


def _reformat(ds, k):
    ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
    ds.ImageOrientationPatient = CORONAL
    ds.ImagePositionPatient = ["-160", str(-20 + 5 * k), "100"]


def _series_files(ctpa):
    """{role: [source file, edit or None]} of the export: the CTPA and three series derived
    from its slices (z order)."""
    src = [i.path for i in read_series_order(ctpa)]
    return {"ctpa": [(f, None) for f in src], "localizer": [(f, _localizer) for f in src[:2]],
            "thick": [(f, _thick) for f in src[::THICK_EVERY]], "reformat": [(f, _reformat) for f in src[:5]]}


NESTED = {"ctpa": lambda k: f"PAT 1/xq/{'a' if k < N_CTPA // 2 else 'deeper/more/b'}{k:03d}",
          "localizer": lambda k: f"PAT 1/xq/scout{k}",  # beside half of the CTPA: a mixed folder
          "thick": lambda k: f"other/{k}",
          "reformat": lambda k: f"PAT 1/xq/deeper/more/r.{k}"}
DICOMDIR_TREE = {"ctpa": lambda k: f"DICOM/0001/0001/IM{k + 1:04d}",
                 "localizer": lambda k: f"DICOM/0001/0002/IM{k + 1:04d}",
                 "thick": lambda k: f"DICOM/0001/0002/IM{k + 11:04d}",  # beside the localizer
                 "reformat": lambda k: f"DICOM/0001/0003/IM{k + 1:04d}"}


def _dicomdir(path):
    """A DICOMDIR (Media Storage Directory Storage) as a CD carries at its top."""
    ds = Dataset()
    ds.FileSetID = "EXPORT"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DIRECTORY_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = _uid("dicomdir")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def write_export(ctpa, root, layout):
    """The export under ``root``: -> {role: (SeriesInstanceUID, [its files])}."""
    series = {}
    for role, files in _series_files(ctpa).items():
        uid = pydicom.dcmread(files[0][0], stop_before_pixels=True).SeriesInstanceUID if role == "ctpa" \
            else _uid(role)
        written = []
        for k, (src, edit) in enumerate(files):
            ds = pydicom.dcmread(src)
            if edit:
                ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, _uid(role, k)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                edit(ds, k)
            dst = root / layout[role](k)
            dst.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dst, enforce_file_format=True)
            written.append(dst)
        series[role] = (uid, sorted(written))
    (root / "README.TXT").write_text("Viewer software and images of one patient\n")  # not DICOM
    if layout is DICOMDIR_TREE:
        _dicomdir(root / "DICOMDIR")
    return series


@pytest.fixture(scope="module", params=["nested", "dicomdir"])
def export(request, ctpa, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    return root, write_export(ctpa, root, NESTED if request.param == "nested" else DICOMDIR_TREE)


def test_discovery_groups_the_export_picks_the_ctpa_and_says_why_each_other_series_is_not(export, caplog):
    root, series = export
    assert not [p for _, files in series.values() for p in files if p.suffix == ".dcm"]
    with caplog.at_level(logging.INFO, logger="rsna_pe.data.discovery"):
        found = discover(root, RULE)
    assert len(found.studies) == 1 and not found.unreadable and not found.flat
    study = found.studies[0]
    assert sorted(s.uid for s in study.series) == sorted(uid for uid, _ in series.values())
    assert study.chosen.uid == series["ctpa"][0] and study.chosen.files == series["ctpa"][1]
    assert len(study.chosen.files) == N_CTPA
    why = {s.uid: reason for s, reason in study.skipped}
    assert why[series["localizer"][0]] == "not axial: images in 2 orientations"
    assert why[series["reformat"][0]] == "ImageType DERIVED\\SECONDARY\\REFORMATTED lacks ORIGINAL and PRIMARY"
    assert why[series["thick"][0]].startswith("thicker slices than the chosen series")
    log = caplog.text
    assert f"predicting series '{series['ctpa'][0]}'" in log
    for role in ("localizer", "thick", "reformat"):
        assert f"skipped series '{series[role][0]}'" in log and why[series[role][0]] in log
    assert "1 file(s): not DICOM" in log  # README.TXT
    assert ("1 file(s): DICOMDIR" in log) == (root / "DICOMDIR").exists()


def test_a_folder_of_several_series_stays_an_error_in_the_kaggle_layout(ctpa, tmp_path):
    mixed = tmp_path / "series"
    shutil.copytree(ctpa, mixed)
    other = pydicom.dcmread(next(ctpa.glob("*.dcm")))
    other.SeriesInstanceUID, other.SOPInstanceUID = _uid("other"), _uid("other", 0)
    other.save_as(mixed / "extra.dcm", enforce_file_format=True)
    with pytest.raises(DicomReadError, match="more than one series"):
        read_series_images(mixed, [32])
    # predict_study's discovery groups the same folder: the CTPA is chosen, the stray file skipped
    study = discover(mixed, RULE).studies[0]
    assert study.chosen.files == sorted(ctpa_file for ctpa_file in mixed.glob("*.dcm") if ctpa_file.name != "extra.dcm")


def test_a_series_given_as_files_reads_as_its_folder(ctpa):
    files = [str(f) for f in sorted(ctpa.glob("*.dcm"), reverse=True)]  # any order, as strings
    infos, images = read_series_images(ctpa, [32, 48])
    infos_l, images_l = read_series_images(files, [32, 48])
    assert [(i.sop, i.z, i.path) for i in infos] == [(i.sop, i.z, i.path) for i in infos_l]
    assert all(np.array_equal(images[s], images_l[s]) for s in (32, 48))
    with pytest.raises(DicomReadError, match="empty list"):
        read_series_images([], [32])


def _prediction(path):
    pred = json.loads(path.read_text())
    return pred, [s["pe_present_on_image"] for s in pred["slices"]], [s["sop"] for s in pred["slices"]]


def test_predict_study_on_the_export_predicts_the_ctpa_as_its_own_folder(export, ctpa, tmp_path, one_thread):
    root, series = export
    predict_study.main([str(ctpa), "--out", str(tmp_path / "alone"), *PREDICT])
    predict_study.main([str(root), "--out", str(tmp_path / "tree"), *PREDICT])
    alone, alone_img, alone_sops = _prediction(tmp_path / "alone" / "prediction.json")
    (found,) = (tmp_path / "tree").glob("*/prediction.json")
    tree, tree_img, tree_sops = _prediction(found)
    assert found.parent.name == tree["study"] == alone["study"]  # its StudyInstanceUID names it
    assert tree["series"] == series["ctpa"][0] and tree_sops == alone_sops and len(tree_sops) == N_CTPA
    assert tree["exam"] == alone["exam"] and tree_img == alone_img
    assert sorted(s["series"] for s in tree["skipped_series"]) == sorted(
        series[r][0] for r in ("localizer", "thick", "reformat"))
    assert "skipped_series" not in alone and (tmp_path / "tree" / "index.html").is_file()


def test_unreadable_folders_and_studies_without_a_fitting_series_are_rows_not_crashes(ctpa, tmp_path, one_thread,
                                                                                     caplog):
    root = tmp_path / "export"
    _hostile_tree(ctpa, root)
    (root / "broken" / "IM0002.dcm").write_text("not DICOM")  # claims it by its name
    with caplog.at_level(logging.INFO), pytest.raises(PipelineError, match=r"^2 of 3 studies failed"):
        predict_study.main([str(root), "--out", str(tmp_path / "out"), *PREDICT])
    assert "2 file(s) not readable DICOM" in caplog.text and "no series fits the rule" in caplog.text
    index = (tmp_path / "out" / "index.html").read_text()
    assert "2 files not readable DICOM" in index and "not axial: slices 90 degrees" in index
    assert "IM0001" not in index and "broken" not in index  # pages never show file or folder names
    assert len(list((tmp_path / "out").glob("*/prediction.json"))) == 1  # the good study


def _hostile_tree(ctpa, root):
    """The export beside a folder of unreadable files and a study holding only a localizer."""
    series = write_export(ctpa, root / "good", DICOMDIR_TREE)
    (root / "broken").mkdir()
    (root / "broken" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"no header")  # claims DICOM
    scout = pydicom.dcmread(next(ctpa.glob("*.dcm")))
    scout.StudyInstanceUID, scout.SeriesInstanceUID, scout.SOPInstanceUID = (_uid("scout", p) for p in "abc")
    _localizer(scout, 0)
    (root / "scout").mkdir()
    scout.save_as(root / "scout" / "1", enforce_file_format=True)
    return series


def test_stage7_reads_any_tree_with_input_layout_any(ctpa, tmp_path, one_thread):
    data = tmp_path / "data"
    series = _hostile_tree(ctpa, data / "test")
    out = tmp_path / "out"
    args = ["-c", str(CONFIG_DIR / "demo" / "inference.yml"), f"bundle={LEGACY / 'bundle'}", f"data_dir={data}",
            "split=test", "input_layout=any", f"output_dir={out}"]
    inference.main(args)
    predict_study.main([str(ctpa), "--out", str(tmp_path / "alone"), *PREDICT])
    alone, alone_img, alone_sops = _prediction(tmp_path / "alone" / "prediction.json")
    rows = pd.read_csv(out / "submission.csv").set_index("id")["label"]
    assert sorted(i for i in rows.index if "_" not in i) == sorted(alone_sops)  # the CTPA's images only
    np.testing.assert_allclose([rows[s] for s in alone_sops], alone_img, atol=1e-6)
    np.testing.assert_allclose([rows[f"{alone['study']}_{k}"] for k in EXAM_LABELS],
                               [alone["exam"][k] for k in EXAM_LABELS], atol=1e-6)
    inputs = pd.read_csv(out / "inputs.csv", dtype=str)
    assert set(inputs.SeriesInstanceUID) == {series["ctpa"][0]} and sorted(inputs.SOPInstanceUID) == sorted(alone_sops)
    reasons = sorted(pd.read_csv(out / "errors.csv")["reason"])
    assert len(reasons) == 2 and "not readable DICOM" in reasons[0] and "no series fits the rule" in reasons[1]
    before = (out / "submission.csv").stat().st_mtime_ns
    inference.main(args)  # the same tree again: up to date, nothing written
    assert (out / "submission.csv").stat().st_mtime_ns == before


def test_files_without_the_preamble_are_passed_over_not_forced(ctpa, tmp_path, caplog):
    ds = pydicom.dcmread(next(ctpa.glob("*.dcm")))
    ds.preamble = None
    ds.save_as(tmp_path / "raw", enforce_file_format=False)  # a bare dataset: pydicom reads it forced
    assert pydicom.dcmread(tmp_path / "raw", force=True).StudyInstanceUID == ds.StudyInstanceUID
    with caplog.at_level(logging.INFO, logger="rsna_pe.data.discovery"):
        found = discover(tmp_path, RULE)
    assert not found.entries() and "1 file(s): not DICOM" in caplog.text


# ----------------------------------------------------------------------------- the rule itself
def _images(uid, n, step=1.0, thickness=1.0, tilt=0.0, modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            skip=()):
    """A series of ``n`` images ``step`` mm apart along a normal ``tilt`` degrees off z."""
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)  # a gantry tilt turns the columns about x
    normal = np.cross(orientation[:3], orientation[3:])
    return [Image(Path(f"/x/{uid}/{k:03d}"), "1.1", uid, modality, image_type, orientation,
                  tuple(normal * k * step), thickness) for k in range(n) if k not in skip]


def _choose(rule=None, **series):
    return choose("1.1", [make_series(imgs) for imgs in series.values()], {**RULE, **(rule or {})})


def test_the_rule_checks_modality_type_tilt_and_contiguity():
    study = _choose(ok=_images("1", 10), mr=_images("2", 40, modality="MR"),
                    mip=_images("3", 40, image_type=("DERIVED", "SECONDARY", "MIP")),
                    tilted=_images("4", 40, tilt=45), gap=_images("5", 40, skip=(20,)),
                    twice=_images("6", 20) + _images("6", 20))
    assert study.chosen.uid == "1"
    why = {s.uid: r for s, r in study.skipped}
    assert why["2"] == "Modality 'MR' is not CT" and "lacks ORIGINAL and PRIMARY" in why["3"]
    assert why["4"] == "not axial: slices 45 degrees from the axial plane (at most 30)"
    assert why["5"] == "not contiguous: a gap of 2 mm where images lie 1 mm apart"
    assert why["6"].startswith("20 image(s) at another image's position")
    # each check can be turned off
    relaxed = _choose({"modality": [], "image_type": [], "max_tilt": None, "max_gap": None},
                      mr=_images("2", 40, modality="MR", tilt=45, skip=(20,)), ok=_images("1", 10))
    assert relaxed.chosen.uid == "2"
    assert _choose(tilted=_images("4", 40, tilt=20)).chosen.uid == "4"  # a gantry tilt is axial


def test_the_preference_order_is_configurable():
    series = dict(thin=_images("1", 20, thickness=0.625), many=_images("2", 60, thickness=1.25))
    assert _choose(**series).chosen.uid == "1"
    assert _choose({"prefer": ["most_images", "thinnest"]}, **series).chosen.uid == "2"
    study = _choose(**series)
    assert study.skipped[0][1] == "thicker slices than the chosen series (1.25 mm, chosen 0.625 mm)"
    tie = _choose(a=_images("9", 20), b=_images("8", 20))
    assert tie.chosen.uid == "8" and "sorts later" in tie.skipped[0][1]


@pytest.mark.parametrize("override, message", [({"prefer": ["newest"]}, "prefer: 'newest'"),
                                               ({"max_tilt": 120.0}, "max_tilt"), ({"max_gap": 0.5}, "max_gap")])
def test_a_bad_rule_stops_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        check_rule({**RULE, **override})
