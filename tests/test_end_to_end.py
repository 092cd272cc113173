"""Stages 4-7 on a tiny generated data set: npz, embedding dump, inference, predict_study.

The shared workspace (tests/support/workspace.py) runs the whole chain once; the tests check each
stage's outputs against independent computations.
"""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import dump_embeddings
import predict_study
from inference import predict_all
from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import LABELS
from rsna_pe.data.images import jpeg_name, read_jpeg, read_npz_images
from rsna_pe.data.model_input import resize_stack
from rsna_pe.infer.embed import GROUP_CHUNKS
from rsna_pe.infer.ensemble import Ensemble, series_dirs
from rsna_pe.metric import consistency_violations, from_submission, validate_submission
from rsna_pe.train.checkpoint import find_checkpoint, load_trained
from support.workspace import DEMO, SIZE, SMALL
from support.workspace import infer as _infer


def test_npz_contents_order_and_labels(ws):
    fold = pd.read_csv(paths.fold_csv(ws / "data", SIZE), dtype={"SOPInstanceUID": str, "StudyInstanceUID": str,
                                                                  "SeriesInstanceUID": str})
    for (study, series), g in list(fold.groupby(["StudyInstanceUID", "SeriesInstanceUID"]))[:4]:
        g = g.sort_values("z_pos_order")
        with np.load(paths.series_file(paths.npz_dir(ws / "data", SIZE), study, series)) as z:
            imgs = read_npz_images(z, "npz")
            assert imgs.dtype == np.uint8 and imgs.shape == (len(g), 3, SIZE, SIZE)
            assert list(z["sop"]) == g.SOPInstanceUID.tolist()
            assert np.array_equal(z["labels"], g[list(LABELS)].to_numpy(np.float32))
            k = len(g) // 2
            jpg = read_jpeg(paths.jpeg_dir(ws / "data", SIZE) / study / series /
                            jpeg_name(k, g.SOPInstanceUID.iloc[k]))
            assert np.array_equal(imgs[k], jpg.transpose(2, 0, 1))


def test_embeddings_equal_direct_features_and_rerun_skips(ws):
    ckpt = find_checkpoint("output/train_cnn", "rexnet200_bce", 0)
    model, _ = load_trained(ckpt)
    out = paths.dump_dir("dump/v1", "rexnet200_bce", 0)
    files = sorted(out.rglob("*.npz"))
    assert len(files) == 24
    study, series = files[0].parent.name, files[0].stem
    with np.load(files[0]) as z:
        emb, sop = z["embeddings"], list(z["sop"])
    assert emb.dtype == np.float32 and emb.shape == (len(sop), model.num_features)
    jpegs = paths.jpeg_dir(ws / "data", SIZE) / study / series
    x = torch.from_numpy(np.stack([read_jpeg(jpegs / jpeg_name(k, s)).transpose(2, 0, 1)
                                   for k, s in enumerate(sop)]))
    with torch.inference_mode():
        direct = model.features(x).numpy()
    np.testing.assert_allclose(emb, direct, rtol=1e-4, atol=1e-5)
    # Chunk size changes nothing; a rerun skips finished files.
    stamp = files[0].stat().st_mtime_ns
    dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / "rexnet200_bce.yml"), f"jpeg_size={SIZE}",
                          "num_workers=0", "batch_size=1", "dump_root=dump/chunk1"])
    with np.load(paths.series_file(paths.dump_dir("dump/chunk1", "rexnet200_bce", 0), study, series)) as z:
        np.testing.assert_allclose(z["embeddings"], emb, rtol=1e-4, atol=1e-5)
    dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / "rexnet200_bce.yml"), f"jpeg_size={SIZE}",
                          "num_workers=0"])
    assert files[0].stat().st_mtime_ns == stamp


def test_dump_missing_checkpoint_is_one_line_error(ws):
    with pytest.raises(PipelineError, match=r"fold_2.*best\.ckpt|best\.ckpt.*fold_2|fold 2"):
        dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / "rexnet200_bce.yml"), "dataset.fold=2"])


