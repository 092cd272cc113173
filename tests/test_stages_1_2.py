"""Stages 1-2: DICOM reading (order, rescale, codecs), JPEG conversion, failures, reruns, folds."""
import logging

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

import make_csv
import make_image
from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import TRAIN_COLUMNS
from rsna_pe.data.dicom import read_dataset, read_series_order, series_files, to_hu
from rsna_pe.data.images import list_series_jpegs, read_jpeg
from rsna_pe.data.windows import hu_to_rgb
from rsna_pe.synthetic import write_series

RNG = np.random.default_rng(0)


def _volume(n, size=32):
    hu = RNG.integers(-1100, 1200, size=(n, size, size))
    hu[:, :, : size // 2] = np.arange(n)[:, None, None] * 40 - 900  # slice k identifiable by HU
    return hu


def _hu_of(series_dir):
    return {f.stem: to_hu(read_dataset(f), f) for f in series_files(series_dir)}


def test_z_order_with_shuffled_files_and_instance_number_fallback(tmp_path, caplog):
    z = np.array([30.0, -10.0, 5.0, 12.5, -40.0])
    sops = write_series(tmp_path / "a", _volume(5), z)
    assert [i.sop for i in read_series_order(tmp_path / "a")] == [sops[k] for k in np.argsort(z)]
    # No ImagePositionPatient: InstanceNumber (here opposite to the list order) decides, with a warning.
    sops = write_series(tmp_path / "b", _volume(4), [0, 1, 2, 3], instance_numbers=[4, 3, 2, 1],
                        drop_tags=("ImagePositionPatient",))
    with caplog.at_level(logging.WARNING):
        order = read_series_order(tmp_path / "b")
    assert [i.sop for i in order] == sops[::-1]
    assert "InstanceNumber" in caplog.text


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEG2000Lossless, RLELossless])
def test_compressed_syntaxes_decode_to_same_hu(tmp_path, syntax):
    hu = _volume(3)
    plain = write_series(tmp_path / "plain", hu, [0, 1, 2])
    packed = write_series(tmp_path / "packed", hu, [0, 1, 2], transfer_syntax=syntax)
    a, b = _hu_of(tmp_path / "plain"), _hu_of(tmp_path / "packed")
    for sp, sc, k in zip(plain, packed, range(3)):
        assert np.array_equal(a[sp], hu[k]) and np.array_equal(b[sc], hu[k])


def test_per_slice_rescale(tmp_path):
    hu = _volume(3)
    sops = write_series(tmp_path / "s", hu, [0, 1, 2], intercept=[-1024, -1000, -2048], slope=[1, 1, 2])
    got = _hu_of(tmp_path / "s")
    assert np.array_equal(got[sops[0]], hu[0]) and np.array_equal(got[sops[1]], hu[1])
    # slope 2 stores round((hu + 2048) / 2): HU exact up to the slope's resolution.
    assert np.abs(got[sops[2]] - hu[2]).max() <= 1


def _dataset(root, n_series=3, n=5, size=40, syntax=None):
    """train.csv + DICOM folders; returns {series: (study, hu volume in z order, sops in z order)}."""
    rows, truth = [], {}
    for s in range(n_series):
        study, series = f"1.2.3.{s}", f"1.2.4.{s}"
        hu = _volume(n, size)
        z = RNG.permutation(n) * 2.5
        sops = write_series(root / "train" / study / series, hu, z, seed=s,
                            transfer_syntax=syntax or JPEGLosslessSV1 if s == 1 else
                            (syntax or __import__("pydicom").uid.ExplicitVRLittleEndian))
        order = np.argsort(z)
        truth[series] = (study, hu[order], [sops[k] for k in order])
        rows += [(study, series, sop) + (0,) * 14 for sop in sops]
    pd.DataFrame(rows, columns=TRAIN_COLUMNS).to_csv(root / "train.csv", index=False)
    return truth


