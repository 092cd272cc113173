"""Exam labels as extra per-slice CNN targets (model.exam_targets): targets and their weights,
the flip swap, the model's outputs, training steps, the whole chain from CNN to inference, and
evaluate's AUC among positive exams."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import dump_embeddings
import evaluate
import train_rsna
from rsna_pe import metric
from rsna_pe.core import paths
from rsna_pe.core.config import load_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, TRAIN_COLUMNS
from rsna_pe.data.slice_data import SliceDataset, build_train_transform
from rsna_pe.models import exam_targets
from rsna_pe.models.cnn import build_cnn
from rsna_pe.models.networks import output_labels
from rsna_pe.train.checkpoint import load_trained
from rsna_pe.train.cnn_task import CNNTask
from rsna_pe.train.run_records import decisive_config
from support.cnn_data import SIZE, overrides, run_main, write_data
from support.workspace import CNN_FAST, DEMO, DUMP_ARGS, RNN_FAST, infer

CNN_CFG = DEMO / "train_cnn" / "rexnet200_examlabels.yml"
NAMES = ("central_pe", "leftsided_pe", "rightsided_pe", "rv_lv_ratio_gte_1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def tiny_model(**extra):
    return {"backbone": "rexnet_200", "pretrained": False, "pretrained_file": "", "dropout": 0.0,
            "exam_targets": {"labels": list(NAMES), "weight": 1.0}, **extra}


def frame():
    """Three studies of two slices: positive (left clot on slice 1), negative, indeterminate."""
    rows = []
    for study, img, exam in (("p", [0, 1], ("leftsided_pe", "central_pe", "rv_lv_ratio_gte_1")),
                             ("n", [0, 0], ("negative_exam_for_pe",)),
                             ("i", [0, 0], ("indeterminate",))):
        for z, y in enumerate(img):
            rows.append({**{k: int(k in exam) for k in EXAM_LABELS}, IMAGE_LABEL: y,
                         "StudyInstanceUID": study, "z_pos_order": z})
    return pd.DataFrame(rows)


def test_targets_and_weights_per_slice():
    y, w = exam_targets.slice_targets(frame(), NAMES + ("negative_exam_for_pe",))
    # columns: central, left, right, rv_lv >= 1, negative
    assert y.tolist() == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1],
                          [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # location only where a clot is in view, RV/LV on every slice of the positive exam,
    # negative_exam_for_pe everywhere
    assert w.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1],
                          [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]


def test_labels_in_exam_order_and_errors():
    assert exam_targets.target_labels({"exam_targets": {"labels": ["rightsided_pe", "central_pe"]}}) == \
        ("central_pe", "rightsided_pe")
    assert exam_targets.target_labels({}) == () and exam_targets.target_labels(None) == ()
    with pytest.raises(PipelineError, match="not an exam label"):
        exam_targets.target_labels({"exam_targets": {"labels": ["pe_present_on_image"]}})
    with pytest.raises(PipelineError, match="go together"):
        exam_targets.flip_order(("rightsided_pe",))
    assert exam_targets.flip_order(("central_pe",)) is None


def test_flip_swaps_left_and_right_targets(tmp_path):
    import cv2

    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:, : SIZE // 4] = 200  # bright on the image's left: flipped, it is on the right
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    acfg = load_config(CNN_CFG)["augment"]
    t = build_train_transform({**acfg, "hflip": 0.5}, SIZE, record_flips=True)
    t.set_random_seed(0)
    labels = np.array([[1, 1, 0, 1, 0]], np.float32)  # image, central, left, right, rv_lv
    ds = SliceDataset([tmp_path / "a.jpg"], labels, SIZE, t, weights=np.ones((1, 4), np.float32),
                      flip_order=exam_targets.flip_order(NAMES))
    seen = set()
    for _ in range(20):
        x, y, w = ds[0]
        flipped = x[:, -1].float().mean() > 100
        assert y.tolist() == ([1, 1, 1, 0, 0] if flipped else [1, 1, 0, 1, 0])
        assert w.tolist() == [1, 1, 1, 1]
        seen.add(bool(flipped))
    assert seen == {True, False}
    assert labels.tolist() == [[1, 1, 0, 1, 0]]  # the dataset's own array is never changed


def test_forward_keeps_the_image_logit_and_with_exam_adds_the_exam_ones():
    torch.manual_seed(0)
    m = build_cnn(tiny_model()).eval()
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        image, every = m(x), m(x, with_exam=True)
    assert image.shape == (2,) and every.shape == (2, 1 + len(NAMES))
    assert torch.allclose(every[:, 0], image)
    # off: the recipe's model, same weights from the same seed
    torch.manual_seed(0)
    plain = build_cnn({k: v for k, v in tiny_model().items() if k != "exam_targets"})
    torch.manual_seed(0)
    off = build_cnn(tiny_model(exam_targets={"labels": []}))
    assert not hasattr(off, "exam_head") and off.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), plain.state_dict().values()))


def test_embedding_ends_with_the_logits_only_when_asked():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    spec = tiny_model()["exam_targets"]
    m = build_cnn(tiny_model(exam_targets={**spec, "in_embedding": True})).eval()
    plain = build_cnn(tiny_model()).eval()
    with torch.no_grad():
        emb, feats, logits = m.embedding(x), m.features(x), m(x, with_exam=True)
        assert torch.equal(plain.embedding(x), plain.features(x))
    assert emb.shape == (3, feats.shape[1] + 1 + len(NAMES))
    assert torch.equal(emb[:, :feats.shape[1]], feats)
    assert torch.allclose(emb[:, feats.shape[1]:], logits, atol=1e-6)
    with pytest.raises(PipelineError, match="in_embedding needs"):
        build_cnn(tiny_model(exam_targets={"labels": [], "in_embedding": True}))


def test_output_labels_and_the_recorded_config():
    cfg = load_config(CNN_CFG)
    assert output_labels(cfg) == [IMAGE_LABEL, "chronic_pe", "acute_and_chronic_pe", "central_pe",
                                          "leftsided_pe", "rightsided_pe", "rv_lv_ratio_gte_1",
                                          "rv_lv_ratio_lt_1"]
    recipe = load_config(DEMO / "train_cnn" / "rexnet200_bce.yml")
    assert output_labels(recipe) == [IMAGE_LABEL]
    # off, the option is not recorded: runs made before it keep their record
    assert "exam_targets" not in decisive_config(recipe)["model"]


def test_a_few_steps_lower_both_losses():
    torch.manual_seed(0)
    cfg = {"network": "cnn", "loss": {"name": "bce"}, "train": {"channels_last": True}, "model": tiny_model()}
    task = CNNTask(cfg)
    model = task.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (8, SIZE, SIZE, 3), dtype=torch.uint8)
    y = torch.tensor([[i % 2, 1, i % 2, 1 - i % 2, 1] for i in range(8)], dtype=torch.float32)
    w = torch.ones(8, len(NAMES))
    w[0] = 0  # a slice that counts for nothing
    losses = []
    for _ in range(6):
        loss, out = task.step(model, (x, y, w), torch.device("cpu"))
        assert out == {}
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        _, out = task.step(model, (x, y, w), torch.device("cpu"))
    m = task.val_metrics([out])
    assert m["val_loss"] == pytest.approx(m["val_image_loss"] + m["val_exam_loss"])
    assert {f"val_auc_{n}" for n in NAMES} <= set(m)


@pytest.fixture(scope="module")
def data(module_dir):
    """cnn_data's JPEGs with exam labels: even studies positive (left clot, RV/LV >= 1)."""
    root = write_data(module_dir / "data")
    csv = paths.fold_csv(root, SIZE)
    df = pd.read_csv(csv)
    pos = df["fold"] % 2 == 0
    df.loc[pos, ["leftsided_pe", "rv_lv_ratio_gte_1"]] = 1
    df.loc[~pos, "negative_exam_for_pe"] = 1
    df.loc[~pos, IMAGE_LABEL] = 0
    df.loc[pos & (df["fold"] % 4 == 0), "rightsided_pe"] = 1
    df.to_csv(csv, index=False)
    return root