def test_inference_writes_valid_submission_matching_test_csv(ws):
    _infer()
    sub = pd.read_csv("output/inference/rexnet200/submission.csv", dtype={"id": str})
    test = pd.read_csv("data/test.csv", dtype=str)
    studies = sorted(test.StudyInstanceUID.unique())
    sops = [test.SOPInstanceUID[test.StudyInstanceUID == s].to_numpy() for s in studies]
    expected = set(test.SOPInstanceUID) | {f"{s}_{k}" for s in studies for k in LABELS[:9]}
    assert set(sub.id) == expected and len(sub) == len(expected)
    assert validate_submission(sub, studies, sops) == []
    exam, img = from_submission(sub, studies, sops)
    assert not any(consistency_violations(exam, img))
    assert pd.read_csv("output/inference/rexnet200/errors.csv").empty


def test_corrupt_study_is_logged_and_filled_with_prior(ws, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ws / "data" / "test", data / "test")
    shutil.copy(ws / "data" / "test.csv", data / "test.csv")
    test = pd.read_csv(data / "test.csv", dtype=str)
    bad = sorted(test.StudyInstanceUID.unique())[0]
    for f in sorted((data / "test" / bad).rglob("*.dcm"))[:1]:
        f.write_bytes(b"garbage")
    out = tmp_path / "out"
    _infer(f"data_dir={data}", f"output_dir={out}")
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert errors.StudyInstanceUID.tolist() == [bad] and ".dcm" in errors.reason[0]
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str}).set_index("id")["label"]
    prior = json.loads((paths.run_dir("output/train_rnn", "rexnet200_bce", 0) / "prior.json").read_text())
    bad_sops = test.SOPInstanceUID[test.StudyInstanceUID == bad]
    np.testing.assert_allclose(sub[bad_sops].to_numpy(), prior["pe_present_on_image"], rtol=1e-6)
    with pytest.raises(PipelineError, match="unreadable.*no .*submission.csv written"):
        _infer(f"data_dir={data}", f"output_dir={tmp_path / 'out2'}", "on_error=fail")
    assert (tmp_path / "out2" / "errors.csv").is_file() and not (tmp_path / "out2" / "submission.csv").exists()


def _numpy_round_trip(ens, images):
    """The previous stage 7 computation: per pair, the CNN's features of the whole study to the
    host and back into the head, each pair's probabilities copied on their own."""
    out = []
    with torch.inference_mode():
        for spec, emb, rnn in ens.members:
            feats = torch.from_numpy(emb.model.features(torch.from_numpy(images[spec])).numpy())[None]
            img_logit, exam_logit = rnn(feats, torch.tensor([feats.shape[1]]))
            out.append((torch.sigmoid(img_logit[0]).numpy(), torch.sigmoid(exam_logit[0]).numpy()))
    return out


def _pad_like_a_gpu(ens, chunk):
    """The GPU path on a CPU: fixed-size chunks, consecutive studies in one pass."""
    for _, emb, _ in ens.members:
        emb.chunk, emb.pad, emb.group = chunk, True, GROUP_CHUNKS * chunk


