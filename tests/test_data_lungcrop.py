"""The lung crop (jpeg_crop: lung): boxes on phantom studies with known lungs, the square and
its margin, the fallback, stage 1's cropped set and its record, reruns, and stage 7 reading the
very pixels of the cropped JPEGs."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import make_csv
import make_image
import make_npz
from rsna_pe.core import paths
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.data.dicom import read_dataset, series_files, to_hu
from rsna_pe.data.images import (
    SERIES_MANIFEST,
    conversion_params,
    convert_series,
    list_series_jpegs,
    read_jpeg,
    read_npz_images,
)
from rsna_pe.data.lungcrop import crop_params, lung_box, slice_lungs, square_box, union
from rsna_pe.data.model_input import resize_stack
from rsna_pe.infer.ensemble import Ensemble
from rsna_pe.records import provenance
from rsna_pe.synthetic import generate
from rsna_pe.synthetic.anatomy import phantom
from rsna_pe.synthetic.plan import plan
from support.prep_data import quiet_write_series
from support.workspace import snapshot

SYN = dict(n_train=4, n_test=1, slices=(4, 6), matrix=64, seed=1, positive_fraction=0.5)
JPEG = 32
STAGE = {make_image: ["data_dir=data", f"jpeg_size={JPEG}", "workers=1"],
         make_csv: ["data_dir=data", f"jpeg_size={JPEG}", "n_splits=2"],
         make_npz: ["data_dir=data", f"jpeg_size={JPEG}", "workers=1"]}


@pytest.fixture(scope="module")
def syn(module_dir):
    """A tiny synthetic set and its plan (the phantoms' geometry), stages 1, 2 and 4 run on it
    lung-cropped and whole-slice."""
    root = module_dir
    generate(root / "data", workers=1, **SYN)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for crop in ("lung", "none"):
            for stage, argv in STAGE.items():
                stage.main([*argv, f"jpeg_crop={crop}"])
    return root, plan(**SYN)


def _series_dir(root, spec):
    return root / "data" / spec.split / spec.study_uid / spec.series_uid


def _phantom_lungs(spec):
    """The lungs' bounding box in pixels (x0, y0, x1, y1) over the series, from the phantom's
    geometry: pixel i is painted when its centre (i + 0.5) * 2 / n - 1 lies in the ellipse."""
    ph, _ = phantom(spec)
    n = spec.matrix
    px = lambda v: (v + 1) * n / 2  # noqa: E731  normalised coordinate -> pixel edge
    disks = [d for t in spec.t for d in ph.lungs(t)]
    return (min(px(d.cx - d.rx) for d in disks), min(px(d.cy - d.ry) for d in disks),
            max(px(d.cx + d.rx) for d in disks), max(px(d.cy + d.ry) for d in disks))


def _still(spec):
    """No motion ghost (a ghost smears the lungs sideways, widening the box on purpose)."""
    return not spec.motion and not spec.labels["qa_motion"]


# ----------------------------------------------------------------------------- the box
def test_box_matches_the_phantoms_lungs(syn):
    root, specs = syn
    still = [s for s in specs if _still(s)]
    assert len(still) >= 2
    for spec in still:
        want = np.array(_phantom_lungs(spec))
        files = series_files(_series_dir(root, spec))
        # Each slice as stored (padding of -3024 HU outside the field of view, air around the body).
        found = union(slice_lungs(to_hu(read_dataset(f), f)) for f in files)
        assert np.abs(np.array(found) - want).max() <= 1.5, (found, want)
        # The series' box: that, squared about its centre (margin 0), then padded by 5 % a side.
        x0, y0, x1, y1 = lung_box(_series_dir(root, spec), 0.0)
        w, h = found[2] - found[0], found[3] - found[1]
        assert x1 - x0 == y1 - y0 == max(w, h)
        assert x0 <= found[0] and y0 <= found[1] and x1 >= found[2] and y1 >= found[3]
        assert abs((x0 + x1) - (found[0] + found[2])) <= 1 and abs((y0 + y1) - (found[1] + found[3])) <= 1
        p = lung_box(_series_dir(root, spec), 0.05)
        assert p[2] - p[0] == p[3] - p[1] == round(max(w, h) * 1.1)


def test_square_box_pads_squares_and_stays_inside():
    assert square_box((10, 20, 50, 40), (100, 100), 0.0) == (10, 10, 50, 50)  # wide: taller box
    assert square_box((10, 20, 50, 40), (100, 100), 0.25) == (0, 0, 60, 60)   # 60 px, shifted in
    assert square_box((70, 80, 95, 99), (100, 100), 0.1) == (67, 70, 97, 100)  # bottom right corner
    assert square_box((0, 0, 90, 30), (50, 120), 0.1) == (20, 0, 70, 50)  # shrunk to the image, centred
    x0, y0, x1, y1 = square_box((30, 30, 40, 41), (64, 64), 0.05)
    assert x1 - x0 == y1 - y0 == 12 and 0 <= x0 and y1 <= 64


def test_no_lungs_falls_back_to_the_whole_image(tmp_path, caplog):
    rng = np.random.default_rng(0)
    hu = (40 + rng.normal(0, 15, size=(3, 48, 48))).round().astype(np.int16)  # soft tissue only
    hu[:, 20:24, 20:24] = -800  # a lung-like spot far below the least lung
    quiet_write_series(tmp_path / "s", hu, [0, 2.5, 5])
    with caplog.at_level(logging.WARNING):
        assert lung_box(tmp_path / "s", 0.05) is None
    lines = [r.getMessage() for r in caplog.records if "no lungs" in r.getMessage()]
    assert len(lines) == 1 and str(tmp_path / "s") in lines[0] and "full image" in lines[0]
    convert_series(tmp_path / "s", tmp_path / "crop", 32, crop_margin=0.05)
    convert_series(tmp_path / "s", tmp_path / "whole", 32)
    assert json.loads((tmp_path / "crop" / SERIES_MANIFEST).read_text())["crop_box"] is None
    for (_, _, a), (_, _, b) in zip(list_series_jpegs(tmp_path / "crop"), list_series_jpegs(tmp_path / "whole")):
        assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------------------- stages 1, 2, 4
def test_cropped_set_is_named_and_records_its_boxes(syn):
    root, specs = syn
    data = root / "data"
    out = paths.jpeg_dir(data, JPEG, crop="lung")
    assert out.name == f"train-jpegs-{JPEG}-lungcrop" and paths.jpeg_dir(data, JPEG).name == f"train-jpegs-{JPEG}"
    assert paths.fold_csv(data, JPEG, crop="lung").is_file() and paths.npz_dir(data, JPEG, crop="lung").is_dir()
    assert paths.fold_csv(data, JPEG, crop="lung").parent.name == out.name == paths.npz_dir(data, JPEG, crop="lung").name
    # The record holds the crop's settings; the whole-slice set's record is as it always was.
    assert provenance.read_record(out)["params"] == {"split": "train", **conversion_params(JPEG, 95, 0.05)}
    assert provenance.read_record(out)["params"]["crop"] == crop_params(0.05)
    assert provenance.read_record(paths.jpeg_dir(data, JPEG))["params"] == {"split": "train", **conversion_params(JPEG, 95)}
    assert "crop" not in conversion_params(JPEG, 95)
    boxes = pd.read_csv(out / "boxes.csv", dtype={"StudyInstanceUID": str, "SeriesInstanceUID": str})
    train = [s for s in specs if s.split == "train"]
    assert len(boxes) == len(train)
    for spec in train:
        box = lung_box(_series_dir(root, spec), 0.05)
        m = json.loads((out / spec.study_uid / spec.series_uid / SERIES_MANIFEST).read_text())
        row = boxes[boxes.SeriesInstanceUID == spec.series_uid].iloc[0]
        assert m["crop_box"] == list(box) == row[["x0", "y0", "x1", "y1"]].tolist()
        assert not (paths.jpeg_dir(data, JPEG) / spec.study_uid / spec.series_uid / "boxes.csv").exists()
    # Folds are the same on both sets.
    fold = [pd.read_csv(paths.fold_csv(data, JPEG, crop=c)) for c in ("lung", "none")]
    assert fold[0].equals(fold[1])


def test_cropped_jpeg_is_the_box_windowed(syn):
    root, specs = syn
    spec = next(s for s in specs if s.split == "train")
    box = lung_box(_series_dir(root, spec), 0.05)
    x0, y0, x1, y1 = box
    jpegs = list_series_jpegs(paths.jpeg_dir(root / "data", JPEG, crop="lung") / spec.study_uid / spec.series_uid)
    files = {f.stem: f for f in series_files(_series_dir(root, spec))}
    _, sop, path = jpegs[len(jpegs) // 2]
    hu = to_hu(read_dataset(files[sop]), files[sop])[y0:y1, x0:x1]
    from rsna_pe.data.dicom import hu_to_image
    from rsna_pe.data.model_input import jpeg_roundtrip
    assert np.array_equal(read_jpeg(path), jpeg_roundtrip(hu_to_image(hu, JPEG), 95))


def test_unchanged_rerun_writes_nothing_and_other_margin_stops(syn, monkeypatch):
    root, _ = syn
    monkeypatch.chdir(root)
    before = snapshot(root / "data")
    for stage, argv in STAGE.items():
        assert not stage.main([*argv, "jpeg_crop=lung"])
    assert snapshot(root / "data") == before
    with pytest.raises(PipelineError, match=r"lungcrop: JPEG set was made with other settings \(params.crop.margin"):
        make_image.main([*STAGE[make_image], "jpeg_crop=lung", "lung_crop_margin=0.1"])
    with pytest.raises(PipelineError, match="jpeg_crop=lungs: expected one of none, lung"):
        make_image.main([*STAGE[make_image], "jpeg_crop=lungs"])


# ----------------------------------------------------------------------------- stage 7
class _Features(torch.nn.Module):
    """Stands in for a CNN: only the ensemble's reading is under test here."""

    def embedding(self, x):
        return x.float().mean((2, 3))


def _member(root, crop, size):
    """(model, checkpoint fields, head, where) of a CNN trained on the ``crop`` JPEG set."""
    jpegs = provenance.read_record(paths.jpeg_dir(root / "data", JPEG, crop=crop))["params"]
    ckpt = {"config": {"dataset": {"size": size}}, "record": {"params": {"input_params": {"jpegs": jpegs}}}}
    return _Features(), ckpt, torch.nn.Identity(), f"{crop}.ckpt"


def test_stage7_input_equals_the_cropped_jpegs(syn, monkeypatch):
    """An ensemble of a lung-cropped CNN (input 24 px) and a whole-slice one (32 px) reads each
    series once, windows it once per (JPEG size, box), and gives each CNN exactly the pixels of
    its own stage-1 set (as the dump reads them from stage 4's npz)."""
    root, specs = syn
    import rsna_pe.infer.ensemble as ensemble
    views = []
    real = ensemble.read_series_images
    monkeypatch.setattr(ensemble, "read_series_images", lambda d, v: views.append(v) or real(d, v))
    ens = Ensemble.from_models([_member(root, "lung", 24), _member(root, "none", JPEG)], {}, [],
                               torch.device("cpu"), amp=False, channels_last=False)
    crop_spec, whole_spec = ens.specs
    assert crop_spec == (JPEG, 95, 24, 0.05, "windows") and whole_spec == (JPEG, 95, JPEG, None, "windows")
    for spec in (s for s in specs if s.split == "train"):
        infos, images = ens.read(_series_dir(root, spec))
        box = lung_box(_series_dir(root, spec), 0.05)
        assert views[-1] == [(JPEG, box), JPEG]
        for crop, key, size in (("lung", crop_spec, 24), ("none", whole_spec, JPEG)):
            with np.load(paths.series_file(paths.npz_dir(root / "data", JPEG, crop=crop), spec.study_uid,
                                           spec.series_uid)) as z:
                assert list(z["sop"]) == [i.sop for i in infos]
                assert np.array_equal(images[key], resize_stack(read_npz_images(z, "npz"), size))


def test_crop_recorded_with_another_version_is_refused(syn):
    root, _ = syn
    member = _member(root, "lung", JPEG)
    member[1]["record"]["params"]["input_params"]["jpegs"]["crop"]["version"] = 0
    with pytest.raises(PipelineError, match="crop="):
        Ensemble.from_models([member], {}, [], torch.device("cpu"), amp=False, channels_last=False)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("root", [CONFIG_DIR, CONFIG_DIR / "demo"])
def test_lungcrop_variant_configs(root):
    cnn = load_config(root / "train_cnn" / "rexnet200_lungcrop.yml")
    bce = load_config(root / "train_cnn" / "rexnet200_bce.yml")
    dump = load_config(root / "dump_embeddings" / "rexnet200_lungcrop.yml")
    head = load_config(root / "train_rnn" / "rexnet200_lungcrop.yml")
    assert cnn["jpeg_crop"] == dump["jpeg_crop"] == head["jpeg_crop"] == "lung"
    assert bce["jpeg_crop"] == "none" and load_config(root / "make_image.yml")["jpeg_crop"] == "none"
    drop = ("run_name", "config_file", "jpeg_crop")
    assert {k: v for k, v in cnn.items() if k not in drop} == {k: v for k, v in bce.items() if k not in drop}
    assert cnn["run_name"] == dump["run_name"] == head["dataset"]["cnn_run"] == "rexnet200_lungcrop"
    assert (dump["cnn_run"] or dump["run_name"]) == "rexnet200_lungcrop"


def test_activation_maps_of_a_cropped_cnn_land_on_its_box(syn):
    """predict_study draws every CNN's map on the whole slice: a cropped CNN's map goes into its box."""
    from rsna_pe.viz.cam import placed
    root, specs = syn
    spec = next(s for s in specs if s.split == "train")
    ens = Ensemble.from_models([_member(root, "lung", 24), _member(root, "none", JPEG)], {}, [],
                               torch.device("cpu"), amp=False, channels_last=False)
    regions = ens.crop_regions(_series_dir(root, spec))
    x0, y0, x1, y1 = lung_box(_series_dir(root, spec), 0.05)
    n = spec.matrix
    assert regions == {ens.specs[0]: (x0 / n, y0 / n, x1 / n, y1 / n), ens.specs[1]: None}
    out = placed(np.ones((1, 8, 8), np.float32), regions[ens.specs[0]], n)
    assert out[0, y0:y1, x0:x1].min() == 1 and out.sum() == (x1 - x0) * (y1 - y0)


def test_a_series_lung_box_is_searched_once_for_the_models_and_the_viewer(syn, monkeypatch):
    import rsna_pe.infer.ensemble as ensemble
    root, specs = syn
    calls = []
    real = ensemble.lung_box
    monkeypatch.setattr(ensemble, "lung_box", lambda d, m: calls.append(str(d)) or real(d, m))
    ens = Ensemble.from_models([_member(root, "lung", 24), _member(root, "none", JPEG)], {}, [],
                               torch.device("cpu"), amp=False, channels_last=False)
    first, second = (_series_dir(root, s) for s in specs[:2])
    ens.read_with(first, [JPEG])
    ens.crop_regions(first)
    assert calls == [str(first)]
    ens.read(second)  # another series: its own box
    assert calls == [str(first), str(second)]