def test_training_run_logs_the_extra_aucs(data, tmp_path):
    run_main(["-c", str(CNN_CFG), *overrides(data, tmp_path, **{"augment.enabled": True})])
    run = paths.run_dir(tmp_path, "rexnet200_examlabels", 0)
    rows = pd.read_csv(run / "metrics.csv")
    assert {"val_image_loss", "val_exam_loss", "val_auc_leftsided_pe"} <= set(rows.columns)
    model, ckpt = load_trained(run / "best.ckpt")  # the label-order check accepts it
    assert ckpt["record"]["params"]["labels"][0] == IMAGE_LABEL and len(ckpt["record"]["params"]["labels"]) == 8


def test_dump_head_and_inference_take_the_cnn(workspace, tmp_path, monkeypatch):
    """The option's CNN through stages 5, 6 and 7 (they read features and the image logit)."""
    trained_ws = tmp_path / "ws"
    shutil.copytree(workspace, trained_ws)  # records hold relative paths: the copy stays valid
    monkeypatch.chdir(trained_ws)
    train_rsna.main(["-c", str(CNN_CFG), *CNN_FAST])
    dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / "rexnet200_examlabels.yml"), *DUMP_ARGS])
    train_rsna.main(["-c", str(DEMO / "train_rnn" / "rexnet200_examlabels.yml"), *RNN_FAST])
    dumped = list((trained_ws / "dump" / "v1" / "rexnet200_examlabels" / "fold_0").rglob("*.npz"))
    # the demo config hands the head the CNN's 1 + 7 logits after the 2560 features
    assert dumped and np.load(dumped[0])["embeddings"].shape[1] == 2560 + 8
    # and its record says what those 8 dims are
    logits = json.loads(dumped[0].parents[1].joinpath("record.json").read_text())["params"]["logits"]
    assert logits == [IMAGE_LABEL, *exam_targets.target_labels(load_config(CNN_CFG)["model"])]
    # its own output folder: the shared workspace may hold the recipe's submission already
    assert infer("models=[{cnn: rexnet200_examlabels, rnn: rexnet200_examlabels}]",
                 "output_dir=output/inference/examlabels") == 0
    sub = pd.read_csv(trained_ws / "output" / "inference" / "examlabels" / "submission.csv")
    assert len(sub) and sub["label"].between(0, 1).all()
    # A head that pools those logits (model.cnn_logits) on the same dumps, through stage 7
    pooled = tmp_path / "examlabels_pool.yml"
    pooled.write_text(f"base: {DEMO / 'train_rnn' / 'rexnet200_examlabels.yml'}\nmodel:\n  cnn_logits: 8\n")
    train_rsna.main(["-c", str(pooled), *RNN_FAST])
    head, _ = load_trained(paths.run_dir(trained_ws / "output" / "train_rnn", "examlabels_pool", 0) / "best.ckpt")
    assert head.logit_pool.n == 8 and head.logit_pool.linear.weight.abs().sum() > 0  # trained from 0
    assert infer("models=[{cnn: rexnet200_examlabels, rnn: examlabels_pool}]",
                 "output_dir=output/inference/examlabels_pool") == 0
    pooled_sub = pd.read_csv(trained_ws / "output" / "inference" / "examlabels_pool" / "submission.csv")
    assert pooled_sub["id"].tolist() == sub["id"].tolist() and not pooled_sub["label"].equals(sub["label"])


