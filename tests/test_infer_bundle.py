"""Model bundles (rsna_pe.infer.bundle): export, the same predictions as the run folders, hashes and
format version checked, no pickle loaded."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import export_models
import inference
import predict_study
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS, LABELS
from rsna_pe.infer import bundle
from support.workspace import DEMO, ONE_PAIR, export_bundle


@pytest.fixture(scope="module")
def exported(trained_ws, module_dir):
    return export_bundle(trained_ws, module_dir / "models", ONE_PAIR)


def test_bundle_layout_manifest_and_card(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format"] == bundle.FORMAT and manifest["format_version"] == bundle.FORMAT_VERSION
    assert manifest["pairs"] == [{"cnn": "rexnet200_bce.fold0.cnn", "rnn": "rexnet200_bce.fold0.rnn"}]
    names = {p.name for p in exported.iterdir()}
    assert names == set(manifest["files"]) | {"manifest.json"}
    assert {"rexnet200_bce.fold0.cnn.safetensors", "rexnet200_bce.fold0.rnn.json", "prior.json",
            "MODEL_CARD.md"} <= names
    cnn = json.loads((exported / "rexnet200_bce.fold0.cnn.json").read_text())
    assert cnn["config"]["model"]["backbone"] == "rexnet_200" and cnn["input"]["size"] == 32
    assert cnn["input"]["channels"] == ["lung", "pe", "mediastinal"]
    rnn = json.loads((exported / "rexnet200_bce.fold0.rnn.json").read_text())
    assert rnn["labels"]["exam"] == list(EXAM_LABELS) and rnn["postprocess"] == bundle.POSTPROCESS
    prior = json.loads((exported / "prior.json").read_text())
    assert prior["mean"] == rnn["prior"] and set(prior["mean"]) == set(LABELS)
    card = (exported / "MODEL_CARD.md").read_text()
    assert "Colak" in card and "not a medical device" in card.lower().replace("\n", " ")
    assert f"{rnn['cv']['score']:.4f}" in card  # the fold's CV score from scores.json


def _submission(ws, out, *extra):
    inference.main(["-c", str(DEMO / "inference.yml"), *ONE_PAIR, "num_workers=0", f"output_dir={out}", *extra])
    return pd.read_csv(out / "submission.csv", dtype={"id": str}).set_index("id")["label"].sort_index()


def test_bundle_predicts_as_the_run_folders_without_unpickling(trained_ws, exported, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_ws)
    runs = _submission(trained_ws, tmp_path / "runs")

    def no_pickles(*a, **k):
        raise AssertionError("torch.load called while loading a bundle")

    monkeypatch.setattr(torch, "load", no_pickles)
    # bundle= replaces the run folders: point those at nothing to prove they are not read.
    from_bundle = _submission(trained_ws, tmp_path / "bundle", f"bundle={exported}",
                              "cnn_output=nowhere", "rnn_output=nowhere")
    assert from_bundle.index.equals(runs.index)
    assert np.allclose(from_bundle.to_numpy(), runs.to_numpy(), rtol=1e-6, atol=1e-7)
    test = pd.read_csv("data/test.csv", dtype=str)
    series = "data/test/{}/{}".format(*test.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]])
    predict_study.main([series, "-c", str(DEMO / "inference.yml"), "--out", str(tmp_path / "study"),
                        f"bundle={exported}", "--cam-top-k", "1", "--preview-size", "32"])
    pred = json.loads((tmp_path / "study" / "prediction.json").read_text())
    assert np.allclose([s["pe_present_on_image"] for s in pred["slices"]],
                       runs[[s["sop"] for s in pred["slices"]]].to_numpy(), rtol=1e-6)


def _copy(exported, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(exported, dst)
    return dst


@pytest.mark.parametrize("name", ["rexnet200_bce.fold0.cnn.safetensors", "rexnet200_bce.fold0.rnn.json",
                                  "prior.json"])
def test_tampered_file_is_refused_naming_it(exported, tmp_path, name):
    b = _copy(exported, tmp_path)
    data = bytearray((b / name).read_bytes())
    data[len(data) // 2] ^= 1
    (b / name).write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=rf"{name}: sha256 does not match") as e:
        bundle.load_bundle(b)
    assert "\n" not in str(e.value)


def test_format_version_missing_and_unlisted_files_are_refused(exported, tmp_path):
    b = _copy(exported, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(PipelineError, match="manifest.json: bundle format version 99"):
        bundle.load_bundle(b)
    (b / "manifest.json").write_text(json.dumps(manifest))
    (b / "prior.json").unlink()
    with pytest.raises(PipelineError, match="prior.json: listed .* but missing"):
        bundle.load_bundle(b)
    shutil.copy(exported / "prior.json", b / "prior.json")
    evil = {**manifest, "files": {**manifest["files"], "../outside.json": "0" * 64}}
    (b / "manifest.json").write_text(json.dumps(evil))
    with pytest.raises(PipelineError, match="'../outside.json' is not a plain file name"):
        bundle.load_bundle(b)


def test_export_refuses_a_non_empty_folder(trained_ws, exported, monkeypatch):
    monkeypatch.chdir(trained_ws)
    with pytest.raises(PipelineError, match="--overwrite"):
        export_models.main(["-c", str(DEMO / "inference.yml"), "--out", str(exported), *ONE_PAIR])


def test_export_from_the_run_folders_with_operating_points_and_calibration(trained_ws, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_ws)
    ops = {"format": "rsna-pe-operating-points", "format_version": 1, "rule": "positive when p >= threshold",
           "labels": {"pe_present": [{"target_sensitivity": 0.9, "threshold": 0.25}]}}
    cal = {"format": "rsna-pe-calibration", "format_version": 1, "method": "temperature",
           "labels": {"central_pe": {"temperature": 2.0}}}
    (tmp_path / "operating_points.json").write_text(json.dumps(ops))
    (tmp_path / "cal.json").write_text(json.dumps(cal))
    out = tmp_path / "models"
    export_models.main(["-c", str(DEMO / "inference.yml"), "--out", str(out), *ONE_PAIR,
                        "--operating-points", str(tmp_path), "--calibration", str(tmp_path / "cal.json")])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == bundle.CALIBRATED_VERSION and "derived_from" not in manifest
    assert {"operating_points.json", "calibration.json"} <= set(manifest["files"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "sensitivity >= 0.90 at p >= 0.2500" in card and "central_pe: temperature 2.0000" in card
    assert "Colak" in card  # the rest of the card as without them
    site = bundle.open_bundle(out)[3]
    assert site["operating_points.json"]["doc"] == ops and site["calibration.json"]["doc"] == cal
