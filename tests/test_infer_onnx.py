"""ONNX models in a bundle (rsna_pe.infer.onnx_export) run by ONNX Runtime without torch
(rsna_pe.infer.onnx_runtime): the same probabilities as the torch runtime, no torch imported,
an ONNX file treated as a stranger's data like every other bundle file."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest

import export_models
import inference
import predict_study
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.errors import ConfigError, PipelineError
from rsna_pe.infer import bundle_files, onnx_export
from rsna_pe.infer.ensemble import load_ensemble
from support.workspace import DEMO, SUB_ENV, export_bundle

LEGACY = CONFIG_DIR.parent / "tests" / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
PAIRS = ["folds=[0]"]  # the demo config's two runs (32 and 24 px CNNs), fold 0
TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_bundle(trained_ws, module_dir):
    return export_bundle(trained_ws, module_dir / "models", PAIRS)


def _labels(path):
    return pd.read_csv(path, dtype={"id": str}).set_index("id")["label"].sort_index()


def test_export_writes_checked_hashed_onnx_with_opset_and_versions(onnx_bundle):
    manifest = json.loads((onnx_bundle / "manifest.json").read_text())
    section = manifest["onnx"]
    names = [p[k] for p in manifest["pairs"] for k in ("cnn", "rnn")]
    assert len(names) == 4 and sorted(section["models"]) == sorted(names)
    assert section["opset"] == onnx_export.OPSET and section["versions"]["onnxruntime"]
    assert section["versions"]["torch"] and section["versions"]["onnxscript"]
    for name, info in section["models"].items():
        data = (onnx_bundle / info["file"]).read_bytes()
        assert manifest["files"][info["file"]] == bundle_files.sha256_hex(data)
        assert 0 <= info["max_abs_diff"] <= TOL
        assert onnx.load_model_from_string(data).opset_import[0].version == onnx_export.OPSET
    card = (onnx_bundle / "MODEL_CARD.md").read_text()
    assert "## ONNX" in card and f"opset {onnx_export.OPSET}" in card
    assert all(info["file"] in card for info in section["models"].values())


def _subprocess_onnx(ws, bundle_dir, out):
    """Stage 7 (two decoding workers) and predict_study with runtime onnx in one fresh
    interpreter; -> the heavy modules it imported."""
    series = "data/test/{}/{}".format(*pd.read_csv(ws / "data/test.csv", dtype=str).iloc[0, :2])
    script = f"""
import json, sys
import inference, predict_study
common = ["-c", {str(DEMO / 'inference.yml')!r}, "bundle={bundle_dir}", "runtime=onnx", "onnx_threads=1"]
inference.main([*common, "num_workers=2", "output_dir={out / 'stage7'}", "dicom_out={out / 'dicom7'}",
                "dicom_key_images=1"])
predict_study.main([{series!r}, *common, "--out", "{out / 'study'}", "--dicom-out", "{out / 'dicom'}",
                    "--cam-top-k", "2", "--preview-size", "32"])
print(json.dumps(sorted(m for m in ("torch", "timm", "captum") if m in sys.modules)))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ws, env=SUB_ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), series


