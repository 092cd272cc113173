"""The neighbour input (``dataset.input: neighbours``): the PE window of slices z-1, z, z+1 as
R, G, B, built the same way in training, the embedding dump and inference.

A copy of the shared workspace (tests/support/workspace.py) gets a neighbours CNN trained for a few
steps, its dump and head; the tests compare what each stage feeds the CNN with the G channels
of the stage-1 JPEGs decoded here directly.
"""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import dump_embeddings
import export_models
import inference
import predict_study
import train_rsna
from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.data.images import list_series_jpegs, read_jpeg
from rsna_pe.data.model_input import neighbour_stack, resize_slice
from rsna_pe.data.slice_data import neighbour_rows
from rsna_pe.infer.embed import Embedder
from rsna_pe.infer.ensemble import Ensemble
from rsna_pe.metric import validate_submission
from rsna_pe.models.networks import without_pretrained
from rsna_pe.records.provenance import read_record
from rsna_pe.train.checkpoint import find_checkpoint, load_trained
from rsna_pe.train.registry import get_task
from rsna_pe.train.run_records import decisive_config
from support.workspace import CNN_FAST, DEMO, DUMP_ARGS, RNN_FAST, SIZE

RUN = "rexnet200_neighbours"
PAIR = [f"models=[{{cnn: {RUN}, rnn: {RUN}}}]", "folds=[0]"]


# ----------------------------------------------------------------------------- the stack
def test_neighbour_stack_takes_the_pe_window_of_z_minus_1_z_z_plus_1_with_edges_repeated():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    out = neighbour_stack(imgs)
    g = imgs[:, 1]
    assert out.shape == imgs.shape and out.dtype == np.uint8
    for z, (prev, nxt) in enumerate([(0, 1), (0, 2), (1, 3), (2, 3)]):
        assert np.array_equal(out[z], np.stack([g[prev], g[z], g[nxt]]))
    one = imgs[:1]
    assert np.array_equal(neighbour_stack(one)[0], np.stack([one[0, 1]] * 3))
    assert neighbour_stack(imgs[:0]).shape == (0, 3, 5, 6)


def test_neighbour_rows_follow_z_within_each_series_whatever_the_row_order():
    df = pd.DataFrame({"StudyInstanceUID": ["a", "b", "a", "a", "b", "c"],
                       "SeriesInstanceUID": ["1", "2", "1", "1", "2", "3"],
                       "z_pos_order": [2, 1, 0, 1, 0, 0]})
    # rows: a/z2=0, b/z1=1, a/z0=2, a/z1=3, b/z0=4, c/z0=5
    assert neighbour_rows(df).tolist() == [[3, 0], [4, 1], [2, 3], [2, 0], [4, 1], [5, 5]]
    assert neighbour_rows(df.iloc[:0]).shape == (0, 2)


# ----------------------------------------------------------------------------- a neighbours run
@pytest.fixture(scope="module")
def nb(workspace, module_dir):
    """A copy of the workspace with the neighbours CNN (input = JPEG size), its dump and head."""
    root = module_dir / "ws"
    shutil.copytree(workspace, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        train_rsna.main(["-c", str(DEMO / "train_cnn" / f"{RUN}.yml"), *CNN_FAST, f"dataset.size={SIZE}"])
        dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / f"{RUN}.yml"), *DUMP_ARGS])
        train_rsna.main(["-c", str(DEMO / "train_rnn" / f"{RUN}.yml"), *RNN_FAST])
        yield root


def _expected(series_dir):
    """{z: uint8 (3, H, W)}: the G channel of the series' stage-1 JPEGs of z-1, z, z+1, decoded
    here (edges repeat)."""
    g = [read_jpeg(p)[..., 1] for _, _, p in list_series_jpegs(series_dir)]
    last = len(g) - 1
    return {z: np.stack([g[max(z - 1, 0)], g[z], g[min(z + 1, last)]]) for z in range(len(g))}


