"""Stage 6 head options: the default head unchanged, the metric-weighted loss, neighbour
differences, GRU and transformer heads, their configs and one short training run."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rsna_pe import metric
from rsna_pe.core import paths
from rsna_pe.core.config import load_config
from rsna_pe.core.errors import ConfigError
from rsna_pe.core.labels import EXAM_LABELS, EXAM_WEIGHTS, IMAGE_WEIGHT, LABELS
from rsna_pe.core.runtime import weights_digest
from rsna_pe.models.head import RNNHead, build_head
from rsna_pe.models.head_options import TransformerHead, neighbour_diff
from rsna_pe.models.losses import head_bce_loss, metric_loss
from rsna_pe.models.networks import build_network, output_labels, without_pretrained
from rsna_pe.train.head_task import HeadTask
from support.heads import DIM, REPO, expected_oof_ids, make_dump, one_thread, tiny_overrides  # noqa: F401

VARIANTS = {"bce_gru": ("gru", "bce"), "bce_transformer": ("transformer", "bce"),
            "bce_metricloss": ("lstm", "metric")}


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p) - torch.log1p(-p)


# ----------------------------------------------------------------------------- the recipe's head

def test_default_head_keeps_its_weights_and_outputs_for_a_seed():
    # Recorded before the head options existed: same seed, same parameters, same outputs.
    torch.manual_seed(0)
    model = build_head({"input_dim": DIM, "hidden": 6, "layers": 3, "dropout": 0.5, "impl": "auto"})
    model = model.double().eval()
    assert isinstance(model, RNNHead) and weights_digest(model.state_dict().items()) == "f347b6a3358fdc8c"
    emb = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        img, exam = model(emb, torch.tensor([5, 3]))
    want_img = [-8.808106574494e-04, -2.163746522746e-03, -1.030227074209e-03, -2.439450308724e-04,
                5.260074145594e-04]
    want_exam = [-2.652257950739e-03, -4.973357098156e-03, 3.492224665671e-03, 8.482559282884e-04,
                 -8.013027713057e-04, -4.716349382806e-05, -2.647262822531e-03, -5.087094240257e-03,
                 -3.311753573054e-04]
    np.testing.assert_allclose(img[0].numpy(), want_img, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(exam[1].numpy(), want_exam, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------- metric loss

def test_metric_loss_by_hand():
    # Exam A: 3 slices, images 1 0 1 (q = 2/3), central_pe 1 predicted 0.9, other exam labels
    # 0 predicted 0.5. Exam B: negative, 2 slices plus one padded; its images weigh nothing.
    img_p = torch.tensor([[0.8, 0.3, 0.6], [0.1, 0.2, 0.5]], dtype=torch.float64)
    img_y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # B's 3rd is padding
    exam_p = torch.full((2, 9), 0.5, dtype=torch.float64)
    exam_y = torch.zeros(2, 9, dtype=torch.float64)
    c = EXAM_LABELS.index("central_pe")
    exam_p[0, c], exam_y[0, c] = 0.9, 1.0
    exam_y[1, 0] = 1.0  # negative_exam_for_pe, predicted 0.5
    lengths = torch.tensor([3, 2])
    loss = metric_loss(logit(img_p), logit(exam_p), img_y, exam_y, lengths)
    w_c, w = 0.1877300613, 0.07361963
    exam_num = 0.6931471806 * (2.0 - w_c) + w_c * 0.1053605157   # sum of the 9 weights is 1.0
    image_num = w * (2 / 3) * (0.2231435513 + 0.3566749439 + 0.5108256238)
    want = (exam_num + image_num) / (2.0 + 3 * w * (2 / 3))
    assert sum(EXAM_WEIGHTS.values()) == pytest.approx(1.0, abs=1e-9) and IMAGE_WEIGHT == w
    assert loss.item() == pytest.approx(want, rel=1e-8)
    assert loss.item() == pytest.approx(0.6191567, abs=1e-7)


def test_metric_loss_of_probabilities_is_the_competition_score():
    rng = np.random.default_rng(0)
    lengths = [7, 3, 5, 1]
    steps = max(lengths)
    img_y = np.zeros((4, steps))
    img_y[0, 2:5] = 1
    img_y[2, :1] = 1
    exam_y = (rng.random((4, 9)) > 0.5).astype(float)
    img_p = rng.uniform(0.01, 0.99, (4, steps))
    exam_p = rng.uniform(0.01, 0.99, (4, 9))
    loss = metric_loss(logit(img_p), logit(exam_p), torch.tensor(img_y), torch.tensor(exam_y),
                       torch.tensor(lengths))
    want = metric.weighted_log_loss(exam_y, exam_p, [img_y[i, :n] for i, n in enumerate(lengths)],
                                    [img_p[i, :n] for i, n in enumerate(lengths)])
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_metric_loss_of_negative_exams_is_their_exam_terms_only():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4, 2])
    img_logits = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    exam_logits = torch.randn(2, 9, generator=g, dtype=torch.float64)
    exam_y = torch.zeros(2, 9, dtype=torch.float64)
    exam_y[:, 0] = 1
    junk_y = torch.tensor([[0.0] * 4, [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)  # positives only in padding
    loss = metric_loss(img_logits, exam_logits, junk_y, exam_y, lengths)
    w = torch.tensor([EXAM_WEIGHTS[k] for k in EXAM_LABELS], dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(exam_logits, exam_y, reduction="none")
    torch.testing.assert_close(loss, (bce * w).sum() / (2 * w.sum()))
    loss.backward()
    assert img_logits.grad.abs().sum() == 0


# ----------------------------------------------------------------------------- heads

def test_neighbour_diff_uses_the_series_own_edges():
    x = torch.tensor([[[1.0], [2.0], [4.0]], [[10.0], [30.0], [99.0]]])  # series 2: 2 slices + padding
    out = neighbour_diff(x, torch.tensor([3, 2]))
    assert out.shape == (2, 3, 3)
    assert out[0].tolist() == [[1, 0, -1], [2, 1, -2], [4, 2, 0]]
    assert out[1, :2].tolist() == [[10, 0, -20], [30, 20, 0]]  # the last real slice is its own next


def test_gru_head_packed_and_layered_agree():
    emb = torch.randn(3, 6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([6, 2, 4])
    outs = []
    for impl in ("packed", "layered"):
        torch.manual_seed(0)
        model = RNNHead(input_dim=DIM, hidden=5, layers=2, cell="gru", neighbour_diff=True, impl=impl)
        assert isinstance(model.lstm1, torch.nn.GRU) and model.lstm1.input_size == 3 * DIM
        with torch.no_grad():
            outs.append(model.double().eval()(emb, lengths))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_transformer_learned_positions_and_length_limit():
    torch.manual_seed(0)
    model = TransformerHead(input_dim=DIM, width=8, layers=1, heads=2, ff=16, position="learned",
                            max_len=4).eval()
    img, exam = model(torch.randn(2, 4, DIM), torch.tensor([4, 2]))
    assert img.shape == (2, 4) and exam.shape == (2, 9) and img[1, 2:].abs().sum() == 0
    with pytest.raises(Exception, match="max_len"):
        model(torch.randn(1, 5, DIM), torch.tensor([5]))


@pytest.mark.parametrize("cfg,msg", [({"head": "cnn"}, "model.head"),
                                     ({"head": "transformer", "transformer": {"widht": 8}}, "widht"),
                                     ({"head": "transformer", "transformer": {"width": 6, "heads": 4}}, "width")])
def test_bad_head_options_are_one_line_errors(cfg, msg):
    with pytest.raises(Exception, match=msg):
        build_head({"input_dim": DIM, **cfg})


def test_unknown_loss_is_an_error():
    with pytest.raises(Exception, match="bce or metric"):
        HeadTask({"dataset": {"fold": 0, "k_fold": 3, "cnn_run": "x", "dump_root": "d"}, "loss": {"name": "focal"}})


# ----------------------------------------------------------------------------- configs, engine

def test_networks_build_and_label_what_a_config_names():
    cfg = {"network": "rnn", "model": {"head": "transformer", "input_dim": DIM, "pretrained": True}}
    assert isinstance(build_network(cfg), TransformerHead)
    assert output_labels(cfg) == list(LABELS)  # exam logits, then the image logit
    assert without_pretrained(cfg)["model"]["pretrained"] is False and cfg["model"]["pretrained"] is True
    with pytest.raises(ConfigError, match=r"^unknown network 'lstm' in x.yml \(choose from cnn, rnn\)$"):
        build_network({"network": "lstm", "config_file": "x.yml"})


@pytest.mark.parametrize("root", ["configs", "configs/demo"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_configs_load_and_build(root, variant):
    cfg = load_config(REPO / root / "train_rnn" / f"rexnet200_{variant}.yml")
    head, loss = VARIANTS[variant]
    assert cfg["run_name"] == f"rexnet200_{variant}" and cfg["dataset"]["cnn_run"] == "rexnet200_bce"
    assert cfg["loss"]["name"] == loss and cfg["model"].get("head", "lstm") == head
    model = build_head(cfg["model"])
    assert isinstance(model, TransformerHead if head == "transformer" else RNNHead)
    if head != "transformer":
        assert isinstance(model.lstm2, torch.nn.GRU if head == "gru" else torch.nn.LSTM)
    task = HeadTask(cfg)
    assert task.loss_fn is (metric_loss if loss == "metric" else head_bce_loss)


def test_engine_trains_a_transformer_on_the_metric_loss(tmp_path, monkeypatch):
    from rsna_pe.train.checkpoint import load_trained
    from rsna_pe.train.engine import train
    monkeypatch.setenv("WANDB_MODE", "disabled")
    csv = make_dump(tmp_path)
    cfg = load_config(REPO / "configs/train_rnn/rexnet200_bce_transformer.yml",
                      tiny_overrides(tmp_path, csv) + ["loss.name=metric", "model.transformer.width=8",
                                                       "model.transformer.heads=2", "model.transformer.ff=16",
                                                       "model.neighbour_diff=true"])
    assert train(cfg) == 0
    run = paths.run_dir(tmp_path / "out", "rexnet200_bce_transformer", 0)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == expected_oof_ids(csv)
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2 and np.isfinite(metrics["score"]).all()
    model, ckpt = load_trained(run / "best.ckpt")
    saved = ckpt["config"]
    assert isinstance(model, TransformerHead) and model.neighbour_diff and model.proj.in_features == 3 * DIM
    assert saved["loss"]["name"] == "metric" and not math.isnan(metrics["val_loss"].iloc[-1])
