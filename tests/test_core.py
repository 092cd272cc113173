"""Shared facts: windows, channel order, config loading and overrides, folds."""
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from rsna_pe.core.config import load_config
from rsna_pe.core.errors import ConfigError, DicomReadError, InputFileError, PipelineError
from rsna_pe.core.labels import EXAM_LABELS, LABELS
from rsna_pe.data.folds import assign_folds, val_fold_ids
from rsna_pe.data.images import jpeg_params, read_jpeg
from rsna_pe.data.windows import WINDOWS, hu_to_rgb, window


def test_labels_order():
    assert LABELS[-1] == "pe_present_on_image" and LABELS[:9] == EXAM_LABELS
    assert EXAM_LABELS[0] == "negative_exam_for_pe" and EXAM_LABELS[-1] == "rv_lv_ratio_lt_1"


def test_window_values_hand_computed():
    # PE window 100/700 spans -250..450: -250 -> 0, 100 -> round(127.5) = 128, 450 -> 255.
    assert window(np.array([-1000, -250, 100, 450, 2000]), 100, 700).tolist() == [0, 0, 128, 255, 255]
    # lung -600/1500 spans -1350..150: HU -600 -> 127.5 -> 128; mediastinal 40/400: 0 HU -> 102.
    assert window(np.array([-600]), -600, 1500).tolist() == [128]
    assert window(np.array([0]), 40, 400).tolist() == [round(255 * 160 / 400)]


def test_lookup_equals_formula_everywhere():
    hu = np.arange(-3000, 3001, dtype=np.int32).reshape(1, -1)
    expected = np.stack([window(hu, lv, wd) for lv, wd in WINDOWS.values()], axis=-1)
    assert np.array_equal(hu_to_rgb(hu), expected)
    assert np.array_equal(hu_to_rgb(hu, bgr=True), expected[..., ::-1])
    assert np.array_equal(hu_to_rgb(hu.astype(np.float32)), expected)


def test_jpeg_channel_order_is_lung_pe_mediastinal(tmp_path):
    hu = np.full((32, 32), -600, dtype=np.int32)  # lung window midpoint; PE 0; mediastinal 0
    hu[:, 16:] = 100                               # lung 246.5, PE 127.5, mediastinal 165.75
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), hu_to_rgb(hu, bgr=True), jpeg_params(95))
    rgb = read_jpeg(path)
    assert abs(int(rgb[5, 5, 0]) - 128) <= 2 and rgb[5, 5, 1] <= 2 and rgb[5, 5, 2] <= 2
    assert np.abs(rgb[5, 25].astype(int) - [247, 128, 166]).max() <= 2


def _write(path, text):
    path.write_text(text)
    return path


def test_config_base_and_typed_overrides(tmp_path):
    _write(tmp_path / "_base.yml", "a: 1\nb: {c: 0.5, d: x, e: true, f: [1, 2]}\n")
    cfg_file = _write(tmp_path / "run_x.yml", "base: _base.yml\nb: {d: y}\n")
    cfg = load_config(cfg_file, ["a=3", "b.c=1", "b.e=false", "b.f=[3]", "b.d=007"])
    assert cfg["run_name"] == "run_x"
    assert cfg["a"] == 3 and cfg["b"]["c"] == 1.0 and isinstance(cfg["b"]["c"], float)
    assert cfg["b"]["e"] is False and cfg["b"]["f"] == [3] and cfg["b"]["d"] == "007"
    assert load_config(cfg_file, ["b.c=3e-3"])["b"]["c"] == 0.003  # YAML 1.1 calls this a string


@pytest.mark.parametrize("override,msg", [
    ("b.zz=1", "unknown config key 'b.zz'"), ("zz.c=1", "unknown config key 'zz.c'"),
    ("a=hello", "expected int"), ("b.c=fast", "expected float"), ("b.e=1", "expected bool"), ("a", "not key=value"),
])
def test_config_override_errors(tmp_path, override, msg):
    f = _write(tmp_path / "c.yml", "a: 1\nb: {c: 0.5, e: true}\n")
    with pytest.raises(PipelineError, match=msg):
        load_config(f, [override])


