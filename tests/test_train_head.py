"""Stage 6, the LSTM head: padding invariance, loss, data split over dumped embeddings, oof."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rsna_pe.core import paths
from rsna_pe.core.errors import InputFileError, PipelineError
from rsna_pe.core.io import atomic_savez
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, LABELS
from rsna_pe.data.embedding_data import EmbeddingDataset, collate
from rsna_pe.models.head import RNNHead, build_head
from rsna_pe.models.losses import head_bce_loss
from rsna_pe.train.head_task import HeadTask
from support.heads import DIM, REPO, expected_oof_ids, make_dump, one_thread, task_cfg, tiny_overrides  # noqa: F401


def tiny_model(dropout=0.5, dtype=torch.float64, impl="auto"):
    torch.manual_seed(0)
    return RNNHead(input_dim=DIM, hidden=6, layers=3, dropout=dropout, impl=impl).to(dtype)


# ----------------------------------------------------------------------------- model

@pytest.mark.parametrize("head,impl", [("lstm", "packed"), ("lstm", "layered"), ("gru", "packed"),
                                       ("gru", "layered"), ("transformer", "auto")])
@pytest.mark.parametrize("diff", [False, True, "pool"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_series_alone_equals_series_in_padded_batch(dtype, tol, head, impl, diff):
    torch.manual_seed(0)
    # "pool": the CNN-logit pooling, its zero init replaced
    pool = {"cnn_logits": 3} if diff == "pool" else {}
    model = build_head({"head": head, "input_dim": DIM, "hidden": 6, "layers": 3, "impl": impl,
                       "neighbour_diff": diff is True, **pool,
                       "transformer": {"width": 8, "layers": 2, "heads": 2, "ff": 16},
                       }).to(dtype).eval()
    if pool:
        torch.nn.init.normal_(model.logit_pool.linear.weight, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([5, 9, 3, 1])  # unsorted on purpose, and a one-slice series
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(4, 9, DIM, generator=g, dtype=dtype)
    # Huge values in the padding: any leak into the backward direction, the second LSTM or the
    # attention moves the outputs far beyond the tolerance.
    pad = ~(torch.arange(9)[None] < lengths[:, None])
    emb[pad] = 1e3
    with torch.no_grad():
        img_b, exam_b = model(emb, lengths)
        assert img_b.shape == (4, 9) and exam_b.shape == (4, len(EXAM_LABELS))
        for i, n in enumerate(lengths.tolist()):
            img_1, exam_1 = model(emb[i:i + 1, :n], lengths[i:i + 1])
            torch.testing.assert_close(img_b[i, :n], img_1[0], atol=tol, rtol=0)
            torch.testing.assert_close(exam_b[i], exam_1[0], atol=tol, rtol=0)


def test_packed_and_layered_give_the_same_outputs_and_gradients():
    # The two ways of running the LSTMs share weights; training on CPU (layered) must train
    # exactly what the packed nn.LSTM computes (GPU).
    lengths = torch.tensor([4, 7, 2])
    emb = torch.randn(3, 7, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    img_y = (emb[..., 1] > 0).double()
    exam_y = torch.ones(3, 9, dtype=torch.float64)
    results = []
    for impl in ("packed", "layered"):
        model = tiny_model(impl=impl).eval()  # eval: dropout masks cannot match across impls
        img, exam = model(emb, lengths)
        head_bce_loss(img, exam, img_y, exam_y, lengths).backward()
        results.append((img.detach(), exam.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (img_p, exam_p, grad_p), (img_l, exam_l, grad_l) = results
    torch.testing.assert_close(img_l, img_p, atol=1e-12, rtol=0)
    torch.testing.assert_close(exam_l, exam_p, atol=1e-12, rtol=0)
    assert grad_p.keys() == grad_l.keys() and all(g is not None for g in grad_l.values())
    for k in grad_p:
        torch.testing.assert_close(grad_l[k], grad_p[k], atol=1e-12, rtol=0, msg=k)


def test_every_slice_influences_exam_logits_from_both_ends():
    # Guards against a model that only reads the last step: changing the first or the last
    # real slice must change the exam output (attention over all slices, both directions).
    model = tiny_model().eval()
    emb = torch.randn(1, 6, DIM, dtype=torch.float64)
    lengths = torch.tensor([6])
    with torch.no_grad():
        base = model(emb, lengths)[1]
        for k in (0, 5):
            e = emb.clone()
            e[0, k] += 1.0
            assert not torch.allclose(model(e, lengths)[1], base)


def test_loss_ignores_padded_slices():
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([3, 5])
    img_logits = torch.randn(2, 5, generator=g, requires_grad=True)
    img_labels = (torch.rand(2, 5, generator=g) > 0.5).float()
    exam_logits = torch.randn(2, 9, generator=g)
    exam_labels = (torch.rand(2, 9, generator=g) > 0.5).float()
    loss = head_bce_loss(img_logits, exam_logits, img_labels, exam_labels, lengths)
    # Hand-written reference: BCE over the 8 real slices, BCE over 18 exam entries, averaged.
    real = torch.cat([img_logits[0, :3], img_logits[1, :5]])
    real_y = torch.cat([img_labels[0, :3], img_labels[1, :5]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = (bce(real, real_y) + bce(exam_logits, exam_labels)) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert img_logits.grad[0, 3:].abs().sum() == 0  # padded logits get no gradient
    # Garbage in the padded logits and labels leaves the loss unchanged.
    junk_logits = img_logits.detach().clone()
    junk_labels = img_labels.clone()
    junk_logits[0, 3:], junk_labels[0, 3:] = 50.0, 0.0
    junk_loss = head_bce_loss(junk_logits, exam_logits, junk_labels, exam_labels, lengths)
    torch.testing.assert_close(junk_loss, loss.detach())


def test_a_few_optimiser_steps_lower_the_loss():
    torch.manual_seed(3)
    lengths = torch.tensor([7, 4, 6, 5])
    emb = torch.randn(4, 7, DIM)
    img_labels = (emb[..., 0] > 0).float()  # learnable: slice label from one feature
    exam_labels = torch.zeros(4, 9)
    exam_labels[:, 0] = 1.0
    model = tiny_model(dropout=0.0, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss():
        return head_bce_loss(*model(emb, lengths), img_labels, exam_labels, lengths)

    start = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * start  # about 0.69 -> 0.26 in 30 steps


# ----------------------------------------------------------------------------- data


def test_task_splits_series_by_fold_and_collates_to_batch_max(tmp_path):
    csv = make_dump(tmp_path)
    train_ds, val_ds = HeadTask(task_cfg(tmp_path, csv)).datasets()
    # Fold 0 validates on fold ids 0..4: studies 0 and 1 (fold ids 0 and 2).
    assert [s for s, _ in val_ds.series] == ["1.2.0", "1.2.1"]
    assert [s for s, _ in train_ds.series] == ["1.2.2", "1.2.3", "1.2.4", "1.2.5"]
    batch = collate([train_ds[0], train_ds[3]])  # lengths 3 and 2: padded to 3, not the global 7
    assert batch["emb"].shape == (2, 3, DIM)
    assert batch["lengths"].tolist() == [3, 2]
    assert batch["emb"][1, 2].abs().sum() == 0 and batch["image_labels"][1, 2] == 0
    assert batch["study"] == ["1.2.2", "1.2.5"]
    assert list(batch["sop"][1]) == ["1.4.5.0", "1.4.5.1"]
    assert batch["exam_labels"][1, EXAM_LABELS.index("central_pe")] == 1
    assert batch["image_labels"][1].tolist() == [1.0, 1.0, 0.0]


def test_label_prior_is_training_means(tmp_path):
    csv = make_dump(tmp_path)
    prior = HeadTask(task_cfg(tmp_path, csv)).extra_state()["prior"]
    # Training studies 2..5 (lengths 3, 5, 7, 2): studies 3 and 5 positive.
    assert prior["negative_exam_for_pe"] == 0.5 and prior["central_pe"] == 0.5
    assert prior["chronic_pe"] == 0.0
    assert prior[IMAGE_LABEL] == pytest.approx((3 + 2) / (3 + 5 + 7 + 2))  # 5//2+1 + 2//2+1
    assert set(prior) == set(LABELS)


def test_missing_dump_names_the_series(tmp_path):
    csv = make_dump(tmp_path)
    missing = paths.series_file(paths.dump_dir(tmp_path / "dump", "cnn_a", 0), "1.2.4", "1.3.4")
    missing.unlink()
    with pytest.raises(PipelineError, match="1.3.4"):
        HeadTask(task_cfg(tmp_path, csv)).datasets()


def test_a_broken_embeddings_file_is_an_input_file_fault_naming_it(tmp_path):
    make_dump(tmp_path)
    dump = paths.dump_dir(tmp_path / "dump", "cnn_a", 0)
    broken = paths.series_file(dump, "1.2.0", "1.3.0")
    broken.write_bytes(b"not an npz")
    ds = EmbeddingDataset(dump, [("1.2.0", "1.3.0")])
    with pytest.raises(InputFileError, match="unreadable embeddings") as err:
        ds[0]
    assert str(err.value).startswith(f"{broken}: ") and err.value.path == str(broken)
    atomic_savez(broken, embeddings=np.zeros((2, DIM), np.float32), labels=np.zeros((3, len(LABELS))),
                 sop=np.array(["a", "b"]))
    with pytest.raises(InputFileError, match=r"expected embeddings \(S, D\)"):
        ds[0]


def test_embedding_width_must_match_config(tmp_path):
    csv = make_dump(tmp_path)
    cfg = task_cfg(tmp_path, csv)
    cfg["model"]["input_dim"] = 2560
    with pytest.raises(PipelineError, match="input_dim"):
        HeadTask(cfg).datasets()


# ----------------------------------------------------------------------------- scores, oof


def test_finish_writes_oof_of_exactly_the_validation_studies(tmp_path):
    csv = make_dump(tmp_path)
    task = HeadTask(task_cfg(tmp_path, csv))
    train_ds, val_ds = task.datasets()
    model = task.build_model()
    loader = torch.utils.data.DataLoader(val_ds, batch_size=1, collate_fn=task.collate_fn)
    run = tmp_path / "run"
    task.finish(model, run, loader, torch.device("cpu"))
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == expected_oof_ids(csv)
    assert oof["label"].between(0, 1).all()
    # Post-processed: no consistency rule broken.
    from rsna_pe import metric
    studies = ["1.2.0", "1.2.1"]
    sops = [[f"1.4.{i}.{k}" for k in range(n)] for i, n in ((0, 4), (1, 6))]
    exam, img = metric.from_submission(oof, studies, sops)
    assert not any(metric.consistency_violations(exam, img))
    # Strict JSON: NaN (AUC of a label with one class here) must be written as null.
    scores = json.loads((run / "scores.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert scores["studies"] == 2 and scores["images"] == 10 and scores["cnn_run"] == "cnn_a"
    assert json.loads((run / "prior.json").read_text()) == task.extra_state()["prior"]


def test_val_metrics_drop_repeated_series_and_match_the_metric(tmp_path):
    from rsna_pe import metric
    csv = make_dump(tmp_path)
    task = HeadTask(task_cfg(tmp_path, csv))
    _, val_ds = task.datasets()
    model = task.build_model().eval()
    with torch.no_grad():
        outs = [task.step(model, collate([val_ds[0], val_ds[1]]), "cpu")[1],
                task.step(model, collate([val_ds[1]]), "cpu")[1]]  # as a distributed sampler repeats
        m = task.val_metrics(outs)
        single = task.val_metrics(outs[:1])
    assert m == single
    o = outs[0]
    sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    want = metric.weighted_log_loss(o["exam_true"], sig(o["exam_logits"]), o["image_true"],
                                    [sig(x) for x in o["image_logits"]])
    assert m["score"] == pytest.approx(want)
    assert {"val_loss", "score", "score_pp", f"logloss_{IMAGE_LABEL}"} <= set(m)


# ----------------------------------------------------------------------------- with the engine


def test_engine_run_writes_oof_of_exactly_the_validation_studies(tmp_path, monkeypatch):
    from rsna_pe.core.config import load_config
    from rsna_pe.train.checkpoint import load_trained
    from rsna_pe.train.engine import train
    monkeypatch.setenv("WANDB_MODE", "disabled")
    csv = make_dump(tmp_path)
    cfg = load_config(REPO / "configs/train_rnn/rexnet200_bce.yml", tiny_overrides(tmp_path, csv))
    assert train(cfg) == 0
    run = paths.run_dir(tmp_path / "out", "rexnet200_bce", 0)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == expected_oof_ids(csv)
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2 and {"val_loss", "score", "score_pp"} <= set(metrics.columns)
    # The run folder alone rebuilds the head and records what inference needs.
    model, ckpt = load_trained(run / "best.ckpt")
    saved = ckpt["config"]
    assert saved["dataset"]["cnn_run"] == "cnn_a"
    assert saved["extra_state"]["prior"] == json.loads((run / "prior.json").read_text())
    assert isinstance(model, RNNHead) and not model.training


def run_wrapper(tmp_path, **env_vars):
    """run_train_rnn.sh from tmp_path on make_dump() data, with configs copied beside it."""
    import shutil
    import subprocess
    import sys
    make_dump(tmp_path)
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs/train_rnn", configs / "train_rnn")
    shutil.copy(REPO / "configs/experiment.yml", configs)
    args = [a for a in tiny_overrides(Path("."), "fold.csv")
            if not a.startswith(("dataset.dump_root", "output_dir", "train.epochs"))]
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "OMP_NUM_THREADS")}
    env.update({"CONFIGS": str(configs), "VARIANTS": "bce", "PY": sys.executable,
                "WANDB_MODE": "disabled", "JOBS": "1", **env_vars})
    return subprocess.run([str(REPO / "run_train_rnn.sh"), *args, "dataset.dump_root=dump",
                           "output_dir=out", "train.epochs=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_wrapper_runs_from_another_folder_with_relative_paths(tmp_path):
    # CWD stays the caller's (relative paths below resolve in tmp_path), CONFIGS picks the
    # config folder, extra args reach the config as overrides.
    res = run_wrapper(tmp_path, FOLDS="0")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out/rexnet200_bce/fold_0/oof.csv").is_file()
    assert not (tmp_path / "out/rexnet200_focal").exists()


def test_wrapper_jobs_run_side_by_side_and_report_a_failed_run(tmp_path):
    # JOBS=2: both folds start; fold 1 has no dumped embeddings and fails with its one-line
    # error, fold 0 still finishes, the wrapper exits non-zero naming the failed run and its log.
    res = run_wrapper(tmp_path, FOLDS="0 1", JOBS="2")
    assert res.returncode == 1, res.stderr
    assert (tmp_path / "out/rexnet200_bce/fold_0/oof.csv").is_file()
    log = tmp_path / "output/logs/train_rnn_rexnet200_bce_fold1.log"
    assert "error: train_rnn rexnet200_bce fold 1 failed (exit 2): error:" in res.stderr
    assert str(Path("output/logs/train_rnn_rexnet200_bce_fold1.log")) in res.stderr
    assert "dump" in log.read_text().splitlines()[-1]
    assert (tmp_path / "output/logs/train_rnn_rexnet200_bce_fold0.log").is_file()
    assert "done: train_rnn rexnet200_bce fold 0" in res.stdout


@pytest.mark.parametrize("env,msg", [({"VARIANTS": "bce typo", "JOBS": "2"}, "config not found"),
                                     ({"JOBS": "0"}, "JOBS=0")])
def test_wrapper_checks_configs_and_jobs_before_starting_anything(tmp_path, env, msg):
    res = run_wrapper(tmp_path, FOLDS="0", **env)
    assert res.returncode == 2 and msg in res.stderr
    assert not (tmp_path / "out").exists()  # no run was started


def test_wrapper_stops_at_the_first_failed_run_with_its_status(tmp_path):
    # JOBS=1: fold 1 fails (no dump) with the stage's exit status; fold 0 before it finished.
    res = run_wrapper(tmp_path, FOLDS="0 1 0")
    assert res.returncode == 2 and "error:" in res.stderr
    assert (tmp_path / "out/rexnet200_bce/fold_0/oof.csv").is_file()
    assert res.stdout.count("== train_rnn") == 2


def test_ddp_two_processes_agree_and_write_a_valid_oof(tmp_path):
    """torchrun, 2 gloo ranks: each rank logs the sha256 of its final parameters; both equal
    the saved last.ckpt's, and rank 0 writes the oof of the whole validation fold."""
    import re
    import subprocess
    import sys

    from rsna_pe.core.runtime import weights_digest
    csv = make_dump(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "src" / "train_rsna.py"), "-c", str(REPO / "configs/train_rnn/rexnet200_bce.yml"),
           *tiny_overrides(tmp_path, csv)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hashes = dict(re.findall(r"rank (\d) parameters sha256 ([0-9a-f]+)", r.stderr))
    run = paths.run_dir(tmp_path / "out", "rexnet200_bce", 0)
    last = torch.load(run / "last.ckpt", weights_only=True)
    assert hashes == {"0": weights_digest(last["model"].items()), "1": weights_digest(last["model"].items())}
    assert last["finished"] and last["step"] == 2  # 2 epochs of one batch per rank
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == expected_oof_ids(csv) and oof["label"].between(0, 1).all()