def _series(root):
    """[(study, series)] of the training set, from the fold csv."""
    fold = pd.read_csv(paths.fold_csv(root / "data", SIZE), dtype=str)
    return sorted({tuple(k) for k in fold[["StudyInstanceUID", "SeriesInstanceUID"]].to_numpy()})


def test_training_dump_and_inference_inputs_are_the_g_channels_of_z_minus_1_z_z_plus_1(nb, monkeypatch):
    monkeypatch.chdir(nb)
    jpegs = paths.jpeg_dir(nb / "data", SIZE)
    ckpt = find_checkpoint("output/train_cnn", RUN, 0)
    model, saved = load_trained(ckpt)
    assert saved["config"]["dataset"]["input"] == "neighbours"

    # Training: a batch of the run's own training set (its config, augmentation off).
    cfg = without_pretrained(saved["config"])
    cfg["augment"]["enabled"] = False
    train_ds, val_ds = get_task(cfg).datasets()
    x, _ = next(iter(torch.utils.data.DataLoader(train_ds, batch_size=len(train_ds))))
    assert x.shape == (len(train_ds), SIZE, SIZE, 3)
    for k, f in enumerate(train_ds.files):
        path = nb / f.decode()
        z = int(path.name.split("_")[0])
        assert np.array_equal(x[k].permute(2, 0, 1).numpy(), _expected(path.parent)[z]), path

    # Dump: what stage 5 feeds the CNN, its kind read from the checkpoint.
    fed, start_many = [], Embedder.start_many

    def spy(self, stacks):
        fed.extend(stacks)
        return start_many(self, stacks)
    monkeypatch.setattr(Embedder, "start_many", spy)
    dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / f"{RUN}.yml"), *DUMP_ARGS,
                          "dump_root=dump/again"])
    series = _series(nb)
    assert [len(s) for s in fed] == [len(_expected(jpegs / st / se)) for st, se in series]
    for (study, ser), stack in zip(series, fed):
        want = _expected(jpegs / study / ser)
        assert np.array_equal(stack, np.stack([want[z] for z in range(len(want))]))

    # Inference: stage 7's reader on the same studies' DICOM, input kind from the checkpoint.
    ens = Ensemble([(ckpt, find_checkpoint("output/train_rnn", RUN, 0))], torch.device("cpu"), amp=False)
    (spec,) = ens.specs
    assert spec[-1] == "neighbours"
    for study, ser in series:
        _, images = ens.read(nb / "data" / "train" / study / ser)
        want = _expected(jpegs / study / ser)
        assert np.array_equal(images[spec], np.stack([want[z] for z in range(len(want))]))


def test_smaller_input_resizes_the_same_stack_in_training_and_dump(nb, monkeypatch):
    """Below the JPEG size the stack is resized as one 3-channel image, in both stages."""
    monkeypatch.chdir(nb)
    _, saved = load_trained(find_checkpoint("output/train_cnn", RUN, 0))
    cfg = without_pretrained(saved["config"])
    cfg["dataset"]["size"], cfg["augment"]["enabled"] = 24, False
    _, val_ds = get_task(cfg).datasets()
    path = nb / val_ds.files[0].decode()
    z = int(path.name.split("_")[0])
    want = resize_slice(np.ascontiguousarray(_expected(path.parent)[z].transpose(1, 2, 0)), 24)
    assert np.array_equal(val_ds[0][0].numpy(), want)
    study, ser = path.parent.parent.name, path.parent.name
    npz = paths.series_file(paths.npz_dir(nb / "data", SIZE), study, ser)
    loaded = dump_embeddings._SeriesNpz([(npz, None)], 24, "neighbours")[0][1]
    assert np.array_equal(loaded[z], want.transpose(2, 0, 1))


