"""From slices to exams: per-slice clot detectors in the CNN (exam_targets.clot_targets: slice)
and the head's pooling of the CNN's own logits (model.cnn_logits)."""
import numpy as np
import pytest
import torch

from rsna_pe import exam_targets
from rsna_pe.config import load_config
from rsna_pe.errors import PipelineError
from rsna_pe.heads import LogitPool
from rsna_pe.rnn import RNNTask, build_rnn
from test_examlabels import NAMES, frame
from test_rnn import DIM, REPO, one_thread  # noqa: F401

HEAD = {"input_dim": DIM, "hidden": 6, "layers": 3, "dropout": 0.5,
        "transformer": {"width": 8, "layers": 2, "heads": 2, "ff": 16}}


# ----------------------------------------------------------------------------- CNN targets

def test_clot_detectors_count_every_slice_and_fire_on_clot_slices_only():
    y, w = exam_targets.slice_targets(frame(), NAMES + ("negative_exam_for_pe",), "slice")
    # rows: positive exam (slice 1 has the left clot), negative exam, indeterminate exam;
    # columns: central, left, right, rv_lv >= 1, negative
    assert y.tolist() == [[0, 0, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1],
                          [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # location on every slice of every exam; RV/LV and negative as in the default mode
    assert w.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 0, 1],
                          [1, 1, 1, 0, 1], [1, 1, 1, 0, 1]]
    # the default keeps the exam mode
    assert exam_targets.clot_targets({"exam_targets": {"labels": list(NAMES)}}) == "exam"
    with pytest.raises(PipelineError, match="clot_targets 'slices'"):
        exam_targets.clot_targets({"exam_targets": {"clot_targets": "slices"}})


def test_age_detectors_look_for_a_chronic_and_an_acute_clot():
    df = frame().iloc[:2].copy()  # the positive exam: slice 1 has a clot
    ages = ("chronic_pe", "acute_and_chronic_pe")
    want = {(0, 0): [0, 1], (1, 0): [1, 0], (0, 1): [1, 1]}  # acute, chronic, acute and chronic
    for (chronic, both), detectors in want.items():
        df["chronic_pe"], df["acute_and_chronic_pe"] = chronic, both
        y, w = exam_targets.slice_targets(df, ages, "slice")
        assert y.tolist() == [[0, 0], detectors] and w.tolist() == [[1, 1], [1, 1]]
    assert set(ages) <= set(exam_targets.columns(("chronic_pe",)))


def test_slice_mode_loss_is_a_mean_per_label_then_over_labels():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [3.0, 0.5]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # label 2 counted on one slice only
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    by_label = (bce[:, 0].mean() + bce[0, 1]) / 2
    torch.testing.assert_close(exam_targets.exam_loss(logits, y, w, per_label=True), by_label)
    torch.testing.assert_close(exam_targets.exam_loss(logits, y, w), (bce * w).sum() / 4)
    assert exam_targets.exam_loss(logits, y, torch.zeros_like(w), per_label=True) == 0


def test_the_slice_mode_reaches_the_training_set(monkeypatch):
    import rsna_pe.cnn as cnn
    seen = []
    monkeypatch.setattr(cnn, "slice_dataset", lambda *a: seen.append(a[-1]))
    monkeypatch.setattr(cnn, "read_fold_csv", lambda *a, **k: frame().assign(fold=[0, 0, 5, 5, 10, 10]))
    cfg = load_config(REPO / "configs/demo/train_cnn/rexnet200_combined_slice.yml",
                      ["dataset.data_dir=/nonexistent", "dataset.fold=0", "dataset.size=16"])
    task = cnn.CNNTask(cfg)
    task.datasets()
    assert seen == ["slice", "slice"] and task.per_label


# ----------------------------------------------------------------------------- head

def test_logit_pool_is_max_mean_and_pe_weighted_mean_over_real_slices():
    pool = LogitPool(3).double()
    with torch.no_grad():  # read the 9 pooled features out through the first 9 exam outputs
        pool.linear.weight.copy_(torch.eye(9, dtype=torch.float64))
    emb = torch.randn(2, 4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    emb[1, 2:] = 1e3  # padding of the second series
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = pool(emb, mask).detach().numpy()
    for i, n in enumerate((4, 2)):
        z = emb[i, :n, -3:].numpy()
        p = 1 / (1 + np.exp(-z[:, 0]))
        want = np.concatenate([z.max(0), z.mean(0), (p[:, None] * z).sum(0) / p.sum()])
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("head", ["lstm", "transformer"])
def test_a_new_pool_leaves_the_head_as_it_was(head):
    torch.manual_seed(0)
    plain = build_rnn({**HEAD, "head": head}).double().eval()
    pooled = build_rnn({**HEAD, "head": head, "cnn_logits": 3}).double().eval()
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["logit_pool.linear.bias", "logit_pool.linear.weight"] and not unexpected
    emb = torch.randn(2, 5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(plain(emb, torch.tensor([5, 3])), pooled(emb, torch.tensor([5, 3]))):
            torch.testing.assert_close(a, b, atol=0, rtol=0)  # zero-initialised: adds nothing


def test_bad_cnn_logits_is_a_one_line_error():
    with pytest.raises(PipelineError, match="model.cnn_logits 8"):
        build_rnn({**HEAD, "cnn_logits": DIM})


@pytest.mark.parametrize("root", ["configs", "configs/demo"])
def test_the_variant_configs(root):
    cnn = load_config(REPO / root / "train_cnn/rexnet200_combined_slice.yml")
    assert cnn["model"]["exam_targets"]["clot_targets"] == "slice" and cnn["jpeg_crop"] == "lung"
    assert exam_targets.in_embedding(cnn["model"]) and cnn["dataset"]["input"] == "neighbours"
    n_logits = 1 + len(exam_targets.target_labels(cnn["model"]))
    for name, cnn_run in (("combined_slice", "rexnet200_combined_slice"), ("combined_pool", "rexnet200_combined")):
        cfg = load_config(REPO / root / f"train_rnn/rexnet200_{name}.yml")
        m = cfg["model"]
        assert cfg["dataset"]["cnn_run"] == cnn_run and m["cnn_logits"] == n_logits
        assert m["input_dim"] == 2560 + n_logits and cfg["loss"]["name"] == "metric"
        assert build_rnn(m).logit_pool.n == n_logits
        RNNTask(cfg)
