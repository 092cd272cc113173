"""predict_study.py --dicom-out: the TID 1500 SR and the key images, read back with highdicom and
pydicom against prediction.json, deterministic UIDs, and dciodvfy (dicom3tools) on every object;
stage 7's dicom_out: one SR per study with submission.csv's values."""
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from support.dicom_node import LEGACY, check_sr, valid_uid_copy

import inference
import predict_study
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.viz.dicom_out import (
    RESEARCH_ONLY,
    DicomOut,
    Uids,
    burned_in,
    write_objects,
)

TOP_K = 2


def run(studies, out, dicom):
    predict_study.main([str(studies), "-c", str(CONFIG_DIR / "demo" / "inference.yml"),
                        f"bundle={LEGACY / 'bundle'}", "--out", str(out), "--cam-top-k", str(TOP_K),
                        "--dicom-out", str(dicom), "--dicom-deterministic-uids"])


@pytest.fixture(scope="module")
def written(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("dicom_out")
    with pytest.warns(UserWarning):  # reading the hex ids once, to replace them
        studies = valid_uid_copy(LEGACY / "studies", tmp / "studies")
    run(studies, tmp / "out", tmp / "dicom")
    run(studies, tmp / "out2", tmp / "dicom2")
    preds = {p["study"]: p for p in (json.loads(f.read_text()) for f in (tmp / "out").rglob("prediction.json"))}
    return tmp, preds


def objects(folder, kind):
    return [pydicom.dcmread(f) for f in sorted(folder.glob(f"{kind}_*.dcm"))]


def texts(ds):
    """Every string value of a dataset, nested sequences included (str(ds) shortens long ones)."""
    for el in ds:
        if el.VR == "SQ":
            for item in el.value:
                yield from texts(item)
        elif isinstance(el.value, str):
            yield el.value
        elif el.VR == "PN":
            yield str(el.value)


def test_sr_values_equal_prediction_json(written):
    tmp, preds = written
    srs = [hd.sr.srread(f) for f in sorted((tmp / "dicom").glob("SR_*.dcm"))]
    assert sorted(sr.StudyInstanceUID for sr in srs) == sorted(preds)
    for sr in srs:
        check_sr(sr, preds[sr.StudyInstanceUID])


def test_sr_copies_patient_and_names_algorithm_and_use(written):
    tmp, preds = written
    bundle_sha = __import__("hashlib").sha256((LEGACY / "bundle" / "manifest.json").read_bytes()).hexdigest()
    for sr in objects(tmp / "dicom", "SR"):
        source = next((tmp / "studies").rglob(f"{preds[sr.StudyInstanceUID]['slices'][0]['sop']}.dcm"))
        src = pydicom.dcmread(source, stop_before_pixels=True)
        assert (sr.PatientID, sr.PatientName, sr.StudyDate) == (src.PatientID, src.PatientName, src.StudyDate)
        text = "\n".join(texts(sr))
        assert RESEARCH_ONLY in text and bundle_sha in text and "rexnet200_bce.fold0.cnn" in text
        assert str(tmp) not in text and "studies" not in text  # no file or folder names


def test_key_images_derived_burned_in_and_referenced(written):
    tmp, preds = written
    by_study = {}
    for sc in objects(tmp / "dicom", "SC"):
        by_study.setdefault(sc.StudyInstanceUID, []).append(sc)
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.ndim == 3 and sc.SeriesInstanceUID != preds[sc.StudyInstanceUID]["series"]
    assert sorted(by_study) == sorted(preds)
    for study, scs in by_study.items():
        slices = preds[study]["slices"]
        top = {slices[k]["sop"] for k in np.argsort([-s["pe_present_on_image"] for s in slices], kind="stable")[:TOP_K]}
        assert {sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs} == top


def test_burned_in_overlay_colours_only_where_the_map_is():
    grey = np.full((32, 32), 100, np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[8:24, 8:24] = 1
    rgb = burned_in(grey, cam)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 100).all()  # below the floor: the slice as it is
    assert np.ptp(rgb[16, 16].astype(int)) > 50  # at the peak: the map's colour


def test_deterministic_uids_equal_across_runs(written):
    tmp, _ = written
    first = sorted(f.name for f in (tmp / "dicom").glob("*.dcm"))
    assert first and first == sorted(f.name for f in (tmp / "dicom2").glob("*.dcm"))
    assert all(name.split("_", 1)[1].startswith(DicomOut.uid_root) for name in first)


def test_uids_random_unless_deterministic_and_root_checked():
    root = "1.2.3."
    assert Uids(root, True, "seed")("sr") == Uids(root, True, "seed")("sr") != Uids(root, True, "other")("sr")
    assert Uids(root, False, "seed")("sr") != Uids(root, False, "seed")("sr")
    assert Uids(root, False, "seed")("sr").startswith(root)
    for bad in ("1.2.3", "1.02.3.", "1.a.", "1." * 25):
        with pytest.raises(PipelineError, match="UID root"):
            DicomOut(Path("x"), uid_root=bad)


def test_image_without_sop_instance_uid_is_one_line_error(tmp_path):
    ds = pydicom.dcmread(next((LEGACY / "studies").rglob("*.dcm")))
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / "x.dcm")
    previews = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(PipelineError, match="no SOPInstanceUID"):
        write_objects(DicomOut(tmp_path / "out"), [SimpleNamespace(path=tmp_path / "x.dcm")],
                      np.full(9, 0.5), np.array([0.5]), previews, {})
    assert not (tmp_path / "out").exists()