def _run_stage1(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    make_image.main(["data_dir=data", "jpeg_size=32", "workers=2", *extra])


def test_stage1_writes_z_ordered_resized_jpegs_and_manifest(tmp_path, monkeypatch):
    truth = _dataset(tmp_path / "data")
    _run_stage1(tmp_path, monkeypatch)
    out = paths.jpeg_dir(tmp_path / "data", 32)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert len(manifest) == 15
    import cv2
    for series, (study, hu, sops) in truth.items():
        files = list_series_jpegs(out / study / series)
        assert [f[1] for f in files] == sops and [f[0] for f in files] == list(range(5))
        for k, (_, _, path) in enumerate(files):
            img = read_jpeg(path)
            assert img.shape == (32, 32, 3)
            want = hu_to_rgb(cv2.resize(hu[k].astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA))
            assert np.abs(img.astype(int) - want).mean() < 6  # JPEG q95 of noisy content
        got = manifest[manifest.SeriesInstanceUID == series].sort_values("z_pos_order")
        assert got.SOPInstanceUID.tolist() == sops


def test_stage1_logs_bad_files_converts_the_rest_and_reruns_skip(tmp_path, monkeypatch):
    truth = _dataset(tmp_path / "data")
    bad = list(truth)[0]
    study = truth[bad][0]
    files = series_files(tmp_path / "data" / "train" / study / bad)
    files[0].write_bytes(files[0].read_bytes()[:300])    # truncated
    files[1].write_bytes(b"not a dicom file at all" * 10)  # garbage
    with pytest.raises(PipelineError, match=r"1 of 3 series failed.*errors.csv"):
        _run_stage1(tmp_path, monkeypatch)
    out = paths.jpeg_dir(tmp_path / "data", 32)
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert errors.SeriesInstanceUID.tolist() == [bad] and errors.file[0].endswith(".dcm")
    assert not (out / study / bad).exists()                # nothing half-written at the final path
    assert not [p for p in (out / study).iterdir() if p.name.startswith(".")]
    good = [s for s in truth if s != bad]
    assert all((out / truth[s][0] / s).is_dir() for s in good)

    # Stage 2 drops the failed series with a warning, after folds on all studies.
    _add_studies_for_folds(tmp_path / "data")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    with pytest.raises(PipelineError):
        _run_stage1(tmp_path, monkeypatch)                 # the bad series still fails ...
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg") if p in stamp} == stamp  # ... the rest is skipped
    make_csv.main(["data_dir=data", "jpeg_size=32"])
    fold = pd.read_csv(paths.fold_csv(tmp_path / "data", 32), dtype=str)
    assert bad not in set(fold.SeriesInstanceUID) and set(good) <= set(fold.SeriesInstanceUID)
    assert fold.fold.notna().all() and fold.z_pos_order.notna().all()


def _add_studies_for_folds(data):
    """Stage 2 needs >= 15 studies: add clean ones to train.csv and to the DICOM folders."""
    df = pd.read_csv(data / "train.csv", dtype=str)
    rows = []
    for s in range(3, 16):
        study, series = f"1.2.3.{s}", f"1.2.4.{s}"
        sops = write_series(data / "train" / study / series, _volume(2, 32), [0, 1], seed=s)
        rows += [(study, series, sop) + (str(s % 2),) + ("0",) * 13 for sop in sops]
    pd.concat([df, pd.DataFrame(rows, columns=TRAIN_COLUMNS)]).to_csv(data / "train.csv", index=False)


def test_stage2_rejects_rows_without_jpeg(tmp_path, monkeypatch):
    _dataset(tmp_path / "data", n_series=2)
    _add_studies_for_folds(tmp_path / "data")
    _run_stage1(tmp_path, monkeypatch)
    df = pd.read_csv(tmp_path / "data" / "train.csv", dtype=str)
    extra = df.iloc[:1].copy()
    extra["SOPInstanceUID"] = "9.9.9"
    pd.concat([df, extra]).to_csv(tmp_path / "data" / "train.csv", index=False)
    with pytest.raises(PipelineError, match=r"1 train.csv rows have no JPEG.*9\.9\.9"):
        make_csv.main(["data_dir=data", "jpeg_size=32"])


def test_hex_ids_read_without_pydicoms_warning_other_bad_uids_still_warn(tmp_path, caplog):
    import warnings

    from support.prep_data import quiet_write_series, run_inline, write_dataset
    keys = write_dataset(tmp_path / "data")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        run_inline("make_image.py", tmp_path)
    assert len(list(paths.jpeg_dir(tmp_path / "data", 32).glob("*/*/*.jpg"))) == 2 * len(keys)
    assert not [w for w in seen if "VR UI" in str(w.message)] and "VR UI" not in caplog.text
    # Only all-hex values are accepted quietly; another invalid UID still warns.
    quiet_write_series(tmp_path / "odd", _volume(1), [0], sop_uids=["1.2.x"])
    with pytest.warns(UserWarning, match=r"Invalid value for VR UI: '1\.2\.x'"):
        read_series_order(tmp_path / "odd")


def test_header_sop_names_the_image_with_one_warning_per_series(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    write_series(data / "train" / "1.1" / "1.2", _volume(3), [2.0, 0.0, 1.0], sop_uids=["9.1", "9.2", "9.3"],
                 file_names=["x.dcm", "y.dcm", "9.3.dcm"])
    # No SOPInstanceUID in the header: the file's position names the image, never its file name
    # (which may hold a patient's name).
    write_series(data / "train" / "2.1" / "2.2", _volume(2), [0.0, 1.0], drop_tags=("SOPInstanceUID",),
                 file_names=["a.dcm", "b.dcm"])
    rows = [("1.1", "1.2", s) for s in ("9.1", "9.2", "9.3")] + [("2.1", "2.2", s) for s in "ab"]
    pd.DataFrame([r + (0,) * 14 for r in rows], columns=TRAIN_COLUMNS).to_csv(data / "train.csv", index=False)
    with caplog.at_level(logging.WARNING):
        _run_stage1(tmp_path, monkeypatch, "workers=1")
    out = paths.jpeg_dir(data, 32)
    assert [(k, s) for k, s, _ in list_series_jpegs(out / "1.1" / "1.2")] == [(0, "9.2"), (1, "9.3"), (2, "9.1")]
    assert [(k, s) for k, s, _ in list_series_jpegs(out / "2.1" / "2.2")] == [(0, "unnamed-0000"),
                                                                              (1, "unnamed-0001")]
    odd = [r for r in caplog.records if "not named by their SOPInstanceUID" in r.getMessage()]
    assert len(odd) == 1 and "2 of 3 files" in odd[0].getMessage() and "1.2" in odd[0].getMessage()