def test_neighbours_run_dump_head_and_inference_records(nb, monkeypatch):
    monkeypatch.chdir(nb)
    cnn_rec = read_record(paths.run_dir("output/train_cnn", RUN, 0))
    assert cnn_rec["params"]["config"]["dataset"]["input"] == "neighbours"
    # The recipe's record holds no input key: runs made before the option keep their record.
    bce_rec = read_record(paths.run_dir("output/train_cnn", "rexnet200_bce", 0))
    assert "input" not in bce_rec["params"]["config"]["dataset"]
    assert "input" not in decisive_config({"dataset": {"input": "windows", "fold": 0}})["dataset"]
    dump_rec = read_record(paths.dump_dir("dump/v1", RUN, 0))
    assert dump_rec["params"]["input"] == "neighbours"
    assert "input" not in read_record(paths.dump_dir("dump/v1", "rexnet200_bce", 0))["params"]
    emb = np.load(next(paths.dump_dir("dump/v1", RUN, 0).rglob("*.npz")))["embeddings"]
    assert emb.shape[1] == 2560 and np.isfinite(emb).all()

    out = nb / "output" / "inference" / "mixed"
    both = f"models=[{{cnn: rexnet200_bce, rnn: rexnet200_bce}}, {{cnn: {RUN}, rnn: {RUN}}}]"
    assert inference.main(["-c", str(DEMO / "inference.yml"), both, "folds=[0]", "num_workers=0",
                           f"output_dir={out}"]) == 0
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    test = pd.read_csv("data/test.csv", dtype=str)
    studies = sorted(test.StudyInstanceUID.unique())
    sops = [test[test.StudyInstanceUID == s].SOPInstanceUID.to_numpy() for s in studies]
    assert validate_submission(sub, studies, sops) == []
    assert len(json.loads((out / "record.json").read_text())["params"]["pairs"]) == 2


def test_an_ensemble_mixes_input_kinds_and_grad_cam_sees_each_models_input(nb, monkeypatch, tmp_path):
    monkeypatch.chdir(nb)
    pairs = [(find_checkpoint("output/train_cnn", r, 0), find_checkpoint("output/train_rnn", r, 0))
             for r in ("rexnet200_bce", RUN)]
    ens = Ensemble(pairs, torch.device("cpu"), amp=False)
    assert sorted(s[-1] for s in ens.specs) == ["neighbours", "windows"]
    test = pd.read_csv("data/test.csv", dtype=str)
    study, ser = test.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]]
    _, images = ens.read(nb / "data" / "test" / study / ser)
    win, nbr = (images[s] for s in sorted(ens.specs, key=lambda s: s[-1] != "windows"))
    assert np.array_equal(nbr, neighbour_stack(win))  # same size and codec: one decode, two inputs
    predict_study.main([str(nb / "data" / "test" / study / ser), "-c", str(DEMO / "inference.yml"),
                        "--out", str(tmp_path), "--cam-all", *PAIR])
    result = json.loads((tmp_path / "prediction.json").read_text())
    assert len(result["activation_map_slices"]) == len(result["slices"]) == len(win)
    assert (tmp_path / "viewer.html").is_file()
    # A bundle says what the CNN takes, and predicts from it as the run folders do.
    export_models.main(["-c", str(DEMO / "inference.yml"), "--out", str(tmp_path / "bundle"), *PAIR])
    cnn = json.loads((tmp_path / "bundle" / f"{RUN}.fold0.cnn.json").read_text())
    assert cnn["input"]["kind"] == "neighbours" and cnn["input"]["channels"] == ["pe z-1", "pe z", "pe z+1"]
    predict_study.main([str(nb / "data" / "test" / study / ser), "-c", str(DEMO / "inference.yml"),
                        "--out", str(tmp_path / "b"), "--cam-top-k", "0", f"bundle={tmp_path / 'bundle'}"])
    from_bundle = json.loads((tmp_path / "b" / "prediction.json").read_text())
    assert from_bundle["exam"] == pytest.approx(result["exam"], abs=1e-6)


def test_unknown_input_kind_is_a_one_line_error(nb, monkeypatch, tmp_path):
    monkeypatch.chdir(nb)
    with pytest.raises(PipelineError, match="dataset.input 'slab'"):
        train_rsna.main(["-c", str(DEMO / "train_cnn" / f"{RUN}.yml"), *CNN_FAST, "dataset.input=slab",
                         f"output_dir={tmp_path}"])