def test_error_types_name_what_is_at_fault(tmp_path):
    """Config, DICOM and other file faults each have their type; all are PipelineErrors (what
    a stage reports in one line), their messages unchanged."""
    for cls in (ConfigError, DicomReadError, InputFileError):
        assert issubclass(cls, PipelineError)
    with pytest.raises(ConfigError, match="unknown config key 'zz'"):
        load_config(_write(tmp_path / "c.yml", "a: 1\n"), ["zz=1"])
    with pytest.raises(InputFileError, match="missing or unreadable JPEG") as e:
        read_jpeg(tmp_path / "none.jpg")
    assert (e.value.path, e.value.reason) == (str(tmp_path / "none.jpg"), "missing or unreadable JPEG")
    assert str(DicomReadError("a.dcm", "no pixel data")) == "a.dcm: no pixel data"


def test_core_modules_import_no_data_module():
    """ids and paths (the core) import nothing from the data layer (the DICOM reader)."""
    code = "import sys, rsna_pe.core.paths, rsna_pe.core.ids; print(*sorted(m for m in sys.modules if m.startswith('rsna_pe.')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="src", check=True)
    assert r.stdout.split() == ["rsna_pe.core", "rsna_pe.core.errors", "rsna_pe.core.ids", "rsna_pe.core.paths"]


def test_unknown_key_exits_with_one_line(tmp_path):
    f = _write(tmp_path / "c.yml", "data_dir: data\nsplit: train\nsize: 8\nquality: 95\nworkers: 1\n")
    r = subprocess.run([sys.executable, "src/make_image.py", "-c", str(f), "sizee=3"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: unknown config key 'sizee'"


def test_folds_equal_independent_stratified_kfold():
    rng = np.random.default_rng(0)
    studies = [f"s{i:03d}" for i in rng.permutation(60)]
    neg = {s: int(rng.random() < 0.67) for s in studies}
    df = pd.DataFrame([(s, neg[s]) for s in studies for _ in range(3)],
                      columns=["StudyInstanceUID", "negative_exam_for_pe"]).sample(frac=1, random_state=1)
    got = assign_folds(df)
    ordered = sorted(studies)
    expected = {}
    for k, (_, val) in enumerate(StratifiedKFold(15, shuffle=True, random_state=42).split(
            ordered, [neg[s] for s in ordered])):
        expected.update({ordered[i]: k for i in val})
    assert got == expected


def test_k_fold_mapping_and_too_few_studies():
    assert val_fold_ids(0, 3) == {0, 1, 2, 3, 4} and val_fold_ids(2, 3) == {10, 11, 12, 13, 14}
    df = pd.DataFrame({"StudyInstanceUID": list("abc"), "negative_exam_for_pe": [1, 0, 1]})
    with pytest.raises(PipelineError, match="needs at least 15"):
        assign_folds(df)


def _leaf_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


@pytest.mark.parametrize("script,config", [("make_image", None), ("train_rsna", "train_cnn/rexnet200_focal.yml"),
                                           ("train_rsna", "demo/train_rnn/rexnet200_bce.yml")])
def test_help_lists_every_config_key_with_default_and_comment(script, config, capsys):
    import importlib

    from rsna_pe.core.config import CONFIG_DIR
    path = CONFIG_DIR / (config or f"{script}.yml")
    argv = ["-c", str(path), "-h"] if config else ["-h"]
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    cfg = load_config(path)
    for key in _leaf_keys({k: v for k, v in cfg.items() if k not in ("run_name", "config_file")}):
        assert f"\n  {key}=" in out, key
    if script == "make_image":
        assert "  quality=95  # JPEG quality" in out and "  jpeg_size=512  # stage 1's image size" in out
    else:
        assert "  seeds=[42, 84, 126]  # one per fold" in out