def test_device_path_matches_the_numpy_round_trip(ws):
    """Both pairs (32 and 24 px inputs), three studies of 4-6 slices: the probabilities of the
    on-device path, one study at a time or several in one pass, with and without padded chunks,
    equal the previous computation's."""
    pairs = [(find_checkpoint("output/train_cnn", r, 0), find_checkpoint("output/train_rnn", r, 0))
             for r in ("rexnet200_bce", "rexnet200_focal")]
    test = pd.read_csv("data/test.csv", dtype=str)
    dirs = series_dirs(ws / "data" / "test", test)
    expected = test.groupby("StudyInstanceUID")["SOPInstanceUID"].apply(list).to_dict()
    ens = Ensemble(pairs, torch.device("cpu"), chunk=64, amp=False)
    studies = [ens.read(dirs[s])[1] for s in sorted(dirs)]
    want = [_numpy_round_trip(ens, images) for images in studies]
    plain = predict_all(ens, sorted(dirs), dirs, expected, 0)[0]
    for chunk in (None, 1, 4, 64):
        if chunk:
            _pad_like_a_gpu(ens, chunk)
        got = [ens.member_outputs(images) for images in studies], ens.member_outputs_many(studies)
        for outs in got:
            for study_got, study_want in zip(outs, want):
                for (img, exam), (img_w, exam_w) in zip(study_got, study_want):
                    np.testing.assert_allclose(img, img_w, rtol=1e-5, atol=1e-6)
                    np.testing.assert_allclose(exam, exam_w, rtol=1e-5, atol=1e-6)
        grouped, errors = predict_all(ens, sorted(dirs), dirs, expected, 0)
        assert not errors and grouped.keys() == plain.keys()
        for s in plain:
            assert list(grouped[s][0]) == list(plain[s][0])
            np.testing.assert_allclose(grouped[s][1], plain[s][1], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(grouped[s][2], plain[s][2], rtol=1e-5, atol=1e-6)


def test_predict_study_writes_json_and_png(ws, tmp_path, capsys):
    test = pd.read_csv("data/test.csv", dtype=str)
    study, series = test.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]]
    predict_study.main([str(ws / "data" / "test" / study / series), "-c", str(DEMO / "inference.yml"),
                        "--out", str(tmp_path), "models=[{cnn: rexnet200_bce, rnn: rexnet200_bce}]", "folds=[0]"])
    result = json.loads((tmp_path / "prediction.json").read_text())
    assert set(result["exam"]) == set(LABELS[:9])
    assert len(result["slices"]) == (test.StudyInstanceUID == study).sum()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "negative_exam_for_pe" in capsys.readouterr().out


def _training_path(ens, dump_file):
    """Stage 1 -> CNN -> dump -> head: the head on the dumped embeddings, as stage 6 saw them."""
    with np.load(dump_file) as z:
        emb, sop = torch.from_numpy(z["embeddings"]), list(z["sop"])
    with torch.inference_mode():
        img_logit, exam_logit = ens.members[0][2](emb[None], torch.tensor([len(emb)]))
    return sop, torch.sigmoid(img_logit[0]).numpy(), torch.sigmoid(exam_logit[0]).numpy()


@pytest.mark.parametrize("run,size", [("rexnet200_bce", SIZE), ("rexnet200_focal", SMALL)])
def test_training_and_inference_see_the_same_pixels(ws, run, size):
    """Training studies through stage 1 -> CNN -> dump -> head and through stage 7's reader:
    identical model input, so the same probabilities; without the JPEG codec at inference they
    would differ by the JPEG round trip (printed for the docs)."""
    pair = (find_checkpoint("output/train_cnn", run, 0), find_checkpoint("output/train_rnn", run, 0))
    fold = pd.read_csv(paths.fold_csv("data", SIZE), dtype=str)
    series = fold[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates().to_numpy()
    largest = {}
    for codec in (True, False):
        ens = Ensemble([pair], torch.device("cpu"), chunk=64, amp=False, jpeg_codec=codec)
        diff = 0.0
        for study, ser in series:
            sop, img, exam = _training_path(ens, paths.series_file(paths.dump_dir("dump/v1", run, 0), study, ser))
            infos, images = ens.read(ws / "data" / "train" / study / ser)
            assert [i.sop for i in infos] == sop
            if codec:  # the very pixels stage 5 fed the CNN
                with np.load(paths.series_file(paths.npz_dir("data", SIZE), study, ser)) as z:
                    want = resize_stack(read_npz_images(z, "npz"), size)
                assert np.array_equal(images[ens.specs[0]], want)
            (img_7, exam_7), = ens.member_outputs(images)
            diff = max(diff, np.abs(img_7 - img).max(), np.abs(exam_7 - exam).max())
        largest[codec] = diff
    print(f"\n{run} (JPEG {SIZE} px, input {size} px), {len(series)} studies: largest probability "
          f"difference {largest[True]:.2e} with the codec at inference, {largest[False]:.2e} without")
    assert largest[True] < 1e-5