def test_evaluate_auc_among_positive_exams(tmp_path, capsys):
    """Four positive studies and one negative: the negative study's high central_pe score spoils
    the AUC over all studies, not the one among positives."""
    rows, exam, img = [], [], []
    truth = {"a": 1, "b": 1, "c": 0, "d": 0}  # central_pe of the positive studies
    score = {"a": 0.9, "b": 0.6, "c": 0.3, "d": 0.7, "n": 0.95}
    for study in ("a", "b", "c", "d", "n"):
        lab = dict.fromkeys(TRAIN_COLUMNS, 0)
        lab.update(StudyInstanceUID=study, SeriesInstanceUID=study + ".1", SOPInstanceUID=study + ".2")
        if study == "n":
            lab["negative_exam_for_pe"] = 1
        else:
            lab.update(central_pe=truth[study], rightsided_pe=1, rv_lv_ratio_lt_1=1, pe_present_on_image=1)
        rows.append(lab)
        v = np.full(9, 0.2)
        v[EXAM_LABELS.index("central_pe")] = score[study]
        exam.append(v)
        img.append([0.9 if study != "n" else 0.1])
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    sub = metric.to_submission(list(score), np.array(exam), [[s + ".2"] for s in score], img)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert evaluate.main(["--labels", str(tmp_path / "labels.csv"), str(tmp_path / "sub.csv"),
                          "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    central = json.loads((tmp_path / "s.json").read_text())["files"][0]["per_label"]["central_pe"]
    # among positives: pairs (a,c) (a,d) (b,c) right, (b,d) wrong -> 3/4; over all studies the
    # negative n (truth 0, score 0.95) also outranks both positives: 3/6
    assert central["auc_positive"] == pytest.approx(0.75) and central["auc"] == pytest.approx(0.5)
    assert "auc_pos" in out