def test_onnx_runtime_predicts_as_torch_without_importing_torch(trained_ws, onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_ws)
    imported, series = _subprocess_onnx(trained_ws, onnx_bundle, tmp_path / "onnx")
    assert imported == []
    common = ["-c", str(DEMO / "inference.yml"), f"bundle={onnx_bundle}", "num_workers=0"]
    inference.main([*common, f"output_dir={tmp_path / 'torch'}"])
    torch_sub, onnx_sub = _labels(tmp_path / "torch" / "submission.csv"), _labels(tmp_path / "onnx/stage7/submission.csv")
    assert onnx_sub.index.equals(torch_sub.index) and len(torch_sub) > 9
    assert np.abs(onnx_sub.to_numpy() - torch_sub.to_numpy()).max() <= TOL
    assert not np.allclose(torch_sub.to_numpy(), torch_sub.mean())  # the comparison can fail
    record = json.loads((tmp_path / "onnx/stage7/record.json").read_text())
    assert record["params"]["runtime"] == "onnx"
    assert "runtime" not in json.loads((tmp_path / "torch" / "record.json").read_text())["params"]

    predict_study.main([series, *common, "--out", str(tmp_path / "torch_study"), "--cam-top-k", "2",
                        "--preview-size", "32"])
    want = json.loads((tmp_path / "torch_study" / "prediction.json").read_text())
    got = json.loads((tmp_path / "onnx" / "study" / "prediction.json").read_text())
    for key in want["exam"]:
        assert abs(got["exam"][key] - want["exam"][key]) <= TOL
    assert np.abs(np.array([s["pe_present_on_image"] for s in got["slices"]])
                  - [s["pe_present_on_image"] for s in want["slices"]]).max() <= TOL
    assert len(want["activation_map_slices"]) == 2 and got["activation_map_slices"] == []
    assert got["runtime"] == "onnx" and "ONNX Runtime" in got["activation_maps"] and "runtime" not in want
    page = (tmp_path / "onnx" / "study" / "viewer.html").read_text()
    assert "Grad-CAM needs runtime torch" in page and (tmp_path / "onnx" / "study" / "report.png").is_file()
    assert "Grad-CAM needs runtime torch" not in (tmp_path / "torch_study" / "viewer.html").read_text()
    dicom = sorted(p.name[:3] for p in (tmp_path / "onnx" / "dicom").rglob("*.dcm"))
    assert dicom == ["SC_", "SC_", "SR_"]  # the SR and key images (without an overlay)
    stage7 = sorted(p.name[:3] for p in (tmp_path / "onnx" / "dicom7").rglob("*.dcm"))
    assert stage7 == ["SC_"] * 3 + ["SR_"] * 3  # per study its SR and one key image


def test_a_bundle_without_onnx_runs_with_torch_and_is_refused_in_one_line_for_onnx(tmp_path):
    cfg = {"bundle": str(LEGACY / "bundle"), "runtime": "onnx", "batch_size": 4, "tta_flip": False}
    with pytest.raises(PipelineError, match="no ONNX models .* re-export it") as e:
        load_ensemble(cfg, None)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="key 'runtime' is 'tensorflow'"):
        load_ensemble({**cfg, "runtime": "tensorflow"}, None)
    with pytest.raises(ConfigError, match="set bundle=DIR"):
        load_ensemble({**cfg, "bundle": ""}, None)


@pytest.fixture(scope="module")
def legacy_onnx(module_dir):
    """The legacy bundle (made before ONNX export) with ONNX models added."""
    out = module_dir / "legacy_onnx"
    export_models.main(["-c", str(DEMO / "inference.yml"), "--from-bundle", str(LEGACY / "bundle"), "--onnx",
                        "--out", str(out)])
    return out


@pytest.mark.parametrize("tta", ["false", "true"])
def test_onnx_added_to_an_old_bundle_predicts_as_torch(legacy_onnx, tmp_path, tta):
    manifest = json.loads((legacy_onnx / "manifest.json").read_text())
    listed = {m["file"] for m in manifest["onnx"]["models"].values()}
    assert manifest["derived_from"] and {p.name for p in legacy_onnx.glob("*.onnx")} == listed
    got = {}
    for runtime in ("torch", "onnx"):
        predict_study.main([str(LEGACY / "studies"), "-c", str(DEMO / "inference.yml"), f"bundle={legacy_onnx}",
                            f"runtime={runtime}", f"tta_flip={tta}", "--out", str(tmp_path / runtime),
                            "--cam-top-k", "0"])
        got[runtime] = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / runtime).rglob("prediction.json")}
    assert sorted(got["onnx"]) == sorted(got["torch"]) and len(got["onnx"]) == len(EXPECTED) - 1
    for study, want in got["torch"].items():
        have = got["onnx"][study]
        assert max(abs(have["exam"][k] - v) for k, v in want["exam"].items()) <= TOL
        assert np.abs(np.array([s["pe_present_on_image"] for s in have["slices"]])
                      - [s["pe_present_on_image"] for s in want["slices"]]).max() <= TOL
    if tta == "false":  # the old bundle's recorded predictions, through ONNX
        for study, have in got["onnx"].items():
            np.testing.assert_allclose([s["pe_present_on_image"] for s in have["slices"]],
                                       EXPECTED[have["study"]]["slices"], atol=TOL)