def test_dciodvfy_reports_no_error(written):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found: install it with `apt-get install dicom3tools` (Debian)")
    tmp, _ = written
    files = sorted((tmp / "dicom").glob("*.dcm"))
    assert files
    for f in files:
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        lines = (res.stdout + res.stderr).splitlines()
        assert not [ln for ln in lines if ln.startswith("Error")], f"{f.name}:\n" + "\n".join(lines)


def stage7_data(studies, data):
    """``studies`` (valid UIDs) as stage 7's input: data/test/<study>/<series>/ and test.csv."""
    rows = []
    for f in sorted(studies.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        (data / "test" / row[0] / row[1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, data / "test" / row[0] / row[1] / f.name)
        rows.append(row)
    test = pd.DataFrame(rows, columns=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    test.to_csv(data / "test.csv", index=False)
    return test


def stage7(data, out, *keys):
    return inference.main(["-c", str(CONFIG_DIR / "demo" / "inference.yml"), f"data_dir={data}",
                           f"bundle={LEGACY / 'bundle'}", f"output_dir={out}", "num_workers=0", *keys])


@pytest.fixture(scope="module")
def stage7_written(written):
    tmp, _ = written  # its valid-UID copy of the studies
    test = stage7_data(tmp / "studies", tmp / "data")
    keys = ["deterministic_uids=true", "dicom_key_images=1"]
    for k in ("1", "2"):
        assert stage7(tmp / "data", tmp / f"inf{k}", f"dicom_out={tmp / f'dcm{k}'}", *keys) == 0
    assert stage7(tmp / "data", tmp / "plain") == 0
    return tmp, test


def test_stage7_writes_one_sr_per_study_with_the_submissions_values(stage7_written):
    tmp, test = stage7_written
    sub = pd.read_csv(tmp / "inf1" / "submission.csv").set_index("id")["label"]
    for study, rows in test.groupby("StudyInstanceUID"):
        srs = [hd.sr.srread(f) for f in (tmp / "dcm1" / study).glob("SR_*.dcm")]
        assert len(srs) == 1 and srs[0].StudyInstanceUID == study
        exam_group, slice_group = srs[0].content.get_image_measurement_groups()
        np.testing.assert_allclose([m.value for m in exam_group.get_measurements()],
                                   [sub[f"{study}_{k}"] for k in EXAM_LABELS], atol=1e-6)
        per_image = {m.referenced_images[0].referenced_sop_instance_uid: m.value
                     for m in slice_group.get_measurements()}
        assert sorted(per_image) == sorted(rows["SOPInstanceUID"])  # every image referenced
        np.testing.assert_allclose([per_image[s] for s in rows["SOPInstanceUID"]],
                                   sub[rows["SOPInstanceUID"]].to_numpy(), atol=1e-6)
        scs = objects(tmp / "dcm1" / study, "SC")  # dicom_key_images=1: the most probable slice
        assert [sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs] == [max(per_image, key=per_image.get)]


def test_stage7_deterministic_uids_equal_across_runs(stage7_written):
    tmp, _ = stage7_written
    first = sorted(str(f.relative_to(tmp / "dcm1")) for f in (tmp / "dcm1").rglob("*.dcm"))
    assert first and first == sorted(str(f.relative_to(tmp / "dcm2")) for f in (tmp / "dcm2").rglob("*.dcm"))


def test_stage7_without_dicom_out_writes_no_object_and_the_same_submission(stage7_written):
    tmp, _ = stage7_written
    assert sorted(p.name for p in (tmp / "plain").iterdir()) == sorted(p.name for p in (tmp / "inf1").iterdir())
    assert not list((tmp / "plain").rglob("*.dcm"))
    assert (tmp / "plain" / "submission.csv").read_bytes() == (tmp / "inf1" / "submission.csv").read_bytes()
    assert pd.read_csv(tmp / "plain" / "errors.csv").empty
    records = [json.loads((tmp / d / "record.json").read_text()) for d in ("plain", "inf1")]
    decisive = [{k: r[k] for k in ("stage", "params", "inputs")} for r in records]
    assert decisive[0] == decisive[1]  # the dicom_* keys change no prediction


def test_stage7_study_whose_objects_fail_is_listed_and_the_rest_go_on(stage7_written, monkeypatch):
    tmp, test = stage7_written
    bad = sorted(test["StudyInstanceUID"].unique())[0]
    real = inference.write_study

    def failing(opts, ens, series_dir, *a):
        if opts.folder.name == bad:
            raise RuntimeError("disk full")
        return real(opts, ens, series_dir, *a)

    monkeypatch.setattr(inference, "write_study", failing)
    assert stage7(tmp / "data", tmp / "inf3", f"dicom_out={tmp / 'dcm3'}") == 0
    errors = pd.read_csv(tmp / "inf3" / "errors.csv")
    assert list(errors["StudyInstanceUID"]) == [bad] and "disk full" in errors["reason"][0]
    assert sorted(p.name for p in (tmp / "dcm3").iterdir()) == sorted(set(test["StudyInstanceUID"]) - {bad})
    assert len(list((tmp / "dcm3").rglob("SC_*.dcm"))) == 0  # dicom_key_images 0: the SR only


def test_predict_study_takes_deterministic_uids_from_the_config_or_the_flag():
    ens = SimpleNamespace(sources=[])
    cfg = {"bundle": "", "checkpoints": ["x"], "dicom_uid_root": "1.2.3.", "deterministic_uids": True}
    args = SimpleNamespace(dicom_out=Path("d"), cam_top_k=2, dicom_key_images=None, dicom_uid_root=None,
                           dicom_deterministic_uids=False)
    opts = predict_study.dicom_options(cfg, ens, args)
    assert (opts.deterministic, opts.uid_root, opts.key_images) == (True, "1.2.3.", 2)
    args.dicom_uid_root, args.dicom_deterministic_uids = "1.5.", True
    opts = predict_study.dicom_options({**cfg, "deterministic_uids": False}, ens, args)
    assert (opts.deterministic, opts.uid_root) == (True, "1.5.")
    assert not predict_study.dicom_options(cfg, ens, SimpleNamespace(dicom_out=None))