def test_no_int8_models_are_offered(legacy_onnx, tmp_path, capsys):
    """Int8 CNNs moved the demo's test score by more than 1% for most calibrations
    (docs/speed.md): the export writes none and the settings have no switch for them."""
    assert not list(legacy_onnx.glob("*int8*")) and "int8" not in (legacy_onnx / "MODEL_CARD.md").read_text()
    with pytest.raises(SystemExit) as e:
        export_models.main(["-c", str(DEMO / "inference.yml"), "--from-bundle", str(LEGACY / "bundle"), "--onnx",
                            "--onnx-int8", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--onnx-int8" in capsys.readouterr().err and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="onnx_int8"):
        load_config(DEMO / "inference.yml", ["onnx_int8=true"])


@pytest.mark.parametrize("model", [
    {"head": "gru", "hidden": 8, "layers": 2},
    {"head": "lstm", "hidden": 8, "layers": 2, "impl": "packed", "neighbour_diff": True, "cnn_logits": 3},
    {"head": "transformer", "transformer": {"width": 16, "heads": 2, "ff": 32, "layers": 1}, "cnn_logits": 3},
], ids=["gru", "lstm-options", "transformer"])
def test_head_options_export_for_any_series_length(model, one_thread):
    import torch

    from rsna_pe.models.head import build_head

    torch.manual_seed(0)
    head = build_head({"input_dim": 35, "dropout": 0.1, **model}).eval()
    data, worst, exporter = onnx_export.head_onnx(head, torch.rand(6, 35), "head.onnx")  # checks 1-9 slices
    assert worst <= TOL and ("TorchScript" in exporter) == (model["head"] != "transformer")
    session = onnx_export.session_of(data, "head.onnx", "rnn", threads=1)
    x = torch.rand(1, 40, 35)
    with torch.inference_mode():
        want = head(x, torch.tensor([40]))
    got = session.run(None, {"embeddings": x.numpy(), "lengths": np.array([40])})
    assert max(np.abs(g - w.numpy()).max() for g, w in zip(got, want)) <= TOL


def test_a_failing_export_check_is_one_line_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # no difference passes
    with pytest.raises(PipelineError, match=r"rexnet200_bce\.fold0\.cnn\.onnx: its ONNX export differs .* not written") as e:
        export_models.main(["-c", str(DEMO / "inference.yml"), "--from-bundle", str(LEGACY / "bundle"), "--onnx",
                            "--out", str(tmp_path / "b")])
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


def _rewrite(b, name, data):
    """Replace a bundle file and its manifest hash, as whoever can edit the manifest can."""
    (b / name).write_bytes(data)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][name] = bundle_files.sha256_hex(data)
    (b / "manifest.json").write_text(json.dumps(manifest))


def _refused(b, *words):
    cfg = {"bundle": str(b), "runtime": "onnx", "batch_size": 4, "tta_flip": False, "onnx_threads": 1}
    with pytest.raises(PipelineError) as e:
        load_ensemble(cfg, None)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_hostile_onnx_files_are_refused(legacy_onnx, tmp_path, monkeypatch):
    b = shutil.copytree(legacy_onnx, tmp_path / "b")
    head = "rexnet200_bce.fold0.rnn.onnx"
    model = onnx.load(b / head)
    # Data outside the file: ONNX Runtime would read it from wherever the path points.
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    onnx.external_data_helper.set_external_data(weight, location="../../etc/passwd")
    weight.data_location, weight.raw_data = onnx.TensorProto.EXTERNAL, b""
    _rewrite(b, head, model.SerializeToString())
    _refused(b, head, "refers to external data")
    _rewrite(b, head, b"not a model at all")
    _refused(b, head, "not an ONNX model")
    shutil.copy(legacy_onnx / head, b / head)
    _rewrite(b, head, (legacy_onnx / "rexnet200_bce.fold0.cnn.onnx").read_bytes())  # a CNN where a head belongs
    _refused(b, head, "graph inputs/outputs", "rnn")
    shutil.copy(legacy_onnx / "manifest.json", b / "manifest.json")
    shutil.copy(legacy_onnx / head, b / head)
    monkeypatch.setitem(bundle_files.MAX_BYTES, ".onnx", 1000)
    _refused(b, ".onnx: larger than the 1,000 bytes")
    monkeypatch.undo()
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["onnx"]["models"]["rexnet200_bce.fold0.rnn"]["file"] = "../x.onnx"
    (b / "manifest.json").write_text(json.dumps(manifest))
    _refused(b, "manifest.json", "'../x.onnx' is not a plain file name")
    (b / "manifest.json").write_text((legacy_onnx / "manifest.json").read_text())
    (b / head).write_bytes(b"changed")
    _refused(b, head, "sha256 does not match")
